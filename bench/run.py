"""`make bench`: time the project's `convert` beside the floor and the peers on one synthetic CT
series, in one run on one machine, and report medians and ratios to the floor.

usage: python -m bench.run [--slices 200] [--runs 3] [--workers N] [--only NAME,...] [--memory]
                           [--profile] [--no-stages] [--no-install] [--out bench/out/results.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from shared.runtime import usable_cores

from . import data, report
from .contenders import BENCH_ENV, REPO, Contender, contenders, dicomfleet_exe, has_deid
from .measure import Sample, fresh_dir, run_child

DEFAULT_OUT = REPO / "bench" / "out" / "results.json"


def _count_files(path: str) -> int:
    return sum(len(names) for _, _, names in os.walk(path))


def _select(all_: list[Contender], only: str | None) -> list[Contender]:
    """Contenders whose name holds one of the comma-separated words, plus the floors they need."""
    if not only:
        return all_
    words = [w.strip() for w in only.split(",") if w.strip()]
    chosen = {c.name for c in all_ if any(w in c.name for w in words)}
    chosen |= {c.floor for c in all_ if c.name in chosen and c.floor}
    return [c for c in all_ if c.name in chosen]


def _check_outputs(s: Sample, out: str, slices: int) -> Sample:
    """A run that exits 0 but wrote fewer files than slices failed all the same."""
    written = _count_files(out)
    if s.ok and written < slices:
        return Sample(s.wall, s.cpu, s.rss_mb, False, f"wrote {written} files for {slices} slices")
    return s


def _own_clock(s: Sample, log: str, slices: int) -> Sample:
    """Wall time from the contender's own JSON last line (its set-up excluded), slices checked."""
    if not s.ok:
        return s
    try:
        with open(log, "rb") as fh:
            last = fh.read().decode(errors="replace").strip().splitlines()[-1]
        mine = json.loads(last)
        seconds, done = float(mine["seconds"]), int(mine["slices"])
    except (OSError, IndexError, ValueError, KeyError, TypeError):
        return Sample(s.wall, s.cpu, s.rss_mb, False, "no JSON timing on its last line")
    if done < slices:
        return Sample(s.wall, s.cpu, s.rss_mb, False, f"converted {done} of {slices} slices")
    return Sample(seconds, s.cpu, s.rss_mb, True)


def default_outdir(workdir: Path) -> Path:
    """Where contenders write: tmpfs when there is one, so that the disk writeback of one
    contender's ~100 MB of outputs does not land in the next one's timing (it did: the run after
    `png+tiff w2` read up to 10% slower whatever it was)."""
    shm = Path("/dev/shm")
    return shm / "dicomfleet-bench-out" if shm.is_dir() and os.access(shm, os.W_OK) else workdir


def time_contenders(active: list[Contender], inputs: dict[str, Path], runs: int, workdir: Path,
                    slices: int, outdir: Path | None = None) -> dict[str, list[Sample]]:
    """Run every contender ``runs`` times, round-robin, so that load drift on a shared machine
    falls on all of them alike; every other round in reverse order, so that neither side of a
    pair always runs first (a drift within the round cancels over two). A contender that fails
    once is not run again."""
    outdir = outdir or workdir
    samples: dict[str, list[Sample]] = {c.name: [] for c in active}
    for src in {inputs[c.source] for c in active}:
        data.warm(src)
    for r in range(runs):
        for c in active if r % 2 == 0 else active[::-1]:
            if samples[c.name] and not samples[c.name][-1].ok:
                continue
            out = fresh_dir(str(outdir / "out"))
            log = str(workdir / "last.log")
            env = {**os.environ, **c.env}
            s = run_child(c.argv(str(inputs[c.source]), out), cwd=str(REPO), env=env, log=log)
            s = _own_clock(s, log, slices) if c.self_timed else _check_outputs(s, out, slices)
            samples[c.name].append(s)
            state = f"{s.wall:6.2f} s  {s.rss_mb:5.0f} MiB" if s.ok else f"FAILED {s.error}"
            print(f"  run {r + 1}/{runs}  {c.name:<28} {state}", file=sys.stderr, flush=True)
    return samples


def stage_profiles(src: Path, workdir: Path, outputs: list[str]) -> list[dict]:
    """Per-stage ms per slice for each output set (" deid" appended: de-identification on), each
    measured in a child process."""
    found = []
    for fmt in outputs:
        kinds, _, deid = fmt.partition(" ")
        args = [a for f in kinds.split("+") for a in ("--format", f)] + (["--deid"] if deid else [])
        out = fresh_dir(str(workdir / "out"))
        done = subprocess.run([sys.executable, "-m", "bench.stages", str(src), out, *args], cwd=REPO,
                              capture_output=True, text=True, env={**os.environ, **BENCH_ENV})
        if done.returncode == 0:
            found.append(json.loads(done.stdout) | {"formats": fmt})
        else:
            print(f"  stages {fmt}: {(done.stderr.strip().splitlines() or ['failed'])[-1]}", file=sys.stderr)
    return found


