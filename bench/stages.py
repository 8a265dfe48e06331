"""Where one slice's time goes: the chain's own per-stage timings (shared/timing.py), summed over
a series converted in this process in the chunks a one-process run uses (`chain.chunked`).

usage: python -m bench.stages SRC OUT [--format png]... [--deid]   (prints JSON: ms per slice)
"""
from __future__ import annotations

import argparse
import json
import os
import time
from collections import Counter


def profile(src: str, out: str, formats: list[str], deid: bool = False) -> dict:
    """ms per slice for every stage, the instance total and the wall time per slice."""
    from shared.chain import chunked, convert_chunk, instance_task
    from shared.options import ConvertOptions
    from shared.timing import STAGES

    opts = ConvertOptions(formats=tuple(formats), deid=deid).to_json()
    paths = sorted(os.path.join(src, name) for name in os.listdir(src))
    totals: Counter = Counter()
    instance = 0.0
    started = time.perf_counter()
    tasks = [instance_task(path, index, "study/series", out, opts) for index, path in enumerate(paths, start=1)]
    for record in (r for chunk in chunked(tasks, 1) for r in convert_chunk(chunk)):
        if record["error"]:
            raise SystemExit(f"bench.stages: instance {record['index']} failed: {record['error']['reason']}")
        totals.update(record["stages"])
        instance += record["seconds"]
    wall = time.perf_counter() - started
    n = max(len(paths), 1)
    ms = {stage: round(totals[stage] * 1000 / n, 3) for stage in STAGES if stage in totals}
    ms["unattributed"] = round((instance - sum(totals.values())) * 1000 / n, 3)
    return {"formats": "+".join(formats), "slices": len(paths), "ms_per_slice": ms,
            "instance_ms": round(instance * 1000 / n, 3), "wall_ms": round(wall * 1000 / n, 3)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--format", action="append", dest="formats")
    ap.add_argument("--deid", action="store_true")
    a = ap.parse_args(argv)
    print(json.dumps(profile(a.src, a.out, a.formats or ["png"], a.deid)))


if __name__ == "__main__":
    main()
