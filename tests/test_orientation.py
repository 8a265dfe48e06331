"""Display geometry of 8-bit outputs: radiological orientation from Image Orientation (Patient),
square pixels from Pixel Spacing / Pixel Aspect Ratio, ``--max-size`` (shared/pixels/orientation.py).

A synthetic series is written again with its pixel grid transposed and/or flipped and its Image
Orientation/Position (Patient) rewritten to describe the same anatomy: the PNGs must come out the
same as the original's, pixel for pixel. Coronal and sagittal slices are resliced from a
synthetic volume the same way.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from click.testing import CliRunner

from producer.cli import app
from shared.chain import convert_dataset
from shared.errors import InvalidDicomError
from shared.options import ConvertOptions
from shared.pixels.orientation import display_size, plan_display, radiological_flips, resize

from .synthetic import make_slice, write_series

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
UIDS = ("1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.2", "1.2.826.0.1.3680043.10.1.3")


def regrid(ds: Dataset, *, transpose: bool, flip_v: bool, flip_h: bool) -> Dataset:
    """The same slice stored on a transposed/flipped grid, its orientation and position rewritten
    so that every pixel still sits at the same place in the patient."""
    arr = ds.pixel_array
    row, col = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
    ipp = np.array(ds.ImagePositionPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
    if transpose:
        arr, row, col, dr, dc = arr.T, col, row, dc, dr
    if flip_v:
        ipp = ipp + (arr.shape[0] - 1) * dr * col
        arr, col = arr[::-1], -col
    if flip_h:
        ipp = ipp + (arr.shape[1] - 1) * dc * row
        arr, row = arr[:, ::-1], -row
    out = pydicom.dcmread(_save(ds))  # a copy
    out.ImageOrientationPatient = [round(float(v), 6) + 0.0 for v in (*row, *col)]
    out.ImagePositionPatient = [round(float(v), 4) + 0.0 for v in ipp]
    out.PixelSpacing = [dr, dc]
    out.Rows, out.Columns = arr.shape
    out.PixelData = np.ascontiguousarray(arr).tobytes()
    return out


def _save(ds: Dataset):
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    buf.seek(0)
    return buf


def png_of(ds: Dataset, **options) -> np.ndarray:
    outputs, _ = convert_dataset(ds, ConvertOptions(formats=("png",), deid=False, **options))
    return cv2.imdecode(np.frombuffer(outputs[0].data, np.uint8), cv2.IMREAD_UNCHANGED)


def resliced(plane: str, size: int = 48) -> Dataset:
    """A coronal or sagittal slice through a synthetic axial volume, stored the standard way
    (head up; patient right on the left for coronal, anterior on the left for sagittal)."""
    rng = np.random.default_rng(3)
    volume = np.stack([make_slice(i, size, size, rng, UIDS).pixel_array for i in range(size)])  # z, y, x
    ds = make_slice(0, size, size, np.random.default_rng(0), UIDS)
    if plane == "coronal":  # rows: superior→inferior, columns: +x
        arr, iop = volume[::-1, size // 2 + 5, :], [1, 0, 0, 0, 0, -1]
    else:  # sagittal, rows: superior→inferior, columns: +y (anterior→posterior)
        arr, iop = volume[::-1, :, size // 3], [0, 1, 0, 0, 0, -1]
    ds.ImageOrientationPatient = iop
    ds.PixelSpacing = [1.25, 480.0 / size]  # slices 1.25 mm apart become rows: non-square pixels
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    return ds


TRANSFORMS = list(itertools.product([False, True], repeat=3))


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_every_stored_grid_displays_the_same(plane):
    ds = make_slice(7, 20, 48, np.random.default_rng(5), UIDS) if plane == "axial" else resliced(plane)
    reference = png_of(ds)
    assert plan_display(ds, reference.shape).identity is (plane == "axial")  # standard storage
    for transpose, flip_v, flip_h in TRANSFORMS:
        moved = regrid(ds, transpose=transpose, flip_v=flip_v, flip_h=flip_h)
        assert np.array_equal(png_of(moved), reference), (plane, transpose, flip_v, flip_h)
        stored = png_of(moved, orientation="as-stored")
        if transpose or flip_v or flip_h:
            assert not np.array_equal(stored, png_of(ds, orientation="as-stored"))


def test_standard_planes_need_no_flip_and_reversed_ones_do():
    x, y, z = np.eye(3)
    assert radiological_flips(x, y) == (False, False, False)  # axial
    assert radiological_flips(x, -z) == (False, False, False)  # coronal
    assert radiological_flips(y, -z) == (False, False, False)  # sagittal
    assert radiological_flips(-x, y) == (False, False, True)  # axial seen from above: mirrored
    assert radiological_flips(x, -y) == (False, True, False)  # anterior down
    assert radiological_flips(y, x) == (True, False, False)  # rows and columns swapped
    assert radiological_flips(-y, -z) == (False, False, True)  # bundled CT2N/6293: anterior right
    tilted = np.array([1, 0, 0]), np.array([0, np.cos(0.4), -np.sin(0.4)])  # a gantry tilt
    assert radiological_flips(*tilted) == (False, False, False)


def test_through_the_command_files_rotated_on_disk(tmp_path):
    """Real files with non-identity Image Orientation (Patient): the same PNG bytes' pixels, and
    the manifest says what the display did."""
    src = write_series(tmp_path / "in", slices=4, size=32, seed=2)
    rotated = tmp_path / "rot"
    rotated.mkdir()
    for path in src:
        regrid(pydicom.dcmread(path), transpose=True, flip_v=False, flip_h=True).save_as(
            rotated / path.name, enforce_file_format=True)
    outs = {}
    for name in ("in", "rot"):
        result = CliRunner().invoke(app, ["convert", str(tmp_path / name), "--out", str(tmp_path / f"out-{name}"),
                                          "--no-deid", "--workers", "1"])
        assert result.exit_code == 0, result.output
        [manifest] = (tmp_path / f"out-{name}").glob("*/*/manifest.json")
        outs[name] = (manifest.parent, json.loads(manifest.read_text()))
    for i in range(1, 5):
        a = cv2.imread(str(outs["in"][0] / f"{i:04d}.png"), cv2.IMREAD_UNCHANGED)
        b = cv2.imread(str(outs["rot"][0] / f"{i:04d}.png"), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(a, b)
    assert all("display" not in r for r in outs["in"][1]["instances"])
    assert {json.dumps(r["display"]) for r in outs["rot"][1]["instances"]} == \
        {json.dumps({"operations": ["transpose", "flip-vertical"]})}  # undoes flip-h after transpose


def test_anisotropic_pixels_are_made_square_along_the_coarser_axis():
    ds = make_slice(3, 10, 64, np.random.default_rng(1), UIDS)
    ds.PixelSpacing = [1.5, 0.75]  # pixels twice as tall as wide: 64 rows shown as 128
    img = png_of(ds)
    assert img.shape == (128, 64)
    flat = png_of(ds, orientation="as-stored")  # square-pixel resampling does not depend on it
    assert flat.shape == (128, 64)
    stored = png_of(ds, max_size=65535)
    assert np.array_equal(stored, img)
    ds.PixelSpacing = [0.5, 0.75]  # wider than tall: 64 columns shown as 96
    assert png_of(ds).shape == (64, 96)
    ds.PixelSpacing = [0.7031, 0.7032]  # rounding in the file is not anisotropy
    assert png_of(ds).shape == (64, 64)


def test_pixel_aspect_ratio_and_imager_pixel_spacing():
    ds = make_slice(3, 10, 40, np.random.default_rng(1), UIDS)
    del ds.PixelSpacing
    ds.PixelAspectRatio = [3, 2]  # vertical : horizontal
    assert png_of(ds).shape == (60, 40)
    del ds.PixelAspectRatio
    ds.ImagerPixelSpacing = [0.2, 0.4]
    assert png_of(ds).shape == (40, 80)
    del ds.ImagerPixelSpacing
    assert png_of(ds).shape == (40, 40)


def test_max_size_caps_the_longer_side_keeping_the_aspect():
    ds = make_slice(3, 10, 128, np.random.default_rng(1), UIDS)
    full = png_of(ds)
    small = png_of(ds, max_size=48)
    assert small.shape == (48, 48)
    assert np.array_equal(small, cv2.resize(full, (48, 48), interpolation=cv2.INTER_AREA))
    assert png_of(ds, max_size=500).shape == (128, 128)  # never enlarges
    ds.PixelSpacing = [3.75, 1.875]
    assert png_of(ds, max_size=64).shape == (64, 32)
    assert display_size((100, 50), (1.0, 1.0), 10) == (10, 5)


def test_resize_uses_area_down_and_cubic_up():
    img = (np.arange(60 * 40) % 251).astype(np.uint8).reshape(60, 40)
    assert np.array_equal(resize(img, (30, 20)), cv2.resize(img, (20, 30), interpolation=cv2.INTER_AREA))
    assert np.array_equal(resize(img, (120, 80)), cv2.resize(img, (80, 120), interpolation=cv2.INTER_CUBIC))
    mixed = resize(img, (120, 20))  # rows grow, columns shrink: area first, then cubic
    step = cv2.resize(img, (20, 60), interpolation=cv2.INTER_AREA)
    assert np.array_equal(mixed, cv2.resize(step, (20, 120), interpolation=cv2.INTER_CUBIC))
    assert resize(img, (60, 40)) is img


def test_stored_value_outputs_are_never_reoriented():
    ds = regrid(make_slice(2, 5, 32, np.random.default_rng(4), UIDS), transpose=True, flip_v=True, flip_h=False)
    ds.PixelSpacing = [2.0, 1.0]
    outputs, info = convert_dataset(ds, ConvertOptions(formats=("png", "tiff", "npy"), deid=False, max_size=20))
    import io

    import tifffile

    by = {o.format.value: o for o in outputs}
    assert np.array_equal(tifffile.imread(io.BytesIO(by["tiff"].data)), ds.pixel_array)
    assert np.load(io.BytesIO(by["npy"].data)).shape == (32, 32)
    assert info["display"] == {"operations": ["transpose", "flip-horizontal"], "rows": 10, "columns": 20}


@pytest.mark.parametrize(("value", "reason"), [
    (["1", "0", "0", "1", "0", "0"], r"(0020,0037) Image Orientation (Patient) '1\0\0\1\0\0' is not two orthogonal unit vectors"),
    (["1", "0", "0", "0", "1"], r"(0020,0037) Image Orientation (Patient) '1\0\0\0\1' is not 6 numbers"),
])
def test_malformed_orientation_is_a_one_line_reason(value, reason):
    ds = make_slice(0, 3, 16, np.random.default_rng(0), UIDS)
    ds.ImageOrientationPatient = value
    with pytest.raises(InvalidDicomError) as err:
        png_of(ds)
    assert str(err.value).startswith(reason) and "\n" not in str(err.value)
    assert png_of(ds, orientation="as-stored").shape == (16, 16)  # the way out it names


@pytest.mark.parametrize(("value", "reason"), [
    (["0", "0.5"], r"(0028,0030) Pixel Spacing '0\0.5' must be positive"),
    (["20", "0.5"], r"(0028,0030) Pixel Spacing '20\0.5' gives pixels more than 16 times longer than wide"),
])
def test_malformed_spacing_is_a_one_line_reason(value, reason):
    ds = make_slice(0, 3, 16, np.random.default_rng(0), UIDS)
    ds.PixelSpacing = value
    with pytest.raises(InvalidDicomError) as err:
        png_of(ds)
    assert str(err.value) == reason


def test_options_are_validated_and_travel_as_json():
    from shared.errors import ConfigError

    opts = ConvertOptions(orientation="as-stored", max_size=256, deid=False)
    assert ConvertOptions.from_json(json.loads(json.dumps(opts.to_json()))) == opts
    for bad in ({"orientation": "neurological"}, {"max_size": 0}):
        with pytest.raises(ConfigError):
            ConvertOptions(deid=False, **bad)
    result = CliRunner().invoke(app, ["convert", str(Path(__file__)), "--out", "/tmp/x", "--orientation", "sideways"])
    assert result.exit_code == 2 and "invalid orientation 'sideways'" in result.output


def test_a_tasks_options_are_parsed_once_for_equal_json_and_again_for_any_change():
    """Every task of a series carries the same options: from_json answers the last parsed
    object again for equal JSON, a new one for any difference, and never what the caller's dict
    became after parsing."""
    from shared.errors import ConfigError

    data = ConvertOptions(max_size=256, deid=False).to_json()
    first = ConvertOptions.from_json(data)
    assert ConvertOptions.from_json({**data}) is first
    assert ConvertOptions.from_json(json.loads(json.dumps(data))) == first  # as a Celery task has it
    data["max_size"] = 128  # the caller's dict changes: the remembered options do not
    assert first.max_size == 256
    second = ConvertOptions.from_json(data)
    assert second.max_size == 128 and second is not first
    data["max_size"] = 0
    with pytest.raises(ConfigError):
        ConvertOptions.from_json(data)  # invalid JSON is validated, never answered from memory
    assert ConvertOptions.from_json({**data, "max_size": 128}) is second
