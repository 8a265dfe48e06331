"""The fleet under faults and flags the local convert already reports: Redis gone for a few seconds
mid-series, and JPEG outputs below the SSIM threshold in `status` and `submit --wait` (exit 3)."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from producer.cli import app
from tests.synthetic import write_series

from .conftest import check_against_manifests

pytestmark = pytest.mark.integration

#: named, not inherited: a previous test's private Redis URL may linger in this process's environment
REDIS = "redis://127.0.0.1:6379/0"


def test_status_and_submit_wait_flag_jpegs_below_the_ssim_threshold(fleet_factory, tmp_path):
    fleet = fleet_factory(broker_url=REDIS, result_backend=REDIS)
    src = tmp_path / "in"
    write_series(src, slices=4, size=64, seed=12)
    fleet.worker()
    runner = CliRunner()
    low = runner.invoke(app, ["submit", str(src), "--out", fleet.dest, "-f", "jpeg", "--quality", "5",
                              "--wait", "--timeout", "120"])
    assert low.exit_code == 3, low.output
    [job_id] = [line.split()[0] for line in low.output.splitlines() if "  queued  " in line]
    assert "flagged 4 JPEG output(s) below the SSIM threshold (see the manifests)" in low.output
    [manifest] = check_against_manifests(fleet.objects())
    assert manifest["below_ssim_threshold"] == 4 and manifest["counts"]["failed"] == 0

    status = runner.invoke(app, ["status"])  # flagged jobs are listed without --all, like failures
    assert status.exit_code == 3, status.output
    lines = status.output.splitlines()
    assert lines[0].startswith("0 queued, 0 running, 1 done, 0 failed")
    assert lines[1] == (f"{job_id}  done     {manifest['series']}  4/4 converted, 4 outputs, "
                        "4 JPEG below the SSIM threshold")
    assert lines[2].strip() == "flagged 4 JPEG output(s) below the SSIM threshold (see the manifests)"

    met = runner.invoke(app, ["submit", str(src), "--out", fleet.dest, "-f", "jpeg", "--quality", "5",
                              "--ssim-threshold", "0.3", "--wait", "--timeout", "120"])
    assert met.exit_code == 0, met.output
    assert "flagged" not in met.output
    [other] = [line.split()[0] for line in met.output.splitlines() if "  queued  " in line]
    both = runner.invoke(app, ["status", other])
    assert both.exit_code == 0 and "flagged" not in both.output, both.output
