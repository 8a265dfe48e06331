"""``--series-stack`` (shared/stack.py): one multi-page TIFF / one .npy volume per series, in
spatial order, with geometry; read back with tifffile and numpy."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile
from click.testing import CliRunner

from producer.cli import app
from shared.errors import ConfigError
from shared.options import ConvertOptions

from .synthetic import write_series

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SIZE, SLICES = 48, 9


def convert(src: Path, out: Path, *args: str, code: int = 0):
    result = CliRunner().invoke(app, ["convert", str(src), "--out", str(out), "--workers", "1", "--no-deid",
                                      "--series-stack", *args])
    assert result.exit_code == code, result.output
    [manifest] = out.glob("*/*/manifest.json")
    return json.loads(manifest.read_text()), manifest.parent, result.output


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[pydicom.Dataset]:
    """Nine slices written with scrambled file names; returned in spatial order (z ascending)."""
    root = tmp_path_factory.mktemp("stack")
    paths = write_series(root / "in", slices=SLICES, size=SIZE, seed=9)
    for k, path in enumerate(paths):  # file names no longer follow anatomy
        path.rename(path.with_name(f"f{(k * 5) % SLICES:02d}.dcm"))
    datasets = [pydicom.dcmread(p) for p in (root / "in").iterdir()]
    return sorted(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))


def test_tiff_stack_pages_in_spatial_order_with_resolution(series, tmp_path):
    src = Path(series[0].filename).parent
    manifest, folder, _ = convert(src, tmp_path, "-f", "tiff", "-f", "png")
    names = sorted(p.name for p in folder.iterdir())
    assert names == [f"{i:04d}.png" for i in range(1, SLICES + 1)] + ["manifest.json", "series.tiff"]
    volume = tifffile.imread(folder / "series.tiff")
    assert volume.dtype == np.uint16 and volume.shape == (SLICES, SIZE, SIZE)
    assert np.array_equal(volume, np.stack([ds.pixel_array for ds in series]))  # bit-exact, in order
    with tifffile.TiffFile(folder / "series.tiff") as tif:
        assert len(tif.pages) == SLICES
        tags = tif.pages[0].tags
        spacing = 480.0 / SIZE  # mm between pixels
        assert tags["ResolutionUnit"].value == 3  # centimetre
        x, y = tags["XResolution"].value, tags["YResolution"].value
        assert x[0] / x[1] == pytest.approx(10 / spacing) and y[0] / y[1] == pytest.approx(10 / spacing)
    [entry] = manifest["series_outputs"]
    assert entry["pages"] == SLICES and entry["instances"] == list(range(1, SLICES + 1))
    assert all(o["format"] == "png" for r in manifest["instances"] for o in r["outputs"])


def test_npy_volume_with_its_geometry_sidecar(series, tmp_path):
    src = Path(series[0].filename).parent
    manifest, folder, _ = convert(src, tmp_path, "-f", "npy")
    volume = np.load(folder / "series.npy")
    hu = np.stack([ds.pixel_array.astype(np.float32) - 1024 for ds in series])
    assert volume.dtype == np.float32 and np.array_equal(volume, hu)
    sidecar = json.loads((folder / "series.npy.json").read_text())
    assert sidecar["shape"] == [SLICES, SIZE, SIZE] and sidecar["axes"] == ["slice", "row", "column"]
    assert sidecar["spacing"] == [1.25, 10.0, 10.0] and sidecar["regular"] is True
    assert sidecar["origin"] == [-240.0, -240.0, -120.0]
    assert sidecar["direction"] == [[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
    assert [s["position"] for s in sidecar["slices"]] == [-120.0 + 1.25 * i for i in range(SLICES)]
    # world coordinates of voxel (k, i, j) = origin + k·dz·d0 + i·dy·d1 + j·dx·d2 reproduce each IPP
    origin, spacing, direction = (np.array(sidecar[k], float) for k in ("origin", "spacing", "direction"))
    for k, ds in enumerate(series):
        assert np.allclose(origin + k * spacing[0] * direction[0], [float(v) for v in ds.ImagePositionPatient])
    entries = {e["format"]: e for e in manifest["series_outputs"]}
    assert entries["npy"]["shape"] == [SLICES, SIZE, SIZE] and set(entries) == {"npy", "json"}
    assert not list(folder.glob("0*.npy"))  # no per-instance volumes


def test_a_slice_of_another_size_is_a_series_failure_with_its_reason(series, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for k, ds in enumerate(series[:4]):
        ds = pydicom.dcmread(ds.filename)
        if k == 2:
            half = ds.pixel_array[: SIZE // 2, : SIZE // 2].copy()
            ds.Rows = ds.Columns = SIZE // 2
            ds.PixelData = half.tobytes()
        ds.save_as(src / f"{k}.dcm", enforce_file_format=True)
    manifest, folder, output = convert(src, tmp_path / "out", "-f", "tiff", "-f", "png", code=1)
    assert manifest["series_errors"] == [{"output": "tiff", "code": "invalid", "reason":
                                          "--series-stack needs one pixel layout: output 0003 is uint16[24, 24], "
                                          "output 0001 is uint16[48, 48]"}]
    assert manifest["counts"]["converted"] == 4 and not (folder / "series.tiff").exists()
    assert "failed" in output and "tiff: --series-stack needs one pixel layout" in output


def test_series_stack_needs_a_volume_format():
    with pytest.raises(ConfigError, match="--series-stack stacks tiff or npy"):
        ConvertOptions(formats=("png",), series_stack=True, deid=False)


def _rewritten(series, src: Path, change) -> None:
    src.mkdir()
    for k, ds in enumerate(series[:5]):
        ds = pydicom.dcmread(ds.filename)
        change(k, ds)
        ds.save_as(src / f"{k}.dcm", enforce_file_format=True)


def test_a_slice_of_another_orientation_is_no_part_of_a_volume(series, tmp_path):
    """A sagittal slice among axial ones: the sidecar's one direction would place it along the
    wrong normal, so the volume is refused with the slice named; the TIFF pages carry no geometry."""
    def sagittal(k, ds):
        if k == 3:
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    _rewritten(series, tmp_path / "in", sagittal)
    manifest, folder, _ = convert(tmp_path / "in", tmp_path / "out", "-f", "npy", "-f", "tiff", code=1)
    [error] = manifest["series_errors"]
    assert error["output"] == "npy" and error["reason"].startswith("--series-stack needs one orientation: output 0")
    assert (folder / "series.tiff").exists() and not (folder / "series.npy").exists()


def test_an_unusable_orientation_costs_its_geometry_not_the_volume(series, tmp_path):
    """The first slice's orientation all zeros: the volume is written, without a direction, and
    that slice without a position (the series then goes by Instance Number: it stays first)."""
    def zeros(k, ds):
        ds.InstanceNumber = k + 1
        if k == 0:
            ds.ImageOrientationPatient = [0, 0, 0, 0, 0, 0]
    _rewritten(series, tmp_path / "in", zeros)
    manifest, folder, _ = convert(tmp_path / "in", tmp_path / "out", "-f", "npy", "--orientation", "as-stored")
    sidecar = json.loads((folder / "series.npy.json").read_text())
    assert sidecar["direction"] is None and sidecar["shape"] == [5, SIZE, SIZE]
    assert [s["position"] is None for s in sidecar["slices"]] == [True, False, False, False, False]


def test_positions_beyond_float_range_are_unknown_and_the_json_strict(series, tmp_path):
    """Finite Image Position terms whose product along an oblique normal overflows: the position
    is unknown (null), never ``Infinity``, which strict JSON readers refuse."""
    def overflowing(k, ds):
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0.7071068, 0.7071068]
        ds.ImagePositionPatient = [0, -1.5e308, 1.5e308] if k == 2 else [0, 0, 10.0 * k]
    _rewritten(series, tmp_path / "in", overflowing)
    convert(tmp_path / "in", tmp_path / "out", "-f", "npy")

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")
    for path in (tmp_path / "out").rglob("*.json"):
        json.loads(path.read_text(), parse_constant=refuse)
    [manifest] = (tmp_path / "out").glob("*/*/manifest.json")
    assert "Infinity" not in manifest.read_text()
