"""Unit tests of shared/pixels against the formulas of DICOM PS3.3 C.11, on synthetic datasets."""
from __future__ import annotations

import math

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from shared.errors import InvalidDicomError
from shared.options import WINDOW_PRESETS, ConvertOptions, parse_window
from shared.pixels import VoiFunction, Window, apply_modality_lut, apply_window, render_8bit, select_window
from shared.pixels.render import render_colour

Y_MAX = 255.0


# --- the standard's formulas, written out branch by branch as PS3.3 gives them ---

def linear(x: float, c: float, w: float) -> float:
    """C.11.2.1.2.1 (LINEAR)."""
    if x <= c - 0.5 - (w - 1) / 2:
        return 0.0
    if x > c - 0.5 + (w - 1) / 2:
        return Y_MAX
    return ((x - (c - 0.5)) / (w - 1) + 0.5) * Y_MAX


def linear_exact(x: float, c: float, w: float) -> float:
    """C.11.2.1.3.2 (LINEAR_EXACT)."""
    if x <= c - w / 2:
        return 0.0
    if x > c + w / 2:
        return Y_MAX
    return ((x - c) / w + 0.5) * Y_MAX


def sigmoid(x: float, c: float, w: float) -> float:
    """C.11.2.1.3.1 (SIGMOID)."""
    return Y_MAX / (1 + math.exp(-4 * (x - c) / w))


FORMULAS = {VoiFunction.LINEAR: linear, VoiFunction.LINEAR_EXACT: linear_exact, VoiFunction.SIGMOID: sigmoid}
WINDOWS = [(40.0, 400.0), (-600.0, 1500.0), (0.5, 2.0), (100.25, 37.5), (2047.0, 4096.0)]


@pytest.mark.parametrize("function", list(VoiFunction))
@pytest.mark.parametrize("center,width", WINDOWS)
def test_window_functions_follow_ps33(function, center, width):
    x = np.concatenate([np.linspace(center - width, center + width, 2001),
                        np.arange(math.floor(center - width), math.ceil(center + width) + 1)])
    got = apply_window(x, Window(center, width, function))
    want = np.array([FORMULAS[function](v, center, width) for v in x])
    assert np.allclose(got, want, rtol=0, atol=1e-9)


def test_linear_width_one_is_a_threshold():
    """C.11.2.1.2.1 with w = 1: x <= c - 0.5 → ymin, else ymax."""
    got = apply_window(np.array([39.0, 39.5, 39.5001, 40.0, 41.0]), Window(40.0, 1.0))
    assert got.tolist() == [0.0, 0.0, 255.0, 255.0, 255.0]


def test_sigmoid_is_half_at_the_centre_and_never_clipped():
    got = apply_window(np.array([40.0, -960.0, 1040.0]), Window(40.0, 400.0, VoiFunction.SIGMOID))
    assert got[0] == 127.5 and 0.0 < got[1] < 0.02 and Y_MAX - 0.02 < got[2] < Y_MAX


def lut_window(first: int, bits: int, data: list[int]) -> Window:
    return Window(0.0, 0.0, VoiFunction.LINEAR, "voi_lut:1", (first, bits, tuple(data)))


def test_voi_lut_maps_clamps_and_scales():
    """C.11.2.1.1: inputs below the first mapped value take the first entry, above the last the
    last entry; entries span 0..2^bits-1, scaled here onto 0..255."""
    data = [0, 1000, 2000, 4095]
    got = apply_window(np.array([-500, 9, 10, 11, 12, 13, 99, 12.7]), lut_window(10, 12, data))
    want = np.array([0, 0, 0, 1000, 2000, 4095, 4095, 2000]) * 255 / 4095
    assert np.allclose(got, want, atol=1e-12)


def test_voi_lut_descriptor_understating_its_depth_trusts_the_data():
    """An 8-bit descriptor over 12-bit data (a known producer error) scales by the data's depth."""
    got = apply_window(np.array([0, 1]), lut_window(0, 8, [0, 4095]))
    assert got.tolist() == [0.0, 255.0]


def grey(arr: np.ndarray, **attrs) -> Dataset:
    """A minimal monochrome dataset around an array."""
    ds = Dataset()
    ds.PhotometricInterpretation = attrs.pop("PhotometricInterpretation", "MONOCHROME2")
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = attrs.pop("BitsStored", ds.BitsAllocated)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(arr.dtype.kind == "i")
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


