"""The per-process uploader behind `S3Store.write_behind`: its count and byte bounds hold, and
a write's fault comes back from its future (real threads; the uploads are local functions)."""
from __future__ import annotations

import threading
import time

import pytest

from shared.errors import StorageError
from shared.store import LocalStore, Uploader


def _flood(uploader: Uploader, n: int, nbytes: int) -> int:
    """Submit ``n`` slow uploads as fast as `submit` lets us; the most ever accepted and unfinished."""
    finished = 0
    lock = threading.Lock()

    def upload() -> None:
        nonlocal finished
        time.sleep(0.005)  # slower than a submit, so an unbounded uploader would pile them up
        with lock:
            finished += 1

    most, futures = 0, []
    for _ in range(n):
        futures.append(uploader.submit(nbytes, upload))
        with lock:
            most = max(most, len(futures) - finished)
    for future in futures:
        future.result()
    return most


def test_outputs_in_flight_never_exceed_the_count():
    uploader = Uploader(count=3, size=1 << 20)
    assert _flood(uploader, 30, 100) <= 3
    assert uploader.high_water == 3 and uploader.high_water_bytes == 300


def test_bytes_in_flight_never_exceed_the_byte_bound():
    uploader = Uploader(count=8, size=250)
    assert _flood(uploader, 20, 100) <= 2
    assert uploader.high_water == 2 and uploader.high_water_bytes == 200


def test_one_output_larger_than_the_byte_bound_still_goes_alone():
    uploader = Uploader(count=8, size=10)
    assert _flood(uploader, 4, 100) == 1
    assert uploader.high_water_bytes == 100


def test_a_write_fault_comes_back_from_the_future(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    pending = LocalStore(tmp_path).write_behind("file/0001.png", b"x")  # a file where a directory goes
    with pytest.raises(StorageError, match="^cannot write file/0001.png"):
        pending.result()
    assert LocalStore(tmp_path).write_behind("a/0001.png", b"x").result() is None
    assert (tmp_path / "a" / "0001.png").read_bytes() == b"x"
