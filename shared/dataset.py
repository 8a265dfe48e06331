"""Parsing DICOM bytes and decoding pixels safely: clear reasons, budgets checked before allocation."""
from __future__ import annotations

import io
import struct
import warnings
import zlib
from functools import lru_cache
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom import config as _pydicom_config
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError as PydicomInvalid
from pydicom.tag import Tag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    PrivateTransferSyntaxes,
    RLETransferSyntaxes,
    UID,
)
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32
from pydicom.values import convert_value

from .elements import VR_NAMES, walk_elements
from .attributes import has, is_image_class, is_uid_text, value_of
from .codestream import j2k_size, jpeg_size, rle_capacity
from .native import native_pixels
from .gdcm_child import GDCM_SYNTAXES, ChildDecodeError, decode_in_child
from .errors import (
    InvalidDicomError,
    NoPixelDataError,
    NotDicomError,
    PixelBudgetError,
    Transient,
    UnsupportedError,
    safe_reason,
)
from .options import DEFAULT_MAX_PIXELS
from .quiet import native_stderr_silenced
from .runtime import load_pixel_plugins
from .store import HEADER_BLOCK

# Real archives are full of slightly invalid values; we validate what we use, with reasons of
# our own, instead of letting pydicom print a warning per element to the user's terminal.
_pydicom_config.settings.reading_validation_mode = _pydicom_config.IGNORE

#: Attributes the scanner needs to group and order instances; read without pixel data.
HEADER_TAGS = (
    "SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "InstanceNumber",
    "ImagePositionPatient", "ImageOrientationPatient", "NumberOfFrames", "Rows", "Columns",
    "SamplesPerPixel", "BitsAllocated", "Modality", "PhotometricInterpretation",
)
_HEADER_TAG_LIST = [Tag(keyword) for keyword in HEADER_TAGS]  # once, not per file
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00008, 0x7FE00009))
#: transfer syntaxes whose dataset is not plain little endian: dcmread's own handling
_NOT_PLAIN = frozenset(str(uid) for uid in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian,
                                            *PrivateTransferSyntaxes))
_HEADER_VALUE_LIMIT = 64 * 1024
_ALL_PLUGINS_FAILED = "Unable to decode as exceptions were raised by all available plugins:"
_DEFLATED_UID = str(DeflatedExplicitVRLittleEndian).encode()
_INFLATE_CHUNK = 1 << 20


def _read(fp: BinaryIO, **kwargs) -> Dataset:
    """dcmread that accepts files without preamble/meta but refuses what is not DICOM at all."""
    start = fp.tell()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(fp, **kwargs)
    except PydicomInvalid:
        pass
    except (Transient, PixelBudgetError):  # storage under a ranged reader failed; a deflate bomb
        raise
    except Exception as err:  # pydicom raises many types on garbage; the reason is what matters
        raise NotDicomError(f"not a DICOM file ({type(err).__name__}: {_first_line(err)})") from err
    fp.seek(start)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fp, force=True, **kwargs)
            ds_ok = len(ds) > 0 and ("SOPClassUID" in ds or "Rows" in ds) and _plausible(ds)
    except (Transient, PixelBudgetError):
        raise
    except Exception as err:
        raise NotDicomError("not a DICOM file (no DICM preamble and not a raw dataset)") from err
    if not ds_ok:
        raise NotDicomError("not a DICOM file (no DICM preamble and not a raw dataset)")
    return ds


def _past_file_meta(tag: int) -> bool:
    return tag >> 16 != 0x0002


def _at_pixels(tag: int) -> bool:
    return tag in _PIXEL_TAGS


_TRANSFER_SYNTAX = 0x00020010


