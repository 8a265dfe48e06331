"""Modality LUT (PS3.3 C.11.1): Rescale Slope/Intercept or the Modality LUT Sequence."""
from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut as _pydicom_modality_lut

from ..errors import InvalidDicomError
from ..attributes import has, value_of


#: the largest magnitude of a stored integer value (32 bits) and of a modality value an output
#: holds (NumPy volumes are float32): a rescale beyond it would write infinities
_LARGEST_STORED = float(2 ** 32)
_LARGEST_OUTPUT = float(np.finfo(np.float32).max)


def _ds_float(ds: Dataset, keyword: str, tag: str, default: float) -> float:
    raw = value_of(ds, keyword)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except (TypeError, ValueError) as err:
        raise InvalidDicomError(f"({tag}) {keyword} has invalid value {raw!r}") from err
    if not np.isfinite(value):
        raise InvalidDicomError(f"({tag}) {keyword} has non-finite value {raw!r}")
    return value


def rescale_of(ds: Dataset) -> tuple[float, float]:
    """(slope, intercept), validated; identity when absent."""
    slope = _ds_float(ds, "RescaleSlope", "0028,1053", 1.0)
    intercept = _ds_float(ds, "RescaleIntercept", "0028,1052", 0.0)
    if slope == 0:
        raise InvalidDicomError("(0028,1053) Rescale Slope is 0")
    if abs(slope) * _LARGEST_STORED + abs(intercept) > _LARGEST_OUTPUT:
        raise InvalidDicomError(f"(0028,1053) Rescale Slope {slope:g} and (0028,1052) Rescale Intercept "
                                f"{intercept:g} take stored values beyond the range of float32")
    return slope, intercept


def has_modality_lut(ds: Dataset) -> bool:
    return has(ds, "ModalityLUTSequence") and len(ds.ModalityLUTSequence) > 0


def apply_modality_lut(arr: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values → modality values (e.g. HU). Returns ``arr`` itself for the identity."""
    if has_modality_lut(ds):
        try:
            return _pydicom_modality_lut(arr, ds)
        except Exception as err:
            raise InvalidDicomError(f"(0028,3000) Modality LUT Sequence is unusable ({err})") from err
    slope, intercept = rescale_of(ds)
    if slope == 1.0 and intercept == 0.0:
        return arr
    return arr.astype(np.float64) * slope + intercept
