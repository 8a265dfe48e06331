"""Slices come out in spatial order along the slice normal, whatever InstanceNumber and file names say."""
from __future__ import annotations

import hashlib
import re
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import tifffile

from producer.local import run_local
from producer.scan import Instance, order_instances, scan
from shared.options import ConvertOptions

from .synthetic import write_series


def scramble_names(paths: list[Path], seed: int) -> list[Path]:
    """Rename the files in a random order, so neither names nor numbers follow anatomy."""
    order = np.random.default_rng(seed).permutation(len(paths))
    temp = [p.rename(p.with_name(f"tmp{i}")) for i, p in enumerate(paths)]
    return [t.rename(t.with_name(f"f{order[i]:05d}.dcm")) for i, t in enumerate(temp)]


def along_normal(path: Path) -> float:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    return float(np.array(ds.ImagePositionPatient, dtype=float) @ np.cross(iop[:3], iop[3:]))


def the_manifest(dest: Path) -> tuple[Path, dict]:
    [path] = dest.glob("*/*/manifest.json")
    return path.parent, json.loads(path.read_text())


def assert_spatial_order(paths: list[Path], dest: Path, tiff_checks: list[int] | None = None) -> None:
    """Output N is the N-th lowest slice along the normal: by the manifest's source hashes for
    every slice and by the pixels read back from the TIFF for the slices checked."""
    expected = sorted(paths, key=along_normal)
    series_dir, manifest = the_manifest(dest)
    assert manifest["counts"]["instances"] == manifest["counts"]["converted"] == len(paths)
    got = [r["source_sha256"] for r in sorted(manifest["instances"], key=lambda r: r["index"])]
    assert got == [hashlib.sha256(p.read_bytes()).hexdigest() for p in expected]
    for index in tiff_checks if tiff_checks is not None else range(1, len(paths) + 1):
        stored = tifffile.imread(series_dir / f"{index:04d}.tiff")
        assert np.array_equal(stored, pydicom.dcmread(expected[index - 1]).pixel_array)


def test_200_slices_in_spatial_order_though_instance_numbers_run_backwards(tmp_path):
    paths = scramble_names(write_series(tmp_path / "in", slices=200, size=64, seed=1), seed=2)
    numbers = {p: int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in paths}
    lowest = min(paths, key=along_normal)
    assert numbers[lowest] == 200 and along_normal(lowest) == -120.0  # InstanceNumber is backwards
    summary = run_local([str(tmp_path / "in")], str(tmp_path / "out"),
                        ConvertOptions(formats=("tiff",), deid=False), workers=2)
    assert (summary.series, summary.instances, summary.outputs, summary.failures) == (1, 200, 200, [])
    assert_spatial_order(paths, tmp_path / "out")


def test_512_series_in_spatial_order(tmp_path):
    """Full-size slices: order by hashes for all, pixels of the ends and the middle."""
    paths = scramble_names(write_series(tmp_path / "in", slices=40, size=512, seed=3), seed=4)
    summary = run_local([str(tmp_path / "in")], str(tmp_path / "out"),
                        ConvertOptions(formats=("png", "tiff"), deid=False), workers=1)
    assert (summary.instances, summary.outputs, summary.failures) == (40, 80, [])
    assert_spatial_order(paths, tmp_path / "out", tiff_checks=[1, 20, 40])


def rotation(ax: float, az: float) -> np.ndarray:
    """Rotation about x by ax then about z by az (degrees)."""
    a, b = np.radians(ax), np.radians(az)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rz = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    return rz @ rx


