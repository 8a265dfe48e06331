"""De-identification (DICOM PS3.15 Annex E): the chain's step between parse and convert.

`deidentify` applies the Basic Application Level Confidentiality Profile with the chosen options
to a parsed dataset, in place, with keyed pseudonyms (see `pseudonyms`), refuses or flags for
masking instances with burned-in text, records what it did in the dataset, and appends to the
reversible map when one is configured. `pseudonymous_prefix` names the output directories.

The package is light: the step's names load from `shared.deid.step` on first use.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["DeidResult", "deidentify", "manifest_entry", "patient_key", "pseudonymous_prefix"]

if TYPE_CHECKING:
    from .step import DeidResult, deidentify, manifest_entry, patient_key, pseudonymous_prefix


def __getattr__(name: str) -> Any:
    """The step's names (PEP 562), imported with `shared.deid.step` when first asked for."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import step

    value = globals()[name] = getattr(step, name)
    return value
