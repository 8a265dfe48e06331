"""The project's exception hierarchy: every failure carries a one-line, PHI-free reason.

`Permanent` errors are properties of the input (retrying cannot help); `Transient` errors are
faults of the environment (storage, broker) that a retry with backoff may cure.
"""
from __future__ import annotations

import re

#: A quoted literal as Python's repr and library messages write it (``'…'``, ``"…"``, ``b'…'``),
#: starting after a non-word character (so the apostrophe of "image's" starts none), closed or
#: running to the end of a message that was cut short.
_QUOTED = re.compile(r"""(?<!\w)b?(?:'(?:[^'\\]|\\.)*(?:'|$)|"(?:[^"\\]|\\.)*(?:"|$))""")
#: escapes that only binary data produces in a repr: bytes, code points, control characters
_BINARY = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|[nrt])")
#: longest quoted value a reason may show (a UID is at most 64 characters)
MAX_QUOTED = 66


def safe_reason(text: str) -> str:
    """``text`` as one line in which no quoted value can carry a file's bytes.

    Libraries quote raw values in their messages: pydicom shows the bytes of an element whose
    length is corrupt, and a corrupt length swallows its neighbours — names, IDs, dates. A quoted
    literal that holds binary escapes or is longer than a UID is replaced by its length; short,
    printable values (a VR, a UID, a tag's numbers) stay, since they say what is wrong."""

    def redact(match: re.Match) -> str:
        literal = match.group(0)
        if len(literal) <= MAX_QUOTED and not _BINARY.search(literal) and literal[-1] in "'\"":
            return literal
        return f"<a value of {len(literal)} characters, not shown>"

    return _QUOTED.sub(redact, " ".join(str(text).split()))


class DicomfleetError(Exception):
    """Base class; ``str(err)`` is the one-line reason shown to users and recorded in manifests,
    with any quoted value that may carry a file's bytes left out (`safe_reason`)."""

    #: short, stable, low-cardinality code (used as a metrics label and in the manifest)
    code = "error"

    def __str__(self) -> str:
        return safe_reason(super().__str__())


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
