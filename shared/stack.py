"""``--series-stack``: one volume per series instead of one file per instance.

``tiff``: one multi-page TIFF of the stored values (bit-exact, signed stays signed), a page per
slice in the series' order (along the slice normal, as the output numbers), resolution from Pixel
Spacing. ``npy``: one ``(slices, rows, columns)`` float32 volume of modality values plus a JSON
sidecar with spacing, origin and direction, what an ML pipeline needs to resample. Both are
written streaming — one instance in memory at a time, pages appended by tifffile or slots of
``np.lib.format.open_memmap`` filled on a temp file — then handed to the store.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator

import numpy as np
from pydicom.dataset import Dataset

from .errors import InvalidDicomError
from .pixels import apply_modality_lut
from .pixels.orientation import frame_origin, frame_position, orientation_vectors, pixel_spacing
from .pixels.render import is_colour

#: (index, frame or None, dataset, that frame's pixels) for every slice of the series, in order
Slices = Callable[[], Iterator[tuple[int, int | None, Dataset, np.ndarray]]]


def _check(first: tuple, index: int, frame: np.ndarray, shape: tuple, dtype: np.dtype) -> None:
    if frame.shape != shape or frame.dtype != dtype:
        raise InvalidDicomError(
            f"--series-stack needs one pixel layout: output {index:04d} is {frame.dtype}"
            f"{list(frame.shape)}, output {first[0]:04d} is {dtype}{list(shape)}")


def _orientation_of(ds: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """The slice's row and column directions, None when absent or unusable (no geometry then)."""
    try:
        return orientation_vectors(ds)
    except InvalidDicomError:
        return None


def _check_orientation(first_ds: Dataset, first_index: int, ds: Dataset, index: int) -> None:
    """A volume's sidecar gives one direction for every slice: a slice of another orientation (a
    scout among axial slices) would be placed and measured along the wrong normal. A slice whose
    orientation is absent or unusable has no position; it is stacked, and no direction is wrong."""
    if ds is first_ds:
        return
    ours, theirs = _orientation_of(ds), _orientation_of(first_ds)
    if ours is not None and theirs is not None and not np.allclose(
            np.concatenate(ours), np.concatenate(theirs), atol=1e-4):
        raise InvalidDicomError(
            f"--series-stack needs one orientation: output {index:04d}'s (0020,0037) Image Orientation "
            f"(Patient) differs from output {first_index:04d}'s")


def _spooled(write: Callable[[str], None]) -> bytes:
    """Run ``write(path)`` on a temp file and return its bytes (the store takes bytes)."""
    with tempfile.TemporaryDirectory(prefix="dicomfleet-stack-") as tmp:
        path = os.path.join(tmp, "stack")
        write(path)
        with open(path, "rb") as fh:
            return fh.read()


def tiff_stack(slices: Slices, tags_of: Callable[[Dataset], list[tuple]]) -> tuple[bytes, int]:
    """The stored values as one multi-page TIFF and its page count; ``tags_of(first dataset)``
    gives the first page's extra tags (the whitelisted metadata)."""
    import tifffile

    from .encode import SOFTWARE

    pages = 0

    def write(path: str) -> None:
        nonlocal pages
        first: tuple | None = None
        with tifffile.TiffWriter(path, bigtiff=False) as tif:
            for index, _, ds, frame in slices():
                if first is None:
                    first, shape, dtype = (index,), frame.shape, frame.dtype
                    spacing = pixel_spacing(ds, aspect=False)
                    rgb = is_colour(ds) and frame.ndim == 3
                    tags = tags_of(ds)
                _check(first, index, frame, shape, dtype)
                extra = {"resolution": (10.0 / spacing[1], 10.0 / spacing[0]), "resolutionunit": "CENTIMETER"} \
                    if spacing else {}
                tif.write(frame, photometric="rgb" if rgb else "minisblack", software=SOFTWARE,
                          metadata=None, contiguous=True, extratags=tags if pages == 0 else (), **extra)
                pages += 1
        if first is None:
            raise InvalidDicomError("no converted instance to stack")

    return _spooled(write), pages


def npy_stack(slices: Slices, count: int) -> tuple[bytes, dict]:
    """Modality values (RGB stays uint8) as one volume of ``count`` slices and its sidecar."""
    sidecar: dict = {}

    def write(path: str) -> None:
        volume, first_ds, geometry = None, None, []
        for n, (index, frame_no, ds, frame) in enumerate(slices()):
            values = frame if is_colour(ds) else np.asarray(apply_modality_lut(frame, ds), dtype=np.float32)
            if volume is None:
                first, first_ds, dtype, shape = (index,), ds, values.dtype, values.shape
                volume = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(count, *shape))
            _check(first, index, values, shape, dtype)
            _check_orientation(first_ds, first[0], ds, index)
            volume[n] = values
            geometry.append({"index": index, "frame": frame_no, "position": frame_position(ds, frame_no)})
        if volume is None:
            raise InvalidDicomError("no converted instance to stack")
        volume.flush()
        del volume
        sidecar.update(volume_geometry(first_ds, geometry), shape=[count, *shape], dtype=str(dtype))

    return _spooled(write), sidecar


def volume_geometry(first: Dataset, slices: list[dict]) -> dict:
    """The sidecar's geometry: axes in array order (slice, row, column), their spacing in mm,
    the first slice's origin and each axis' direction (LPS unit vectors)."""
    positions = [s["position"] for s in slices]
    steps = np.diff(positions) if len(positions) > 1 and None not in positions else np.empty(0)
    spacing = pixel_spacing(first, aspect=False)
    vectors = _orientation_of(first)
    origin = frame_origin(first, slices[0]["frame"])
    direction = None
    if vectors is not None:
        row, col = vectors
        direction = [[round(float(v), 6) + 0.0 for v in axis] for axis in (np.cross(row, col), col, row)]
    return {
        "axes": ["slice", "row", "column"],
        "values": "modality values (Rescale Slope/Intercept or Modality LUT applied, e.g. HU)",
        "coordinates": "DICOM patient coordinates (LPS), mm",
        "spacing": [round(float(np.median(steps)), 6) if steps.size else None,
                    *(spacing if spacing else (None, None))],
        "regular": bool(steps.size) and bool(np.allclose(steps, np.median(steps), rtol=1e-3, atol=1e-3)),
        "origin": [round(float(v), 6) for v in origin] if origin is not None else None,
        "direction": direction,
        "slices": slices,
    }


def sidecar_bytes(sidecar: dict) -> bytes:
    return (json.dumps(sidecar, indent=2, sort_keys=True) + "\n").encode()
