"""bench/: the yardsticks make what the project makes, children are measured, results add up."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

from bench import data, report, yardsticks
from bench import run as bench_run
from bench.contenders import contenders
from bench.measure import Sample, run_child
from bench.run import main as bench_main
from shared.chain import SeriesJob, convert_series
from shared.options import ConvertOptions


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    return data.series(tmp_path_factory.mktemp("bench"), slices=3, size=64)


def _read(path) -> np.ndarray:
    return cv2.imdecode(np.fromfile(str(path), np.uint8), cv2.IMREAD_UNCHANGED)


def test_floor_png_holds_the_projects_pixels(series, tmp_path):
    """The floor does the same job: window 1 of the file, truncated to 8 bits, as the chain does."""
    yardsticks.floor(str(series), str(tmp_path / "floor"), "png+tiff")
    opts = ConvertOptions(formats=("png",), deid=False)
    convert_series(SeriesJob("s/t", data.files(series), str(tmp_path / "ours"), opts))
    floor_pngs = sorted((tmp_path / "floor").glob("*.png"))
    ours = sorted((tmp_path / "ours" / "s" / "t").glob("*.png"))
    assert len(floor_pngs) == len(ours) == 3
    for a, b in zip(floor_pngs, ours):  # same file order: slice files are written in position order
        assert np.array_equal(_read(a), _read(b))
    tiff = sorted((tmp_path / "floor").glob("*.tiff"))[0]
    import tifffile

    assert np.array_equal(tifffile.imread(tiff), pydicom.dcmread(data.files(series)[0]).pixel_array)


def test_floor_in_parts_writes_what_one_floor_writes(series, tmp_path):
    """The machine's yardstick for N workers: N floors on every N-th file, the same files out."""
    from bench.contenders import REPO, _floor_parts
    from bench.measure import run_child

    assert yardsticks.floor(str(series), str(tmp_path / "one"), "png") == 3
    assert yardsticks.floor(str(series), str(tmp_path / "x"), "png", (2, 2)) == 1
    s = run_child(_floor_parts(2).argv(str(series), str(tmp_path / "two")), cwd=str(REPO))
    assert s.ok
    one, two = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "two").iterdir())
    assert [p.name for p in one] == [p.name for p in two] and len(one) == 3
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))


@pytest.mark.parametrize("kind", sorted(data.COMPRESSED))
def test_compressed_copies_are_lossless(series, kind):
    copy = data.compressed_copy(series, kind)
    for raw, enc in zip(data.files(series), data.files(copy)):
        ds = pydicom.dcmread(enc)
        assert ds.file_meta.TransferSyntaxUID == data.COMPRESSED[kind]
        assert np.array_equal(ds.pixel_array, pydicom.dcmread(raw).pixel_array)
    assert data.compressed_copy(series, kind) == copy  # cached: made once


def test_run_child_measures_cpu_rss_and_reports_failures(tmp_path):
    burn = "import numpy as np; a = np.ones(64 << 20, np.uint8); s = 0\nfor i in range(300000): s += i"
    ok = run_child([sys.executable, "-c", burn])
    assert ok.ok and ok.wall > 0 and ok.cpu > 0 and ok.rss_mb >= 64
    bad = run_child([sys.executable, "-c", "raise SystemExit('no such series')"], log=str(tmp_path / "log"))
    assert not bad.ok and bad.error == "exit 1: no such series"
    missing = run_child(["dicomfleet-no-such-tool"], log=str(tmp_path / "log"))
    assert not missing.ok and missing.error.startswith("cannot start dicomfleet-no-such-tool")


def test_peak_rss_is_the_childs_not_the_harness():
    """Linux keeps peak RSS across exec: a child spawned from a big harness must not inherit it."""
    ballast = np.ones(256 << 20, np.uint8)
    small = run_child([sys.executable, "-c", "pass"])
    assert ballast.sum() == 256 << 20 and small.ok and small.rss_mb < 64


def test_targets_are_ratios_of_medians():
    rows = {name: {"name": name, "ok": True, "wall_s": wall} for name, wall in
            {"floor png": 1.0, "convert png w1": 1.2, "dicom2jpg": 1.8, "dcmj2pnm per file": 7.2,
             "convert png w2": 0.7}.items()}
    got = {(c["issue"], c["target"]): (c["value"], c["met"]) for c in report.targets(rows, 2)}
    assert got[(2, "png w1 wall ÷ floor png")] == (1.2, True)
    assert got[(6, "png w1 wall ÷ floor png")] == (1.2, False)
    assert got[(6, "dicom2jpg wall ÷ png w1")] == (1.5, True)
    assert got[(6, "dcmj2pnm per file wall ÷ png w1")] == (6.0, True)
    assert got[(6, "png speed-up w2 ÷ w1 (≥ 0.85·N)")] == (1.714, True)
    assert got[(6, "floor png16 wall ÷ png16 w1 (beat the floor)")] == (None, None)
    assert got[(3, "png w1 deid wall ÷ png w1 (de-id adds ≤ 10%)")] == (None, None)


