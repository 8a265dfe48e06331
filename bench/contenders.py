"""What `make bench` times: the project's `convert`, the floor, the peers — each one child process.

A contender is a command line over an input series and an empty output directory. Its ``floor``
names the floor contender that does the same output from the same input: every figure is reported
as a ratio to it. Contenders whose tool is missing carry a ``skip`` reason instead of failing.
"""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

#: Output format sets timed for the project and the floor (png+tiff also writes the manifest).
FORMATS = ("png", "png16", "jpeg", "tiff", "png+tiff")
REPO = Path(__file__).resolve().parent.parent
#: A fixed key so the de-identified runs are deterministic; never a real secret.
BENCH_ENV = {"DICOMFLEET_DEID_KEY": "dicomfleet-bench-fixed-key-not-a-secret"}


@dataclass
class Contender:
    name: str
    group: str  # "floor" | "project" | "peer" | "fleet"
    argv: Callable[[str, str], list[str]]  # (input dir, output dir) -> command line
    output: str = "png"  # what it writes, e.g. "png+tiff"
    source: str = "raw"  # input series: "raw" or a key of bench.data.COMPRESSED
    workers: int = 1
    floor: str | None = None  # the floor contender its ratios are taken against
    skip: str | None = None  # why it is not run (tool missing, feature absent)
    env: dict = field(default_factory=dict)
    #: prints JSON {"seconds", "slices"} last: its own clock (set-up excluded), outputs not on disk
    self_timed: bool = False


def dicomfleet_exe() -> str:
    """The console script installed beside this interpreter: what a user runs."""
    exe = Path(sys.executable).with_name("dicomfleet")
    return str(exe) if exe.exists() else shutil.which("dicomfleet") or "dicomfleet"


def has_deid() -> bool:
    """De-identification arrives in its own issue as ``shared.deid``; time it once it exists."""
    try:
        return importlib.util.find_spec("shared.deid") is not None
    except ModuleNotFoundError:
        return False


def ensure_dicom2jpg(install: bool) -> str | None:
    """None when dicom2jpg imports, else the reason it is skipped.

    dicom2jpg depends on opencv-python, which would clash with the project's
    opencv-python-headless (same ``cv2`` module), so it is installed with ``--no-deps``: the rest of
    what it imports (numpy, pydicom, pylibjpeg) the project already has.
    """
    if importlib.util.find_spec("dicom2jpg") is not None:
        return None
    if not install:
        return "dicom2jpg not installed (pip install --no-deps dicom2jpg)"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "dicom2jpg"],
                          capture_output=True, text=True)
    importlib.invalidate_caches()
    if done.returncode != 0 or importlib.util.find_spec("dicom2jpg") is None:
        last = (done.stderr.strip().splitlines() or ["unknown error"])[-1]
        return f"dicom2jpg could not be installed with --no-deps ({last[:120]})"
    print("bench: installed dicom2jpg with --no-deps (its opencv-python would clash with "
          "opencv-python-headless)", file=sys.stderr)
    return None


def _floor(output: str, source: str = "raw") -> Contender:
    name = f"floor {output}" + ("" if source == "raw" else f" [{source}]")
    return Contender(name, "floor", lambda i, o: [sys.executable, "-m", "bench.yardsticks", "floor",
                                                  i, o, "--format", output],
                     output, source, floor=name)


def _floor_parts(workers: int) -> Contender:
    """The floor in ``workers`` independent processes, each on every N-th file: what the machine
    gives N processes that share nothing (the yardstick of the wN ÷ w1 target)."""
    script = ('pids=""; for k in $(seq "$3"); do "$4" -m bench.yardsticks floor "$1" "$2" --format png '
              '--part "$k/$3" & pids="$pids $!"; done; for p in $pids; do wait "$p" || exit 1; done')
    return Contender(f"floor png w{workers}", "floor",
                     lambda i, o: ["sh", "-c", script, "sh", i, o, str(workers), sys.executable],
                     "png", workers=workers, floor="floor png")


def _convert(output: str, workers: int, *, deid: bool = False, source: str = "raw") -> Contender:
    fmts = [a for f in output.split("+") for a in ("--format", f)]
    flags = [] if deid else ["--no-deid"]
    name = f"convert {output} w{workers}" + (" deid" if deid else "") + \
        ("" if source == "raw" else f" [{source}]")
    floor = f"floor {output}" + ("" if source == "raw" else f" [{source}]")
    return Contender(name, "project",
                     lambda i, o: [dicomfleet_exe(), "convert", i, "--out", o, *fmts, *flags,
                                   "--workers", str(workers)],
                     output, source, workers, floor, env=dict(BENCH_ENV))


def _dcmtk() -> Contender:
    script = 'for f in "$1"/*; do dcmj2pnm --write-png +Wi 1 "$f" "$2/${f##*/}.png" || exit 1; done'
    return Contender("dcmj2pnm per file", "peer", lambda i, o: ["sh", "-c", script, "sh", i, o],
                     floor="floor png",
                     skip=None if shutil.which("dcmj2pnm") else "DCMTK dcmj2pnm not on PATH")


def _dicom2jpg(skip: str | None) -> Contender:
    code = "import sys, dicom2jpg; dicom2jpg.dicom2png(sys.argv[1], sys.argv[2], multiprocessing=False)"
    return Contender("dicom2jpg", "peer", lambda i, o: [sys.executable, "-c", code, i, o],
                     floor="floor png", skip=skip)


def _naive() -> Contender:
    return Contender("pydicom+Pillow loop", "peer",
                     lambda i, o: [sys.executable, "-m", "bench.yardsticks", "naive", i, o],
                     floor="floor png")


# ---- FLEET SLOT ----------------------------------------------------------------------------------
# The fleet path (producer → Redis → workers → S3 server) lives in bench/fleet.py, on top of
# producer.fleetrun; it reports itself as skipped when the fleet or its servers are not there.
def _fleet(workers: int) -> list[Contender]:
    from bench import fleet

    return list(fleet.contenders(workers))
# --------------------------------------------------------------------------------------------------


def contenders(workers: int, *, compressed: tuple[str, ...] = ("j2k", "jls"),
               install_peers: bool = True) -> list[Contender]:
    """Every contender of a full run, in the order a round runs them: the two sides of each
    target next to each other (the floor, png w1, its de-identified twin, png wN and the peers;
    png16 beside its floor; the fleet beside the local run to S3), so that both sides of a ratio
    run within seconds of each other on a host whose speed drifts."""
    counts = sorted({1, workers})
    deid = has_deid()

    def with_deid(output: str, n: int) -> Contender:
        c = _convert(output, n, deid=True)
        if not deid:
            c.skip = "de-identification not available yet (no shared.deid)"
        return c

    out = [_floor("png"), _convert("png", 1), with_deid("png", 1),
           *(c for n in counts if n != 1 for c in (_convert("png", n), _floor_parts(n))),
           _dicom2jpg(ensure_dicom2jpg(install_peers)), _dcmtk(), _naive()]
    for f in FORMATS[1:]:
        out += [_floor(f), *(_convert(f, n) for n in counts)]
    out.append(with_deid("png+tiff", workers))
    for kind in compressed:
        out += [_floor("png", kind), _convert("png", 1, source=kind)]
    out += _fleet(workers)
    return out
