"""8-bit renderings against DCMTK's dcmj2pnm, the reference renderer (DESIGN.md, Rendering semantics).

Rule for the oracle's VOI: ``+Wi 1`` when the file has a window, else ``+Wl 1`` when it has a VOI
LUT Sequence, else ``+Wm``; ``+Fa`` for multi-frame. ``-O``: dcmj2pnm burns overlays in by default,
dicomfleet renders the image pixels only. At most 1 grey level of difference on every pixel.
dcmj2pnm shows the stored grid; our display step after VOI (radiological orientation, square
pixels: shared/pixels/orientation.py) is applied to its rendering too, and pinned to the two
bundled files it changes.
"""
from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes

from shared.chain import convert_dataset
from shared.dataset import read_dataset
from shared.options import ConvertOptions
from shared.pixels.orientation import plan_display
from shared.pixels.render import is_colour

from .conftest import bundled, header, image_files

pytestmark = [
    pytest.mark.dcmtk,
    pytest.mark.skipif(shutil.which("dcmj2pnm") is None, reason="DCMTK dcmj2pnm is not installed"),
    pytest.mark.filterwarnings("ignore::UserWarning"),
]

#: files that do not convert (see test_pydicom_files.FAILS): nothing to compare
NOT_CONVERTED = {"MR_truncated.dcm", "JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "badVR.dcm"}
#: DCMTK departs from the standard on these; each has its own test below
DEPARTS = {"rtdose_expb.dcm": "rtdose.dcm", "rtdose_expb_1frame.dcm": "rtdose_1frame.dcm"}
GREY = [n for n in image_files() if n not in NOT_CONVERTED and n not in DEPARTS
        and not is_colour(header(n))]


def oracle_options(ds: Dataset) -> list[str]:
    """The VOI rule of DESIGN.md, spelled as dcmj2pnm options."""
    if "WindowCenter" in ds and "WindowWidth" in ds:
        return ["+Wi", "1"]
    if ds.get("VOILUTSequence"):
        return ["+Wl", "1"]
    return ["+Wm"]


def dcmtk_readable(path: Path, tmp: Path) -> Path:
    """dcmj2pnm 3.6.7 has no JPEG-LS or JPEG 2000 decoder: give it pydicom's decoding, uncompressed."""
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID not in (*JPEG2000TransferSyntaxes, *JPEGLSTransferSyntaxes):
        return path
    arr = ds.pixel_array
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if arr.dtype.itemsize > 1 else "OB"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = tmp / f"native-{path.name}"
    ds.save_as(out, enforce_file_format=True)
    return out


def dcmtk_render(path: Path, tmp: Path, options: list[str] | None = None) -> list[np.ndarray]:
    """dcmj2pnm's 8-bit PNG of every frame."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    out = tmp / f"dcmtk-{path.stem}"
    cmd = ["dcmj2pnm", "-q", "-O", *(options or oracle_options(ds)), *(["+Fa"] if frames > 1 else []),
           "--write-png", str(path), str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"dcmj2pnm failed on {path.name}: {run.stderr.strip()}"
    names = [out] if frames == 1 else [Path(f"{out}.{i}.png") for i in range(frames)]
    return [cv2.imread(str(n), cv2.IMREAD_UNCHANGED) for n in names]


def ours_written(conv) -> list[np.ndarray]:
    """Our PNG outputs as written by the chain, in frame order."""
    outs = sorted(conv.outputs("png"), key=lambda o: o["frame"] or 0)
    return [cv2.imread(str(conv.output_path(o)), cv2.IMREAD_UNCHANGED) for o in outs]


def ours(ds: Dataset, window: str = "default") -> list[np.ndarray]:
    """Our PNG of a dataset through the chain (written and read back as a file first)."""
    outputs, _ = convert_dataset(ds, ConvertOptions(formats=("png",), window=window, deid=False))
    return [cv2.imdecode(np.frombuffer(o.data, np.uint8), cv2.IMREAD_UNCHANGED) for o in outputs]


def displayed(frames: list[np.ndarray], path: Path) -> list[np.ndarray]:
    """DCMTK's frames through our display geometry (a flip/transpose and square-pixel resize)."""
    plan = plan_display(pydicom.dcmread(path, stop_before_pixels=True), frames[0].shape[:2])
    return [plan.apply(f) for f in frames]


#: the bundled grey files whose display differs from the stored grid: a sagittal slice stored
#: anterior-right (flipped), and 0.545×0.597 mm pixels (widened from 16 to 18 columns)
REORIENTED = {"dicomdirtests/98892001/CT2N/6293": "flip-horizontal", "dicomdirtests/98892001/CT2N/6924": ""}


def test_display_geometry_changes_only_the_pinned_files():
    changed = {}
    for name in GREY:
        ds = header(name)
        plan = plan_display(ds, (int(ds.Rows), int(ds.Columns)))
        if not plan.identity:
            changed[name] = " ".join(plan.describe()["operations"])
            assert plan.describe()["rows"] == 16 and plan.describe()["columns"] == 18
    assert changed == REORIENTED


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> int:
    assert len(a) == len(b) and all(x.shape == y.shape and x.dtype == y.dtype == np.uint8 for x, y in zip(a, b))
    return max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b))


