"""Prometheus metrics of a worker: stage histograms, outcomes, bytes, retries, queue state.

Prefork-safe: prometheus-client's multiprocess mode, one mmap shard per process under
``PROMETHEUS_MULTIPROC_DIR`` (a fresh temporary directory when unset), merged at scrape time.
Label values come only from closed sets (the chain's STAGES, the error classes' ``code``, the
output formats, the two queue names), so no PHI and no unbounded series can reach a label.

The worker's main process serves ``/metrics``, ``/healthz`` (alive) and ``/readyz`` (consuming)
on ``DICOMFLEET_METRICS_PORT``; ``python -m workers.metrics probe`` checks ``/healthz`` (the
image's HEALTHCHECK).
"""
from __future__ import annotations

import atexit
import base64
import functools
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


_private: set[str] = set()  # directories this process made for itself


def _multiproc_dir() -> Path:
    """The shard directory, created (and exported to child processes) before prometheus_client loads."""
    path = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())
    if not path:
        path = tempfile.mkdtemp(prefix="dicomfleet-metrics-")
        os.environ[MULTIPROC_ENV] = path
        _private.add(path)
        owner = os.getpid()  # the creator removes it at exit; children inherit and leave it
        atexit.register(lambda: os.getpid() == owner and shutil.rmtree(path, ignore_errors=True))
    Path(path).mkdir(parents=True, exist_ok=True)
    return Path(path)


_multiproc_dir()

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, values  # noqa: E402
from prometheus_client.core import GaugeMetricFamily  # noqa: E402
from prometheus_client.exposition import choose_encoder  # noqa: E402

if not getattr(values.ValueClass, "_multiprocess", False):
    # prometheus_client was imported before the directory was set: switch to mmap-backed values.
    values.ValueClass = values.get_value_class()

from shared import __version__  # noqa: E402
from shared.errors import reason_code  # noqa: E402,F401 (re-exported: label-safe reason codes)
from shared.options import Format  # noqa: E402
from shared.timing import STAGES  # noqa: E402

STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
SERIES_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0)
#: Series outcomes: all instances converted, some failed (manifest written), failed as a whole, parked.
SERIES_OUTCOMES = ("done", "partial", "failed", "dead")
log = logging.getLogger(__name__)


@functools.cache
def _metrics() -> SimpleNamespace:
    """The metric objects, made on first use so that a worker can pick its shard directory first."""
    return SimpleNamespace(
        stage_seconds=Histogram("dicomfleet_stage_seconds", "Seconds per instance spent in each stage of the chain",
                                ["stage"], buckets=STAGE_BUCKETS),
        series_seconds=Histogram("dicomfleet_series_seconds", "Seconds to convert one series (manifest written)",
                                 ["priority"], buckets=SERIES_BUCKETS),
        instances=Counter("dicomfleet_instances", "Instances converted or failed, by reason code",
                          ["outcome", "reason"]),
        series=Counter("dicomfleet_series", "Series jobs by outcome and reason code", ["outcome", "reason"]),
        bytes_in=Counter("dicomfleet_bytes_in", "Bytes of DICOM source read"),
        bytes_out=Counter("dicomfleet_bytes_out", "Bytes of output written, by format", ["format"]),
        retries=Counter("dicomfleet_retries", "Series retried after a transient fault, by reason code", ["reason"]),
        dead_letters=Counter("dicomfleet_dead_letters", "Jobs parked as dead-letter, by reason code", ["reason"]),
    )


def families() -> set[str]:
    """Every family name a worker's /metrics can carry (counters with their ``_total``)."""
    made = {m._name + ("_total" if m._type == "counter" else "") for m in vars(_metrics()).values()}
    return made | {"dicomfleet_broker_up", "dicomfleet_queue_depth", "dicomfleet_queue_oldest_age_seconds",
                   "dicomfleet_build_info"}


def _format(name: object) -> str:
    return name if name in {f.value for f in Format} else "other"


def observe_instance(record: dict) -> None:
    """Count one instance record of `shared.chain.convert_instance` (the ``on_record`` hook)."""
    m = _metrics()
    error = record.get("error")
    m.instances.labels("failed" if error else "converted", reason_code(error and error.get("code"))).inc()
    for stage, seconds in (record.get("stages") or {}).items():
        if stage in STAGES:
            m.stage_seconds.labels(stage).observe(seconds)
    if record.get("source_bytes"):
        m.bytes_in.inc(record["source_bytes"])
    for out in record.get("outputs", ()):
        m.bytes_out.labels(_format(out.get("format"))).inc(out.get("size", 0))


