"""A whole fleet on this machine: an S3 server, Redis queues under a unique prefix, worker processes.

Used by the integration tests and by `make bench` (`measure`): producer → Redis → workers → S3,
with real processes. The S3 server is moto's S3 server on loopback (MinIO's binary is not installable
here), served by `producer.s3server`; the code talks to it with the ``minio`` SDK exactly as to MinIO.
"""
from __future__ import annotations

import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: env of a fleet: DICOMFLEET_* names only (see shared/settings.py)
Env = dict[str, str]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


class S3Server:
    """moto's S3 server (`producer.s3server`) on a loopback port; `stop`/`start` keep the port
    (moto keeps no state)."""

    def __init__(self, port: int | None = None, log_dir: str | None = None, *, latency_ms: float = 0) -> None:
        self.port = port or free_port()
        self.latency_ms = latency_ms  # a network's round trip on every request (producer.s3server)
        self.endpoint = f"127.0.0.1:{self.port}"
        self.log = Path(log_dir or tempfile.gettempdir()) / f"moto-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "S3Server":
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "producer.s3server", "-H", "127.0.0.1", "-p", str(self.port),
                 *(["--latency-ms", str(self.latency_ms), "--threads", "64"] if self.latency_ms else [])],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, 20, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def client(self):
        from minio import Minio

        return Minio(self.endpoint, access_key="fleet", secret_key="fleet-secret", secure=False,
                     region="us-east-1")

    def make_bucket(self, name: str) -> str:
        client = self.client()
        if not client.bucket_exists(name):
            client.make_bucket(name)
        return name

    def env(self) -> Env:
        return {"DICOMFLEET_S3_ENDPOINT": self.endpoint, "DICOMFLEET_S3_ACCESS_KEY": "fleet",
                "DICOMFLEET_S3_SECRET_KEY": "fleet-secret", "DICOMFLEET_S3_SECURE": "false",
                "DICOMFLEET_S3_REGION": "us-east-1"}


def fleet_env(s3: S3Server, name: str | None = None, **settings: object) -> Env:
    """Env for one isolated fleet: its own queues and Redis keys (Redis DB 0 is shared)."""
    name = name or f"df-{uuid.uuid4().hex[:10]}"
    env = {**s3.env(), "DICOMFLEET_QUEUE": f"{name}.normal", "DICOMFLEET_QUEUE_HIGH": f"{name}.high",
           "DICOMFLEET_KEY_PREFIX": name, "DICOMFLEET_METRICS_PORT": "0"}
    env.update({f"DICOMFLEET_{k.upper()}": str(v) for k, v in settings.items()})
    return env


