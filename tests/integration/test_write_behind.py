"""Outputs upload behind the conversion (`Store.write_behind`), against the real S3 test server:
the same bytes and manifest as the synchronous local writes, inline and over forked pool
processes; a PUT that fails in the background stops the series with the transient fault."""
from __future__ import annotations

import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from producer.fleetrun import S3Server, pointed_at
from shared import store as store_module
from shared.chain import SeriesJob, chunk_size, convert_series
from shared.errors import StorageError, Transient
from shared.manifest import manifest_key
from shared.options import ConvertOptions
from tests.synthetic import write_series

from .conftest import check_against_manifests

pytestmark = pytest.mark.integration

SLICES = 24
OPTS = ConvertOptions(formats=("png", "tiff"), deid=False)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[str]:
    return [str(p) for p in write_series(tmp_path_factory.mktemp("wb"), slices=SLICES, size=64, seed=7)]


def _objects(server: S3Server, bucket: str, prefix: str = "out/") -> dict[str, bytes]:
    client = server.client()
    out = {}
    for obj in client.list_objects(bucket, prefix=prefix, recursive=True):
        resp = client.get_object(bucket, obj.object_name)
        out[obj.object_name[len(prefix):]] = resp.read()
        resp.close()
        resp.release_conn()
    return out


def test_s3_inline_and_pooled_write_what_the_local_directory_gets(s3, series, tmp_path):
    """The same series to a directory (synchronous writes), to S3 inline and to S3 over two forked
    processes (uploads behind the conversion): every key, every byte and the manifest are equal.
    The pool is forked after this process's uploader has threads: each child makes its own."""
    local = tmp_path / "local"
    convert_series(SeriesJob("st/se", series, str(local), OPTS))
    reference = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert len(reference) == 2 * SLICES + 1

    bucket = s3.make_bucket(f"wb-{uuid.uuid4().hex[:12]}")
    with pointed_at(s3.env()):
        convert_series(SeriesJob("st/se", series, f"s3://{bucket}/out", OPTS))
        uploader = store_module.uploader()
        assert 1 <= uploader.high_water <= store_module.UPLOADS_IN_FLIGHT
        with ProcessPoolExecutor(2) as pool:
            # bounded: a child using its parent's upload threads (gone after fork) would wait forever
            convert_series(SeriesJob("st/se", series, f"s3://{bucket}/pooled", OPTS), processes=2,
                           map_fn=lambda fn, chunks: pool.map(fn, chunks, timeout=120))
    for dest in ("out/", "pooled/"):
        objects = _objects(s3, bucket, dest)
        check_against_manifests(objects)
        assert objects.keys() == reference.keys()
        assert [k for k in reference if objects[k] != reference[k]] == []


def test_a_background_put_to_a_stopped_server_stops_the_series_without_a_manifest(series, tmp_path):
    """The S3 server goes away after the first chunk's records came back: the next chunk's
    uploads fail behind the conversion, and that transient fault (naming an instance's output,
    not the manifest) comes out of convert_series before any later record; the retry after the
    server is back writes the whole series."""
    server = S3Server(log_dir=str(tmp_path)).start()
    try:
        bucket = server.make_bucket(f"wb-{uuid.uuid4().hex[:12]}")
        job = SeriesJob("st/se", series, f"s3://{bucket}/out", OPTS)
        first = chunk_size(SLICES, 1)
        seen: list[int] = []

        def on_record(record: dict) -> None:
            seen.append(record["index"])
            assert record["outputs"] and record["error"] is None
            if len(seen) == first:
                server.stop()

        with pointed_at(server.env()):
            with pytest.raises(Transient) as caught:
                convert_series(job, on_record=on_record)
            assert isinstance(caught.value, StorageError)
            reason = str(caught.value)
            assert reason.startswith(f"cannot write st/se/{first + 1:04d}.png on S3: endpoint unreachable"), reason
            assert manifest_key("st/se") not in reason
            assert seen == list(range(1, first + 1))

            server.start()
            server.make_bucket(bucket)
            manifest = convert_series(job)
        objects = _objects(server, bucket)
        (stored,) = check_against_manifests(objects)
        assert stored["counts"] == manifest["counts"] == {
            "instances": SLICES, "converted": SLICES, "failed": 0, "outputs": 2 * SLICES}
    finally:
        server.stop()



def test_a_source_gone_since_the_scan_fails_alone_locally_and_on_s3(s3, series, tmp_path):
    """One source deleted between the scan and its conversion: that instance fails with
    missing_source, the rest convert and the manifest is written — on disk and in a bucket —
    instead of the series being retried until it fails whole."""
    import shutil

    local = tmp_path / "src"
    local.mkdir()
    copies = [str(shutil.copy(p, local / Path(p).name)) for p in series[:4]]
    Path(copies[2]).unlink()
    bucket = s3.make_bucket(f"gone-{uuid.uuid4().hex[:12]}")
    client = s3.client()
    for p in series[:4]:
        client.fput_object(bucket, f"in/{Path(p).name}", p)
    client.remove_object(bucket, f"in/{Path(series[2]).name}")
    with pointed_at(s3.env()):
        for sources, dest in ((copies, str(tmp_path / "out")),
                              ([f"s3://{bucket}/in/{Path(p).name}" for p in series[:4]], f"s3://{bucket}/out")):
            manifest = convert_series(SeriesJob("st/se", sources, dest, OPTS))
            assert manifest["counts"]["converted"] == 3 and manifest["counts"]["failed"] == 1, manifest["instances"]
            [failed] = [r for r in manifest["instances"] if r["error"]]
            assert failed["index"] == 3 and failed["error"]["code"] == "missing_source", failed
