"""SHA-256 of many buffers (shared/digest.py, shared/_sha256x.c): the same digests as hashlib,
whichever kernel, lane mix or length; and the chain's records hashed that way."""
from __future__ import annotations

import hashlib
import random

import pytest

from shared import digest
from shared.chain import chunked, convert_chunk, fetch_groups, instance_task
from shared.options import ConvertOptions
from tests.synthetic import write_series

sha256x = pytest.importorskip("shared._sha256x", reason="the multi-buffer extension was not built here")
KERNELS = [pytest.param(n, marks=pytest.mark.skipif(n not in sha256x.kernels(), reason=f"no {n}-lane kernel on this CPU"))
           for n in (16, 8)]

NIST = {  # FIPS 180-2 appendix B and the empty message
    b"": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    b"abc": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq":
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    b"a" * 1_000_000: "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
}


@pytest.mark.parametrize("lanes", KERNELS)
def test_nist_vectors_in_every_lane(lanes):
    messages = list(NIST) * 5  # every vector in several lanes at once, lanes refilled as they end
    assert [d.hex() for d in sha256x.digests(messages, lanes=lanes)] == [NIST[m] for m in messages]


@pytest.mark.parametrize("lanes", KERNELS)
def test_every_length_around_the_block_and_padding_boundaries(lanes):
    rng = random.Random(7)
    messages = [rng.randbytes(n) for n in range(0, 300)] + [rng.randbytes(n) for n in (511, 512, 513, 4095, 65_536)]
    rng.shuffle(messages)
    assert sha256x.digests(messages, lanes=lanes) == [hashlib.sha256(m).digest() for m in messages]


@pytest.mark.parametrize("lanes", KERNELS)
def test_unequal_lanes_and_buffer_types(lanes):
    rng = random.Random(11)
    messages = [rng.randbytes(rng.choice((3, 700, 70_000, 200_000))) for _ in range(45)]
    mixed = [bytearray(m) if i % 3 == 1 else memoryview(m) if i % 3 == 2 else m for i, m in enumerate(messages)]
    assert sha256x.digests(mixed, lanes=lanes) == [hashlib.sha256(m).digest() for m in messages]


def test_bad_arguments_are_refused_by_name():
    with pytest.raises(ValueError, match="lanes must be 16 or 8, got 4"):
        sha256x.digests([b"x"], lanes=4)
    with pytest.raises(TypeError):
        sha256x.digests([b"x", "not bytes"])
    with pytest.raises(TypeError, match="sequence"):
        sha256x.digests(42)
    if sha256x.kernels():
        assert sha256x.digests([]) == []


@pytest.mark.parametrize("width", [1, *KERNELS])
def test_sha256_many_matches_hashlib_with_outliers_and_leftovers(width):
    rng = random.Random(3)
    messages = [rng.randbytes(rng.randint(500_000, 520_000)) for _ in range(37)] + [rng.randbytes(3_000_000), b""]
    assert digest.sha256_many(messages, width=width) == [hashlib.sha256(m).hexdigest() for m in messages]


def test_batches_leave_outliers_and_a_short_last_pass_to_hashlib():
    same = [b"x" * 1000] * 17
    together, alone = digest.batched(same, 16)
    assert len(together) == 16 and len(alone) == 1  # a pass for one message costs more than hashlib
    together, alone = digest.batched(same[:15] + [b"x" * 1000] * 4, 16)
    assert len(together) == 19 and alone == []  # three left over: worth a pass
    together, alone = digest.batched([b"x" * 1000] * 8 + [b"x" * 9000], 8)
    assert alone == [8] and sorted(together) == list(range(8))  # the outlier alone
    assert digest.batched([b"x"] * 2, 16) == ([], [0, 1])
    assert digest.batched([b"x"] * 20, 1) == ([], list(range(20)))
    grown = [b"a" * n for n in range(100, 120)]
    lengths = [len(grown[i]) for i in digest.batched(grown, 16)[0]]
    assert lengths == sorted(lengths, reverse=True)  # longest first: the last pass is the short one


def test_lanes_follow_the_cpu():
    digest.lanes.cache_clear()
    assert digest.lanes() == (1 if sha256x.sha_ni() or not sha256x.kernels() else sha256x.kernels()[0])


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    src = tmp_path_factory.mktemp("ct")
    paths = write_series(src, slices=21, size=128)
    (src / "zz-not-dicom.dcm").write_bytes(b"not a DICOM file at all" * 40)
    return sorted(src.iterdir())


@pytest.mark.parametrize("width", [1, *KERNELS])
def test_chain_records_hash_sources_and_outputs_in_groups(series, tmp_path, monkeypatch, width):
    monkeypatch.setattr(digest, "lanes", lambda: width)
    opts = ConvertOptions(formats=("png", "tiff"), deid=False).to_json()
    tasks = [instance_task(str(p), i, "s", str(tmp_path), opts) for i, p in enumerate(series, start=1)]
    tasks.insert(5, tasks.pop())  # the bad file in the middle of the first group
    records = [r for c in chunked(tasks, 1) for r in convert_chunk(c)]
    assert [r["index"] for r in records] == [t["index"] for t in tasks]
    bad = records[5]
    assert bad["error"]["code"] == "not_dicom" and bad["outputs"] == []
    for task, record in zip(tasks, records):
        assert record["source_sha256"] == hashlib.sha256(open(task["source"], "rb").read()).hexdigest()
        if record is bad:
            continue
        assert record["error"] is None and [o["format"] for o in record["outputs"]] == ["png", "tiff"]
        for out in record["outputs"]:
            assert out["sha256"] == hashlib.sha256((tmp_path / out["path"]).read_bytes()).hexdigest()
        assert record["stages"]["fetch"] > 0 and record["stages"]["verify"] > 0


def test_groups_hold_at_most_the_lanes_and_the_bytes(series, monkeypatch):
    tasks = [instance_task(str(p), i, "s", "/nowhere", {}) for i, p in enumerate(series, start=1)]
    monkeypatch.setattr(digest, "lanes", lambda: 8)
    assert [len(g) for g in fetch_groups(tasks)] == [8, 8, 6]
    monkeypatch.setattr(digest, "BATCH_BYTES", max(p.stat().st_size for p in series) + 1)  # two slices cross it
    assert [len(g) for g in fetch_groups(tasks)] == [2] * 11
    monkeypatch.setattr(digest, "lanes", lambda: 1)
    monkeypatch.setattr(digest, "BATCH_BYTES", 1 << 30)
    assert [len(g) for g in fetch_groups(tasks)] == [1] * 22


def test_fingerprints_hash_files_together_and_stream_the_large_ones(tmp_path, monkeypatch):
    from shared import store
    from shared.errors import StorageError

    rng = random.Random(5)
    paths = []
    for i, size in enumerate([70_000] * 19 + [0, 250_000, 69_999]):
        paths.append(tmp_path / f"{i:02d}.dcm")
        paths[-1].write_bytes(rng.randbytes(size))
    monkeypatch.setattr(digest, "BATCH_BYTES", 200_000)  # flushes every three files; 250 kB streamed
    want = ["sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert store.source_fingerprints([str(p) for p in paths]) == want
    with pytest.raises(StorageError, match="cannot read source"):
        store.source_fingerprints([str(paths[0]), str(tmp_path / "gone.dcm")])
