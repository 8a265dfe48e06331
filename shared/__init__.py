"""dicomfleet's conversion chain: pure functions from DICOM bytes to verified outputs.

No Celery, no CLI, no storage client here beyond `shared.store`; producer and workers both use it.
"""
import sys

__version__ = "0.1.0"

# GDCM runs only in a child interpreter (shared/gdcm_child.py): its C++ aborts the process on
# some corrupt JPEG data. Marking its module absent here, before anything of ours imports pydicom,
# keeps pydicom from loading it in-process at all (its SWIG module is ~50 ms of every start-up,
# and nothing can then call it in-process by mistake). The child is a fresh interpreter and
# imports GDCM normally. ``setdefault``: if GDCM was imported already, gdcm_child removes it
# from pydicom's plugins instead.
sys.modules.setdefault("gdcm", None)  # type: ignore[arg-type]
