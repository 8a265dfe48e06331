"""The de-identification step (PS3.15 Annex E Basic Profile): what `shared.deid` exports.

Its own module so that the package's light parts (the output whitelist in `metadata`, keys,
the burned-in check) import without the profile's tables and the pseudonym machinery: a run
with de-identification off never loads them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from .. import __version__
from ..attributes import value_of
from ..dataset import put_element, text_value
from ..errors import BurnedInAnnotationError
from ..options import ConvertOptions
from .actions import META_REMOVE, Context, clean_elements, replace_uid, walk
from .burned_in import Region, burned_in_reason
from .profile import action_table, load_table, method_codes
from .pseudonyms import Pseudonymizer, current

__all__ = ["DeidResult", "deidentify", "manifest_entry", "patient_key", "pseudonymous_prefix"]

_MEDIA_SOP_UID = 0x00020003
_CLEANING_OPTIONS = frozenset({"clean-descriptors", "retain-patient-chars", "retain-device-id"})


@dataclass(frozen=True)
class DeidResult:
    """What the step decided for one instance (PHI-free: safe for records and manifests)."""

    mask: tuple[Region, ...] = ()
    masked_reason: str | None = None


def pseudonymous_prefix(study_uid: str, series_uid: str) -> str:
    """``<study>/<series>`` as the de-identified dataset's own UIDs: the output directory."""
    pseudo = current()
    return f"{pseudo.uid(study_uid)}/{pseudo.uid(series_uid)}"


def patient_key(ds: Dataset) -> str:
    """Who the instance belongs to, for the date shift and the map: Patient ID (with its issuer),
    else name and birth date, else the study (so at least a study stays consistent)."""
    pid = text_value(ds, 0x00100020)  # Patient ID
    if pid:
        issuer = text_value(ds, 0x00100021)  # Issuer of Patient ID
        return f"{pid}\0{issuer}" if issuer else pid
    name = text_value(ds, 0x00100010)  # Patient's Name
    birth = text_value(ds, 0x00100030)  # Patient's Birth Date
    if name or birth:
        return f"{name}\0{birth}"
    return "study\0" + text_value(ds, 0x0020000D)  # Study Instance UID


def deidentify(ds: Dataset, opts: ConvertOptions, pseudo: Pseudonymizer | None = None) -> DeidResult:
    """De-identify ``ds`` in place; raise BurnedInAnnotationError when its pixels may identify."""
    reason = burned_in_reason(ds)
    if reason and opts.burned_in != "mask":
        raise BurnedInAnnotationError(
            f"{reason}: refused, the pixels may show identifying text "
            "(use --burned-in mask with --mask-region X,Y,W,H to black out the text)")
    pseudo = pseudo or current()
    key = patient_key(ds)
    options = opts.deid_options
    ctx = Context(pseudo, action_table(options), pseudo.shift_days(key),
                  safe_private="retain-safe-private" in options,
                  collect=not _CLEANING_OPTIONS.isdisjoint(options),
                  pairs={} if opts.pseudonym_map else None, patient_key=key,
                  patient_id=str(value_of(ds, "PatientID", "") or ""))
    walk(ds, ctx)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:  # group 0002 only: one table attribute, the rest names the sender
        for tag in META_REMOVE:
            if tag in meta:
                del meta[tag]
        replace_uid(meta, _MEDIA_SOP_UID, ctx)
    clean_elements(ctx.to_clean, ctx.identifiers)
    _stamp(ds, options, masked=reason is not None)
    if opts.pseudonym_map:
        from .mapping import Entry, open_map

        open_map(opts.pseudonym_map).append(
            Entry(key, pseudo.patient_id(key), ctx.shift_days, ctx.pairs or {}))
    if reason:
        return DeidResult(mask=opts.mask_regions, masked_reason=reason)
    return DeidResult()


def _stamp(ds: Dataset, options: tuple[str, ...], *, masked: bool) -> None:
    """Record the profile and options in the dataset (PS3.3 C.7.1.1 Patient Identity Removed)."""
    for elem in _stamp_elements(options, masked):
        put_element(ds, elem)


@lru_cache(maxsize=32)
def _stamp_elements(options: tuple[str, ...], masked: bool) -> tuple[DataElement, ...]:
    """The stamp, built once per choice of options (a Dataset costs ~10 µs to make) and shared
    by every instance: read-only by contract, nobody edits the de-identification record."""
    items = []
    for option in method_codes(options, masked=masked):
        item = Dataset()
        item.add(DataElement(0x00080100, "SH", option.code))  # Code Value
        item.add(DataElement(0x00080102, "SH", "DCM"))  # Coding Scheme Designator
        item.add(DataElement(0x00080104, "LO", option.meaning))  # Code Meaning
        items.append(item)
    temporal = ("UNMODIFIED" if "retain-long-full-dates" in options else
                "MODIFIED" if "retain-long-modified-dates" in options else "REMOVED")
    return (
        DataElement(0x00120062, "CS", "YES"),  # Patient Identity Removed
        DataElement(0x00120063, "LO", [f"dicomfleet {__version__}",  # De-identification Method
                                       f"{load_table().reference} Basic Profile", *options]),
        DataElement(0x00120064, "SQ", Sequence(items)),  # De-identification Method Code Sequence
        DataElement(0x00280303, "CS", temporal),  # Longitudinal Temporal Information Modified
    )


def manifest_entry(opts: ConvertOptions) -> dict:
    """The manifest's record of the de-identification ``opts`` ask for (the manifest records
    None when it was off, without loading this module)."""
    return {
        "profile": f"{load_table().reference} Basic Application Level Confidentiality Profile",
        "options": list(opts.deid_options),
        "codes": [{"code": o.code, "scheme": "DCM", "meaning": o.meaning}
                  for o in method_codes(opts.deid_options)],
        "burned_in": opts.burned_in,
        "mask_regions": [list(r) for r in opts.mask_regions],
        "pseudonym_map": bool(opts.pseudonym_map),
    }
