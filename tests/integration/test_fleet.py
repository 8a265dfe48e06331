"""The fleet end to end: producer → Redis → real Celery worker processes → S3 (moto_server).

Each test has its own queues, Redis keys and bucket; each guarantee of issue 4 is pinned here.
"""
from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
import redis

from producer.fleetrun import S3Server, free_port
from producer.local import run_local
from producer.status import status
from producer.submit import submit, wait
from shared.options import ConvertOptions
from tests.synthetic import PHI, PRIVATE_PHI, write_series

from .conftest import check_against_manifests

pytestmark = pytest.mark.integration

FORMATS = ("png", "tiff", "jpeg", "npy", "png16")
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
#: a spread of pydicom's bundled files: uncompressed, RLE, JPEG 2000, JPEG, palette, YBR, multi-frame,
#: big endian, a truncated file and a non-image (skipped) one
PYDICOM_SET = ("CT_small.dcm", "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
               "SC_rgb_jpeg_dcmtk.dcm", "examples_palette.dcm", "examples_ybr_color.dcm", "rtdose.dcm",
               "MR_truncated.dcm", "rtplan.dcm")


def until(predicate, timeout: float = 60, every: float = 0.05, what: str = "condition"):
    """Poll until ``predicate()`` is truthy; return its value (bounded, so no test hangs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture(scope="session")
def ct50(tmp_path_factory) -> Path:
    """The required 50-slice synthetic CT series (128 × 128 to keep it quick)."""
    out = tmp_path_factory.mktemp("ct50")
    write_series(out, slices=50, size=128, seed=1)
    return out


@pytest.fixture(scope="session")
def pydicom_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pydicom-set")
    for name in PYDICOM_SET:
        shutil.copy(TEST_FILES / name, out / name)
    return out


@pytest.fixture(scope="session")
def corrupt_series(tmp_path_factory) -> Path:
    """Six slices, the third cut short: its Pixel Data no longer holds what the header declares."""
    out = tmp_path_factory.mktemp("corrupt")
    paths = write_series(out, slices=6, size=64, seed=2)
    data = paths[2].read_bytes()
    paths[2].write_bytes(data[:-3000])
    return out


def local_reference(tmp_path: Path, sources: list[str], opts: ConvertOptions) -> dict[str, bytes]:
    """What `dicomfleet convert` writes for the same sources: the fleet must write the same."""
    dest = tmp_path / "local"
    run_local(sources, str(dest), opts, workers=1)
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}


def test_celery_config_pins_the_guarantees(fleet):
    """JSON only; acks_late + reject_on_worker_lost + prefetch 1; one visibility timeout for broker
    and result backend; the real-time queue first and drained first; no Redis priority steps."""
    from workers.celery_app import SERIES_TASK, make_app
    from workers.tasks import convert_series_task

    conf = make_app(fleet.settings).conf
    assert conf.task_serializer == conf.result_serializer == conf.event_serializer == "json"
    assert conf.accept_content == conf.result_accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert convert_series_task.acks_late and convert_series_task.reject_on_worker_lost
    assert convert_series_task.name == SERIES_TASK == "dicomfleet.convert_series"
    assert conf.worker_prefetch_multiplier == 1
    vt = fleet.settings.visibility_timeout
    assert conf.broker_transport_options["visibility_timeout"] == vt
    assert conf.result_backend_transport_options["visibility_timeout"] == vt
    assert [q.name for q in conf.task_queues] == [fleet.settings.queue_high, fleet.settings.queue]
    assert conf.broker_transport_options["queue_order_strategy"] == "priority"
    assert conf.broker_transport_options["priority_steps"] == [0]


def test_task_messages_are_json_without_phi(fleet, ct50):
    """What sits in Redis is a JSON envelope whose body is JSON: pseudonymous prefix, source paths,
    options; none of the header's identifying values or UIDs."""
    result = submit([str(ct50)], fleet.dest, ConvertOptions(formats=("png",)))
    raw = fleet.ledger.redis.lrange(fleet.settings.queue, 0, -1)
    assert len(raw) == 1 == len(result.queued)
    envelope = json.loads(raw[0])
    assert envelope["content-type"] == "application/json"
    body = base64.b64decode(envelope["body"]) if envelope["properties"].get("body_encoding") == "base64" \
        else envelope["body"].encode()
    args, kwargs, _ = json.loads(body)
    (message,) = args
    assert message["job_id"] == result.jobs[0].job_id and kwargs == {}
    assert len(message["sources"]) == 50 and message["options"]["deid"] is True
    ds = pydicom.dcmread(next(ct50.iterdir()), stop_before_pixels=True)
    text = raw[0] + body.decode() + json.dumps(fleet.ledger.get(message["job_id"]))
    for value in [*PHI.values(), PRIVATE_PHI, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID]:
        assert str(value) not in text


