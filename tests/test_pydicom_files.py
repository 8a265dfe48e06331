"""Every image among pydicom's bundled test files, through the chain with all five formats.

Each either converts, with outputs that read back to pydicom's own values, or fails with the
pinned one-line reason. Colour renderings are held against pydicom's own colour conversion.
"""
from __future__ import annotations

import copy
import hashlib

import cv2
import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space, get_decoder

from shared.chain import convert_dataset
from shared.options import ConvertOptions
from shared.pixels.render import is_colour

from .conftest import ALL_FORMATS, TEST_FILES, bundled, header, image_files

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's notes on odd test files

IMAGES = image_files()

#: file → (error code, reason substring): the pinned failures, all properties of the files.
FAILS = {
    # the file ends 62 bytes into its Pixel Data
    "MR_truncated.dcm": ("pixel_budget", "(7FE0,0010) Pixel Data holds 8130 bytes but the header declares 8192"),
    # known-broken codestream: a 12-bit SOS with invalid spectral selection (DCMTK: "Invalid SOS parameters")
    "JPEG-lossy.dcm": ("invalid", "JPEG Extended (Process 2 and 4) pixel data could not be decoded"),
    # a sequence delimiter written into the SIZ marker: the codestream claims 3.7 billion columns
    "JPEG2000-embedded-sequence-delimiter.dcm": (
        "invalid", "frame 1: the JPEG 2000 codestream declares 1024 × 3722445056 × 1 component(s) "
                   "but the header declares 1024 × 256 × 1"),
    "badVR.dcm": ("invalid", "(0028,0008) NumberOfFrames has invalid value <a value of 4 characters, not shown>"),
}
#: 32-bit integer pixels: png16 is refused with its reason, every other format is still written.
PNG16_REFUSED = {
    "rtdose.dcm", "rtdose_1frame.dcm", "rtdose_expb.dcm", "rtdose_expb_1frame.dcm", "rtdose_rle.dcm",
    "rtdose_rle_1frame.dcm", "SC_rgb_rle_32bit.dcm", "SC_rgb_rle_32bit_2frame.dcm",
}
PNG16_REASON = "png16: holds integers of at most 16 bits; these pixels are uint32 (use --format tiff or npy)"
CONVERTED = [n for n in IMAGES if n not in FAILS]


def read_png(path) -> np.ndarray:
    """A PNG as written (8 or 16 bits, grey or RGB in RGB order)."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, f"{path} does not decode"
    return img[..., ::-1] if img.ndim == 3 else img


def pixels(name: str) -> tuple[pydicom.Dataset, np.ndarray]:
    """pydicom's own reading of a test file: the reference every lossless output must equal."""
    ds = pydicom.dcmread(TEST_FILES / name)
    return ds, ds.pixel_array


def test_the_image_set_is_every_bundled_image():
    """The scanner must not skip real images: every file pydicom reads with Rows and Pixel Data is in."""
    with_pixels = set()
    for path in TEST_FILES.rglob("*"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=False)
        except Exception:
            continue
        if "Rows" in ds and "PixelData" in ds:
            with_pixels.add(path.relative_to(TEST_FILES).as_posix())
    assert with_pixels <= set(IMAGES)
    assert len(IMAGES) == 93 and len(CONVERTED) == 89
    assert set(FAILS) | PNG16_REFUSED <= set(IMAGES)


@pytest.mark.parametrize("name", IMAGES)
def test_converts_or_fails_with_its_pinned_reason(converted_test_files, name):
    conv = converted_test_files[name]
    error = conv.error
    if name in FAILS:
        code, reason = FAILS[name]
        assert error is not None and error["code"] == code
        assert reason in error["reason"]
        assert conv.record["outputs"] == []
    elif name in PNG16_REFUSED:
        assert error == {"code": "unsupported", "reason": PNG16_REASON}
    else:
        assert error is None
    if error is not None:
        assert "\n" not in error["reason"] and "Traceback" not in error["reason"]
        assert error["code"] != "internal" and len(error["reason"]) <= 400


