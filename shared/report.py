"""The PDF/A-2b series report: key slices, as displayed, captioned with whitelisted attributes.

Key slices are chosen along the slice normal (``25%`` of the series extent, a position ``-40mm``,
or an output number ``12``); the images are the 8-bit display renderings (window, radiological
orientation, square pixels), embedded losslessly: Flate over PNG-filtered rows (Predictor 15),
never re-compressed. PDF/A-2b as ISO 19005-2 asks: XMP with ``pdfaid:part=2``/``conformance=B``
and only the whitelisted attributes (shared/metadata.py), an sRGB OutputIntent, the caption font
embedded (shared/font.py), no encryption, no transparency, no document-info dates, a file ID.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .errors import ConfigError, InvalidDicomError

DEFAULT_SLICES = ("25%", "50%", "75%")
MAX_SLICES = 24
PER_PAGE = 3
PAGE = (595.0, 842.0)  # A4 in points
MARGIN = 42.0
TITLE = "Series report"
_NUMBER = r"[-+]?\d+(?:\.\d+)?"


@dataclass(frozen=True)
class SliceChoice:
    """One ``--slices`` item: a fraction of the extent, a position in mm, or an output number."""

    kind: str  # "fraction" | "position" | "number"
    value: float
    text: str


def parse_slices(specs: tuple[str, ...]) -> tuple[SliceChoice, ...]:
    """Validate ``--slices`` items (empty: 25%, 50%, 75%)."""
    choices = []
    for spec in specs or DEFAULT_SLICES:
        text = str(spec).strip().lower()
        if m := re.fullmatch(rf"({_NUMBER})\s*%", text):
            value = float(m.group(1))
            if not 0 <= value <= 100:
                raise ConfigError(f"slice {spec!r}: a percentage of the extent must be 0..100")
            choices.append(SliceChoice("fraction", value / 100, text))
        elif m := re.fullmatch(rf"({_NUMBER})\s*mm", text):
            choices.append(SliceChoice("position", float(m.group(1)), text))
        elif re.fullmatch(r"\d+", text) and int(text) >= 1:
            choices.append(SliceChoice("number", float(text), text))
        else:
            raise ConfigError(f"invalid slice {spec!r}: expected N% of the extent, a position "
                              "like -40mm, or an output number like 12")
    if len(choices) > MAX_SLICES:
        raise ConfigError(f"at most {MAX_SLICES} --slices, got {len(choices)}")
    return tuple(choices)


@dataclass(frozen=True)
class Unit:
    """One displayable image of the series: its output number, frame (1-based, None when the
    instance has one) and position along the slice normal in mm (None when unknown)."""

    index: int
    frame: int | None
    position: float | None


def pick_slices(choices: tuple[SliceChoice, ...], units: list[Unit]) -> list[Unit]:
    """The units the choices name, in series order, each once. Fractions and positions go along
    the slice normal when every unit has a position, else along the series order."""
    if not units:
        raise InvalidDicomError("no converted instance to report")
    positioned = all(u.position is not None for u in units)
    picked: list[Unit] = []
    for choice in choices:
        if choice.kind == "number":
            found = [u for u in units if u.index == int(choice.value)]
            if not found:
                raise InvalidDicomError(f"slice {choice.text}: no converted output with that number")
            unit = found[len(found) // 2]
        elif choice.kind == "position":
            if not positioned:
                raise InvalidDicomError(f"slice {choice.text}: the series has no Image Position/"
                                        "Orientation (Patient) to place it (use N% or a number)")
            unit = min(units, key=lambda u: abs(u.position - choice.value))
        elif positioned:
            low, high = min(u.position for u in units), max(u.position for u in units)
            target = low + choice.value * (high - low)
            unit = min(units, key=lambda u: abs(u.position - target))
        else:
            unit = units[round(choice.value * (len(units) - 1))]
        if unit not in picked:
            picked.append(unit)
    return sorted(picked, key=units.index)


@dataclass(frozen=True)
class ReportImage:
    """A key slice as shown, with its caption lines."""

    pixels: np.ndarray  # uint8, H×W or H×W×3
    caption: tuple[str, ...]


def image_stream_data(img: np.ndarray) -> bytes:
    """Flate over PNG-filtered rows: the pixels exactly, decoded with /Predictor 15."""
    from .png import filtered_rows

    return zlib.compress(filtered_rows(img).tobytes(), 6)


@lru_cache(maxsize=1)
def srgb_profile() -> bytes:
    """LittleCMS's built-in sRGB profile (Pillow), made deterministic: a fixed creation date and
    version 4.2, the ICC.1:2004-10 that ISO 32000-1 (PDF 1.7, the base of PDF/A-2) references."""
    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    data[8:12] = bytes([4, 0x20, 0, 0])
    data[24:36] = bytes.fromhex("07e8" "0001" "0001" "0000" "0000" "0000")  # 2024-01-01 00:00:00
    return bytes(data)


def _pdf_text(data: bytes) -> bytes:
    return b"(" + data.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)") + b")"


def build_report(images: list[ReportImage], fields: dict[str, str], heading: tuple[str, ...]) -> bytes:
    """The report as PDF/A-2b bytes: ``heading`` lines, then the images top to bottom, three a page."""
    import pikepdf
    from pikepdf import Array, Dictionary, Name, Stream

    from .font import FIRST_CODE, LAST_CODE, caption_font
    from .metadata import xmp_packet

    font = caption_font()
    pdf = pikepdf.new()
    program = Stream(pdf, font.program)
    program.Length1 = len(font.program)
    descriptor = Dictionary(
        Type=Name.FontDescriptor, FontName=Name("/" + font.name), Flags=32,
        FontBBox=Array([font.scale(v) for v in font.bbox]), ItalicAngle=font.italic_angle,
        Ascent=font.scale(font.ascent), Descent=font.scale(font.descent),
        CapHeight=font.scale(font.cap_height), StemV=80, FontFile2=pdf.make_indirect(program))
    font_ref = pdf.make_indirect(Dictionary(
        Type=Name.Font, Subtype=Name.TrueType, BaseFont=Name("/" + font.name), FirstChar=FIRST_CODE,
        LastChar=LAST_CODE, Widths=Array(font.widths()), Encoding=Name.WinAnsiEncoding,
        FontDescriptor=pdf.make_indirect(descriptor)))

    def text(x: float, y: float, size: float, line: str) -> bytes:
        return b"BT /F1 %.1f Tf 1 0 0 1 %.2f %.2f Tm " % (size, x, y) + _pdf_text(font.encode(line)) + b" Tj ET\n"

    width, height = PAGE
    pages = [images[i:i + PER_PAGE] for i in range(0, len(images), PER_PAGE)] or [[]]
    for number, group in enumerate(pages, start=1):
        content = bytearray(b"0 g\n")
        y = height - MARGIN - 14
        content += text(MARGIN, y, 14, TITLE + (f" (page {number} of {len(pages)})" if len(pages) > 1 else ""))
        for line in heading:
            y -= 13
            content += text(MARGIN, y, 9, line)
        panel = (y - 8 - MARGIN) / PER_PAGE
        xobjects = Dictionary()
        for k, image in enumerate(group):
            rows, cols = image.pixels.shape[:2]
            colours = 3 if image.pixels.ndim == 3 else 1
            top = y - 8 - k * panel
            box_h, box_w = panel - 12 - 11 * len(image.caption), width - 2 * MARGIN
            scale = min(box_w / cols, box_h / rows)
            w_pt, h_pt = cols * scale, rows * scale
            x0, y0 = (width - w_pt) / 2, top - h_pt
            stream = Stream(pdf, image_stream_data(image.pixels))
            stream.stream_dict.update(Dictionary(
                Type=Name.XObject, Subtype=Name.Image, Width=cols, Height=rows, BitsPerComponent=8,
                ColorSpace=Name.DeviceRGB if colours == 3 else Name.DeviceGray, Filter=Name.FlateDecode,
                DecodeParms=Dictionary(Predictor=15, Colors=colours, BitsPerComponent=8, Columns=cols)))
            name = f"Im{k + 1}"
            xobjects[Name("/" + name)] = pdf.make_indirect(stream)
            content += b"q %.3f 0 0 %.3f %.3f %.3f cm /%s Do Q\n" % (w_pt, h_pt, x0, y0, name.encode())
            for j, line in enumerate(image.caption):  # under the image's left edge, inside the page
                x = max(MARGIN, min(x0, width - MARGIN - font.text_width(line, 8)))
                content += text(x, y0 - 11 - 11 * j, 8, line)
        page = pdf.add_blank_page(page_size=PAGE)
        page.obj.Resources = Dictionary(Font=Dictionary(F1=font_ref), XObject=xobjects)
        page.obj.Contents = pdf.make_indirect(Stream(pdf, bytes(content)))

    icc = Stream(pdf, srgb_profile())
    icc.N = 3
    pdf.Root.OutputIntents = Array([Dictionary(
        Type=Name.OutputIntent, S=Name.GTS_PDFA1, OutputConditionIdentifier="sRGB IEC61966-2.1",
        Info="sRGB IEC61966-2.1", DestOutputProfile=pdf.make_indirect(icc))])
    metadata = Stream(pdf, xmp_packet(fields, title=TITLE, pdfa=True))
    metadata.Type, metadata.Subtype = Name.Metadata, Name.XML
    pdf.Root.Metadata = pdf.make_indirect(metadata)
    if "/Info" in pdf.trailer:
        del pdf.trailer.Info
    import io

    out = io.BytesIO()
    # level none: the image streams are written exactly as made (already Flate, never re-encoded)
    pdf.save(out, min_version="1.7", deterministic_id=True, compress_streams=True,
             stream_decode_level=pikepdf.StreamDecodeLevel.none,
             object_stream_mode=pikepdf.ObjectStreamMode.disable)
    return out.getvalue()
