"""Process settings for running the chain many times in one process (pool or Celery worker).

Two costs outside our code dominated a 512² slice on the benchmark machine (docs/benchmarks.md):
- glibc returns freed memory at the top of the heap to the kernel once more than a few MiB are free,
  and a slice's 0.5–2 MiB arrays then fault their pages back in on every use (a float64 divide of a
  512² array: 3.1 ms instead of 0.14). Keeping up to ``TRIM_BYTES`` free in the process ends that;
  arrays above ``MMAP_BYTES`` still come from and go back to the kernel, so peak RSS stays the working
  set of one instance and does not grow with series length.
- OpenCV's own thread pool: the chain already runs one instance per process on every core.
"""
from __future__ import annotations

import ctypes
import os

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
    import cv2

    cv2.setNumThreads(1)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's cpuset limits it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