RAMP16 = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)


def test_render_applies_rescale_then_window_then_truncates():
    ds = grey(RAMP16, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=[40, 400], WindowWidth=[400, 2000])
    img, window = render_8bit(RAMP16, ds)
    assert window == Window(40.0, 400.0, VoiFunction.LINEAR, "file:1")  # the first window
    want = np.array([math.floor(linear(v * 2 - 1024, 40, 400)) for v in RAMP16.ravel().tolist()]).reshape(16, 16)
    assert img.dtype == np.uint8 and np.array_equal(img, want)


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_render_uses_the_files_voi_lut_function(function):
    ds = grey(RAMP16, WindowCenter=2000, WindowWidth=1000, VOILUTFunction=function)
    img, window = render_8bit(RAMP16, ds)
    assert window.function is VoiFunction(function)
    formula = FORMULAS[VoiFunction(function)]
    assert np.array_equal(img.ravel(), [math.floor(formula(v, 2000, 1000)) for v in RAMP16.ravel().tolist()])


def test_render_uses_the_voi_lut_sequence_when_there_is_no_window():
    item = Dataset()
    item.LUTDescriptor = [256, 1000, 16]
    item.LUTData = list(range(0, 65536, 256))
    ds = grey(RAMP16, VOILUTSequence=Sequence([item]))
    img, window = render_8bit(RAMP16, ds)
    assert window.source == "voi_lut:1"
    idx = np.clip(RAMP16.astype(int) - 1000, 0, 255)
    assert np.array_equal(img, np.floor(idx * 256 * 255 / 65535).astype(np.uint8))


def test_window_in_the_file_wins_over_the_voi_lut():
    item = Dataset()
    item.LUTDescriptor = [2, 0, 16]
    item.LUTData = [0, 65535]
    ds = grey(RAMP16, WindowCenter=2048, WindowWidth=4096, VOILUTSequence=Sequence([item]))
    assert select_window(ds, "default") == Window(2048.0, 4096.0, VoiFunction.LINEAR, "file:1")


def test_minmax_window_without_a_window_in_the_file():
    """DCMTK +Wm: centre (min+max+1)/2, width max-min+1, so min shows black and max white."""
    arr = np.array([[100, 200], [300, 1100]], dtype=np.uint16)
    img, window = render_8bit(arr, grey(arr))
    assert (window.center, window.width, window.source) == (600.5, 1001.0, "minmax")
    assert img.tolist() == [[0, 25], [51, 255]]


def test_minmax_window_spans_every_frame():
    frames = np.stack([np.full((4, 4), 100, np.uint16), np.full((4, 4), 1100, np.uint16)])
    frames[0, 0, 0] = 600
    img, window = render_8bit(frames, grey(frames, NumberOfFrames=2))
    assert (window.center, window.width) == (600.5, 1001.0)
    assert img[0, 1, 1] == 0 and img[1, 0, 0] == 255 and img[0, 0, 0] == 127


@pytest.mark.parametrize("photometric,shape,inverted", [
    ("MONOCHROME1", None, True), ("MONOCHROME2", "INVERSE", True),
    ("MONOCHROME1", "INVERSE", True), ("MONOCHROME2", "IDENTITY", False)])
def test_monochrome1_and_presentation_lut_shape_invert_once(photometric, shape, inverted):
    """C.7.6.3.1.2 (MONOCHROME1: minimum displays white) and C.11.6.1 (INVERSE): one inversion
    after VOI; MONOCHROME1 declared INVERSE (as DX requires) is not inverted twice."""
    attrs = {"PhotometricInterpretation": photometric, "WindowCenter": 2000, "WindowWidth": 1000}
    if shape:
        attrs["PresentationLUTShape"] = shape
    img, _ = render_8bit(RAMP16, grey(RAMP16, **attrs))
    y = np.array([linear(v, 2000, 1000) for v in RAMP16.ravel().tolist()]).reshape(16, 16)
    want = np.floor(Y_MAX - y) if inverted else np.floor(y)
    assert np.array_equal(img, want.astype(np.uint8))


