"""Time one child process: wall seconds, CPU seconds (user + sys) and peak RSS.

``os.wait4`` returns the child's own resource usage, which includes every descendant it waited for
(pool workers, one ``dcmj2pnm`` per file), so CPU is the whole tree's and peak RSS the largest
single process's — per worker for a pool, which is what "flat in series length" is about.

Linux carries a process's peak RSS across ``exec``, and a child starts out sharing its parent's
pages, so a child spawned straight from the harness reports at least the harness's own RSS. Each
contender is therefore started by ``LAUNCHER``, a bare Python (``-I -S``, ~10 MiB) that spawns it,
waits for it and writes its figures to a file.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

#: Spawns argv[2:], waits, writes [wall s, CPU s, peak RSS KiB, exit code] as JSON to argv[1].
LAUNCHER = """
import json, os, sys, time
result, argv = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(result, "w") as fh:
    json.dump([wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, os.waitstatus_to_exitcode(status)], fh)
"""


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
    """Run ``argv`` to completion through ``LAUNCHER`` and measure it; stdout/stderr go to ``log``."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    fd, result = tempfile.mkstemp(prefix="bench-", suffix=".json")
    os.close(fd)
    try:
        launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER, result, *argv]
        try:
            subprocess.run(launcher, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                           stderr=subprocess.STDOUT, check=True)
        except subprocess.CalledProcessError:  # the launcher itself failed: argv[0] not found
            return Sample(0.0, 0.0, 0.0, False, f"cannot start {argv[0]}: {_last_line(log)}")
        with open(result) as fh:
            wall, cpu, rss_kib, code = json.load(fh)
    finally:
        if log:
            out.close()
        os.unlink(result)
    ok = code == 0
    error = "" if ok else f"exit {code}: {_last_line(log)}"
    return Sample(wall, cpu, rss_kib / 1024.0, ok, error)


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
