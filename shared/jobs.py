"""The series job as it crosses the queue: one JSON object, validated on arrival, free of PHI.

The message holds only what the chain needs: the pseudonymous output prefix, source references
(paths or object keys), the destination and the options. Nothing read from a DICOM header other
than what `series_prefix` already pseudonymised travels through Redis.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .chain import SeriesJob
from .errors import ConfigError
from .manifest import build_manifest, manifest_key, recorded_parameters
from .options import ConvertOptions

SCHEMA = 1
PRIORITIES = ("normal", "high")


def job_id(prefix: str, dest: str, fingerprints: list[str], options: ConvertOptions) -> str:
    """Deterministic job id: the same sources (by content) with the same parameters to the same
    target give the same id, so a re-submission is recognised."""
    doc = {"prefix": prefix, "dest": dest.rstrip("/"), "sources": fingerprints, "options": options.to_json()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class SeriesMessage:
    """The single argument of the ``dicomfleet.convert_series`` task."""

    job_id: str
    prefix: str
    dest: str
    sources: tuple[str, ...]
    options: ConvertOptions
    priority: str = "normal"

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "job_id": self.job_id, "prefix": self.prefix, "dest": self.dest,
                "sources": list(self.sources), "options": self.options.to_json(), "priority": self.priority}

    @classmethod
    def from_json(cls, data: object) -> "SeriesMessage":
        """Validate a message; a malformed one is a ConfigError with a one-line reason."""
        if not isinstance(data, dict):
            raise ConfigError(f"job message must be a JSON object, got {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise ConfigError(f"job message schema {data.get('schema')!r} is not {SCHEMA}")
        unknown = set(data) - {"schema", "job_id", "prefix", "dest", "sources", "options", "priority"}
        if unknown:
            raise ConfigError(f"job message has unknown field(s) {sorted(unknown)!r}")
        for name in ("job_id", "prefix", "dest"):
            if not isinstance(data.get(name), str) or not data[name]:
                raise ConfigError(f"job message field {name!r} must be a non-empty string")
        sources = data.get("sources")
        if not isinstance(sources, list) or not sources or not all(isinstance(s, str) and s for s in sources):
            raise ConfigError("job message field 'sources' must be a non-empty list of strings")
        prefix = data["prefix"].strip("/")
        if ".." in prefix.split("/"):
            raise ConfigError(f"job message prefix {data['prefix']!r} leaves the destination")
        priority = data.get("priority", "normal")
        if priority not in PRIORITIES:
            raise ConfigError(f"job message priority {priority!r} is not one of {PRIORITIES}")
        options = ConvertOptions.from_json(data.get("options", {}))
        if options.pseudonym_map:  # a local file of the machine that ran `convert`: never a worker's
            raise ConfigError("job message asks for a pseudonym map, which only `convert` writes")
        return cls(data["job_id"], prefix, data["dest"], tuple(sources), options, priority)

    def series_job(self) -> SeriesJob:
        """The chain's own job: the worker runs exactly what `convert` runs."""
        return SeriesJob(self.prefix, list(self.sources), self.dest, self.options)

    @property
    def manifest_key(self) -> str:
        return manifest_key(self.prefix)

    @property
    def failure_key(self) -> str:
        return failure_key(self.prefix)


def failure_key(prefix: str) -> str:
    """Beside the manifest: present when the series' last attempt failed as a whole."""
    return f"{prefix.rstrip('/')}/failure.json"


def failure_record(message: SeriesMessage, code: str, reason: str, deliveries: int) -> bytes:
    """The failure record written to the bucket: job id, reason and parameters, no PHI."""
    doc = {"schema": SCHEMA, "job_id": message.job_id, "series": message.prefix, "code": code,
           "reason": reason, "deliveries": deliveries, "instances": len(message.sources),
           "parameters": recorded_parameters(message.options)}
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def manifest_complete(manifest: dict, message: SeriesMessage, fingerprints: list[str] | None = None) -> bool:
    """True when a manifest at the target records this job's series with these parameters (and,
    where the fingerprints are SHA-256 of the sources, with these very sources)."""
    recorded_as = json.loads(json.dumps(build_manifest(message.prefix, [], message.options)["parameters"]))
    if not (manifest.get("series") == message.prefix
            and manifest.get("parameters") == recorded_as
            and manifest.get("counts", {}).get("instances") == len(message.sources)):
        return False
    if fingerprints and all(f.startswith("sha256:") for f in fingerprints):
        recorded = sorted(str(i.get("source_sha256")) for i in manifest.get("instances", []))
        return recorded == sorted(f.removeprefix("sha256:") for f in fingerprints)
    return True
