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
    assert result.exit_code == 1, result.output  # the cut CT image is a fault; the rest is not DICOM
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("0 series, 0 instances, 0 converted, 0 outputs, 0 failed in ")
    skipped = {line.strip() for line in lines[1:]}
    assert skipped == {"skipped 14 file(s): not DICOM",  # cut.dcm keeps its file meta: CT Image Storage
                       "skipped 1 file(s): a DICOM image whose (0028,0010) Rows cannot be read: its header "
                       "is cut or corrupt"}
    assert "Traceback" not in result.output and not out.exists()
    (junk_dir / "cut.dcm").unlink()
    result = CliRunner().invoke(app, ["convert", str(junk_dir), "--out", str(out), "--no-deid"])
    assert result.exit_code == 0, result.output  # nothing but files that are not DICOM: no fault


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
    reason (the value cannot be converted), the rest of the directory converts, and the exit
    status says that not everything did."""
    data = bundled("CT_small.dcm").read_bytes()
    marker = b"\x02\x00\x02\x00UI"  # (0002,0002) Media Storage SOP Class UID, VR UI
    assert data.count(marker) == 1
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(data.replace(marker, b"\x02\x00\x02\x00U\xf2"))
    assert read_instance(str(bad)).startswith("unreadable header (Unknown Value Representation")
    (tmp_path / "good.dcm").write_bytes(data)
    result = CliRunner().invoke(app, ["convert", str(tmp_path), "--out", str(tmp_path / "out"), "--no-deid",
                                      "--workers", "1"])
    assert result.exit_code == 1, result.output
    assert "skipped 1 file(s): unreadable header" in result.output and "1 converted" in result.output


@pytest.mark.parametrize("grow", [2, 100, 30000])
def test_an_image_whose_header_a_corrupt_length_threw_off_is_not_taken_for_a_document(tmp_path, grow):
    """Patient's Name made longer than it is: the parser reads the rest of the header out of step
    and finds no Rows. The file meta still names CT Image Storage, so the file is an image whose
    header is corrupt — counted so, with exit status 1 — not "DICOM without an image"."""
    data = bytearray(bundled("CT_small.dcm").read_bytes())
    at = data.index(b"\x10\x00\x10\x00PN")
    data[at + 6:at + 8] = (int.from_bytes(data[at + 6:at + 8], "little") + grow).to_bytes(2, "little")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.dcm").write_bytes(bytes(data))
    (tmp_path / "in" / "good.dcm").write_bytes(bundled("CT_small.dcm").read_bytes())
    sr = pydicom.dcmread(bundled("CT_small.dcm"), stop_before_pixels=True)
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR
    del sr.Rows
    sr.save_as(tmp_path / "in" / "sr.dcm")
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                      "--no-deid", "--workers", "1"])
    assert result.exit_code == 1, result.output
    assert "skipped 1 file(s): a DICOM image whose (0028,0010) Rows cannot be read: its header is cut or " \
        "corrupt" in result.output
    assert "skipped 1 file(s): DICOM without an image" in result.output and "1 converted" in result.output
    (tmp_path / "in" / "bad.dcm").unlink()  # documents alone are no fault
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "in"), "--out", str(tmp_path / "out2"),
                                      "--no-deid", "--workers", "1"])
    assert result.exit_code == 0, result.output


def _saved(ds: pydicom.Dataset) -> bytes:
    from io import BytesIO

    buf = BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def _reason(data: bytes, **opts) -> str:
    """The one-line reason the chain gives for ``data`` (our error, never an internal one)."""
    from shared.errors import DicomfleetError

    with pytest.raises(DicomfleetError) as err:
        convert_dataset(read_dataset(data), ConvertOptions(**{"formats": ("png",), "deid": False, **opts}))
    return str(err.value)


@pytest.mark.parametrize("name,change,declared", [
    ("rtdose.dcm", {"NumberOfFrames": ""}, "1 frame(s) × 10 × 10 × 1"),  # 15 frames held
    ("MR_small_expb.dcm", {"Rows": 1}, "1 frame(s) × 1 × 64 × 1"),  # big endian: pydicom's decoder
    ("CT_small.dcm", {"BitsAllocated": 1, "BitsStored": 1, "HighBit": 0, "PixelRepresentation": 0},
     "1 frame(s) × 128 × 128 × 1"),  # 16 times the bits a 1-bit image needs
])
def test_pixels_shaped_otherwise_than_the_header_says_are_refused(name, change, declared):
    """Pixel Data longer than its geometry, which pydicom shapes into more frames than the header
    declares: refused with the two shapes, not passed to an encoder as a 3-D array."""
    ds = pydicom.dcmread(bundled(name))
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    reason = _reason(_saved(ds))
    assert reason.startswith("(7FE0,0010) Pixel Data decodes to ") and reason.endswith(f"declares {declared} sample(s)")


@pytest.mark.parametrize("vr,value", [(b"UI", b""), (b"DS", b"1.5 "), (b"AT", b"\x10\x00\x20\x00")])
def test_a_transfer_syntax_that_is_not_a_uid_is_refused_with_its_reason(vr, value):
    data = bundled("CT_small.dcm").read_bytes()
    at = data.index(b"\x02\x00\x10\x00UI")
    length = int.from_bytes(data[at + 6:at + 8], "little")
    meta_end = at + 8 + length
    group_length = data.index(b"\x02\x00\x00\x00UL")
    data = bytearray(data[:at] + b"\x02\x00\x10\x00" + vr + len(value).to_bytes(2, "little") + value + data[meta_end:])
    old = int.from_bytes(data[group_length + 8:group_length + 12], "little")
    data[group_length + 8:group_length + 12] = (old - length + len(value)).to_bytes(4, "little")
    assert _reason(bytes(data)) == "(0002,0010) Transfer Syntax UID is empty or not a UID"


@pytest.mark.parametrize("change,reason", [
    ({"WindowCenter": "nan", "WindowWidth": "400"},
     "(0028,1050) Window Center / (0028,1051) Window Width are not finite numbers"),
    ({"RescaleSlope": "1e308"}, "(0028,1053) Rescale Slope 1e+308 and (0028,1052) Rescale Intercept "),
])
def test_numbers_that_would_render_undefined_pixels_are_refused(change, reason):
    """A NaN window cast to 8 bits gives whatever the CPU gives; a slope of 1e308 infinities."""
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    assert _reason(_saved(ds), formats=("png", "npy")).startswith(reason)


def test_a_patient_id_of_another_vr_gets_that_vrs_dummy_not_an_internal_error(monkeypatch):
    """(0010,0020) read with VR AT (a corrupt VR): de-identification cannot put a text pseudonym
    in an AT element; it empties it, as any AT under D, and the instance converts."""
    from shared.deid import deidentify

    monkeypatch.setenv("DICOMFLEET_DEID_KEY", "k" * 40)
    data = bytearray(bundled("CT_small.dcm").read_bytes())
    at = data.index(b"\x10\x00\x20\x00LO")
    data[at + 4:at + 6] = b"AT"
    ds = read_dataset(bytes(data))
    deidentify(ds, ConvertOptions(formats=("png",)))
    assert ds[0x00100020].VR == "AT" and ds[0x00100020].value is None
    outputs, _ = convert_dataset(ds, ConvertOptions(formats=("png",)))
    assert len(outputs) == 1


def test_the_command_shows_no_library_warning(tmp_path):
    """pydicom's and numpy's warnings (two lines, a source path, sometimes a file's bytes) stay
    out of the command's output: each instance says what is wrong in its one line."""
    import subprocess
    import sys

    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    ds.RescaleSlope = "1e308"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "slope.dcm").write_bytes(_saved(ds))
    data = bytearray(bundled("CT_small.dcm").read_bytes())
    at = data.index(b"\x08\x00\x05\x00CS")  # Specific Character Set: an unknown one, which pydicom warns of
    data[at + 8:at + 18] = b"ISO_IR 999"
    (tmp_path / "in" / "charset.dcm").write_bytes(bytes(data))
    run = subprocess.run([sys.executable, "-c", "from producer.cli import main; main()", "convert",
                          str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-deid", "--workers", "1"],
                         capture_output=True, text=True)
    said = run.stdout + run.stderr
    assert "Warning" not in said and "warn" not in said, said
    assert "1 converted" in said and "(0028,1053) Rescale Slope" in said, said
    assert len(said.strip().splitlines()) == 2  # the summary and the one failure


def _j2k_codestream(side: int) -> bytes:
    """A minimal JPEG 2000 codestream of one side × side component (SOC, SIZ, COD, QCD, a tile)."""
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, side, side, 0, 0, side, side, 0, 0, 1) + bytes([7, 1, 1])
    cod = struct.pack(">HBBHBBBBBB", 12, 0, 0, 1, 0, 0, 4, 4, 0, 1)
    sot = struct.pack(">HHIBB", 10, 0, 12 + 2 + 1, 0, 1)
    return (b"\xff\x4f\xff\x51" + siz + b"\xff\x52" + cod + b"\xff\x5c" + struct.pack(">HBB", 4, 0x40, 0x40)
            + b"\xff\x90" + sot + b"\xff\x93" + b"\x00" + b"\xff\xd9")


