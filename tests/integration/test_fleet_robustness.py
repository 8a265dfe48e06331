"""The fleet under faults and flags the local convert already reports: Redis gone for a few seconds
mid-series, and JPEG outputs below the SSIM threshold in `status` and `submit --wait` (exit 3)."""
from __future__ import annotations

import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from producer.cli import app
from producer.fleetrun import free_port
from producer.submit import submit, wait
from shared.options import ConvertOptions
from tests.synthetic import write_series

from .conftest import REDIS, check_against_manifests
from .test_fleet import local_reference, until

pytestmark = pytest.mark.integration

def test_status_and_submit_wait_flag_jpegs_below_the_ssim_threshold(fleet_factory, tmp_path):
    fleet = fleet_factory(broker_url=REDIS, result_backend=REDIS)
    src = tmp_path / "in"
    write_series(src, slices=4, size=64, seed=12)
    fleet.worker()
    runner = CliRunner()
    low = runner.invoke(app, ["submit", str(src), "--out", fleet.dest, "-f", "jpeg", "--quality", "5",
                              "--wait", "--timeout", "120"])
    assert low.exit_code == 3, low.output
    [job_id] = [line.split()[0] for line in low.output.splitlines() if "  queued  " in line]
    assert "flagged 4 JPEG output(s) below the SSIM threshold (see the manifests)" in low.output
    [manifest] = check_against_manifests(fleet.objects())
    assert manifest["below_ssim_threshold"] == 4 and manifest["counts"]["failed"] == 0

    status = runner.invoke(app, ["status"])  # flagged jobs are listed without --all, like failures
    assert status.exit_code == 3, status.output
    lines = status.output.splitlines()
    assert lines[0].startswith("0 queued, 0 running, 1 done, 0 failed")
    assert lines[1] == (f"{job_id}  done     {manifest['series']}  4/4 converted, 4 outputs, "
                        "4 JPEG below the SSIM threshold")
    assert lines[2].strip() == "flagged 4 JPEG output(s) below the SSIM threshold (see the manifests)"

    met = runner.invoke(app, ["submit", str(src), "--out", fleet.dest, "-f", "jpeg", "--quality", "5",
                              "--ssim-threshold", "0.3", "--wait", "--timeout", "120"])
    assert met.exit_code == 0, met.output
    assert "flagged" not in met.output
    [other] = [line.split()[0] for line in met.output.splitlines() if "  queued  " in line]
    both = runner.invoke(app, ["status", other])
    assert both.exit_code == 0 and "flagged" not in both.output, both.output


def test_submit_exits_1_when_its_scan_could_not_read_an_image(fleet_factory, tmp_path):
    """A CT file cut inside its header beside a good series: the series is queued and converts,
    the cut file is named in the summary as unreadable, and submit says so by its status."""
    fleet = fleet_factory(broker_url=REDIS, result_backend=REDIS)
    src = tmp_path / "in"
    [first, *_] = write_series(src, slices=3, size=32, seed=13)
    (src / "cut.dcm").write_bytes(first.read_bytes()[:300])
    fleet.worker()
    run = CliRunner().invoke(app, ["submit", str(src), "--out", fleet.dest, "--no-deid", "--wait", "--timeout", "120"])
    assert run.exit_code == 1, run.output
    assert "skipped 1 file(s): a DICOM image whose (0028,0010) Rows cannot be read" in run.output
    [manifest] = check_against_manifests(fleet.objects())
    assert manifest["counts"]["converted"] == 3


class RedisServer:
    """A redis-server of the test's own that can be stopped and started again on its port, its
    data kept in an append-only file written through on every command (nothing is lost)."""

    def __init__(self, workdir: Path) -> None:
        self.port, self.dir = free_port(), workdir
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
             "--save", "", "--appendonly", "yes", "--appendfsync", "always"], stdout=subprocess.DEVNULL)
        until(self.answers, timeout=20, what="redis-server")
        return self

    def answers(self) -> bool:
        try:
            return redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
        except redis.RedisError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None


def keys(fleet) -> list[str]:
    """Names of the objects under the destination (no bodies: cheap enough to poll)."""
    listing = fleet.s3.client().list_objects(fleet.bucket, prefix="out/", recursive=True)
    return [o.object_name for o in listing]


