"""dicomfleet's conversion chain: pure functions from DICOM bytes to verified outputs.

No Celery, no CLI, no storage client here beyond `shared.store`; producer and workers both use it.
"""
import os
import sys

__version__ = "0.1.0"

# GDCM runs only in a child interpreter (shared/gdcm_child.py): its C++ aborts the process on
# some corrupt JPEG data. Marking its module absent here, before anything of ours imports pydicom,
# keeps pydicom from loading it in-process at all (its SWIG module is ~50 ms of every start-up,
# and nothing can then call it in-process by mistake). The child is a fresh interpreter and
# imports GDCM normally. ``setdefault``: if GDCM was imported already, gdcm_child removes it
# from pydicom's plugins instead.
sys.modules.setdefault("gdcm", None)  # type: ignore[arg-type]

# numpy's OpenBLAS starts a thread per core when numpy is imported, and those threads spin: ~0.1 s
# of CPU on the other cores in every process that imports numpy first thing, competing with the
# pool processes. The chain uses no BLAS (its parallelism is processes), so one thread, unless
# the environment says otherwise; effective when numpy is not imported yet (our entry points).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
