"""producer/metrics.py: a real `submit` against the real Redis on 127.0.0.1:6379 pushes its run's
figures to a stand-in Pushgateway (our own HTTP server on a loopback port, capturing what
prometheus_client sends), parsed back and compared with what submit did.

Sources: a synthetic CT series, pydicom's CT_small.dcm (already converted at the target by a local
`convert`, so submit skips it as done), rtplan.dcm (no image) and a text file (not DICOM).
"""
from __future__ import annotations

import logging
import shutil
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from producer import metrics
from producer.local import run_local
from producer.submit import submit
from shared.options import ConvertOptions
from shared.settings import Settings
from tests.synthetic import PHI, write_series

pytestmark = pytest.mark.integration

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
OPTS = ConvertOptions(formats=("png",), deid=False)


class Pushgateway:
    """A stand-in Pushgateway: records (method, path, body) of every push and answers 200."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, str, str]] = []
        pushes = self.pushes

        class Handler(BaseHTTPRequestHandler):
            def _push(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                pushes.append((self.command, self.path, body.decode()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_PUT = do_POST = _push  # noqa: N815 (http.server's names)

            def log_message(self, format: str, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def gateway():
    gw = Pushgateway()
    yield gw
    gw.server.shutdown()
    gw.server.server_close()


@pytest.fixture
def settings(gateway):
    name = f"df-pm-{uuid.uuid4().hex[:10]}"
    s = Settings(broker_url="redis://127.0.0.1:6379/0", result_backend="redis://127.0.0.1:6379/0",
                 queue=f"{name}.normal", queue_high=f"{name}.high", key_prefix=name, metrics_port=0,
                 pushgateway_url=gateway.url)
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        pytest.fail("no Redis answers on 127.0.0.1:6379 (scripts/test-deps.sh starts one)")
    yield s
    keys = [*client.scan_iter(f"{name}:*"), *client.scan_iter(f"_kombu.binding*{name}*"), s.queue, s.queue_high]
    client.delete(*keys)


@pytest.fixture
def sources(tmp_path) -> tuple[list[str], str]:
    """Sources and a target directory where CT_small.dcm's series is already converted."""
    ct = tmp_path / "ct"
    write_series(ct, slices=3, size=32, seed=7)
    other = tmp_path / "other"
    other.mkdir()
    for name in ("CT_small.dcm", "rtplan.dcm"):
        shutil.copy(TEST_FILES / name, other / name)
    (other / "notes.txt").write_text("not a DICOM file\n")
    dest = tmp_path / "out"
    run_local([str(other / "CT_small.dcm")], str(dest), OPTS)
    return [str(ct), str(other)], str(dest)


def pushed(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of an exposition, keyed by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_submit_pushes_what_it_did(gateway, settings, sources):
    srcs, dest = sources
    first = submit(srcs, dest, OPTS, settings=settings)
    assert [j.outcome for j in first.jobs].count("queued") == 1
    assert [j.outcome for j in first.jobs].count("already done") == 1
    again = submit(srcs, dest, OPTS, settings=settings)  # the synthetic series is in flight now

    assert len(gateway.pushes) == 2
    for method, path, _ in gateway.pushes:  # PUT: each run replaces the previous run's group
        assert (method, path) == ("PUT", f"/metrics/job/dicomfleet-producer/fleet/{settings.key_prefix}"
                                         "/priority/normal")
    for result, (_, _, body) in zip((first, again), gateway.pushes):
        got = pushed(body)
        assert {name for name, _ in got} == metrics.families()
        assert got[("dicomfleet_producer_series", ())] == len(result.jobs) == 2
        outcomes = {o: sum(j.outcome == o for j in result.jobs) for o in metrics.OUTCOMES}
        assert {label: got[("dicomfleet_producer_jobs", (("outcome", label),))]
                for label in metrics.OUTCOMES.values()} == {metrics.OUTCOMES[o]: n for o, n in outcomes.items()}
        assert got[("dicomfleet_producer_files_skipped", (("reason", "not_dicom"),))] == 1  # notes.txt
        assert got[("dicomfleet_producer_files_skipped", (("reason", "no_pixels"),))] == 1  # rtplan.dcm
        assert sum(v for (n, _), v in got.items() if n == "dicomfleet_producer_files_skipped") == \
            sum(result.skipped.values()) == 2
        assert got[("dicomfleet_producer_instances_queued", ())] == sum(j.instances for j in result.queued)
        assert got[("dicomfleet_producer_last_success_timestamp_seconds", ())] > 0
        assert body.count("\n") < 40, "a handful of low-cardinality samples"
        for secret in (*PHI.values(), dest, *srcs, *(j.job_id for j in result.jobs)):
            assert str(secret) not in body
    assert pushed(gateway.pushes[0][2])[("dicomfleet_producer_instances_queued", ())] == 3
    assert pushed(gateway.pushes[1][2])[("dicomfleet_producer_jobs", (("outcome", "in_flight"),))] == 1


def test_unreachable_gateway_logs_one_line_and_submit_succeeds(settings, sources, caplog):
    gone = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = gone.server_address[1]
    gone.server_close()  # nothing listens there now
    s = Settings(**{**settings.__dict__, "pushgateway_url": f"http://127.0.0.1:{port}"})
    srcs, dest = sources
    with caplog.at_level(logging.WARNING, logger="producer.metrics"):
        result = submit(srcs, dest, OPTS, settings=s)
    assert [j.outcome for j in result.jobs].count("queued") == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "producer.metrics"]
    assert len(lines) == 1 and lines[0].startswith("metrics not pushed to the Pushgateway:"), lines
    assert "\n" not in lines[0]


def test_no_url_no_push(gateway, settings, sources):
    s = Settings(**{**settings.__dict__, "pushgateway_url": ""})
    srcs, dest = sources
    submit(srcs, dest, OPTS, settings=s)
    assert gateway.pushes == []
