"""Dataset-level de-identification: every action of Table E.1-1, the options, the pseudonyms."""
from __future__ import annotations

import io
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from shared.deid import deidentify, pseudonymous_prefix
from shared.deid.actions import clean_text
from shared.deid.profile import (
    CLEAN, DUMMY, EMPTY, KEEP, OPTIONS, REMOVE, SHIFT, UID, action_table, load_table)
from shared.deid.pseudonyms import Pseudonymizer, shift_date, shift_datetime
from shared.errors import ConfigError
from shared.options import ConvertOptions
from tests.synthetic import PHI, PRIVATE_PHI, write_series
from tests.test_deid_plant import TEXT_VRS, Planter, plant

KEY = "test-key-0123456789abcdef0123456789abcdef"
UID_RE = re.compile(r"^2\.25\.\d{1,39}$")


@pytest.fixture(autouse=True)
def deid_key(monkeypatch):
    monkeypatch.setenv("DICOMFLEET_DEID_KEY", KEY)
    monkeypatch.delenv("DICOMFLEET_DEID_KEY_FILE", raising=False)


def _ct(slices: int = 1, tmp_path=None) -> list[Dataset]:
    paths = write_series(tmp_path, slices=slices, size=16, seed=3)
    return [pydicom.dcmread(p) for p in paths]


def _roundtrip(ds: Dataset) -> Dataset:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return pydicom.dcmread(io.BytesIO(buf.getvalue()))


def test_table_is_the_maintained_edition_with_every_action_resolved():
    table = load_table()
    assert re.fullmatch(r"20\d\d[a-z]?", table.edition)
    assert len(table.basic) > 600
    basic = table.basic
    assert basic[0x00100010] == EMPTY      # Patient's Name: Z
    assert basic[0x00100020] == DUMMY      # Patient ID: Z/D
    assert basic[0x00080080] == DUMMY      # Institution Name: X/Z/D
    assert basic[0x00081140] == UID        # Referenced Image Sequence: X/Z/U*
    assert basic[0x00101010] == REMOVE     # Patient's Age: X
    assert basic[0x0020000D] == UID
    every = action_table(tuple(OPTIONS) [:1] + tuple(OPTIONS)[2:])
    assert every[0x00101010] == KEEP and every[0x00081030] == CLEAN and every[0x00080020] == KEEP
    assert action_table(("retain-long-modified-dates",))[0x00080020] == SHIFT
    assert action_table(("retain-long-modified-dates",))[0x00100030] == EMPTY  # birth date never kept


def test_basic_profile_removes_replaces_and_empties_every_planted_attribute(tmp_path):
    ds = _ct(1, tmp_path)[0]
    planter = Planter(11)
    plant(ds, planter)
    before = {elem.tag: (elem.VR, elem.value) for elem in ds}
    deidentify(ds, ConvertOptions())
    out = _roundtrip(ds)
    table = load_table().basic
    for tag, (vr, value) in before.items():
        action = table.get(tag)
        if action is None or tag >> 16 < 0x0008:
            continue
        if action == REMOVE:
            assert tag not in out, f"{tag:08X} should be removed"
        elif action == EMPTY:
            assert tag in out and out[tag].is_empty, f"{tag:08X} should be empty"
        elif action == UID and vr == "UI":
            assert UID_RE.match(str(out[tag].value)) and len(out[tag].value) <= 64
            assert out[tag].value == Pseudonymizer(KEY.encode()).uid(value)
        elif action == DUMMY and vr in TEXT_VRS:
            assert not out[tag].is_empty and out[tag].value != value
        elif action == DUMMY and vr == "SQ":
            assert len(out[tag].value) == 0
    blob = bytes(_bytes(out))
    assert not [v for v in planter.planted if v.encode() in blob]
    assert not any(str(v).encode() in blob for v in PHI.values())
    assert PRIVATE_PHI.encode() not in blob
    assert not [e for e in out if e.tag.is_private or e.tag >> 24 in (0x50, 0x60)]
    assert out.PatientIdentityRemoved == "YES"
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100"]
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert UID_RE.match(out.file_meta.MediaStorageSOPInstanceUID)
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_references_inside_sequences_match_the_referenced_instance(tmp_path):
    a, b = _ct(2, tmp_path)
    ref = Dataset()
    ref.ReferencedSOPClassUID = b.SOPClassUID
    ref.ReferencedSOPInstanceUID = b.SOPInstanceUID
    a.ReferencedImageSequence = Sequence([ref])
    a.SourceImageSequence = Sequence([Dataset()])
    a.SourceImageSequence[0].ReferencedSOPInstanceUID = b.SOPInstanceUID
    a.AnatomicRegionSequence = Sequence([Dataset()])
    a.AnatomicRegionSequence[0].CodeValue = "T-D3000"
    a.AnatomicRegionSequence[0].ReferencedSOPInstanceUID = b.SOPInstanceUID
    for ds in (a, b):
        deidentify(ds, ConvertOptions())
    assert a.ReferencedImageSequence[0].ReferencedSOPInstanceUID == b.SOPInstanceUID
    assert a.SourceImageSequence[0].ReferencedSOPInstanceUID == b.SOPInstanceUID
    assert a.AnatomicRegionSequence[0].ReferencedSOPInstanceUID == b.SOPInstanceUID
    assert a.ReferencedImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"  # well known
    assert a.AnatomicRegionSequence[0].CodeValue == "T-D3000"  # outside the table: kept
    assert (a.StudyInstanceUID, a.SeriesInstanceUID, a.FrameOfReferenceUID) == \
        (b.StudyInstanceUID, b.SeriesInstanceUID, b.FrameOfReferenceUID)
    assert a.PatientID == b.PatientID and a.PatientID.startswith("PAT") and a.PatientID != PHI["PatientID"]


