"""The project's exception hierarchy: every failure carries a one-line, PHI-free reason.

`Permanent` errors are properties of the input (retrying cannot help); `Transient` errors are
faults of the environment (storage, broker) that a retry with backoff may cure.
"""
from __future__ import annotations


class DicomfleetError(Exception):
    """Base class; ``str(err)`` is the one-line reason shown to users and recorded in manifests."""

    #: short, stable, low-cardinality code (used as a metrics label and in the manifest)
    code = "error"


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
    reason = " ".join(str(err).split())[:200]
    return {"code": "internal", "reason": f"internal error ({type(err).__name__}: {reason})"}
