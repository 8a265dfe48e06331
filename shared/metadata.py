"""Metadata embedded in the outputs people share: a fixed mapping of four DICOM attributes.

Study Date → EXIF DateTimeOriginal (and XMP ``exif:DateTimeOriginal``), Modality → XMP, Series
Description → the caption (EXIF ImageDescription, XMP/IPTC ``dc:description``), Device Serial
Number → EXIF BodySerialNumber/XMP only under the Retain Device Identity option. Nothing else.

Values are read from the dataset *after* de-identification, so each one is what the PS3.15
profile and its options left: by default the study date and series description are gone and
the serial number is a dummy (hence the explicit option check). Modality comes through
`shared.deid.metadata.safe_attributes`, the output whitelist. PNG gets iTXt (XMP) and eXIf, JPEG
APP1 Exif and XMP segments, TIFF the ImageDescription/DateTime tags and XMP (tag 700), PDF the XMP.
"""
from __future__ import annotations

import re
import struct
from functools import lru_cache
from xml.sax.saxutils import escape

from pydicom.dataset import Dataset

from . import __version__
from .attributes import value_of
from .deid.metadata import safe_attributes
from .options import ConvertOptions

SOFTWARE = f"dicomfleet {__version__}"
#: the mapping, in order: field name → DICOM keyword
FIELDS = {"study_date": "StudyDate", "modality": "Modality", "series_description": "SeriesDescription",
          "device_serial_number": "DeviceSerialNumber"}
RETAIN_DEVICE = "retain-device-id"  # PS3.15 Retain Device Identity Option (shared/deid/profile.py)
NS = "http://dicomfleet.invalid/ns/1.0/"  # our XMP namespace (.invalid: reserved, never resolves)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DATE = re.compile(r"^(\d{4})(\d{2})(\d{2})$")


def _clean(value: object, limit: int = 64) -> str:
    """A header value as one line of text: control characters dropped, at most ``limit`` long."""
    return " ".join(_CONTROL.sub(" ", str(value)).split())[:limit]


def embedded_fields(ds: Dataset, opts: ConvertOptions) -> dict[str, str]:
    """The mapped attributes present in (de-identified) ``ds``; dates as YYYY-MM-DD."""
    out: dict[str, str] = {}
    match = _DATE.match(str(value_of(ds, "StudyDate", "") or "").strip())
    if match:
        out["study_date"] = "-".join(match.groups())
    modality = safe_attributes(ds, ("Modality",)).get("Modality")
    if modality:
        out["modality"] = _clean(modality, 16)
    description = _clean(value_of(ds, "SeriesDescription", "") or "")
    if description:
        out["series_description"] = description
    if opts.deid and RETAIN_DEVICE in opts.deid_options:
        serial = _clean(value_of(ds, "DeviceSerialNumber", "") or "")
        if serial:
            out["device_serial_number"] = serial
    return out


def exif_datetime(date: str) -> str:
    """EXIF's 'YYYY:MM:DD HH:MM:SS' for a study date (the time is not mapped: midnight)."""
    return date.replace("-", ":") + " 00:00:00"


def _ascii(text: str) -> str:
    return text.encode("ascii", "replace").decode("ascii")


