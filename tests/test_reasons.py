"""Failure reasons never carry a file's bytes: quoted raw values are left out (errors.safe_reason)."""
from __future__ import annotations

import io
import random

import pydicom
import pytest
from pydicom.data import get_testdata_file

from shared.chain import convert_dataset
from shared.dataset import read_dataset, read_header
from shared.errors import DicomfleetError, InvalidDicomError, failure, safe_reason
from shared.options import ConvertOptions

PLANTED = ("ZZPLANTED^NAME", "ZZPLANTEDID77", "19230405")


@pytest.mark.parametrize("text,expected", [
    ('corrupt (Instead received b"\\x04\\x00GEMS\\x00DOE^JOHN" and struct)',
     "corrupt (Instead received <a value of 27 characters, not shown> and struct)"),
    ("no pixel data (SOP class ['1.2.840.10008.5.1.4.1.1.2\\x00\\x08DA\\x0820040119'])",
     "no pixel data (SOP class [<a value of 49 characters, not shown>])"),
    ("cut short b'\\x00\\x01DOE", "cut short <a value of 13 characters, not shown>"),
    ("(0002,0010) Transfer Syntax UID '1.2.840.10008.1.2.1' is not known",
     "(0002,0010) Transfer Syntax UID '1.2.840.10008.1.2.1' is not known"),
    ("Unknown Value Representation '0x53 0x5d' in tag (0019,1058)",  # 'S]': bytes of text, maybe
     "Unknown Value Representation <a value of 11 characters, not shown> in tag (0019,1058)"),
    # a corrupt length put the parser inside "SMITH^JOHN": its tag and VR are the name's letters
    ("corrupt (Unknown Value Representation '0x48 0x5e' in tag (4D53,5449))",
     "corrupt (Unknown Value Representation <a value of 11 characters, not shown> in tag (text read as a tag))"),
    ("(0018,5050) Depth of Scan Field, (0040,4050), (7FE0,0010), (0029,1010), (4A5E,0010), (0010,4A5E)",
     "(0018,5050) Depth of Scan Field, (0040,4050), (7FE0,0010), (0029,1010), (text read as a tag), "
     "(text read as a tag)"),
    ("IDAT does not hold the image's rows", "IDAT does not hold the image's rows"),
    ("a\n  two-line\tmessage", "a two-line message"),
    ("value '" + "A" * 70 + "'", "value <a value of 72 characters, not shown>"),
])
def test_safe_reason(text, expected):
    assert safe_reason(text) == expected


def test_our_errors_and_recorded_failures_are_safe():
    err = InvalidDicomError("(0008,0016) SOP Class UID '1.2\\x00DOE^JOHN' is not a UID")
    assert str(err) == "(0008,0016) SOP Class UID <a value of 17 characters, not shown> is not a UID"
    assert failure(err)["reason"] == str(err)
    assert "DOE" not in failure(ValueError("bad b'\\x00DOE^JOHN'"))["reason"]


def _planted_file() -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = PLANTED
    ds.InstitutionName = ds.ReferringPhysicianName = PLANTED[0]
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about every corrupt element
def test_reasons_for_corrupt_files_carry_no_planted_value():
    """Corrupt lengths make pydicom quote neighbouring elements; none of it reaches a reason."""
    data = _planted_file()
    start, end = data.index(b"ZZPLANTED") - 400, data.index(b"ZZPLANTED") + 400
    rng = random.Random(7)
    raw_leaks, reasons = 0, set()
    opts = ConvertOptions(formats=("png",), deid=False)
    for i in range(1500):
        buf = bytearray(data)
        for _ in range(rng.randrange(1, 4)):
            buf[rng.randrange(max(start, 132), end)] = rng.randrange(256)
        for parse in (lambda b: convert_dataset(read_dataset(b), opts)[0], lambda b: read_header(io.BytesIO(b))):
            try:
                parse(bytes(buf))
            except DicomfleetError as err:
                raw = " ".join(f"{Exception.__str__(err)} {err.__cause__ or ''}".split())
                raw_leaks += any(p in raw for p in PLANTED) or "\\x" in raw
                reasons.add(str(err))
    assert raw_leaks > 0  # the leak path is exercised: the messages as written, or the library
    # errors behind them, did carry file bytes
    assert reasons
    leaked = [r for r in reasons if any(p in r for p in PLANTED) or "\\x" in r]
    assert leaked == []


