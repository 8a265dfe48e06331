"""Hostile input is refused with a reason before any large allocation; junk converts nothing.

Allocation is measured with tracemalloc (NumPy reports its buffers to it): refusing a header that
declares gigabytes must cost at most a few megabytes.
"""
from __future__ import annotations

import struct
import tracemalloc
from contextlib import contextmanager

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from click.testing import CliRunner

from producer.cli import app
from producer.scan import read_instance
from shared.chain import convert_dataset
from shared.dataset import read_dataset
from shared.errors import InvalidDicomError, PixelBudgetError
from shared.options import ConvertOptions

from .conftest import bundled

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SMALL = 4 * 1024 * 1024  # bytes: what refusing anything may cost


@contextmanager
def peak_allocation():
    """Yields a dict whose 'peak' is the largest traced allocation total inside the block."""
    result = {}
    tracemalloc.start()
    try:
        yield result
    finally:
        result["peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()


def refuse(ds: pydicom.Dataset, max_pixels: int = 1 << 28) -> tuple[type, str]:
    """Convert a dataset through a file round trip; return the error type and reason, checking
    that getting there allocated little."""
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    parsed = read_dataset(buf.getvalue())
    opts = ConvertOptions(formats=("png", "tiff"), deid=False, max_pixels=max_pixels)
    with peak_allocation() as mem:
        with pytest.raises((PixelBudgetError, InvalidDicomError)) as err:
            convert_dataset(parsed, opts)
    assert mem["peak"] < SMALL, f"allocated {mem['peak']} bytes before refusing"
    reason = str(err.value)
    assert "\n" not in reason
    return err.type, reason


def test_native_header_declaring_more_than_its_pixel_data():
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.Rows = ds.Columns = 4096
    kind, reason = refuse(ds)
    assert kind is PixelBudgetError
    assert reason == ("(7FE0,0010) Pixel Data holds 8192 bytes but the header declares 33554432 "
                      "(1 frame(s) × 4096 × 4096 × 1 sample(s) × 16 bits); truncated file?")


def test_frames_beyond_the_pixel_data():
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.NumberOfFrames = 1000
    kind, reason = refuse(ds)
    assert kind is PixelBudgetError and "declares 8192000 (1000 frame(s) × 64 × 64" in reason


def test_absurd_header_exceeds_the_pixel_budget():
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 100000
    kind, reason = refuse(ds)
    assert kind is PixelBudgetError
    assert reason == ("100000 frame(s) × 65535 × 65535 × 1 sample(s) = 429483622500000 samples exceeds "
                      "the pixel budget of 268435456 (DICOMFLEET_MAX_PIXELS)")


def test_budget_is_configurable():
    ds = pydicom.dcmread(bundled("CT_small.dcm"))  # 128 × 128
    _, reason = refuse(ds, max_pixels=128 * 128 - 1)
    assert "= 16384 samples exceeds the pixel budget of 16383" in reason
    outputs, _ = convert_dataset(ds, ConvertOptions(formats=("png",), deid=False, max_pixels=128 * 128))
    assert len(outputs) == 1


def jpeg_ds(name: str = "SC_rgb_jpeg_dcmtk.dcm") -> pydicom.Dataset:
    return pydicom.dcmread(bundled(name))


def test_encapsulated_jpeg_with_absurd_header_dimensions():
    ds = jpeg_ds()
    ds.Rows = ds.Columns = 65535
    ds.NumberOfFrames = 1000
    kind, reason = refuse(ds)
    assert kind is PixelBudgetError and "= 12884508675000 samples exceeds the pixel budget" in reason


def test_encapsulated_jpeg_header_larger_than_its_codestream_within_budget():
    """8000 × 8000 × 3 is within the budget; pydicom would allocate 192 MB before finding out."""
    ds = jpeg_ds()
    ds.Rows = ds.Columns = 8000
    kind, reason = refuse(ds)
    assert kind is InvalidDicomError
    assert reason == ("(7FE0,0010) frame 1: the JPEG codestream declares 100 × 100 × 3 component(s) but the "
                      "header declares 8000 × 8000 × 3 ((0028,0010) Rows × (0028,0011) Columns × "
                      "(0028,0002) Samples per Pixel)")


def test_encapsulated_frames_missing():
    ds = jpeg_ds()
    ds.NumberOfFrames = 50
    kind, reason = refuse(ds)
    assert kind is PixelBudgetError
    assert reason == "(7FE0,0010) Pixel Data holds 1 frame(s) but (0028,0008) Number of Frames is 50"


def with_codestream_size(ds: pydicom.Dataset, rows: int, cols: int) -> pydicom.Dataset:
    """Rewrite the JPEG/JPEG-LS SOF of the (single) frame to claim rows × cols."""
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    i = 2
    while frame[i + 1] not in (0xC0, 0xC1, 0xC3, 0xF7):
        i += 2 + int.from_bytes(frame[i + 2:i + 4], "big")
    frame[i + 5:i + 9] = struct.pack(">HH", rows, cols)
    ds.PixelData = encapsulate([bytes(frame)])
    return ds


@pytest.mark.parametrize("name,kind", [
    ("SC_rgb_jpeg_dcmtk.dcm", "JPEG"), ("JPGExtended.dcm", "JPEG"),
    ("SC_rgb_jpeg_gdcm.dcm", "JPEG"), ("MR_small_jpeg_ls_lossless.dcm", "JPEG-LS")])
def test_codestream_claiming_absurd_dimensions(name, kind):
    """Decoders trust the codestream: 60000 × 60000 made libjpeg allocate gigabytes and CharLS
    abort the whole process. The frame header is read first and the frame refused."""
    ds = with_codestream_size(jpeg_ds(name), 60000, 60000)
    err_type, reason = refuse(ds)
    assert err_type is InvalidDicomError
    assert f"frame 1: the {kind} codestream declares 60000 × 60000 × " in reason


def test_rle_frame_too_small_for_its_header():
    ds = pydicom.dcmread(bundled("MR_small_RLE.dcm"))
    ds.Rows = ds.Columns = 4000
    kind, reason = refuse(ds)
    assert kind is PixelBudgetError and "bytes of RLE data decode to at most" in reason
    assert "but the header declares 32000000 (4000 × 4000 × 1 sample(s) × 16 bits)" in reason


def test_rle_segment_overrunning_its_frame_is_refused_not_a_crash():
    """Replicate runs past the end of a segment make pylibjpeg-rle panic (a Rust PanicException,
    a BaseException that `except Exception` lets through to kill the worker): a reason instead."""
    ds = pydicom.dcmread(bundled("MR_small_RLE.dcm"))
    segment = bytes([0x81, 0x00]) * 40  # 40 runs of 128 bytes: 5120 > the 4096 a segment holds
    header = struct.pack("<16I", 2, 64, 64 + len(segment), *([0] * 13))
    ds.PixelData = encapsulate([header + segment + segment])
    kind, reason = refuse(ds)
    assert kind is InvalidDicomError
    assert reason.startswith("(7FE0,0010) RLE Lossless pixel data could not be decoded (")


HUGE_VALUE = {
    "dataset": struct.pack("<HHI", 0x0008, 0x0016, 0xFFFFFFF0) + b"1.2.3",
    "file_meta": b"\0" * 128 + b"DICM" + struct.pack("<HH", 2, 1) + b"OB\0\0" + struct.pack("<I", 0xFFFFFFF0),
    "explicit": (b"\0" * 128 + b"DICM" + struct.pack("<HH2sH", 2, 0x10, b"UI", 20) + b"1.2.840.10008.1.2.1\0"
                 + struct.pack("<HH4sI", 8, 0x16, b"UN\0\0", 0xFFFFFFF0) + b"1.2"),
}


@pytest.mark.parametrize("where", sorted(HUGE_VALUE))
def test_header_declaring_a_huge_value_length_is_not_allocated(tmp_path, where):
    """Tiny files whose elements claim 4 GiB: skipped as not DICOM, the 4 GiB never allocated."""
    path = tmp_path / "huge.dcm"
    path.write_bytes(HUGE_VALUE[where])
    with peak_allocation() as mem:
        assert read_instance(str(path)) == "not DICOM"
    assert mem["peak"] < SMALL


@pytest.fixture()
def junk_dir(tmp_path):
    """Random bytes, empty files, text, JSON, a DICM preamble over garbage, a cut-off header."""
    rng = np.random.default_rng(0)
    junk = tmp_path / "junk"
    (junk / "deeper").mkdir(parents=True)
    for i, size in enumerate([1, 5, 128, 132, 200, 1000, 4096, 100_000]):
        (junk / f"random{i}.bin").write_bytes(rng.bytes(size))
    (junk / "empty.dcm").write_bytes(b"")
    (junk / "deeper" / "empty").write_bytes(b"")
    (junk / "notes.txt").write_text("this is not DICOM\n" * 50)
    (junk / "deeper" / "data.json").write_text('{"PatientName": "x"}')
    (junk / "preamble.dcm").write_bytes(b"\0" * 128 + b"DICM" + rng.bytes(500))
    (junk / "cut.dcm").write_bytes(bundled("CT_small.dcm").read_bytes()[:300])
    (junk / "huge.dcm").write_bytes(struct.pack("<HHI", 0x0008, 0x0016, 0xFFFFFFF0) + b"1.2.3")
    return junk


def test_junk_directory_converts_nothing_and_exits_cleanly(junk_dir, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["convert", str(junk_dir), "--out", str(out), "--no-deid"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("0 series, 0 instances, 0 converted, 0 outputs, 0 failed in ")
    skipped = {line.strip() for line in lines[1:]}
    assert skipped == {"skipped 14 file(s): not DICOM",  # cut.dcm keeps its SOP Class UID:
                       "skipped 1 file(s): DICOM without an image (e.g. SR, RT plan)"}
    assert "Traceback" not in result.output and not out.exists()


#: six bytes of SC_rgb_jpeg_dcmtk.dcm changed (found by fuzzing): GDCM 3.0 aborts the process on it
GDCM_ABORT = {3326: 104, 1896: 105, 2019: 101, 2746: 210, 1275: 120, 2798: 96}


def test_gdcm_runs_out_of_process():
    """pydicom tries GDCM first, in-process; it is moved to a child process, the last resort."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEG2000, JPEGBaseline8Bit, JPEGLSLossless

    from shared.gdcm_child import GDCM_SYNTAXES

    for uid in (JPEGBaseline8Bit, JPEGLSLossless, JPEG2000):
        assert "gdcm" not in get_decoder(uid).available_plugins and uid in GDCM_SYNTAXES
    assert len(GDCM_SYNTAXES) == 8


def test_gdcm_is_never_loaded_in_process():
    """Importing the chain leaves GDCM's SWIG module unloaded (~50 ms of start-up; no in-process use)."""
    import ast
    import subprocess
    import sys

    probe = "import sys, shared.chain; print(sorted(m for m in sys.modules if 'gdcm' in m.lower()))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    loaded = ast.literal_eval(done.stdout)
    assert loaded and all(not m.startswith("_gdcm") for m in loaded), loaded
    assert "gdcm" in loaded  # marked absent, not missing: pydicom sees no GDCM


def test_corrupt_jpeg_that_aborts_gdcm_costs_one_instance():
    data = bytearray(bundled("SC_rgb_jpeg_dcmtk.dcm").read_bytes())
    for pos, value in GDCM_ABORT.items():
        data[pos] = value
    with pytest.raises(InvalidDicomError) as err:
        convert_dataset(read_dataset(bytes(data)), ConvertOptions(formats=("png",), deid=False))
    reason = str(err.value)
    assert reason.startswith("(7FE0,0010) JPEG Baseline (Process 1) pixel data could not be decoded (every "
                             "decoder failed: pylibjpeg: ")
    assert "; pillow: " in reason and "; gdcm: " in reason and "\n" not in reason


def test_a_file_meta_value_of_an_unknown_vr_is_skipped_with_its_reason_not_a_crash(tmp_path):
    """A file meta element whose VR bytes are corrupt: the scan skips the file with a one-line
    reason (the value cannot be converted), and the rest of the directory converts."""
    data = bundled("CT_small.dcm").read_bytes()
    marker = b"\x02\x00\x02\x00UI"  # (0002,0002) Media Storage SOP Class UID, VR UI
    assert data.count(marker) == 1
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(data.replace(marker, b"\x02\x00\x02\x00U\xf2"))
    assert read_instance(str(bad)).startswith("unreadable header (Unknown Value Representation")
    (tmp_path / "good.dcm").write_bytes(data)
    result = CliRunner().invoke(app, ["convert", str(tmp_path), "--out", str(tmp_path / "out"), "--no-deid",
                                      "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 file(s): unreadable header" in result.output and "1 converted" in result.output