def xmp_packet(fields: dict[str, str], *, title: str | None = None, pdfa: bool = False) -> bytes:
    """An XMP packet of the mapped fields; ``pdfa`` adds the PDF/A-2b identification, the producer
    and the extension schema PDF/A requires for our own namespace's properties."""
    props = []
    if title:
        props.append(f'<dc:title><rdf:Alt><rdf:li xml:lang="x-default">{escape(title)}</rdf:li></rdf:Alt></dc:title>')
    if "series_description" in fields:
        props.append('<dc:description><rdf:Alt><rdf:li xml:lang="x-default">'
                     f'{escape(fields["series_description"])}</rdf:li></rdf:Alt></dc:description>')
    if "study_date" in fields:
        props.append(f'<exif:DateTimeOriginal>{fields["study_date"]}</exif:DateTimeOriginal>')
    if "modality" in fields:
        props.append(f'<dicomfleet:Modality>{escape(fields["modality"])}</dicomfleet:Modality>')
    if "device_serial_number" in fields:
        props.append(f'<dicomfleet:DeviceSerialNumber>{escape(fields["device_serial_number"])}'
                     '</dicomfleet:DeviceSerialNumber>')
    namespaces = ('xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:exif="http://ns.adobe.com/exif/1.0/" '
                  f'xmlns:dicomfleet="{NS}" xmlns:xmp="http://ns.adobe.com/xap/1.0/"')
    props.append(f"<xmp:CreatorTool>{SOFTWARE}</xmp:CreatorTool>")
    if pdfa:
        namespaces += (' xmlns:pdf="http://ns.adobe.com/pdf/1.3/" xmlns:pdfaid="http://www.aiim.org/pdfa/ns/id/"'
                       ' xmlns:pdfaExtension="http://www.aiim.org/pdfa/ns/extension/"'
                       ' xmlns:pdfaSchema="http://www.aiim.org/pdfa/ns/schema#"'
                       ' xmlns:pdfaProperty="http://www.aiim.org/pdfa/ns/property#"')
        props += [f"<pdf:Producer>{SOFTWARE}</pdf:Producer>", "<pdfaid:part>2</pdfaid:part>",
                  "<pdfaid:conformance>B</pdfaid:conformance>", _EXTENSION_SCHEMA]
    body = "\n   ".join(props)
    text = ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
            ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
            f'  <rdf:Description rdf:about="" {namespaces}>\n   {body}\n  </rdf:Description>\n'
            ' </rdf:RDF>\n</x:xmpmeta>\n<?xpacket end="r"?>')
    return text.encode("utf-8")


def _property(name: str, description: str) -> str:
    return ("<rdf:li rdf:parseType=\"Resource\"><pdfaProperty:name>" + name + "</pdfaProperty:name>"
            "<pdfaProperty:valueType>Text</pdfaProperty:valueType>"
            "<pdfaProperty:category>external</pdfaProperty:category>"
            f"<pdfaProperty:description>{description}</pdfaProperty:description></rdf:li>")


#: PDF/A-2 6.6.2.3: properties outside the predefined schemas are declared in the XMP itself
_EXTENSION_SCHEMA = (
    "<pdfaExtension:schemas><rdf:Bag><rdf:li rdf:parseType=\"Resource\">"
    "<pdfaSchema:schema>dicomfleet DICOM attributes</pdfaSchema:schema>"
    f"<pdfaSchema:namespaceURI>{NS}</pdfaSchema:namespaceURI>"
    "<pdfaSchema:prefix>dicomfleet</pdfaSchema:prefix>"
    "<pdfaSchema:property><rdf:Seq>"
    + _property("Modality", "DICOM Modality (0008,0060)")
    + _property("DeviceSerialNumber", "DICOM Device Serial Number (0018,1000)")
    + "</rdf:Seq></pdfaSchema:property></rdf:li></rdf:Bag></pdfaExtension:schemas>")


_ASCII, _LONG = 2, 4  # TIFF field types
_EXIF_IFD = 0x8769  # IFD0's pointer to the Exif IFD


def _tiff_ascii(text: str) -> bytes:
    return _ascii(text).encode("ascii") + b"\0"


def _ifd(entries: dict[int, bytes | int], offset: int) -> bytes:
    """One little-endian TIFF IFD that starts at ``offset`` of the block, followed by the values
    that do not fit its entries (each at an even offset, as TIFF asks): ASCII values as NUL-ended
    bytes, LONG values as ints. Tags in ascending order; no next IFD."""
    data_at = offset + 2 + 12 * len(entries) + 4
    fields, values = [struct.pack("<H", len(entries))], []
    for tag in sorted(entries):
        value = entries[tag]
        if isinstance(value, int):
            fields.append(struct.pack("<HHII", tag, _LONG, 1, value))
        elif len(value) <= 4:
            fields.append(struct.pack("<HHI", tag, _ASCII, len(value)) + value.ljust(4, b"\0"))
        else:
            fields.append(struct.pack("<HHII", tag, _ASCII, len(value), data_at))
            values.append(value + b"\0" * (len(value) % 2))
            data_at += len(values[-1])
    fields.append(struct.pack("<I", 0))
    return b"".join(fields + values)