def memory_check(workdir: Path, sizes: tuple[int, int], workers: int, runs: int,
                 outdir: Path | None = None) -> list[dict]:
    """Peak RSS of `convert png` on a short and a long series: streaming means it stays flat.

    Their walls give the speed-up on the long series, so the runs go in rounds as the timed
    contenders do: every (workers, series) once a round, odd rounds in reverse order, and each
    row keeps its walls in round order (``walls_<slices>``) for ratios paired within a round.
    Outputs go where the timed contenders' go (``outdir``, tmpfs), so that no run waits for an
    earlier one's disk writeback."""
    outdir = outdir or workdir
    counts = sorted({1, workers})
    sources = {slices: data.series(workdir, slices) for slices in sizes}
    order = [(n, slices) for n in counts for slices in sizes]
    walls: dict[tuple[int, int], list[float]] = {key: [] for key in order}
    rss: dict[tuple[int, int], list[float]] = {key: [] for key in order}
    failed: dict[int, str] = {}
    for round_no in range(runs):
        for n, slices in order if round_no % 2 == 0 else order[::-1]:
            if n in failed:
                continue
            data.warm(sources[slices])  # from the page cache for w1 as for wN: the speed-up is a target
            out = fresh_dir(str(outdir / "out"))
            s = run_child([dicomfleet_exe(), "convert", str(sources[slices]), "--out", out, "--no-deid",
                           "--workers", str(n)], cwd=str(REPO), log=str(workdir / "last.log"))
            if not s.ok:  # recorded, never fatal: the timings already taken are kept
                print(f"  memory w{n} {slices} slices: FAILED {s.error}", file=sys.stderr)
                failed[n] = s.error
                continue
            walls[n, slices].append(s.wall)
            rss[n, slices].append(s.rss_mb)
    rows = []
    for n in counts:
        if n in failed:
            rows.append({"workers": n, "error": failed[n]})
            continue
        row: dict = {"workers": n}
        for slices in sizes:
            row[f"rss_mb_{slices}"] = round(statistics.median(rss[n, slices]), 1)
            row[f"slices_per_s_{slices}"] = round(slices / statistics.median(walls[n, slices]), 1)
            row[f"walls_{slices}"] = [round(w, 4) for w in walls[n, slices]]
            print(f"  memory w{n} {slices} slices: {row[f'rss_mb_{slices}']} MiB", file=sys.stderr, flush=True)
        row["rss_ratio"] = round(row[f"rss_mb_{sizes[1]}"] / row[f"rss_mb_{sizes[0]}"], 3)
        rows.append(row)
    return rows


def startup_wall(workdir: Path, size: int, runs: int, *, floor: bool = False, workers: int = 1) -> float | None:
    """Best wall of `convert png` (or of the floor's png) on a one-slice series: the fixed cost of
    a run (interpreter, imports, command line, manifest) that no number of workers divides; with
    ``workers`` > 1 also the pool's (importing it, forking, shutting it down: ~20 ms more on 2
    vCPUs). The best, not the median: a fixed cost is what is left when the machine's noise is
    not added to it."""
    src = data.series(workdir, 1, size)
    walls = []
    for _ in range(runs):
        out = fresh_dir(str(workdir / "out"))
        argv = [sys.executable, "-m", "bench.yardsticks", "floor", str(src), out, "--format", "png"] if floor \
            else [dicomfleet_exe(), "convert", str(src), "--out", out, "--no-deid", "--workers", str(workers)]
        s = run_child(argv, cwd=str(REPO), log=str(workdir / "last.log"))
        if not s.ok:
            print(f"  start-up{' (floor)' if floor else ''}: FAILED {s.error}", file=sys.stderr)
            return None
        walls.append(s.wall)
    return min(walls)


