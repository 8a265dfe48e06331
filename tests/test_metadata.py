"""Embedded metadata (shared/metadata.py): the four mapped attributes read back with Pillow,
tifffile and pikepdf from every format, and nothing else of the header — no PHI."""
from __future__ import annotations

import io
import json
import re
import struct
import zlib
from pathlib import Path

import pikepdf
import pytest
import tifffile
from PIL import Image
from click.testing import CliRunner

from producer.cli import app

from .synthetic import PHI, PRIVATE_PHI, write_series

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
KEY = "5e" * 32
RETAIN = ("retain-long-full-dates", "clean-descriptors", "retain-device-id")
#: what the synthetic series holds (tests/synthetic.py) and must come out under RETAIN
STUDY_DATE, DESCRIPTION, SERIAL = "2026-03-02", "AXIAL 1.25mm", "DSN-88412"
#: every XMP property an output may carry
XMP_WHITELIST = {"dc:title", "dc:description", "exif:DateTimeOriginal", "dicomfleet:Modality",
                 "dicomfleet:DeviceSerialNumber", "xmp:CreatorTool", "pdf:Producer", "pdfaid:part",
                 "pdfaid:conformance", "pdfaExtension:schemas"}
SECRETS = [*PHI.values(), PRIVATE_PHI, "SYNTH^PATIENT", "CHEST CT", "SynthVendor"]


def convert(src: Path, out: Path, *args: str) -> dict:
    env = {"DICOMFLEET_DEID_KEY": KEY, "XDG_CONFIG_HOME": str(out.parent / "config")}
    result = CliRunner().invoke(app, ["convert", str(src), "--out", str(out), "--workers", "1",
                                      *[a for f in ("png", "png16", "jpeg", "tiff", "pdf") for a in ("-f", f)],
                                      *args], env=env)
    assert result.exit_code == 0, result.output
    [manifest] = out.glob("*/*/manifest.json")
    return json.loads(manifest.read_text())


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("meta")
    write_series(root / "in", slices=3, size=32, seed=4)
    return root / "in"


def xmp_properties(xmp: bytes) -> dict[str, str]:
    """Property name → text (rdf:li values joined) of an XMP packet."""
    text = xmp.decode("utf-8")
    body = text[text.index("<rdf:Description"):text.index("</rdf:Description>")]
    props = {}
    for m in re.finditer(r"<([a-zA-Z]+:[A-Za-z]+)>(.*?)</\1>", body, re.S):
        props[m.group(1)] = re.sub(r"<[^>]+>", "", m.group(2)).strip()
    return props


def read_back(out: Path, manifest: dict) -> dict[str, dict]:
    """What a user's tools see of each format: EXIF and XMP (Pillow), tags (tifffile), XMP (pikepdf)."""
    record = manifest["instances"][0]
    paths = {o["format"]: out / o["path"] for o in record["outputs"]}
    paths["pdf"] = out / manifest["series_outputs"][0]["path"]
    seen: dict[str, dict] = {}
    for fmt in ("png", "png16", "jpeg"):
        with Image.open(paths[fmt]) as im:
            exif = im.getexif()
            sub = exif.get_ifd(0x8769)
            xmp = im.info.get("XML:com.adobe.xmp") or im.info.get("xmp")
            seen[fmt] = {"DateTimeOriginal": sub.get(0x9003), "ImageDescription": exif.get(0x010E),
                         "BodySerialNumber": sub.get(0xA431), "Software": exif.get(0x0131),
                         "xmp": xmp_properties(xmp.encode() if isinstance(xmp, str) else xmp)}
    with tifffile.TiffFile(paths["tiff"]) as tif:
        tags = tif.pages[0].tags
        seen["tiff"] = {"DateTime": tags["DateTime"].value if "DateTime" in tags else None,
                        "ImageDescription": tags["ImageDescription"].value if "ImageDescription" in tags else None,
                        "xmp": xmp_properties(bytes(tags["XMP"].value))}
    with pikepdf.open(paths["pdf"]) as pdf:
        seen["pdf"] = {"xmp": xmp_properties(pdf.Root.Metadata.read_bytes())}
        meta = pdf.open_metadata()
        seen["pdf"]["pikepdf"] = {k: str(meta.get(k)) for k in ("dc:description", "pdfaid:part", "pdfaid:conformance")}
        seen["pdf"]["pikepdf"]["exif:DateTimeOriginal"] = str(meta.get("{http://ns.adobe.com/exif/1.0/}DateTimeOriginal"))
    return seen


def test_the_mapping_read_back_from_every_format(series, tmp_path):
    out = tmp_path / "out"
    manifest = convert(series, out, *[a for o in RETAIN for a in ("--deid-option", o)])
    seen = read_back(out, manifest)
    for fmt in ("png", "png16", "jpeg"):
        assert seen[fmt]["DateTimeOriginal"] == "2026:03:02 00:00:00"
        assert seen[fmt]["ImageDescription"] == DESCRIPTION
        assert seen[fmt]["BodySerialNumber"] == SERIAL
        assert seen[fmt]["Software"].startswith("dicomfleet ")
    assert seen["tiff"]["DateTime"] == "2026:03:02 00:00:00" and seen["tiff"]["ImageDescription"] == DESCRIPTION
    for fmt in ("png", "png16", "jpeg", "tiff", "pdf"):
        xmp = seen[fmt]["xmp"]
        assert set(xmp) <= XMP_WHITELIST, fmt
        assert xmp["dc:description"] == DESCRIPTION and xmp["exif:DateTimeOriginal"] == STUDY_DATE
        assert xmp["dicomfleet:Modality"] == "CT" and xmp["dicomfleet:DeviceSerialNumber"] == SERIAL
    assert seen["pdf"]["pikepdf"] == {"dc:description": DESCRIPTION, "exif:DateTimeOriginal": STUDY_DATE,
                                      "pdfaid:part": "2", "pdfaid:conformance": "B"}
    assert_no_phi(out)
    assert DESCRIPTION in all_text(out) and SERIAL in all_text(out)  # the search does find what is there


