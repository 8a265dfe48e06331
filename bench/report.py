"""Summaries of the samples: medians, ratios to the floor, the issue targets, a terminal table."""
from __future__ import annotations

import platform
import statistics
import sys


def machine() -> dict:
    """What the figures were measured on (they only mean something as ratios on one machine)."""
    import cv2
    import numpy
    import pydicom

    model = ""
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    except OSError:
        pass
    from shared.runtime import usable_cores

    return {"nproc": usable_cores(), "cpu": model, "kernel": platform.release(),
            "python": sys.version.split()[0], "numpy": numpy.__version__,
            "opencv": cv2.__version__, "pydicom": pydicom.__version__, "sha256": sha256_speed()}


def sha256_speed(messages: int = 16, size: int = 512 * 1024) -> dict:
    """How fast this CPU hashes CT-sized messages, in GB/s (best of 3): OpenSSL one at a time, and
    the way the chain hashes a group (`shared.digest`: lanes, or OpenSSL where ``lanes`` is 1).
    The chain hashes every source and output, the floor only its outputs: the beat-the-floor
    ratio moves with this figure from one host to another."""
    import hashlib
    import os
    import time

    from shared.digest import lanes, sha256_many

    data = [os.urandom(size) for _ in range(messages)]

    def rate(fn) -> float:
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - started)
        return round(messages * size / best / 1e9, 2)

    return {"lanes": lanes(), "openssl_gbps": rate(lambda: [hashlib.sha256(d).digest() for d in data]),
            "chain_gbps": rate(lambda: sha256_many(data))}


def machine_line(m: dict) -> str:
    """The machine in one line, for the terminal and docs/benchmarks.md."""
    sha = m.get("sha256") or {}
    hashing = (f", SHA-256 {sha['openssl_gbps']} GB/s (OpenSSL), {sha['chain_gbps']} GB/s as the chain hashes"
               f" ({sha['lanes']} lane{'s' if sha['lanes'] != 1 else ''})") if sha else ""
    return (f"{m['nproc']} cores ({m['cpu']}), Linux {m['kernel']}, Python {m['python']}, numpy {m['numpy']}, "
            f"OpenCV {m['opencv']}, pydicom {m['pydicom']}{hashing}")


def summarise(name: str, samples: list, slices: int) -> dict:
    """Median wall, CPU and peak RSS over the successful runs of one contender."""
    good = [s for s in samples if s.ok]
    if not good:
        return {"name": name, "ok": False, "error": samples[-1].error if samples else "not run"}
    wall = statistics.median(s.wall for s in good)
    cpu = statistics.median(s.cpu for s in good)
    rss = statistics.median(s.rss_mb for s in good)
    return {"name": name, "ok": True, "runs": len(good), "wall_s": round(wall, 4),
            "cpu_s": round(cpu, 4), "peak_rss_mb": round(rss, 1),
            "slices_per_s": round(slices / wall, 2), "cpu_ms_per_slice": round(cpu * 1000 / slices, 3),
            "walls": [round(s.wall, 4) for s in good],
            "rounds": [i for i, s in enumerate(samples) if s.ok]}  # which round each wall is from


def add_ratios(rows: dict[str, dict], floors: dict[str, str | None]) -> None:
    """×floor for wall, CPU and RSS (>1 means slower / more than the floor)."""
    for name, row in rows.items():
        ref = rows.get(floors.get(name) or "")
        if not row.get("ok") or not ref or not ref.get("ok"):
            continue
        row["floor"] = ref["name"]
        row["x_floor_wall"] = round(row["wall_s"] / ref["wall_s"], 3)
        row["x_floor_cpu"] = round(row["cpu_s"] / ref["cpu_s"], 3)
        row["x_floor_rss"] = round(row["peak_rss_mb"] / ref["peak_rss_mb"], 3)


def _wall(rows: dict, name: str) -> float | None:
    row = rows.get(name)
    return row["wall_s"] if row and row.get("ok") else None