@pytest.mark.parametrize("name", CONVERTED)
def test_every_format_written_per_frame_with_its_hash(converted_test_files, name):
    conv = converted_test_files[name]
    frames = conv.record["frames"]
    assert frames == int(pydicom.dcmread(conv.path, stop_before_pixels=True).get("NumberOfFrames", 1) or 1)
    per_frame = [f"_f{i:03d}" for i in range(1, frames + 1)] if frames > 1 else [""]
    expected = {f"{stem}.{ext}" for stem in per_frame for ext in ("png", "jpg", "u16.png")}
    expected |= {".tiff", ".npy"}
    if name in PNG16_REFUSED:
        expected = {e for e in expected if not e.endswith(".u16.png")}
    prefix = name.replace("/", "_") + "/0001"
    assert {o["path"].removeprefix(prefix) for o in conv.record["outputs"]} == expected
    for out in conv.record["outputs"]:
        data = conv.output_path(out).read_bytes()
        assert out["sha256"] == hashlib.sha256(data).hexdigest() and out["size"] == len(data)
        assert out["format"] in ALL_FORMATS
    assert conv.record["source_sha256"] == hashlib.sha256(conv.path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", CONVERTED)
def test_tiff_is_bit_exact(converted_test_files, name):
    """The check users run: np.array_equal(ds.pixel_array, tifffile.imread(out)), dtype kept."""
    conv = converted_test_files[name]
    [tiff] = conv.outputs("tiff")
    _, arr = pixels(name)
    got = tifffile.imread(conv.output_path(tiff))
    assert np.array_equal(arr, got)
    assert got.dtype == arr.dtype.newbyteorder("=")


@pytest.mark.parametrize("name", [n for n in CONVERTED if n not in PNG16_REFUSED])
def test_png16_is_lossless_with_its_offset(converted_test_files, name):
    conv = converted_test_files[name]
    _, arr = pixels(name)
    frames = list(arr) if conv.record["frames"] > 1 else [arr]
    outs = sorted(conv.outputs("png16"), key=lambda o: o["frame"] or 0)
    assert len(outs) == len(frames)
    for out, frame in zip(outs, frames):
        assert out["offset"] == (32768 if arr.dtype.kind == "i" else 0)
        got = read_png(conv.output_path(out)).astype(np.int64) - out["offset"]
        assert np.array_equal(got, frame)


@pytest.mark.parametrize("name", CONVERTED)
def test_npy_holds_modality_values(converted_test_files, name):
    conv = converted_test_files[name]
    [npy] = conv.outputs("npy")
    ds, arr = pixels(name)
    got = np.load(conv.output_path(npy), allow_pickle=False)
    if is_colour(ds):
        assert np.array_equal(got, arr)
    else:
        assert got.dtype == np.float32
        assert np.array_equal(got, np.asarray(apply_modality_lut(arr, ds), dtype=np.float32))


def pydicom_rgb(ds: pydicom.Dataset) -> np.ndarray:
    """pydicom's own colour path: raw decode, then convert_color_space / apply_color_lut, to 8 bits."""
    raw, meta = get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds, raw=True)
    photometric = meta["photometric_interpretation"]
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(raw, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    elif photometric.startswith("YBR_FULL"):
        rgb, bits = convert_color_space(raw, "YBR_FULL", "RGB"), int(ds.BitsStored)
    else:
        rgb, bits = raw, int(ds.BitsStored)
    if rgb.dtype != np.uint8:
        rgb = np.rint(rgb.astype(np.float64) * 255 / ((1 << bits) - 1)).astype(np.uint8)
    return rgb


COLOUR = [n for n in CONVERTED if is_colour(header(n))]


def test_colour_set_covers_every_colour_model():
    models = {str(header(n).PhotometricInterpretation)
              for n in COLOUR}
    assert models == {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "PALETTE COLOR"}


@pytest.mark.parametrize("name", COLOUR)
def test_colour_png_matches_pydicom_within_one_level(converted_test_files, name):
    conv = converted_test_files[name]
    expected = pydicom_rgb(pydicom.dcmread(conv.path))
    frames = list(expected) if conv.record["frames"] > 1 else [expected]
    outs = sorted(conv.outputs("png"), key=lambda o: o["frame"] or 0)
    assert len(outs) == len(frames)
    for out, ref in zip(outs, frames):
        got = read_png(conv.output_path(out))
        assert got.shape == ref.shape and got.dtype == np.uint8
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1


@pytest.mark.parametrize("palette", ["fall.dcm", "spring.dcm"])
def test_segmented_palette_matches_pydicom(palette):
    """examples_palette.dcm re-coloured with a bundled segmented palette (PS3.3 C.7.9.2)."""
    ds = pydicom.dcmread(bundled("examples_palette.dcm"))
    lut = pydicom.dcmread(TEST_FILES.parent / "palettes" / palette)
    for colour in ("Red", "Green", "Blue"):
        del ds[f"{colour}PaletteColorLookupTableData"]
        for kw in (f"{colour}PaletteColorLookupTableDescriptor", f"Segmented{colour}PaletteColorLookupTableData"):
            ds[kw] = copy.deepcopy(lut[kw])
    outputs, _ = convert_dataset(ds, ConvertOptions(formats=("png",), deid=False))
    got = read_png_bytes(outputs[0].data)
    assert np.abs(got.astype(int) - pydicom_rgb(ds).astype(int)).max() <= 1
    assert len(np.unique(got.reshape(-1, 3), axis=0)) > 16  # a real colour map, not a grey ramp


def read_png_bytes(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return img[..., ::-1] if img.ndim == 3 else img


JPEG_LS = [n for n in IMAGES if str(header(n).file_meta.TransferSyntaxUID) in
           ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")]


@pytest.mark.parametrize("preferred", ["pyjpegls", "no-such-plugin"])
def test_jpeg_ls_decodes_by_its_preferred_plugin_or_any_other_to_the_same_pixels(preferred, monkeypatch, tmp_path):
    """JPEG-LS is decoded by CharLS (pyjpegls) first, which gives every bundled JPEG-LS file and
    a compressed synthetic CT slice the pixels pydicom's other plugin gives; a preferred plugin
    that is missing or fails leaves the decision to the rest, in pydicom's order."""
    import io

    from pydicom.uid import JPEGLSLossless

    from shared import dataset

    from .synthetic import write_series

    monkeypatch.setitem(dataset.PREFERRED_PLUGINS, "1.2.840.10008.1.2.4.80", preferred)
    monkeypatch.setitem(dataset.PREFERRED_PLUGINS, "1.2.840.10008.1.2.4.81", preferred)
    ct = pydicom.dcmread(write_series(tmp_path, slices=1, size=128)[0])
    ct.compress(JPEGLSLossless)
    buf = io.BytesIO()
    ct.save_as(buf, enforce_file_format=True)
    files = {name: (TEST_FILES / name).read_bytes() for name in JPEG_LS} | {"synthetic CT": buf.getvalue()}
    assert len(files) >= 6
    calls = []
    for uid in ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"):  # count CharLS's decodes
        plugins = get_decoder(uid)._available
        monkeypatch.setitem(plugins, "pyjpegls", lambda *a, _f=plugins["pyjpegls"], **k: calls.append(1) or _f(*a, **k))
    for name, data in files.items():
        ds = dataset.read_dataset(data)
        other = pydicom.dcmread(io.BytesIO(data))
        other.pixel_array_options(decoding_plugin="pylibjpeg")
        got = dataset.decode_pixels(ds, max_pixels=1 << 28)
        assert got.dtype == other.pixel_array.dtype and np.array_equal(got, other.pixel_array), name
        assert ds._pixel_array_opts.get("decoding_plugin") is None  # the dataset's options left as they were
    assert len(calls) == (len(files) if preferred == "pyjpegls" else 0)
