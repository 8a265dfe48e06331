"""The benchmark's inputs: a synthetic CT series (tests/synthetic.py) and compressed copies of it.

Series are cached under the work directory by their parameters, so a re-run reuses them.
The compressed copies use encoders the project already has: JPEG 2000 lossless through
pylibjpeg-openjpeg and JPEG-LS lossless through pyjpegls (the `bench` extra), via pydicom.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

from tests.synthetic import write_series

#: name → transfer syntax of the compressed copies.
COMPRESSED = {"j2k": JPEG2000Lossless, "jls": JPEGLSLossless}


def _stamp_path(path: Path) -> Path:
    """The parameters a series was made with, kept beside it (the series folder holds only DICOM)."""
    return path.with_name(path.name + ".json")


def _cached(path: Path, params: dict) -> bool:
    stamp = _stamp_path(path)
    return path.is_dir() and stamp.is_file() and json.loads(stamp.read_text()) == params


def _stamp(path: Path, params: dict) -> None:
    _stamp_path(path).write_text(json.dumps(params, sort_keys=True))


def files(path: str | Path) -> list[str]:
    """The series' DICOM files, in name order."""
    return sorted(str(p) for p in Path(path).iterdir())


def warm(path: str | Path) -> int:
    """Read every file of a series once, so that the first contender to read it does not pay
    the disk for the others (the page cache may have dropped a series made or read long ago).
    The bytes read."""
    return sum(len(Path(f).read_bytes()) for f in files(path))


def series(workdir: str | Path, slices: int, size: int = 512, seed: int = 0) -> Path:
    """An uncompressed CT series of ``slices`` slices (made once, then reused)."""
    path = Path(workdir) / f"ct{slices}x{size}"
    params = {"slices": slices, "size": size, "seed": seed, "kind": "explicit-le"}
    if not _cached(path, params):
        shutil.rmtree(path, ignore_errors=True)
        write_series(path, slices, size, seed)
        _stamp(path, params)
    return path


def compressed_copy(src: str | Path, kind: str) -> Path:
    """The series re-encoded losslessly with transfer syntax ``COMPRESSED[kind]``; raises
    RuntimeError with the reason when the encoder is not installed."""
    from pydicom.pixels.encoders.base import get_encoder

    syntax = COMPRESSED[kind]
    encoder = get_encoder(syntax)
    if not encoder.is_available:
        missing = "; ".join(encoder.missing_dependencies) or "no plugin"
        raise RuntimeError(f"no {syntax.name} encoder ({missing})")
    src = Path(src)
    dst = src.with_name(f"{src.name}-{kind}")
    params = {"source": json.loads(_stamp_path(src).read_text()), "syntax": str(syntax)}
    if _cached(dst, params):
        return dst
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    for path in files(src):
        ds = dcmread(path)
        ds.compress(syntax)
        ds.save_as(dst / os.path.basename(path), enforce_file_format=True)
    _stamp(dst, params)
    return dst
