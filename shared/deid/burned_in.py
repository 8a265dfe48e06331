"""Burned-in annotation: which instances likely show identifying text, and masking configured regions.

The header profile cannot clean pixels. An instance that says it has burned-in text (Burned In
Annotation YES), or whose kind usually does (ultrasound, secondary capture) and that does not say
otherwise, is refused by default; ``--burned-in mask`` blacks out configured regions instead.
"""
from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

from ..dataset import text_value
from ..errors import ConfigError

POLICIES = ("refuse", "mask")
#: Secondary Capture SOP classes (single and multi-frame): screen captures, scanned documents.
SECONDARY_CAPTURE = frozenset({
    "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4",
})
#: Modalities whose images usually carry the patient's name on screen.
LIKELY_MODALITIES = {"US": "ultrasound", "ES": "endoscopy", "XC": "external camera"}

Region = tuple[int, int, int, int]


def burned_in_reason(ds: Dataset) -> str | None:
    """Why this instance may show identifying text in its pixels, or None."""
    flag = text_value(ds, 0x00280301).upper()  # Burned In Annotation
    if flag == "YES":
        return "(0028,0301) Burned In Annotation is YES"
    if flag == "NO":
        return None
    modality = text_value(ds, 0x00080060).upper()  # Modality
    if modality in LIKELY_MODALITIES:
        return (f"(0028,0301) Burned In Annotation is absent and (0008,0060) Modality is {modality} "
                f"({LIKELY_MODALITIES[modality]} images usually show the patient's name)")
    if text_value(ds, 0x00080016) in SECONDARY_CAPTURE:  # SOP Class UID
        return ("(0028,0301) Burned In Annotation is absent and (0008,0016) SOP Class is "
                "Secondary Capture (screen captures usually show identifying text)")
    return None


def parse_region(value) -> Region:
    """``"x,y,w,h"`` (pixels from the top left) or a 4-sequence → a validated region."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        x, y, w, h = (int(str(p).strip()) for p in parts)
    except ValueError as err:
        raise ConfigError(f"invalid mask region {value!r}: expected X,Y,W,H in pixels") from err
    if x < 0 or y < 0 or w < 1 or h < 1:
        raise ConfigError(f"invalid mask region {value!r}: X,Y must be >= 0 and W,H >= 1")
    return x, y, w, h


def mask_regions(arr: np.ndarray, ds: Dataset, *, regions: tuple[Region, ...]) -> np.ndarray:
    """A copy of the pixels with every region of every frame set to black for its photometric
    interpretation: 0 in every channel of colour (decoded as RGB), else the minimum stored value
    (the maximum for MONOCHROME1; for palette colour the lowest index)."""
    out = np.array(arr, copy=True)
    frames = out if int(ds.get("NumberOfFrames", 1) or 1) > 1 else out[np.newaxis]
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if int(ds.get("SamplesPerPixel", 1) or 1) == 3:
        fill = 0
    else:
        fill = out.max() if photometric == "MONOCHROME1" else out.min()
    for x, y, w, h in regions:
        frames[:, y:y + h, x:x + w] = fill
    return out
