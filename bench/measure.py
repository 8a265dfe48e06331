"""Time one child process: wall seconds, CPU seconds (user + sys) and peak RSS.

``os.wait4`` returns the child's own resource usage, which includes every descendant it waited for
(pool workers, one ``dcmj2pnm`` per file), so CPU is the whole tree's and peak RSS the largest
single process's — per worker for a pool, which is what "flat in series length" is about.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Sample:
    wall: float  # seconds
    cpu: float  # user + sys seconds of the child and its reaped descendants
    rss_mb: float  # peak resident set of the largest process, MiB
    ok: bool
    error: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def run_child(argv: list[str], *, cwd: str | None = None, env: dict | None = None,
              log: str | None = None) -> Sample:
    """Run ``argv`` to completion and measure it; stdout/stderr go to ``log`` (or are dropped)."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    try:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here; Popen must not wait again
    finally:
        if log:
            out.close()
    ok = proc.returncode == 0
    error = "" if ok else f"exit {proc.returncode}: {_last_line(log)}"
    return Sample(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, ok, error)


def _last_line(log: str | None) -> str:
    if not log or not os.path.exists(log):
        return "no output kept"
    with open(log, "rb") as fh:
        lines = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


def fresh_dir(path: str) -> str:
    """An empty output directory (removed and made again; not part of any timing)."""
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path