def observe_series(outcome: str, *, seconds: float | None = None, code: str | None = None,
                   priority: str = "normal") -> None:
    """Count one finished series job; ``seconds`` (when a manifest was written) feeds the latency histogram."""
    if outcome not in SERIES_OUTCOMES:
        raise ValueError(f"series outcome must be one of {SERIES_OUTCOMES}, got {outcome!r}")
    from shared.jobs import PRIORITIES

    m = _metrics()
    m.series.labels(outcome, reason_code(code)).inc()
    if seconds is not None:
        m.series_seconds.labels(priority if priority in PRIORITIES else "normal").observe(seconds)


def count_retry(code: str | None) -> None:
    _metrics().retries.labels(reason_code(code)).inc()


def count_dead_letter(code: str | None = "dead_letter") -> None:
    _metrics().dead_letters.labels(reason_code(code)).inc()


# --- queue state, read from Redis at scrape time ---------------------------------------------

def _job_id(raw: str) -> str | None:
    """The job id inside a queued Celery message (kombu's JSON envelope, base64 body)."""
    try:
        envelope = json.loads(raw)
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]["job_id"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


class QueueCollector:
    """``dicomfleet_queue_depth`` and ``dicomfleet_queue_oldest_age_seconds`` per queue, and
    ``dicomfleet_broker_up``: a few Redis round trips per scrape, in the serving process only."""

    def __init__(self, settings, client=None) -> None:
        self.settings = settings
        self._client = client

    def _redis(self):
        if self._client is None:
            import redis

            self._client = redis.Redis.from_url(self.settings.broker, socket_timeout=3,
                                                socket_connect_timeout=3, decode_responses=True)
        return self._client

    def collect(self) -> Iterable:
        import redis

        queues = (self.settings.queue_high, self.settings.queue)
        up = GaugeMetricFamily("dicomfleet_broker_up", "1 when the broker answered this scrape")
        depth = GaugeMetricFamily("dicomfleet_queue_depth", "Jobs waiting in each queue", labels=["queue"])
        age = GaugeMetricFamily("dicomfleet_queue_oldest_age_seconds",
                                "Seconds the oldest waiting job has waited (0 when the queue is empty)",
                                labels=["queue"])
        try:
            client = self._redis()
            pipe = client.pipeline(transaction=False)
            for q in queues:
                pipe.llen(q)
                pipe.lindex(q, -1)  # kombu pushes on the left and pops on the right: -1 is the oldest
            rows = pipe.execute()
            oldest = {q: _job_id(rows[2 * i + 1]) if rows[2 * i + 1] else None for i, q in enumerate(queues)}
            pipe = client.pipeline(transaction=False)
            for job in oldest.values():
                pipe.hget(f"{self.settings.key_prefix}:job:{job}", "submitted")
            submitted = pipe.execute()
        except redis.RedisError:
            up.add_metric([], 0)
            yield up
            return
        now = time.time()
        up.add_metric([], 1)
        for i, q in enumerate(queues):
            depth.add_metric([q], rows[2 * i])
            if not rows[2 * i]:
                age.add_metric([q], 0)
            elif submitted[i] is not None:
                age.add_metric([q], max(0.0, now - float(json.loads(submitted[i]))))
        yield from (up, depth, age)


class BuildInfo:
    """The version, and which native paths this node runs: ``sha256_lanes`` 16 or 8 where sources
    and outputs are hashed in SIMD lanes, 1 where OpenSSL hashes one at a time (SHA extensions,
    or the extension not built); ``window`` "one-pass" or "numpy" (`render.WINDOW_ROUTE`); ``ssim``
    "one-pass" or "opencv" (`verify.SSIM_ROUTE`: the JPEG check, ~4× slower without its extension);
    ``deflate`` "one-pass" or "zlib-ng" (`png.DEFLATE_ROUTE`: PNG's deflate, ~3× slower for 16-bit
    without its extension, and other bytes of the same pixels: a fleet should run one)."""

    def collect(self) -> Iterable:
        from shared.digest import lanes
        from shared.png import DEFLATE_ROUTE
        from shared.pixels.render import WINDOW_ROUTE
        from shared.verify import SSIM_ROUTE

        info = GaugeMetricFamily("dicomfleet_build_info", "The running dicomfleet version and native paths",
                                 labels=["version", "sha256_lanes", "window", "ssim", "deflate"])
        info.add_metric([__version__, str(lanes()), WINDOW_ROUTE, SSIM_ROUTE, DEFLATE_ROUTE], 1)
        yield info


# --- serving ---------------------------------------------------------------------------------

_ready = threading.Event()


def mark_ready(ready: bool = True) -> None:
    """``/readyz`` answers 200 from the moment the worker consumes until it shuts down."""
    _ready.set() if ready else _ready.clear()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def use_worker_dir() -> Path:
    """Give this worker (and the processes it forks) its own shard directory under the configured
    one, emptied first: an emptyDir outlives a container restart, and several workers may share a
    machine. Directories of workers that are gone are removed. Call before anything is observed."""
    if _metrics.cache_info().currsize:
        raise RuntimeError("metrics were observed before the worker chose its shard directory")
    base = _multiproc_dir()
    if base.name.startswith("worker-"):  # already chosen (a re-exec'd worker inherits it)
        base = base.parent
    if str(base) in _private:  # nothing configured: a stable place, so a killed worker's shards get swept
        shutil.rmtree(base, ignore_errors=True)
        base = _own_directory(Path(tempfile.gettempdir()) / f"dicomfleet-metrics-{os.getuid()}")
    for old in base.glob("worker-*"):
        pid = old.name.removeprefix("worker-")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    own = base / f"worker-{os.getpid()}"
    shutil.rmtree(own, ignore_errors=True)
    own.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(own)
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(own, ignore_errors=True))
    return own


