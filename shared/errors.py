"""The project's exception hierarchy: every failure carries a one-line, PHI-free reason.

`Permanent` errors are properties of the input (retrying cannot help); `Transient` errors are
faults of the environment (storage, broker) that a retry with backoff may cure.
"""
from __future__ import annotations

import re
from functools import cache

#: A quoted literal as Python's repr and library messages write it (``'…'``, ``"…"``, ``b'…'``),
#: starting after a non-word character (so the apostrophe of "image's" starts none), closed or
#: running to the end of a message that was cut short.
_QUOTED = re.compile(r"""(?<!\w)b?(?:'(?:[^'\\]|\\.)*(?:'|$)|"(?:[^"\\]|\\.)*(?:"|$))""")
#: what only binary data puts in a literal: escapes of bytes, code points and control characters
#: as a repr writes them, or the control characters themselves as a plain quote passes them
_BINARY = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[nrt])|[\x00-\x08\x0b-\x1f\x7f]")
#: longest quoted value a reason may show (a UID is at most 64 characters)
MAX_QUOTED = 66
#: a literal of numbers: decimal and integer strings, UIDs, their multi-values (backslashes); an
#: exponent's letter only between a digit and a digit or sign (one character at a time: linear)
_NUMBERS = re.compile(r"(?:[0-9.+\-\\ ]|(?<=[0-9.])[eE](?=[+\-]?[0-9]))*")
#: a tag as messages write it: (gggg,eeee)
_TAG = re.compile(r"\(([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)")
#: a numpy dtype as messages name it: ``'<u2'``, ``'uint16'``
_DTYPE = re.compile(r"[<>|=]?[biufcSUV][0-9]{0,2}|bool|u?int(?:8|16|32|64)|float(?:16|32|64)")
#: Photometric Interpretation's defined terms (PS3.3 C.7.6.3.1.2): values a reason may name
PHOTOMETRIC_TERMS = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL",
    "YBR_FULL_422", "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB"})
#: the short names decoders give the compressions they refuse (GDCM: "does not support 'JPEG
#: Extended' for samples with 12-bit precision")
CODEC_TERMS = frozenset({"JPEG Baseline", "JPEG Extended", "JPEG Lossless", "JPEG-LS", "JPEG 2000",
                         "JPEG 2000 Lossless", "HTJ2K", "RLE", "RLE Lossless", "Deflate"})


@cache
def _dicom_terms() -> frozenset[str]:
    """Words a reason may quote because the standard defines them, not the file: VRs, keywords
    and names of attributes, names of UIDs (transfer syntaxes, SOP classes), photometric terms,
    codecs' names."""
    from .runtime import import_pydicom_lean

    import_pydicom_lean()  # where a process has not imported pydicom yet: its light way
    from pydicom.datadict import DicomDictionary
    from pydicom.uid import UID_dictionary
    from pydicom.valuerep import VR

    return frozenset({*(entry[2] for entry in DicomDictionary.values()),  # names
                      *(entry[4] for entry in DicomDictionary.values()),  # keywords
                      *(entry[0] for entry in UID_dictionary.values()),
                      *(vr.value for vr in VR), *PHOTOMETRIC_TERMS, *CODEC_TERMS} - {""})


def _speaks_of_the_standard(content: str) -> bool:
    """Whether a quoted value says only numbers or the standard's own words (`_dicom_terms`):
    then it cannot be a name, an ID or free text read from a file."""
    return bool(_NUMBERS.fullmatch(content) or _DTYPE.fullmatch(content) or content.strip() in _dicom_terms())


def _printable(word: int) -> bool:
    """Whether both bytes of a 16-bit word are printable ASCII, as text read as a tag's is."""
    return 0x20 <= word & 0xFF <= 0x7E and 0x20 <= word >> 8 <= 0x7E


def _tag_of_text(match: re.Match) -> str:
    """A tag the parser read out of a value when a corrupt length put it out of step: its group
    or element is two printable characters (``(4D53,5449)`` is "SMIT") and the dictionary does
    not know it. Real tags almost never are: creators and private elements have a 0x00 or 0x10
    byte, and public tags that are (Depth of Scan Field, (0018,5050)) are in the dictionary."""
    group, element = int(match.group(1), 16), int(match.group(2), 16)
    if (_printable(group) or _printable(element)) and (group << 16 | element) not in _dictionary_tags():
        return "(text read as a tag)"
    return match.group(0)


@cache
def _dictionary_tags() -> frozenset[int]:
    from .runtime import import_pydicom_lean

    import_pydicom_lean()
    from pydicom.datadict import DicomDictionary

    return frozenset(DicomDictionary)