def _plain_layout(data: bytes) -> tuple[dict, int, bool] | None:
    """(file meta elements, offset of the dataset, implicit VR) of a file of the usual layout: a
    preamble, DICM, an explicit VR little endian file meta naming a transfer syntax, no command
    set and a dataset neither deflated nor big endian. None for any other; pydicom's exceptions
    propagate (a cut header)."""
    if data[128:132] != b"DICM":
        return None
    meta, start = walk_elements(data, 132, implicit=False, stop_when=_past_file_meta)
    raw = meta.get(_TRANSFER_SYNTAX)
    if raw is None or raw.VR != "UI" or not all(elem.VR in VR_NAMES for elem in meta.values()):
        return None  # no transfer syntax, a file meta in implicit VR or one of an unknown VR:
        # dcmread reads its VR mode off the first element, and a corrupt meta its own way
    syntax = _from_raw(raw, "UI", None).value
    if not syntax or str(syntax) in _NOT_PLAIN or data[start:start + 2] in (b"", b"\0\0"):
        return None  # no dataset after the meta, or a command set first
    implicit = syntax == ImplicitVRLittleEndian
    vr = data[start + 4:start + 6]  # dcmread reads the VR mode the data has, not the one named
    if len(vr) == 2 and (not (0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B)) != implicit:
        return None
    return meta, start, implicit


def _read_plain(fp: io.BytesIO, data: bytes, *, stop_before_pixels: bool = False,
                specific_tags: list | None = None, defer_size: int | None = None) -> FileDataset | None:
    """What ``dcmread`` returns for a file in memory of the usual layout (`_plain_layout`), or
    None for any other.

    The elements are walked in memory (`shared.elements`) into the dataset, without dcmread's
    layers (preamble and meta readers, three intermediate datasets, keyword lookups). Anything
    else, and any error, gives None: the caller reads the file with dcmread, whose result or
    reason stands (tests/test_dataset_plain.py holds the two equal over pydicom's own files).
    """
    try:
        layout = _plain_layout(data)
        if layout is None:
            return None
        meta, start, implicit = layout
        elements, end = walk_elements(data, start, implicit=implicit, defer_size=defer_size,
                                      stop_when=_at_pixels if stop_before_pixels else None,
                                      specific_tags=specific_tags)
        fp.seek(end)  # where dcmread leaves the file: read_header looks for pixel data there
        for tag, vr in (_EAGER if specific_tags is None else _EAGER_ORDER).items():
            if tag in elements:
                elements[tag] = _converted(elements[tag], vr)
        ds = FileDataset(fp, elements, data[:128], FileMetaDataset(meta), implicit, True)
        ds.set_original_encoding(implicit, True, ds._character_set)  # as dcmread does
    except Exception:  # noqa: BLE001 - dcmread reads it again and gives the reason
        return None
    return ds


#: Elements that every conversion reads (geometry, pixel module, window, rescale, spacing,
#: orientation, the embedded metadata) and those the scanner reads to order a series.
_CONVERT_KEYWORDS = (
    "Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation",
    "PhotometricInterpretation", "NumberOfFrames", "WindowCenter", "WindowWidth",
    "RescaleIntercept", "RescaleSlope", "PixelSpacing", "ImageOrientationPatient", "Modality", "StudyDate",
)
_ORDER_KEYWORDS = ("InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient")
#: VRs whose value needs no character set and no correction after conversion (no SQ, no
#: ambiguous or UN VR, no LUT descriptor): for these, pydicom's conversion is `convert_value`.
_EAGER_VRS = frozenset({"US", "UL", "SS", "SL", "FL", "FD", "DS", "IS", "CS", "DA", "TM", "UI"})
_EAGER = {int(Tag(keyword)): dictionary_VR(keyword) for keyword in _CONVERT_KEYWORDS}
_EAGER_ORDER = {int(Tag(keyword)): dictionary_VR(keyword) for keyword in _ORDER_KEYWORDS}


def _from_raw(raw: RawDataElement, vr: str, encoding) -> DataElement:
    """``raw`` converted as pydicom's lazy access would (``convert_raw_data_element`` through
    ``Dataset.__getitem__``) for a VR that needs no correction after conversion (no SQ, no
    ambiguous or UN VR, no LUT descriptor): the same `convert_value` without the hooks and the
    item bookkeeping around it, ~3 instead of ~9 µs an element (tests/test_dataset_plain.py
    holds the two equal)."""
    return DataElement(raw.tag, vr, convert_value(vr, raw, encoding), raw.value_tell,
                       raw.length == 0xFFFFFFFF, already_converted=True)


def _converted(raw: RawDataElement, dictionary_vr: str) -> RawDataElement | DataElement:
    """``raw`` converted (`_from_raw`) if its VR is one of `_EAGER_VRS` (the dictionary's, in
    implicit VR), which need no character set; else as it is."""
    vr = raw.VR or dictionary_vr
    if vr not in _EAGER_VRS or raw.value is None:
        return raw
    return _from_raw(raw, vr, None)


