"""The raw data elements of a little-endian dataset held in memory, walked without a file object.

pydicom's ``data_element_generator`` reads a file object eight bytes at a time and weighs, for
every element, cases a CT file never has (debug logging, big endian, VR switches, undefined
lengths). `walk_elements` handles the common elements of little-endian data held in memory — a
tag, a known VR, a defined length — with offsets into the buffer, ~0.7 µs an element instead of
~1.2, and hands everything else to pydicom's generator from the element where it met it: an
undefined length (encapsulated pixel data, a sequence of undefined length), an unknown VR, an item
delimiter, a header cut short. The elements are those pydicom yields, the same tags, VRs,
lengths, values and offsets (tests/test_elements.py holds the two equal over pydicom's own files).
"""
from __future__ import annotations

import io
import struct
from collections.abc import Callable, Collection

from pydicom.charset import convert_encodings, default_encoding
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.filereader import data_element_generator
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_string

#: The two-letter VR as it is encoded → (the VR as pydicom yields it, whether a 4-byte length follows)
_KNOWN_VRS = {str(vr).encode(): (str(vr), str(vr) in EXPLICIT_VR_LENGTH_32) for vr in VR}
#: The VRs pydicom knows, as elements carry them
VR_NAMES = frozenset(name for name, _ in _KNOWN_VRS.values())
_EXPLICIT = struct.Struct("<HH2sH").unpack_from
_IMPLICIT = struct.Struct("<HHL").unpack_from
_LENGTH_32 = struct.Struct("<L").unpack_from
_UNDEFINED = 0xFFFFFFFF
_ITEM_DELIMITER = 0xFFFEE00D
_SPECIFIC_CHARACTER_SET = 0x00080005

StopWhen = Callable[[int], bool]


def walk_elements(data: bytes, pos: int, *, implicit: bool, stop_when: StopWhen | None = None,
                  defer_size: int | None = None, specific_tags: Collection[int] | None = None,
                  ) -> tuple[dict[BaseTag, RawDataElement | DataElement], int]:
    """The elements of the little-endian dataset in ``data`` from offset ``pos`` on, as
    ``{tag: element}`` in the order of the data, and the offset where the walk ended.

    The keywords mean what they mean to pydicom's ``data_element_generator`` (``stop_when`` takes
    the tag alone): the walk ends before the first element ``stop_when`` is true of, values
    longer than ``defer_size`` are left out (None), and with ``specific_tags`` only those and
    (0008,0005) Specific Character Set are kept. pydicom's own exceptions propagate."""
    elements: dict[BaseTag, RawDataElement | DataElement] = {}
    wanted = None if specific_tags is None else {*specific_tags, _SPECIFIC_CHARACTER_SET}
    end = len(data)
    encoding: str | list[str] = default_encoding
    vr: str | None = None
    while pos + 8 <= end:
        if implicit:
            group, elem, length = _IMPLICIT(data, pos)
            value_tell = pos + 8
        else:
            group, elem, raw_vr, length = _EXPLICIT(data, pos)
            known = _KNOWN_VRS.get(raw_vr)
            if known is None:
                break  # an unknown VR or implicit VR inside explicit data: pydicom decides
            vr, long = known
            if long:
                if pos + 12 > end:
                    break
                length = _LENGTH_32(data, pos + 8)[0]
                value_tell = pos + 12
            else:
                value_tell = pos + 8
        tag = group << 16 | elem
        if length == _UNDEFINED or tag == _ITEM_DELIMITER:
            break
        if stop_when is not None and stop_when(tag):
            return elements, pos
        following = value_tell + length
        if wanted is None or tag in wanted:
            if defer_size is not None and length > defer_size and tag != _SPECIFIC_CHARACTER_SET:
                value = None
            else:
                value = data[value_tell:following] if length else empty_value_for_VR(vr, raw=True)
                following = min(following, end)  # a read cut short leaves a file at its end
            if tag == _SPECIFIC_CHARACTER_SET:
                encoding = convert_encodings(convert_string(value or b"", True))
            key = BaseTag(tag)
            elements[key] = RawDataElement(key, vr, length, value, value_tell, implicit, True)
        pos = following
    else:  # the data ran out (as pydicom's would: past a value cut short, nothing more to read)
        return elements, max(pos, end)
    return _walk_rest(data, pos, elements, implicit, stop_when, defer_size, encoding, specific_tags)


def _walk_rest(data: bytes, pos: int, elements: dict, implicit: bool, stop_when: StopWhen | None,
               defer_size: int | None, encoding: str | list[str],
               specific_tags: Collection[int] | None) -> tuple[dict, int]:
    """The walk from ``pos`` on by pydicom's generator, which has every case."""
    fp = io.BytesIO(data)
    fp.seek(pos)
    stop = None if stop_when is None else (lambda tag, vr, length: stop_when(tag))
    tags = None if specific_tags is None else list(specific_tags)
    for element in data_element_generator(fp, implicit, True, stop, defer_size, encoding, tags):
        elements[element.tag] = element
    return elements, fp.tell()