def test_patient_pseudonym_follows_id_and_issuer_and_other_patients_get_their_own(tmp_path):
    from shared.deid import patient_key

    a, b = _ct(2, tmp_path)
    b.IssuerOfPatientID = "OTHER HOSPITAL"
    a.AnatomicRegionSequence = Sequence([Dataset()])  # outside the table: walked, not dropped
    a.AnatomicRegionSequence[0].PatientID = "OLD-ID-1"
    keys = patient_key(a), patient_key(b)
    for ds in (a, b):
        deidentify(ds, ConvertOptions())
    pseudo = Pseudonymizer(KEY.encode())
    assert a.PatientID == pseudo.patient_id(keys[0]) and b.PatientID == pseudo.patient_id(keys[1])
    assert a.PatientID != b.PatientID  # same ID, another issuer: another patient
    assert a.AnatomicRegionSequence[0].PatientID == pseudo.patient_id("OLD-ID-1")
    assert "IssuerOfPatientID" not in b


def test_unknown_uids_outside_the_table_are_pseudonymised_well_known_ones_kept(tmp_path):
    ds = _ct(1, tmp_path)[0]
    ds.add_new(0x00081150, "UI", "1.2.3.20260302.84500")  # Referenced SOP Class UID: not well known
    deidentify(ds, ConvertOptions())
    assert UID_RE.match(ds[0x00081150].value)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def _uids_in_process(paths: list[str]) -> list[tuple]:
    """Runs in a fresh interpreter (spawn): only the key in the environment is shared."""
    out = []
    for path in paths:
        ds = pydicom.dcmread(path)
        deidentify(ds, ConvertOptions(deid_options=("retain-long-modified-dates",)))
        out.append((ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.SOPInstanceUID,
                    ds.PatientID, ds.StudyDate))
    return out


def test_same_key_same_pseudonyms_in_separate_processes(tmp_path):
    paths = [str(p) for p in write_series(tmp_path / "s", slices=4, size=16, seed=5)]
    originals = [pydicom.dcmread(p) for p in paths]
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = [r for chunk in pool.map(_uids_in_process, [paths[:2], paths[2:]]) for r in chunk]
    assert len({r[:3] for r in results}) == 1  # study, series, frame of reference
    assert len({r[3] for r in results}) == 4   # one SOP pseudonym per instance
    assert len({r[4:] for r in results}) == 1  # patient pseudonym and shifted date
    assert all(UID_RE.match(u) and len(u) <= 64 for r in results for u in r[:4])
    study, series = results[0][:2]
    assert pseudonymous_prefix(originals[0].StudyInstanceUID, originals[0].SeriesInstanceUID) == f"{study}/{series}"
    assert results == _uids_in_process(paths)  # and the same as in this process


