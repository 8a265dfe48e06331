"""Keys on one machine, and the encrypted reversible pseudonym map (access and erasure)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from cryptography.fernet import Fernet

from shared.deid.mapping import PseudonymMap
from tests.synthetic import PHI, write_series

DICOMFLEET = str(Path(sys.executable).parent / "dicomfleet")


def _run(tmp_path: Path, *args: str, stdin: str | None = None, **env_extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOMFLEET_")}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), COLUMNS="250", **env_extra)
    return subprocess.run([DICOMFLEET, *args], env=env, capture_output=True, text=True, input=stdin, timeout=120)


def _series(root: Path, patient_id: str, seed: int) -> Path:
    paths = write_series(root, slices=2, size=16, seed=seed)
    for p in paths:
        ds = pydicom.dcmread(p)
        ds.PatientID = patient_id
        ds.save_as(p, enforce_file_format=True)
    return root


def test_local_key_is_created_once_private_and_reused(tmp_path):
    src = _series(tmp_path / "in", "P1", 1)
    first = _run(tmp_path, "convert", str(src), "--out", str(tmp_path / "a"), "--workers", "2")
    assert first.returncode == 0, first.stderr
    key_file = tmp_path / "config" / "dicomfleet" / "deid.key"
    notices = [ln for ln in first.stderr.splitlines() if "key" in ln]
    assert notices == [f"created a new de-identification key in {key_file} (mode 0600): keep it to get "
                       "the same pseudonyms in later runs"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = key_file.read_text().strip()
    assert len(key) == 64 and key not in first.stderr + first.stdout
    second = _run(tmp_path, "convert", str(src), "--out", str(tmp_path / "b"))
    assert second.returncode == 0 and "key" not in second.stderr
    dirs = lambda out: sorted(p.relative_to(out) for p in out.glob("*/*"))  # noqa: E731
    assert dirs(tmp_path / "a") == dirs(tmp_path / "b")  # same key, same pseudonymous folders
    key_file.chmod(0o640)
    third = _run(tmp_path, "convert", str(src), "--out", str(tmp_path / "c"))
    assert third.returncode == 2 and "readable by other users" in third.stderr
    # a key linked in from elsewhere (a directory others could write to) is refused, not used
    key_file.chmod(0o600)
    planted = tmp_path / "planted.key"
    planted.write_text("A" * 64 + "\n")
    planted.chmod(0o600)
    key_file.unlink()
    key_file.symlink_to(planted)
    fourth = _run(tmp_path, "convert", str(src), "--out", str(tmp_path / "d"))
    assert fourth.returncode == 2 and "is a symbolic link" in fourth.stderr
    key_file.unlink()
    key_file.parent.chmod(0o777)
    fifth = _run(tmp_path, "convert", str(src), "--out", str(tmp_path / "e"))
    assert fifth.returncode == 2 and "writable by other users" in fifth.stderr
    key_file.parent.chmod(0o700)


def test_explicit_key_wins_and_no_file_is_created(tmp_path):
    src = _series(tmp_path / "in", "P1", 1)
    run = _run(tmp_path, "convert", str(src), "--out", str(tmp_path / "a"), DICOMFLEET_DEID_KEY="k" * 40)
    assert run.returncode == 0 and not (tmp_path / "config").exists()
    short = _run(tmp_path, "convert", str(src), "--out", str(tmp_path / "b"), DICOMFLEET_DEID_KEY="k" * 10)
    assert short.returncode == 2 and "too short" in short.stderr and "k" * 10 not in short.stderr


def test_map_is_encrypted_answers_access_and_forgets_one_patient(tmp_path):
    _series(tmp_path / "in" / "one", PHI["PatientID"], 1)
    _series(tmp_path / "in" / "two", "OTHER-PATIENT-77", 2)
    map_file = tmp_path / "map.enc"
    map_key = Fernet.generate_key().decode()
    env = {"DICOMFLEET_DEID_KEY": "m" * 40, "DICOMFLEET_PSEUDONYM_MAP_KEY": map_key}
    run = _run(tmp_path, "convert", str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--workers", "2",
               "--pseudonym-map", str(map_file), **env)
    assert run.returncode == 0, run.stderr
    raw = map_file.read_bytes()
    assert stat.S_IMODE(map_file.stat().st_mode) == 0o600
    assert PHI["PatientID"].encode() not in raw and b"OTHER-PATIENT" not in raw and b"1.2.826" not in raw
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("manifest.json")]
    assert all(m["deidentification"]["pseudonym_map"] is True for m in manifests)
    assert all(str(map_file) not in json.dumps(m) for m in manifests)

    # right of access, the patient read from stdin (kept out of argv)
    show = _run(tmp_path, "pseudonym-map", "show", str(map_file), stdin=PHI["PatientID"] + "\n", **env)
    assert show.returncode == 0, show.stderr
    (patient,) = json.loads(show.stdout)
    assert patient["patient"] == PHI["PatientID"] and patient["patient_pseudonym"].startswith("PAT")
    originals = [pydicom.dcmread(p) for p in sorted((tmp_path / "in" / "one").glob("*.dcm"))]
    pairs = patient["pairs"]
    study, series = pairs[originals[0].StudyInstanceUID], pairs[originals[0].SeriesInstanceUID]
    assert (tmp_path / "out" / study / series / "manifest.json").is_file()
    assert all(ds.SOPInstanceUID in pairs for ds in originals)
    assert pairs[PHI["PatientID"]] == patient["patient_pseudonym"]
    assert -3652 <= patient["date_shift_days"] <= -1

    # right to erasure, naming the patient by the pseudonymous study folder they see in the output
    beside = map_file.with_name(map_file.name + ".tmp")
    beside.symlink_to(tmp_path / "victim")  # the fixed temp name of before: now not written through
    forget = _run(tmp_path, "pseudonym-map", "forget", str(map_file), study, **env)
    assert forget.returncode == 0 and "of 1 patient(s)" in forget.stderr
    assert not (tmp_path / "victim").exists() and stat.S_IMODE(map_file.stat().st_mode) == 0o600
    assert not list(map_file.parent.glob(".forget-*"))
    left = PseudonymMap(str(map_file))
    os.environ["DICOMFLEET_PSEUDONYM_MAP_KEY"] = map_key
    try:
        assert {e.patient for e in left.entries()} == {"OTHER-PATIENT-77"}
    finally:
        del os.environ["DICOMFLEET_PSEUDONYM_MAP_KEY"]
    again = _run(tmp_path, "pseudonym-map", "show", str(map_file), PHI["PatientID"], **env)
    assert again.returncode == 1 and json.loads(again.stdout) == []
    wrong = _run(tmp_path, "pseudonym-map", "show", str(map_file), "x",
                 DICOMFLEET_PSEUDONYM_MAP_KEY=Fernet.generate_key().decode())
    assert wrong.returncode == 2 and "does not open" in wrong.stderr


def test_map_needs_de_identification(tmp_path):
    run = _run(tmp_path, "convert", str(tmp_path), "--out", str(tmp_path / "o"), "--no-deid",
               "--pseudonym-map", str(tmp_path / "m"))
    assert run.returncode == 2 and "drop --no-deid" in run.stderr


@pytest.mark.parametrize("bad", ["not-a-fernet-key"])
def test_bad_map_key_is_a_usage_error(tmp_path, bad):
    src = _series(tmp_path / "in", "P1", 1)
    run = _run(tmp_path, "convert", str(src), "--out", str(tmp_path / "o"), "--pseudonym-map",
               str(tmp_path / "m"), DICOMFLEET_DEID_KEY="k" * 40, DICOMFLEET_PSEUDONYM_MAP_KEY=bad)
    assert run.returncode == 2 and "not a Fernet key" in run.stderr and bad not in run.stderr
