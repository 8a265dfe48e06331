"""shared/manifest.py: canonical bytes, written without listing every piece of the text first."""
from __future__ import annotations

import json
import tracemalloc

from shared.chain import SeriesJob, convert_series
from shared.manifest import VOLATILE, build_manifest, manifest_bytes, without_timings
from shared.options import ConvertOptions


def _manifest(instances: int) -> dict:
    return {"schema": 1, "series": "s/é", "parameters": {"formats": ["png"], "window": "default"},
            "instances": [{"index": i, "source_sha256": f"{i:064x}", "error": None, "window": None,
                           "outputs": [{"path": f"s/{i:04d}.png", "format": "png", "size": 50000 + i,
                                        "sha256": f"{i * 7:064x}", "frame": None,
                                        "verification": "lossless"}]}
                          for i in range(1, instances + 1)],
            "errors": [], "note": "ünïcode\u2028 and \"quotes\""}


def test_manifest_bytes_are_the_canonical_json_of_the_manifest():
    m = _manifest(3)
    assert manifest_bytes(m) == (json.dumps(m, indent=2, sort_keys=True) + "\n").encode()
    assert json.loads(manifest_bytes(m)) == m
    assert manifest_bytes(_manifest(0)).endswith(b"}\n")
    for other in ({}, {"a": []}, {"a": [[]], "b": {}}, {"b": [1, {"c": [2, {}], "a": "x\ny"}], "a": None}):
        assert manifest_bytes(other) == (json.dumps(other, indent=2, sort_keys=True) + "\n").encode()


def test_manifest_bytes_of_a_long_series_allocate_little_beyond_the_bytes():
    """json.dumps with an indent lists every piece of text before joining (~60 an instance): for
    1000 instances about four times the text. Written into one buffer, the peak stays near it."""
    m = _manifest(1000)
    size = len(manifest_bytes(m))
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        data = manifest_bytes(m)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(data) == size
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        json.dumps(m, indent=2, sort_keys=True).encode()
        dumps_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * size < dumps_peak


def test_records_are_held_for_the_manifest_without_their_timings(tmp_path, monkeypatch):
    """The series' records wait for its manifest; their timings (only for metrics) are dropped as
    each arrives, while ``on_record`` still sees them."""
    import shared.chain as chain

    seen: list[dict] = []
    held: list[list[dict]] = []
    build = chain.build_manifest

    def chunk_records(fn, chunks):  # stands in for the pool: records as convert_chunk returns them
        for chunk in chunks:
            yield [{"index": t["index"], "source_sha256": "0" * 64, "outputs": [], "error": None,
                    "seconds": 0.01, "stages": {"fetch": 0.001}} for t in chunk]

    def build_and_keep(prefix, records, opts, series=None):
        held.append(records)
        return build(prefix, records, opts, series=series)

    monkeypatch.setattr(chain, "build_manifest", build_and_keep)
    job = SeriesJob("st/se", [str(tmp_path / f"{i}.dcm") for i in range(3)], str(tmp_path / "out"),
                    ConvertOptions(formats=("png",), deid=False))
    convert_series(job, map_fn=chunk_records, on_record=seen.append)
    assert [set(r) & VOLATILE for r in seen] == [VOLATILE] * 3
    assert [set(r) & VOLATILE for r in held[0]] == [set()] * 3
    assert without_timings(seen[0]) == held[0][0]
    assert json.loads((tmp_path / "out" / "st" / "se" / "manifest.json").read_bytes())["counts"]["instances"] == 3


def test_the_manifest_records_the_deidentification_only_when_it_was_on():
    off = build_manifest("s/t", [], ConvertOptions(formats=("png",), deid=False))
    assert off["deidentified"] is False and off["deidentification"] is None
    on = build_manifest("s/t", [], ConvertOptions(formats=("png",), deid_options=("retain-device-id",)))
    assert on["deidentified"] is True
    assert on["deidentification"]["options"] == ["retain-device-id"]
    assert on["deidentification"]["profile"].endswith("Basic Application Level Confidentiality Profile")
    assert {"code": "113109", "scheme": "DCM", "meaning": "Retain Device Identity Option"} in on["deidentification"]["codes"]