def test_signed_pixels_render_through_the_lookup_table():
    arr = np.array([[-2000, -1000, -1], [0, 1, 3000]], dtype=np.int16)
    img, _ = render_8bit(arr, grey(arr, WindowCenter=0, WindowWidth=2001))
    assert img.tolist() == [[0, 0, 127], [127, 127, 255]]


def test_lookup_table_path_equals_direct_computation():
    """≤16-bit integers go through a cached table; 32-bit integers are computed directly: same result."""
    rng = np.random.default_rng(7)
    arr16 = rng.integers(0, 4096, (64, 64), dtype=np.uint16)
    attrs = {"RescaleSlope": 0.684, "RescaleIntercept": 200, "WindowCenter": 1600, "WindowWidth": 2800,
             "PhotometricInterpretation": "MONOCHROME1"}
    img16, _ = render_8bit(arr16, grey(arr16, BitsStored=12, **attrs))
    arr32 = arr16.astype(np.uint32)
    img32, _ = render_8bit(arr32, grey(arr32, **attrs))
    assert np.array_equal(img16, img32)


def test_auto_window_ignores_outliers():
    rng = np.random.default_rng(3)
    arr = rng.integers(1000, 1200, (100, 100), dtype=np.uint16)
    arr[:2, :5] = 60000  # 0.1% metal
    img, window = render_8bit(arr, grey(arr), window="auto")
    assert window.source == "auto" and 1000 <= window.center - window.width / 2 and window.center + window.width / 2 <= 1201
    minmax, _ = render_8bit(arr, grey(arr))
    assert img.std() > 5 * minmax.std()  # the tissue keeps its contrast


@pytest.mark.parametrize("spec", ["lung", "mediastinum", "bone", "brain", "-600,1500", "40.5,1"])
def test_presets_and_explicit_windows(spec):
    ds = grey(RAMP16, RescaleIntercept=-1024, WindowCenter=9999, WindowWidth=2)
    center, width = parse_window(spec)
    img, window = render_8bit(RAMP16, ds, window=(center, width))
    assert (window.center, window.width, window.source) == (center, width, "explicit")
    if spec in WINDOW_PRESETS:
        assert (center, width) == WINDOW_PRESETS[spec]
    assert np.array_equal(img.ravel(), [math.floor(linear(v - 1024, center, width)) for v in RAMP16.ravel().tolist()])


@pytest.mark.parametrize("spec", ["9" * 400 + ",400", "40," + "9" * 400, "-" + "9" * 400 + ",1"])
def test_explicit_window_numbers_beyond_float_range_are_refused(spec):
    """Digits enough to overflow float to infinity: refused, not a window of infinite centre that
    renders every pixel black and writes ``Infinity`` into the manifest."""
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="window centre and width must be finite numbers"):
        parse_window(spec)


def _instance(arr: np.ndarray, **attrs):
    """`grey` with its pixels, as a file would be read (explicit VR little endian)."""
    import io

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    from shared.dataset import read_dataset

    ds = grey(arr, **attrs)
    ds.PixelData = arr.tobytes()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return read_dataset(out.getvalue())