def queued_message(fleet) -> dict:
    (raw,) = fleet.ledger.redis.lrange(fleet.settings.queue, 0, -1)
    envelope = json.loads(raw)
    body = base64.b64decode(envelope["body"]) if envelope["properties"].get("body_encoding") == "base64" \
        else envelope["body"].encode()
    return json.loads(body)[0][0]


def test_submit_command_takes_the_same_conversion_flags_as_convert(fleet, ct50):
    """`dicomfleet submit` puts the de-identification and display flags into the job exactly as
    `convert` would build them (one flag set for both commands)."""
    from click.testing import CliRunner

    from producer.cli import app, conversion_options

    flags = dict(fmt=["png", "jpeg"], window="lung", quality=90, no_deid=False, max_pixels=1 << 24,
                 deid_option=["retain-device-id", "clean-descriptors"], burned_in="mask",
                 mask_region=["0,0,64,16"], orientation="as-stored", max_size=256, series_stack=False,
                 slices=[], qa_sheet=False, qa_fraction=0.01, ssim_threshold=0.95)
    argv = ["submit", str(ct50), "--out", fleet.dest, "-f", "png", "-f", "jpeg", "--window", "lung",
            "--quality", "90", "--max-pixels", str(1 << 24), "--deid-option", "retain-device-id",
            "--deid-option", "clean-descriptors", "--burned-in", "mask", "--mask-region", "0,0,64,16",
            "--orientation", "as-stored", "--max-size", "256", "--ssim-threshold", "0.95"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    message = queued_message(fleet)
    assert ConvertOptions.from_json(message["options"]) == conversion_options(**flags)
    assert message["options"]["deid_options"] == ["retain-device-id", "clean-descriptors"]
    assert message["options"]["burned_in"] == "mask"


def test_series_and_pydicom_files_convert_verified_and_resubmit_is_a_noop(fleet, ct50, pydicom_set,
                                                                         corrupt_series, tmp_path):
    """The 50-slice series, a set of pydicom's files and a series with one corrupt file, on two
    workers: every output's hash matches its manifest, the outputs equal the local `convert`'s,
    the corrupt instance fails alone with its reason, and a re-submission queues nothing."""
    opts = ConvertOptions(formats=("png", "tiff"))
    sources = [str(ct50), str(pydicom_set), str(corrupt_series)]
    fleet.worker()
    fleet.worker()
    result = submit(sources, fleet.dest, opts)
    assert result.skipped["DICOM without an image (e.g. SR, RT plan)"] == 1  # rtplan.dcm
    records = wait([j.job_id for j in result.queued], timeout=120)
    assert {r["state"] for r in records.values()} == {"done"}

    objects = fleet.objects()
    manifests = check_against_manifests(objects)
    assert len(manifests) == len(result.jobs)
    reference = local_reference(tmp_path, sources, opts)
    assert objects.keys() == reference.keys()
    assert [k for k in reference if objects[k] != reference[k]] == [], "fleet and local outputs differ"

    by_size = {m["counts"]["instances"]: m for m in manifests}
    assert by_size[50]["counts"] == {"instances": 50, "converted": 50, "failed": 0, "outputs": 100}
    corrupt = by_size[6]
    assert corrupt["counts"]["converted"] == 5 and corrupt["counts"]["failed"] == 1
    (error,) = corrupt["errors"]
    assert error["reason"].startswith("(7FE0,0010) Pixel Data holds") and "\n" not in error["reason"]
    errors = [e for m in manifests for e in m["errors"]]
    assert len(errors) >= 2  # MR_truncated.dcm fails with its own reason too
    assert all(e["reason"] and "\n" not in e["reason"] and "Traceback" not in e["reason"] for e in errors)

    report = status(settings=fleet.settings)
    assert report.counts["done"] == len(result.jobs) and report.counts["failed"] == 0
    assert report.instances_failed == sum(m["counts"]["failed"] for m in manifests)
    cli = subprocess.run([sys.executable, "-c", "from producer.cli import main; main()", "status"],
                         env={**fleet.workers[0].env}, capture_output=True, text=True, timeout=60)
    assert f"0 queued, 0 running, {len(result.jobs)} done, 0 failed" in cli.stdout
    assert "Pixel Data holds" in cli.stdout

    again = submit(sources, fleet.dest, opts)
    assert {j.outcome for j in again.jobs} == {"already done"} and not again.queued
    assert fleet.ledger.redis.llen(fleet.settings.queue) == 0


def test_worker_killed_mid_series_another_finishes_identically(fleet_factory, ct50, tmp_path):
    """SIGKILL a worker (main process and pool) mid-series: the message comes back after the
    visibility timeout, a second worker converts the series, every output exists exactly once
    with the bytes the local `convert` writes."""
    fleet = fleet_factory(visibility_timeout=4)
    opts = ConvertOptions(formats=FORMATS)
    first = fleet.worker()
    (job,) = submit([str(ct50)], fleet.dest, opts).jobs
    client = fleet.s3.client()
    until(lambda: sum(1 for _ in client.list_objects(fleet.bucket, prefix="out/", recursive=True)) >= 20,
          what="the first outputs")
    assert fleet.ledger.redis.lrange(fleet.ledger.running_key, 0, -1) == [job.job_id]  # held: KEDA keeps its pod
    assert fleet.ledger.redis.llen(fleet.settings.queue) == 0
    first.kill()
    assert fleet.ledger.get(job.job_id)["state"] == "running"
    assert not any(k.endswith("manifest.json") for k in fleet.objects())
    # the dead worker's job is still in flight (unacked until the visibility timeout): listed
    assert fleet.ledger.redis.lrange(fleet.ledger.running_key, 0, -1) == [job.job_id]
    fleet.worker()
    (record,) = wait([job.job_id], timeout=60).values()
    assert record["state"] == "done" and record["deliveries"] == 2
    assert fleet.ledger.redis.llen(fleet.ledger.running_key) == 0  # listed once, gone when done

    objects = fleet.objects()
    (manifest,) = check_against_manifests(objects)
    assert manifest["counts"] == {"instances": 50, "converted": 50, "failed": 0, "outputs": 250}
    reference = local_reference(tmp_path, [str(ct50)], opts)
    assert objects.keys() == reference.keys()
    assert [k for k in reference if objects[k] != reference[k]] == []


def test_s3_unavailable_for_a_few_seconds_retries_and_finishes(fleet_factory, corrupt_series, tmp_path_factory):
    """The outputs' S3 server is down when the worker starts: the series retries with backoff and
    jitter, and finishes once the server is back (moto keeps no state: the bucket is recreated)."""
    outputs = S3Server(log_dir=str(tmp_path_factory.mktemp("moto-outage"))).start()
    try:
        fleet = fleet_factory(outputs)
        (job,) = submit([str(corrupt_series)], fleet.dest, ConvertOptions(formats=("png",))).jobs
        outputs.stop()
        fleet.worker()
        record = until(lambda: (r := fleet.ledger.get(job.job_id)).get("state") == "retrying" and r, timeout=30,
                       what="a retry")
        # the first S3 call of a series removes an earlier manifest: it fails before any conversion
        assert record["reason"].startswith("cannot delete") and "manifest.json on S3" in record["reason"]
        time.sleep(2)
        outputs.start()
        outputs.make_bucket(fleet.bucket)
        (record,) = wait([job.job_id], timeout=90).values()
        assert record["state"] == "done" and record["attempts"] >= 1
        (manifest,) = check_against_manifests(fleet.objects())
        assert manifest["counts"]["converted"] == 5
    finally:
        outputs.stop()


def test_poison_job_is_dead_lettered_and_does_not_block_others(fleet_factory, ct50, corrupt_series):
    """A job whose worker process dies every time is redelivered at most N times (counted in
    Redis), then parked with its reason, a dead-letter record and a failure record in the bucket;
    the next job converts."""
    fleet = fleet_factory(max_redeliveries=2)
    worker = fleet.worker()
    (poison,) = submit([str(ct50)], fleet.dest, ConvertOptions(formats=FORMATS)).jobs
    for delivery in (1, 2, 3):
        until(lambda d=delivery: (fleet.ledger.get(poison.job_id) or {}).get("deliveries") == d
              and worker.children(), what=f"delivery {delivery}")
        for pid in worker.children():  # the "poison": the process converting it dies
            subprocess.run(["kill", "-KILL", str(pid)], check=False)
    (record,) = wait([poison.job_id], timeout=60).values()
    assert record["state"] == "dead" and record["deliveries"] == 4
    assert record["reason"] == ("dead letter: a worker died under this job 3 times "
                                "(DICOMFLEET_MAX_REDELIVERIES=2)")
    (letter,) = fleet.ledger.dead_letters()
    assert letter["job_id"] == poison.job_id and letter["message"]["job_id"] == poison.job_id
    from shared.ledger import TTL  # the letter names its sources: it expires as job records do
    assert TTL - 60 < fleet.ledger.redis.ttl(fleet.ledger.dead_key) <= TTL
    failure = json.loads(fleet.objects()[f"{poison.prefix}/failure.json"])
    assert failure["code"] == "dead_letter" and failure["reason"] == record["reason"]

    (other,) = submit([str(corrupt_series)], fleet.dest, ConvertOptions(formats=("png",))).jobs
    (done,) = wait([other.job_id], timeout=60).values()
    assert done["state"] == "done" and done["converted"] == 5
    report = status(settings=fleet.settings)
    assert report.counts["failed"] == 1 and report.counts["done"] == 1
    assert any(record["reason"] in line for line in report.lines(detail=False))


def test_sigterm_hands_the_job_back_after_the_soft_shutdown_timeout(fleet_factory, ct50):
    """SIGTERM with a short soft-shutdown timeout: the unfinished job goes back to the queue (not
    acked, not counted as a crash) and the next worker finishes it."""
    fleet = fleet_factory(soft_shutdown_timeout=0.2)
    first = fleet.worker()
    (job,) = submit([str(ct50)], fleet.dest, ConvertOptions(formats=FORMATS)).jobs
    until(lambda: (fleet.ledger.get(job.job_id) or {}).get("state") == "running" and first.children(),
          what="the job running")
    first.signal(signal.SIGTERM)
    first.proc.wait(30)
    record = fleet.ledger.get(job.job_id)
    assert record["state"] == "queued" and "soft-shutdown timeout" in record["reason"]
    assert record["open_deliveries"] == 0
    assert fleet.ledger.redis.llen(fleet.settings.queue) == 1
    assert fleet.ledger.redis.llen(fleet.ledger.running_key) == 0  # back in its queue: counted there
    fleet.worker()
    (record,) = wait([job.job_id], timeout=60).values()
    assert record["state"] == "done" and record["deliveries"] == 2
    check_against_manifests(fleet.objects())


def test_sigterm_finishes_the_job_in_hand_within_the_timeout(fleet_factory, ct50):
    fleet = fleet_factory(soft_shutdown_timeout=60)
    worker = fleet.worker()
    (job,) = submit([str(ct50)], fleet.dest, ConvertOptions(formats=FORMATS)).jobs
    until(lambda: (fleet.ledger.get(job.job_id) or {}).get("state") == "running", what="the job running")
    worker.signal(signal.SIGTERM)
    assert worker.proc.wait(60) == 0
    record = fleet.ledger.get(job.job_id)
    assert record["state"] == "done" and record["deliveries"] == 1
    assert fleet.ledger.redis.llen(fleet.settings.queue) == 0
    check_against_manifests(fleet.objects())


def test_priority_high_goes_to_its_own_queue_and_is_drained_first(fleet, tmp_path):
    """Three batch series then one `--priority high`: the high one waits in its own list and is
    the first the worker takes."""
    batch = []
    for seed in range(3):
        write_series(tmp_path / f"batch{seed}", slices=3, size=64, seed=10 + seed)
        batch += submit([str(tmp_path / f"batch{seed}")], fleet.dest, ConvertOptions(formats=("png",))).jobs
    write_series(tmp_path / "urgent", slices=3, size=64, seed=20)
    (urgent,) = submit([str(tmp_path / "urgent")], fleet.dest, ConvertOptions(formats=("png",)),
                       priority="high").jobs
    assert urgent.queue == fleet.settings.queue_high
    assert fleet.ledger.queue_lengths({"high": fleet.settings.queue_high, "normal": fleet.settings.queue}) \
        == {"high": 1, "normal": 3}
    fleet.worker()
    records = wait([j.job_id for j in [*batch, urgent]], timeout=60)
    order = sorted(records, key=lambda jid: records[jid]["started"])
    assert order[0] == urgent.job_id
    assert [records[j.job_id]["state"] for j in batch] == ["done"] * 3


@pytest.fixture
def private_redis(tmp_path):
    """A redis-server of this test's own on another port (commands counted without neighbours)."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    until(lambda: _answers(port), timeout=20, what="redis-server")
    yield f"redis://127.0.0.1:{port}/0"
    proc.kill()
    proc.wait(10)


def _answers(port: int) -> bool:
    try:
        return redis.Redis(port=port, socket_connect_timeout=0.2).ping()
    except redis.RedisError:
        return False


def test_redis_round_trips_are_per_series_not_per_slice(private_redis, fleet_factory, ct50, tmp_path):
    """A 50-slice series costs Redis about what a 3-slice one does: the chain never talks to Redis."""
    fleet = fleet_factory(broker_url=private_redis, result_backend=private_redis)
    fleet.worker()
    write_series(tmp_path / "small", slices=3, size=128, seed=5)
    server = redis.Redis.from_url(private_redis)
    commands = {}
    for name, src in (("small", tmp_path / "small"), ("big", ct50)):
        before = server.info("stats")["total_commands_processed"]
        (job,) = submit([str(src)], fleet.dest, ConvertOptions(formats=("png",))).jobs
        (record,) = wait([job.job_id], timeout=60, poll=1.0).values()
        assert record["state"] == "done"
        commands[name] = server.info("stats")["total_commands_processed"] - before
    assert commands["big"] - commands["small"] < 20, commands  # per slice would be ≥ 47 more
