"""Deflated Explicit VR Little Endian: real files convert; a deflate bomb (2 MB that inflate to
2 GiB) is refused with its one-line reason by the scanner and the chain, without the allocation.

The bomb is written as one deflated megabyte of zeros (after a full flush, so it stands alone)
repeated 2048 times: the test itself never holds more than a few megabytes.
"""
from __future__ import annotations

import io
import os
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, generate_uid

from bench.measure import run_child
from producer.scan import read_instance
from shared.chain import convert_instance, instance_task
from shared.dataset import check_inflated_size, inflate_limit, read_dataset, read_header
from shared.errors import PixelBudgetError
from shared.options import DEFAULT_MAX_PIXELS, ConvertOptions

from .conftest import bundled

SIDE = 32768  # 32768 × 32768 × 16 bits = 2 GiB of pixel data, all zeros
SMALL = 16 << 20  # bytes: what refusing the bomb may cost (a few inflated 1 MiB pieces)
REASON = "deflated dataset inflates to more than {} bytes (DICOMFLEET_MAX_PIXELS budget)"


def bomb_bytes() -> bytes:
    """A Part 10 file whose deflated dataset is a CT header and 2 GiB of zero pixel data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.InstanceNumber = "CT", 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = SIDE
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    head = io.BytesIO()
    write_file_meta_info(head, meta, enforce_standard=True)
    body = pydicom.filebase.DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    pixel_header = b"\xe0\x7f\x10\x00OW\x00\x00" + (SIDE * SIDE * 2).to_bytes(4, "little")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    start = deflater.compress(body.getvalue() + pixel_header) + deflater.flush(zlib.Z_FULL_FLUSH)
    megabyte = deflater.compress(bytes(1 << 20)) + deflater.flush(zlib.Z_FULL_FLUSH)
    pixels = megabyte * (SIDE * SIDE * 2 // (1 << 20))
    return b"\0" * 128 + b"DICM" + head.getvalue() + start + pixels + deflater.flush()


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.dcm"
    data = bomb_bytes()
    assert len(data) < 3 << 20  # what the test holds: about 2 MB
    path.write_bytes(data)
    return path


def test_bundled_deflated_file_converts_to_pydicoms_pixels(tmp_path):
    path = bundled("image_dfl.dcm")
    data = path.read_bytes()
    ds = read_dataset(data, max_pixels=1 << 20)
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    np.testing.assert_array_equal(ds.pixel_array, pydicom.dcmread(path).pixel_array)
    with path.open("rb") as fh:
        assert (read_header(fh, max_pixels=1 << 20).Rows, ds.Columns) == (512, 512)
    opts = ConvertOptions(formats=("tiff",), deid=False).to_json()
    record = convert_instance(instance_task(str(path), 1, "dfl", str(tmp_path), opts))
    assert record["error"] is None
    [out] = record["outputs"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / out["path"]), ds.pixel_array)


def deflated_stream(data: bytes) -> bytes:
    """The raw deflate stream after a Part 10 file's meta, found the way pydicom finds it."""
    fp = io.BytesIO(data)
    pydicom.filereader.read_preamble(fp, False)
    pydicom.filereader._read_file_meta_info(fp)
    return data[fp.tell():]


def test_inflated_size_is_checked_in_bytes():
    """image_dfl.dcm's dataset inflates to 262 KB: accepted at that limit, refused one byte under."""
    stream = deflated_stream(bundled("image_dfl.dcm").read_bytes())
    size = len(zlib.decompress(stream, -zlib.MAX_WBITS))
    assert size > 512 * 512
    check_inflated_size(stream, size)
    with pytest.raises(PixelBudgetError) as err:
        check_inflated_size(stream, size - 1)
    assert str(err.value) == REASON.format(size - 1)
    assert inflate_limit(DEFAULT_MAX_PIXELS) == (1 << 30) + (16 << 20)


def test_bomb_refused_at_the_default_budget_without_the_allocation(bomb):
    data = bomb.read_bytes()
    tracemalloc.start()
    try:
        with pytest.raises(PixelBudgetError) as err:
            read_dataset(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(err.value) == REASON.format(inflate_limit(DEFAULT_MAX_PIXELS))
    assert peak < SMALL, f"allocated {peak} bytes before refusing"


def test_bomb_refused_by_scan_and_chain_under_a_small_budget(bomb, tmp_path):
    budget = 1 << 20
    tracemalloc.start()
    try:
        assert read_instance(str(bomb), max_pixels=budget) == REASON.format(inflate_limit(budget))
        opts = ConvertOptions(formats=("png",), deid=False, max_pixels=budget).to_json()
        record = convert_instance(instance_task(str(bomb), 1, "bomb", str(tmp_path / "out"), opts))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert record["error"] == {"code": "pixel_budget", "reason": REASON.format(inflate_limit(budget))}
    assert record["outputs"] == [] and peak < SMALL
    with bomb.open("rb") as fh, pytest.raises(PixelBudgetError):
        read_header(fh, max_pixels=budget)


def test_cli_skips_the_bomb_and_converts_the_real_file_in_little_memory(bomb, tmp_path):
    """The installed command on the bomb beside image_dfl.dcm: peak RSS of the whole process
    stays far below the 2 GiB the bomb inflates to; the exit status says a file was refused."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "bomb.dcm").symlink_to(bomb)
    (src / "dfl.dcm").write_bytes(bundled("image_dfl.dcm").read_bytes())
    env = {**os.environ, "DICOMFLEET_MAX_PIXELS": str(1 << 22)}
    command = [str(Path(sys.executable).parent / "dicomfleet"), "convert", str(src),
               "--out", str(tmp_path / "out"), "--no-deid", "--format", "png"]
    # through the bench's bare launcher: a child forked straight from this (large) test process
    # would report this process's peak RSS, which Linux carries across exec
    log = tmp_path / "convert.log"
    sample = run_child(command, env=env, log=str(log))
    output = log.read_text()
    assert sample.error.startswith("exit 1"), output
    lines = output.strip().splitlines()
    assert lines[0].startswith("1 series, 1 instances, 1 converted, 1 outputs, 0 failed in "), output
    assert [line.strip() for line in lines[1:]] == [
        f"skipped 1 file(s): {REASON.format(inflate_limit(1 << 22))}"]
    assert sample.rss_mb < 512, f"peak RSS {sample.rss_mb:.0f} MiB"


def test_only_files_whose_meta_names_deflate_take_the_guarded_reader():
    """The file meta is walked (a few elements) instead of wrapping every read of every parse."""
    from shared.dataset import _may_be_deflated

    assert _may_be_deflated(bundled("image_dfl.dcm").read_bytes())
    assert not _may_be_deflated(bundled("CT_small.dcm").read_bytes())
    assert not _may_be_deflated(bundled("JPEG2000.dcm").read_bytes())
    implicit_meta = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00\x14\x00\x00\x00" + b"1.2.840.10008.1.2\0\0\0"
    assert _may_be_deflated(implicit_meta)  # not plain explicit VR: guarded, whatever it names