def _box(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", 8 + len(payload)) + kind + payload


def test_a_jp2_wrapped_frame_is_sized_by_the_codestream_the_decoder_reads():
    """A JP2-wrapped frame with a 64 × 64 decoy codestream in an xml box before the real 16000 ×
    16000 one: OpenJPEG reads the jp2c box and allocated 1.3 GB from a 990-byte file while the
    size check read the decoy. The check now reads what the decoder reads."""
    from shared.codestream import j2k_size

    real, decoy = _j2k_codestream(16000), _j2k_codestream(64)
    jp2 = (_box(b"jP  ", b"\r\n\x87\n") + _box(b"ftyp", b"jp2 \0\0\0\0jp2 ")
           + _box(b"xml ", decoy) + _box(b"jp2c", real))
    assert j2k_size(jp2) == (16000, 16000, 1) and j2k_size(decoy) == (64, 64, 1)
    assert j2k_size(b"junk" + decoy) is None  # a codestream starts its frame, or is boxed
    ds = pydicom.dcmread(bundled("CT_small.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.90"  # JPEG 2000 Lossless
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = encapsulate([jp2])
    ds["PixelData"].VR = "OB"
    err_type, reason = refuse(ds)
    assert err_type is InvalidDicomError
    assert "frame 1: the JPEG 2000 codestream declares 16000 × 16000 × 1" in reason


def test_a_source_larger_than_the_pixel_budget_allows_is_refused_before_it_is_read(tmp_path):
    """A 64 × 64 image padded to 64 MiB (or a sparse file of gigabytes): the pixel budget bounds
    the pixels, not the file; such a file is refused by its size, with its reason, before the
    read, and the rest of the series converts."""
    from shared.chain import convert_chunk, instance_task
    from shared.dataset import source_limit

    small = bundled("CT_small.dcm").read_bytes()
    budget = 1 << 12
    big = tmp_path / "big.dcm"
    big.write_bytes(small)
    with big.open("r+b") as fh:
        fh.truncate(source_limit(budget) + 1)  # sparse: costs no disk
    good = tmp_path / "good.dcm"
    good.write_bytes(small)
    opts = ConvertOptions(formats=("png",), deid=False, max_pixels=1 << 16).to_json()
    opts_small = {**opts, "max_pixels": budget}
    with peak_allocation() as mem:
        [refused, converted] = convert_chunk([instance_task(str(big), 1, "st/se", str(tmp_path / "out"), opts_small),
                                              instance_task(str(good), 2, "st/se", str(tmp_path / "out"), opts)])
    assert refused["error"]["code"] == "pixel_budget"
    assert refused["error"]["reason"].startswith(f"the source holds {source_limit(budget) + 1} bytes, more than")
    assert converted["error"] is None and mem["peak"] < SMALL


def test_special_files_among_the_sources_neither_hang_nor_stop_the_run(tmp_path):
    """A FIFO (a read would wait for a writer for ever), a device, a dangling and a looping link
    beside a good file: the run ends, the good file converts, the links are skipped as unreadable
    (exit 1: a file could not be read) and the FIFO and device are passed over, with one worker
    or the default count."""
    import os
    import subprocess
    import sys

    src = tmp_path / "in"
    src.mkdir()
    (src / "good.dcm").write_bytes(bundled("CT_small.dcm").read_bytes())
    os.mkfifo(src / "pipe.dcm")
    (src / "zero.dcm").symlink_to("/dev/zero")
    (src / "dangling.dcm").symlink_to(src / "gone.dcm")
    (src / "loop-a").symlink_to(src / "loop-b")
    (src / "loop-b").symlink_to(src / "loop-a")
    for workers in ("1", "0"):
        run = subprocess.run([sys.executable, "-c", "from producer.cli import main; main()", "convert", str(src),
                              "--out", str(tmp_path / f"out{workers}"), "--no-deid", "--workers", workers],
                             capture_output=True, text=True, timeout=120)
        said = run.stdout + run.stderr
        assert run.returncode == 1, said
        assert "1 converted" in said and "skipped 1 file(s): unreadable (No such file or directory)" in said
        assert "skipped 2 file(s): unreadable (Too many levels of symbolic links)" in said, said


def test_a_large_file_that_is_not_dicom_is_judged_by_its_first_bytes(tmp_path):
    """64 MiB of zeros: pydicom's forced parse read it 8 bytes at a time to its end (28 s; hours
    for a sparse file of gigabytes). A file that cannot be DICOM (no DICM preamble, no raw
    dataset start) is refused on its first HEADER_PREFIX bytes."""
    import io

    from shared.dataset import HEADER_PREFIX, read_header
    from shared.errors import NotDicomError

    class Counting(io.BytesIO):
        read_bytes = 0

        def read(self, n=-1):
            data = super().read(n)
            Counting.read_bytes += len(data)
            return data

    with pytest.raises(NotDicomError):
        read_header(Counting(bytes(64 << 20)))
    assert Counting.read_bytes <= HEADER_PREFIX


def test_sigterm_stops_a_pooled_run_with_its_processes_and_temp_files(tmp_path):
    """SIGTERM to `convert --workers 2` (a scheduler stopping it): it says so in one line and exits
    143; the pool's processes go with it (they were left blocked for ever) and no temp file stays."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from .synthetic import write_series

    write_series(tmp_path / "in", slices=160, size=256, seed=5)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", "from producer.cli import main; main()", "convert",
                             str(tmp_path / "in"), "--out", str(out), "--no-deid", "--workers", "2",
                             "-f", "png", "-f", "jpeg"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(out.rglob("*.jpg")) and time.monotonic() < deadline:
        time.sleep(0.02)
    children = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
    assert children  # the pool is running
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "stopped interrupted: a series without its manifest.json is incomplete" in stderr
    time.sleep(0.5)
    assert [p for p in children if os.path.exists(f"/proc/{p}")] == []
    assert not list(out.rglob(".tmp-*")) and not list(out.rglob("manifest.json"))


def test_a_destination_that_fills_up_midway_reports_what_was_done_and_exits_1(tmp_path, monkeypatch):
    """ENOSPC after a few outputs: the summary of what was converted, then one line naming the
    failure and that the series in hand has no manifest; exit 1, not the usage error's 2."""
    from shared import store as store_module
    from shared.errors import StorageError

    from .synthetic import write_series

    write_series(tmp_path / "in", slices=6, size=16, seed=22)
    real, writes = store_module.LocalStore.write, []

    def filling(self, key, data):
        writes.append(key)
        if len(writes) > 4:
            raise StorageError(f"cannot write {key}: No space left on device")
        real(self, key, data)

    monkeypatch.setattr(store_module.LocalStore, "write", filling)
    result = CliRunner().invoke(app, ["convert", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                                      "--no-deid", "--workers", "1"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("0 series, ")
    assert lines[-1].startswith("failed cannot write ") and lines[-1].endswith(
        "No space left on device: the series in hand has no manifest; mend the destination and run again")
    assert not list((tmp_path / "out").rglob("manifest.json"))