def safe_reason(text: str, *, strict: bool = True) -> str:
    """``text`` as one line in which no quoted value can carry a file's bytes.

    Libraries quote raw values in their messages: pydicom shows the bytes of an element whose
    length is corrupt, and a corrupt length swallows its neighbours — names, IDs, dates — into
    even a short, printable value (a Pixel Spacing of ``'1.0\\1.0 LO ACME'``), and an element
    read out of step shows its text as a tag and a VR in hex (``(4D53,5449)``, ``'0x48 0x5e'``:
    "SMITH^"). A quoted literal is shown only if it is closed, no longer than a UID, free of binary,
    and (``strict``, for reasons about an input) made of numbers, a UID or the standard's own words
    (`_speaks_of_the_standard`); any other is replaced by its length. ``strict`` also leaves out
    tags made of text (`_tag_of_text`). Not ``strict``: every short printable literal stays (a
    setting's reason quotes what the user typed)."""

    def redact(match: re.Match) -> str:
        literal = match.group(0)
        shown = (len(literal) <= MAX_QUOTED and literal[-1] in "'\"" and not _BINARY.search(literal)
                 and (not strict or _speaks_of_the_standard(literal[2 if literal[0] == "b" else 1:-1])))
        return literal if shown else f"<a value of {len(literal)} characters, not shown>"

    text = _QUOTED.sub(redact, " ".join(str(text).split()))
    return _TAG.sub(_tag_of_text, text) if strict else text


class DicomfleetError(Exception):
    """Base class; ``str(err)`` is the one-line reason shown to users and recorded in manifests,
    with any quoted value that may carry a file's bytes left out (`safe_reason`)."""

    #: short, stable, low-cardinality code (used as a metrics label and in the manifest)
    code = "error"

    #: whether the reason speaks of an input (its quoted values are held to `safe_reason`'s
    #: strict rule) rather than of a setting the user gave
    about_input = True

    def __str__(self) -> str:
        return safe_reason(super().__str__(), strict=self.about_input)


class Permanent(DicomfleetError):
    """The input itself is at fault; the same input will fail the same way again."""


class Transient(DicomfleetError):
    """The environment is at fault (storage, network, broker); a retry may succeed."""

    code = "transient"


class NotDicomError(Permanent):
    """The bytes are not a DICOM dataset (no preamble/meta and not parseable)."""

    code = "not_dicom"


class InvalidDicomError(Permanent):
    """The dataset parses but is truncated or contradicts itself."""

    code = "invalid"


class NoPixelDataError(Permanent):
    """The dataset has no image to convert (SR, RT plan, waveform…)."""

    code = "no_pixels"


class UnsupportedError(Permanent):
    """A transfer syntax, photometric interpretation or pixel layout we cannot decode."""

    code = "unsupported"


class MissingSourceError(Permanent):
    """The source instance is gone or may not be read (deleted, moved, no permission) since it was
    scanned: that instance's failure, which no retry of its series mends."""

    code = "missing_source"


class PixelBudgetError(Permanent):
    """The header declares more pixels than the configured budget or than its data holds."""

    code = "pixel_budget"


class BurnedInAnnotationError(Permanent):
    """The image is likely to show burned-in identifying text and masking was not requested."""

    code = "burned_in"


class VerificationError(Permanent):
    """An output did not decode back to what was written (a bug, never silently accepted)."""

    code = "verify"


class ConfigError(DicomfleetError):
    """A setting or option is invalid; raised before any work starts."""

    code = "config"
    about_input = False


class StorageError(Transient):
    """A storage backend could not be read or written."""

    code = "storage"


class BrokerError(Transient):
    """The job broker / state store (Redis) could not be reached."""

    code = "broker"


def _codes() -> frozenset[str]:
    found, todo = {"internal", "dead_letter"}, [DicomfleetError]
    while todo:
        cls = todo.pop()
        found.add(cls.code)
        todo.extend(cls.__subclasses__())
    return frozenset(found)


_known: frozenset[str] = frozenset()


def reason_code(code: object) -> str:
    """A label-safe reason for metrics: one of the error classes' codes, ``none`` when empty,
    else ``other`` (never free text, so no PHI and no unbounded label values)."""
    global _known
    if not code:
        return "none"
    if code not in _known:
        _known = _codes()  # an error class defined after the first call (e.g. a late import)
    return code if code in _known else "other"


def failure(err: Exception) -> dict:
    """The recorded form of a failure: our errors keep their code and reason; anything else is a
    bug of ours, recorded as ``internal`` with a one-line reason instead of a traceback."""
    if isinstance(err, DicomfleetError):
        return {"code": err.code, "reason": str(err)}
    reason = safe_reason(str(err))[:200]
    return {"code": "internal", "reason": f"internal error ({type(err).__name__}: {reason})"}
