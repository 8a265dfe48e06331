"""producer.submit.plan: the same jobs, fingerprints and order whether files are read inline or
over a process pool (as `submit` does for local sources)."""
from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor

from producer.local import pool_map
from producer.submit import plan
from shared.options import ConvertOptions
from tests.synthetic import write_series


def test_plan_over_a_pool_equals_plan_inline(tmp_path):
    paths = write_series(tmp_path / "a", slices=37, size=32, seed=1)
    write_series(tmp_path / "b", slices=5, size=32, seed=2)
    opts = ConvertOptions(formats=("png",), deid=False)
    inline, skipped = plan([str(tmp_path)], "/dev/null/out", opts)
    with ProcessPoolExecutor(2) as pool:
        pooled, pooled_skipped = plan([str(tmp_path)], "/dev/null/out", opts, map_fn=pool_map(pool, 2))
    assert [(m.job_id, m.sources, fps) for m, fps in pooled] == [(m.job_id, m.sources, fps) for m, fps in inline]
    assert pooled_skipped == skipped == {}
    assert sorted(len(m.sources) for m, _ in inline) == [5, 37]
    by_source = {src: fp for m, fps in inline for src, fp in zip(m.sources, fps)}
    for path in paths:  # each fingerprint belongs to its own file
        assert by_source[str(path)] == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
