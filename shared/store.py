"""Storage: the only module that reads sources or writes outputs: local paths, or S3 by URL.

A destination is a directory or ``s3://bucket/prefix``; a source reference is a path or
``s3://bucket/key``. S3 is reached with the ``minio`` SDK at ``DICOMFLEET_S3_ENDPOINT`` (MinIO or
any S3). Every S3 fault surfaces as `StorageError` (transient: the caller retries the series).
`Store.write_behind` lets the chain convert the next instance while an output uploads (`Uploader`).
"""
from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Iterator, Protocol

from .errors import ConfigError, MissingSourceError, PixelBudgetError, StorageError

S3_SCHEME = "s3://"
#: Bytes fetched per ranged GET when reading headers from S3: one request for a typical header.
HEADER_BLOCK = 64 * 1024
#: Outputs one process may have uploading at once, and their bytes. A PUT to MinIO/S3 over a
#: network takes 5–30 ms while a 512×512 slice converts in 3–10 ms (one to three outputs), so
#: about ten PUTs in flight hide the latency; 16 leaves headroom and matches the client's 16 pooled
#: connections. The byte bound keeps a process's extra memory flat whatever the series length or
#: output size (16 × a 1 MiB npy fits; a 20 MB radiograph TIFF goes nearly alone).
UPLOADS_IN_FLIGHT = 16
UPLOAD_BYTES_IN_FLIGHT = 64 << 20


class Store(Protocol):
    """Where outputs go; keys are relative, '/'-separated and never carry PHI."""

    url: str

    def write(self, key: str, data: bytes) -> None: ...
    def write_behind(self, key: str, data: bytes) -> Future: ...
    def read(self, key: str) -> bytes: ...
    def exists(self, key: str) -> bool: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str = "") -> Iterator[str]: ...


_EXCLUSIVE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _create(path: Path) -> int:
    """A new file at ``path``, created by this call (never an existing file or a link's target)."""
    return os.open(path, _EXCLUSIVE, 0o666)


def _check_key(key: str) -> None:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ConfigError(f"invalid object key {key!r}")