def test_grey_set_covers_the_cases():
    """MONOCHROME1, signed, rescaled, multi-frame, 1/8/16/32-bit and the bundled VOI rules are all in."""
    headers = [header(n) for n in GREY]
    assert len(GREY) == 54
    assert any(h.PhotometricInterpretation == "MONOCHROME1" for h in headers)
    assert any(h.get("PixelRepresentation") == 1 for h in headers)
    assert any(float(h.get("RescaleSlope", 1)) != 1 for h in headers)
    assert any(int(h.get("NumberOfFrames", 1) or 1) > 1 for h in headers)
    assert {int(h.BitsAllocated) for h in headers} == {1, 8, 16, 32}
    assert {oracle_options(h)[0] for h in headers} == {"+Wi", "+Wm"}  # +Wl: synthetic cases below


@pytest.mark.parametrize("name", GREY)
def test_grey_png_matches_dcmtk(converted_test_files, tmp_path, name):
    conv = converted_test_files[name]
    reference = displayed(dcmtk_render(dcmtk_readable(conv.path, tmp_path), tmp_path), conv.path)
    assert max_diff(ours_written(conv), reference) <= 1


@pytest.mark.parametrize("name", sorted(DEPARTS))
def test_dcmtk_departure_32bit_big_endian(converted_test_files, tmp_path, name):
    """rtdose_expb*.dcm are rtdose*.dcm in Explicit VR Big Endian: pydicom's own tests hold their
    pixel arrays equal. DCMTK reads each 32-bit value as two byte-swapped 16-bit OW words in
    little-endian word order, i.e. with its halves exchanged, and renders noise. PS3.5 7.3 (Big
    Endian: the most significant byte first, for the whole 32-bit value) is what we follow: our
    rendering equals the little-endian twin's bit for bit, and that one matches DCMTK."""
    twin = converted_test_files[DEPARTS[name]]
    mine = ours_written(converted_test_files[name])
    assert max_diff(mine, ours_written(twin)) == 0
    assert max_diff(ours_written(twin), dcmtk_render(twin.path, tmp_path)) <= 1
    assert max_diff(mine, dcmtk_render(bundled(name), tmp_path)) > 200  # the departure still exists


# --- synthetic cases: real images with the VOI/modality attributes the bundled files lack ---

def _lut_item(n: int, first: int, bits: int, data: np.ndarray, vr: str = "US") -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [n, first, bits]
    item["LUTDescriptor"].VR = "SS" if first < 0 else "US"
    item.LUTData = [int(v) for v in data]
    item["LUTData"].VR = vr
    return item


def _gamma_lut(n: int, bits: int) -> np.ndarray:
    return np.rint((np.arange(n) / (n - 1)) ** 0.5 * ((1 << bits) - 1)).astype(np.uint16)


def _ct() -> Dataset:
    """CT_small: signed 16-bit, rescale intercept -1024, modality values -896..1167 HU."""
    return pydicom.dcmread(bundled("CT_small.dcm"))


def _cr() -> Dataset:
    """A MONOCHROME1 CR: unsigned 12-bit, rescale slope 0.684, with its own window."""
    return pydicom.dcmread(bundled("dicomdirtests/77654033/CR1/6154"))


def _voi_lut(ds: Dataset, bits: int, first: int = -200, n: int = 800) -> Dataset:
    ds.VOILUTSequence = Sequence([_lut_item(n, first, bits, _gamma_lut(n, bits))])
    return ds


