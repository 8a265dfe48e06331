"""Storage: the only module that reads sources or writes outputs. Local files now, S3 by URL."""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Protocol

from .errors import ConfigError, StorageError


class Store(Protocol):
    """Where outputs go; keys are relative, '/'-separated and never carry PHI."""

    url: str

    def write(self, key: str, data: bytes) -> None: ...
    def read(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def list(self, prefix: str = "") -> Iterator[str]: ...


class LocalStore:
    """A directory. Writes are atomic (temp file + rename) so a reader never sees half a file."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise ConfigError(f"invalid object key {key!r}")
        return self.root / key

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as err:
            raise StorageError(f"cannot write {key}: {err.strerror}") from err

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as err:
            raise StorageError(f"cannot read {key}: {err.strerror}") from err

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root / prefix if prefix else self.root
        if base.is_dir():
            for path in sorted(base.rglob("*")):
                if path.is_file() and not path.name.startswith(".tmp-"):
                    yield path.relative_to(self.root).as_posix()


@lru_cache(maxsize=8)
def open_store(url: str) -> Store:
    """A store for a destination URL: a local directory (S3 URLs arrive with the fleet)."""
    if "://" in url:
        raise ConfigError(f"unsupported destination {url!r}: only local directories for now")
    return LocalStore(url)


def read_source(ref: str) -> bytes:
    """The bytes of one source instance (a local path)."""
    try:
        with open(ref, "rb") as fh:
            return fh.read()
    except OSError as err:
        raise StorageError(f"cannot read source: {err.strerror}") from err