def test_target_ratios_pair_the_runs_of_a_round():
    """A slow phase of the host that caught the floor in rounds 1-2 and the chain only in round 2
    moves the medians' ratio (1.25 / 2.0) but not the ratio within each round; a failed run
    leaves its round out."""
    rows = {"floor png": {"name": "floor png", "ok": True, "wall_s": 2.0, "walls": [1.0, 2.0, 2.0],
                          "rounds": [0, 1, 2]},
            "convert png w1": {"name": "convert png w1", "ok": True, "wall_s": 1.25,
                               "walls": [1.2, 1.25, 2.4], "rounds": [0, 1, 2]},
            "dicom2jpg": {"name": "dicom2jpg", "ok": True, "wall_s": 2.5, "walls": [1.8, 3.6],
                          "rounds": [0, 2]}}
    got = {(c["issue"], c["target"]): c["value"] for c in report.targets(rows, 1)}
    assert got[(6, "png w1 wall ÷ floor png")] == 1.2  # median of 1.2, 0.625, 1.2
    assert got[(6, "dicom2jpg wall ÷ png w1")] == 1.5  # rounds 0 and 2: 1.8/1.2, 3.6/2.4
    assert report.paired_ratio(rows["floor png"], rows["convert png w1"], less_a=0.4, less_b=0.2) \
        == pytest.approx(statistics.median([0.6 / 1.0, 1.6 / 1.05, 1.6 / 2.2]))


def test_targets_for_deid_startup_and_fleet():
    rows = {name: {"name": name, "ok": True, "wall_s": wall} for name, wall in
            {"floor png": 1.0, "convert png w1": 1.2, "convert png w1 deid": 1.26, "convert png w2": 0.8,
             "floor png w2": 0.65,
             "fleet png w1": 1.0, "fleet png w2": 0.55, "convert png w2 [s3]": 0.5}.items()}
    got = {(c["issue"], c["target"]): (c["value"], c["met"])
           for c in report.targets(rows, 2, startup=0.4, floor_startup=0.3)}
    assert got[(3, "png w1 deid wall ÷ png w1 (de-id adds ≤ 10%)")] == (1.05, True)
    assert got[(6, "floor png wall ÷ png w1 (beat the floor)")] == (0.833, False)
    # (1.0-0.3)/(1.2-0.4): slice for slice, each side without its own start-up
    assert got[(6, "  same, per slice: start-up excluded (floor 0.30 s, ours 0.40 s)")] == (0.875, False)
    assert got[(6, "png speed-up w2 ÷ w1 (≥ 0.85·N)")] == (1.5, False)
    assert got[(6, "  same, start-up (0.40 s) excluded")] == (2.0, True)  # (1.2-0.4)/(0.8-0.4)
    assert got[(6, "  the machine: floor png w1 ÷ w2 (independent processes)")] == (1.538, False)
    assert got[(6, "  same, start-up (0.30 s) excluded")] == (2.0, True)  # (1.0-0.3)/(0.65-0.3)
    assert got[(4, "fleet speed-up w2 ÷ w1 (≥ 0.85·N)")] == (1.818, True)
    assert got[(4, "fleet png w2 ÷ png w2 without start-up (overhead < 20%)")] == (1.375, False)
    assert got[(4, "  same, local also to the S3 server: the queue's own overhead")] == (1.1, True)
    # the N-worker side's own start-up, its pool's included, when it was measured
    pooled = {c["target"]: c["value"] for c in report.targets(rows, 2, startup=0.4, floor_startup=0.3,
                                                               pool_startup=0.5)}
    assert pooled["  same, start-up (w1 0.40 s, w2 0.50 s) excluded"] == 2.667  # (1.2-0.4)/(0.8-0.5)


def test_warm_reads_every_file_of_a_series(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"x" * 1000)
    (tmp_path / "b.dcm").write_bytes(b"y" * 24)
    assert data.warm(tmp_path) == 1024


def test_speed_up_on_the_long_series_of_the_memory_check():
    memory = [{"workers": 1, "slices_per_s_1000": 200.0}, {"workers": 2, "slices_per_s_1000": 350.0}]
    assert report.long_series_targets(memory, 2, 1000) == [
        {"target": "  same, a 1000-slice series (whole runs)", "issue": 6, "value": 1.75, "limit": 1.7,
         "met": True}]
    assert report.long_series_targets(memory[:1] + [{"workers": 2, "error": "x"}], 2, 1000) == []
    assert report.long_series_targets(memory, 1, 1000) == []


