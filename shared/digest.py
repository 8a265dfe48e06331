"""SHA-256 of the chain's bytes: one buffer with hashlib, many at once where SIMD lanes are faster.

Every source and every output is hashed (DESIGN.md). On x86 CPUs without the SHA extensions
OpenSSL hashes ~0.4 GB/s, a third of a CT slice's conversion; `sha256_many` hashes a chunk's
sources (or outputs) in the lanes of ``shared._sha256x`` instead (~2.2 GB/s with AVX-512 on one
core). Where the CPU has the SHA extensions, or the extension was not built, it is hashlib
throughout. Either way the digests are the same.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache

#: One pass of the kernel costs about as much as hashing this many full-length messages one by
#: one (measured on a Xeon Cascade Lake: a 16-lane pass of 0.5 MB messages 3.4 ms, hashlib 1.3 ms
#: a message); fewer left over after the full passes go to hashlib.
MIN_PASS = {16: 3, 8: 4}

#: A message this much longer than the median would keep the other lanes idle at the end.
OUTLIER = 2

#: Bytes a caller holds at most to hash them together (the chain's groups of sources, submit's
#: fingerprints): 16 CT slices are 8 MiB; one large multi-frame instance is hashed on its own.
BATCH_BYTES = 32 << 20

Buffer = bytes | bytearray | memoryview


def sha256(data: Buffer) -> str:
    return hashlib.sha256(data).hexdigest()


@cache
def lanes() -> int:
    """Messages hashed in one pass here: 16 or 8 with the kernel, 1 with hashlib (the CPU has the
    SHA extensions, or the extension was not built)."""
    try:
        from . import _sha256x
    except ImportError:
        return 1
    usable = _sha256x.kernels()
    return 1 if _sha256x.sha_ni() or not usable else usable[0]


def batched(messages: Sequence[Buffer], width: int) -> tuple[list[int], list[int]]:
    """Which messages (indices) go through the ``width``-lane kernel, which to hashlib.

    Longest first, so the last pass is short; outliers (over `OUTLIER` × the median) and a small
    last pass (under `MIN_PASS`) to hashlib, where they cost less than idle lanes.
    """
    if width <= 1 or len(messages) < MIN_PASS.get(width, width):
        return [], list(range(len(messages)))
    order = sorted(range(len(messages)), key=lambda i: len(messages[i]), reverse=True)
    longest = OUTLIER * max(len(messages[order[len(order) // 2]]), 64)  # the median's, a block at least
    simd = [i for i in order if len(messages[i]) <= longest]
    alone = [i for i in order if len(messages[i]) > longest]
    rest = len(simd) % width
    if rest and rest < MIN_PASS[width]:
        alone += simd[-rest:]
        simd = simd[:-rest]
    return simd, alone


def sha256_many(messages: Sequence[Buffer], *, width: int | None = None) -> list[str]:
    """The hex SHA-256 of each message, in order (``width``: lanes, default `lanes`)."""
    width = lanes() if width is None else width
    together, alone = batched(messages, width)
    out: list[str] = [""] * len(messages)
    if together:
        from . import _sha256x

        for i, digest in zip(together, _sha256x.digests([messages[i] for i in together], lanes=width)):
            out[i] = digest.hex()
    for i in alone:
        out[i] = hashlib.sha256(messages[i]).hexdigest()
    return out