def test_by_default_only_the_modality_survives(series, tmp_path):
    """The Basic Profile removes the study date and the description and replaces the serial
    number by a dummy, which is not embedded without Retain Device Identity."""
    out = tmp_path / "out"
    seen = read_back(out, convert(series, out))
    for fmt in ("png", "png16", "jpeg"):
        assert (seen[fmt]["DateTimeOriginal"], seen[fmt]["ImageDescription"], seen[fmt]["BodySerialNumber"]) == \
            (None, None, None)
    for fmt in ("png", "png16", "jpeg", "tiff", "pdf"):
        assert {k: v for k, v in seen[fmt]["xmp"].items() if k.startswith(("dc:desc", "exif:", "dicomfleet:"))} \
            == {"dicomfleet:Modality": "CT"}, fmt
    assert seen["tiff"]["DateTime"] is None and seen["tiff"]["ImageDescription"] is None
    assert_no_phi(out)
    assert SERIAL not in all_text(out)


def test_without_deidentification_the_serial_number_stays_out(series, tmp_path):
    out = tmp_path / "out"
    seen = read_back(out, convert(series, out, "--no-deid"))
    assert seen["png"]["BodySerialNumber"] is None and "dicomfleet:DeviceSerialNumber" not in seen["pdf"]["xmp"]
    assert seen["png"]["DateTimeOriginal"] == "2026:03:02 00:00:00"  # trusted use: the mapping, no more
    assert seen["jpeg"]["ImageDescription"] == DESCRIPTION
    text = all_text(out)
    assert SERIAL not in text and not [s for s in SECRETS if s in text]  # names, IDs, places: never mapped


def all_text(out: Path) -> str:
    """Every output's bytes, with every deflated stream or chunk inflated, as Latin-1 text."""
    parts = []
    for path in out.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        parts.append(data)
        if path.suffix == ".pdf":
            with pikepdf.open(path) as pdf:
                parts += [obj.read_bytes() for obj in pdf.objects if isinstance(obj, pikepdf.Stream)]
        for start in (m.start() for m in re.finditer(rb"x[\x01\x5e\x9c\xda]", data)):
            try:
                parts.append(zlib.decompressobj().decompress(data[start:], 1 << 24))
            except zlib.error:
                pass
    return b"\n".join(parts).decode("latin-1")


def assert_no_phi(out: Path) -> None:
    text = all_text(out)
    assert [s for s in SECRETS if s in text] == []


def test_png_chunks_and_jpeg_segments_stay_valid(series, tmp_path):
    """The metadata sits where readers expect it and the pixels are untouched."""
    out = tmp_path / "out"
    manifest = convert(series, out, "--no-deid")
    paths = {o["format"]: out / o["path"] for o in manifest["instances"][0]["outputs"]}
    data = paths["png"].read_bytes()
    kinds, pos = [], 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kinds.append(data[pos + 4:pos + 8].decode())
        pos += 12 + length
    assert kinds[:1] == ["IHDR"] and kinds.index("eXIf") < kinds.index("IDAT") and kinds[-1] == "IEND"
    assert "iTXt" in kinds
    jpeg = paths["jpeg"].read_bytes()
    assert jpeg[:4] == b"\xff\xd8\xff\xe0"  # JFIF APP0 stays first
    with Image.open(io.BytesIO(jpeg)) as im:
        im.load()
        assert im.size == (32, 32)


@pytest.mark.parametrize("fields", [
    {},
    {"series_description": "ab"},  # a value that fits its entry
    {"study_date": "2026-03-02"},
    {"series_description": "Chest 1.0 CE", "study_date": "2026-03-02", "device_serial_number": "SN-77"},
    {"series_description": "odd length!", "device_serial_number": "Ü-9"},  # not ASCII: replaced
])
def test_the_exif_block_reads_back_in_pillow_field_by_field(fields):
    """Our TIFF-structured EXIF block, as Pillow's reader sees it: every mapped field in its IFD,
    nothing else, and every value that follows an IFD at an even offset."""
    from shared.metadata import SOFTWARE, exif_bytes, exif_datetime

    block = exif_bytes(fields)
    exif = Image.Exif()
    exif.load(b"Exif\0\0" + block)
    sub = exif.get_ifd(0x8769)
    expected0 = {0x0131: SOFTWARE}
    if "series_description" in fields:
        expected0[0x010E] = fields["series_description"].encode("ascii", "replace").decode()
    expected_sub = {}
    if "study_date" in fields:
        expected_sub[0x9003] = exif_datetime(fields["study_date"])
    if "device_serial_number" in fields:
        expected_sub[0xA431] = fields["device_serial_number"].encode("ascii", "replace").decode()
    assert {k: v for k, v in exif.items() if k != 0x8769} == expected0
    assert dict(sub) == expected_sub and (0x8769 in exif) == bool(expected_sub)
    for ifd_at in [8] + ([exif[0x8769]] if expected_sub else []):
        count = struct.unpack_from("<H", block, ifd_at)[0]
        for i in range(count):
            kind, length, at = struct.unpack_from("<HII", block, ifd_at + 2 + 12 * i + 2)
            if kind == 2 and length > 4:
                assert at % 2 == 0 and block[at + length - 1] == 0
