"""VOI transformation (PS3.3 C.11.2): choosing the window and applying it to an output range."""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from ..attributes import value_of
from ..errors import InvalidDicomError


class VoiFunction(str, enum.Enum):
    """(0028,1056) VOI LUT Function; values are the DICOM strings."""

    LINEAR = "LINEAR"
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"


@dataclass(frozen=True)
class Window:
    """A window in modality units, or a VOI LUT (``lut`` set) when the file carries one."""

    center: float
    width: float
    function: VoiFunction = VoiFunction.LINEAR
    source: str = "file"
    lut: tuple | None = None  # (first_mapped, bits, data tuple) for a VOI LUT Sequence item

    def describe(self) -> dict:
        if self.lut is not None:
            return {"source": self.source, "voi_lut": True}
        return {"center": self.center, "width": self.width, "function": self.function.value,
                "source": self.source}


def _first(value) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (MultiValue, list, tuple)):
        return float(value[0]) if len(value) else None
    return float(value)


def _voi_function(ds: Dataset) -> VoiFunction:
    raw = str(value_of(ds, "VOILUTFunction", "") or "LINEAR").strip().upper()
    try:
        return VoiFunction(raw)
    except ValueError as err:
        raise InvalidDicomError(f"(0028,1056) VOI LUT Function {raw!r} is not defined") from err


def file_window(ds: Dataset) -> Window | None:
    """The first Window Center/Width in the file, if any and valid."""
    try:
        center = _first(value_of(ds, "WindowCenter"))
        width = _first(value_of(ds, "WindowWidth"))
    except (TypeError, ValueError) as err:
        raise InvalidDicomError(
            f"(0028,1050) Window Center / (0028,1051) Window Width invalid: "
            f"{ds.get('WindowCenter')!r} / {ds.get('WindowWidth')!r}"
        ) from err
    if center is None or width is None:
        return None
    if not (math.isfinite(center) and math.isfinite(width)):
        raise InvalidDicomError("(0028,1050) Window Center / (0028,1051) Window Width are not finite numbers")
    function = _voi_function(ds)
    min_width = 0.0 if function is not VoiFunction.LINEAR else 1.0
    if width < min_width or (width == 0):
        raise InvalidDicomError(f"(0028,1051) Window Width {width:g} is invalid for {function.value}")
    return Window(center, width, function, "file:1")


def file_voi_lut(ds: Dataset) -> Window | None:
    """The first VOI LUT Sequence item, as a Window carrying its table."""
    seq = value_of(ds, "VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    try:
        n, first, bits = (int(v) for v in item.LUTDescriptor)
        data = np.asarray(item.LUTData, dtype=np.float64).ravel()
    except Exception as err:
        raise InvalidDicomError(f"(0028,3010) VOI LUT Sequence item is unusable ({err})") from err
    n = n or 65536
    if data.size < n or not 8 <= bits <= 16:
        raise InvalidDicomError(f"(0028,3002) LUT Descriptor {[n, first, bits]} does not match its data")
    return Window(0.0, 0.0, VoiFunction.LINEAR, "voi_lut:1", (first, bits, tuple(data[:n].tolist())))


def window_from_histogram(values: np.ndarray, counts: np.ndarray, mode: str) -> Window:
    """Data-driven windows. ``values`` sorted ascending with their pixel ``counts``.

    ``minmax``: the full range (DCMTK ``+Wm``: centre (min+max+1)/2, width max-min+1);
    ``auto``: the 0.5–99.5 percentile range, robust to air and metal outliers.
    """
    present = counts > 0
    vals, cnts = values[present], counts[present]
    if vals.size == 0:
        return Window(0.0, 1.0, VoiFunction.LINEAR, mode)
    if mode == "auto":
        cdf = np.cumsum(cnts) / cnts.sum()
        lo = float(vals[min(np.searchsorted(cdf, 0.005), vals.size - 1)])
        hi = float(vals[min(np.searchsorted(cdf, 0.995), vals.size - 1)])
    else:
        lo, hi = float(vals[0]), float(vals[-1])
    return Window((lo + hi + 1) / 2, max(hi - lo + 1, 1.0), VoiFunction.LINEAR, mode)


def select_window(ds: Dataset, spec: str | tuple[float, float]) -> Window | None:
    """The window the rule of DESIGN.md picks; ``None`` means "data-driven, compute from pixels"."""
    if isinstance(spec, tuple):
        return Window(spec[0], spec[1], VoiFunction.LINEAR, "explicit")
    if spec == "default":
        return file_window(ds) or file_voi_lut(ds)
    return None


def apply_window(values: np.ndarray, window: Window, *, out_max: float = 255.0) -> np.ndarray:
    """Modality values → display values in [0, out_max] (float64), per PS3.3 C.11.2.1.2/3."""
    x = np.asarray(values, dtype=np.float64)
    if window.lut is not None:
        first, bits, data = window.lut
        table = np.asarray(data, dtype=np.float64)
        # entry k covers inputs [k, k+1): non-integer modality values (rescale slope) are floored,
        # as DCMTK does; PS3.3 C.11.2.1.1 clamps inputs outside the table to its first/last entry
        idx = np.clip(np.floor(x) - first, 0, table.size - 1).astype(np.intp)
        top = float((1 << bits) - 1)
        peak = table.max() if table.size else top
        if peak > top:  # descriptor understates the depth (a known producer error): trust the data
            top = float((1 << int(np.ceil(np.log2(peak + 1)))) - 1)
        return table[idx] * (out_max / top)
    c, w = window.center, window.width
    if window.function is VoiFunction.SIGMOID:
        with np.errstate(over="ignore"):  # far below the window exp overflows to inf: display 0
            return out_max / (1.0 + np.exp(-4.0 * (x - c) / w))
    if window.function is VoiFunction.LINEAR_EXACT:
        y = ((x - c) / w + 0.5) * out_max
    else:
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * out_max if w > 1 else np.where(x > c - 0.5, out_max, 0.0)
    return np.clip(y, 0.0, out_max)


def linear_form(window: Window, *, out_max: float = 255.0) -> tuple[float, float] | None:
    """(a, b) such that `apply_window` is clip(a·x + b, 0, out_max) for a LINEAR window wider than
    one or a LINEAR_EXACT one — its formulas multiplied out — and None for any other window."""
    c, w = window.center, window.width
    if window.lut is not None:
        return None
    if window.function is VoiFunction.LINEAR and w > 1:
        return out_max / (w - 1), ((0.5 - c) / (w - 1) + 0.5) * out_max
    if window.function is VoiFunction.LINEAR_EXACT and w > 0:
        return out_max / w, (0.5 - c / w) * out_max
    return None
