"""The caption font: Roboto Regular from the ``font-roboto`` package (Apache 2.0, embeddable), and
the metrics a PDF font dictionary needs, read from the TrueType tables themselves.

PDF/A requires every font embedded with widths that agree with its program; reading them from
``hmtx`` through the Windows Unicode ``cmap`` guarantees that. Text is limited to what WinAnsi
encodes and the font draws; anything else becomes '?'.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

FIRST_CODE, LAST_CODE = 32, 255  # the WinAnsi codes the PDF font dictionary describes


def font_path() -> Path:
    import font_roboto

    return Path(font_roboto.font_directory) / "Roboto-Regular.ttf"


@dataclass(frozen=True)
class TrueTypeFont:
    name: str
    program: bytes
    units_per_em: int
    bbox: tuple[int, int, int, int]
    ascent: int
    descent: int
    cap_height: int
    italic_angle: float
    advances: dict[int, int]  # Unicode code point → advance width in font units (glyph present)

    def scale(self, value: float) -> int:
        """Font units → PDF glyph space (1/1000 of the text size)."""
        return round(value * 1000 / self.units_per_em)

    def widths(self) -> list[int]:
        """/Widths for codes FIRST_CODE..LAST_CODE under WinAnsiEncoding (0 where unused)."""
        out = []
        for code in range(FIRST_CODE, LAST_CODE + 1):
            char = winansi_char(code)
            out.append(self.scale(self.advances[ord(char)]) if char and ord(char) in self.advances else 0)
        return out

    def encode(self, text: str) -> bytes:
        """``text`` as WinAnsi bytes the font can draw; other characters become '?'."""
        out = bytearray()
        for char in text:
            try:
                code = char.encode("cp1252")[0] if len(char.encode("cp1252")) == 1 else 63
            except UnicodeEncodeError:
                code = 63
            if not FIRST_CODE <= code <= LAST_CODE or ord(char) not in self.advances:
                code = 63
            out.append(code)
        return bytes(out)

    def text_width(self, text: str, size: float) -> float:
        """Width in points of ``text`` set at ``size``."""
        widths = self.widths()
        return sum(widths[c - FIRST_CODE] for c in self.encode(text)) * size / 1000


def winansi_char(code: int) -> str | None:
    try:
        return bytes([code]).decode("cp1252")
    except UnicodeDecodeError:
        return None  # 0x81, 0x8D, 0x8F, 0x90, 0x9D are undefined in WinAnsi


def _tables(data: bytes) -> dict[bytes, bytes]:
    (count,) = struct.unpack_from(">H", data, 4)
    tables = {}
    for i in range(count):
        tag, _, offset, length = struct.unpack_from(">4sIII", data, 12 + 16 * i)
        tables[tag] = data[offset:offset + length]
    return tables


def _cmap_bmp(cmap: bytes) -> dict[int, int]:
    """Code point → glyph id from the (3,1) format 4 subtable."""
    (count,) = struct.unpack_from(">H", cmap, 2)
    for i in range(count):
        platform, encoding, offset = struct.unpack_from(">HHI", cmap, 4 + 8 * i)
        if (platform, encoding) == (3, 1) and struct.unpack_from(">H", cmap, offset)[0] == 4:
            break
    else:
        raise ValueError("font has no Windows Unicode BMP cmap")
    sub = cmap[offset:]
    segs = struct.unpack_from(">H", sub, 6)[0] // 2
    ends = struct.unpack_from(f">{segs}H", sub, 14)
    starts = struct.unpack_from(f">{segs}H", sub, 16 + 2 * segs)
    deltas = struct.unpack_from(f">{segs}h", sub, 16 + 4 * segs)
    range_at = 16 + 6 * segs
    ranges = struct.unpack_from(f">{segs}H", sub, range_at)
    glyphs = {}
    for seg, (start, end, delta, rng) in enumerate(zip(starts, ends, deltas, ranges)):
        for code in range(start, min(end, 0x2FF) + 1):  # Latin is all we encode
            if rng == 0:
                gid = (code + delta) & 0xFFFF
            else:
                at = range_at + 2 * seg + rng + 2 * (code - start)
                gid = struct.unpack_from(">H", sub, at)[0]
                gid = (gid + delta) & 0xFFFF if gid else 0
            if gid:
                glyphs[code] = gid
    return glyphs


@lru_cache(maxsize=1)
def caption_font() -> TrueTypeFont:
    """Roboto Regular with its metrics (read once per process)."""
    path = font_path()
    data = path.read_bytes()
    t = _tables(data)
    units = struct.unpack_from(">H", t[b"head"], 18)[0]
    bbox = struct.unpack_from(">4h", t[b"head"], 36)
    ascent, descent = struct.unpack_from(">hh", t[b"hhea"], 4)
    metrics = struct.unpack_from(">H", t[b"hhea"], 34)[0]
    advances_by_glyph = struct.unpack_from(f">{metrics * 2}H", t[b"hmtx"], 0)[0::2]
    os2 = t[b"OS/2"]
    fs_type = struct.unpack_from(">H", os2, 8)[0]
    if fs_type & 0x0002:  # restricted licence embedding: PDF/A would forbid it
        raise ValueError(f"{path.name} may not be embedded (fsType {fs_type:#x})")
    cap = struct.unpack_from(">h", os2, 88)[0] if struct.unpack_from(">H", os2, 0)[0] >= 2 else ascent
    angle = struct.unpack_from(">i", t[b"post"], 4)[0] / 65536
    advances = {code: advances_by_glyph[min(gid, metrics - 1)] for code, gid in _cmap_bmp(t[b"cmap"]).items()}
    return TrueTypeFont(path.stem, data, units, bbox, ascent, descent, cap, angle, advances)
