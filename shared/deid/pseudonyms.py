"""Keyed, deterministic pseudonyms: HMAC-SHA256 under DICOMFLEET_DEID_KEY.

Every process on every machine holding the same key maps the same UID, patient, text or date the
same way, so references inside a study stay linked without any shared state. Without the key the
pseudonyms cannot be reversed or recomputed (no dictionary attack on short values like IDs).
"""
from __future__ import annotations

import datetime as dt
import hmac
from functools import lru_cache

from ..errors import ConfigError
from ..options import env

KEY_NAME = "DEID_KEY"
MIN_KEY_CHARS = 32
#: Shifts are into the past by 1..MAX_SHIFT_DAYS days (about ten years), never to the future.
MAX_SHIFT_DAYS = 3652
_EPOCH = dt.date(1, 1, 1)


def deid_key() -> bytes:
    """The secret from DICOMFLEET_DEID_KEY or the file DICOMFLEET_DEID_KEY_FILE names."""
    raw = env(KEY_NAME)
    if not raw:
        raise ConfigError(
            "no de-identification key: set DICOMFLEET_DEID_KEY or DICOMFLEET_DEID_KEY_FILE "
            f"(at least {MIN_KEY_CHARS} random characters, e.g. from `openssl rand -hex 32`)")
    if len(raw) < MIN_KEY_CHARS:
        raise ConfigError(f"DICOMFLEET_DEID_KEY is too short: at least {MIN_KEY_CHARS} characters")
    return raw.encode("utf-8")


class Pseudonymizer:
    """The pseudonym functions for one key. Most values repeat across a series (study, series,
    patient, institution…) or within an instance (SOP and media storage UIDs): a bounded cache
    keyed by (domain, value) computes each once per process."""

    CACHE_SIZE = 4096

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._cache: dict[tuple[str, str], str | int] = {}

    def digest(self, domain: bytes, value: str) -> bytes:
        return hmac.digest(self._key, domain + b"\0" + value.encode("utf-8", "surrogateescape"), "sha256")

    def remember(self, key: tuple, make):
        """``make()``, computed once per process for ``key``: a result derived from the key's
        pseudonyms and the caller's inputs alone (e.g. a raw text value's pseudonym)."""
        found = self._cache.get(key)
        if found is None:
            found = make()
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            self._cache[key] = found
        return found

    def _cached(self, domain: str, value: str, make):
        return self.remember((domain, value), lambda: make(self.digest(domain.encode(), value)))

    def uid(self, value: str) -> str:
        """``2.25.<int>`` of a UUIDv8 made from the HMAC: ≤ 44 characters, digits and dots."""
        return self._cached("uid", value.strip().rstrip("\0"), _uid_from_digest)

    def text(self, value: str) -> str:
        """An opaque 12-character token (upper-case letters and digits: valid in every text VR)."""
        return self._cached("text", value.strip(), lambda d: "X" + d.hex()[:11].upper())

    def patient_id(self, patient_key: str) -> str:
        return self._cached("patient", patient_key, lambda d: "PAT" + d.hex()[:13].upper())

    def shift_days(self, patient_key: str) -> int:
        """The patient's date shift: the same for every instance of the patient, 1..3652 days."""
        return self._cached("date-shift", patient_key,
                            lambda d: 1 + int.from_bytes(d[:8], "big") % MAX_SHIFT_DAYS)


def _uid_from_digest(digest: bytes) -> str:
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8 (RFC 9562 custom)
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC variant
    return f"2.25.{int.from_bytes(raw, 'big')}"


@lru_cache(maxsize=4)
def pseudonymizer(key: bytes) -> Pseudonymizer:
    return Pseudonymizer(key)


def current() -> Pseudonymizer:
    """The pseudonymizer for the key configured now (the HMAC is keyed once per process)."""
    return pseudonymizer(deid_key())


def shift_date(value: str, days: int) -> str | None:
    """A DA value moved ``days`` into the past; None when it is not a full YYYYMMDD date."""
    value = value.strip()
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        day = dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        return None
    shifted = day - dt.timedelta(days=days)
    return shifted.strftime("%Y%m%d") if shifted > _EPOCH else None


def shift_datetime(value: str, days: int) -> str | None:
    """A DT value with its date part shifted; time and UTC offset kept. None if unparseable."""
    value = value.strip()
    date = shift_date(value[:8], days)
    if date is None:
        return None
    rest = value[8:]
    return date + rest if all(c.isdigit() or c in ".+-" for c in rest) else None
