"""shared.store.LocalStore: atomic writes, directories made on demand, clear errors."""
from __future__ import annotations

import os
import stat
import threading

import pytest

from shared.errors import StorageError
from shared.store import LocalStore


def test_write_makes_directories_and_leaves_no_temp_files(tmp_path):
    store = LocalStore(tmp_path / "out")
    store.write("a/b/0001.png", b"one")
    store.write("a/b/0001.png", b"two")  # rewritten in place, as a redelivery does
    store.write("a/c/0002.png", b"three")
    assert (tmp_path / "out/a/b/0001.png").read_bytes() == b"two"
    assert sorted(store.list()) == ["a/b/0001.png", "a/c/0002.png"]
    assert [p.name for p in (tmp_path / "out").rglob(".tmp-*")] == []


def test_a_directory_removed_between_writes_is_made_again(tmp_path):
    store = LocalStore(tmp_path)
    store.write("s/1.png", b"x")
    (tmp_path / "s/1.png").unlink()
    (tmp_path / "s").rmdir()
    store.write("s/2.png", b"y")
    assert (tmp_path / "s/2.png").read_bytes() == b"y"


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        LocalStore(tmp_path).write("k.png", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k.png").stat().st_mode) == 0o644


def test_concurrent_writers_of_one_key_leave_one_whole_file(tmp_path):
    store = LocalStore(tmp_path)
    payloads = [bytes([i]) * 100_000 for i in range(8)]
    threads = [threading.Thread(target=store.write, args=("same.png", p)) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (tmp_path / "same.png").read_bytes() in payloads
    assert list(tmp_path.glob(".tmp-*")) == []


def test_a_write_that_fails_says_which_key_and_cleans_up(tmp_path):
    (tmp_path / "file").write_bytes(b"")  # a file where a directory is needed
    with pytest.raises(StorageError, match=r"^cannot write file/x.png: Not a directory$"):
        LocalStore(tmp_path).write("file/x.png", b"x")
    assert list(tmp_path.glob("**/.tmp-*")) == []


def test_an_empty_s3_endpoint_is_aws_over_tls_signed_by_the_pods_identity():
    """The chart's default s3.endpoint "" names AWS's endpoint (it reached Minio as an empty host);
    without keys there the pod's AWS identity signs (IRSA, the instance role)."""
    from minio.credentials import IamAwsProvider

    from shared.settings import Settings
    from shared.store import s3_endpoint

    endpoint, secure, credentials = s3_endpoint(Settings(s3_endpoint="", s3_secure=False))
    assert (endpoint, secure) == ("s3.amazonaws.com", True) and isinstance(credentials, IamAwsProvider)
    keyed = Settings(s3_endpoint="", s3_access_key="AKIA", s3_secret_key="x")
    assert s3_endpoint(keyed)[2] is None  # keys given: they sign
    assert s3_endpoint(Settings(s3_endpoint="minio:9000", s3_secure=False)) == ("minio:9000", False, None)


def test_writes_follow_no_symlink_planted_in_the_destination(tmp_path):
    """A destination others may write to (a shared volume): a link at this writer's temp name is
    removed, not written through; a series directory that links outside is refused."""
    import os
    import threading

    from shared.errors import ConfigError
    from shared.store import LocalStore

    dest, outside = tmp_path / "dest", tmp_path / "outside"
    (dest / "st").mkdir(parents=True)
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("keep me")
    store = LocalStore(dest)
    (dest / "st" / "se").mkdir()
    tmp = dest / "st" / "se" / f".tmp-0001.png.{os.getpid()}.{threading.get_ident()}"
    tmp.symlink_to(victim)
    store.write("st/se/0001.png", b"OUTPUT")
    assert victim.read_text() == "keep me" and (dest / "st" / "se" / "0001.png").read_bytes() == b"OUTPUT"
    assert not tmp.exists() and not tmp.is_symlink()
    (dest / "st" / "away").symlink_to(outside)
    with pytest.raises(ConfigError, match="resolves outside the destination"):
        store.write("st/away/manifest.json", b"{}")
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]


def test_a_symlinked_series_folder_ends_a_local_run_with_a_reason_not_a_traceback(tmp_path):
    """The series' folder in the destination links outside it: the run deletes nothing there (an
    earlier manifest is removed before a series is rewritten), writes nothing, and says why."""
    from click.testing import CliRunner

    from producer.cli import app
    from tests.synthetic import write_series

    paths = write_series(tmp_path / "in", slices=2, size=16, seed=23)
    ds = __import__("pydicom").dcmread(paths[0])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "manifest.json").write_text("theirs")
    dest = tmp_path / "out" / ds.StudyInstanceUID
    dest.mkdir(parents=True)
    (dest / ds.SeriesInstanceUID).symlink_to(outside)
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                      "--no-deid", "--workers", "1"])
    assert result.exit_code == 1, result.output
    assert "resolves outside the destination (a symlink)" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in outside.iterdir()) == ["manifest.json"]
    assert (outside / "manifest.json").read_text() == "theirs"
