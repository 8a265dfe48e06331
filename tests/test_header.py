"""shared.dataset.read_header: the header from one prefix read, and from the file when it is longer."""
from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.data import get_testdata_file

from pydicom.multival import MultiValue

from shared.dataset import HEADER_PREFIX, HEADER_TAGS, _plain_header_values, header_values, read_header
from shared.errors import DicomfleetError, InvalidDicomError, NotDicomError
from producer.scan import SCAN_KEYWORDS
from tests.conftest import TEST_FILES
from tests.synthetic import write_series


class CountingReader(io.BytesIO):
    """A file that counts the bytes asked of it: one prefix read, or more."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, n: int | None = -1) -> bytes:
        self.reads += 1
        return super().read(n)


def _values(ds) -> dict:
    return {k: ds.get(k) for k in HEADER_TAGS}


def _with_private_block(path, size: int) -> bytes:
    """The file with a ``size``-byte private OB element before its pixel data."""
    ds = pydicom.dcmread(path)
    ds.private_block(0x0009, "dicomfleet test", create=True).add_new(0x01, "OB", b"\x01" * size)
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.fixture(scope="module")
def ct_slice(tmp_path_factory):
    return write_series(tmp_path_factory.mktemp("ct"), slices=1, size=64)[0]


def test_a_header_within_the_prefix_is_parsed_from_it(ct_slice):
    data = _with_private_block(ct_slice, 40_000)
    assert len(data) < HEADER_PREFIX
    fh = CountingReader(data)
    assert _values(read_header(fh)) == _values(pydicom.dcmread(io.BytesIO(data)))
    assert fh.reads == 1


@pytest.mark.parametrize("private", [HEADER_PREFIX, 3 * HEADER_PREFIX])
def test_a_header_longer_than_the_prefix_is_read_from_the_file(ct_slice, private):
    data = _with_private_block(ct_slice, private)
    fh = CountingReader(data)
    ds = read_header(fh)
    assert _values(ds) == _values(pydicom.dcmread(io.BytesIO(data)))
    assert ds.Rows == 64 and fh.reads > 1
    assert (0x0009, 0x1001) not in ds  # not a header attribute: never read


def test_big_endian_and_small_files_stop_at_their_pixel_data():
    for name in ("MR_small_bigendian.dcm", "CT_small.dcm", "rtplan.dcm"):
        data = open(get_testdata_file(name), "rb").read()
        assert _values(read_header(io.BytesIO(data))) == _values(pydicom.dcmread(io.BytesIO(data)))


def test_garbage_longer_than_the_prefix_is_still_not_dicom():
    with pytest.raises(NotDicomError):
        read_header(io.BytesIO(bytes(range(256)) * (HEADER_PREFIX // 128)))


def _dataset_values(ds) -> dict:
    """`header_values` as read from a dataset: the header attributes present, the file meta's SOP class."""
    values = {k: ds.get(k) for k in HEADER_TAGS if k in ds}
    if "MediaStorageSOPClassUID" in ds.file_meta:
        values["MediaStorageSOPClassUID"] = ds.file_meta.MediaStorageSOPClassUID
    return values


def _typed(values: dict) -> dict:
    """Values with their types and text, element by element: a DSfloat is not a float."""
    return {k: (type(v), [(type(x), x, str(x)) for x in v] if isinstance(v, MultiValue) else (v, str(v)))
            for k, v in values.items()}


def test_header_values_are_read_headers_values_for_every_bundled_file(tmp_path):
    """Walked without a dataset where the layout allows, the values equal those read_header's
    dataset gives (pydicom's conversion): every bundled file, a synthetic CT, one whose header
    outgrows the prefix; the dataset-free path taken for most of them."""
    paths = sorted(p for p in TEST_FILES.rglob("*") if p.is_file() and p.suffix.lower() in ("", ".dcm"))
    paths += write_series(tmp_path, slices=2, size=64)
    datas = [p.read_bytes() for p in paths] + [_with_private_block(paths[-1], HEADER_PREFIX)]
    walked = compared = 0
    for data in datas:
        try:
            expected = _dataset_values(read_header(io.BytesIO(data)))
        except DicomfleetError as err:
            with pytest.raises(type(err)):
                header_values(io.BytesIO(data))
            continue
        assert _typed(header_values(io.BytesIO(data))) == _typed(expected)
        some = {k: v for k, v in expected.items() if k in SCAN_KEYWORDS or k == "MediaStorageSOPClassUID"}
        assert _typed(header_values(io.BytesIO(data), keywords=SCAN_KEYWORDS)) == _typed(some)
        compared += 1
        walked += _plain_header_values(data[:HEADER_PREFIX], whole=len(data) <= HEADER_PREFIX) is not None
    assert compared >= 80 and walked >= 0.6 * compared
    assert _plain_header_values(datas[-1][:HEADER_PREFIX], whole=False) is None  # read from the file


def test_only_header_attributes_can_be_asked_for():
    with pytest.raises(ValueError, match="not header attributes: \\['PatientName'\\]"):
        header_values(io.BytesIO(b""), keywords=("Rows", "PatientName"))


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the corrupted character sets
@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm"])
def test_a_header_corrupted_at_random_reads_as_read_header_reads_it(name):
    """Bytes overwritten at random in the file meta and the first elements (seeded): the same
    values as read_header's dataset, or the same refusal — the scan never takes for an image a
    file that read_header calls not DICOM (a corrupt file meta VR once made that difference)."""
    import random

    rng = random.Random(name)
    original = (TEST_FILES / name).read_bytes()
    compared = refused = 0
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 3)):
            data[rng.randrange(132, 2000)] = rng.randrange(256)
        data = bytes(data)
        try:
            expected = _dataset_values(read_header(io.BytesIO(data)))
        except Exception as err:  # noqa: BLE001 - not DICOM, or a value pydicom cannot convert
            with pytest.raises(type(err) if isinstance(err, DicomfleetError) else InvalidDicomError):
                header_values(io.BytesIO(data))
            refused += 1
            continue
        assert _typed(header_values(io.BytesIO(data))) == _typed(expected)
        compared += 1
    assert compared > 200 and refused >= 1
