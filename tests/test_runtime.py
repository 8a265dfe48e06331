"""shared/runtime.py: malloc settings reach glibc; the core count follows the affinity mask."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from shared import runtime

REPO = os.path.dirname(os.path.dirname(__file__))


def probe(code: str, *args: str, env: dict | None = None) -> str:
    """What a fresh interpreter running ``code`` in the checkout prints."""
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                          cwd=REPO, env=env).stdout


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_mallopt_is_found_and_accepted_by_glibc():
    assert runtime._glibc_mallopt(runtime._M_TRIM_THRESHOLD, runtime.TRIM_BYTES) is True


def test_usable_cores_follows_the_affinity_mask():
    code = "import os; os.sched_setaffinity(0, {0}); from shared.runtime import usable_cores; print(usable_cores())"
    out = probe(code)
    assert out.strip() == "1"
    assert runtime.usable_cores() == len(os.sched_getaffinity(0))


def test_pydicom_is_imported_without_requests_which_still_imports_afterwards():
    """`import_pydicom_lean` keeps requests and tqdm out of a command's start-up; pydicom's test
    file downloads fall back to urllib, and the process can still import requests itself."""
    code = ("import sys; from shared.runtime import import_pydicom_lean; import_pydicom_lean(); "
             "print('pydicom' in sys.modules, 'requests' in sys.modules, 'tqdm' in sys.modules); "
             "import requests, tqdm; from pydicom.data import download; "
             "print(requests.__name__, tqdm.__name__, download.HAVE_REQUESTS)")
    out = probe(code)
    assert out.split("\n")[:2] == ["True False False", "requests tqdm False"]


def test_opencv_is_loaded_on_first_use_and_single_threaded():
    code = ("import sys; from shared import chain; from shared.runtime import opencv; "
             "print('cv2' in sys.modules, opencv().getNumThreads(), opencv() is sys.modules['cv2'])")
    out = probe(code)
    assert out.strip() == "False 1 True"


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="thread count from /proc")
@pytest.mark.parametrize("preset,threads", [(None, "1"), ("2", "2")])
def test_numpy_starts_no_blas_threads_unless_the_environment_asks(preset, threads):
    """Importing shared first keeps numpy's OpenBLAS to the calling thread (its pool threads spin
    ~0.1 s of CPU at import); a value the environment sets wins."""
    code = ("import shared, numpy, os, re; "
             "print(os.environ['OPENBLAS_NUM_THREADS'], "
             "re.search(r'Threads:\\s+(\\d+)', open('/proc/self/status').read()).group(1))")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    if preset:
        env["OPENBLAS_NUM_THREADS"] = preset
    out = probe(code, env=env)
    assert out.split() == [threads, threads]


def test_imports_without_gc_collect_nothing_then_freeze_and_restore_the_collector():
    """Inside the block no collection runs however much is allocated; after it, what was made is
    frozen (out of later collections) and the collector is as it was: on again, or still off."""
    code = "\n".join([
        "import gc",
        "from shared.runtime import imports_without_gc",
        "runs, kept = [], []",
        "gc.callbacks.append(lambda phase, info: runs.append(phase) if phase == 'start' else None)",
        "for enabled in (True, False):",
        "    gc.enable() if enabled else gc.disable()",
        "    runs.clear(); frozen = gc.get_freeze_count()",
        "    with imports_without_gc():",
        "        kept.append([[i] for i in range(100_000)])",
        "        inside = (gc.isenabled(), len(runs))",
        "    print(*inside, gc.get_freeze_count() - frozen >= 100_000, gc.isenabled())",
    ])
    out = probe(code)
    assert out.splitlines() == ["False 0 True True", "False 0 True False"]


def test_modules_pydicom_imports_but_a_conversion_never_uses_load_on_first_use():
    """After `import_pydicom_lean` the HTTP stack of pydicom's downloader and pydicom's examples
    are stand-ins, not loaded; the first attribute asked of each loads the real module, which
    then stands in sys.modules and in its package."""
    code = (
        "import sys, types; from shared.runtime import DEFERRED_MODULES, import_pydicom_lean; import_pydicom_lean(); "
        "print([type(sys.modules[n]).__name__ for n in DEFERRED_MODULES], "
        "[n for n in ('http.client', 'ssl') if type(sys.modules.get(n)) is types.ModuleType]); "
        "import pydicom, urllib.request; from pydicom.data import download; "
        "print(pydicom.examples.ct.Rows, urllib.request.Request('http://example.invalid/x').host, "
        "download.urllib.request is sys.modules['urllib.request'], "
        "[type(sys.modules[n]) is types.ModuleType for n in DEFERRED_MODULES], 'ssl' in sys.modules)")
    out = probe(code)
    assert out.splitlines() == [
        "['_Deferred', '_Deferred'] []",
        "128 example.invalid True [True, True] True"]


_REGISTRY_PROBE = """
import json, sys
if sys.argv[1] == "lean":
    from shared.runtime import import_pydicom_lean
    import_pydicom_lean()