def test_oblique_series_orders_along_its_normal_not_along_z(tmp_path):
    """A gantry-tilted series (30° about x, 20° about z): each slice also shifts in-plane along
    the column direction, by enough that sorting by the z coordinate reverses the true order."""
    paths = write_series(tmp_path / "in", slices=24, size=32, seed=5)
    rot = rotation(30, 20)
    row, col = rot @ [1.0, 0, 0], rot @ [0, 1.0, 0]
    normal = np.cross(row, col)
    numbers = np.random.default_rng(6).permutation(len(paths)) + 1
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row, *col)]
        ipp = 2.0 * k * normal - 12.0 * k * col  # col has z component -sin(30°): z falls as k rises
        ds.ImagePositionPatient = [round(float(v), 4) for v in ipp]
        ds.InstanceNumber = int(numbers[k])
        ds.save_as(path, enforce_file_format=True)
    zs = [float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) for p in paths]
    assert zs == sorted(zs, reverse=True)  # by z the order would be exactly backwards
    paths = scramble_names(paths, seed=7)
    run_local([str(tmp_path / "in")], str(tmp_path / "out"), ConvertOptions(formats=("tiff",), deid=False))
    assert_spatial_order(paths, tmp_path / "out")
    assert [round(along_normal(p), 3) for p in sorted(paths, key=along_normal)][:3] == [0.0, 2.0, 4.0]


def inst(source: str, number: int | None, position: float | None, sop: str = "") -> Instance:
    return Instance(source, "1.2", "1.2.3", sop or source, number, position)


def test_falls_back_to_instance_number_when_any_position_is_missing():
    found = [inst("a", 3, 10.0), inst("b", 1, None), inst("c", 2, -5.0), inst("d", None, 1.0)]
    assert [i.source for i in order_instances(found)] == ["b", "c", "a", "d"]


def test_ties_break_on_instance_number_then_uid():
    found = [inst("a", 2, 0.0, "9"), inst("b", 1, 0.0, "8"), inst("c", 1, 0.0, "7"), inst("d", 0, -1.0)]
    assert [i.source for i in order_instances(found)] == ["d", "c", "b", "a"]


def test_series_are_grouped_by_series_uid(tmp_path):
    a = write_series(tmp_path / "a", slices=3, size=16, seed=8)
    b = write_series(tmp_path / "b", slices=2, size=16, seed=9)
    found = scan([str(tmp_path)])
    assert sorted(len(s.instances) for s in found.series) == [2, 3]
    for series in found.series:
        members = {Path(i.source).parent.name for i in series.instances}
        assert len(members) == 1
    assert {Path(i.source) for s in found.series for i in s.instances} == set(a) | set(b)


@pytest.mark.parametrize("iop", [[0, 0, 0, 0, 0, 0], [1, 0, 0, 1, 0, 0], [1, 0, 0]])
def test_degenerate_orientation_has_no_position(tmp_path, iop):
    """Zero, parallel or short direction cosines give no normal: ordering falls back to numbers."""
    [path] = write_series(tmp_path, slices=1, size=16, seed=10)
    ds = pydicom.dcmread(path)
    ds.ImageOrientationPatient = iop
    ds.save_as(path, enforce_file_format=True)
    [series] = scan([str(path)]).series
    assert series.instances[0].position is None


def test_slice_position_is_image_position_along_the_normal_to_the_last_bit():
    """The scanner's plain-float position equals numpy's cross and dot products, for oblique
    planes too; NaN directions give no position, nor a missing or malformed attribute."""
    from pydicom.dataset import Dataset

    from producer.scan import _slice_position

    rng = np.random.default_rng(7)
    for _ in range(200):
        row = rng.normal(size=3)
        row /= np.linalg.norm(row)
        col = np.cross(row, rng.normal(size=3))
        col /= np.linalg.norm(col)
        ipp = rng.uniform(-400, 400, 3)
        ds = Dataset()  # the values as pydicom converts them (DS multi-values)
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in ipp]
        values = {"ImageOrientationPatient": ds.ImageOrientationPatient, "ImagePositionPatient": ds.ImagePositionPatient}
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        expected = float(np.array([float(v) for v in ds.ImagePositionPatient]) @ np.cross(iop[:3], iop[3:]))
        assert _slice_position(values) == pytest.approx(expected, rel=1e-12, abs=1e-9)
    assert _slice_position({**values, "ImageOrientationPatient": ["nan", 0, 0, 0, 1, 0]}) is None
    assert _slice_position({**values, "ImagePositionPatient": "12.5"}) is None  # one value, not three
    assert _slice_position({"ImagePositionPatient": values["ImagePositionPatient"]}) is None


