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
    """The fleet with 1 and N worker processes, and the local chain with N processes writing to
    the same kind of S3 server on the same clock: fleet ÷ that is the queue's own overhead, apart
    from the S3 test server's cost (a Python server on the cores the chain runs on)."""
    skip = _missing()
    fleet = [Contender(f"fleet png w{n}", "fleet",
                       lambda i, o, n=n: [sys.executable, "-m", "producer.fleetrun", i, str(n)],
                       "png", workers=n, floor="floor png", skip=skip, self_timed=True)
             for n in sorted({1, workers})]
    local_s3 = Contender(f"convert png w{workers} [s3]", "fleet",
                         lambda i, o: [sys.executable, "-m", "producer.fleetrun", i, str(workers), "--local"],
                         "png", workers=workers, floor="floor png", skip=skip, self_timed=True)
    return fleet + [local_s3]