class LocalStore:
    """A directory. Writes are atomic (temp file + rename) so a reader never sees half a file."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.url = str(self.root)
        self._inside: set[Path] = set()  # directories found to resolve inside the root

    def _path(self, key: str) -> Path:
        _check_key(key)
        return self.root / key

    def _check_inside(self, directory: Path) -> None:
        """Refuse a directory that resolves outside the root: a destination others may write to
        (a shared volume) could hold a symlink that sends outputs elsewhere. Once a directory."""
        if directory in self._inside:
            return
        root = os.path.realpath(self.root)
        if os.path.commonpath([root, os.path.realpath(directory)]) != root:
            raise ConfigError(f"cannot write under {directory.relative_to(self.root).as_posix()}: "
                              "it resolves outside the destination (a symlink)")
        self._inside.add(directory)

    def write(self, key: str, data: bytes) -> None:
        """Write through a temp file named for this writer (process and thread), then rename:
        no random name to make (~0.06 ms of a slice's 0.12); the directory is made when the
        first open finds it missing, and checked once to lie inside the root. The temp file is
        created exclusively and never through a symlink: whatever sits at its name (a crash's
        leftover, a planted link) is removed, not written through. Files get the usual mode
        (umask), like any file a command writes."""
        path = self._path(key)
        tmp = path.with_name(f".tmp-{path.name}.{os.getpid()}.{threading.get_ident()}")
        self._check_inside(path.parent)  # realpath resolves the ancestors that exist already
        try:
            try:  # from the temp file's creation on, any way out (Ctrl-C included) removes it
                try:
                    fd = _create(tmp)
                except FileNotFoundError:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    fd = _create(tmp)
                except FileExistsError:
                    tmp.unlink()
                    fd = _create(tmp)
                with open(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, path)  # a link at ``path`` is replaced itself, not followed
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except OSError as err:
            raise StorageError(f"cannot write {key}: {err.strerror}") from err

    def write_behind(self, key: str, data: bytes) -> Future:
        """A local write is fast: done now; the returned future holds its outcome (as S3's does)."""
        return settled(self.write, key, data)

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except OSError as err:
            raise StorageError(f"cannot read {key}: {err.strerror}") from err

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        self._check_inside(path.parent)  # no deleting through a planted link either
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            raise StorageError(f"cannot delete {key}: {err.strerror}") from err

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self.root / prefix if prefix else self.root
        if base.is_dir():
            for path in sorted(base.rglob("*")):
                if path.is_file() and not path.name.startswith(".tmp-"):
                    yield path.relative_to(self.root).as_posix()


def split_s3(url: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → ``("bucket", "some/key")``."""
    if not url.startswith(S3_SCHEME):
        raise ConfigError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise ConfigError(f"s3 URL without a bucket: {url!r}")
    return bucket, key.strip("/")


@lru_cache(maxsize=1)
def s3_client():
    """The fleet's one S3 client (thread-safe), configured from ``DICOMFLEET_S3_*``.

    urllib3 retries are kept short and few: a longer outage is the series retry's business
    (backoff with jitter in the worker), so a request never hangs a worker for minutes.
    """
    import urllib3
    from minio import Minio

    from .settings import Settings

    s = Settings.from_env()
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=3.0, read=30.0), maxsize=16,
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=(500, 502, 503, 504)))
    endpoint, secure, credentials = s3_endpoint(s)
    return Minio(endpoint, access_key=s.s3_access_key or None, secret_key=s.s3_secret_key or None,
                 secure=secure, region=s.s3_region or None, http_client=http, credentials=credentials)


#: the endpoint an empty DICOMFLEET_S3_ENDPOINT names
AWS_ENDPOINT = "s3.amazonaws.com"


def s3_endpoint(s) -> tuple[str, bool, object | None]:
    """(endpoint, TLS, credentials provider) for the settings ``s``. An empty endpoint is AWS's,
    always over TLS; there, without keys, the pod's own AWS identity (IRSA's web identity token,
    the instance's role) signs the requests, as AWS's SDKs do (minio's IamAwsProvider)."""
    endpoint = s.s3_endpoint.strip() or AWS_ENDPOINT
    aws = endpoint == AWS_ENDPOINT or endpoint.endswith(".amazonaws.com")
    credentials = None
    if aws and not (s.s3_access_key and s.s3_secret_key):
        from minio.credentials import IamAwsProvider

        credentials = IamAwsProvider()
    return endpoint, s.s3_secure or not s.s3_endpoint.strip(), credentials


# A forked process (a worker's pool) must not share the parent's HTTP connections.
os.register_at_fork(after_in_child=s3_client.cache_clear)


def preload_s3() -> None:
    """Import the S3 SDK now: ~130 ms of CPU that a process forking a pool pays once, before the
    fork, instead of each pool process at its first output (the local `convert` never needs it)."""
    import minio  # noqa: F401


def _s3_fault(action: str, what: str, err: Exception) -> StorageError:
    """A one-line StorageError for any minio/urllib3 failure (no URLs with query strings, no keys)."""
    from minio.error import S3Error, ServerError

    if isinstance(err, S3Error):
        reason = f"{err.code}"
    elif isinstance(err, ServerError):
        reason = f"HTTP {err.status_code}"
    elif isinstance(getattr(err, "reason", None), Exception):  # urllib3's MaxRetryError
        reason = f"endpoint unreachable ({type(err.reason).__name__})"
    else:
        reason = type(err).__name__
    return StorageError(f"cannot {action} {what} on S3: {reason}")


def settled(fn: Callable, *args) -> Future:
    """A future already holding the result (or the error) of ``fn(*args)``."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as err:
        future.set_exception(err)
    return future


class Uploader:
    """Background writes of one process, at most ``count`` outputs and ``size`` bytes in flight
    (`UPLOADS_IN_FLIGHT`, `UPLOAD_BYTES_IN_FLIGHT`): `submit` blocks until there is room, so a
    fast converter waits for a slow server instead of piling outputs up in memory.

    One thread per allowed upload, so an accepted upload starts at once. ``high_water`` and
    ``high_water_bytes`` record the most ever in flight (the bound is checked by tests on them).
    """

    def __init__(self, count: int = UPLOADS_IN_FLIGHT, size: int = UPLOAD_BYTES_IN_FLIGHT) -> None:
        self.count, self.size = max(1, count), size
        self._threads = ThreadPoolExecutor(self.count, thread_name_prefix="dicomfleet-upload")
        self._room = threading.Condition()
        self._pending = self._bytes = 0
        self.high_water = self.high_water_bytes = 0

    def _fits(self, nbytes: int) -> bool:  # one output larger than the byte bound still goes, alone
        return not self._pending or (self._pending < self.count and self._bytes + nbytes <= self.size)

    def submit(self, nbytes: int, fn: Callable, *args) -> Future:
        """Run ``fn(*args)`` (moving ``nbytes``) on an upload thread once there is room."""
        with self._room:
            self._room.wait_for(lambda: self._fits(nbytes))
            self._pending += 1
            self._bytes += nbytes
            self.high_water = max(self.high_water, self._pending)
            self.high_water_bytes = max(self.high_water_bytes, self._bytes)
        try:
            future = self._threads.submit(fn, *args)
        except BaseException:
            self._release(nbytes)
            raise
        future.add_done_callback(lambda _: self._release(nbytes))
        return future

    def _release(self, nbytes: int) -> None:
        with self._room:
            self._pending -= 1
            self._bytes -= nbytes
            self._room.notify_all()


_uploader: Uploader | None = None
_uploader_lock = threading.Lock()


def uploader() -> Uploader:
    """This process's uploader, made at first use: a pool process makes its own after the fork."""
    global _uploader
    with _uploader_lock:
        if _uploader is None:
            _uploader = Uploader()
        return _uploader


def _forget_uploader() -> None:
    """A forked child has none of its parent's upload threads: it must never use their pool."""
    global _uploader, _uploader_lock
    _uploader, _uploader_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_uploader)


def _s3_call(action: str, what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except StorageError:
        raise
    except Exception as err:  # minio raises S3Error/ServerError, urllib3 its own family
        raise _s3_fault(action, what, err) from err


def _is_missing(err: BaseException) -> bool:
    from minio.error import S3Error

    cause = err.__cause__
    return isinstance(cause, S3Error) and cause.code in ("NoSuchKey", "NotFound", "ResourceNotFound")


class S3Store:
    """A prefix in an S3 bucket. PUT is atomic in S3: a reader sees the old object or the new."""

    def __init__(self, url: str, client=None) -> None:
        self.bucket, self.prefix = split_s3(url)
        self.url = url.rstrip("/")
        self._client = client

    @property
    def client(self):
        return self._client or s3_client()

    def _name(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def write(self, key: str, data: bytes) -> None:
        _s3_call("write", key, self.client.put_object, self.bucket, self._name(key),
                 io.BytesIO(data), len(data))

    def write_behind(self, key: str, data: bytes) -> Future:
        """Upload in the background (`uploader`); the future completes when the object is durable
        and raises what `write` would. An invalid key raises here, at once."""
        self._name(key)  # an invalid key is refused here, not on an upload thread
        return uploader().submit(len(data), self.write, key, data)

    def read(self, key: str) -> bytes:
        return _get(self.client, self.bucket, self._name(key), key)

    def exists(self, key: str) -> bool:
        try:
            _s3_call("stat", key, self.client.stat_object, self.bucket, self._name(key))
        except StorageError as err:
            if _is_missing(err):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        _s3_call("delete", key, self.client.remove_object, self.bucket, self._name(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._name(prefix) if prefix else self.prefix
        start = len(self.prefix) + 1 if self.prefix else 0
        for obj in _list(self.client, self.bucket, base):
            yield obj.object_name[start:]


def _get(client, bucket: str, name: str, what: str, offset: int = 0, length: int = 0) -> bytes:
    def fetch() -> bytes:
        resp = client.get_object(bucket, name, offset=offset, length=length)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()
    return _s3_call("read", what, fetch)


def _list(client, bucket: str, prefix: str) -> list:
    """Every object under a prefix (a listing is consumed whole so faults surface here)."""
    base = f"{prefix.rstrip('/')}/" if prefix else None
    return _s3_call("list", f"s3://{bucket}/{prefix}", lambda: sorted(
        client.list_objects(bucket, prefix=base, recursive=True), key=lambda o: o.object_name))


@lru_cache(maxsize=8)
def open_store(url: str) -> Store:
    """A store for a destination URL: a local directory or ``s3://bucket/prefix``."""
    if url.startswith(S3_SCHEME):
        return S3Store(url)
    if "://" in url:
        raise ConfigError(f"unsupported destination {url!r}: a directory or s3://bucket/prefix")
    return LocalStore(url)


# --- sources -------------------------------------------------------------------------------

class _RangedS3(io.RawIOBase):
    """A seekable read-only view of one S3 object; every read is a ranged GET (headers only)."""

    def __init__(self, client, bucket: str, name: str, size: int | None) -> None:
        self.client, self.bucket, self.name, self.size, self.pos = client, bucket, name, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def _size(self) -> int:
        if self.size is None:
            st = _s3_call("stat", "source", self.client.stat_object, self.bucket, self.name)
            self.size = int(st.size)
        return self.size

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: None}[whence]
        self.pos = max(0, (self._size() if base is None else base) + offset)
        return self.pos

    def readinto(self, buf) -> int:
        want = len(buf)
        if want == 0 or (self.size is not None and self.pos >= self.size):
            return 0
        if self.size is not None:
            want = min(want, self.size - self.pos)
        data = _get(self.client, self.bucket, self.name, "source", self.pos, want)
        buf[: len(data)] = data
        self.pos += len(data)
        return len(data)


def is_s3(ref: str) -> bool:
    return ref.startswith(S3_SCHEME)


def iter_sources(src: str) -> Iterator[str]:
    """Every object under an ``s3://bucket/prefix``, in key order.

    Sizes and ETags come free with the listing and are remembered: the size spares the ranged
    reader a HEAD request, the ETag identifies the object's content for job ids.
    """
    bucket, prefix = split_s3(src)
    client = s3_client()
    objects = _list(client, bucket, prefix)
    if not objects:  # maybe the prefix names one object
        if prefix and _exists_object(client, bucket, prefix):
            objects = [_s3_call("stat", "source", client.stat_object, bucket, prefix)]
        else:
            raise FileNotFoundError(src)
    for obj in objects:
        if not obj.object_name.endswith("/"):
            ref = f"{S3_SCHEME}{bucket}/{obj.object_name}"
            _LISTED[ref] = (int(obj.size), (obj.etag or "").strip('"') or None)
            yield ref


def _exists_object(client, bucket: str, name: str) -> bool:
    try:
        _s3_call("stat", "source", client.stat_object, bucket, name)
    except StorageError as err:
        if _is_missing(err):
            return False
        raise
    return True


#: (size, etag) learnt from listings, by source reference
_LISTED: dict[str, tuple[int, str | None]] = {}


def open_source(ref: str) -> BinaryIO:
    """A readable, seekable file for one source: the local file, or ranged GETs on S3."""
    if is_s3(ref):
        bucket, name = split_s3(ref)
        raw = _RangedS3(s3_client(), bucket, name, _LISTED.get(ref, (None, None))[0])
        return io.BufferedReader(raw, buffer_size=HEADER_BLOCK)
    return open(ref, "rb")


#: what a local source's read fails with when the file itself is gone or closed to us, not the
#: storage: no retry brings it back
_GONE = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


def read_source(ref: str, limit: int | None = None) -> bytes:
    """The bytes of one source instance (a local path or ``s3://bucket/key``). A source deleted,
    moved or closed to us since the scan is that instance's MissingSourceError; any other fault
    of the storage a StorageError, which retries the series. With ``limit``, a source larger than
    that is refused (PixelBudgetError) before it is read into memory: the pixel budget bounds the
    pixels, not a file's other bytes (a huge private element, a sparse file of 50 GB)."""
    if is_s3(ref):
        bucket, name = split_s3(ref)
        try:
            data = _get(s3_client(), bucket, name, "source", 0, limit + 1 if limit else 0)
        except StorageError as err:
            if _is_missing(err):
                raise MissingSourceError("the source is no longer in its bucket (NoSuchKey)") from err
            raise
        if limit is not None and len(data) > limit:
            raise _too_large(f"more than {limit}", limit)
        return data
    try:
        with open(ref, "rb") as fh:
            if limit is None:
                return fh.read()
            if (size := os.fstat(fh.fileno()).st_size) > limit:
                raise _too_large(str(size), limit)
            data = fh.read(size + 1)  # read(n) allocates n at once: the size, not the limit
            if len(data) > size:  # a file that grew since, or one that reports no size
                data += _read_at_most(fh, limit + 1 - len(data))
                if len(data) > limit:
                    raise _too_large(f"more than {limit}", limit)
            return data
    except _GONE as err:
        raise MissingSourceError(f"the source cannot be read any more: {err.strerror}") from err
    except OSError as err:
        raise StorageError(f"cannot read source: {err.strerror}") from err


def _read_at_most(fh, n: int) -> bytes:
    """Up to ``n`` bytes from ``fh`` a MiB at a time (never an ``n``-byte buffer up front)."""
    parts, left = [], n
    while left > 0 and (part := fh.read(min(left, 1 << 20))):
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def _too_large(size: str, limit: int) -> PixelBudgetError:
    return PixelBudgetError(f"the source holds {size} bytes, more than a DICOM file within the pixel "
                            f"budget can ({limit}: DICOMFLEET_MAX_PIXELS samples of 8 bytes and 64 MiB)")


def source_fingerprints(refs: Iterable[str]) -> list[str]:
    """A content fingerprint per source, for job ids: the S3 ETag, or the SHA-256 of a local file
    (files read a group of up to `digest.BATCH_BYTES` at a time and hashed together; a larger
    file hashed as it is read)."""
    from . import digest

    out: list[str] = []
    held: list[tuple[int, bytes]] = []  # (index in out, the file's bytes), hashed by `flush`

    def flush() -> None:
        for (i, _), hexdigest in zip(held, digest.sha256_many([data for _, data in held])):
            out[i] = "sha256:" + hexdigest
        held.clear()

    held_bytes = 0
    for ref in refs:
        tag = _LISTED.get(ref, (None, None))[1]
        if tag is None and is_s3(ref):
            bucket, name = split_s3(ref)
            tag = _s3_call("stat", "source", s3_client().stat_object, bucket, name).etag.strip('"')
        out.append(tag or "")
        if tag is not None:
            continue
        try:
            large = os.path.getsize(ref) > digest.BATCH_BYTES
        except OSError as err:
            raise StorageError(f"cannot read source: {err.strerror}") from err
        if large:
            out[-1] = "sha256:" + _hash_file(ref)
            continue
        held.append((len(out) - 1, read_source(ref)))
        held_bytes += len(held[-1][1])
        if held_bytes >= digest.BATCH_BYTES:
            flush()
            held_bytes = 0
    flush()
    return out


def _hash_file(path: str) -> str:
    """The SHA-256 of a file too large to hold, read a MiB at a time."""
    import hashlib

    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    except OSError as err:
        raise StorageError(f"cannot read source: {err.strerror}") from err
    return h.hexdigest()