def test_a_file_named_twice_is_scanned_once(tmp_path):
    """The same directory twice, a directory inside another source, a symlinked directory and
    file: each file once, named as first met; a dangling link is kept (it is skipped as
    unreadable by the scan, with its reason)."""
    from producer.scan import unique_files

    paths = write_series(tmp_path / "src", slices=3, size=16)
    (tmp_path / "alias").symlink_to(tmp_path / "src")
    (tmp_path / "one.dcm").symlink_to(paths[0])
    (tmp_path / "dangling.dcm").symlink_to(tmp_path / "gone.dcm")
    found = unique_files([str(tmp_path / "src"), str(tmp_path), str(tmp_path / "alias"), str(paths[1])])
    assert sorted(found[:3]) == sorted(str(p) for p in paths)
    assert found[3:] == [str(tmp_path / "dangling.dcm")]


def test_uids_that_are_not_uids_name_no_directory(tmp_path):
    """Without de-identification the output directories are the file's own UIDs; a Study or
    Series Instance UID holding other text (a name, a date, ``../``) is replaced by a UID derived
    from it, the same for every file of its series, and the run converts every series."""
    written = []
    for name, study, series in [("a", "DOE^JANE 19370101", "1.2.3"), ("b", "../../escape", "x/../../y"),
                                ("c", "1.2.840.10008.999.01", "1.2.840.10008.999.02")]:
        for k, path in enumerate(write_series(tmp_path / "in" / name, slices=2, size=16, seed=len(written))):
            ds = pydicom.dcmread(path)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series  # pydicom warns, and writes it
            ds.save_as(path)
            written.append(path)
    dest = tmp_path / "out"
    summary = run_local([str(tmp_path / "in")], str(dest), ConvertOptions(formats=("png",), deid=False))
    assert (summary.series, summary.converted, summary.failures) == (3, 6, [])
    dirs = sorted(str(p.parent.relative_to(dest)) for p in dest.glob("*/*/manifest.json"))
    assert "1.2.840.10008.999.01/1.2.840.10008.999.02" in dirs  # a UID (leading zeros too) is itself
    assert all(re.fullmatch(r"[0-9.]+/[0-9.]+", d) for d in dirs) and len(dirs) == 3
    everything = b"".join(p.read_bytes() for p in dest.rglob("*") if p.is_file())
    assert b"DOE" not in everything and b"escape" not in everything and not (tmp_path / "escape").exists()


def test_a_rerun_stopped_midway_leaves_no_manifest_that_no_longer_matches(tmp_path, monkeypatch):
    """The earlier run's manifest goes before outputs are rewritten: a re-run with other options
    stopped after its first chunk leaves the series without a manifest (incomplete, as the
    README says), not with one whose hashes describe the earlier files."""
    import shared.chain as chain

    paths = write_series(tmp_path / "in", slices=6, size=16, seed=21)
    dest = tmp_path / "out"
    run_local([str(tmp_path / "in")], str(dest), ConvertOptions(formats=("png",), deid=False))
    folder, _ = the_manifest(dest)
    real = chain.convert_chunk

    def stopped(tasks):
        real(tasks)
        raise KeyboardInterrupt  # Ctrl-C after the first chunk's outputs are rewritten

    monkeypatch.setattr(chain, "chunk_size", lambda n, processes: 2)
    monkeypatch.setattr(chain, "convert_chunk", stopped)
    with pytest.raises(KeyboardInterrupt):
        run_local([str(tmp_path / "in")], str(dest), ConvertOptions(formats=("png",), deid=False, window="lung"))
    assert not (folder / "manifest.json").exists() and len(paths) == 6