def _window(ds: Dataset, center, width, function: str | None = None) -> Dataset:
    ds.WindowCenter, ds.WindowWidth = center, width
    if function:
        ds.VOILUTFunction = function
    return ds


def _strip_window(ds: Dataset) -> Dataset:
    for kw in ("WindowCenter", "WindowWidth", "WindowCenterWidthExplanation"):
        if kw in ds:
            del ds[kw]
    return ds


def _modality_lut(ds: Dataset) -> Dataset:
    """Replace the rescale by a Modality LUT Sequence: 1.5 × stored + 100 over 12 bits."""
    for kw in ("RescaleSlope", "RescaleIntercept", "RescaleType"):
        if kw in ds:
            del ds[kw]
    item = _lut_item(4096, 0, 16, np.arange(4096) * 3 // 2 + 100)
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([item])
    return ds


def _multiframe(ds: Dataset, frames: int) -> Dataset:
    """Frames that differ (shifted copies), so a per-frame min-max would differ from DCMTK's."""
    arr = ds.pixel_array
    stack = np.stack([np.roll(arr, 7 * i, axis=1) // (i + 1) for i in range(frames)])
    ds.NumberOfFrames = frames
    ds.PixelData = stack.astype(arr.dtype).tobytes()
    return ds


SYNTHETIC = {
    "voi_lut_16bit": lambda: _voi_lut(_strip_window(_ct()), 16),
    "voi_lut_12bit": lambda: _voi_lut(_strip_window(_ct()), 12),
    "voi_lut_8bit": lambda: _voi_lut(_strip_window(_ct()), 8),
    "voi_lut_monochrome1": lambda: _voi_lut(_strip_window(_cr()), 16, first=1300, n=700),
    "window_before_voi_lut": lambda: _voi_lut(_window(_ct(), 40, 400), 16),
    "sigmoid": lambda: _window(_ct(), 40, 400, "SIGMOID"),
    "linear_exact": lambda: _window(_ct(), 40, 400, "LINEAR_EXACT"),
    "linear_width_1": lambda: _window(_ct(), 40.5, 1),
    "presentation_inverse": lambda: setattr_(_window(_ct(), 40, 400), "PresentationLUTShape", "INVERSE"),
    "modality_lut_window": lambda: _window(_modality_lut(_cr()), 3000, 5000),
    "modality_lut_minmax": lambda: _strip_window(_modality_lut(_cr())),
    "multiframe_signed_window": lambda: _multiframe(_window(_ct(), 40, 400), 3),
    "multiframe_signed_minmax": lambda: _multiframe(_strip_window(_ct()), 3),
}


def setattr_(ds: Dataset, keyword: str, value) -> Dataset:
    setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize("case", sorted(SYNTHETIC))
def test_synthetic_voi_cases_match_dcmtk(tmp_path, case):
    ds = SYNTHETIC[case]()
    path = tmp_path / f"{case}.dcm"
    ds.save_as(path, enforce_file_format=True)
    written = read_dataset(path.read_bytes())  # through a file, so the LUT VRs are as read back
    assert max_diff(ours(written), dcmtk_render(path, tmp_path)) <= 1


def test_explicit_window_matches_dcmtk_set_window(tmp_path):
    """`--window C,W` and dcmj2pnm `+Ww C W` on a rescaled MONOCHROME1 image."""
    path = bundled("dicomdirtests/77654033/CR1/6154")
    got = ours(read_dataset(path.read_bytes()), window="900,700")
    assert max_diff(got, dcmtk_render(path, tmp_path, ["+Ww", "900", "700"])) <= 1


def test_oracle_copy_keeps_pydicom_values(tmp_path):
    """The uncompressed copy handed to DCMTK holds exactly what pydicom decodes."""
    src = bundled("JPEGLSNearLossless_16.dcm")
    copy_ = dcmtk_readable(src, tmp_path)
    assert copy_ != src
    assert np.array_equal(pydicom.dcmread(copy_).pixel_array, pydicom.dcmread(src).pixel_array)


def test_rule_picks_window_then_voi_lut_then_minmax():
    ct = _ct()
    assert oracle_options(ct) == ["+Wm"]
    assert oracle_options(_voi_lut(copy.deepcopy(ct), 16)) == ["+Wl", "1"]
    assert oracle_options(_window(_voi_lut(copy.deepcopy(ct), 16), 40, 400)) == ["+Wi", "1"]
