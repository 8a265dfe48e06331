"""A small PNG writer: Sub-filtered rows, run-length deflated, in plain chunks with CRCs.

Why our own: deflate is most of a slice's cost. libpng through OpenCV at zlib level 1 takes about
2.8 ms for a 512×512 8-bit slice and 11 ms for a 16-bit one. Sub-filtered CT rows are runs (air,
flat regions) and noise; LZ77 beyond the previous byte buys almost nothing on them, so a
run-length stream (matches at distance 1 only, then dynamic Huffman codes) writes them at 47 kB
against libpng's 52 kB, and 266 kB against 266 kB. ``shared/_deflate.c`` writes that stream in
one pass (0.17 ms and 0.74 ms a slice here); where it was not built, zlib-ng's run-length
strategy (``Z_RLE``, 0.5 ms and 2.7 ms) writes the same kind of stream. The file is an ordinary PNG
(IHDR, tEXt, one IDAT, IEND), which Pillow and libpng decode to the same pixels (tests/test_png.py).

Outputs must be byte-identical wherever they are made (a redelivered job rewrites the same bytes;
fleet and local runs agree). ``_deflate.c`` is integer code whose stream depends on the input bytes
only, on every CPU; zlib-ng's run-length deflate has no hash table and its CPU-specific paths
compute the same runs, so its stream depends only on the zlib-ng version (pinned in
pyproject.toml). The two write different bytes of the same pixels: `DEFLATE_ROUTE` says which runs
here, and the image builds the extension (docker/Dockerfile), so a fleet writes one. tests/test_png.py
pins both. Two encoders were turned down: ISA-L, whose output changed between processes on the same
pixels (its hash differs by CPU code path, intel/isa-l#73), and zlib-ng's own levels, whose match
finder hashes differently by CPU. libdeflate only inflates the files to verify them (``check_png``),
a second implementation reading what the first wrote.
"""
from __future__ import annotations

import struct

import deflate
import numpy as np
from zlib_ng import zlib_ng

try:
    from ._deflate import rle_deflate, sub_filter
except ImportError:  # built without a C compiler: zlib-ng's run-length strategy, numpy's filter
    rle_deflate = sub_filter = None

#: How PNG rows are deflated here: "one-pass" (shared/_deflate.c) or "zlib-ng" (its Z_RLE)
DEFLATE_ROUTE = "zlib-ng" if rle_deflate is None else "one-pass"

SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: zlib-ng, where `_deflate` was not built: level 1 (any level > 0 runs the same run-length
#: search), the full window and memory level 9, whose larger symbol buffer makes fewer, cheaper
#: blocks (0.35 vs 0.39 ms a slice).
LEVEL, WINDOW_BITS, MEMORY_LEVEL = 1, 15, 9
_COLOUR_TYPE = {1: 0, 3: 2}  # samples per pixel → PNG colour type (grey, truecolour)
_SUB = 1  # PNG filter type 1: each byte minus the byte one pixel to its left
_IEND = b"\0\0\0\0IEND\xaeB`\x82"  # the empty IEND chunk and its CRC


def chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 over type and data (zlib-ng's, with carry-less
    multiplication: 0.005 ms for a 16-bit slice's IDAT against the system zlib's 0.07)."""
    crc = zlib_ng.crc32(payload, zlib_ng.crc32(kind))
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc & 0xFFFFFFFF)


def text_chunk(key: str, value: str) -> bytes:
    """tEXt: a Latin-1 keyword of 1–79 characters, NUL, Latin-1 text."""
    keyword = key.encode("latin-1")[:79]
    if not keyword:
        raise ValueError("PNG tEXt keyword must not be empty")
    return chunk(b"tEXt", keyword + b"\0" + value.encode("latin-1", "replace"))


def _layout(img: np.ndarray) -> tuple[int, int, int, int]:
    """(height, width, samples per pixel, bit depth) of an encodable array, else ValueError."""
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG holds uint8 or uint16 samples, not {img.dtype}")
    if img.ndim == 2:
        samples = 1
    elif img.ndim == 3 and img.shape[2] in _COLOUR_TYPE:
        samples = img.shape[2]
    else:
        raise ValueError(f"PNG needs an H×W or H×W×3 array, not shape {img.shape}")
    height, width = img.shape[:2]
    if not (0 < height < 1 << 31 and 0 < width < 1 << 31):
        raise ValueError(f"PNG dimensions must be positive, got {height}×{width}")
    return height, width, samples, 8 * img.dtype.itemsize


def filtered_rows(img: np.ndarray) -> np.ndarray:
    """The image data PNG deflates: per row a filter-type byte (Sub) and the filtered bytes.

    Sub subtracts, byte by byte modulo 256, the corresponding byte of the pixel to the left, so
    flat and smooth regions become runs of small values that deflate well.
    """
    height, width, samples, depth = _layout(img)
    bpp = samples * depth // 8
    if sub_filter is not None and img.flags.c_contiguous:
        out = np.empty((height, width * bpp + 1), dtype=np.uint8)  # one pass in C, swap included
        sub_filter(img, out, height, width * bpp, bpp, depth == 16)
        return out
    raw = img.astype(">u2", copy=False) if depth == 16 else img
    rows = np.ascontiguousarray(raw).view(np.uint8).reshape(height, -1)
    out = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    out[:, 0] = _SUB
    out[:, 1:1 + bpp] = rows[:, :bpp]
    np.subtract(rows[:, bpp:], rows[:, :-bpp], out=out[:, 1 + bpp:])  # uint8 wraps: modulo 256
    return out


#: The zlib header (RFC 1950) of `_deflate`'s streams: deflate, 32 KiB window, "fastest"
_ZLIB_HEADER = b"\x78\x01"


def _deflate(rows: np.ndarray) -> list[bytes]:
    """A zlib stream (RFC 1950) of ``rows`` in pieces: run-length matches, Huffman coded,
    Adler-32 checked. Pieces, so that the file is joined once (a 16-bit slice's stream is 266 kB)."""
    if rle_deflate is not None:
        return [_ZLIB_HEADER, rle_deflate(rows), struct.pack(">I", zlib_ng.adler32(rows))]
    deflater = zlib_ng.compressobj(LEVEL, zlib_ng.DEFLATED, WINDOW_BITS, MEMORY_LEVEL, zlib_ng.Z_RLE)
    return [deflater.compress(rows), deflater.flush()]


def compress(rows: np.ndarray) -> bytes:
    """The zlib stream of ``rows`` as one bytes object."""
    return b"".join(_deflate(rows))


def encode_png(img: np.ndarray, text: dict[str, str] | None = None, chunks: tuple[bytes, ...] = ()) -> bytes:
    """An 8- or 16-bit grey (H×W) or RGB (H×W×3) array as PNG bytes: IHDR, the ready-made
    ``chunks`` (metadata: eXIf, iTXt), a tEXt chunk per ``text`` item, IDAT, IEND — joined once."""
    height, width, samples, depth = _layout(img)
    ihdr = struct.pack(">IIBBBBB", width, height, depth, _COLOUR_TYPE[samples], 0, 0, 0)
    stream = _deflate(filtered_rows(img))
    crc = zlib_ng.crc32(b"IDAT")
    for piece in stream:
        crc = zlib_ng.crc32(piece, crc)
    return b"".join([SIGNATURE, chunk(b"IHDR", ihdr), *chunks,
                     *(text_chunk(k, v) for k, v in (text or {}).items()),
                     struct.pack(">I", sum(map(len, stream))), b"IDAT", *stream,
                     struct.pack(">I", crc & 0xFFFFFFFF), _IEND])


def check_png(buf: bytes, img: np.ndarray) -> str | None:
    """None when ``buf`` is a PNG holding exactly ``img``, else the first thing found wrong.

    Read as a decoder reads it — signature, every chunk's length and CRC, IHDR against the array,
    chunk order — then the IDAT stream, inflated to exactly the expected length with its Adler-32
    checked, must equal, byte for byte, the filtered rows of ``img``. Since unfiltering those rows
    gives ``img`` back (tests/test_png.py checks Pillow, libpng, zlib and a decoder from the spec
    agree), this proves the file decodes to ``img`` at a fifth of the cost of a full decode.

    The inflater is libdeflate's: 0.18 ms a CT slice against zlib's 0.50, and a different
    implementation from zlib-ng, which wrote the stream: a compressor bug is not mirrored by its
    reader.
    """
    if not buf.startswith(SIGNATURE):
        return "no PNG signature"
    pos, kinds, idat = len(SIGNATURE), [], []
    ihdr = b""
    view = memoryview(buf)  # chunk payloads as views: the IDAT's bytes are not copied to be checked
    while pos + 12 <= len(buf):
        (length,) = struct.unpack_from(">I", buf, pos)
        end = pos + 12 + length
        if end > len(buf):
            return f"chunk at byte {pos} runs past the end of the file"
        kind, payload = buf[pos + 4:pos + 8], view[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack_from(">I", buf, end - 4)
        if deflate.crc32(payload, deflate.crc32(kind)) != crc:  # libdeflate's: not the writer's
            return f"{kind.decode('latin-1')} chunk CRC mismatch"
        kinds.append(kind)
        if kind == b"IHDR":
            ihdr = bytes(payload)
        elif kind == b"IDAT":
            idat.append(payload)
        pos = end
    if pos != len(buf) or not kinds or kinds[0] != b"IHDR" or kinds[-1] != b"IEND":
        return "chunks are not IHDR … IEND"
    try:
        height, width, samples, depth = _layout(img)
    except ValueError as err:
        return str(err)
    want = struct.pack(">IIBBBBB", width, height, depth, _COLOUR_TYPE[samples], 0, 0, 0)
    if ihdr != want:
        return f"IHDR {ihdr.hex()} does not describe a {img.dtype} array of shape {img.shape}"
    want_rows = filtered_rows(img)
    try:
        rows = deflate.zlib_decompress(idat[0] if len(idat) == 1 else b"".join(idat), want_rows.nbytes)
    except deflate.DeflateError as err:  # corrupt, failed Adler-32, or longer than the image
        return f"IDAT does not inflate to {want_rows.nbytes} bytes ({err})"
    if len(rows) != want_rows.nbytes:
        return f"IDAT inflates to {len(rows)} bytes, not {want_rows.nbytes}"
    if rows != want_rows.tobytes():
        return "IDAT does not hold the image's rows"
    return None
