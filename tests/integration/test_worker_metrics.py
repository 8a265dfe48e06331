"""`dicomfleet worker` serves /metrics, /healthz and /readyz, and after a real conversion its
counters add up to what the manifest in S3 says was converted, failed and written."""
from __future__ import annotations

import json
import time
from urllib.error import URLError
from urllib.request import urlopen

import pytest
from prometheus_client.parser import text_string_to_metric_families

from producer.fleetrun import free_port
from producer.submit import submit, wait
from shared.options import ConvertOptions
from tests.synthetic import write_series

pytestmark = pytest.mark.integration


def get(url: str) -> tuple[int, str]:
    try:
        with urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except URLError as err:
        return getattr(err, "code", 0), ""


def scrape(base: str) -> dict[tuple[str, tuple], float]:
    status, text = get(base + "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(snap: dict, name: str, **labels) -> float:
    return snap.get((name, tuple(sorted(labels.items()))), 0.0)


def test_worker_metrics_add_up_to_the_converted_series(fleet_factory, tmp_path):
    port = free_port()
    fleet = fleet_factory(metrics_port=port)
    src = tmp_path / "series"
    paths = write_series(src, slices=6, size=64, seed=7)
    paths[3].write_bytes(paths[3].read_bytes()[:-2000])  # one instance cut short: fails alone
    base = f"http://127.0.0.1:{port}"
    fleet.worker(concurrency=2)
    deadline = time.monotonic() + 30
    while get(base + "/readyz")[0] != 200:
        assert time.monotonic() < deadline, "the worker never became ready"
        time.sleep(0.1)
    assert get(base + "/healthz") == (200, "ok\n")
    idle = scrape(base)
    assert value(idle, "dicomfleet_broker_up") == 1
    assert value(idle, "dicomfleet_queue_depth", queue=fleet.settings.queue) == 0
    assert value(idle, "dicomfleet_instances_total", outcome="converted", reason="none") == 0

    result = submit([str(src)], fleet.dest, ConvertOptions(formats=("png", "tiff")), priority="high")
    records = wait([j.job_id for j in result.queued], timeout=120)
    assert {r["state"] for r in records.values()} == {"done"}
    (manifest,) = [json.loads(v) for k, v in fleet.objects().items() if k.endswith("/manifest.json")]
    snap = scrape(base)

    counts = manifest["counts"]
    assert (counts["converted"], counts["failed"]) == (5, 1)
    assert value(snap, "dicomfleet_instances_total", outcome="converted", reason="none") == counts["converted"]
    (error,) = manifest["errors"]
    assert value(snap, "dicomfleet_instances_total", outcome="failed", reason=error["code"]) == 1
    assert value(snap, "dicomfleet_series_total", outcome="partial", reason="none") == 1
    assert value(snap, "dicomfleet_series_seconds_count", priority="high") == 1
    assert value(snap, "dicomfleet_stage_seconds_count", stage="fetch") == counts["instances"]
    assert value(snap, "dicomfleet_stage_seconds_count", stage="store") == counts["converted"]
    # the cut instance parses and is de-identified, then fails to decode: six deid, five store
    assert error["reason"].startswith("(7FE0,0010) Pixel Data holds")
    assert value(snap, "dicomfleet_stage_seconds_count", stage="deid") == counts["instances"]
    assert value(snap, "dicomfleet_stage_seconds_count", stage="decode") == counts["instances"]
    assert value(snap, "dicomfleet_bytes_in_total") == sum(p.stat().st_size for p in paths)
    outputs = [o for inst in manifest["instances"] for o in inst["outputs"]]
    assert len(outputs) == counts["outputs"] == 10
    for fmt in ("png", "tiff"):
        assert value(snap, "dicomfleet_bytes_out_total", format=fmt) == sum(
            o["size"] for o in outputs if o["format"] == fmt)
    assert value(snap, "dicomfleet_queue_depth", queue=fleet.settings.queue_high) == 0
    assert value(snap, "dicomfleet_queue_oldest_age_seconds", queue=fleet.settings.queue_high) == 0
    assert value(snap, "dicomfleet_retries_total", reason="storage") == 0
