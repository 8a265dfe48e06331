"""DICOM PS3.15 Annex E Table E.1-1 as data, and the action we take on every attribute of it.

The ~650 rows of the Basic Application Level Confidentiality Profile come from the maintained
table that `dicom-anonymizer` ships (newest edition it holds; we load only its data file, not its
code). The actions are ours: how the table's composite codes resolve, what each option retains or
cleans, and the per-option action tables, built once per process and cached.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pydicom.datadict import dictionary_VR, tag_for_keyword

from ..errors import ConfigError

# Resolved actions (PS3.15 E.1.1 codes, plus our own for the options).
REMOVE = "X"   # delete the attribute
EMPTY = "Z"    # keep it, zero length (sequences: no items)
DUMMY = "D"    # keyed pseudonym or a dummy value of the VR (sequences: no items)
UID = "U"      # keyed 2.25 UID pseudonym (sequences: recurse so references stay linked)
KEEP = "K"
CLEAN = "C"    # keep the text with identifying tokens removed (Clean Descriptors etc.)
SHIFT = "S"    # dates moved by the per-patient shift; times kept (Modified Dates)

#: Table category (dicom-anonymizer's name) → our action. Composite codes resolve to the form that
#: keeps the attribute present (valid for any IOD type) while holding no original information.
_CATEGORY_ACTION = {
    "D_TAGS": DUMMY, "Z_TAGS": EMPTY, "X_TAGS": REMOVE, "U_TAGS": UID,
    "Z_D_TAGS": DUMMY, "X_Z_TAGS": EMPTY, "X_D_TAGS": DUMMY, "X_Z_D_TAGS": DUMMY,
    "X_Z_U_STAR_TAGS": UID,
}


@dataclass(frozen=True)
class DeidOption:
    """A profile option: its CLI name and its CID 7050 code (DeidentificationMethodCodeSequence)."""

    name: str
    code: str
    meaning: str


BASIC_PROFILE = DeidOption("basic", "113100", "Basic Application Confidentiality Profile")
CLEAN_PIXEL_DATA = DeidOption("clean-pixel-data", "113101", "Clean Pixel Data Option")
OPTIONS: dict[str, DeidOption] = {o.name: o for o in (
    DeidOption("retain-long-full-dates", "113106",
               "Retain Longitudinal Temporal Information Full Dates Option"),
    DeidOption("retain-long-modified-dates", "113107",
               "Retain Longitudinal Temporal Information Modified Dates Option"),
    DeidOption("retain-patient-chars", "113108", "Retain Patient Characteristics Option"),
    DeidOption("retain-device-id", "113109", "Retain Device Identity Option"),
    DeidOption("retain-institution-id", "113112", "Retain Institution Identity Option"),
    DeidOption("retain-safe-private", "113111", "Retain Safe Private Option"),
    DeidOption("clean-descriptors", "113105", "Clean Descriptors Option"),
)}

#: The option columns of Table E.1-1 we implement, as (keyword, action) per option.
_PATIENT_CHARS = {
    **dict.fromkeys(("PatientAge", "PatientSex", "PatientSize", "PatientWeight", "EthnicGroup",
                     "SmokingStatus", "PregnancyStatus", "PatientSexNeutered"), KEEP),
    **dict.fromkeys(("Allergies", "MedicalAlerts", "SpecialNeeds", "AdditionalPatientHistory",
                     "PatientState", "Occupation", "PatientComments"), CLEAN),
}
_DEVICE_ID = dict.fromkeys((
    "DeviceSerialNumber", "StationName", "StationAETitle", "DetectorID", "DeviceUID", "PlateID",
    "GantryID", "CassetteID", "GeneratorID", "PerformedStationAETitle", "PerformedStationName",
    "ScheduledStationAETitle", "ScheduledStationName", "PerformedStationNameCodeSequence",
    "ScheduledStationNameCodeSequence", "PerformedStationGeographicLocationCodeSequence",
    "DeviceLabel", "ManufacturerDeviceIdentifier", "ManufacturerDeviceClassUID",
    "SourceSerialNumber", "TreatmentMachineName", "DeviceAlternateIdentifier", "XRayDetectorID",
    "XRaySourceID", "XRayDetectorLabel", "TransducerIdentificationSequence",
), KEEP) | dict.fromkeys(("DeviceDescription", "AcquisitionDeviceProcessingDescription"), CLEAN)
_INSTITUTION_ID = dict.fromkeys((
    "InstitutionName", "InstitutionAddress", "InstitutionCodeSequence",
    "InstitutionalDepartmentName", "InstitutionalDepartmentTypeCodeSequence",
), KEEP)
_DESCRIPTORS = dict.fromkeys((
    "StudyDescription", "SeriesDescription", "ImageComments", "ProtocolName", "AcquisitionComments",
    "AcquisitionProtocolDescription", "DerivationDescription", "PerformedProcedureStepDescription",
    "RequestedProcedureDescription", "ScheduledProcedureStepDescription",
    "CommentsOnThePerformedProcedureStep", "ContrastBolusAgent", "RequestedContrastAgent",
    "FrameComments", "AdmittingDiagnosesDescription", "DischargeDiagnosisDescription",
    "ReasonForStudy", "StudyComments", "VisitComments", "ImagingServiceRequestComments",
    "RequestedProcedureComments", "ReasonForTheRequestedProcedure", "ServiceEpisodeDescription",
    "InterpretationText", "IdentifyingComments", "ModifiedImageDescription", "RTPlanDescription",
    "RTPlanName", "LabelText", "TextString",
), CLEAN)
_OPTION_COLUMNS: dict[str, dict[str, str]] = {
    "retain-patient-chars": _PATIENT_CHARS,
    "retain-device-id": _DEVICE_ID,
    "retain-institution-id": _INSTITUTION_ID,
    "clean-descriptors": _DESCRIPTORS,
}
#: Never kept, whatever the temporal option: a birth date identifies (HIPAA Safe Harbor); the
#: age stays available through Retain Patient Characteristics.
_BIRTH = frozenset(tag_for_keyword(k) for k in ("PatientBirthDate", "PatientBirthTime"))
_TEMPORAL_VRS = frozenset({"DA", "DT", "TM"})


@dataclass(frozen=True)
class Table:
    """Table E.1-1: its edition and the Basic Profile action per tag (repeating groups apart)."""

    edition: str
    basic: dict[int, str]

    @property
    def reference(self) -> str:
        return f"DICOM PS3.15 E.1-1 ({self.edition})"


def _table_file() -> Path:
    """The newest edition of Table E.1-1 that dicom-anonymizer ships, found without importing it."""
    spec = importlib.util.find_spec("dicomanonymizer")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("de-identification needs the dicom-anonymizer package (Table E.1-1 data)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "dicom_anonymization_databases"
    editions = sorted(folder.glob("dicomfields_*.py"))
    if not editions:
        raise ConfigError(f"no Table E.1-1 edition found in {folder}")
    return editions[-1]


@lru_cache(maxsize=1)
def load_table() -> Table:
    """Table E.1-1 as {tag: action}; the 50xx/60xx repeating groups are handled by the walker."""
    path = _table_file()
    spec = importlib.util.spec_from_file_location(f"_dicomfleet_table_e11_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # a data file: lists of (group, element) tuples
    basic: dict[int, str] = {}
    for category, action in _CATEGORY_ACTION.items():
        for row in getattr(module, category):
            if len(row) == 2:
                basic[(row[0] << 16) | row[1]] = action
    return Table(path.stem.removeprefix("dicomfields_"), basic)


def _dictionary_vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def validate_options(names: tuple[str, ...]) -> tuple[str, ...]:
    """Check option names; return them in canonical order (so equal choices compare equal)."""
    unknown = [n for n in names if n not in OPTIONS]
    if unknown:
        raise ConfigError(f"unknown de-identification option(s) {unknown}: expected {', '.join(OPTIONS)}")
    if {"retain-long-full-dates", "retain-long-modified-dates"} <= set(names):
        raise ConfigError("choose one of retain-long-full-dates and retain-long-modified-dates")
    return tuple(n for n in OPTIONS if n in names)


@lru_cache(maxsize=16)
def action_table(options: tuple[str, ...]) -> dict[int, str]:
    """{tag: action} for a set of options: the Basic Profile with the option columns applied."""
    table = dict(load_table().basic)
    for name in validate_options(options):
        for keyword, action in _OPTION_COLUMNS.get(name, {}).items():
            table[tag_for_keyword(keyword)] = action
    temporal = KEEP if "retain-long-full-dates" in options else (
        SHIFT if "retain-long-modified-dates" in options else None)
    if temporal:
        for tag in list(table):
            if tag not in _BIRTH and _dictionary_vr(tag) in _TEMPORAL_VRS:
                table[tag] = temporal
    return table


def method_codes(options: tuple[str, ...], *, masked: bool = False) -> list[DeidOption]:
    """The DeidentificationMethodCodeSequence entries: the profile, then each option used."""
    codes = [BASIC_PROFILE, *(OPTIONS[n] for n in validate_options(options))]
    return codes + [CLEAN_PIXEL_DATA] if masked else codes


#: Retain Safe Private: a small subset of PS3.15 Table E.3.10-1 (acquisition parameters only),
#: as {(group, private creator): {element offset}}. A kept value must still look numeric.
SAFE_PRIVATE: dict[tuple[int, str], frozenset[int]] = {
    (0x0019, "SIEMENS MR HEADER"): frozenset({0x0C, 0x0D, 0x0E, 0x27}),  # b-value, diffusion dir., B matrix
    (0x0043, "GEMS_PARM_01"): frozenset({0x27, 0x39}),  # scan pitch ratio, diffusion b-value slop ints
    (0x2001, "Philips Imaging DD 001"): frozenset({0x03}),  # diffusion b-factor
}
