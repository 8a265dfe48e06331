"""Image size declared inside compressed frames (JPEG, JPEG-LS, JPEG 2000), read without decoding.

Decoders allocate what the codestream declares, not what the DICOM header says: a 64×64 header
over a JPEG frame header claiming 60000×60000 makes libjpeg allocate gigabytes (and CharLS abort
the process). Reading the few header bytes first lets the caller refuse such frames up front.
"""
from __future__ import annotations

#: JPEG start-of-frame markers (ITU T.81 B.1.1.3; 0xF7 is JPEG-LS SOF55, T.87). C4/C8/CC are not SOFs.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn carry no length
_J2K_SOC_SIZ = b"\xff\x4f\xff\x51"
#: the JP2 file format's signature box (ISO 15444-1 I.5.1), which some encoders wrap frames in
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"


def jpeg_size(data: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from the first SOF marker of a JPEG or JPEG-LS stream."""
    if data[:2] != b"\xff\xd8":
        return None
    i, end = 2, len(data)
    while i + 4 <= end:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte before a marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            return None
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker in _SOF:
            if length < 8 or i + 10 > end:
                return None
            rows = int.from_bytes(data[i + 5:i + 7], "big")
            cols = int.from_bytes(data[i + 7:i + 9], "big")
            return rows, cols, data[i + 9]
        if length < 2:
            return None
        i += 2 + length
    return None


def j2k_size(data: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) from the SIZ marker of the codestream a decoder reads: one that
    starts the frame (ISO 15444-1 A.5.1), or the first top-level ``jp2c`` box of a JP2-wrapped
    frame (I.5.4). Not the first SIZ-looking bytes anywhere: a JP2 file may carry a decoy
    codestream in another box, and the decoder would allocate what the real one declares."""
    start = 0 if data.startswith(_J2K_SOC_SIZ) else _jp2_codestream(data)
    if start is None or not data.startswith(_J2K_SOC_SIZ, start):
        return None
    siz = data[start + 4:start + 4 + 38]
    if len(siz) < 38:
        return None
    xsiz, ysiz, x0, y0 = (int.from_bytes(siz[4 + 4 * k:8 + 4 * k], "big") for k in range(4))
    return ysiz - y0, xsiz - x0, int.from_bytes(siz[36:38], "big")


def _jp2_codestream(data: bytes) -> int | None:
    """Where the first top-level ``jp2c`` box's codestream starts in a JP2-wrapped frame."""
    if not data.startswith(_JP2_SIGNATURE):
        return None
    i, end = 0, len(data)
    while i + 8 <= end:
        length, kind = int.from_bytes(data[i:i + 4], "big"), data[i + 4:i + 8]
        header = 8
        if length == 1:  # XLBox: a 64-bit length follows
            if i + 16 > end:
                return None
            length, header = int.from_bytes(data[i + 8:i + 16], "big"), 16
        elif length == 0:  # the box runs to the end
            length = end - i
        if kind == b"jp2c":
            return i + header
        if length < header:
            return None
        i += length
    return None


def rle_capacity(data: bytes) -> int:
    """The most bytes an RLE Lossless frame (PS3.5 G.3) of this size can decode to: at best a
    2-byte replicate run yields 128 bytes, after the 64-byte segment header."""
    return max(len(data) - 64, 0) * 64
