"""The 8-bit display rendering: modality LUT → VOI → presentation (grey), or colour → RGB.

Integer images up to 16 bits go through one lookup table built over every possible stored value,
so a slice costs one ``np.take`` (half the time of ``table[index]``, same values); the table is
cached across slices that share their parameters. A linear window whose table a float32
multiply-add reproduces for every stored value is applied that way instead (a third faster),
in one pass by ``_affine`` (shared/pixels/_affine.c) where it was built: a third of numpy's time.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut

from ..errors import InvalidDicomError, UnsupportedError
from ..attributes import value_of
from .modality import apply_modality_lut, has_modality_lut, rescale_of
from .voi import Window, apply_window, linear_form, select_window, window_from_histogram

try:
    from . import _affine
except ImportError:  # not built (no compiler at install): numpy's route, the same values
    _affine = None

#: How a linear window is applied here: "one-pass" (shared/pixels/_affine.c) or "numpy"
WINDOW_ROUTE = "numpy" if _affine is None else "one-pass"


def stored_domain(dtype: np.dtype) -> np.ndarray:
    """Every value an integer dtype of ≤16 bits can hold, in the order of its unsigned view."""
    dtype = np.dtype(dtype)
    unsigned = np.dtype(f"u{dtype.itemsize}")
    values = np.arange(1 << (8 * dtype.itemsize), dtype=unsigned)
    return values.view(dtype)


def inverts(ds: Dataset) -> bool:
    """MONOCHROME1 or Presentation LUT Shape INVERSE: low values display bright (PS3.3 C.11.6)."""
    photometric = str(value_of(ds, "PhotometricInterpretation", "")).strip().upper()
    shape = str(value_of(ds, "PresentationLUTShape", "")).strip().upper()
    return photometric == "MONOCHROME1" or shape == "INVERSE"


def _to_uint8(display: np.ndarray, invert: bool) -> np.ndarray:
    if invert:
        display = 255.0 - display
    return display.astype(np.uint8)  # truncation, as DCMTK does


@dataclass(frozen=True)
class _WindowLut:
    """A window's display value for every stored value (``table``, in the order of the unsigned
    view), and the float32 multiply-add that gives the same values (``affine``), if one does."""

    table: np.ndarray
    affine: tuple[np.float32, np.float32] | None


def _affine_coefficients(slope: float, intercept: float, window: Window, invert: bool) -> tuple[float, float] | None:
    """(a, b) with display = a·stored + b before clipping and truncation: the window's linear
    form (`linear_form`) after the rescale, mirrored for an inverted display."""
    form = linear_form(window)
    if form is None:
        return None
    a, b = form[0] * slope, form[0] * intercept + form[1]
    return (-a, 255.0 - b) if invert else (a, b)


def _apply_affine(arr: np.ndarray, a: np.float32, b: np.float32) -> np.ndarray:
    if _affine is not None:  # the same operations in one pass, for C-contiguous 16-bit input
        out = np.empty(arr.shape, np.uint8)
        if _affine.window_u8(arr, a, b, out):
            return out
    with np.errstate(over="ignore"):  # an extreme rescale overflows to ±inf, which clips as the table does
        out = np.multiply(arr, a, dtype=np.float32)
        np.add(out, b, out=out)
    np.clip(out, 0.0, 255.0, out=out)
    return out.astype(np.uint8)  # truncation, as the table's


@lru_cache(maxsize=32)
def _window_lut(dtype: str, slope: float, intercept: float, window: Window, invert: bool) -> _WindowLut:
    """The table, built in float64 as PS3.3 C.11.2 reads; the float32 route only where it gives
    the table's value for every one of the 2^16 (or 2^8) stored values: each pixel is computed
    by the same IEEE operations whatever the array, so equality over the domain is equality on
    every image. (A value landing on a truncation boundary rounds differently now and then:
    ~1 window in 8 here, which keeps the table.)"""
    domain = stored_domain(np.dtype(dtype))
    table = _to_uint8(apply_window(domain.astype(np.float64) * slope + intercept, window), invert)
    table.setflags(write=False)
    coefficients = _affine_coefficients(slope, intercept, window, invert)
    affine = None
    if coefficients is not None:
        a, b = (np.float32(v) for v in coefficients)
        if np.isfinite(a) and np.isfinite(b) and np.array_equal(_apply_affine(domain, a, b), table):
            affine = (a, b)
    return _WindowLut(table, affine)


def _data_window(modality: np.ndarray, counts: np.ndarray | None, mode: str) -> Window:
    if counts is None:
        values, counts = np.unique(modality[np.isfinite(modality)], return_counts=True)
    else:
        nz = np.flatnonzero(counts)
        values, counts = modality[nz], counts[nz]
        order = np.argsort(values, kind="stable")
        values, counts = values[order], counts[order]
    return window_from_histogram(np.asarray(values, dtype=np.float64), counts, mode)


def render_grey(arr: np.ndarray, ds: Dataset, *, window: str | tuple[float, float]) -> tuple[np.ndarray, Window]:
    """Monochrome stored values → uint8 display values and the window that was used."""
    chosen = select_window(ds, window)
    invert = inverts(ds)
    mode = "minmax" if window == "default" else str(window)
    if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
        index = arr.view(f"u{arr.dtype.itemsize}")
        if chosen is not None and not has_modality_lut(ds):
            slope, intercept = rescale_of(ds)
            lut = _window_lut(arr.dtype.str, slope, intercept, chosen, invert)
            if lut.affine is not None:  # 0.26 instead of 0.41 ms a 512² slice (np.take's indexing)
                return _apply_affine(arr, *lut.affine), chosen
            return np.take(lut.table, index), chosen
        modality = np.asarray(apply_modality_lut(stored_domain(arr.dtype), ds), dtype=np.float64)
        if chosen is None:
            counts = np.bincount(index.ravel(), minlength=modality.size)
            chosen = _data_window(modality, counts, mode)
        return np.take(_to_uint8(apply_window(modality, chosen), invert), index), chosen
    if arr.dtype.kind not in "iuf":
        raise UnsupportedError(f"pixel dtype {arr.dtype} cannot be rendered")
    modality = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    if chosen is None:
        chosen = _data_window(modality, None, mode)
    return _to_uint8(apply_window(np.nan_to_num(modality), chosen), invert), chosen


def _scale_to_8bit(rgb: np.ndarray, bits: int) -> np.ndarray:
    if rgb.dtype == np.uint8:
        return rgb
    top = (1 << bits) - 1
    return ((rgb.astype(np.float64) * 255.0 / top) + 0.5).clip(0, 255).astype(np.uint8)


def render_colour(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """PALETTE COLOR or RGB (YBR already converted by the decoder) → uint8 RGB."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if photometric == "PALETTE COLOR":
        try:
            rgb = apply_color_lut(arr, ds)
        except Exception as err:
            raise InvalidDicomError(f"(0028,1101-1103) palette colour lookup tables are unusable ({err})") from err
        bits = int(ds.get("RedPaletteColorLookupTableDescriptor", [0, 0, 8])[2])
        return _scale_to_8bit(rgb, 16 if rgb.dtype != np.uint8 and bits not in (8, 16) else bits)
    bits = int(ds.get("BitsStored", arr.dtype.itemsize * 8) or 8)
    return _scale_to_8bit(arr, bits)


def is_colour(ds: Dataset) -> bool:
    photometric = str(value_of(ds, "PhotometricInterpretation", "")).strip().upper()
    return int(value_of(ds, "SamplesPerPixel", 1) or 1) == 3 or photometric == "PALETTE COLOR"


def render_8bit(arr: np.ndarray, ds: Dataset, *, window: str | tuple[float, float] = "default") -> tuple[np.ndarray, Window | None]:
    """Decoded pixels → what a viewer shows, as uint8 (grey H×W or RGB H×W×3, frames leading)."""
    if is_colour(ds):
        return render_colour(arr, ds), None
    return render_grey(arr, ds, window=window)
