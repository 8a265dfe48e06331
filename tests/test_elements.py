"""shared/elements.walk_elements must yield what pydicom's element generator yields: the same
elements (tag, VR, length, value, offset) in the same order, and end where pydicom's file
position ends, for every little-endian dataset pydicom bundles, whole and cut short."""
from __future__ import annotations

import io
import struct
import warnings
from pathlib import Path

import pytest
from pydicom.filereader import data_element_generator
from shared.elements import walk_elements

from .conftest import TEST_FILES
from .synthetic import write_series

_PIXELS = frozenset((0x7FE00010, 0x7FE00008, 0x7FE00009))
_HEADER = [0x00080016, 0x00080018, 0x0020000D, 0x0020000E, 0x00200013, 0x00200032, 0x00200037, 0x00280010]


def _dataset_start(data: bytes) -> tuple[int, bool] | None:
    """Offset and implicit-VR flag of the dataset after an explicit little-endian file meta."""
    if data[128:132] != b"DICM":
        return None
    pos = 132
    syntax = b""
    while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":
        group, elem, vr, length = struct.unpack_from("<HH2sH", data, pos)
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            length = struct.unpack_from("<L", data, pos + 8)[0]
            pos += 12
        else:
            pos += 8
        if elem == 0x0010:
            syntax = data[pos:pos + length].rstrip(b"\0 ")
        pos += length
    if syntax == b"1.2.840.10008.1.2":
        return pos, True
    if syntax.startswith(b"1.2.840.10008.1.2") and syntax not in (b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.1.99"):
        return pos, False
    return None


def _pydicom(data: bytes, pos: int, implicit: bool, **kwargs) -> tuple[list, int]:
    fp = io.BytesIO(data)
    fp.seek(pos)
    stop = kwargs.pop("stop_when", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elements = list(data_element_generator(
            fp, implicit, True, None if stop is None else (lambda tag, vr, length: stop(tag)), **kwargs))
    return elements, fp.tell()


def _walk(data: bytes, pos: int, implicit: bool, **kwargs) -> tuple[list, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        elements, end = walk_elements(data, pos, implicit=implicit, **kwargs)
    assert all(tag == elem.tag for tag, elem in elements.items())
    return list(elements.values()), end


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> list[tuple[str, bytes, int, bool]]:
    """(name, bytes, dataset offset, implicit VR) of every little-endian file pydicom bundles
    (images, encapsulated pixel data, sequences of undefined length, reports) and a synthetic CT."""
    paths = sorted(p for p in TEST_FILES.rglob("*") if p.is_file() and p.suffix.lower() in ("", ".dcm"))
    paths += sorted(write_series(tmp_path_factory.mktemp("walk"), 1))
    found = []
    for path in paths:
        data = Path(path).read_bytes()
        start = _dataset_start(data)
        if start is not None:
            found.append((Path(path).name, data, *start))
    return found


def _same(name: str, mine: tuple[list, int], theirs: tuple[list, int], *, end_matters: bool) -> None:
    assert [e.tag for e in mine[0]] == [e.tag for e in theirs[0]], name
    assert mine[0] == theirs[0], name  # raw elements compare field by field; sequences as values
    if end_matters:
        assert mine[1] == theirs[1], name


@pytest.mark.parametrize("variant", ["whole", "to pixels", "header"])
def test_every_bundled_dataset_walks_as_pydicom_reads_it(datasets, variant):
    kwargs = {"whole": {}, "to pixels": {"stop_when": _PIXELS.__contains__},
              "header": {"stop_when": _PIXELS.__contains__, "specific_tags": _HEADER, "defer_size": 1024}}[variant]
    implicit_seen = encapsulated_seen = 0
    for name, data, pos, implicit in datasets:
        try:
            theirs = _pydicom(data, pos, implicit, **kwargs)
        except Exception as err:  # noqa: BLE001 - a corrupt file: the walk raises as pydicom does
            with pytest.raises(type(err)):
                _walk(data, pos, implicit, **kwargs)
            continue
        _same(name, _walk(data, pos, implicit, **kwargs), theirs, end_matters=variant != "whole")
        implicit_seen += implicit
        encapsulated_seen += any(e.tag == 0x7FE00010 and e.length == 0xFFFFFFFF for e in theirs[0])
    assert len(datasets) >= 60 and implicit_seen >= 10
    if variant == "whole":
        assert encapsulated_seen >= 10  # the hand-over to pydicom at an undefined length is walked


def _both(name: str, data: bytes, pos: int, implicit: bool, **kwargs) -> tuple[tuple, tuple] | None:
    """The walk and pydicom's generator over the same data, or None after both raised alike."""
    try:
        theirs = _pydicom(data, pos, implicit, **kwargs)
    except Exception as err:  # noqa: BLE001 - a cut length: the walk raises as pydicom does
        with pytest.raises(type(err)):
            _walk(data, pos, implicit, **kwargs)
        return None
    return _walk(data, pos, implicit, **kwargs), theirs


def test_a_dataset_cut_at_every_offset_walks_as_pydicom_reads_it(datasets):
    """Cut in a tag, a VR, a 2- or 4-byte length, a value, the pixels: the same elements (the
    last value short, as pydicom reads it) or the same exception, and for a header the same
    answer to what read_header asks of where it ended: at the pixel data or not."""
    raised = 0
    for wanted in ("CT_small.dcm", "MR_small_implicit.dcm", "slice00000.dcm"):
        name, data, pos, implicit = next(d for d in datasets if d[0] == wanted)
        pixels = data.index(b"\xe0\x7f\x10\x00", pos)
        # every offset through the first elements and the last ones before the pixels, a stride between
        for cut in sorted({*range(pos, pos + 400), *range(pixels - 300, pixels + 64), *range(pos, pixels, 29)}):
            part = data[:cut]
            for kwargs in ({}, {"stop_when": _PIXELS.__contains__}):
                both = _both(f"{name}[:{cut}]", part, pos, implicit, **kwargs)
                if both is None:
                    raised += 1
                    continue
                (mine, end), (theirs, their_end) = both
                _same(f"{name}[:{cut}]", (mine, end), (theirs, their_end), end_matters=False)
                assert (part[end:end + 4] == b"\xe0\x7f\x10\x00") == (part[their_end:their_end + 4] == b"\xe0\x7f\x10\x00")
    assert raised > 0  # cuts inside a 4-byte length raise in pydicom, and in the walk


def test_an_unknown_vr_is_handed_to_pydicom():
    """Explicit VR data with an element of a VR pydicom does not know, then implicit VR inside
    explicit data (a writer's bug pydicom tolerates): read from there by pydicom's rules."""
    def explicit(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
        return struct.pack("<HH2sH", group, elem, vr, len(value)) + value

    data = (explicit(0x0008, 0x0060, b"CS", b"CT") + explicit(0x0009, 0x0010, b"ZZ", b"ab")
            + struct.pack("<HHL", 0x0010, 0x0010, 4) + b"Doe^" + explicit(0x0020, 0x0013, b"IS", b"7 "))
    mine = _walk(data, 0, False)
    _same("unknown VR", mine, _pydicom(data, 0, False), end_matters=True)
    assert [e.tag for e in mine[0]][:2] == [0x00080060, 0x00090010]


def test_a_corrupted_header_walks_as_pydicom_reads_it(datasets):
    """Bytes overwritten at random in the first elements of a dataset (seeded: hostile VRs,
    lengths, tags, duplicate tags): the dataset a reader makes of the elements — the last of a
    repeated tag, where the first was met, as a dict — is the same, or both raise alike."""
    import random

    rng = random.Random(20261126)
    name, original, pos, implicit = next(d for d in datasets if d[0] == "CT_small.dcm")
    variants = ({}, {"stop_when": _PIXELS.__contains__},
                {"specific_tags": _HEADER, "defer_size": 1024, "stop_when": _PIXELS.__contains__})
    compared = raised = 0
    for _ in range(400):
        data = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(pos, pos + 1500)] = rng.randrange(256)
        for kwargs in variants:
            both = _both(name, bytes(data), pos, implicit, **kwargs)
            if both is None:
                raised += 1
                continue
            (mine, _), (theirs, _) = both
            assert mine == list({e.tag: e for e in theirs}.values())
            compared += 1
    assert compared > 800 and raised > 10
