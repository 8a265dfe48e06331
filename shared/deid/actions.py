"""Applying the profile's actions to a dataset: one pass over every element, into sequences.

Attributes outside Table E.1-1 are kept (PS3.15 E.1.1) except private tags (removed unless Retain
Safe Private keeps a known-safe one), overlays and curves (60xx, 50xx) and group lengths; UIDs
outside the table that are not well-known DICOM UIDs are pseudonymised too (vendors embed dates
and serial numbers in them).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID_dictionary
from pydicom.valuerep import PersonName

from ..dataset import drop_element, put_element, text_element
from .profile import CLEAN, DUMMY, EMPTY, KEEP, REMOVE, SAFE_PRIVATE, SHIFT, UID
from .pseudonyms import Pseudonymizer, shift_date, shift_datetime

_TEXT_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "CS", "UR"})
_NUMBER_STRINGS = frozenset({"IS", "DS"})
_NUMBERS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_BYTES = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
#: Values whose tokens identify (collected for cleaning descriptors); CS holds enumerated terms.
_IDENTIFYING_VRS = frozenset({"PN", "LO", "SH", "ST", "LT", "UT", "UC", "AE", "DA", "DT"})
_DUMMY_CONSTANTS = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y",
                    "IS": "0", "DS": "0"}
_WELL_KNOWN_UIDS = frozenset(UID_dictionary)
_PATIENT_ID = 0x00100020
#: File meta attributes naming the sending system (not in the table; identify a site/device).
META_REMOVE = (0x00020016, 0x00020017, 0x00020018, 0x00020100, 0x00020102)

_TOKEN = re.compile(r"[^\W_]+")
_DIGIT_RUN = re.compile(r"\d{4}")
_DATE_LIKE = re.compile(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}")
_SPACES = re.compile(r"\s{2,}")
_NUMERIC_TEXT = re.compile(r"[\d\s.+\-eE\\:/]*")
_LETTER_RUN = re.compile(rb"[A-Za-z]{3}")


@dataclass(slots=True)
class Context:
    """What one instance's pass needs: the pseudonyms, the actions, the patient's shift."""

    pseudo: Pseudonymizer
    table: dict[int, str]
    shift_days: int
    safe_private: bool = False
    collect: bool = False  # gather identifying tokens (some action cleans text)
    pairs: dict[str, str] | None = None  # original → pseudonym, for the reversible map
    patient_key: str = ""  # the instance's patient (Patient ID with its issuer, see patient_key)
    patient_id: str = ""  # the instance's own Patient ID, which maps through patient_key
    identifiers: set[str] = field(default_factory=set)
    to_clean: list[DataElement] = field(default_factory=list)

    def uid(self, value: str) -> str:
        new = self.pseudo.uid(value)
        if self.pairs is not None:
            self.pairs[value.strip().rstrip("\0")] = new
        return new


#: exact types (a type test, not isinstance: MultiValue is an ABC and this is the hot path)
_MULTI = frozenset({MultiValue, list, tuple})


_SIZED = _MULTI | {str, bytes}


def _empty(value) -> bool:
    """No value to hide (never compares values: numpy arrays would not give a truth value)."""
    if value is None:
        return True
    if type(value) in _SIZED or isinstance(value, (str, bytes, Sequence)):  # UID is a str
        return len(value) == 0
    if isinstance(value, PersonName):
        return len(str(value)) == 0
    return False


def _values(value) -> list:
    return list(value) if type(value) in _MULTI else [value]


def _each(value, fn):
    """Apply ``fn`` to one value or to each of a multi-value, keeping the shape."""
    if type(value) in _MULTI:
        return [fn(v) for v in value]
    return fn(value)


def walk(ds: Dataset, ctx: Context) -> None:
    """De-identify ``ds`` in place, recursively (the file meta is walked separately)."""
    table = ctx.table
    drop: list[int] = []
    for elem in list(ds.values()):  # no sorting, no per-tag lookup: this loop is the hot path
        if isinstance(elem, RawDataElement):
            if _settled_raw(elem, table, ctx, drop) or _replaced_raw(ds, elem, table, ctx):
                continue
            elem = text_element(ds, elem.tag)
        tag = int(elem.tag)  # a plain int: BaseTag compares in Python
        action = table.get(tag)
        if action is None:
            group = tag >> 16
            if group & 1:
                if not (ctx.safe_private and _safe_private(ds, elem)):
                    if ctx.collect:
                        _collect_hidden(elem, ctx)
                    drop.append(tag)
            elif group & 0xFF00 in (0x5000, 0x6000) or tag & 0xFFFF == 0:
                drop.append(tag)
            elif elem.VR == "SQ":
                for item in elem.value or ():
                    walk(item, ctx)
            elif elem.VR == "UI" and group != 0x0002 and not _empty(elem.value):
                mapped = _each(elem.value, lambda v: v if v in _WELL_KNOWN_UIDS else ctx.uid(v))
                if mapped != elem.value:  # a well-known UID (SOP class) is left as it is
                    elem.value = mapped
            continue
        if action == REMOVE:
            drop.append(tag)
        elif action == KEEP:
            continue
        value = elem.value
        if _empty(value):
            continue
        vr = elem.VR
        if ctx.collect and action != CLEAN and vr in _IDENTIFYING_VRS:
            _collect(ctx.identifiers, value, 2 if vr == "PN" else 3)
        elif ctx.collect and vr == "SQ" and action in _HIDING:
            _collect_hidden(elem, ctx)  # the items go whole: nothing in them is walked
        if action == REMOVE:
            continue
        if action == UID:
            if vr == "UI":
                elem.value = _each(value, ctx.uid)
            elif vr == "SQ":
                for item in value:
                    walk(item, ctx)
            else:
                drop.append(tag)
        elif action == DUMMY:
            _dummy(elem, tag, vr, ctx)
        elif action == EMPTY:
            elem.value = [] if vr == "SQ" else (b"" if vr in _BYTES else None)
        elif action == SHIFT:
            _shift(elem, vr, ctx.shift_days)
        elif action == CLEAN:
            if vr == "SQ":
                for item in value:
                    walk(item, ctx)
            elif vr in _TEXT_VRS:
                ctx.to_clean.append(elem)
            else:
                drop.append(tag)
    for tag in drop:
        drop_element(ds, tag)


#: VRs whose raw element may convert to a sequence or a UID (or whose VR is not known yet)
_RAW_UNSETTLED = frozenset({"SQ", "UI", "UN", None})


def _settled_raw(raw: RawDataElement, table: dict[int, str], ctx: Context, drop: list[int]) -> bool:
    """Whether a still-unconverted element's fate is known from its tag and VR alone (kept as is,
    or dropped with nothing collected from it): then it is not converted (~10 µs an element),
    which is what `walk` would decide after converting it."""
    tag = int(raw.tag)
    action = table.get(tag)
    if action == KEEP:
        return True
    if action == REMOVE and not ctx.collect:
        drop.append(tag)
        return True
    if action is None and (tag >> 16) & 1:  # private: read for Retain Safe Private, or to collect
        if ctx.safe_private or ctx.collect:
            return False
        drop.append(tag)
        return True
    if action is not None or raw.VR in _RAW_UNSETTLED:
        return False
    if (tag >> 16) & 0xFF00 in (0x5000, 0x6000) or tag & 0xFFFF == 0:
        drop.append(tag)
    return True


#: String VRs whose value, stripped of padding, is empty exactly when the converted value is
_PADDED_STRINGS = frozenset({"PN", "LO", "SH", "CS", "DA", "TM", "DT", "AS"})


def _replaced_raw(ds: Dataset, raw: RawDataElement, table: dict[int, str], ctx: Context) -> bool:
    """Z (empty) and date/time D (a constant) on a still-unconverted string element: the new value
    does not depend on the old, so it is set without converting the old one. What `walk` would
    do after converting it (empty values are left as they are; nothing to collect)."""
    action = table.get(int(raw.tag))
    if raw.VR == "UI":
        return _replaced_raw_uid(ds, raw, action, ctx)
    if ctx.collect or action not in (EMPTY, DUMMY):
        return False
    if action == DUMMY and raw.VR in _TEXT_VRS:
        return _pseudonymised_raw(ds, raw, ctx)
    if raw.VR not in _PADDED_STRINGS:
        return False
    if action == DUMMY and (raw.VR not in _DUMMY_CONSTANTS or int(raw.tag) == _PATIENT_ID):
        return False
    if raw.value is None or not raw.value.strip(b" \0"):
        return True  # empty once converted: walk leaves it
    put_element(ds, _raw_text(raw, "" if action == EMPTY else _DUMMY_CONSTANTS[raw.VR], b" "))
    return True


#: Raw text values up to this many bytes have their pseudonym remembered (names, institutions,
#: stations); a long text is hashed each time rather than kept in the process.
_REMEMBERED_TEXT = 256


def _pseudonymised_raw(ds: Dataset, raw: RawDataElement, ctx: Context) -> bool:
    """D on a still-unconverted text element: its value converted as pydicom converts it (not
    stored), its pseudonym (`_dummy_text`) set as a raw element. What `walk` would do after
    converting it, without a validated DataElement made and replaced (~4 of ~7 µs an element)."""
    tag = int(raw.tag)
    if tag == _PATIENT_ID or raw.value is None or len(raw.value) > _REMEMBERED_TEXT:
        new = _text_pseudonym(ds, tag, ctx)  # Patient ID's pseudonym depends on the instance's patient
    else:  # the same raw value in the same character set: the same token, slice after slice
        encoding = ds.original_character_set
        new = ctx.pseudo.remember(
            ("raw-text", raw.VR, raw.value, tuple(encoding) if isinstance(encoding, list) else encoding),
            lambda: _text_pseudonym(ds, tag, ctx))
    if new is not None:
        put_element(ds, _raw_text(raw, new, b" "))
    return True


def _text_pseudonym(ds: Dataset, tag: int, ctx: Context) -> str | None:
    value = text_element(ds, tag, store=False).value
    return None if _empty(value) else _dummy_text(tag, value, ctx)


def _raw_text(raw: RawDataElement, text: str, pad: bytes) -> RawDataElement:
    """``raw`` holding the ASCII ``text`` instead, padded to even length as the file would be: the
    new value stays raw like the rest of the parsed file (a DataElement costs ~4 µs to validate
    and is only needed if someone reads the value, when pydicom converts it as any other)."""
    value = text.encode("ascii")
    if len(value) & 1:
        value += pad
    return RawDataElement(raw.tag, raw.VR, len(value), value, raw.value_tell, raw.is_implicit_VR,
                          raw.is_little_endian, raw.is_raw, raw.is_buffered)  # ~2× _replace's speed


def replace_uid(ds: Dataset, tag: int, ctx: Context) -> None:
    """Pseudonymise the UID element ``tag`` of ``ds`` if present and not empty (the file meta's
    Media Storage SOP Instance UID), raw or converted as it is."""
    elem = ds.get_item(tag)
    if isinstance(elem, RawDataElement):
        _replaced_raw_uid(ds, elem, UID, ctx)
    elif elem is not None and not _empty(elem.value):
        elem.value = _each(elem.value, ctx.uid)


def _replaced_raw_uid(ds: Dataset, raw: RawDataElement, action: str | None, ctx: Context) -> bool:
    """A still-unconverted UID element that `walk` would pseudonymise (U or D, or outside the
    table and not a well-known UID): its values decoded as pydicom's UI conversion does (ISO 8859,
    trailing spaces and NULs dropped, split at backslashes), mapped, and set as a new element."""
    tag = int(raw.tag)
    group = tag >> 16
    if action is None:
        if group & 1 or group == 0x0002 or group & 0xFF00 in (0x5000, 0x6000) or tag & 0xFFFF == 0:
            return False
        fn = lambda v: v if v in _WELL_KNOWN_UIDS else ctx.uid(v)  # noqa: E731
    elif action in (UID, DUMMY):
        fn = ctx.uid
    else:
        return False
    items = (raw.value or b"").decode("iso8859").rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0]:
        return True  # empty once converted: walk leaves it
    mapped = [fn(v.strip()) for v in items]  # stripped as UID(v) does (its validation aside: replaced)
    if mapped != items:  # well-known UIDs (SOP classes, transfer syntaxes) stay as they are
        put_element(ds, _raw_text(raw, "\\".join(mapped), b"\0"))
    return True


def _dummy(elem: DataElement, tag: int, vr: str, ctx: Context) -> None:
    """Replace a value with a keyed pseudonym (text, UIDs) or a dummy of its VR."""
    if vr == "SQ":
        elem.value = []  # items of D sequences (persons, annotations) hold identifying codes
    elif vr in _TEXT_VRS:  # Patient ID (LO) included; of another VR it gets that VR's dummy
        elem.value = _dummy_text(tag, elem.value, ctx)
    elif vr in _DUMMY_CONSTANTS:
        elem.value = _DUMMY_CONSTANTS[vr]
    elif vr == "UI":
        elem.value = _each(elem.value, ctx.uid)
    elif vr in _NUMBERS:
        elem.value = 0
    elif vr in _BYTES:
        elem.value = b"\0\0"
    else:  # AT and anything unforeseen: nothing safe to put there
        elem.value = None


def _dummy_text(tag: int, value, ctx: Context) -> str:
    """The pseudonym of a text value: the patient's for Patient ID (the instance's own patient,
    or another one named in a sequence), an opaque token for any other text."""
    if tag == _PATIENT_ID:
        original = " ".join(str(v) for v in _values(value))
        new = ctx.pseudo.patient_id(ctx.patient_key if original == ctx.patient_id else original)
        if ctx.pairs is not None:
            ctx.pairs[original] = new
        return new
    return ctx.pseudo.text("\\".join(str(v) for v in _values(value)))


def _shift(elem: DataElement, vr: str, days: int) -> None:
    """Modified Dates: dates move by the patient's shift, times stay; unparseable values go."""
    if vr == "TM":
        return
    fn = shift_date if vr == "DA" else shift_datetime if vr == "DT" else None
    if fn is None:
        elem.value = None
        return
    shifted = [fn(str(v), days) for v in _values(elem.value)]
    if any(s is None for s in shifted):
        elem.value = None
    else:
        elem.value = shifted if len(shifted) > 1 else shifted[0]


