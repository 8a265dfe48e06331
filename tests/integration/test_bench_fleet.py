"""The fleet figures of `make bench` come from real runs: the fleet and the local chain to S3."""
from __future__ import annotations

import os

import pytest

from producer.fleetrun import measure, measure_local
from tests.synthetic import write_series

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_series(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-series")
    write_series(out, slices=12, size=64, seed=5)
    return str(out)


def test_measure_local_and_fleet_convert_every_slice_and_restore_the_environment(small_series):
    before = {k: v for k, v in os.environ.items() if k.startswith("DICOMFLEET_")}
    local = measure_local(small_series, workers=2)
    fleet = measure(small_series, workers=2, timeout=120)
    assert (local["slices"], local["workers"]) == (12, 2)
    assert (fleet["slices"], fleet["workers"]) == (12, 2)
    assert local["seconds"] > 0 and fleet["seconds"] > 0
    assert {k: v for k, v in os.environ.items() if k.startswith("DICOMFLEET_")} == before
