"""Process settings for running the chain many times in one process (pool or Celery worker).

Two costs outside our code dominated a 512² slice on the benchmark machine (docs/benchmarks.md):
- glibc returns freed memory at the top of the heap to the kernel once more than a few MiB are free,
  and a slice's 0.5–2 MiB arrays then fault their pages back in on every use (a float64 divide of a
  512² array: 3.1 ms instead of 0.14). Keeping up to ``TRIM_BYTES`` free in the process ends that;
  arrays above ``MMAP_BYTES`` still come from and go back to the kernel, so peak RSS stays the working
  set of one instance and does not grow with series length.
- OpenCV's own thread pool: the chain already runs one instance per process on every core.

Start-up is paid by every `convert` (0.13 s of a 200-slice run's 0.43 s), so imports are kept off
its path: OpenCV until something resizes, writes or checks a JPEG (`opencv`); requests, tqdm,
urllib.request and pydicom's examples, which pydicom imports only for its own test files, and the
libraries of pydicom's compression plugins until a compressed instance is met
(`import_pydicom_lean`, `load_pixel_plugins`); and no garbage is collected while they import
(`imports_without_gc`).
"""
from __future__ import annotations

import ctypes
import gc
import importlib
import os
import re
import sys
import threading
import types
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

#: mallopt parameters (glibc malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
TRIM_BYTES = 256 << 20
MMAP_BYTES = 32 << 20

_done = False


def _glibc_mallopt(param: int, value: int) -> bool:
    """mallopt when the C library is glibc; False elsewhere (musl, macOS), where it is a no-op."""
    try:  # the process's own symbols: no ``find_library``, which runs ldconfig (~3 ms)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(param, value))


def tune_process() -> None:
    """Apply the settings once per process (forked pool workers inherit them)."""
    global _done
    if _done:
        return
    _done = True
    _glibc_mallopt(_M_MMAP_THRESHOLD, MMAP_BYTES)
    _glibc_mallopt(_M_TRIM_THRESHOLD, TRIM_BYTES)