def _collect(identifiers: set[str], value, shortest: int) -> None:
    """Tokens of an identifying value (names down to 2 letters, other values from 3)."""
    for v in _values(value):
        identifiers.update(t.upper() for t in _TOKEN.findall(str(v)) if len(t) >= shortest)


#: actions that take a sequence's items away whole (X, Z, D): `walk` does not go into them
_HIDING = frozenset({REMOVE, EMPTY, DUMMY})
_PRINTABLE = re.compile(rb"[\x20-\x7e]*[\x00 ]?")


def _collect_hidden(elem: DataElement, ctx: Context) -> None:
    """Tokens of a value the profile takes away without reading it — a private element, the
    items of a removed sequence (Other Patient IDs, Request Attributes) — for cleaning
    descriptors: a name or an ID hidden there must not survive in a kept description. Text of
    the identifying VRs, and printable bytes of a private element read without its VR."""
    vr, value = elem.VR, elem.value
    if _empty(value):
        return
    if vr == "SQ":
        for item in value:
            for inner in item:
                _collect_hidden(inner, ctx)
    elif vr in _IDENTIFYING_VRS:
        _collect(ctx.identifiers, value, 2 if vr == "PN" else 3)
    elif vr in ("UN", "OB") and isinstance(value, bytes) and _PRINTABLE.fullmatch(value):
        _collect(ctx.identifiers, value.decode("ascii").rstrip("\0"), 3)