def _swallowing_spacing_file() -> bytes:
    """Imager Pixel Spacing whose length runs over the private block after it, which holds a name:
    the value then reads ``1\\1`` followed by the block's bytes, control characters and all."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    for tag in [t for t in ds.keys() if 0x00181164 < t < 0x001A0000] + [0x00280030]:
        del ds[tag]
    ds.ImagerPixelSpacing = [1, 1]
    ds.private_block(0x0019, "ACME 1", create=True).add_new(0x10, "LO", f"{PLANTED[0]} {PLANTED[2]}")
    out = io.BytesIO()
    ds.save_as(out)
    data = bytearray(out.getvalue())
    at = data.index(b"\x18\x00\x64\x11DS")
    length = int.from_bytes(data[at + 6:at + 8], "little")
    data[at + 6:at + 8] = (length + 46).to_bytes(2, "little")  # over the creator and the name
    return bytes(data)


def test_a_value_that_swallowed_its_neighbours_is_not_quoted():
    """Short enough to pass a length limit, and printable but for control characters: the
    neighbours' bytes in a reason about Imager Pixel Spacing are left out, and so is any value
    that is not numbers or the standard's own words."""
    ds = read_dataset(_swallowing_spacing_file())
    assert PLANTED[0] in "\\".join(ds[0x00181164].value)  # the swallow happened
    with pytest.raises(InvalidDicomError) as caught:
        convert_dataset(ds, ConvertOptions(formats=("png",), deid=False))
    raw = Exception.__str__(caught.value)
    assert PLANTED[0] in raw  # the message as written quotes the swallowed name...
    assert str(caught.value).startswith("(0018,1164) Imager Pixel Spacing <a value of ")
    assert not any(p in str(caught.value) for p in PLANTED)  # ...its reason does not


@pytest.mark.parametrize("text,expected", [
    ("(0028,0030) Pixel Spacing '1.0\\\\1.0\x19\x00LO ACME' is not 2 numbers",
     "(0028,0030) Pixel Spacing <a value of 19 characters, not shown> is not 2 numbers"),
    ("(0028,1050) Window Center 'SMITH^JO' is not a number",
     "(0028,1050) Window Center <a value of 10 characters, not shown> is not a number"),
    ("(0028,0030) Pixel Spacing '0.5\\\\-1e-3' must be positive",
     "(0028,0030) Pixel Spacing '0.5\\\\-1e-3' must be positive"),
    ("photometric 'MONOCHROME1', 'YBR_FULL_422' and VR 'OB' of 'PixelData', dtype '<u2'",
     "photometric 'MONOCHROME1', 'YBR_FULL_422' and VR 'OB' of 'PixelData', dtype '<u2'"),
    ("GDCM does not support 'JPEG Extended' for 12 bits, nor 'JPEG 2000 Image Compression'",
     "GDCM does not support 'JPEG Extended' for 12 bits, nor 'JPEG 2000 Image Compression'"),
    ("(0028,0004) Photometric Interpretation 'DOE JOHN' is not supported",
     "(0028,0004) Photometric Interpretation <a value of 10 characters, not shown> is not supported"),
])
def test_strict_reasons_show_only_numbers_and_the_standards_words(text, expected):
    assert safe_reason(text) == expected


def test_a_settings_reason_quotes_what_the_user_typed():
    from shared.errors import ConfigError

    assert str(ConfigError("--format 'gif' is not one of png, jpeg")) == "--format 'gif' is not one of png, jpeg"
    assert str(InvalidDicomError("(0028,0004) value 'gif'")) == "(0028,0004) value <a value of 5 characters, not shown>"


@pytest.mark.parametrize("sop_class,reason", [
    # an image class without pixel data: a cut file or a corrupt length swallowed them
    ("1.2.840.10008.5.1.4.1.1.2", "(7FE0,0010) Pixel Data is missing from a CT Image Storage instance: "
                                  "a cut file, or a corrupt length before it"),
    ("1.2.840.10008.5.1.4.1.1.481.5", "no pixel data (SOP class RT Plan Storage)"),
    ("1.2.826.0.1.3680043.99.1", "no pixel data (SOP class 1.2.826.0.1.3680043.99.1)"),  # private: its UID
    ("DOE^JOHN 19370101", "no pixel data (SOP class unknown)"),  # not a UID: not repeated
])
def test_a_sop_class_is_named_by_the_dictionary_or_its_uid_only(sop_class, reason):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPClassUID = sop_class
    del ds.PixelData
    out = io.BytesIO()
    ds.save_as(out)
    with pytest.raises(DicomfleetError) as err:
        convert_dataset(read_dataset(out.getvalue()), ConvertOptions(formats=("png",), deid=False))
    assert str(err.value) == reason