@contextmanager
def imports_without_gc() -> Iterator[None]:
    """Collect no garbage while a command imports its libraries, then freeze what they made.

    Modules, classes and functions made at import live as long as the process, yet the ~400
    imports of a `convert` trigger collections that walk them and free nothing: 30 M of a
    one-slice run's 808 M instructions (callgrind). Frozen (`gc.freeze`), they stay out of later
    collections, and pool processes forked afterwards do not copy their pages by marking them.
    For entry points only: a library must not switch its host's collector off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


@cache
def opencv():
    """The ``cv2`` module, imported on first use and single-threaded: ~35 ms of start-up that
    runs which neither resize nor write JPEG never pay. Processes that fork a pool call it first."""
    import cv2

    cv2.setNumThreads(1)
    return cv2


#: Modules pydicom imports that a conversion never uses: its test-file downloader's HTTP stack
#: (urllib.request brings http.client, ssl and socket: ~12 ms) and its example datasets, which
#: resolve 13 test files (~5 ms).
DEFERRED_MODULES = ("urllib.request", "pydicom.examples")


class _Deferred(types.ModuleType):
    """Stands in ``sys.modules`` for a module until an attribute is asked of it; the real
    module is then imported, replaces the stand-in (in ``sys.modules`` and as its package's
    attribute) and answers that and every later request. Its ``__spec__`` is None, so the import
    system takes it as an imported module without loading anything (Python 3.11 reads a lazy
    loader's spec and loads it at once)."""

    _lock = threading.Lock()

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__") and attr != "__path__":
            raise AttributeError(attr)  # introspection (pickle, inspect, copy) loads nothing
        return getattr(self._load(), attr)

    def _load(self) -> types.ModuleType:
        name = self.__name__
        with self._lock:
            if sys.modules.get(name) is self:
                del sys.modules[name]
            module = importlib.import_module(name)  # sets the package's attribute to the module
        return module


class _MetadataWhileImporting(_Deferred):
    """``importlib.metadata`` while pydicom imports: pydicom reads its own version at import, and
    the real module brings email, zipfile and csv (~12 ms of every command). A version is
    answered from the distribution's ``<name>-<version>.dist-info`` directory (`dist_info_version`);
    anything else asked of the module loads the real one."""

    __path__: list[str] = []  # a package, as the real one is: `from … import version` asks first

    def version(self, distribution_name: str) -> str:
        found = dist_info_version(distribution_name)
        return found if found is not None else self._load().version(distribution_name)


def _normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def dist_info_version(name: str) -> str | None:
    """The version ``importlib.metadata.version(name)`` gives, read from the name of the
    distribution's ``<name>-<version>.dist-info`` directory (the wheel format names it so), or
    None where that directory does not settle it: an ``.egg-info`` met first, or no match."""
    want = _normalised(name)
    for entry in sys.path:
        try:
            children = os.listdir(entry or ".")  # importlib.metadata's own order
        except OSError:
            continue
        for child in children:
            stem, dot, suffix = child.rpartition(".")
            if suffix not in ("dist-info", "egg-info") or not dot:
                continue
            dist, _, version = stem.partition("-")
            if _normalised(dist) == want:
                return version if suffix == "dist-info" and version else None
    return None


def _defer(name: str) -> None:
    if name in sys.modules:
        return
    stand_in = _Deferred(name)
    sys.modules[name] = stand_in
    package, _, child = name.rpartition(".")
    if package in sys.modules:  # `import a.b` binds `a`: its `b` must be there to be used
        setattr(sys.modules[package], child, stand_in)


#: The libraries behind pydicom's decoding and encoding plugins, which pydicom imports at its own
#: import to ask each plugin whether it can run (~28 ms: pylibjpeg scans the entry points of every
#: installed distribution three times, Pillow loads its imaging core). Native pixels need none.
PLUGIN_LIBRARIES = ("pylibjpeg", "openjpeg", "libjpeg", "rle", "jpeg_ls", "PIL")
#: pydicom's modules that ask for them, reloaded in this order by `load_pixel_plugins`: the
#: plugins, then the registries (which add every plugin again, in pydicom's own order), then the
#: packages that re-export the registries' names.
_PLUGIN_MODULES = (
    "pydicom.pixels.processing",
    "pydicom.pixels.decoders.pylibjpeg", "pydicom.pixels.decoders.pillow", "pydicom.pixels.decoders.pyjpegls",
    "pydicom.pixels.encoders.pylibjpeg", "pydicom.pixels.encoders.pyjpegls",
    "pydicom.pixels.decoders.base", "pydicom.pixels.encoders.base",
    "pydicom.pixels.decoders", "pydicom.pixels.encoders",
)
_plugins = {"deferred": False}
_plugins_lock = threading.Lock()


def import_pydicom_lean() -> None:
    """Import pydicom with requests, tqdm and `PLUGIN_LIBRARIES` hidden and `DEFERRED_MODULES`
    stood in for, for command-line entry points.

    pydicom.data.download imports requests and tqdm only to fetch pydicom's own test files and
    falls back to urllib without them; requests brings urllib3, charset_normalizer, idna and
    http.cookiejar: ~35 ms of every run. They and the plugin libraries are hidden only during
    this import (the process may import them later as usual; `load_pixel_plugins` hands the
    plugins to pydicom before compressed pixels are decoded); the deferred modules load on
    first use; pydicom reads its own version through a stand-in for importlib.metadata, which
    the next import of that module replaces. Nothing happens when pydicom is imported already.
    """
    if "pydicom" in sys.modules:
        return
    hidden = [name for name in ("requests", "tqdm", *PLUGIN_LIBRARIES) if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    for name in DEFERRED_MODULES:
        _defer(name)
    metadata = None
    if "importlib.metadata" not in sys.modules:
        metadata = sys.modules["importlib.metadata"] = _MetadataWhileImporting("importlib.metadata")
    try:
        import pydicom
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
        if metadata is not None and sys.modules.get("importlib.metadata") is metadata:
            del sys.modules["importlib.metadata"]  # the next `import importlib.metadata` is the real one
    _plugins["deferred"] = any(name in hidden for name in PLUGIN_LIBRARIES)
    examples = sys.modules.get("pydicom.examples")
    if isinstance(examples, _Deferred):
        pydicom.examples = examples  # imported before pydicom was a package with attributes


def load_pixel_plugins() -> None:
    """Give pydicom its decoding and encoding plugins in a process whose pydicom was imported
    lean (`import_pydicom_lean`); nothing to do otherwise. The plugin modules are reloaded now
    that their libraries import, then pydicom's registries, whose module code adds every plugin
    in pydicom's own order, which decides which of two plugins decodes a frame
    (tests/test_runtime.py holds the result equal to an ordinary import's). Called before the
    first compressed instance of a process is decoded: ~30 ms, once."""
    if not _plugins["deferred"]:
        return
    with _plugins_lock:
        if not _plugins["deferred"]:
            return
        for name in _PLUGIN_MODULES:
            module = sys.modules.get(name)
            if module is not None:
                importlib.reload(module)
        _plugins["deferred"] = False


def pool_child_init() -> None:
    """Pool processes die with the process that started them and leave signals to it: killed
    or stopped, it takes them along (PR_SET_PDEATHSIG), where they were left blocked for ever."""
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: no such call
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's cpuset limits it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