#: Text and UID VRs: converted by `convert_value` with the dataset's character set alone.
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_SPECIFIC_CHARACTER_SET = 0x00080005


#: Float Pixel Data, Double Float Pixel Data, Pixel Data: setting one resets pydicom's pixel cache
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})


def put_element(ds: Dataset, elem: DataElement | RawDataElement) -> None:
    """``ds[elem.tag] = elem``, for the elements de-identification puts in place of the parsed ones
    (~20 an instance) and the text it converts. For a public tag other than pixel data and a value
    that is not a sequence, pydicom's ``__setitem__`` comes down to storing the element in the
    dataset's dict after checks for private tags, pixel data and sequences: done directly, at a
    fifth of its cost (tests/test_dataset_plain.py holds the split to pydicom's own results)."""
    if elem.tag >> 16 & 1 or elem.tag in _PIXEL_TAGS or elem.VR == "SQ":
        ds[elem.tag] = elem  # pydicom's own bookkeeping applies
    else:
        ds._dict[elem.tag] = elem


def drop_element(ds: Dataset, tag: int) -> None:
    """``del ds[tag]``, directly for a public tag other than pixel data (pydicom's ``__delitem__``
    then only converts the tag and deletes it; its other steps are for private creators and the
    pixel cache)."""
    if tag >> 16 & 1 or tag in _PIXEL_TAGS:
        del ds[tag]
    else:
        del ds._dict[tag]


def text_element(ds: Dataset, tag: int, *, store: bool = True) -> DataElement:
    """``ds[tag]``; a still-raw element of a text or UID VR converted by `_from_raw` with the
    dataset's character set (de-identification reads a few names and UIDs of every instance),
    and stored in ``ds`` unless ``store`` is False (its value is about to be replaced).
    KeyError when absent."""
    raw = ds.get_item(tag)
    encoding = ds.original_character_set
    if not isinstance(raw, RawDataElement) or raw.VR not in _TEXT_VRS or raw.value is None \
            or tag == _SPECIFIC_CHARACTER_SET or not encoding:
        return ds[tag]
    elem = _from_raw(raw, raw.VR, encoding)
    if store:
        put_element(ds, elem)
    return elem


def text_value(ds: Dataset, tag: int) -> str:
    """A text or UID attribute's value as stripped text, "" when absent or empty."""
    if tag not in ds:
        return ""
    return str(text_element(ds, tag).value or "").strip()


def _read_bytes(fp: io.BytesIO, data: bytes, **kwargs) -> Dataset:
    """`_read` for a file held in memory: the usual layout through `_read_plain`."""
    ds = _read_plain(fp, data, **kwargs)
    if ds is None:
        fp.seek(0)
        ds = _read(fp, **kwargs)
    return ds


def _plausible(ds: Dataset) -> bool:
    """A forced parse of random bytes yields nonsense tags; real raw datasets start in groups 0008+."""
    tags = list(ds.keys())
    return bool(tags) and tags[0].group in (0x0002, 0x0008) and all(t.group < 0xFFFE for t in tags)


def _first_line(err: BaseException, limit: int = 160) -> str:
    """The error as one line: multi-line messages (pydicom lists each plugin) joined with '; ',
    quoted raw values left out before it is cut to ``limit`` (`errors.safe_reason`)."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    text = safe_reason("; ".join(lines).replace(":;", ":"))
    return text[:limit] if text else type(err).__name__


def source_limit(max_pixels: int) -> int:
    """Bytes a source file may hold under the pixel budget: samples of up to 8 bytes (Double
    Float Pixel Data) and 64 MiB for the rest of the file (2 GiB + 64 MiB by default)."""
    return max_pixels * 8 + (64 << 20)


def inflate_limit(max_pixels: int) -> int:
    """Bytes a deflated dataset may inflate to under the pixel budget: pixel data of 32-bit
    samples plus 16 MiB for the rest of the dataset (1 GiB + 16 MiB by default)."""
    return max_pixels * 4 + (16 << 20)


def check_inflated_size(deflated: bytes, limit: int) -> None:
    """Refuse a raw deflate stream that inflates to more than ``limit`` bytes, inflating it in
    1 MiB pieces that are counted and dropped: pydicom inflates a Deflated Explicit VR Little
    Endian dataset in one call, and 2 MB of deflated zeros inflate to 2 GiB. A corrupt stream is
    left to pydicom, whose own error becomes the reason."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        piece = inflater.decompress(deflated, _INFLATE_CHUNK)
        while piece:  # empty only when the input is used up and nothing is pending
            total += len(piece)
            if total > limit:
                raise PixelBudgetError(f"deflated dataset inflates to more than {limit} bytes "
                                       "(DICOMFLEET_MAX_PIXELS budget)")
            piece = inflater.decompress(inflater.unconsumed_tail, _INFLATE_CHUNK)
    except zlib.error:
        return


