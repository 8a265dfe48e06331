"""``--format pdf``: the PDF/A-2b series report (shared/report.py), opened as a person and as a
validator would: rendered by poppler's pdftoppm, its text read by pdftotext, its fonts listed by
pdffonts, its structure and images read by pikepdf."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pikepdf
import pydicom
import pytest
from PIL import ImageCms, ImageFont
from click.testing import CliRunner

from producer.cli import app
from shared.font import FIRST_CODE, font_path

from .synthetic import write_series

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
POPPLER = pytest.mark.skipif(shutil.which("pdftoppm") is None, reason="poppler-utils is not installed")
KEY = "7a" * 32
#: 21 slices 1.25 mm apart from -120 mm: 25/50/75% of the extent fall on outputs 6, 11 and 16
KEY_SLICES = [6, 11, 16]


def convert(src: Path, out: Path, *args: str, code: int = 0) -> dict | list[str]:
    env = {"DICOMFLEET_DEID_KEY": KEY, "XDG_CONFIG_HOME": str(out.parent / "config")}
    result = CliRunner().invoke(app, ["convert", str(src), "--out", str(out), "--workers", "1", *args], env=env)
    assert result.exit_code == code, result.output
    if code:
        return result.output.splitlines()
    [manifest] = out.glob("*/*/manifest.json")
    return json.loads(manifest.read_text())


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The series converted to png + pdf with the attributes the caption shows kept."""
    root = tmp_path_factory.mktemp("report")
    write_series(root / "in", slices=21, size=64, seed=8)
    out = root / "out"
    manifest = convert(root / "in", out, "-f", "png", "-f", "pdf", "--deid-option", "retain-long-full-dates",
                       "--deid-option", "clean-descriptors")
    [entry] = manifest["series_outputs"]
    return root, out, manifest, out / entry["path"]


def pngs(out: Path, manifest: dict, indices: list[int]) -> list[np.ndarray]:
    by = {r["index"]: r for r in manifest["instances"]}
    return [cv2.imread(str(out / by[i]["outputs"][0]["path"]), cv2.IMREAD_UNCHANGED) for i in indices]


def test_the_manifest_lists_the_report_last_written(report):
    root, out, manifest, pdf = report
    [entry] = manifest["series_outputs"]
    assert entry["format"] == "pdf" and entry["path"].endswith("/series.pdf")
    data = pdf.read_bytes()
    import hashlib

    assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["size"] == len(data)
    assert [s["index"] for s in entry["slices"]] == KEY_SLICES
    assert [s["position"] for s in entry["slices"]] == [-113.75, -107.5, -101.25]
    assert manifest["counts"]["series_outputs"] == 1 and manifest["series_errors"] == []
    assert pdf.stat().st_mtime <= (pdf.parent / "manifest.json").stat().st_mtime


def test_images_are_the_key_slices_losslessly_in_order(report):
    root, out, manifest, path = report
    with pikepdf.open(path) as pdf:
        [page] = pdf.pages
        images = sorted(page.get_images(recursive=False).items(), key=lambda kv: kv[0])
        got = [np.asarray(pikepdf.PdfImage(obj).as_pil_image()) for _, obj in images]
        for _, obj in images:
            assert obj.Filter == "/FlateDecode" and obj.DecodeParms.Predictor == 15
            assert "/SMask" not in obj and "/Mask" not in obj and not obj.get("/Interpolate", False)
    expected = pngs(out, manifest, KEY_SLICES)
    assert len(got) == 3 and all(np.array_equal(g, e) for g, e in zip(got, expected))


def test_pdfa_2b_requirements(report):
    root, out, manifest, path = report
    assert path.read_bytes()[:14] == b"%PDF-1.7\n%\xbf\xf7\xa2\xfe"  # binary comment: 4 bytes > 127
    with pikepdf.open(path) as pdf:
        assert not pdf.is_encrypted and "/Encrypt" not in pdf.trailer and len(pdf.trailer.ID) == 2
        assert "/Info" not in pdf.trailer  # no document info to disagree with the XMP
        metadata = pdf.Root.Metadata
        assert metadata.Type == "/Metadata" and metadata.Subtype == "/XML" and "/Filter" not in metadata
        meta = pdf.open_metadata()
        assert (meta["pdfaid:part"], meta["pdfaid:conformance"]) == ("2", "B")
        [intent] = pdf.Root.OutputIntents
        assert intent.S == "/GTS_PDFA1" and intent.DestOutputProfile.N == 3
        icc = ImageCms.ImageCmsProfile(__import__("io").BytesIO(intent.DestOutputProfile.read_bytes()))
        assert icc.profile.xcolor_space.strip() == "RGB" and icc.profile.profile_description == "sRGB built-in"
        for page in pdf.pages:
            assert "/Group" not in page and "/Annots" not in page and "/ExtGState" not in page.Resources
            for font in page.Resources.Font.values():
                descriptor = font.FontDescriptor
                assert font.Subtype == "/TrueType" and "/FontFile2" in descriptor
                assert font.Encoding == "/WinAnsiEncoding" and descriptor.Flags == 32
                assert len(font.Widths) == int(font.LastChar) - int(font.FirstChar) + 1
                program = descriptor.FontFile2.read_bytes()
                assert program == font_path().read_bytes()
                check_widths(font)
        assert pdf.check_pdf_syntax() == []  # qpdf's structural check


