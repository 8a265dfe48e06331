"""``--qa-sheet`` (shared/qa.py) and the JPEG SSIM threshold: the sheet's panels are the real
reference, output and difference; a JPEG under the threshold is flagged and the exit status is 3."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from producer.cli import app
from shared.qa import GAIN, _BAND, _GUTTER, sample
from shared.verify import ssim

from .synthetic import write_series

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def convert(src: Path, out: Path, *args: str, code: int = 0):
    result = CliRunner().invoke(app, ["convert", str(src), "--out", str(out), "--workers", "1", "--no-deid", *args])
    assert result.exit_code == code, result.output
    [manifest] = out.glob("*/*/manifest.json")
    return json.loads(manifest.read_text()), manifest.parent, result.output


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("qa")
    write_series(root / "in", slices=8, size=64, seed=12)
    return root / "in"


def test_sample_is_a_fraction_spread_along_the_series_at_least_one():
    assert sample(list(range(1, 13)), 0.01) == [7]
    assert sample(list(range(1, 251)), 0.01) == [42, 126, 209]  # the middle of each third
    assert sample([1, 2, 3], 1.0) == [1, 2, 3]
    assert sample([5], 0.5) == [5] and sample([], 0.5) == []


def test_sheet_panels_are_reference_output_and_difference(src, tmp_path):
    manifest, folder, _ = convert(src, tmp_path, "-f", "png", "-f", "jpeg", "--qa-sheet", "--qa-fraction", "0.25")
    sheets = [e for e in manifest["series_outputs"] if e["format"] == "qa"]
    assert [e["index"] for e in sheets] == [3, 7] and [e["path"][-11:] for e in sheets] == ["qa/0003.png", "qa/0007.png"]
    by = {r["index"]: {o["format"]: o for o in r["outputs"]} for r in manifest["instances"]}
    for entry in sheets:
        outs = by[entry["index"]]
        reference = cv2.imread(str(tmp_path / outs["png"]["path"]), cv2.IMREAD_UNCHANGED)  # the same rendering
        jpeg = cv2.imread(str(tmp_path / outs["jpeg"]["path"]), cv2.IMREAD_UNCHANGED)
        assert entry["compared"] == outs["jpeg"]["path"]
        assert entry["ssim"] == outs["jpeg"]["verification"]["ssim"] == round(ssim(reference, jpeg), 6)
        assert entry["max_difference"] == int(np.abs(reference.astype(int) - jpeg).max())
        sheet = cv2.imread(str(tmp_path / entry["path"]), cv2.IMREAD_UNCHANGED)[..., ::-1]
        k = 4  # 64-pixel slices shown as 256-pixel panels, each pixel a 4×4 block
        assert sheet.shape == (64 * k + 2 * _BAND, 3 * 64 * k + 4 * _GUTTER, 3)
        panels = [sheet[_BAND:_BAND + 64 * k, _GUTTER + p * (64 * k + _GUTTER):][:, :64 * k, 0][::k, ::k]
                  for p in range(3)]
        diff = np.clip(np.abs(reference.astype(int) - jpeg) * GAIN, 0, 255)
        assert np.array_equal(panels[0], reference) and np.array_equal(panels[1], jpeg)
        assert np.array_equal(panels[2], diff)
        footer = sheet[_BAND + 64 * k:, :, 0]
        assert (footer < 128).sum() > 200  # the SSIM line is printed there


def test_a_jpeg_under_the_threshold_is_flagged_and_the_exit_status_says_so(src, tmp_path):
    manifest, _, output = convert(src, tmp_path / "low", "-f", "jpeg", "--quality", "5", code=3)
    checks = [o["verification"] for r in manifest["instances"] for o in r["outputs"]]
    assert all(c["below_threshold"] == 0.98 and c["ssim"] < 0.98 for c in checks)
    assert manifest["below_ssim_threshold"] == 8 and manifest["counts"]["failed"] == 0
    assert "flagged 8 JPEG output(s) below the SSIM threshold" in output
    manifest, _, _ = convert(src, tmp_path / "ok", "-f", "jpeg", "--quality", "5", "--ssim-threshold", "0.3")
    assert manifest["below_ssim_threshold"] == 0
    assert all("below_threshold" not in o["verification"] for r in manifest["instances"] for o in r["outputs"])


def test_qa_sheet_needs_an_8bit_format(src, tmp_path):
    result = CliRunner().invoke(app, ["convert", str(src), "--out", str(tmp_path), "--no-deid", "-f", "tiff",
                                      "--qa-sheet"])
    assert result.exit_code == 2 and "--qa-sheet compares 8-bit outputs" in result.output
