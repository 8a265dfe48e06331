"""The whitelist of DICOM attributes whose values may appear in output metadata.

PNG text chunks, EXIF/XMP, TIFF tags, manifests, object keys, log lines and metric labels take
DICOM values from `safe_attributes` only: image geometry and rendering parameters, nothing that
describes a person, a place, a device or a time.
"""
from __future__ import annotations

from pydicom.dataset import Dataset

SAFE_ATTRIBUTES = (
    "Modality", "SOPClassUID", "PhotometricInterpretation", "Rows", "Columns", "NumberOfFrames",
    "SamplesPerPixel", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
    "PlanarConfiguration", "RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter",
    "WindowWidth", "VOILUTFunction", "PresentationLUTShape", "PixelSpacing", "SliceThickness",
    "SpacingBetweenSlices", "ImageOrientationPatient", "BodyPartExamined", "PatientIdentityRemoved",
    "DeidentificationMethod", "LongitudinalTemporalInformationModified",
)
_SAFE = frozenset(SAFE_ATTRIBUTES)


def is_safe(keyword: str) -> bool:
    return keyword in _SAFE


def safe_attributes(ds: Dataset, keywords: tuple[str, ...] = SAFE_ATTRIBUTES) -> dict[str, str]:
    """Whitelisted attributes present in ``ds`` as strings (multi-values joined with '\\')."""
    unsafe = [k for k in keywords if k not in _SAFE]
    if unsafe:
        raise ValueError(f"attributes {unsafe} are not on the output metadata whitelist")
    out: dict[str, str] = {}
    for keyword in keywords:
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        out[keyword] = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple)) or \
            type(value).__name__ == "MultiValue" else str(value)
    return out
