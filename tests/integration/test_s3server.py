"""The S3 test server (producer.s3server): moto's S3 over HTTP/1.1 keep-alive, used through S3Store
and the minio SDK as the workers use it."""
from __future__ import annotations

import os
import uuid

import urllib3
from minio import Minio

from producer.fleetrun import S3Server
from shared.store import S3Store


class _Counted(urllib3.HTTPConnectionPool):
    """A pool whose connections count their TCP connects (a closed connection reconnects in place)."""

    connects = 0

    class ConnectionCls(urllib3.connection.HTTPConnection):
        def connect(self) -> None:
            _Counted.connects += 1
            super().connect()


def _store(server: S3Server, bucket: str) -> S3Store:
    http = urllib3.PoolManager(maxsize=1, retries=urllib3.Retry(total=2, backoff_factor=0.1))
    http.pool_classes_by_scheme = {"http": _Counted}
    client = Minio(server.endpoint, access_key="fleet", secret_key="fleet-secret", secure=False,
                   region="us-east-1", http_client=http)
    return S3Store(f"s3://{bucket}/out", client=client)


def test_requests_share_one_connection_and_bytes_round_trip(s3):
    """Forty requests, one TCP connection (werkzeug's server behind moto_server closed every one),
    and every object reads back byte for byte, listed under its key."""
    store = _store(s3, s3.make_bucket(f"ka-{uuid.uuid4().hex[:12]}"))
    _Counted.connects = 0
    blobs = {f"s/{i:04d}.png": os.urandom(45_000 + i) for i in range(20)}
    for key, data in blobs.items():
        store.write(key, data)
    assert {key: store.read(key) for key in blobs} == blobs
    assert list(store.list("s")) == sorted(blobs)
    assert _Counted.connects == 1


def test_a_restarted_server_is_reached_again_on_a_pooled_connection(tmp_path):
    """Stop and start on the same port (an S3 outage): the client's kept-alive connection is dead,
    and the next write reconnects instead of failing (the state is gone: moto keeps none)."""
    server = S3Server(log_dir=str(tmp_path)).start()
    try:
        bucket = server.make_bucket(f"ka-{uuid.uuid4().hex[:12]}")
        store = _store(server, bucket)
        _Counted.connects = 0
        store.write("a.png", b"before")
        server.stop()
        server.start()
        server.make_bucket(bucket)
        store.write("a.png", b"after")
        assert store.read("a.png") == b"after"
        assert list(store.list()) == ["a.png"]
        assert _Counted.connects == 2  # seen closed before reuse, not failed and retried
    finally:
        server.stop()


def test_a_server_with_latency_serves_overlapping_writes_behind(tmp_path):
    """`--latency-ms` (the bench's stand-in for a network round trip) delays answers but serves
    every request, many at once: 20 writes behind the conversion all land, bytes intact."""
    server = S3Server(log_dir=str(tmp_path), latency_ms=20).start()
    try:
        bucket = server.make_bucket(f"lat-{uuid.uuid4().hex[:12]}")
        store = S3Store(f"s3://{bucket}/out", client=server.client())
        payloads = {f"{i:04d}.png": os.urandom(1000 + i) for i in range(20)}
        pending = [store.write_behind(key, data) for key, data in payloads.items()]
        assert [p.result(timeout=60) for p in pending] == [None] * 20
        assert {key: store.read(key) for key in payloads} == payloads
    finally:
        server.stop()