def paired_ratio(a: dict | None, b: dict | None, *, less_a: float = 0.0, less_b: float = 0.0) -> float | None:
    """``a``'s wall ÷ ``b``'s, each less a fixed part (its start-up): the median over the rounds
    both ran of the ratio within the round, else the ratio of their medians. Contenders run
    round-robin, a minute or less apart within a round, so a slow phase of a shared host (which
    lasts minutes) weighs on both sides of each ratio instead of on whichever ran through it."""
    if not a or not b or not a.get("ok") or not b.get("ok"):
        return None
    walls_a = dict(zip(a.get("rounds", ()), a.get("walls", ())))
    walls_b = dict(zip(b.get("rounds", ()), b.get("walls", ())))
    ratios = [(walls_a[r] - less_a) / (walls_b[r] - less_b) for r in sorted(walls_a.keys() & walls_b.keys())
              if walls_a[r] > less_a and walls_b[r] > less_b]
    if ratios:
        return statistics.median(ratios)
    if a["wall_s"] > less_a and b["wall_s"] > less_b:
        return (a["wall_s"] - less_a) / (b["wall_s"] - less_b)
    return None


def speed_up_limit(workers: int) -> float:
    """Issue 6's N-worker target: N workers on N cores at least 0.85·N times one."""
    return round(0.85 * workers, 2)


def targets(rows: dict, workers: int, startup: float | None = None,
            floor_startup: float | None = None, pool_startup: float | None = None) -> list[dict]:
    """The targets of issues 2, 3 and 6, each as a measured ratio and whether it holds.
    ``startup``: wall seconds of a one-slice run, the fixed cost no number of workers divides;
    ``floor_startup``: the same for the floor, so that throughputs compare slice for slice;
    ``pool_startup``: the one-slice run with N workers (its pool's start and end included), the
    N-worker side's own fixed cost (w1's stands in when it was not measured)."""
    out: list[dict] = []

    def check(what: str, issue: int, value: float | None, limit: float, below: bool) -> None:
        if value is None:
            out.append({"target": what, "issue": issue, "value": None, "met": None})
            return
        met = value <= limit if below else value >= limit
        out.append({"target": what, "issue": issue, "value": round(value, 3), "limit": limit, "met": met})

    def ratio(a: str, b: str, less_a: float = 0.0, less_b: float = 0.0) -> float | None:
        return paired_ratio(rows.get(a), rows.get(b), less_a=less_a, less_b=less_b)

    png1 = "convert png w1"
    check("png w1 wall ÷ floor png", 2, ratio(png1, "floor png"), 1.3, True)
    check("png w1 wall ÷ floor png", 6, ratio(png1, "floor png"), 1.15, True)
    check("dicom2jpg wall ÷ png w1", 2, ratio("dicom2jpg", png1), 1.0, False)
    check("dicom2jpg wall ÷ png w1", 6, ratio("dicom2jpg", png1), 1.5, False)
    check("dcmj2pnm per file wall ÷ png w1", 6, ratio("dcmj2pnm per file", png1), 5.0, False)
    for fmt in ("png", "png16"):
        mine, ref = f"convert {fmt} w1", f"floor {fmt}"
        check(f"floor {fmt} wall ÷ {fmt} w1 (beat the floor)", 6, ratio(ref, mine), 2.0, False)
        if startup is not None and floor_startup is not None and _wall(rows, mine) and _wall(rows, ref):
            # throughput: time per slice, each side without its own start-up
            check(f"  same, per slice: start-up excluded (floor {floor_startup:.2f} s, ours {startup:.2f} s)",
                  6, ratio(ref, mine, floor_startup, startup), 2.0, False)
    check("png w1 deid wall ÷ png w1 (de-id adds ≤ 10%)", 3, ratio("convert png w1 deid", png1), 1.1, True)
    if workers > 1:
        speed_up = speed_up_limit(workers)

        def scaling(what: str, one: str, many: str, start: float | None, start_many: float | None) -> None:
            check(what, 6, ratio(one, many), speed_up, False)
            if start is not None and start_many is not None and _wall(rows, one) and _wall(rows, many):
                label = f"{start:.2f} s" if start_many == start else \
                    f"w1 {start:.2f} s, w{workers} {start_many:.2f} s"
                check(f"  same, start-up ({label}) excluded", 6, ratio(one, many, start, start_many),
                      speed_up, False)

        pngn = f"convert png w{workers}"
        scaling(f"png speed-up w{workers} ÷ w1 (≥ 0.85·N)", png1, pngn, startup,
                pool_startup if pool_startup is not None else startup)
        # the yardstick: the floor in N processes that share nothing (each starts as one floor)
        scaling(f"  the machine: floor png w1 ÷ w{workers} (independent processes)", "floor png",
                f"floor png w{workers}", floor_startup, floor_startup)
        fleetn = f"fleet png w{workers}"
        check(f"fleet speed-up w{workers} ÷ w1 (≥ 0.85·N)", 4, ratio("fleet png w1", fleetn), speed_up, False)
        # the fleet's own clock starts at submit (servers and workers up): against local without
        # its start-up, so that both are submit/scan → last output
        check(f"fleet png w{workers} ÷ png w{workers} without start-up (overhead < 20%)", 4,
              ratio(fleetn, pngn, 0.0, startup) if startup is not None else None, 1.2, True)
        check(f"  same, local also to the S3 server: the queue's own overhead", 4,
              ratio(fleetn, f"convert png w{workers} [s3]"), 1.2, True)
    return out