def test_jpeg_refuses_a_display_wider_than_it_holds_with_a_reason():
    """2 × 4096 pixels 16 times longer than wide show as 2 × 65536: beyond JPEG's 65500, an
    unsupported output with its reason (not an internal error); PNG holds it."""
    from shared.chain import convert_dataset
    from shared.errors import UnsupportedError

    ds = _instance(np.zeros((2, 4096), np.uint16), PixelSpacing=[1, 16])
    with pytest.raises(UnsupportedError, match=r"JPEG holds at most 65500 pixels a side; the display is 2 × 65536"):
        convert_dataset(ds, ConvertOptions(formats=("jpeg",), deid=False))
    [png], _ = convert_dataset(ds, ConvertOptions(formats=("png",), deid=False))
    assert png.data[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_display_that_square_pixels_grow_beyond_the_budget_is_refused():
    from shared.chain import convert_dataset
    from shared.errors import PixelBudgetError

    ds = _instance(np.zeros((64, 1024), np.uint16), PixelSpacing=[16, 1])  # shown as 1024 × 1024
    with pytest.raises(PixelBudgetError, match=r"the display of 1024 × 1024 \(square pixels\) × 1 frame"):
        convert_dataset(ds, ConvertOptions(formats=("png",), deid=False, max_pixels=1 << 19))
    [png], _ = convert_dataset(ds, ConvertOptions(formats=("png",), deid=False, max_pixels=1 << 19, max_size=512))
    assert png.data[:4] == b"\x89PNG"


def test_modality_lut_sequence_replaces_the_rescale():
    item = Dataset()
    item.LUTDescriptor = [4, 10, 16]
    item.LUTData = [5, 50, 500, 5000]
    item.ModalityLUTType = "US"
    arr = np.array([[0, 10, 11], [12, 13, 99]], dtype=np.uint16)
    ds = grey(arr, ModalityLUTSequence=Sequence([item]), RescaleSlope=9, RescaleIntercept=9)
    assert apply_modality_lut(arr, ds).tolist() == [[5, 5, 50], [500, 5000, 5000]]


def test_functions_leave_their_input_alone():
    arr = RAMP16.copy()
    ds = grey(arr, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    render_8bit(arr, ds)
    assert np.array_equal(arr, RAMP16)
    plain = grey(arr)
    assert apply_modality_lut(arr, plain) is arr  # identity returns the input itself


@pytest.mark.parametrize("attrs,reason", [
    ({"WindowCenter": 40, "WindowWidth": 0}, "(0028,1051) Window Width 0 is invalid for LINEAR"),
    ({"WindowCenter": 40, "WindowWidth": 0.5}, "(0028,1051) Window Width 0.5 is invalid for LINEAR"),
    ({"WindowCenter": 40, "WindowWidth": 10, "VOILUTFunction": "GAMMA"}, "(0028,1056) VOI LUT Function <a value of 7 characters, not shown>"),
    ({"RescaleSlope": 0}, "(0028,1053) Rescale Slope is 0"),
])
def test_invalid_voi_attributes_have_reasons(attrs, reason):
    with pytest.raises(InvalidDicomError) as err:
        render_8bit(RAMP16, grey(RAMP16, **attrs))
    assert reason in str(err.value)


def test_linear_exact_accepts_a_width_below_one():
    """C.11.2.1.3.2: LINEAR_EXACT needs only w > 0."""
    img, window = render_8bit(RAMP16, grey(RAMP16, WindowCenter=2048, WindowWidth=0.5,
                                            VOILUTFunction="LINEAR_EXACT"))
    assert window.width == 0.5 and set(np.unique(img).tolist()) == {0, 127, 255}  # 127: x == c


def rgb(arr: np.ndarray, **attrs) -> Dataset:
    ds = grey(arr[..., 0], PhotometricInterpretation="RGB", **attrs)
    ds.SamplesPerPixel = 3
    return ds


def test_colour_deeper_than_8_bits_scales_by_bits_stored():
    arr = np.array([[[0, 2048, 4095], [1, 4094, 100]]], dtype=np.uint16)
    got = render_colour(arr, rgb(arr, BitsStored=12))
    assert got.dtype == np.uint8
    assert np.array_equal(got, np.floor(arr.astype(np.float64) * 255 / 4095 + 0.5).astype(np.uint8))


def test_8_bit_colour_passes_through():
    arr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    assert render_colour(arr, rgb(arr)) is arr


@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8])
@pytest.mark.parametrize("function", list(VoiFunction))
@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_every_stored_value_renders_as_the_standards_table_whichever_route(dtype, function, photometric):
    """Every value a ≤16-bit image can hold, under CT and other rescales and windows: the 8-bit
    result equals the float64 table (window then truncation), whether the float32 multiply-add
    route or the table itself applied it."""
    from shared.pixels.render import stored_domain

    arr = stored_domain(np.dtype(dtype)).reshape(-1, 256)
    for slope, intercept in ((1.0, -1024.0), (0.5, -10.0), (2.5, 3.25)):
        for center, width in WINDOWS + [(50.0, 350.0), (40.0, 80.0)]:
            attrs = {"RescaleSlope": slope, "RescaleIntercept": intercept, "WindowCenter": center,
                     "WindowWidth": width, "VOILUTFunction": function.value, "PhotometricInterpretation": photometric}
            img, _ = render_8bit(arr, grey(arr, **attrs))
            x = arr.astype(np.float64) * slope + intercept
            want = apply_window(x, Window(center, width, function))
            want = (255.0 - want if photometric == "MONOCHROME1" else want).astype(np.uint8)
            assert np.array_equal(img, want), (slope, intercept, center, width)