def test_a_different_key_gives_different_pseudonyms_and_a_missing_key_is_refused(tmp_path, monkeypatch):
    ds = _ct(1, tmp_path)[0]
    first = pseudonymous_prefix(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    monkeypatch.setenv("DICOMFLEET_DEID_KEY", "another-key-" + "x" * 30)
    assert pseudonymous_prefix(ds.StudyInstanceUID, ds.SeriesInstanceUID) != first
    monkeypatch.setenv("DICOMFLEET_DEID_KEY", "short")
    with pytest.raises(ConfigError, match="too short"):
        deidentify(ds, ConvertOptions())
    monkeypatch.delenv("DICOMFLEET_DEID_KEY")
    with pytest.raises(ConfigError, match="DICOMFLEET_DEID_KEY"):
        deidentify(ds, ConvertOptions())
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv("DICOMFLEET_DEID_KEY_FILE", str(key_file))
    assert pseudonymous_prefix(ds.StudyInstanceUID, ds.SeriesInstanceUID) == first


def test_modified_dates_shift_consistently_per_patient(tmp_path):
    a, b = _ct(2, tmp_path)
    other = _ct(1, tmp_path / "o")[0]
    other.PatientID = "SOMEONE-ELSE"
    a.AcquisitionDateTime = "20260302084512.5+0100"
    a.StudyTime = "084500"
    opts = ConvertOptions(deid_options=("retain-long-modified-dates",))
    for ds in (a, b, other):
        deidentify(ds, opts)
    days = (np.datetime64("2026-03-02") - np.datetime64(f"{a.StudyDate[:4]}-{a.StudyDate[4:6]}-{a.StudyDate[6:]}")).astype(int)
    assert 1 <= days <= 3652
    assert a.StudyDate == b.StudyDate == a.SeriesDate == a.ContentDate != "20260302"
    assert a.AcquisitionDateTime == a.StudyDate + "084512.5+0100"
    assert a.StudyTime == "084500"  # times are kept
    assert not a.PatientBirthDate  # never kept
    assert other.StudyDate != a.StudyDate or other.PatientID != a.PatientID
    assert a.LongitudinalTemporalInformationModified == "MODIFIED"
    assert "113107" in [i.CodeValue for i in a.DeidentificationMethodCodeSequence]


def test_date_shift_helpers():
    assert shift_date("20240301", 1) == "20240229"
    assert shift_date("2024", 1) is None and shift_date("20241399", 1) is None
    assert shift_datetime("20240301120000.000000-0500", 366) == "20230301120000.000000-0500"
    assert shift_datetime("20240301 JOHN", 1) is None


def test_full_dates_and_the_retain_options_keep_their_columns(tmp_path):
    ds = _ct(1, tmp_path)[0]
    ds.PatientWeight = 81.5
    opts = ConvertOptions(deid_options=("retain-long-full-dates", "retain-patient-chars", "retain-device-id",
                                        "retain-institution-id"))
    deidentify(ds, opts)
    assert ds.StudyDate == "20260302" and ds.StudyTime == "084500"
    assert ds.PatientAge == "069Y" and ds.PatientSex == "M" and float(ds.PatientWeight) == 81.5
    assert ds.DeviceSerialNumber == "DSN-88412" and ds.StationName == PHI["StationName"]
    assert ds.InstitutionName == PHI["InstitutionName"]
    assert not ds.PatientName and ds.PatientID != PHI["PatientID"] and not ds.PatientBirthDate
    assert [i.CodeValue for i in ds.DeidentificationMethodCodeSequence] == \
        ["113100", "113106", "113108", "113109", "113112"]
    assert ds.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_basic_profile_without_options_drops_what_the_options_would_keep(tmp_path):
    ds = _ct(1, tmp_path)[0]
    deidentify(ds, ConvertOptions())
    assert "PatientAge" not in ds and not ds.PatientSex
    assert not ds.StudyDate and "SeriesDate" in ds and ds.SeriesDate == "19000101"
    assert ds.InstitutionName not in ("", PHI["InstitutionName"])
    assert "StudyDescription" not in ds and ds.DeviceSerialNumber != "DSN-88412"


def test_clean_descriptors_keep_the_words_and_drop_identifiers(tmp_path):
    ds = _ct(1, tmp_path)[0]
    ds.StudyDescription = "CHEST CT for Alpha Patient 19570823"
    ds.SeriesDescription = "AXIAL 1.25mm"
    ds.ImageComments = "seen at Synthetic General Infirmary, acc ACN77310452"
    deidentify(ds, ConvertOptions(deid_options=("clean-descriptors",)))
    assert ds.StudyDescription == "CHEST CT for"
    assert ds.SeriesDescription == "AXIAL 1.25mm"
    assert ds.ImageComments == "seen at , acc"
    assert clean_text("Dr SMITH 2026-03-02 ok, 2/3/26", {"SMITH"}) == "Dr ok,"


@pytest.mark.parametrize("raw", [False, True])
def test_clean_descriptors_drop_identifiers_hidden_in_removed_sequences_and_private_tags(tmp_path, raw):
    """A name or an ID that only a removed sequence or a private element holds is hidden with
    it; the descriptors are cleaned of it too (as parsed from a file, ``raw``, or converted)."""
    ds = _ct(1, tmp_path)[0]
    request = Dataset()
    request.RequestedProcedureID, request.RequestingPhysician = "REQ4471", "Quillfeather^Ansel"
    ds.RequestAttributesSequence = Sequence([request])  # X
    other = Dataset()
    other.PatientID = "OTHERID5521"
    ds.OtherPatientIDsSequence = Sequence([other])  # X
    block = ds.private_block(0x0009, "ACME 1", create=True)
    block.add_new(0x10, "LO", "Brightwater Clinic")
    block.add_new(0x11, "UN", b"PRIVUN8812 ")
    ds.SeriesDescription = "Chest REQ4471 Quillfeather OTHERID5521 Brightwater PRIVUN8812 AXIAL"
    if raw:
        ds = _roundtrip(ds)
    deidentify(ds, ConvertOptions(deid_options=("clean-descriptors",)))
    assert ds.SeriesDescription == "Chest AXIAL"
    deidentify(plain := _roundtrip(_ct(1, tmp_path / "p")[0]), ConvertOptions(deid_options=("clean-descriptors",)))
    assert plain.SeriesDescription  # nothing hidden: a description keeps its words


def test_retain_safe_private_keeps_only_known_numeric_private_values(tmp_path):
    ds = _ct(1, tmp_path)[0]
    block = ds.private_block(0x0019, "SIEMENS MR HEADER", create=True)
    block.add_new(0x0C, "IS", "1000")           # B_value: safe, numeric
    block.add_new(0x0D, "CS", "JOHN DOE")       # on the safe list but holds letters: dropped
    block.add_new(0x99, "LO", "PRIVATE NOTE")   # not on the list
    kept = _ct(1, tmp_path / "k")[0]
    kept.update(ds)
    deidentify(ds, ConvertOptions())
    assert not [e for e in ds if e.tag.is_private]
    deidentify(kept, ConvertOptions(deid_options=("retain-safe-private",)))
    private = {e.tag: e.value for e in kept if e.tag.is_private}
    assert private == {0x00190010: "SIEMENS MR HEADER", 0x0019100C: "1000"}


def test_options_are_validated_and_survive_json():
    opts = ConvertOptions(deid_options=["clean-descriptors", "retain-device-id"], burned_in="mask",
                          mask_regions=["0,0,10,20"])
    assert opts.deid_options == ("retain-device-id", "clean-descriptors")
    assert ConvertOptions.from_json(opts.to_json()) == opts
    assert opts.mask_regions == ((0, 0, 10, 20),)
    for bad, match in (({"deid_options": ["retain-uids"]}, "unknown de-identification option"),
                       ({"deid_options": ["retain-long-full-dates", "retain-long-modified-dates"]}, "choose one"),
                       ({"burned_in": "mask"}, "--mask-region"),
                       ({"burned_in": "ignore"}, "refuse or mask"),
                       ({"mask_regions": ["1,2,3"]}, "X,Y,W,H"),
                       ({"deid": False, "deid_options": ["clean-descriptors"]}, "drop --no-deid")):
        with pytest.raises(ConfigError, match=match):
            ConvertOptions(**bad)


def test_output_metadata_comes_only_from_the_whitelist(tmp_path):
    from shared.deid.metadata import safe_attributes

    ds = _ct(1, tmp_path)[0]
    deidentify(ds, ConvertOptions(deid_options=("retain-device-id", "retain-institution-id")))
    meta = safe_attributes(ds)
    assert meta["Rows"] == "16" and meta["WindowCenter"] == "40.0\\-600.0" and meta["PatientIdentityRemoved"] == "YES"
    assert not {v for v in PHI.values() if any(v in m for m in meta.values())}
    assert "InstitutionName" not in meta and "StationName" not in meta  # retained, but not whitelisted
    with pytest.raises(ValueError, match="not on the output metadata whitelist"):
        safe_attributes(ds, ("PatientName",))
    # attributes an option keeps on purpose are embeddable only under that option
    assert safe_attributes(ds, ("Modality", "InstitutionName")) == {"Modality": "CT"}
    assert safe_attributes(ds, ("InstitutionName",), ("retain-institution-id",)) == \
        {"InstitutionName": PHI["InstitutionName"]}


@pytest.mark.parametrize("value,embedded", [("MR", "MR"), ("CT ", "CT "), ("DOE JOHN 1937", None), ("ct", None)])
def test_modality_is_embedded_only_as_a_defined_term(tmp_path, value, embedded):
    """The profile keeps Modality, and a corrupt or misused file may hold any text there: only
    one of PS3.3's defined terms reaches the outputs' metadata (XMP, the PDF caption)."""
    from shared.deid.metadata import safe_attributes
    from shared.metadata import embedded_fields

    ds = _ct(1, tmp_path)[0]
    ds.Modality = value
    deidentify(ds, ConvertOptions())
    assert safe_attributes(ds, ("Modality",)).get("Modality") == embedded
    assert embedded_fields(ds, ConvertOptions()).get("modality") == (embedded.strip() if embedded else None)


@pytest.mark.parametrize("options", [(), ("retain-safe-private",), ("clean-descriptors",),
                                     ("retain-long-modified-dates", "retain-device-id")])
def test_elements_left_raw_by_the_parser_end_as_converted_ones_do(tmp_path, options):
    """`walk` settles or replaces still-raw elements without converting them (the chain's parser
    leaves every element raw): the written result equals that of a fully converted dataset."""
    from shared.dataset import read_dataset

    ds = _ct(1, tmp_path)[0]
    plant(ds, Planter(5))
    data = _bytes(ds)
    lazy, converted = read_dataset(data), read_dataset(data)
    for _ in converted.iterall():  # every element converted before de-identification
        pass
    assert any(type(e).__name__ == "RawDataElement" for e in lazy.values())
    opts = ConvertOptions(deid_options=options)
    deidentify(lazy, opts)
    deidentify(converted, opts)
    assert _bytes(lazy) == _bytes(converted)
    assert [(e.tag, e.VR, e.value) for e in _roundtrip(lazy)] == \
        [(e.tag, e.VR, e.value) for e in _roundtrip(converted)]


@pytest.mark.filterwarnings("ignore:Failed to decode byte string:UserWarning")  # Latin-1 read as UTF-8
def test_raw_text_pseudonyms_remembered_per_key_and_character_set(tmp_path, monkeypatch):
    """A raw text value's token is remembered (slice after slice of a series): it equals the
    token computed afresh, the same raw bytes in another character set are decoded again, and
    another key gives other tokens."""
    from shared.dataset import read_dataset
    from shared.deid.pseudonyms import current

    ds = _ct(1, tmp_path)[0]
    ds.InstitutionName = "Caf\xe9 Clinic"
    ds.SpecificCharacterSet = "ISO_IR 100"
    latin1 = io.BytesIO()
    ds.save_as(latin1, enforce_file_format=True)
    utf8 = latin1.getvalue().replace(b"ISO_IR 100", b"ISO_IR 192")  # the same bytes read as UTF-8

    def token(data: bytes) -> str:
        out = read_dataset(data)
        deidentify(out, ConvertOptions())
        return str(out.InstitutionName)

    first, again = token(latin1.getvalue()), token(latin1.getvalue())
    assert first == again == current().text("Caf\xe9 Clinic")
    as_utf8 = str(pydicom.dcmread(io.BytesIO(utf8)).InstitutionName)
    assert as_utf8 != "Caf\xe9 Clinic" and token(utf8) == current().text(as_utf8) != first
    monkeypatch.setenv("DICOMFLEET_DEID_KEY", KEY[::-1])
    assert token(latin1.getvalue()) == current().text("Caf\xe9 Clinic") != first
