"""shared/dataset._read_plain: pydicom's element generator without dcmread's layers must give
what dcmread gives, for every file it takes on (and leave every other file to dcmread)."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from shared.errors import DicomfleetError
from shared.dataset import _HEADER_TAG_LIST, _HEADER_VALUE_LIMIT, _read_plain, read_dataset, read_header

from .conftest import TEST_FILES
from .synthetic import write_series


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """Every file pydicom bundles (images, structured reports, odd encodings) and a synthetic CT."""
    synthetic = write_series(tmp_path_factory.mktemp("plain"), 2)
    return sorted(p for p in TEST_FILES.rglob("*") if p.is_file() and p.suffix.lower() in ("", ".dcm")) \
        + sorted(synthetic)


def _dcmread(data: bytes, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(io.BytesIO(data), **kwargs)


def _same(a, b) -> None:
    assert type(a) is type(b)
    assert list(a.keys()) == list(b.keys())
    assert a.file_meta == b.file_meta
    assert a.preamble == b.preamble
    assert a.original_encoding == b.original_encoding
    for tag in a.keys():
        mine = a.get_item(tag, keep_deferred=True)
        if isinstance(mine, DataElement):  # converted as parsed: as pydicom's lazy access does
            assert _converted(mine) == _converted(b[tag]), tag
        else:  # the raw elements as read: tag, VR, length, value, offsets
            assert mine == b.get_item(tag, keep_deferred=True), tag


def _converted(elem: DataElement) -> tuple:
    value = elem.value
    items = list(value) if isinstance(value, MultiValue) else [value]
    return (elem.tag, elem.VR, type(value), [(type(v), v, str(v)) for v in items], elem.file_tell,
            elem.is_undefined_length)


@pytest.mark.parametrize("header", [False, True], ids=["dataset", "header"])
def test_the_plain_reader_gives_what_dcmread_gives(files, header):
    kwargs = {"stop_before_pixels": True, "specific_tags": _HEADER_TAG_LIST,
              "defer_size": _HEADER_VALUE_LIMIT} if header else {}
    taken = converted = 0
    for path in files:
        data = path.read_bytes()
        plain = _read_plain(io.BytesIO(data), data, **kwargs)
        if plain is None:
            continue
        taken += 1
        converted += sum(isinstance(plain.get_item(t), DataElement) for t in plain.keys())
        _same(plain, _dcmread(data, **kwargs))
    assert taken >= 0.7 * len(files)  # most files have the usual layout: the fast path is the path
    assert converted >= (1 if header else 5) * taken  # and the elements every conversion reads


def test_other_layouts_are_left_to_dcmread(files):
    """No preamble, deflated, big endian: None, and the public readers still answer as dcmread."""
    by_name = {p.name: p for p in files}
    for name in ("no_meta.dcm", "image_dfl.dcm", "MR_small_bigendian.dcm"):
        data = by_name[name].read_bytes()
        assert _read_plain(io.BytesIO(data), data) is None, name
    data = by_name["CT_small.dcm"].read_bytes()
    assert read_dataset(data).Rows == 128
    assert str(read_header(io.BytesIO(data)).SOPInstanceUID) == str(_dcmread(data).SOPInstanceUID)


def test_a_file_cut_anywhere_reads_as_dcmread_reads_it(files):
    """Cut inside the meta, an element's header, a value, the pixels: None or dcmread's result."""
    data = next(p for p in files if p.name == "CT_small.dcm").read_bytes()
    for cut in (100, 140, 200, 333, 700, 1500, len(data) // 2, len(data) - 40, len(data) - 1):
        part = data[:cut]
        plain = _read_plain(io.BytesIO(part), part)
        if plain is not None:
            _same(plain, _dcmread(part))


def test_text_elements_convert_as_pydicom_converts_them(files):
    """`text_element` (names, UIDs, dates, codes — de-identification reads them) gives what
    pydicom's lazy access gives, in every character set of pydicom's files (its charset_files:
    Arabic, Greek, Hebrew, Japanese, Korean, Russian, Chinese, multi-valued sets)."""
    from shared.dataset import _TEXT_VRS, text_element

    charsets = sorted((TEST_FILES.parent / "charset_files").glob("*.dcm"))
    assert len(charsets) >= 10
    seen = set()
    for path in files + charsets:
        data = path.read_bytes()
        try:
            mine, theirs = read_dataset(data), read_dataset(data)
        except DicomfleetError:  # not DICOM, truncated: nothing to convert
            continue
        for tag in list(mine.keys()):
            raw = mine.get_item(tag)
            if isinstance(raw, DataElement) or raw.VR not in _TEXT_VRS:
                continue
            seen.add((raw.VR, str(mine.original_character_set)))
            assert _converted(text_element(mine, tag)) == _converted(theirs[tag]), (path.name, tag)
            assert mine.get_item(tag) is text_element(mine, tag)  # stored: converted once
    assert len({vr for vr, _ in seen}) >= 10 and len({cs for _, cs in seen}) >= 10


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the corrupted character sets
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_a_file_corrupted_in_its_header_reads_as_dcmread_reads_it(files, name):
    """Bytes overwritten at random in the file meta and the first elements (seeded): the plain
    reader gives None, or what dcmread gives — never a dataset where dcmread refuses the file
    (a corrupt file meta VR made dcmread read the meta as implicit VR and fail)."""
    import random

    rng = random.Random(name)
    original = next(p for p in files if p.name == name).read_bytes()
    taken = 0
    for _ in range(200):
        data = bytearray(original)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(132, 2000)] = rng.randrange(256)
        data = bytes(data)
        plain = _read_plain(io.BytesIO(data), data)
        if plain is None:
            continue
        taken += 1
        _same(plain, _dcmread(data))
    assert taken > 150


def test_put_and_drop_element_leave_what_pydicoms_setitem_and_delitem_leave():
    """`put_element` and `drop_element` store and delete directly only where pydicom's own
    methods have nothing else to do (public tags, not pixel data, not sequences); the rest goes
    through pydicom, whose bookkeeping then holds: a private element knows its creator, a
    replaced pixel data decodes anew, a dropped private creator's block is forgotten."""
    from pydicom.dataelem import RawDataElement
    from pydicom.sequence import Sequence
    from shared.dataset import drop_element, put_element

    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.private_block(0x0071, "ACME", create=True).add_new(0x01, "LO", "private")
    before = ds.pixel_array.copy()
    name = RawDataElement(pydicom.tag.Tag(0x00100010), "PN", 4, b"AB^C", 0, False, True, True, False)
    put_element(ds, name)
    assert ds.get_item(0x00100010) is name and str(ds.PatientName) == "AB^C"
    put_element(ds, DataElement(0x00711001, "LO", "replaced"))  # pydicom's path: its creator is known
    assert ds[0x00711001].private_creator == "ACME" and ds[0x00711001].value == "replaced"
    put_element(ds, DataElement(0x7FE00010, "OW", (ds.pixel_array * 0 + 7).tobytes()))
    assert (ds.pixel_array == 7).all() and before.any()  # the cached array went with the old data
    put_element(ds, DataElement(0x00120064, "SQ", Sequence([pydicom.Dataset()])))
    assert len(ds.DeidentificationMethodCodeSequence) == 1
    drop_element(ds, 0x00100010)
    block = ds.private_block(0x0071, "ACME")
    drop_element(ds, 0x00710010)  # the private creator: pydicom forgets its block
    assert 0x00100010 not in ds and 0x00710010 not in ds and block.block_start == 0x1000
    with pytest.raises(KeyError):
        ds.private_block(0x0071, "ACME")


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's on the odd test file
def test_text_value_reads_what_pydicom_converts():
    """`text_value` reads a still-raw element without storing it: the same text as pydicom's
    own access gives, over pydicom's small test files (character sets, implicit VR, big endian)."""
    import os
    from pathlib import Path

    from shared.attributes import tag_of
    from shared.dataset import read_dataset, text_value

    keywords = ("PatientID", "PatientName", "Modality", "SOPClassUID", "StudyInstanceUID",
                "BurnedInAnnotation", "IssuerOfPatientID", "PatientBirthDate")
    checked = dict.fromkeys(keywords, 0)
    for path in sorted((Path(pydicom.__file__).parent / "data" / "test_files").glob("*.dcm")):
        if os.path.getsize(path) > 64 * 1024:
            continue
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            ours, theirs = read_dataset(data), pydicom.dcmread(path, force=True)
        except Exception:  # noqa: BLE001 - files our reader refuses are another test's business
            continue
        for keyword in keywords:
            tag = tag_of(keyword)
            expected = str(theirs[tag].value or "").strip() if tag in theirs else ""
            assert text_value(ours, tag) == expected, (path, keyword)
            checked[keyword] += tag in theirs
    assert min(checked[k] for k in ("PatientID", "PatientName", "Modality", "SOPClassUID")) > 20, checked
