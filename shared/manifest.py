"""The per-series manifest: what was done, with hashes; written last as the commit marker.

Deterministic: no timestamps or host names, so a re-run writes the same bytes to the same key.
"""
from __future__ import annotations

import io
import json

from . import __version__
from .options import ConvertOptions

SCHEMA = 1
#: Record fields that vary run to run (timings): kept out so manifests are byte-identical.
VOLATILE = frozenset({"seconds", "stages"})


_CANONICAL = json.JSONEncoder(indent=2, sort_keys=True)  # json.dumps's own settings, made once


def manifest_bytes(manifest: dict) -> bytes:
    """Canonical JSON (sorted keys, fixed indent): the same manifest is always the same bytes,
    those of ``json.dumps(manifest, indent=2, sort_keys=True)`` and a newline.

    Each top-level value, and each item of a top-level list (an instance's record), is encoded
    on its own and indented into place. json's indenting encoder is pure Python: over a whole
    series ``json.dumps`` lists every small piece of the text before joining them (~60 strings
    an instance, the largest allocation of a 1000-slice run) and ``json.dump`` to a stream
    writes them one by one (19 ms for 200 instances on the bench machine, where this takes
    10.5); item by item, neither cost grows with the series (tests/test_manifest.py pins the
    bytes)."""
    out = io.BytesIO()
    out.write(b"{")
    for n, key in enumerate(sorted(manifest)):
        value = manifest[key]
        out.write(f"{',' if n else ''}\n  {json.dumps(key)}: ".encode())
        if isinstance(value, list) and value:
            for i, item in enumerate(value):
                out.write(b",\n    " if i else b"[\n    ")
                out.write(_indented(item, "\n    "))
            out.write(b"\n  ]")
        else:
            out.write(_indented(value, "\n  "))
    out.write(b"\n}\n" if manifest else b"}\n")
    return out.getvalue()


def _indented(value, newline: str) -> bytes:
    """``value`` as canonical JSON whose lines after the first start with ``newline``'s indent
    (a newline inside a JSON string is always escaped: every newline of the text is structure)."""
    return _CANONICAL.encode(value).replace("\n", newline).encode()


def without_timings(record: dict) -> dict:
    """The record as a manifest lists it: its run-to-run timings left out (they only feed metrics),
    so that a series' records held until its manifest carry nothing more."""
    return {k: v for k, v in record.items() if k not in VOLATILE}


def _deidentification(opts: ConvertOptions) -> dict | None:
    """The record of the de-identification used; its module loads only when it was on."""
    if not opts.deid:
        return None
    from .deid import manifest_entry

    return manifest_entry(opts)


def manifest_key(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/manifest.json"


def recorded_parameters(opts: ConvertOptions) -> dict:
    """The options as manifests and failure records keep them: the pseudonym map's file name is
    the user's choice and may say anything, so only its use is recorded (`deidentification`)."""
    return {k: v for k, v in opts.to_json().items() if k != "pseudonym_map"}


def build_manifest(prefix: str, records: list[dict], opts: ConvertOptions,
                   series: tuple[list[dict], list[dict]] | None = None) -> dict:
    """``series``: the series outputs and their errors (shared/series.py), when any were asked for."""
    records = sorted(records, key=lambda r: r["index"])
    instances = [without_timings(r) for r in records]
    failures = [{"index": r["index"], "source_sha256": r["source_sha256"], **r["error"]}
                for r in records if r["error"]]
    below = sum(1 for r in records for o in r["outputs"]
                if isinstance(o["verification"], dict) and "below_threshold" in o["verification"])
    manifest = {
        "schema": SCHEMA,
        "software": {"name": "dicomfleet", "version": __version__},
        "series": prefix,
        "parameters": recorded_parameters(opts),
        "deidentified": opts.deid,
        "deidentification": _deidentification(opts),
        "counts": {
            "instances": len(records),
            "converted": sum(1 for r in records if not r["error"]),
            "failed": len(failures),
            "outputs": sum(len(r["outputs"]) for r in records),
        },
        "instances": instances,
        "errors": failures,
    }
    if any(f.value == "jpeg" for f in opts.formats):  # lossy outputs under the SSIM floor
        manifest["below_ssim_threshold"] = below
    if series is not None:  # once per series: report, stacks, QA sheets (and their failures)
        manifest["series_outputs"], manifest["series_errors"] = series
        manifest["counts"]["series_outputs"] = len(series[0])
        manifest["counts"]["series_failed"] = len(series[1])
    return manifest