def _may_be_deflated(data: bytes) -> bool:
    """Whether the file meta (group 0002) may name Deflated Explicit VR Little Endian: its few
    elements are walked rather than every read of the parse wrapped; anything but plain explicit
    VR there is answered yes, so the guarded (slower) reader is used whenever in doubt."""
    pos = 132 if data[128:132] == b"DICM" else 0
    start = pos
    while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":
        vr = data[pos + 4:pos + 6]
        if not (vr.isalpha() and vr.isupper()):
            return True
        if vr.decode() in EXPLICIT_VR_LENGTH_32:
            pos += 12 + (struct.unpack_from("<I", data, pos + 8)[0] if pos + 12 <= len(data) else 0)
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return _DEFLATED_UID in data[start:pos]


class _NoOverread:
    """A seekable binary file whose ``read(n)`` never asks for more than is left: file readers
    allocate the requested length up front, and a hostile header may declare 4 GiB in 13 bytes.

    pydicom reads "the rest" in one call only to inflate a deflated dataset; with
    ``inflate_limit`` that read is refused when the rest inflates past the limit."""

    def __init__(self, fp: BinaryIO, inflate_limit: int | None = None) -> None:
        self._fp = fp
        self._inflate_limit = inflate_limit
        here = fp.tell()
        self._size = fp.seek(0, io.SEEK_END)
        fp.seek(here)

    def read(self, n: int | None = -1) -> bytes:
        left = max(self._size - self._fp.tell(), 0)
        if n is not None and n >= 0:
            return self._fp.read(min(n, left))
        rest = self._fp.read(left)
        if self._inflate_limit is not None:
            check_inflated_size(rest, self._inflate_limit)
        return rest

    def __getattr__(self, name: str):
        return getattr(self._fp, name)


#: Bytes of a source read in one piece for its header: the block S3 sources are fetched in (one
#: ranged GET). A CT header is 1–8 KiB; parsing it from memory is ~0.2 ms quicker than from a file
#: element by element (0.4 vs 0.6 ms a file).
HEADER_PREFIX = HEADER_BLOCK
#: (7FE0,0010) Pixel Data, (7FE0,0008) Float and (7FE0,0009) Double Float, little and big endian:
#: where a header parse stops when the whole header was in the prefix.
_PIXEL_TAG_BYTES = frozenset(struct.pack(order, 0x7FE0, elem) for order in ("<HH", ">HH")
                             for elem in (0x0010, 0x0008, 0x0009))


def _parse_header(fp: BinaryIO, data: bytes | None = None) -> Dataset:
    """The header attributes of the file ``fp`` (held in memory as ``data`` when given)."""
    kwargs = {"stop_before_pixels": True, "specific_tags": _HEADER_TAG_LIST, "defer_size": _HEADER_VALUE_LIMIT}
    ds = _read_bytes(fp, data, **kwargs) if data is not None else _read(fp, **kwargs)
    for tag in list(ds.keys()):
        elem = ds.get_item(tag, keep_deferred=True)
        if elem.value is None and getattr(elem, "length", 0) > _HEADER_VALUE_LIMIT:
            del ds[tag]
    return ds