def test_long_series_speed_up_pairs_the_rounds_and_takes_out_the_start_up():
    # round 1 ran through a slow phase of the host: paired, it weighs on both sides
    memory = [{"workers": 1, "slices_per_s_1000": 200.0, "walls_1000": [5.0, 10.0, 5.2]},
              {"workers": 2, "slices_per_s_1000": 350.0, "walls_1000": [2.5, 6.0, 2.6]}]
    assert report.long_series_targets(memory, 2, 1000, startup=0.5, pool_startup=0.6)[1]["value"] == \
        round(statistics.median([4.5 / 1.9, 9.5 / 5.4, 4.7 / 2.0]), 3)
    got = report.long_series_targets(memory, 2, 1000, startup=0.5)
    assert [row["target"] for row in got] == ["  same, a 1000-slice series (whole runs)",
                                              "  same, a 1000-slice series, start-up excluded"]
    assert got[0]["value"] == 2.0  # median of 2.0, 1.667, 2.0
    assert got[1]["value"] == round(statistics.median([4.5 / 2.0, 9.5 / 5.5, 4.7 / 2.1]), 3)
    assert [row["met"] for row in got] == [True, True]


def test_memory_check_runs_in_rounds_and_keeps_the_walls(tmp_path, monkeypatch):
    calls = []

    def fake_child(argv, cwd, log):
        n, src = int(argv[argv.index("--workers") + 1]), argv[2]
        calls.append((n, Path(src).name))
        return Sample(1.0 / n, 1.0, 40.0 + len(calls) % 2, True, "")

    monkeypatch.setattr(bench_run, "run_child", fake_child)
    monkeypatch.setattr(bench_run.data, "series", lambda workdir, slices: tmp_path / f"ct{slices}")
    monkeypatch.setattr(bench_run.data, "warm", lambda path: 0)
    rows = bench_run.memory_check(tmp_path, (3, 7), 2, 2)
    first = [(1, "ct3"), (1, "ct7"), (2, "ct3"), (2, "ct7")]
    assert calls == first + first[::-1]  # odd rounds in reverse
    assert [row["walls_7"] for row in rows] == [[1.0, 1.0], [0.5, 0.5]]
    assert [row["slices_per_s_7"] for row in rows] == [7.0, 14.0]


def test_every_contender_has_a_floor_and_missing_tools_skip():
    every = contenders(2, install_peers=False)
    names = {c.name for c in every}
    assert {"floor png", "convert png w1", "convert png w2", "convert png+tiff w2",
            "convert png w1 [j2k]", "dcmj2pnm per file", "fleet png w1", "fleet png w2",
            "convert png w2 [s3]"} <= names
    for c in every:
        assert c.floor in names, c.name
    fleet = next(c for c in every if c.group == "fleet")
    assert fleet.skip or fleet.argv("in", "out")


def test_bench_run_end_to_end(tmp_path, capsys):
    out = tmp_path / "results.json"
    code = bench_main(["--slices", "3", "--size", "64", "--runs", "1", "--workdir", str(tmp_path / "w"),
                       "--out", str(out), "--only", "convert png w1,pydicom", "--no-compressed",
                       "--no-install", "--no-stages", "--workers", "2"])
    results = json.loads(out.read_text())
    assert code == 0
    rows = results["contenders"]
    assert set(rows) == {"floor png", "convert png w1", "convert png w1 deid", "pydicom+Pillow loop"} - \
        set(results["skipped"])
    assert rows["floor png"]["x_floor_wall"] == 1.0
    for row in rows.values():
        assert row["ok"] and row["slices_per_s"] > 0 and row["peak_rss_mb"] > 10
        assert row["x_floor_wall"] == pytest.approx(row["wall_s"] / rows["floor png"]["wall_s"], abs=1e-3)
    assert results["machine"]["nproc"] >= 1 and results["parameters"]["slices"] == 3
    sha = results["machine"]["sha256"]  # how fast this host hashes: the chain's lanes or OpenSSL
    assert sha["lanes"] in (1, 8, 16) and sha["openssl_gbps"] > 0 and sha["chain_gbps"] > 0
    printed = capsys.readouterr().out
    assert "convert png w1" in printed and f"as the chain hashes ({sha['lanes']} lane" in printed
    assert 0 < results["startup_s"] < 30  # a one-slice run: the fixed cost of every run
    assert 0 < results["floor_startup_s"] < 30
    assert 0 < results["pool_startup_s"] < 30  # the same with a pool of two
