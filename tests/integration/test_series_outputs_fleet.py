"""Series outputs from the fleet: a real worker process makes the PDF report, the stacked volume
and the QA sheet (reading its JPEG back from S3) exactly as `dicomfleet convert` does."""
from __future__ import annotations

import pytest

from producer.local import run_local
from producer.submit import submit, wait
from shared.options import ConvertOptions
from tests.synthetic import write_series

from .conftest import REDIS, check_against_manifests

pytestmark = pytest.mark.integration


def test_worker_writes_the_series_outputs_the_local_convert_writes(fleet_factory, tmp_path):
    fleet = fleet_factory(broker_url=REDIS, result_backend=REDIS)
    src = tmp_path / "in"
    write_series(src, slices=8, size=64, seed=21)
    opts = ConvertOptions(formats=("jpeg", "pdf", "npy"), series_stack=True, qa_sheet=True)
    fleet.worker()
    result = submit([str(src)], fleet.dest, opts)
    records = wait([j.job_id for j in result.queued], timeout=120)
    assert {r["state"] for r in records.values()} == {"done"}

    objects = fleet.objects()
    [manifest] = check_against_manifests(objects)  # series outputs hashed and listed like the slices'
    assert manifest["counts"]["outputs"] == 8 and manifest["counts"]["series_outputs"] == 4
    assert len(objects) == 1 + 8 + 4  # the manifest, a JPEG per slice (npy only stacked), the series
    series = manifest["series_outputs"]
    assert [e["format"] for e in series] == ["pdf", "npy", "json", "qa"] and manifest["series_errors"] == []
    assert series[3]["compared"].endswith("/0005.jpg") and series[3]["ssim"] > 0.98

    local = tmp_path / "local"
    run_local([str(src)], str(local), opts, workers=1)
    reference = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert objects.keys() == reference.keys()
    assert [k for k in reference if objects[k] != reference[k]] == [], "fleet and local outputs differ"
