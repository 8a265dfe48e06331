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


def test_a_job_message_may_not_name_a_pseudonym_map_and_failure_records_never_do():
    """The map is a file of the machine that ran `convert`: a message asking a worker to append to
    some path (malformed, old or replayed) is refused; records keep only the map's use."""
    import json

    import pytest

    from shared.errors import ConfigError
    from shared.jobs import SeriesMessage, failure_record
    from shared.options import ConvertOptions

    opts = ConvertOptions(formats=("png",))
    good = SeriesMessage("j1", "2.25.1/2.25.2", "s3://b/out", ("/data/a.dcm",), opts)
    assert SeriesMessage.from_json(good.to_json()) == good
    bad = good.to_json()
    bad["options"] = {**bad["options"], "pseudonym_map": "/etc/victim.conf"}
    with pytest.raises(ConfigError, match="asks for a pseudonym map"):
        SeriesMessage.from_json(bad)
    mapped = SeriesMessage("j1", "2.25.1/2.25.2", "s3://b/out", ("/data/a.dcm",),
                           ConvertOptions(formats=("png",), pseudonym_map="/home/me/SMITH-map.bin"))
    record = json.loads(failure_record(mapped, "storage", "x", 1))
    assert "pseudonym_map" not in record["parameters"] and "SMITH" not in json.dumps(record)
