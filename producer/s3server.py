"""moto's S3 server for the tests and the bench, served lean: ``python -m producer.s3server -p PORT``.

The same moto S3 backend that ``moto_server`` serves, over real HTTP on loopback, reached with the
``minio`` SDK exactly as MinIO would be; only the wrapping differs, because on a 2-core machine the
S3 server's CPU is taken from the workers it serves (measured with 45 KB PUTs through S3Store:
3.0-3.7 ms of server CPU per PUT under ``moto_server``, 1.5-1.8 ms this way; the client's CPU
1.0 -> 0.7 ms, no new connection per request):

- moto's S3 Flask app itself (``create_backend_app("s3")``), not ``moto_server``'s dispatcher, which
  picks one of ~200 services per request by listing moto's package directory (a ``stat`` per
  module) and matching URL regexes: ~0.8 ms a request, for one service.
- waitress instead of werkzeug's development server: werkzeug answers every request with
  ``Connection: close`` (whatever the protocol version), so each PUT paid a TCP connect, a new
  server thread and a new client connection; waitress keeps HTTP/1.1 connections alive.
- path-style buckets only (as the fleet addresses MinIO) and no CORS headers: moto's own settings.

State lives in this one process and dies with it (stop and start on the same port = an S3 outage).
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os

#: requests served at once: one per pool process of a 2-process worker; 1 and 2 measured alike
#: (moto's Python holds the GIL), more only add switching
THREADS = 2


def missing() -> str | None:
    """Why this server cannot run here (a module of the test extra is absent), or None."""
    absent = [m for m in ("moto", "flask", "waitress") if importlib.util.find_spec(m) is None]
    return f"the S3 test server needs {', '.join(absent)} (the test extra)" if absent else None


def app():
    """moto's S3 WSGI app (moto reads its settings at import: set them first)."""
    os.environ.setdefault("S3_IGNORE_SUBDOMAIN_BUCKETNAME", "true")
    os.environ.setdefault("MOTO_DISABLE_GLOBAL_CORS", "true")
    from moto.moto_server.werkzeug_app import create_backend_app

    return create_backend_app("s3")


def with_latency(wsgi_app, seconds: float):
    """``wsgi_app`` answering every request ``seconds`` late: a network's round trip to MinIO/S3,
    to see what the chain does when a PUT takes 5–30 ms instead of loopback's fraction of one."""
    import time

    def delayed(environ, start_response):
        time.sleep(seconds)
        return wsgi_app(environ, start_response)

    return delayed


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-H", "--host", default="127.0.0.1")
    ap.add_argument("-p", "--port", type=int, required=True)
    ap.add_argument("--threads", type=int, default=THREADS)
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="answer every request this late (give enough --threads to overlap them)")
    a = ap.parse_args(argv)
    import waitress

    # "Task queue depth is N" is waitress noting that requests waited for a thread: expected here
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    served = with_latency(app(), a.latency_ms / 1000) if a.latency_ms > 0 else app()
    waitress.serve(served, host=a.host, port=a.port, threads=a.threads)


if __name__ == "__main__":
    main()