def _own_directory(path: Path) -> Path:
    """``path``, made 0700 if missing; where it exists but is not this user's own real directory
    closed to others (another user made it first, in a shared /tmp: their shards would be merged
    into this worker's /metrics), a fresh private directory instead."""
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        st = path.lstat()
        if not (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077):
            return Path(tempfile.mkdtemp(prefix="dicomfleet-metrics-"))
    return path


def mark_process_dead(pid: int) -> None:
    multiprocess.mark_process_dead(pid)


def registry(settings=None, client=None) -> CollectorRegistry:
    """Every process's shards merged, plus queue state when ``settings`` are given."""
    reg = CollectorRegistry(auto_describe=False)
    multiprocess.MultiProcessCollector(reg)
    reg.register(BuildInfo())
    if settings is not None:
        reg.register(QueueCollector(settings, client))
    return reg


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(self.registry), content_type)
        elif path == "/healthz":
            self._send(200, b"ok\n")
        elif path == "/readyz":
            self._send(200, b"ready\n") if _ready.is_set() else self._send(503, b"not consuming\n")
        else:
            self._send(404, b"not found\n")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # scrapes every 30 s are not news
        pass


def serve(port: int, settings=None, *, host: str = "0.0.0.0", client=None) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz from a daemon thread; returns the server (``.shutdown()``)."""
    handler = type("Handler", (_Handler,), {"registry": registry(settings, client)})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server


def install(app, settings) -> None:
    """Wire metrics into a Celery worker: its own shards and the server at start, readiness,
    retries, and dead pool processes' shards (prefork)."""
    from celery import signals

    if not settings.metrics_port:
        return

    @signals.worker_init.connect(weak=False)
    def _start(**_) -> None:
        use_worker_dir()
        try:
            serve(settings.metrics_port, settings)
        except OSError as err:  # the worker still converts; its probes will say what is wrong
            log.error("metrics server not started: port %s: %s", settings.metrics_port, err.strerror)

    @signals.worker_ready.connect(weak=False)
    def _ready_on(**_) -> None:
        mark_ready(True)

    @signals.worker_shutting_down.connect(weak=False)
    def _ready_off(**_) -> None:
        mark_ready(False)

    @signals.worker_process_shutdown.connect(weak=False)
    def _dead(pid=None, **_) -> None:
        mark_process_dead(pid or os.getpid())

    @signals.task_retry.connect(weak=False)
    def _retry(reason=None, **_) -> None:
        cause = getattr(reason, "exc", None) or reason  # celery.exceptions.Retry wraps the fault
        count_retry(getattr(cause, "code", "other"))


def probe(port: int, path: str = "/healthz", timeout: float = 3.0) -> str | None:
    """None when ``path`` answers 200 on localhost, else a one-line reason."""
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urlopen(url, timeout=timeout) as resp:  # noqa: S310 (a fixed loopback URL)
            return None if resp.status == 200 else f"{url} answered {resp.status}"
    except HTTPError as err:
        return f"{url} answered {err.code}"
    except (URLError, OSError) as err:
        return f"{url} did not answer ({getattr(err, 'reason', err)})"


def main(argv: list[str] | None = None) -> int:
    """``python -m workers.metrics probe [PATH]``: exit 0 when the worker's endpoint answers 200."""
    from shared.errors import ConfigError
    from shared.settings import Settings

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "probe" or len(args) > 2:
        print("usage: python -m workers.metrics probe [/healthz|/readyz|/metrics]", file=sys.stderr)
        return 2
    try:
        port = Settings.from_env().metrics_port
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not port:
        print("error: DICOMFLEET_METRICS_PORT is 0: no metrics server to probe", file=sys.stderr)
        return 2
    problem = probe(port, args[1] if len(args) > 1 else "/healthz")
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
