"""Burned-in annotation: refused by default with the reason in the summary, or masked on request."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from pydicom.dataset import Dataset

from shared.deid.burned_in import burned_in_reason, mask_regions
from tests.synthetic import write_series

DICOMFLEET = str(Path(sys.executable).parent / "dicomfleet")
KEY = "burned-in-test-key-0123456789abcdef01234567"
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _ds(**attrs) -> Dataset:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


def test_reasons():
    assert burned_in_reason(_ds(BurnedInAnnotation="YES", Modality="CT")) == "(0028,0301) Burned In Annotation is YES"
    assert burned_in_reason(_ds(BurnedInAnnotation="NO", Modality="US")) is None
    assert "Modality is US" in burned_in_reason(_ds(Modality="US"))
    assert "Secondary Capture" in burned_in_reason(_ds(Modality="OT", SOPClassUID="1.2.840.10008.5.1.4.1.1.7"))
    assert burned_in_reason(_ds(Modality="CT", SOPClassUID="1.2.840.10008.5.1.4.1.1.2")) is None
    # pydicom's own ultrasound and secondary capture files, as they come
    assert "US" in burned_in_reason(pydicom.dcmread(TEST_FILES / "examples_ybr_color.dcm", stop_before_pixels=True))
    assert burned_in_reason(pydicom.dcmread(TEST_FILES / "CT_small.dcm", stop_before_pixels=True)) is None


def test_mask_blacks_out_every_frame_and_clips_to_the_image():
    arr = np.arange(2 * 4 * 5, dtype=np.int16).reshape(2, 4, 5) + 10
    out = mask_regions(arr, _ds(NumberOfFrames=2, PhotometricInterpretation="MONOCHROME2"),
                       regions=((3, 1, 10, 2),))
    assert (out[:, 1:3, 3:] == 10).all()
    untouched = np.ones(arr.shape, bool)
    untouched[:, 1:3, 3:] = False
    assert np.array_equal(out[untouched], arr[untouched]) and arr[0, 1, 3] != 10  # input unchanged
    mono1 = mask_regions(arr[0], _ds(PhotometricInterpretation="MONOCHROME1"), regions=((0, 0, 1, 1),))
    assert mono1[0, 0] == arr[0].max()
    rgb = np.full((3, 3, 3), 200, np.uint8)  # colour is black in every channel, not the image's minimum
    masked = mask_regions(rgb, _ds(PhotometricInterpretation="RGB", SamplesPerPixel=3), regions=((0, 0, 2, 2),))
    assert (masked[:2, :2] == 0).all() and (masked[2] == 200).all() and (masked[:, 2] == 200).all()


@pytest.fixture
def series(tmp_path) -> Path:
    """A 3-slice series whose middle slice says it has burned-in text."""
    paths = write_series(tmp_path / "in", slices=3, size=32, seed=4)
    ds = pydicom.dcmread(paths[1])
    ds.BurnedInAnnotation = "YES"
    ds.save_as(paths[1], enforce_file_format=True)
    return tmp_path / "in"


def _convert(tmp_path: Path, src: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMFLEET_")}
    env.update(DICOMFLEET_DEID_KEY=KEY, XDG_CONFIG_HOME=str(tmp_path / "config"), COLUMNS="250")
    return subprocess.run([DICOMFLEET, "convert", str(src), "--out", str(tmp_path / "out"), "--workers", "1",
                           *args], env=env, capture_output=True, text=True, timeout=120)


def test_refused_by_default_with_the_reason_in_the_summary(tmp_path, series):
    run = _convert(tmp_path, series)
    assert run.returncode == 1
    assert "3 instances, 2 converted" in run.stderr
    failed = [ln for ln in run.stderr.splitlines() if ln.strip().startswith("failed ")]
    assert len(failed) == 1 and failed[0].strip().endswith(
        "(0028,0301) Burned In Annotation is YES: refused, the pixels may show identifying text "
        "(use --burned-in mask with --mask-region X,Y,W,H to black out the text)")
    manifest = json.loads(next((tmp_path / "out").rglob("manifest.json")).read_text())
    assert [(e["code"], e["index"]) for e in manifest["errors"]] == [("burned_in", 2)]
    assert manifest["instances"][1]["outputs"] == []


def test_masked_on_request_with_the_reason_in_the_summary(tmp_path, series):
    run = _convert(tmp_path, series, "--burned-in", "mask", "--mask-region", "0,0,32,6",
                   "--mask-region", "20,20,100,100", "--format", "tiff")
    assert run.returncode == 0, run.stderr
    assert "masked 1 instance(s): (0028,0301) Burned In Annotation is YES" in run.stderr
    manifest = json.loads(next((tmp_path / "out").rglob("manifest.json")).read_text())
    assert manifest["deidentification"]["burned_in"] == "mask"
    assert manifest["deidentification"]["mask_regions"] == [[0, 0, 32, 6], [20, 20, 100, 100]]
    records = manifest["instances"]
    assert [bool(r.get("masked")) for r in records] == [False, True, False]
    # instance 2 in spatial order is the middle file; its TIFF is the stored pixels, masked
    source = pydicom.dcmread(sorted(series.glob("*.dcm"))[1]).pixel_array
    masked = tifffile.imread(next((tmp_path / "out").rglob("0002.tiff")))
    expect = source.copy()
    expect[0:6, :] = source.min()
    expect[20:, 20:] = source.min()
    assert np.array_equal(masked, expect)
    plain = tifffile.imread(next((tmp_path / "out").rglob("0001.tiff")))
    assert np.array_equal(plain, pydicom.dcmread(sorted(series.glob("*.dcm"))[0]).pixel_array)
