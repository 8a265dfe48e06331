"""Real parts for the fleet tests: moto's S3 server (producer.s3server) on a free loopback port,
Redis at 127.0.0.1:6379 (DB 0, every test with its own queue names and key prefix), real
`dicomfleet worker` processes."""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pytest
import redis

from producer import s3server
from producer.fleetrun import S3Server, Worker, apply_env, fleet_env
from shared.ledger import Ledger
from shared.settings import Settings


pytestmark = pytest.mark.integration

DEID_KEY = "5f" * 32
#: the shared Redis, named by tests that must not inherit a private one from the process environment
REDIS = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        return bool(redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1).ping())
    except redis.RedisError:
        return False


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    if why := s3server.missing():
        pytest.fail(why)
    if not _redis_up():
        pytest.fail("no Redis answers on 127.0.0.1:6379 (scripts/test-deps.sh starts one)")
    server = S3Server(log_dir=str(tmp_path_factory.mktemp("moto"))).start()
    yield server
    server.stop()


class Fleet:
    """One test's fleet: unique queues/keys, its bucket, the workers it started."""

    def __init__(self, s3: S3Server, log_dir: Path, **settings) -> None:
        self.s3 = s3
        self.log_dir = log_dir
        self.env = fleet_env(s3, DEID_KEY=DEID_KEY, **settings)
        self.workers: list[Worker] = []
        self.bucket = s3.make_bucket(f"t-{uuid.uuid4().hex[:12]}")
        self.dest = f"s3://{self.bucket}/out"
        apply_env(self.env)
        self.settings = Settings.from_env()
        self.ledger = Ledger(self.settings)

    def worker(self, concurrency: int = 1, start: bool = True, **settings) -> Worker:
        w = Worker(self.env, concurrency=concurrency, log_dir=str(self.log_dir), **settings)
        self.workers.append(w)
        return w.start() if start else w

    def objects(self, prefix: str = "out/") -> dict[str, bytes]:
        """Every object under the destination, by key relative to it."""
        client = self.s3.client()
        out = {}
        for obj in client.list_objects(self.bucket, prefix=prefix, recursive=True):
            resp = client.get_object(self.bucket, obj.object_name)
            out[obj.object_name[len(prefix):]] = resp.read()
            resp.close()
            resp.release_conn()
        return out

    def close(self) -> None:
        for w in self.workers:
            w.stop(timeout=5)
        try:
            keys = list(self.ledger.redis.scan_iter(f"{self.settings.key_prefix}:*"))
            keys += [self.settings.queue, self.settings.queue_high]
            keys += list(self.ledger.redis.scan_iter(f"_kombu.binding*{self.settings.key_prefix}*"))
            self.ledger.redis.delete(*keys)
        except redis.RedisError:  # a test's own Redis may be gone already
            pass


@pytest.fixture
def fleet_factory(s3, tmp_path):
    environ = dict(os.environ)  # a fleet points this process at its Redis/S3: undo that after
    fleets: list[Fleet] = []

    def make(server: S3Server | None = None, **settings) -> Fleet:
        fleet = Fleet(server or s3, tmp_path, **settings)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.close()
    os.environ.clear()
    os.environ.update(environ)
    apply_env({})


@pytest.fixture
def fleet(fleet_factory) -> Fleet:
    return fleet_factory()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_against_manifests(objects: dict[str, bytes]) -> list[dict]:
    """Every output's bytes hash to what its manifest says, per instance and per series (report,
    stacks and their sidecars, QA sheets); every object but manifests and dead-letter records is
    in a manifest once."""
    manifests = {k: json.loads(v) for k, v in objects.items() if k.endswith("/manifest.json")}
    assert manifests, "no manifest written"
    listed: list[str] = []
    for key, manifest in manifests.items():
        series = key[: -len("/manifest.json")]
        assert manifest["series"] == series
        indexes = [i["index"] for i in manifest["instances"]]
        assert indexes == list(range(1, len(indexes) + 1)), "each instance exactly once, in order"
        per_series = manifest.get("series_outputs", [])
        assert manifest["counts"].get("series_outputs", 0) == len(per_series)
        for out in [o for inst in manifest["instances"] for o in inst["outputs"]] + per_series:
            assert out["path"].startswith(series + "/"), out["path"]
            assert sha256(objects[out["path"]]) == out["sha256"], out["path"]
            assert len(objects[out["path"]]) == out["size"]
            listed.append(out["path"])
    assert len(listed) == len(set(listed)), "an output listed twice"
    outputs = {k for k in objects if not k.endswith(("/manifest.json", "/failure.json"))}
    assert outputs == set(listed), "objects not in any manifest (or missing)"
    return list(manifests.values())
