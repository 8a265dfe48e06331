"""shared/runtime.py: malloc settings reach glibc; the core count follows the affinity mask."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from shared import runtime


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_mallopt_is_found_and_accepted_by_glibc():
    assert runtime._glibc_mallopt(runtime._M_TRIM_THRESHOLD, runtime.TRIM_BYTES) is True


def test_usable_cores_follows_the_affinity_mask():
    probe = "import os; os.sched_setaffinity(0, {0}); from shared.runtime import usable_cores; print(usable_cores())"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.dirname(__file__)))
    assert done.stdout.strip() == "1"
    assert runtime.usable_cores() == len(os.sched_getaffinity(0))
