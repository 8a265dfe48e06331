"""shared/attributes: reading by a keyword's cached tag answers what pydicom's own access does."""
from __future__ import annotations

import warnings

import pytest
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement

from shared.attributes import has, tag_of, value_of
from shared.dataset import read_dataset
from shared.errors import DicomfleetError

from .conftest import TEST_FILES

ABSENT = ("PixelAspectRatio", "VOILUTSequence", "PerFrameFunctionalGroupsSequence", "PresentationLUTShape")


def _same(a, b) -> bool:
    return type(a) is type(b) and (a == b or (a != a and b != b)) and str(a) == str(b)


def test_value_of_and_has_answer_as_pydicom_for_every_attribute_of_every_bundled_file():
    checked = converted = 0
    for path in sorted(p for p in TEST_FILES.rglob("*") if p.is_file() and p.suffix.lower() in ("", ".dcm")):
        data = path.read_bytes()
        try:
            mine, theirs = read_dataset(data), read_dataset(data)
        except DicomfleetError:
            continue
        keywords = [k for k in (keyword_for_tag(t) for t in theirs.keys())
                    if k and tag_for_keyword(k) is not None] + list(ABSENT)  # not repeating groups
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for keyword in keywords:
                was_raw = not isinstance(mine.get_item(tag_of(keyword)), (DataElement, type(None)))
                assert has(mine, keyword) == (keyword in theirs), (path.name, keyword)
                assert _same(value_of(mine, keyword, "dflt"), theirs.get(keyword, "dflt")), (path.name, keyword)
                converted += was_raw and isinstance(mine.get_item(tag_of(keyword)), DataElement)
                checked += 1
    assert checked > 2000 and converted > 1000  # raw elements were converted (and stored) on the way


def test_a_word_that_is_not_a_keyword_is_refused():
    with pytest.raises(KeyError, match="'Rowz' is not a DICOM keyword"):
        tag_of("Rowz")
