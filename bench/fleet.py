"""The fleet path in `make bench`: producer → Redis → one `dicomfleet worker` → S3 server (moto's,
served by `producer.s3server`).

``producer.fleetrun.measure`` starts the S3 server and a worker with N pool processes, waits until
they are ready, then times submit → every job done; it prints that time as JSON. The harness takes
the wall figure from there (``self_timed``) and CPU and peak RSS from the whole process tree, so
those also count the S3 server and the worker's start-up.
"""
from __future__ import annotations

import importlib.util
import socket
import sys

from .contenders import Contender


def _missing() -> str | None:
    """Why the fleet cannot run here, or None."""
    if importlib.util.find_spec("producer.fleetrun") is None:
        return "fleet path not built yet (no producer.fleetrun)"
    from producer.s3server import missing

    if why := missing():
        return why
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5):
            pass
    except OSError:
        return "no Redis on 127.0.0.1:6379"
    return None


def contenders(workers: int) -> list[Contender]:
    skip = _missing()
    return [Contender(f"fleet png w{n}", "fleet",
                      lambda i, o, n=n: [sys.executable, "-m", "producer.fleetrun", i, str(n)],
                      "png", workers=n, floor="floor png", skip=skip, self_timed=True)
            for n in sorted({1, workers})]
