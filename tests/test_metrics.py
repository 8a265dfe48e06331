"""workers/metrics.py: what a real conversion records, served over HTTP and parsed back.

Instance records come from the real chain (pydicom's CT_small.dcm and a file that is not DICOM);
shards written by another process are merged at scrape time (multiprocess mode); queue depth and
the oldest job's age are read from the real Redis on 127.0.0.1:6379 with real Celery messages.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.error import HTTPError
from urllib.request import urlopen

import pydicom
import pytest
import redis
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from shared.chain import convert_instance, instance_task
from shared.options import ConvertOptions
from shared.settings import Settings
from shared.timing import STAGES
from workers import metrics

CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
ROOT = Path(__file__).resolve().parents[1]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(snap: dict, name: str, **labels) -> float:
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def server():
    srv = metrics.serve(0, host="127.0.0.1")
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def scrape(url: str) -> dict:
    with urlopen(url + "/metrics", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        return samples(resp.read().decode())


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[dict]:
    """Two real instance records: CT_small.dcm to PNG + TIFF, and a text file (not DICOM)."""
    tmp = tmp_path_factory.mktemp("metrics")
    junk = tmp / "notes.dcm"
    junk.write_text("PATIENT SMITH^JOHN 1957-08-23, not a DICOM file\n" * 20)
    opts = ConvertOptions(formats=("png", "tiff"), deid=False).to_json()
    return [convert_instance(instance_task(str(src), i, "study/series", str(tmp / "out"), opts))
            for i, src in enumerate((CT_SMALL, junk), start=1)]


def test_instance_records_add_up_by_outcome_reason_stage_format_and_bytes(server, records):
    ok, bad = records
    assert ok["error"] is None and bad["error"]["code"] == "not_dicom"
    before = scrape(server)
    for record in records:
        metrics.observe_instance(record)
    after = scrape(server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dicomfleet_instances_total", outcome="converted", reason="none") == 1
    assert delta("dicomfleet_instances_total", outcome="failed", reason="not_dicom") == 1
    for stage in STAGES:
        assert delta("dicomfleet_stage_seconds_count", stage=stage) == (stage in ok["stages"]) + (stage in bad["stages"])
    assert set(ok["stages"]) == set(STAGES) - {"deid"} and set(bad["stages"]) == {"fetch", "parse"}
    assert (ok["source_bytes"], bad["source_bytes"]) == (CT_SMALL.stat().st_size, 20 * 48)
    assert delta("dicomfleet_bytes_in_total") == ok["source_bytes"] + bad["source_bytes"]
    for fmt in ("png", "tiff"):
        assert delta("dicomfleet_bytes_out_total", format=fmt) == sum(
            o["size"] for o in ok["outputs"] if o["format"] == fmt) > 0
    text = urlopen(server + "/metrics", timeout=10).read().decode()
    assert "SMITH" not in text and "study/series" not in text  # nothing of the input reaches a label


def test_series_outcomes_retries_and_dead_letters(server):
    before = scrape(server)
    metrics.observe_series("done", seconds=12.0, priority="high")
    metrics.observe_series("partial", seconds=700.0)
    metrics.observe_series("failed", code="storage")
    metrics.count_retry("storage")
    metrics.count_dead_letter()
    after = scrape(server)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("dicomfleet_series_total", outcome="done", reason="none") == 1
    assert delta("dicomfleet_series_total", outcome="partial", reason="none") == 1
    assert delta("dicomfleet_series_total", outcome="failed", reason="storage") == 1
    assert delta("dicomfleet_series_seconds_count", priority="high") == 1
    assert delta("dicomfleet_series_seconds_bucket", priority="high", le="30.0") == 1
    assert delta("dicomfleet_series_seconds_bucket", priority="normal", le="600.0") == 0
    assert delta("dicomfleet_series_seconds_bucket", priority="normal", le="900.0") == 1
    assert delta("dicomfleet_retries_total", reason="storage") == 1
    assert delta("dicomfleet_dead_letters_total", reason="dead_letter") == 1
    with pytest.raises(ValueError, match="series outcome must be one of"):
        metrics.observe_series("exploded")


def test_build_info_names_the_native_paths_this_node_runs(server):
    import importlib.util

    try:  # what this CPU and this install should give, from the extensions themselves
        from shared import _sha256x
        lanes = "1" if _sha256x.sha_ni() or not _sha256x.kernels() else str(_sha256x.kernels()[0])
    except ImportError:
        lanes = "1"
    want = (lanes, "one-pass" if importlib.util.find_spec("shared.pixels._affine") else "numpy",
            "one-pass" if importlib.util.find_spec("shared._ssim") else "opencv",
            "one-pass" if importlib.util.find_spec("shared._deflate") else "zlib-ng")
    info = [labels for (name, labels), v in scrape(server).items() if name == "dicomfleet_build_info" and v == 1]
    assert [tuple(dict(lb)[k] for k in ("sha256_lanes", "window", "ssim", "deflate")) for lb in info] == [want]
    assert dict(info[0])["sha256_lanes"] in {"1", "8", "16"}


def test_label_values_come_from_closed_sets():
    assert metrics.reason_code("not_dicom") == "not_dicom"
    assert metrics.reason_code("SMITH^JOHN refused") == "other"
    assert metrics.reason_code(None) == "none"
    before = metrics._metrics().stage_seconds.collect()[0].samples
    metrics.observe_instance({"error": None, "stages": {"PatientName=SMITH": 1.0}, "outputs": [
        {"format": "../../etc", "size": 3}]})
    stages = {s.labels["stage"] for s in metrics._metrics().stage_seconds.collect()[0].samples}
    assert stages <= set(STAGES) and len(metrics._metrics().stage_seconds.collect()[0].samples) == len(before)
    formats = {s.labels["format"] for s in metrics._metrics().bytes_out.collect()[0].samples}
    assert "../../etc" not in formats and "other" in formats


def test_shards_of_other_processes_are_merged_at_scrape(server, records):
    """Prefork: another process observing into the same PROMETHEUS_MULTIPROC_DIR is counted."""
    before = scrape(server)
    code = ("import json, sys; from workers import metrics; "
            "[metrics.observe_instance(r) for r in json.load(sys.stdin)]")
    done = subprocess.run([sys.executable, "-c", code], input=json.dumps(records * 3), text=True,
                          cwd=ROOT, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    after = scrape(server)
    key = ("dicomfleet_instances_total", (("outcome", "converted"), ("reason", "none")))
    assert after[key] - before.get(key, 0) == 3
    key = ("dicomfleet_instances_total", (("outcome", "failed"), ("reason", "not_dicom")))
    assert after[key] - before.get(key, 0) == 3


def test_health_and_readiness_endpoints(server):
    assert metrics.probe(int(server.rsplit(":", 1)[1])) is None
    metrics.mark_ready(False)
    with pytest.raises(HTTPError) as err:
        urlopen(server + "/readyz", timeout=10)
    assert err.value.code == 503
    metrics.mark_ready(True)
    assert urlopen(server + "/readyz", timeout=10).status == 200
    with pytest.raises(HTTPError) as err:
        urlopen(server + "/nothing", timeout=10)
    assert err.value.code == 404
    port = int(server.rsplit(":", 1)[1])
    assert metrics.probe(port, "/nothing") == f"http://127.0.0.1:{port}/nothing answered 404"


@pytest.fixture
def queues():
    name = f"test-metrics-{uuid.uuid4().hex[:8]}"
    settings = Settings(queue=f"{name}.normal", queue_high=f"{name}.high", key_prefix=name)
    client = redis.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError:
        pytest.fail("no Redis answers on 127.0.0.1:6379 (scripts/test-deps.sh starts one)")
    yield settings, client
    keys = [settings.queue, settings.queue_high, *client.scan_iter(f"{name}:*"), *client.scan_iter(f"_kombu*{name}*")]
    client.delete(*keys)


def test_queue_depth_and_oldest_job_age_from_redis(queues):
    from shared.ledger import Ledger

    settings, client = queues
    app = Celery("test-metrics", broker=settings.broker_url)
    app.conf.task_serializer = "json"
    ledger = Ledger(settings, client)
    for i, queue in enumerate((settings.queue, settings.queue, settings.queue_high)):
        job = f"job-{i}"
        ledger.queued(job, prefix="p/s", instances=1, priority="normal", queue=queue)
        app.send_task("dicomfleet.convert_series", args=[{"job_id": job}], queue=queue)
    # the oldest batch job was submitted 120 s ago (its ledger record says so)
    client.hset(f"{settings.key_prefix}:job:job-0", "submitted", json.dumps(time.time() - 120))
    families = {f.name: f for f in metrics.QueueCollector(settings, client).collect()}
    got = {(f.name, s.labels.get("queue")): s.value for f in families.values() for s in f.samples}
    assert got[("dicomfleet_broker_up", None)] == 1
    assert got[("dicomfleet_queue_depth", settings.queue)] == 2
    assert got[("dicomfleet_queue_depth", settings.queue_high)] == 1
    assert 120 <= got[("dicomfleet_queue_oldest_age_seconds", settings.queue)] < 3600
    assert 0 <= got[("dicomfleet_queue_oldest_age_seconds", settings.queue_high)] < 120
    # emptied queues report zero age; an unreachable broker reports broker_up 0 and nothing else
    client.delete(settings.queue, settings.queue_high)
    got = {(f.name, s.labels.get("queue")): s.value
           for f in metrics.QueueCollector(settings, client).collect() for s in f.samples}
    assert got[("dicomfleet_queue_oldest_age_seconds", settings.queue)] == 0
    down = Settings(broker_url="redis://127.0.0.1:9/0")
    assert [(f.name, f.samples[0].value) for f in metrics.QueueCollector(down).collect()] == [("dicomfleet_broker_up", 0)]


def test_worker_shard_directory_is_private_and_emptied(tmp_path):
    """A worker re-started with the same pid (a container's PID 1) starts from empty shards, and
    shard directories of workers that are gone are removed."""
    base = tmp_path / "shards"
    stale = base / "worker-999999999"
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"x")
    code = ("import os, sys; from workers import metrics; d = metrics.use_worker_dir(); "
            "metrics.observe_series('done', seconds=1.0); print(d); print(sorted(p.name for p in d.iterdir()))")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(base)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    own, files = done.stdout.splitlines()
    assert Path(own).parent == base and Path(own).name.startswith("worker-")
    assert "counter_" in files and "histogram_" in files
    assert not stale.exists() and not Path(own).exists()  # removed at exit by its owner


def test_the_default_shard_directory_is_this_users_own(tmp_path, monkeypatch):
    """Without PROMETHEUS_MULTIPROC_DIR the shards go to a per-user directory in the temp dir; one
    of that name that another user could have made (open to others) is not used."""
    from workers.metrics import _own_directory

    mine = _own_directory(tmp_path / "m")
    assert mine == tmp_path / "m" and (mine.stat().st_mode & 0o777) == 0o700
    assert _own_directory(tmp_path / "m") == mine  # the same next time
    shared = tmp_path / "open"
    shared.mkdir()
    shared.chmod(0o777)
    other = _own_directory(shared)
    assert other != shared and (other.stat().st_mode & 0o077) == 0
