"""Reading a dataset's attributes by keyword, the keyword's tag looked up once per process.

``ds.get("Rows")`` and ``"Rows" in ds`` look the keyword up in pydicom's dictionary on every
access and go through ``__getattr__`` (~1.4 and ~1.8 µs); a conversion reads some forty
attributes of every slice. `value_of` and `has` answer the same by tag (~0.5 µs), converting a
still-raw element as pydicom's own access does (tests/test_attributes.py holds them equal).
"""
from __future__ import annotations

import re
from typing import Any

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.datadict import tag_for_keyword

_TAGS: dict[str, int] = {}
#: a UID as PS3.5 9.1 writes it, leading zeros allowed (common in the field): digits and dots
_UID_TEXT = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def is_image_class(sop_class: Any) -> bool:
    """Whether a SOP Class UID names a kind of image ("… Image Storage" in the dictionary): an
    instance of it without Rows or Pixel Data has a cut or corrupt header, not no image."""
    return "Image Storage" in str(getattr(sop_class, "name", "") or "")


def is_uid_text(value: str) -> bool:
    """Whether ``value`` reads as a UID (at most 64 digits and dots): one that may name a path or
    stand in a reason, where a UID element holding other text (a name, ``../``) may not."""
    return len(value) <= 64 and _UID_TEXT.fullmatch(value) is not None


def tag_of(keyword: str) -> int:
    """The tag of a DICOM keyword; KeyError for a word that is not one."""
    tag = _TAGS.get(keyword)
    if tag is None:
        tag = tag_for_keyword(keyword)
        if tag is None:
            raise KeyError(f"{keyword!r} is not a DICOM keyword")
        _TAGS[keyword] = tag
    return tag


def value_of(ds: Dataset, keyword: str, default: Any = None) -> Any:
    """``ds.get(keyword, default)``: the attribute's value, ``default`` when it is absent."""
    tag = _TAGS.get(keyword) or tag_of(keyword)
    elem = ds.get_item(tag)
    if elem is None:
        return default
    if isinstance(elem, RawDataElement):
        elem = ds[tag]  # converted and stored, as pydicom's access does
    return elem.value


def has(ds: Dataset, keyword: str) -> bool:
    """``keyword in ds``."""
    return (_TAGS.get(keyword) or tag_of(keyword)) in ds
