"""dicomfleet's conversion chain: pure functions from DICOM bytes to verified outputs.

No Celery, no CLI, no storage client here beyond `shared.store`; producer and workers both use it.
"""
__version__ = "0.1.0"