def exif_bytes(fields: dict[str, str]) -> bytes:
    """A TIFF-structured EXIF block (no 'Exif\\0\\0' header) of the mapped fields: IFD0 with
    Software and ImageDescription, an Exif IFD with DateTimeOriginal and BodySerialNumber.

    Written here rather than by Pillow's ``Image.Exif``, whose first use in a process imports
    its TIFF plugin (~5 ms of every pool process's first slice); tests/test_metadata.py reads
    the block back with Pillow."""
    ifd0: dict[int, bytes | int] = {0x0131: _tiff_ascii(SOFTWARE)}  # Software
    if "series_description" in fields:
        ifd0[0x010E] = _tiff_ascii(fields["series_description"])  # ImageDescription
    exif: dict[int, bytes | int] = {}
    if "study_date" in fields:
        exif[0x9003] = _tiff_ascii(exif_datetime(fields["study_date"]))  # DateTimeOriginal
    if "device_serial_number" in fields:
        exif[0xA431] = _tiff_ascii(fields["device_serial_number"])  # BodySerialNumber
    header = b"II*\0" + struct.pack("<I", 8)  # little endian, IFD0 at byte 8
    if not exif:
        return header + _ifd(ifd0, 8)
    ifd0[_EXIF_IFD] = 0  # its offset follows IFD0, whose length does not depend on it
    ifd0[_EXIF_IFD] = 8 + len(_ifd(ifd0, 8))
    first = _ifd(ifd0, 8)
    return header + first + _ifd(exif, 8 + len(first))


@lru_cache(maxsize=64)
def _blobs(items: tuple[tuple[str, str], ...]) -> tuple[bytes, bytes]:
    """(EXIF, XMP) of the fields, made once per series rather than once per slice."""
    fields = dict(items)
    return exif_bytes(fields), xmp_packet(fields)


@lru_cache(maxsize=64)
def _png_chunks(items: tuple[tuple[str, str], ...]) -> tuple[bytes, bytes]:
    from .png import chunk

    exif, xmp = _blobs(items)
    itxt = b"XML:com.adobe.xmp\0\0\0\0\0" + xmp  # uncompressed, no language
    return chunk(b"eXIf", exif), chunk(b"iTXt", itxt)


def png_chunks(fields: dict[str, str]) -> tuple[bytes, bytes]:
    """eXIf and an XMP iTXt chunk, for the PNG writer to place after IHDR (once per series)."""
    return _png_chunks(tuple(fields.items()))


def _app1(payload: bytes) -> bytes:
    if len(payload) + 2 > 0xFFFF:
        raise ValueError("JPEG APP1 segment over 64 KiB")
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


def jpeg_with_metadata(buf: bytes, fields: dict[str, str]) -> bytes:
    """The JPEG with APP1 Exif and APP1 XMP segments after SOI/JFIF (scan data untouched)."""
    pos = 2
    if buf[2:4] == b"\xff\xe0":  # keep JFIF APP0 first, as JFIF requires
        pos = 4 + struct.unpack(">H", buf[4:6])[0]
    exif, xmp = _blobs(tuple(fields.items()))
    segments = _app1(b"Exif\0\0" + exif) + _app1(b"http://ns.adobe.com/xap/1.0/\0" + xmp)
    return buf[:pos] + segments + buf[pos:]


def tiff_tags(fields: dict[str, str]) -> list[tuple]:
    """tifffile ``extratags``: ImageDescription, DateTime and XMP (700)."""
    tags: list[tuple] = [(700, "B", 0, xmp_packet(fields), True)]
    if "series_description" in fields:
        tags.append((270, "s", 0, _ascii(fields["series_description"]), True))
    if "study_date" in fields:
        tags.append((306, "s", 0, exif_datetime(fields["study_date"]), True))
    return tags
