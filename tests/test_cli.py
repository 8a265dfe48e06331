"""`dicomfleet convert`: exit codes, the summary, failures with reasons, output names, the manifest."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner

from producer.cli import app

from .conftest import TEST_FILES, bundled
from .synthetic import write_series

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

SUMMARY = re.compile(r"^(\d+) series, (\d+) instances, (\d+) converted, (\d+) outputs, (\d+) failed "
                     r"in \d+\.\d s \(\d+\.\d instances/s\)$")


def convert(*args: str, env: dict | None = None):
    """Run `dicomfleet convert` in-process; returns (exit code, output lines, summary numbers)."""
    result = CliRunner().invoke(app, ["convert", *args], env=env)
    assert "Traceback" not in result.output
    if result.exception is not None:
        assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    match = next((m for m in map(SUMMARY.match, lines) if m), None)
    return result.exit_code, lines, tuple(int(g) for g in match.groups()) if match else None


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> list[Path]:
    """Five 32² synthetic CT slices (InstanceNumber backwards, two windows in the file)."""
    return write_series(tmp_path_factory.mktemp("series"), slices=5, size=32, seed=11)


def series_dir(out: Path) -> Path:
    [manifest] = out.glob("*/*/manifest.json")
    return manifest.parent


def test_everything_converted_exits_0(series, tmp_path):
    code, lines, numbers = convert(str(series[0].parent), "--out", str(tmp_path), "--no-deid",
                                   "-f", "png", "-f", "tiff", "--workers", "1")
    assert code == 0 and numbers == (1, 5, 5, 10, 0) and len(lines) == 1
    names = sorted(p.name for p in series_dir(tmp_path).iterdir())
    assert names == [f"{i:04d}.{ext}" for i in range(1, 6) for ext in ("png", "tiff")] + ["manifest.json"]


def test_failures_exit_1_each_listed_with_its_reason(series, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for p in series[:3]:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "cut.dcm").write_bytes(series[3].read_bytes()[:-100])  # same series, pixel data cut short
    (src / "mr.dcm").write_bytes(bundled("MR_truncated.dcm").read_bytes())
    (src / "notes.txt").write_text("not DICOM")
    code, lines, numbers = convert(str(src), "--out", str(tmp_path / "out"), "--no-deid", "--workers", "2")
    assert code == 1 and numbers == (2, 5, 3, 3, 2)
    failed = sorted(line.strip() for line in lines if line.strip().startswith("failed "))
    study, series_uid = (pydicom.dcmread(series[3], stop_before_pixels=True).get(k)
                         for k in ("StudyInstanceUID", "SeriesInstanceUID"))
    mr = pydicom.dcmread(bundled("MR_truncated.dcm"), stop_before_pixels=True)
    assert failed == sorted([
        f"failed {study}/{series_uid}/0004: (7FE0,0010) Pixel Data holds 1948 bytes but the header declares "
        "2048 (1 frame(s) × 32 × 32 × 1 sample(s) × 16 bits); truncated file?",
        f"failed {mr.StudyInstanceUID}/{mr.SeriesInstanceUID}/0001: (7FE0,0010) Pixel Data holds 8130 bytes "
        "but the header declares 8192 (1 frame(s) × 64 × 64 × 1 sample(s) × 16 bits); truncated file?",
    ])
    assert "  skipped 1 file(s): not DICOM" in lines
    manifest = json.loads((tmp_path / "out" / study / series_uid / "manifest.json").read_text())
    assert manifest["counts"] == {"instances": 4, "converted": 3, "failed": 1, "outputs": 3}
    [error] = manifest["errors"]
    assert error["index"] == 4 and error["code"] == "pixel_budget"
    assert error["source_sha256"] == hashlib.sha256((src / "cut.dcm").read_bytes()).hexdigest()


@pytest.mark.parametrize("args,message", [
    (["--window", "nonsense"], "invalid window 'nonsense': expected one of default, auto, lung"),
    (["--window", "40,0"], "window width must be >= 1, got '40,0'"),
    (["--format", "gif"], "Invalid value for '--format'"),
    (["--quality", "0"], "quality must be 1..100, got 0"),
    (["--max-pixels", "0"], "max_pixels must be positive, got 0"),
])
def test_bad_options_exit_2(series, tmp_path, args, message):
    code, lines, numbers = convert(str(series[0]), "--out", str(tmp_path), "--no-deid", *args)
    assert code == 2 and numbers is None
    assert message in " ".join(" ".join(lines).split())
    assert not any(tmp_path.iterdir())


def test_bad_window_from_the_environment_exits_2(series, tmp_path):
    code, lines, _ = convert(str(series[0]), "--out", str(tmp_path), "--no-deid", env={"DICOMFLEET_WINDOW": "wide"})
    assert code == 2 and "invalid window 'wide'" in lines[-1]


def test_missing_and_absent_sources_exit_2(tmp_path):
    code, lines, _ = convert("--out", str(tmp_path), "--no-deid")
    assert code == 2 and "Missing argument 'SOURCES...'." in " ".join(lines)
    code, lines, _ = convert(str(tmp_path / "nowhere"), "--out", str(tmp_path), "--no-deid")
    assert code == 2 and lines == [f"error: no such file or directory: {tmp_path / 'nowhere'}"]


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    exe = Path(sys.executable).with_name("dicomfleet")
    run = subprocess.run([str(exe), "convert", str(tmp_path / "nowhere"), "--out", str(tmp_path), "--no-deid"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.strip() == f"error: no such file or directory: {tmp_path / 'nowhere'}"


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_installed_command_leaves_everything_written_when_it_skips_the_teardown(series, tmp_path, workers,
                                                                                   monkeypatch):
    """The installed `convert` ends with os._exit after a run: its summary and failure lines
    reach a pipe whole, its exit status is the run's, and its outputs, manifest and pseudonym map
    are complete, with one process or a pool."""
    src = tmp_path / "in"
    src.mkdir()
    for p in series:
        (src / p.name).write_bytes(p.read_bytes())
    (src / "cut.dcm").write_bytes(series[0].read_bytes()[:-100])
    from shared.deid.mapping import new_key, open_map

    (tmp_path / "map.key").write_text(new_key())
    exe = Path(sys.executable).with_name("dicomfleet")
    env = {"PATH": "/usr/bin:/bin", "DICOMFLEET_DEID_KEY": "k" * 40, "DICOMFLEET_PSEUDONYM_MAP_KEY_FILE":
           str(tmp_path / "map.key"), "HOME": str(tmp_path)}
    run = subprocess.run([str(exe), "convert", str(src), "--out", str(tmp_path / "out"), "--workers", workers,
                          "--pseudonym-map", str(tmp_path / "map.bin"), "-f", "png", "-f", "tiff"],
                         capture_output=True, text=True, timeout=120, env=env)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 1, run.stderr
    assert SUMMARY.match(next(line for line in lines if SUMMARY.match(line))).groups() == ("1", "6", "5", "10", "1")
    assert sum(line.strip().startswith("failed ") for line in lines) == 1
    manifest = json.loads(series_dir(tmp_path / "out").joinpath("manifest.json").read_text())
    assert len(manifest["instances"]) == 6 and manifest["counts"]["outputs"] == 10
    for record in manifest["instances"]:
        for output in record["outputs"]:
            data = (tmp_path / "out" / output["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == output["sha256"]
    monkeypatch.setenv("DICOMFLEET_PSEUDONYM_MAP_KEY_FILE", str(tmp_path / "map.key"))
    entries = open_map(str(tmp_path / "map.bin")).entries()  # every line whole: each decrypts
    pseudonyms = {v for e in entries for v in e.pairs.values()}
    study, series_uid = series_dir(tmp_path / "out").relative_to(tmp_path / "out").parts
    assert len(entries) >= 5 and {study, series_uid} <= pseudonyms  # one per instance, less repeats


def test_a_local_convert_does_not_import_pydantic_nor_the_fleet(series, tmp_path):
    """Every run pays for what the command line imports: a one-slice `convert` (stderr not a
    terminal) loads no pydantic (typer's option adapters: ~0.1 s a run), no Celery, no MinIO client,
    no rich, which only a terminal's progress bar and colours need, no OpenCV, which a PNG that is
    not resized never needs, not requests nor tqdm, which pydicom would import for downloads, and
    with one worker no multiprocessing (no pool); with de-identification off, not the step's
    profile tables and pseudonyms, and without a PDF nor --slices, not the report's module."""
    code = ("import sys, producer.cli; "
            f"rc = producer.cli.app(['convert', {str(series[0])!r}, '--out', {str(tmp_path)!r}, '--no-deid', "
            "'--workers', '1'], standalone_mode=False); "
            "print(rc, sorted(m for m in ('pydantic', 'celery', 'minio', 'rich', 'typer', 'cv2', 'requests', "
            "'tqdm', 'multiprocessing', 'shared.deid.step', 'shared.deid.profile', 'shared.report') "
            "if m in sys.modules), 'shared.deid.metadata' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert run.stdout.strip() == "0 [] True"  # the output whitelist is read, the package's light part
    assert SUMMARY.match(run.stderr.strip())
    assert len(list(tmp_path.glob("*/*/0001.png"))) == 1


@pytest.mark.parametrize("how", ["flag", "env"])
def test_pixel_budget_from_flag_or_environment(series, tmp_path, how):
    args, env = (["--max-pixels", "1000"], None) if how == "flag" else ([], {"DICOMFLEET_MAX_PIXELS": "1000"})
    code, lines, numbers = convert(str(series[0]), "--out", str(tmp_path), "--no-deid", *args, env=env)
    assert code == 1 and numbers == (1, 1, 0, 0, 1)
    assert lines[-1].endswith("/0001: 1 frame(s) × 32 × 32 × 1 sample(s) = 1024 samples exceeds the "
                              "pixel budget of 1000 (DICOMFLEET_MAX_PIXELS)")


def test_multiframe_outputs_are_named_per_frame(tmp_path):
    code, _, numbers = convert(str(bundled("rtdose.dcm")), "--out", str(tmp_path), "--no-deid",
                               "-f", "png", "-f", "jpeg", "-f", "npy")
    assert code == 0 and numbers == (1, 1, 1, 31, 0)
    names = sorted(p.name for p in series_dir(tmp_path).iterdir())
    frames = [f"0001_f{i:03d}" for i in range(1, 16)]
    assert names == sorted([f"{f}.png" for f in frames] + [f"{f}.jpg" for f in frames]
                           + ["0001.npy", "manifest.json"])
    manifest = json.loads((series_dir(tmp_path) / "manifest.json").read_text())
    frames_listed = [o["frame"] for o in manifest["instances"][0]["outputs"] if o["format"] == "png"]
    assert frames_listed == list(range(1, 16))
    assert np.load(series_dir(tmp_path) / "0001.npy").shape == (15, 10, 10)


def test_manifest_lists_every_output_with_its_hash(series, tmp_path):
    args = [str(series[0].parent), "--out", str(tmp_path), "--no-deid", "--workers", "1"]
    args += [a for f in ("png", "png16", "jpeg", "tiff", "npy") for a in ("-f", f)]
    code, _, numbers = convert(*args)
    assert code == 0 and numbers == (1, 5, 5, 25, 0)
    folder = series_dir(tmp_path)
    text = (folder / "manifest.json").read_text()
    manifest = json.loads(text)
    assert manifest["schema"] == 1 and manifest["deidentified"] is False and manifest["errors"] == []
    assert manifest["parameters"]["formats"] == ["png", "png16", "jpeg", "tiff", "npy"]
    assert manifest["counts"] == {"instances": 5, "converted": 5, "failed": 0, "outputs": 25}
    assert manifest["series"] == folder.relative_to(tmp_path).as_posix()
    by_position = sorted(series, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    for record, source in zip(sorted(manifest["instances"], key=lambda r: r["index"]), by_position):
        assert record["source_sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        assert record["window"] == {"center": 40.0, "width": 400.0, "function": "LINEAR", "source": "file:1"}
        assert {o["format"] for o in record["outputs"]} == {"png", "png16", "jpeg", "tiff", "npy"}
        for out in record["outputs"]:
            data = (tmp_path / out["path"]).read_bytes()
            assert out["sha256"] == hashlib.sha256(data).hexdigest() and out["size"] == len(data)
            if out["format"] == "jpeg":
                assert 0.9 < out["verification"]["ssim"] <= 1.0
            else:
                assert out["verification"] == "lossless"
            if out["format"] == "png16":
                assert out["offset"] == 0
    assert str(series[0].parent) not in text and "slice0" not in text  # no source paths
    convert(*args)  # a re-run writes the same bytes to the same keys
    assert (folder / "manifest.json").read_text() == text


def test_pydicom_test_files_through_the_command(tmp_path):
    """The whole bundled directory: the four unconvertible files listed with their reasons, the
    rest converted, non-images skipped and counted."""
    code, lines, numbers = convert(str(TEST_FILES), "--out", str(tmp_path), "--no-deid", "-f", "png",
                                   "-f", "tiff", "--workers", "2")
    assert code == 1
    series, instances, converted, outputs, failed = numbers
    assert (instances, converted, failed) == (93, 89, 4)
    reasons = [line.split(": ", 1)[1] for line in lines if line.strip().startswith("failed ")]
    assert len(reasons) == 4
    assert any(r.startswith("(7FE0,0010) Pixel Data holds 8130 bytes") for r in reasons)
    assert any("JPEG Extended (Process 2 and 4) pixel data could not be decoded" in r for r in reasons)
    assert any("the JPEG 2000 codestream declares 1024 × 3722445056" in r for r in reasons)
    assert any(r == "(0028,0008) NumberOfFrames has invalid value <a value of 4 characters, not shown>" for r in reasons)
    skipped = sum(int(m.group(1)) for m in (re.match(r"\s+skipped (\d+) file", x) for x in lines) if m)
    assert skipped == sum(1 for p in TEST_FILES.rglob("*") if p.is_file()) - 93


def test_deidentification_is_the_default(series, tmp_path):
    """Without --no-deid: refused with a clear reason while shared.deid is missing; once it is
    delivered, the run de-identifies (no original UID in any output path)."""
    env = {"DICOMFLEET_DEID_KEY": "11" * 32}
    code, lines, numbers = convert(str(series[0]), "--out", str(tmp_path), env=env)
    if importlib.util.find_spec("shared.deid") is None:
        assert code == 2 and numbers is None
        assert lines == ["error: de-identification is not available yet; pass --no-deid to convert "
                         "identifiable data"]
        return
    assert code in (0, 1) and numbers[1] == 1
    study = str(pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID)
    paths = [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")]
    assert paths and not any(study in p for p in paths)
    manifest = json.loads(next(tmp_path.glob("*/*/manifest.json")).read_text())
    assert manifest["deidentified"] is True


def test_the_installed_command_with_stdout_closed_still_exits_with_the_runs_status(series, tmp_path):
    """No stdout at all (a service manager, `>&-`): nothing to flush there, the run's status."""
    exe = Path(sys.executable).with_name("dicomfleet")
    run = subprocess.run(["bash", "-c", f'"{exe}" convert "{series[0].parent}" --out "{tmp_path}" --no-deid '
                          "--workers 1 >&-"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert SUMMARY.match(run.stderr.strip().splitlines()[-1]).groups() == ("1", "5", "5", "5", "0")


def test_a_profiler_around_the_command_still_writes_its_results(series, tmp_path):
    """Under a profiler (or coverage) the command exits as usual, so the tool's own exit writes
    its file: the fast exit is for the bare command only."""
    exe = Path(sys.executable).with_name("dicomfleet")
    run = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(tmp_path / "run.prof"), str(exe), "convert",
                          str(series[0].parent), "--out", str(tmp_path / "out"), "--no-deid", "--workers", "1"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    import pstats

    assert pstats.Stats(str(tmp_path / "run.prof")).total_calls > 1000


def test_the_installed_command_decodes_every_compressed_syntax_as_an_ordinary_import_does(tmp_path):
    """The installed command imports pydicom without its plugin libraries and hands them over at
    the first compressed instance (shared.runtime.load_pixel_plugins): every compressed transfer
    syntax among pydicom's files (lossy JPEG too, where the plugin chosen decides the pixels)
    converts to outputs byte for byte those of an in-process run, whose pydicom imported them."""
    from .conftest import header, image_files

    chosen: dict[str, str] = {}
    for name in image_files():
        syntax = header(name).file_meta.get("TransferSyntaxUID")
        if syntax is not None and syntax.is_compressed and syntax not in chosen:
            chosen[str(syntax)] = name
    assert len(chosen) >= 8  # JPEG baseline, extended, lossless (2), JPEG-LS (2), JPEG 2000 (2), RLE…
    src = tmp_path / "in"
    src.mkdir()
    for i, name in enumerate(chosen.values()):
        (src / f"{i:02d}.dcm").write_bytes(bundled(name).read_bytes())
    args = ["convert", str(src), "--no-deid", "--workers", "1", "-f", "png", "-f", "tiff"]
    exe = Path(sys.executable).with_name("dicomfleet")
    run = subprocess.run([str(exe), *args, "--out", str(tmp_path / "lean")], capture_output=True, text=True,
                         timeout=300)
    in_process = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "eager")])
    assert run.returncode == in_process.exit_code, run.stderr

    def hashes(out: Path) -> dict[str, str]:
        return {o["path"]: o["sha256"] for m in out.glob("*/*/manifest.json")
                for r in json.loads(m.read_text())["instances"] for o in r["outputs"]}

    lean, eager = hashes(tmp_path / "lean"), hashes(tmp_path / "eager")
    assert len(eager) >= 2 * len(chosen) - 4 and lean == eager


@pytest.mark.parametrize("files,cores,expected", [(1, 8, 1), (15, 2, 1), (16, 2, 1), (32, 2, 2), (200, 2, 2),
                                                  (200, 32, 12), (0, 4, 1)])
def test_the_default_pool_is_sized_by_the_files(files, cores, expected):
    from producer.local import processes_for

    assert processes_for(files, cores) == expected


def test_a_handful_of_files_starts_no_pool_unless_processes_are_asked_for(series, tmp_path):
    """By default a short list converts in the command's own process (no multiprocessing loaded);
    `--workers 2` is taken at its word."""
    code = ("import sys, producer.cli as cli\n"
            "try:\n    cli.app(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
            "print('concurrent.futures.process' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "DICOMFLEET_WORKERS"}
    for name, extra, pooled in (("default", [], "False"), ("two", ["--workers", "2"], "True")):
        args = ["convert", str(series[0].parent), "--out", str(tmp_path / name), "--no-deid", *extra]
        run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                             env=env, cwd=Path(__file__).parent.parent)
        assert run.returncode == 0, run.stderr
        assert run.stdout.strip().splitlines()[-1] == pooled, name


@pytest.mark.parametrize("counts,instances_failed,below,code", [
    ({"done": 2}, 0, 0, 0), ({"done": 2}, 1, 0, 1), ({"done": 1, "failed": 1}, 0, 0, 1),
    ({"done": 2}, 0, 3, 3), ({"done": 2}, 1, 3, 1),
])
def test_status_exits_as_convert_does(counts, instances_failed, below, code):
    """A done job with a failed instance is a failure for `status`, as for `convert` and
    `submit --wait`: 1 before the flagged JPEGs' 3."""
    from collections import Counter

    from producer.status import StatusReport

    report = StatusReport(counts=Counter(counts), instances_failed=instances_failed, below_threshold=below)
    assert report.exit_code == code


@pytest.mark.parametrize("url,password,expected", [
    ("redis://r:6379/0", "", "redis://r:6379/0"),
    ("redis://r:6379/0", "p@ss/w#rd:1", "redis://:p%40ss%2Fw%23rd%3A1@r:6379/0"),
    ("rediss://r:6380/2", "pw", "rediss://:pw@r:6380/2?ssl_cert_reqs=required"),
    ("rediss://:own@r:6380/2?ssl_cert_reqs=none", "pw", "rediss://:own@r:6380/2?ssl_cert_reqs=none"),
    ("redis://alice@r:6379/0", "pw", "redis://alice:pw@r:6379/0"),  # an ACL user keeps its name
])
def test_redis_urls_take_the_password_encoded_and_verify_tls(url, password, expected):
    """The Redis password (a mounted file) goes into the URLs percent-encoded; a TLS URL says
    ssl_cert_reqs, which Celery's result backend refuses to start without."""
    from celery import Celery

    from shared.settings import Settings

    s = Settings(broker_url=url, result_backend=url, redis_password=password)
    assert s.broker == s.backend == expected
    backend = Celery("t", broker=s.broker, backend=s.backend).backend  # raises on a rediss:// URL without it
    assert backend.connparams.get("password") == ((password or None) if "own" not in url else "own")


@pytest.mark.parametrize("url", ["unix:///var/run/redis.sock?db=0", "redis+socket:///var/run/redis.sock"])
def test_a_unix_socket_redis_url_is_left_exactly_as_written(url):
    from shared.settings import Settings

    assert Settings(broker_url=url).broker == url and Settings(broker_url=url, redis_password="p").broker == url


def test_settings_repr_masks_a_password_written_into_a_url():
    from shared.settings import Settings

    shown = repr(Settings(broker_url="redis://:s3cr3t@r:6379/0", pushgateway_url="http://u:pw@p:9091",
                          result_backend="redis://:pa/ss#w?d@h:1/0",  # a token pasted unencoded
                          redis_password="x" * 12, s3_secret_key="y" * 12))
    assert "s3cr3t" not in shown and ":pw@" not in shown and "x" * 12 not in shown and "y" * 12 not in shown
    assert "pa/ss" not in shown and "redis://:***@h:1/0" in shown
    assert "redis://:***@r:6379/0" in shown and "http://u:***@p:9091" in shown


def test_the_gdcm_child_gets_none_of_the_fleets_secrets(monkeypatch):
    from shared.gdcm_child import _child_env

    monkeypatch.setenv("DICOMFLEET_DEID_KEY", "k" * 40)
    monkeypatch.setenv("DICOMFLEET_S3_SECRET_KEY", "s" * 40)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a" * 40)
    env = _child_env()
    assert not [k for k in env if k.startswith("DICOMFLEET_") or k.endswith("_KEY")]
    assert env.get("PATH") == __import__("os").environ.get("PATH")