def long_series_targets(memory: list[dict], workers: int, slices: int,
                        startup: float | None = None, pool_startup: float | None = None) -> list[dict]:
    """png w{N} ÷ w1 on the memory check's long series, where a run's fixed start-up weighs a
    fifth of what it does on the timed series: paired within its rounds (`paired_ratio`) when
    the rows hold their walls, else the ratio of their medians; and with each side's start-up
    (``startup``, ``pool_startup``: one-slice runs with 1 and N workers) taken out."""
    rows = {row["workers"]: row for row in memory if "error" not in row}
    if workers < 2 or 1 not in rows or workers not in rows:
        return []

    def timed(row: dict) -> dict:  # the shape of a contender's summary, for paired_ratio
        walls = row.get(f"walls_{slices}", [])
        return {"ok": True, "wall_s": slices / row[f"slices_per_s_{slices}"], "walls": walls,
                "rounds": list(range(len(walls)))}

    one, many = timed(rows[1]), timed(rows[workers])
    limit = speed_up_limit(workers)
    out = []
    many_startup = pool_startup if pool_startup is not None else startup
    for what, less, less_many in ((f"  same, a {slices}-slice series (whole runs)", 0.0, 0.0),
                                  (f"  same, a {slices}-slice series, start-up excluded", startup, many_startup)):
        if less is None or less_many is None:
            continue
        value = paired_ratio(one, many, less_a=less, less_b=less_many)
        if value is not None:
            out.append({"target": what, "issue": 6, "value": round(value, 3), "limit": limit,
                        "met": value >= limit})
    return out


def _fmt(value, spec: str) -> str:
    """``value`` formatted, or a dash padded to the same width when there is none."""
    if isinstance(value, (int, float)):
        return format(value, spec)
    width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
    return format("-", f">{width}" if width else "")


#: (heading, row key, format, terminal width) of the contender tables.
COLUMNS = (("input", "input", "", 6), ("slices/s", "slices_per_s", ".1f", 9),
           ("CPU ms/slice", "cpu_ms_per_slice", ".2f", 12), ("peak RSS MiB", "peak_rss_mb", ".0f", 12),
           ("wall s", "wall_s", ".2f", 7), ("×floor wall", "x_floor_wall", ".2f", 11),
           ("×floor CPU", "x_floor_cpu", ".2f", 10), ("×floor RSS", "x_floor_rss", ".2f", 10))


def _lines(rows: dict[str, dict], skipped: dict[str, str]) -> list[tuple[str, list[str] | str]]:
    """(name, formatted cells) per contender, or (name, why there are none)."""
    out: list[tuple[str, list[str] | str]] = []
    for name, r in rows.items():
        if not r.get("ok"):
            out.append((name, f"failed: {r.get('error', '')}"))
        else:
            out.append((name, [_fmt(r.get(key), spec) if spec else str(r.get(key, ""))
                               for _, key, spec, _ in COLUMNS]))
    return out + [(name, f"skipped: {reason}") for name, reason in skipped.items()]