def test_the_float32_route_serves_the_usual_ct_windows():
    """The route must be taken where it pays: the CT windows of this project's synthetic series
    and the usual presets (one in eight or so falls back to the table, e.g. 50/350 on CT)."""
    from shared.pixels.render import _window_lut

    taken = {(c, w): _window_lut("<u2", 1.0, -1024.0, Window(c, w), False).affine is not None
             for c, w in ((40.0, 400.0), (-600.0, 1500.0), (40.0, 80.0), (300.0, 1500.0), (50.0, 350.0))}
    assert taken == {(40.0, 400.0): True, (-600.0, 1500.0): True, (40.0, 80.0): True,
                     (300.0, 1500.0): True, (50.0, 350.0): False}


def _numpy_affine(arr, a, b, monkeypatch):
    from shared.pixels import render

    with monkeypatch.context() as m:
        m.setattr(render, "_affine", None)
        return render._apply_affine(arr, a, b)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16])
def test_the_one_pass_window_equals_numpys_for_every_value(dtype, monkeypatch):
    """shared/pixels/_affine.c against numpy's five passes, over every value of the type, for
    CT windows, steep and shallow slopes, inverted ones and slopes that overflow float32."""
    _affine = pytest.importorskip("shared.pixels._affine", reason="the one-pass window was not built here")
    from shared.pixels.render import _apply_affine, stored_domain

    domain = stored_domain(np.dtype(dtype)).astype(dtype)
    rng = np.random.default_rng(2)
    pairs = [(255 / 399, 255 * 1 / 399 * 1024 - 0.5), (-0.6390977, 218.3), (3.0e38, -1.0), (-2.5e38, 7.0),
             (1e-7, 0.1), (0.25, -4000.0)] + [(rng.uniform(-4, 4), rng.uniform(-2e4, 2e4)) for _ in range(40)]
    odd = domain[3:-10]  # a length no vector step divides: the one-at-a-time tail runs too
    for a, b in pairs:
        a, b = np.float32(a), np.float32(b)
        with np.errstate(over="ignore"):
            want = _numpy_affine(domain, a, b, monkeypatch)
        for simd in (True, False):  # AVX2 16 at a time where the CPU has it; one at a time
            out = np.zeros(domain.size, np.uint8)
            assert _affine.window_u8(domain, a, b, out, simd) is True
            assert np.array_equal(out, want), (a, b, simd)
            part = np.zeros(odd.size, np.uint8)
            assert _affine.window_u8(odd, a, b, part, simd) is True
            assert np.array_equal(part, want[3:-10]), (a, b, simd)
        with np.errstate(over="ignore"):
            assert np.array_equal(_apply_affine(domain, a, b), want)


def test_the_one_pass_window_declines_what_it_does_not_cover():
    _affine = pytest.importorskip("shared.pixels._affine", reason="the one-pass window was not built here")
    from shared.pixels.render import _apply_affine

    a, b = np.float32(0.5), np.float32(-3.0)
    img = np.arange(64, dtype=np.int16).reshape(8, 8)
    out = np.full(32, 7, np.uint8)
    for declined in (img[:, ::2], img.astype(np.uint8), img.astype(">i2"), img.astype(np.int32)):
        assert _affine.window_u8(declined, a, b, out[: declined.size]) is False and (out == 7).all()
        assert np.array_equal(_apply_affine(declined, a, b),
                              np.clip(declined.astype(np.float32) * a + b, 0, 255).astype(np.uint8))
    with pytest.raises(BufferError, match="not writable"):
        _affine.window_u8(img, a, b, bytes(64))


@pytest.mark.parametrize("function", [VoiFunction.LINEAR, VoiFunction.LINEAR_EXACT])
@pytest.mark.parametrize("center,width", WINDOWS)
def test_linear_form_is_the_window_multiplied_out(function, center, width):
    from shared.pixels.voi import linear_form

    x = np.linspace(center - 2 * width, center + 2 * width, 1001)
    a, b = linear_form(Window(center, width, function))
    assert np.allclose(np.clip(a * x + b, 0, 255), apply_window(x, Window(center, width, function)),
                       rtol=0, atol=1e-9)
    assert linear_form(Window(center, width, VoiFunction.SIGMOID)) is None