def clean_text(text: str, identifiers: set[str]) -> str:
    """Drop every token of the instance's identifying values, written dates and every run of 4+
    digits (dates, IDs, phone numbers) from a descriptor; keep the rest of its words."""
    def keep(match: re.Match) -> str:
        token = match.group()
        return "" if token.upper() in identifiers or _DIGIT_RUN.search(token) else token

    return _SPACES.sub(" ", _TOKEN.sub(keep, _DATE_LIKE.sub("", text))).strip()


def clean_elements(elements: Iterable[DataElement], identifiers: set[str]) -> None:
    for elem in elements:
        elem.value = _each(elem.value, lambda v: clean_text(str(v), identifiers))


def _safe_private(ds: Dataset, elem: DataElement) -> bool:
    """True for a private creator of a safe block, or a safe element whose value looks numeric."""
    tag = elem.tag
    group, element = tag >> 16, tag & 0xFFFF
    if 0x0010 <= element <= 0x00FF:
        creator = str(elem.value or "").strip()
        return any(g == group and c == creator for g, c in SAFE_PRIVATE)
    if element < 0x1000:
        return False
    creator_elem = ds.get((group << 16) | (element >> 8))
    creator = str(creator_elem.value or "").strip() if creator_elem is not None else ""
    if (element & 0xFF) not in SAFE_PRIVATE.get((group, creator), ()):
        return False
    return _looks_numeric(elem)


def _looks_numeric(elem: DataElement) -> bool:
    if elem.VR in _NUMBERS:
        return True
    value = elem.value
    if isinstance(value, bytes):
        return _LETTER_RUN.search(value) is None
    return all(_NUMERIC_TEXT.fullmatch(str(v)) for v in _values(value))
