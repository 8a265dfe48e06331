"""The whitelist of DICOM attributes whose values may appear in output metadata.

PNG text chunks, EXIF/XMP, TIFF tags, PDF, manifests, object keys, log lines and metric labels
take DICOM values from `safe_attributes` only: image geometry and rendering parameters, always;
a few attributes more only under the PS3.15 option that makes the user keep them on purpose
(a study date under the temporal options, a cleaned description, a device serial number).
Values are read from the dataset after de-identification, so they are what the profile left.
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
#: Attributes that identify unless an option keeps them on purpose: keyword → the options (any
#: one suffices) under which they may be embedded.
SAFE_WITH_OPTION: dict[str, frozenset[str]] = {
    "StudyDate": frozenset({"retain-long-full-dates", "retain-long-modified-dates"}),
    "SeriesDate": frozenset({"retain-long-full-dates", "retain-long-modified-dates"}),
    "StudyDescription": frozenset({"clean-descriptors"}),
    "SeriesDescription": frozenset({"clean-descriptors"}),
    "DeviceSerialNumber": frozenset({"retain-device-id"}),
    "InstitutionName": frozenset({"retain-institution-id"}),
}
_SAFE = frozenset(SAFE_ATTRIBUTES)
#: Modality's defined terms (PS3.3 C.7.3.1.1.1, current and retired). Modality is kept by the
#: profile and free text in a corrupt or misused file: only a defined term is embedded.
MODALITY_TERMS = frozenset({
    "ANN", "AR", "ASMT", "AU", "BDUS", "BI", "BMD", "CFM", "CR", "CT", "CTPROTOCOL", "DG", "DMS",
    "DOC", "DX", "ECG", "EEG", "EMG", "EOG", "EPS", "ES", "FID", "GM", "HC", "HD", "IO", "IOL",
    "IVOCT", "IVUS", "KER", "KO", "LEN", "LS", "M3D", "MG", "MR", "NM", "OAM", "OCT", "OP", "OPM",
    "OPT", "OPTBSV", "OPTENF", "OPV", "OSS", "OT", "PA", "PLAN", "POS", "PR", "PT", "PX", "REG",
    "RESP", "RF", "RG", "RTDOSE", "RTIMAGE", "RTINTENT", "RTPLAN", "RTRAD", "RTRECORD", "RTSEGANN",
    "RTSTRUCT", "RWV", "SEG", "SM", "SMR", "SR", "SRF", "STAIN", "TEXTUREMAP", "TG", "US", "VA",
    "XA", "XAPROTOCOL", "XC",
    # retired
    "AS", "CD", "CF", "CP", "CS", "DD", "DF", "DM", "DS", "EC", "FA", "FS", "LP", "MA", "MS", "OPR",
    "ST", "VF",
})
#: Whitelisted attributes whose value is embedded only when it is one of these terms.
DEFINED_TERMS: dict[str, frozenset[str]] = {"Modality": MODALITY_TERMS}


def is_safe(keyword: str, options: tuple[str, ...] = ()) -> bool:
    """May this attribute's value be embedded under these de-identification options?"""
    return keyword in _SAFE or not SAFE_WITH_OPTION.get(keyword, frozenset()).isdisjoint(options)


def safe_attributes(ds: Dataset, keywords: tuple[str, ...] = SAFE_ATTRIBUTES,
                    options: tuple[str, ...] = ()) -> dict[str, str]:
    """Whitelisted attributes present in ``ds`` as strings (multi-values joined with '\\'); one
    with defined terms (`DEFINED_TERMS`) only when its value is one of them.

    A keyword never on the whitelist is a programming error (ValueError); one that is safe only
    under an option that is not in ``options`` is left out.
    """
    unknown = [k for k in keywords if k not in _SAFE and k not in SAFE_WITH_OPTION]
    if unknown:
        raise ValueError(f"attributes {unknown} are not on the output metadata whitelist")
    out: dict[str, str] = {}
    for keyword in keywords:
        if not is_safe(keyword, options):
            continue
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        text = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple)) or \
            type(value).__name__ == "MultiValue" else str(value)
        if keyword in DEFINED_TERMS and text.strip() not in DEFINED_TERMS[keyword]:
            continue  # not the standard's term: text of the file's own, left out
        out[keyword] = text
    return out