def check_widths(font) -> None:
    """/Widths agree with the embedded program as FreeType (through Pillow) measures it."""
    ttf = ImageFont.truetype(str(font_path()), 2048, layout_engine=ImageFont.Layout.BASIC)
    for code in range(32, 127):
        width = round(ttf.getlength(chr(code)) * 1000 / 2048)
        assert abs(int(font.Widths[code - FIRST_CODE]) - width) <= 1, chr(code)


@POPPLER
def test_fonts_embedded_as_pdffonts_lists_them(report):
    listing = subprocess.run(["pdffonts", str(report[3])], capture_output=True, text=True, check=True).stdout
    rows = listing.splitlines()[2:]
    assert len(rows) == 1 and rows[0].split()[:5] == ["Roboto-Regular", "TrueType", "WinAnsi", "yes", "no"]


@POPPLER
def test_captions_in_order_as_pdftotext_reads_them(report):
    text = subprocess.run(["pdftotext", "-layout", str(report[3]), "-"], capture_output=True, text=True,
                          check=True).stdout
    assert "Study date 2026-03-02 · Modality CT · Series AXIAL 1.25mm" in text
    captions = re.findall(r"image (\d+) of 21 \(output (\d{4})\) · position (-?\d+\.\d) mm · window C 40 W 400", text)
    assert captions == [("6", "0006", "-113.8"), ("11", "0011", "-107.5"), ("16", "0016", "-101.2")]
    assert text.count("CT · 2026-03-02 · AXIAL 1.25mm") == 3
    assert "De-identified" in text


@POPPLER
def test_the_rendered_page_shows_the_three_slices_top_to_bottom(report, tmp_path):
    """pdftoppm's page: three picture regions, each most like its own key slice's PNG."""
    root, out, manifest, path = report
    subprocess.run(["pdftoppm", "-r", "100", "-gray", "-png", str(path), str(tmp_path / "page")], check=True)
    [png] = tmp_path.glob("page*.png")
    page = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE)
    dark = (page < 40).astype(np.uint8)  # the air around the body is black in the mediastinal window
    count, _, stats, _ = cv2.connectedComponentsWithStats(dark)
    boxes = sorted((s for s in stats[1:] if s[cv2.CC_STAT_AREA] > 20000), key=lambda s: s[cv2.CC_STAT_TOP])
    assert len(boxes) == 3
    slices = pngs(out, manifest, KEY_SLICES)
    for k, box in enumerate(boxes):
        x, y, w, h = box[:4]
        shown = page[y:y + h, x:x + w].astype(float)
        errors = [np.abs(cv2.resize(s, (w, h), interpolation=cv2.INTER_AREA) - shown).mean() for s in slices]
        assert int(np.argmin(errors)) == k and errors[k] < 6, errors


def test_slices_by_position_and_number_and_a_deterministic_file(report, tmp_path):
    root = report[0]
    a = convert(root / "in", tmp_path / "a", "-f", "pdf", "--slices", "-100mm", "--slices", "3", "--no-deid")
    assert [s["index"] for s in a["series_outputs"][0]["slices"]] == [3, 17]  # series order
    b = convert(root / "in", tmp_path / "b", "-f", "pdf", "--slices", "-100mm", "--slices", "3", "--no-deid")
    assert a["series_outputs"][0]["sha256"] == b["series_outputs"][0]["sha256"]
    lines = convert(root / "in", tmp_path / "c", "-f", "pdf", "--slices", "middle", code=2)
    assert any("invalid slice 'middle'" in line for line in lines)
    lines = convert(root / "in", tmp_path / "d", "-f", "pdf", "--slices", "99", "--no-deid", code=1)
    assert any("pdf: slice 99: no converted output with that number" in line for line in lines)


def test_without_positions_the_series_order_is_used(report, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for path in sorted((report[0] / "in").glob("*.dcm"))[:9]:
        ds = pydicom.dcmread(path)
        del ds.ImagePositionPatient
        ds.save_as(src / path.name, enforce_file_format=True)
    manifest = convert(src, tmp_path / "out", "-f", "pdf", "--no-deid")
    [entry] = manifest["series_outputs"]
    assert [(s["index"], s["position"]) for s in entry["slices"]] == [(3, None), (5, None), (7, None)]


def test_a_pdf_alone_names_the_instance_that_cannot_be_shown(report, tmp_path):
    """--format pdf alone: an instance whose display fails (Window Width 0) fails with its own
    reason, as it would with png, and the report is made of the others."""
    src = tmp_path / "in"
    src.mkdir()
    for k, path in enumerate(sorted((report[0] / "in").glob("*.dcm"))[:5]):
        ds = pydicom.dcmread(path)
        if k == 2:
            ds.WindowCenter, ds.WindowWidth = "40", "0"
        ds.save_as(src / path.name, enforce_file_format=True)
    lines = convert(src, tmp_path / "out", "-f", "pdf", "--slices", "50%", "--no-deid", code=1)
    assert lines[0].startswith("1 series, 5 instances, 4 converted, 0 outputs, 1 failed"), lines  # the pdf: a series output
    [failed] = [line for line in lines if "failed" in line and "/0" in line]
    assert failed.endswith(": (0028,1051) Window Width 0 is invalid for LINEAR")
    [manifest] = (tmp_path / "out").glob("*/*/manifest.json")
    assert [o["format"] for o in json.loads(manifest.read_text())["series_outputs"]] == ["pdf"]