import shared.dataset  # GDCM out of process, as the chain has it
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import AllTransferSyntaxes
from shared.runtime import PLUGIN_LIBRARIES, load_pixel_plugins

def registry():
    out = {}
    for uid in AllTransferSyntaxes:
        for kind, get in (("decoder", get_decoder), ("encoder", get_encoder)):
            try:
                coder = get(uid)
            except NotImplementedError:
                continue
            out[f"{kind} {uid}"] = [list(coder._available), sorted(coder._unavailable)]
    return out

before = registry()
loaded = sorted(name for name in PLUGIN_LIBRARIES if name in sys.modules)
load_pixel_plugins()
print(json.dumps([loaded, sum(bool(v[0]) for v in before.values()), registry()]))
"""


def test_pixel_plugins_load_later_into_the_registry_an_ordinary_import_builds():
    """A lean import leaves pydicom's plugin libraries unloaded and its compressed syntaxes
    without plugins; `load_pixel_plugins` then gives every decoder and encoder the plugins an
    ordinary import gives, in the same order (the order picks which plugin decodes)."""
    (lean_loaded, lean_ready, lean), (eager_loaded, eager_ready, eager) = (
        json.loads(probe(_REGISTRY_PROBE, mode)) for mode in ("lean", "eager"))
    assert lean_loaded == [] and lean_ready <= 2  # RLE's own numpy decoder and encoder
    assert set(eager_loaded) >= {"pylibjpeg", "jpeg_ls", "PIL"} and eager_ready >= 15
    assert lean == eager


def test_versions_from_dist_info_names_are_importlib_metadatas_own():
    """`dist_info_version` answers what importlib.metadata answers for every installed
    distribution whose version it settles (most of them, pydicom among them), and nothing when
    an .egg-info comes first on the path or the name is unknown."""
    import importlib.metadata

    answered = 0
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        found = runtime.dist_info_version(name)
        assert found is None or found == importlib.metadata.version(name), name
        answered += found is not None
    assert answered >= 50 and runtime.dist_info_version("pydicom") == importlib.metadata.version("pydicom")
    assert runtime.dist_info_version("no-such-distribution-here") is None


def test_an_egg_info_first_on_the_path_leaves_the_version_to_importlib(tmp_path, monkeypatch):
    (tmp_path / "a" / "Foo_Bar-1.0.egg-info").mkdir(parents=True)
    (tmp_path / "b" / "foo_bar-2.0.dist-info").mkdir(parents=True)
    monkeypatch.setattr(sys, "path", [str(tmp_path / "b")])
    assert runtime.dist_info_version("foo.bar") == runtime.dist_info_version("Foo-Bar") == "2.0"
    monkeypatch.setattr(sys, "path", [str(tmp_path / "a"), str(tmp_path / "b")])
    assert runtime.dist_info_version("foo-bar") is None


def test_pydicom_learns_its_version_without_importlib_metadata():
    code = ("import sys; from shared.runtime import import_pydicom_lean; import_pydicom_lean(); "
             "import pydicom; print('importlib.metadata' in sys.modules, pydicom.__version__); "
             "import importlib.metadata; print(importlib.metadata.version('pydicom'), "
             "hasattr(importlib.metadata, 'distributions'))")
    out = probe(code)
    first, second = out.splitlines()
    version = first.split()[1]
    assert first == f"False {version}" and second == f"{version} True"