def pyinstrument_profile(src: Path, workdir: Path, dest: Path) -> str | None:
    """A pyinstrument text profile of `convert png` with one worker (the bench extra has it)."""
    out = fresh_dir(str(workdir / "out"))
    done = subprocess.run([sys.executable, "-m", "pyinstrument", "-r", "text", "-o", str(dest),
                           dicomfleet_exe(), "convert", str(src), "--out", out, "--no-deid", "--workers", "1"],
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        return (done.stderr.strip().splitlines() or ["pyinstrument failed"])[-1]
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=200)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3, help="runs per contender; the median is reported")
    ap.add_argument("--workers", type=int, default=usable_cores(),
                    help="N for the N-worker runs (default: cores)")
    ap.add_argument("--only", help="comma-separated words: time only contenders whose name holds one")
    ap.add_argument("--workdir", default=os.environ.get("DICOMFLEET_BENCH_DIR", "/tmp/dicomfleet-bench"))
    ap.add_argument("--outdir", default=os.environ.get("DICOMFLEET_BENCH_OUT"),
                    help="where contenders write (default: tmpfs /dev/shm when available)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results")
    ap.add_argument("--memory", action="store_true", help="also compare peak RSS on 200 vs 1000 slices (slow)")
    ap.add_argument("--memory-slices", type=int, default=1000)
    ap.add_argument("--profile", action="store_true", help="also write a pyinstrument profile of png w1")
    ap.add_argument("--no-stages", action="store_true", help="skip the per-stage profile")
    ap.add_argument("--no-compressed", action="store_true", help="skip the JPEG 2000 / JPEG-LS inputs")
    ap.add_argument("--no-install", action="store_true", help="do not pip install dicom2jpg when missing")
    a = ap.parse_args(argv)
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    print(f"bench: writing/reusing a {a.slices}-slice {a.size}² CT series in {workdir}", file=sys.stderr)
    inputs: dict[str, Path] = {"raw": data.series(workdir, a.slices, a.size)}
    skipped: dict[str, str] = {}
    kinds = () if a.no_compressed else tuple(data.COMPRESSED)
    for kind in kinds:
        try:
            inputs[kind] = data.compressed_copy(inputs["raw"], kind)
        except RuntimeError as err:
            skipped[f"input [{kind}]"] = str(err)
    every = contenders(a.workers, compressed=tuple(k for k in kinds if k in inputs),
                       install_peers=not a.no_install)
    chosen = _select(every, a.only)
    for c in chosen:
        if c.skip:
            skipped[c.name] = c.skip
    active = [c for c in chosen if not c.skip]
    outdir = Path(a.outdir) if a.outdir else default_outdir(workdir)
    samples = time_contenders(active, inputs, a.runs, workdir, a.slices, outdir)
    rows = {c.name: report.summarise(c.name, samples[c.name], a.slices) for c in active}
    for c in active:
        rows[c.name].update({"group": c.group, "output": c.output, "input": c.source, "workers": c.workers})
    report.add_ratios(rows, {c.name: c.floor for c in active})
    startup = startup_wall(workdir, a.size, a.runs) if any(c.group == "project" for c in active) else None
    floor_startup = startup_wall(workdir, a.size, a.runs, floor=True) if startup is not None else None
    pool_startup = startup_wall(workdir, a.size, a.runs, workers=a.workers) \
        if startup is not None and a.workers > 1 else None
    checks = report.targets(rows, a.workers, startup, floor_startup, pool_startup)

    results: dict = {"machine": report.machine(), "shared_machine_note":
                     "2 cores shared with other engineers' test runs: compare ratios within one run",
                     "parameters": {"slices": a.slices, "size": a.size, "runs": a.runs, "workers": a.workers},
                     "contenders": rows, "skipped": skipped, "targets": checks, "startup_s": startup,
                     "floor_startup_s": floor_startup, "pool_startup_s": pool_startup}

    def save() -> None:  # after every phase, so that a later failure keeps what was measured
        results["bench_seconds"] = round(time.time() - started, 1)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        Path(a.out).with_suffix(".md").write_text(report.markdown(results))

    save()
    if not a.no_stages:
        outs = ["png", "png16", "jpeg", "tiff", "png+tiff"] + (["png deid"] if has_deid() else [])
        results["stages"] = stage_profiles(inputs["raw"], workdir, outs)
        save()
    if a.memory:
        print(f"bench: memory, {a.slices} vs {a.memory_slices} slices", file=sys.stderr)
        results["memory"] = memory_check(workdir, (a.slices, a.memory_slices), a.workers, max(1, min(a.runs, 5)),
                                         outdir)
        checks += report.long_series_targets(results["memory"], a.workers, a.memory_slices, startup,
                                              pool_startup)
        save()
    if a.profile:
        dest = Path(a.out).with_name("profile-png-w1.txt")
        error = pyinstrument_profile(inputs["raw"], workdir, dest)
        results["profile"] = str(dest) if error is None else f"failed: {error}"
    save()
    m = results["machine"]
    print(f"\n{a.slices} slices {a.size}², median of {a.runs} run(s); {report.machine_line(m)}")
    print(report.table(rows, skipped))
    print()
    print(report.targets_table(checks))
    if results.get("stages"):
        print()
        print(report.stages_table(results["stages"]))
    for row in results.get("memory", []):
        if "error" in row:
            print(f"memory w{row['workers']}: failed: {row['error']}")
            continue
        print(f"memory w{row['workers']}: peak RSS {row[f'rss_mb_{a.slices}']} MiB at {a.slices} slices, "
              f"{row[f'rss_mb_{a.memory_slices}']} MiB at {a.memory_slices} (×{row['rss_ratio']})")
    print(f"\nJSON: {a.out} (tables for docs/benchmarks.md: {Path(a.out).with_suffix('.md')})")
    return 0 if all(r.get("ok") for r in rows.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