@pytest.fixture
def own_redis(tmp_path):
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def test_redis_unavailable_for_a_few_seconds_mid_series(own_redis, fleet_factory, tmp_path):
    """Redis stops while a worker is converting a series (its outputs half written) and comes
    back seconds after the series ended: the job is still booked done, every output as its
    manifest and the local convert say, and its message acked (nothing queued, nothing unacked)."""
    fleet = fleet_factory(broker_url=own_redis.url, result_backend=own_redis.url)
    src = tmp_path / "in"
    write_series(src, slices=160, size=256, seed=7)  # long enough to be mid-series when Redis stops
    opts = ConvertOptions(formats=("png", "jpeg"))
    fleet.worker(concurrency=1)
    (job,) = submit([str(src)], fleet.dest, opts).queued
    until(lambda: len(keys(fleet)) >= 4, timeout=60, what="the first outputs")
    own_redis.stop()
    written = len(keys(fleet))
    with ThreadPoolExecutor(1) as producer:  # `submit --wait` polls through the outage
        waiting = producer.submit(wait, [job.job_id], timeout=120)
        # the series ends while Redis is down: its manifest is written, its ledger entry and ack wait
        until(lambda: any(k.endswith("/manifest.json") for k in keys(fleet)), timeout=60, what="the manifest")
        time.sleep(2)
        own_redis.start()
        (record,) = waiting.result(timeout=150).values()
    assert record["state"] == "done" and record["converted"] == 160 and record["failed"] == 0
    objects = fleet.objects()
    assert 4 <= written < len(objects) == 1 + 320
    (manifest,) = check_against_manifests(objects)
    reference = local_reference(tmp_path, [str(src)], opts)
    assert [k for k in reference if objects.get(k) != reference[k]] == []
    until(lambda: fleet.ledger.redis.hlen(f"{fleet.settings.key_prefix}:unacked") == 0, timeout=30,
          what="the message acked")
    assert fleet.ledger.redis.llen(fleet.settings.queue) == 0


def test_source_paths_stay_out_of_message_headers_and_debug_logs(fleet_factory, tmp_path):
    """Export folders are often named after the patient: the paths travel in the message body
    (the worker needs them) but not in the headers' argsrepr that Celery shows in events and logs,
    and a worker at --loglevel DEBUG does not write its tasks' arguments."""
    import json

    fleet = fleet_factory(broker_url=REDIS, result_backend=REDIS)
    src = tmp_path / "DOEJANE_19370101"
    write_series(src, slices=2, size=32, seed=14)
    run = CliRunner().invoke(app, ["submit", str(src), "--out", fleet.dest])
    assert run.exit_code == 0, run.output
    [raw] = fleet.ledger.redis.lrange(fleet.settings.queue, 0, -1)
    message = json.loads(raw)
    assert "DOEJANE" not in json.dumps(message["headers"])
    assert message["headers"]["argsrepr"].endswith(": 2 instances]")
    worker = fleet.worker(loglevel="DEBUG")
    until(lambda: fleet.ledger.jobs() and all(j.get("state") == "done" for j in fleet.ledger.jobs().values()), 60)
    log = worker.log.read_text()
    assert "TaskPool" not in log and "DOEJANE" not in log
    assert " ready." in log and "DEBUG" in log  # it did log at DEBUG


def test_submit_sends_local_paths_absolute(fleet_factory, tmp_path, monkeypatch):
    """`submit in --out out` from a working directory: the worker runs elsewhere, so the
    message holds absolute paths and the series converts where the user meant."""
    import json

    fleet = fleet_factory(broker_url=REDIS, result_backend=REDIS)
    write_series(tmp_path / "in", slices=2, size=32, seed=15)
    monkeypatch.chdir(tmp_path)
    run = CliRunner().invoke(app, ["submit", "in", "--out", "out", "--no-deid"])
    assert run.exit_code == 0, run.output
    [raw] = fleet.ledger.redis.lrange(fleet.settings.queue, 0, -1)
    [body] = json.loads(__import__("base64").b64decode(json.loads(raw)["body"]))[0]
    assert body["dest"] == str(tmp_path / "out")
    assert all(src.startswith(str(tmp_path / "in") + "/") for src in body["sources"])