class Worker:
    """One ``dicomfleet worker`` process (its own process group, as a pod would be)."""

    def __init__(self, env: Env, concurrency: int = 1, log_dir: str | None = None, loglevel: str = "INFO",
                 **settings: object) -> None:
        self.env = {**os.environ, **env, **{f"DICOMFLEET_{k.upper()}": str(v) for k, v in settings.items()}}
        self.concurrency = concurrency
        self.loglevel = loglevel
        self.log = Path(log_dir or tempfile.gettempdir()) / f"worker-{uuid.uuid4().hex[:8]}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "Worker":
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from producer.cli import main; main()", "worker",
                 "--concurrency", str(self.concurrency), "--loglevel", self.loglevel],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if b" ready." in self.log.read_bytes():
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker not ready after {timeout:.0f} s: {self.log.read_text()[-2000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def children(self) -> list[int]:
        """The worker's pool processes."""
        try:
            with open(f"/proc/{self.pid}/task/{self.pid}/children") as fh:
                return [int(p) for p in fh.read().split()]
        except OSError:
            return []

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the whole worker: main process and pool, as a node loss or an OOM kill would."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        try:  # stray pool processes of a killed worker
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.returncode


def apply_env(env: Env) -> None:
    """Point this process at a fleet (the producer side of a test or a benchmark)."""
    from shared import store

    os.environ.update(env)
    store.s3_client.cache_clear()
    store.open_store.cache_clear()


@contextmanager
def pointed_at(env: Env) -> Iterator[None]:
    """This process pointed at a fleet for the block, its own environment restored after."""
    previous = {k: os.environ.get(k) for k in env}
    try:
        apply_env(env)
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        apply_env({})


@contextmanager
def _one_slice(src: str) -> Iterator[str]:
    """A directory holding the first file of ``src``: a one-slice series for a warm-up run."""
    first = min(p for p in Path(src).iterdir() if p.is_file())
    with tempfile.TemporaryDirectory(prefix="warm-up-") as tmp:
        shutil.copy(first, tmp)
        yield tmp


def measure(src: str, *, workers: int = 2, formats: tuple[str, ...] = ("png",), deid: bool = False,
            timeout: float = 600) -> dict:
    """Run producer → Redis → one worker with ``workers`` processes → S3 on a directory.

    Workers are started and ready, and a one-slice job has been through the fleet, before the
    clock starts: the fleet's fixed costs (the producer's first connections and process pool, the
    worker's pool) stay out of it, as the one-slice start-up is taken out of the local runs'
    figures. The clock stops when every job is done.
    Returns slices, seconds and slices/s (the `make bench` fleet figure).
    """
    from shared.options import ConvertOptions

    importlib.import_module("workers.client")  # Celery: the producer's set-up, before the clock

    from .submit import submit, wait

    s3 = S3Server().start()
    env = fleet_env(s3, visibility_timeout=max(600, int(timeout)))
    worker = Worker(env, concurrency=workers)
    try:
        with pointed_at(env):
            bucket = s3.make_bucket(f"bench-{uuid.uuid4().hex[:8]}")
            worker.start()
            opts = ConvertOptions(formats=formats, deid=deid)
            with _one_slice(src) as first:  # warm-up: the fleet's start-up, as for the local runs
                wait([j.job_id for j in submit([first], f"s3://{bucket}/warm-up", opts).jobs], timeout=timeout)
            started = time.perf_counter()
            result = submit([src], f"s3://{bucket}/out", opts)
            records = wait([j.job_id for j in result.jobs], timeout=timeout, poll=0.05)
            seconds = time.perf_counter() - started
    finally:
        worker.stop()
        s3.stop()
    slices = sum(int(r.get("instances", 0)) for r in records.values())
    failed = [r.get("reason") for r in records.values() if r.get("state") != "done"]
    if failed:
        raise RuntimeError(f"fleet run failed: {failed[0]}")
    return {"slices": slices, "seconds": seconds, "slices_per_s": slices / seconds, "workers": workers}


def measure_local(src: str, *, workers: int = 2, formats: tuple[str, ...] = ("png",), deid: bool = False) -> dict:
    """The local `convert` chain (scan, pool, manifest) writing to the same kind of S3 server as
    `measure`, on the same clock (from the scan to the last manifest; interpreter and server start
    excluded): beside `measure` it separates the queue's cost from the S3 server's."""
    from shared.options import ConvertOptions

    from .local import run_local

    s3 = S3Server().start()
    try:
        with pointed_at(fleet_env(s3)):
            bucket = s3.make_bucket(f"bench-{uuid.uuid4().hex[:8]}")
            opts = ConvertOptions(formats=formats, deid=deid)
            with _one_slice(src) as first:  # warm-up, as `measure` does
                run_local([first], f"s3://{bucket}/warm-up", opts, workers=workers)
            started = time.perf_counter()
            summary = run_local([src], f"s3://{bucket}/out", opts, workers=workers)
            seconds = time.perf_counter() - started
    finally:
        s3.stop()
    if summary.failures:
        raise RuntimeError(f"local run to S3 failed: {summary.failures[0][2]}")
    return {"slices": summary.converted, "seconds": seconds, "slices_per_s": summary.converted / seconds,
            "workers": workers}


if __name__ == "__main__":  # python -m producer.fleetrun DIR [WORKERS] [--local]
    import json

    n = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2].isdigit() else 2
    run = measure_local if "--local" in sys.argv[2:] else measure
    print(json.dumps(run(sys.argv[1], workers=n)))