def read_header(fp: BinaryIO, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Dataset:
    """Read only the attributes needed to group and order instances (no pixel data).

    Values longer than 64 KiB are skipped and dropped (none of the header attributes is that
    long), so neither reading nor a later access allocates what a hostile header declares; a
    deflated dataset that inflates past the pixel budget's bytes is refused (PixelBudgetError).

    The first ``HEADER_PREFIX`` bytes are read at once (one ranged GET on S3) and parsed in
    memory; only a header that does not end within them is read again from the file itself."""
    start = fp.tell()
    head = fp.read(HEADER_PREFIX)
    whole = len(head) < HEADER_PREFIX
    if not _may_be_deflated(head):
        buf = io.BytesIO(head)  # reads past its end come back short: nothing over-allocates
        try:
            ds = _parse_header(buf, head)
        except (NotDicomError, InvalidDicomError):
            if whole or not _may_be_dicom(head):  # the whole file parsed, or it cannot be DICOM:
                raise  # the reason stands (a forced parse of gigabytes of zeros took hours)
        else:
            if whole or head[buf.tell():buf.tell() + 4] in _PIXEL_TAG_BYTES:
                return ds
    fp.seek(start)
    return _parse_header(_NoOverread(fp, inflate_limit(max_pixels)))


def _may_be_dicom(head: bytes) -> bool:
    """Whether a file whose first bytes did not parse may still be DICOM read further: a DICM
    preamble, or a raw dataset starting in group 0002 or 0008 (as `_plausible` asks)."""
    return head[128:132] == b"DICM" or head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


_MEDIA_STORAGE_SOP_CLASS = 0x00020002


@lru_cache(maxsize=8)
def _header_tags(keywords: tuple[str, ...]) -> tuple[list[int], dict[int, str]]:
    """The tags to walk for ``keywords`` (a part of `HEADER_TAGS`) and the keyword of each."""
    unknown = set(keywords) - set(HEADER_TAGS)
    if unknown:
        raise ValueError(f"not header attributes: {sorted(unknown)!r}")
    tags = [int(Tag(keyword)) for keyword in keywords]
    return tags, dict(zip(tags, keywords))


def header_values(fp: BinaryIO, *, max_pixels: int = DEFAULT_MAX_PIXELS,
                  keywords: tuple[str, ...] = HEADER_TAGS) -> dict[str, Any]:
    """The ``keywords`` (`HEADER_TAGS` or some of them) present in the file, with their values,
    and the file meta's MediaStorageSOPClassUID: what `read_header` holds, read without
    building a dataset.

    A header of the usual layout (`_plain_layout`) that ends within the first `HEADER_PREFIX`
    bytes, as a CT slice's does, is walked in memory and its values converted as pydicom
    converts them (`_from_raw`): ~60 instead of ~130 µs a file, most of what the scan costs. Any
    other file is read by `read_header`, with its reasons and budgets (tests/test_header.py
    holds the two equal over pydicom's own files)."""
    _header_tags(keywords)  # a keyword the fallback would not read is refused before any read
    start = fp.tell()
    head = fp.read(HEADER_PREFIX)
    values = _plain_header_values(head, whole=len(head) < HEADER_PREFIX, keywords=keywords)
    if values is not None:
        return values
    fp.seek(start)
    ds = read_header(fp, max_pixels=max_pixels)
    try:  # values converted as read: a corrupt one (an unknown VR, a wrong length) is the file's
        values = {keyword: ds.get(keyword) for keyword in keywords if keyword in ds}
        meta = ds.get("file_meta") or {}
        if "MediaStorageSOPClassUID" in meta:
            values["MediaStorageSOPClassUID"] = meta.get("MediaStorageSOPClassUID")
    except Exception as err:  # noqa: BLE001 - pydicom raises many types on corrupt values
        raise InvalidDicomError(f"unreadable header ({_first_line(err)})") from err
    return values


def _plain_header_values(head: bytes, *, whole: bool,
                         keywords: tuple[str, ...] = HEADER_TAGS) -> dict[str, Any] | None:
    """`header_values` of a header of the usual layout held whole in ``head``, else None."""
    try:
        layout = _plain_layout(head)
        if layout is None:
            return None
        meta, start, implicit = layout
        tags, keyword_of = _header_tags(keywords)
        elements, end = walk_elements(head, start, implicit=implicit, stop_when=_at_pixels,
                                      defer_size=_HEADER_VALUE_LIMIT, specific_tags=tags)
        if not whole and head[end:end + 4] not in _PIXEL_TAG_BYTES:
            return None  # the header goes on past the prefix
        values: dict[str, Any] = {}
        for tag, raw in elements.items():
            keyword = keyword_of.get(tag)
            if keyword is None:
                continue  # (0008,0005): none of the header's VRs needs a character set
            vr = raw.VR or dictionary_VR(tag)
            if not isinstance(raw, RawDataElement) or vr not in _EAGER_VRS:
                return None
            if raw.value is None:
                if raw.length > _HEADER_VALUE_LIMIT:
                    continue  # dropped, as read_header drops it
                return None
            values[keyword] = _from_raw(raw, vr, None).value
        raw = meta.get(_MEDIA_STORAGE_SOP_CLASS)
        if raw is not None:
            if raw.VR != "UI" or raw.value is None:
                return None
            values["MediaStorageSOPClassUID"] = _from_raw(raw, "UI", None).value
    except Exception:  # noqa: BLE001 - read_header reads it again and gives the reason
        return None
    return values


def read_dataset(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Dataset:
    """Parse a whole instance from its bytes; raise NotDicomError/InvalidDicomError with a reason,
    PixelBudgetError for a deflated dataset that inflates past the pixel budget's bytes."""
    if not data:
        raise NotDicomError("empty file")
    if _may_be_deflated(data):
        ds = _read(_NoOverread(io.BytesIO(data), inflate_limit(max_pixels)))
    else:
        ds = _read_bytes(io.BytesIO(data), data)
    try:  # truncation and corruption show here, not later in some stage that reads the element
        _check_elements(ds)
    except Exception as err:
        raise InvalidDicomError(f"truncated or corrupt dataset ({_first_line(err)})") from err
    return ds


#: Value representations whose conversion cannot raise (text is decoded with replacement, bytes
#: are kept as they are); numeric ones only raise on a length that is not a multiple of their width.
_SAFE_VRS = frozenset("AE AS CS DA DS DT IS LO LT OB OD OF OL OV OW PN SH ST TM UC UI UR UT".split())
_NUMERIC_WIDTH = {"AT": 4, "FL": 4, "FD": 8, "SL": 4, "SS": 2, "SV": 8, "UL": 4, "US": 2, "UV": 8}


def _check_elements(ds: Dataset) -> None:
    """Raise what pydicom's lazy conversion of any element would raise, converting only those that
    can fail (sequences, unknown or implicit VRs, numbers of a wrong length): the same errors as
    converting every element (``iterall``) at a tenth of its cost, since values stay raw."""
    for raw in ds.values():  # the elements as held, raw or converted (no deferred values here)
        if isinstance(raw, RawDataElement):
            if raw.VR in _SAFE_VRS:
                continue
            width = _NUMERIC_WIDTH.get(raw.VR)
            if width is not None and raw.value is not None and len(raw.value) % width == 0:
                continue
        elem = ds[raw.tag]
        if elem.VR == "SQ":
            for item in elem.value:
                _check_elements(item)


def _int_tag(ds: Dataset, keyword: str, tag: str, default: int | None = None) -> int:
    value = value_of(ds, keyword, default)
    if value is None or value == "":
        if default is not None:
            return default
        raise InvalidDicomError(f"({tag}) {keyword} is missing")
    try:
        ivalue = int(value)
    except (TypeError, ValueError) as err:
        raise InvalidDicomError(f"({tag}) {keyword} has invalid value {value!r}") from err
    if ivalue < 1:
        raise InvalidDicomError(f"({tag}) {keyword} must be positive, got {ivalue}")
    return ivalue


def pixel_geometry(ds: Dataset) -> tuple[int, int, int, int, int]:
    """(frames, rows, columns, samples, bits allocated), validated from the header."""
    rows = _int_tag(ds, "Rows", "0028,0010")
    cols = _int_tag(ds, "Columns", "0028,0011")
    frames = _int_tag(ds, "NumberOfFrames", "0028,0008", default=1)
    spp = _int_tag(ds, "SamplesPerPixel", "0028,0002", default=1)
    bits = _int_tag(ds, "BitsAllocated", "0028,0100")
    if spp not in (1, 3):
        raise UnsupportedError(f"(0028,0002) Samples per Pixel {spp} is not 1 or 3")
    if bits not in (1, 8, 16, 32, 64):
        raise UnsupportedError(f"(0028,0100) Bits Allocated {bits} is not supported")
    return frames, rows, cols, spp, bits


def check_pixel_budget(ds: Dataset, max_pixels: int) -> None:
    """Refuse absurd or lying headers before any decoder allocates memory for them."""
    keyword = next((k for k in _PIXEL_KEYWORDS if has(ds, k)), None)
    if keyword is None:
        if is_image_class(ds.get("SOPClassUID")):  # a corrupt length before it swallowed it
            raise InvalidDicomError(f"(7FE0,0010) Pixel Data is missing from a {_sop_class_name(ds)} "
                                    "instance: a cut file, or a corrupt length before it")
        raise NoPixelDataError(f"no pixel data (SOP class {_sop_class_name(ds)})")
    frames, rows, cols, spp, bits = pixel_geometry(ds)
    samples = frames * rows * cols * spp
    if samples > max_pixels:
        raise PixelBudgetError(
            f"{frames} frame(s) × {rows} × {cols} × {spp} sample(s) = {samples} samples exceeds "
            f"the pixel budget of {max_pixels} (DICOMFLEET_MAX_PIXELS)"
        )
    elem = ds[keyword]
    ts = value_of(ds.file_meta, "TransferSyntaxUID")
    if keyword == "PixelData" and ts is not None:
        if not isinstance(ts, UID) or not ts:  # empty, or of another VR than UI
            raise InvalidDicomError("(0002,0010) Transfer Syntax UID is empty or not a UID")
        if not ts.is_transfer_syntax:
            raise UnsupportedError(
                f"(0002,0010) Transfer Syntax UID {str(ts)[:64]!r} is not a known transfer syntax")
        if ts.is_encapsulated:
            check_codestreams(ds, frames, rows, cols, spp, bits)
            return
    per_sample_bits = bits
    if value_of(ds, "PhotometricInterpretation", "") == "YBR_FULL_422" and keyword == "PixelData":
        samples = samples * 2 // 3
    expected = (samples * per_sample_bits + 7) // 8
    held = len(elem.value) if elem.value is not None else 0
    if held < expected:
        raise PixelBudgetError(
            f"(7FE0,0010) Pixel Data holds {held} bytes but the header declares {expected} "
            f"({frames} frame(s) × {rows} × {cols} × {spp} sample(s) × {bits} bits); truncated file?"
        )


def check_codestreams(ds: Dataset, frames: int, rows: int, cols: int, spp: int, bits: int) -> None:
    """Encapsulated data must hold every declared frame, each compressed frame declaring the
    header's size: decoders allocate what the codestream says, so a lie there is refused here."""
    ts = ds.file_meta.TransferSyntaxUID
    if ts in JPEG2000TransferSyntaxes:
        read_size, kind = j2k_size, "JPEG 2000"
    elif ts in JPEGTransferSyntaxes or ts in JPEGLSTransferSyntaxes:
        read_size, kind = jpeg_size, "JPEG-LS" if ts in JPEGLSTransferSyntaxes else "JPEG"
    else:
        read_size, kind = None, ""
    offsets = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        offsets = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    frame_bytes = rows * cols * spp * ((bits + 7) // 8)
    held = 0
    try:
        for held, frame in enumerate(generate_frames(ds.PixelData, number_of_frames=frames,
                                                     extended_offsets=offsets), start=1):
            if held > frames:
                continue
            if ts in RLETransferSyntaxes and rle_capacity(frame) < frame_bytes:
                raise PixelBudgetError(
                    f"(7FE0,0010) frame {held}: {len(frame)} bytes of RLE data decode to at most "
                    f"{rle_capacity(frame)} bytes but the header declares {frame_bytes} "
                    f"({rows} × {cols} × {spp} sample(s) × {bits} bits)")
            if read_size is None:
                continue
            size = read_size(frame)
            if size is None:
                raise InvalidDicomError(
                    f"(7FE0,0010) frame {held}: no {kind} frame header found; corrupt codestream")
            if size != (rows, cols, spp):
                raise InvalidDicomError(
                    f"(7FE0,0010) frame {held}: the {kind} codestream declares {size[0]} × {size[1]} "
                    f"× {size[2]} component(s) but the header declares {rows} × {cols} × {spp} "
                    "((0028,0010) Rows × (0028,0011) Columns × (0028,0002) Samples per Pixel)")
    except (InvalidDicomError, PixelBudgetError):
        raise
    except Exception as err:  # pydicom raises ValueError/KeyError/struct.error on broken items
        raise InvalidDicomError(
            f"(7FE0,0010) encapsulated Pixel Data is unreadable ({_first_line(err)})") from err
    if held < frames:
        raise PixelBudgetError(
            f"(7FE0,0010) Pixel Data holds {held} frame(s) but (0028,0008) Number of Frames is {frames}")


def _sop_class_name(ds: Dataset) -> str:
    """The SOP class's name in the dictionary, else its UID, else "unknown" (a value that is no
    UID — a corrupt or misused element's text — is not repeated)."""
    sop_class = ds.get("SOPClassUID")
    uid, name = str(sop_class or "").strip(), getattr(sop_class, "name", "")
    if name and name != uid:
        return name
    return uid if is_uid_text(uid) else "unknown"


#: pydicom's decoding plugin tried first, by transfer syntax, where its own order starts with a
#: slower one: JPEG-LS by CharLS (pyjpegls) decodes a 512² CT slice in ~4 ms, pylibjpeg's
#: libjpeg in ~16 (AMD EPYC; the same pixels, tests/test_pydicom_files.py).
PREFERRED_PLUGINS = {str(uid): "pyjpegls" for uid in JPEGLSTransferSyntaxes}


def _pixel_array(ds: Dataset, preferred: str | None) -> np.ndarray:
    """``ds.pixel_array`` by the ``preferred`` plugin; by every available one, in pydicom's
    order, when it is absent or fails (its error is not the input's reason: another may read it)."""
    if preferred is not None:
        ds.pixel_array_options(decoding_plugin=preferred)
        try:
            return ds.pixel_array
        except Exception:  # noqa: BLE001 - the other plugins decide
            pass
        finally:
            ds.pixel_array_options()
    return ds.pixel_array


def decode_pixels(ds: Dataset, *, max_pixels: int) -> np.ndarray:
    """Decoded pixels as pydicom gives them (YBR already RGB), after the budget check."""
    check_pixel_budget(ds, max_pixels)
    arr = native_pixels(ds)  # the plain native case without pydicom's decoder dispatch
    if arr is not None:
        return arr
    ts = ds.file_meta.get("TransferSyntaxUID", None)
    name = getattr(ts, "name", None) or str(ts)
    load_pixel_plugins()  # a lean command's pydicom gets its plugins at the first instance that needs them
    try:
        with warnings.catch_warnings(), native_stderr_silenced():  # a panic's text: not the user's
            warnings.simplefilter("ignore")
            arr = _pixel_array(ds, PREFERRED_PLUGINS.get(str(ts)))
    except NotImplementedError as err:
        raise UnsupportedError(f"cannot decode transfer syntax {name}: {_first_line(err)}") from err
    except BaseException as err:  # any decoder failure is the input's; a Rust decoder's panic
        if not isinstance(err, Exception) and type(err).__name__ != "PanicException":
            raise  # is a BaseException (pyo3), the rest (KeyboardInterrupt, SystemExit) go on
        detail = _first_line(err, 1000).replace(_ALL_PLUGINS_FAILED, "every decoder failed:")
        if str(ts) not in GDCM_SYNTAXES:
            raise InvalidDicomError(
                f"(7FE0,0010) {name} pixel data could not be decoded ({detail[:300]})") from err
        try:
            arr = decode_in_child(ds)
        except ChildDecodeError as child_err:
            raise InvalidDicomError(f"(7FE0,0010) {name} pixel data could not be decoded "
                                    f"({detail[:240]}; {str(child_err)[:120]})") from err
    check_decoded_shape(arr, ds)
    if not arr.dtype.isnative:  # big endian sources: values kept, byte order made native
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def check_decoded_shape(arr: np.ndarray, ds: Dataset) -> None:
    """Refuse pixels a decoder shaped otherwise than the header declares: pydicom shapes native
    data by its own reading of the header (an empty Number of Frames, Pixel Data longer than the
    geometry), and a codestream carries its own size; the chain splits frames by the header."""
    frames, rows, cols, spp, _ = pixel_geometry(ds)
    expected = (rows, cols) + ((spp,) if spp > 1 else ())
    if frames > 1:
        expected = (frames, *expected)
    if arr.shape != expected:
        raise InvalidDicomError(
            f"(7FE0,0010) Pixel Data decodes to {' × '.join(map(str, arr.shape))} but the header "
            f"declares {frames} frame(s) × {rows} × {cols} × {spp} sample(s)")
