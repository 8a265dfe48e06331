"""The optional reversible map (GDPR right of access and erasure): original → pseudonym, encrypted.

One Fernet token per line, each holding one patient's new pairs from one instance, so that pool
processes can append concurrently (under a lock file) and one patient's lines can be erased
without touching the others. The key (DICOMFLEET_PSEUDONYM_MAP_KEY) is not the pseudonym key:
holding the map key re-identifies, holding the pseudonym key only links.
"""
from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

from ..errors import ConfigError, StorageError
from ..options import env

KEY_NAME = "PSEUDONYM_MAP_KEY"


def new_key() -> str:
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode("ascii")


@lru_cache(maxsize=4)
def _fernet(key: str):
    from cryptography.fernet import Fernet

    try:
        return Fernet(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as err:
        raise ConfigError("DICOMFLEET_PSEUDONYM_MAP_KEY is not a Fernet key (32 url-safe base64 bytes)") from err


def map_key_fernet():
    key = env(KEY_NAME)
    if not key:
        raise ConfigError("--pseudonym-map needs a key: set DICOMFLEET_PSEUDONYM_MAP_KEY or "
                          "DICOMFLEET_PSEUDONYM_MAP_KEY_FILE")
    return _fernet(key.strip())


@dataclass
class Entry:
    """One patient's pairs as recorded from one instance."""

    patient: str  # the original patient key (Patient ID, else name and birth date, else study)
    patient_pseudonym: str
    shift_days: int
    pairs: dict[str, str] = field(default_factory=dict)

    def matches(self, value: str) -> bool:
        return value in (self.patient, self.patient_pseudonym) or value in self.pairs \
            or value in self.pairs.values()


class PseudonymMap:
    """An append-only encrypted file of entries; `forget` rewrites it without one patient."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._written: set[str] = set()  # originals this process already wrote (no duplicates)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            fd = os.open(self.path + ".lock", os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as err:
            raise StorageError(f"cannot lock the pseudonym map ({err.strerror})") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def append(self, entry: Entry) -> None:
        new = {k: v for k, v in entry.pairs.items() if k not in self._written}
        if not new and entry.patient in self._written:
            return
        token = map_key_fernet().encrypt(json.dumps(
            {"patient": entry.patient, "patient_pseudonym": entry.patient_pseudonym,
             "shift_days": entry.shift_days, "pairs": new}, sort_keys=True).encode())
        with self._locked():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                with os.fdopen(fd, "ab") as fh:
                    fh.write(token + b"\n")
            except OSError as err:
                raise StorageError(f"cannot write the pseudonym map ({err.strerror})") from err
        self._written.update(new)
        self._written.add(entry.patient)

    def _lines(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as fh:
                return [ln.strip() for ln in fh if ln.strip()]
        except FileNotFoundError:
            return []
        except OSError as err:
            raise StorageError(f"cannot read the pseudonym map ({err.strerror})") from err

    def _decrypt(self, line: bytes) -> Entry:
        from cryptography.fernet import InvalidToken

        try:
            return Entry(**json.loads(map_key_fernet().decrypt(line)))
        except InvalidToken as err:
            raise ConfigError("the pseudonym map does not open with DICOMFLEET_PSEUDONYM_MAP_KEY") from err

    def entries(self) -> list[Entry]:
        return [self._decrypt(line) for line in self._lines()]

    def patient_entries(self, value: str) -> list[Entry]:
        """Every entry of the patient(s) that ``value`` names (ID, pseudonym, a UID or its pseudonym)."""
        entries = self.entries()
        patients = {e.patient for e in entries if e.matches(value)}
        return [e for e in entries if e.patient in patients]

    def access(self, value: str) -> list[dict]:
        """Right of access: per patient ``value`` names, every pair ever recorded, merged."""
        merged: dict[str, dict] = {}
        for e in self.patient_entries(value):
            m = merged.setdefault(e.patient, {"patient": e.patient, "patient_pseudonym": e.patient_pseudonym,
                                              "date_shift_days": -e.shift_days, "pairs": {}})
            m["pairs"].update(e.pairs)
        return list(merged.values())

    def forget(self, value: str) -> tuple[int, int]:
        """Erase every entry of the patient(s) ``value`` names; (entries removed, patients)."""
        with self._locked():
            lines = self._lines()
            decoded = [(line, self._decrypt(line)) for line in lines]
            patients = {e.patient for _, e in decoded if e.matches(value)}
            kept = [line for line, e in decoded if e.patient not in patients]
            tmp = None
            try:  # a new file of a random name beside the map (never a planted link), 0600
                fd, tmp = tempfile.mkstemp(prefix=".forget-", dir=os.path.dirname(os.path.abspath(self.path)))
                with os.fdopen(fd, "wb") as fh:
                    fh.writelines(line + b"\n" for line in kept)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
                tmp = None
                _fsync_directory(self.path)  # the rename itself survives a power cut
            except OSError as err:
                raise StorageError(f"cannot rewrite the pseudonym map ({err.strerror})") from err
            finally:
                if tmp is not None:
                    os.unlink(tmp)
        return len(lines) - len(kept), len(patients)


def _fsync_directory(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@lru_cache(maxsize=8)
def open_map(path: str) -> PseudonymMap:
    """One map object per path per process (it remembers what this process already wrote)."""
    return PseudonymMap(path)