def table(rows: dict[str, dict], skipped: dict[str, str]) -> str:
    """The terminal table: one line per contender, ratios to its floor."""
    head = f"{'contender':<28}" + "".join(f" {h:>{w}}" for h, _, _, w in COLUMNS)
    lines = [head, "-" * len(head)]
    for name, cells in _lines(rows, skipped):
        text = cells if isinstance(cells, str) else "".join(
            f" {c:>{w}}" for c, (_, _, _, w) in zip(cells, COLUMNS))
        lines.append(f"{name:<28}{' ' + text if isinstance(cells, str) else text}")
    return "\n".join(lines)


def targets_table(checks: list[dict]) -> str:
    lines = []
    for c in checks:
        state = {True: "met", False: "NOT met", None: "not measured"}[c["met"]]
        limit = "" if c["value"] is None else f" (limit {c['limit']})"
        lines.append(f"issue {c['issue']}: {c['target']:<44} {_fmt(c['value'], '.2f'):>6}{limit} {state}")
    return "\n".join(lines)


def _stage_names(profiles: list[dict]) -> list[str]:
    """The stages present, in chain order (shared/timing.py), then the unattributed rest."""
    from shared.timing import STAGES

    present = {k for p in profiles for k in p["ms_per_slice"]}
    order = [*STAGES, "unattributed"]
    return [k for k in order if k in present] + sorted(present - set(order))


def stages_table(profiles: list[dict]) -> str:
    stages = _stage_names(profiles)
    head = f"{'ms per slice':<14}" + "".join(f"{s[:9]:>10}" for s in stages) + f"{'instance':>10}"
    lines = [head]
    for p in profiles:
        lines.append(f"{p['formats']:<14}" + "".join(_fmt(p["ms_per_slice"].get(s), ">10.2f") for s in stages)
                     + f"{p['instance_ms']:>10.2f}")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """The tables of docs/benchmarks.md, from a results.json (written beside it as results.md)."""
    m, p = results["machine"], results["parameters"]
    lines = [f"{p['slices']} slices of {p['size']}×{p['size']}, median of {p['runs']} run(s), N = {p['workers']}. "
             f"Machine: {machine_line(m)}.", "",
             "| contender | " + " | ".join(h for h, _, _, _ in COLUMNS) + " |",
             "|---|---|" + "---:|" * (len(COLUMNS) - 1)]
    for name, cells in _lines(results["contenders"], results.get("skipped", {})):
        text = cells if isinstance(cells, str) else " | ".join(cells)
        lines.append(f"| {name} | {text} |")
    lines += ["", "| issue | target | measured | limit | met |", "|---|---|---:|---:|---|"]
    for c in results["targets"]:
        met = {True: "yes", False: "**no**", None: "not measured"}[c["met"]]
        lines.append(f"| {c['issue']} | {c['target']} | {_fmt(c['value'], '.2f')} | {c.get('limit', '')} | {met} |")
    if results.get("stages"):
        stages = _stage_names(results["stages"])
        lines += ["", "| ms per slice | " + " | ".join(stages) + " | instance |",
                  "|---|" + "---:|" * (len(stages) + 1)]
        for s in results["stages"]:
            cells = " | ".join(_fmt(s["ms_per_slice"].get(k), ".2f").strip() for k in stages)
            lines.append(f"| {s['formats']} | {cells} | {s['instance_ms']:.2f} |")
    for row in results.get("memory", []):
        if "error" in row:
            lines += ["", f"Memory, {row['workers']} worker(s): failed: {row['error']}"]
            continue
        sizes = sorted(int(k.rsplit("_", 1)[1]) for k in row if k.startswith("rss_mb_"))
        lines.append("")
        lines.append(f"Memory, {row['workers']} worker(s): peak RSS {row[f'rss_mb_{sizes[0]}']} MiB at "
                     f"{sizes[0]} slices, {row[f'rss_mb_{sizes[1]}']} MiB at {sizes[1]} (×{row['rss_ratio']}).")
    return "\n".join(lines) + "\n"
