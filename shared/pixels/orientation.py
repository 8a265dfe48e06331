"""Display geometry of the 8-bit renderings: radiological orientation, square pixels, size limit.

Radiological convention from Image Orientation (Patient) (PS3.3 C.7.6.2.1.1, patient axes LPS):
axial images show patient right on the image's left and anterior up; coronal images patient
right on the left and head up; sagittal images anterior on the left and head up. One of the eight
flips/transposes of the pixel grid gets there (oblique planes: the nearest one). Non-square pixels
(Pixel Spacing, Imager Pixel Spacing or Pixel Aspect Ratio) are resampled to square so anatomy is
not stretched, then ``max_size`` caps the longer side; OpenCV resizes with INTER_AREA where an axis
shrinks and INTER_CUBIC where it grows. Stored-value outputs (tiff, png16, npy) are never touched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pydicom.dataset import Dataset

from ..attributes import has, value_of
from ..errors import InvalidDicomError
from ..runtime import opencv

ORIENTATIONS = ("radiological", "as-stored")
#: aspect ratios within this of 1 count as square (spacing strings are rounded in files)
SQUARE_TOLERANCE = 0.005
#: beyond this a spacing is taken for an error, not a geometry (a 64:1 pixel would be absurd)
MAX_ASPECT = 16.0
_TOL = 0.05  # unit length and orthogonality of the orientation vectors

#: (image right, image down) in LPS for each plane, named by the axis its normal is nearest to
_TARGETS = {
    2: (np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])),  # axial: L to the right, P down
    1: (np.array([1.0, 0.0, 0.0]), np.array([0.0, 0.0, -1.0])),  # coronal: L right, feet down
    0: (np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])),  # sagittal: P right, feet down
}


def _functional(ds: Dataset, sequence: str, keyword: str):
    """``keyword`` from the shared functional groups, else the first frame's (enhanced IODs)."""
    for groups in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        items = value_of(ds, groups)
        if items:
            inner = value_of(items[0], sequence)
            if inner and has(inner[0], keyword):
                return value_of(inner[0], keyword)
    return None


def _floats(value, count: int, tag: str) -> np.ndarray:
    try:
        numbers = np.asarray([float(v) for v in (value if isinstance(value, (list, tuple)) or
                                                 type(value).__name__ == "MultiValue" else [value])])
    except (TypeError, ValueError):
        numbers = np.empty(0)
    if numbers.size != count or not np.all(np.isfinite(numbers)):
        raise InvalidDicomError(f"{tag} {_show(value)} is not {count} numbers")
    return numbers


def _show(value) -> str:
    text = "\\".join(str(v) for v in value) if isinstance(value, (list, tuple)) or \
        type(value).__name__ == "MultiValue" else str(value)
    return f"'{text[:60]}'"


def _raw(value) -> tuple[str, ...] | None:
    """A header value as a hashable tuple of its strings (None when absent or empty)."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return tuple(str(v) for v in value)
    return (str(value),)


def _orientation_value(ds: Dataset) -> tuple[str, ...] | None:
    value = value_of(ds, "ImageOrientationPatient")
    if value is None:
        value = _functional(ds, "PlaneOrientationSequence", "ImageOrientationPatient")
    return _raw(value)


def _spacing_values(ds: Dataset) -> tuple[tuple[str, tuple[str, ...] | None], ...]:
    return (("(0028,0030) Pixel Spacing", _raw(value_of(ds, "PixelSpacing"))),
            ("(0028,0030) Pixel Spacing", _raw(_functional(ds, "PixelMeasuresSequence", "PixelSpacing"))),
            ("(0018,1164) Imager Pixel Spacing", _raw(value_of(ds, "ImagerPixelSpacing"))),
            ("(0028,0034) Pixel Aspect Ratio", _raw(value_of(ds, "PixelAspectRatio"))))


def orientation_vectors(ds: Dataset) -> tuple[np.ndarray, np.ndarray] | None:
    """(row direction, column direction) in LPS from (0020,0037), or None when absent.

    The row direction is where a step to the next column goes; the column direction where a step
    to the next row goes. Raises InvalidDicomError when the value is not two orthonormal vectors.
    """
    return _vectors(_orientation_value(ds))


def _vectors(value: tuple[str, ...] | None) -> tuple[np.ndarray, np.ndarray] | None:
    if value is None:
        return None
    tag = "(0020,0037) Image Orientation (Patient)"
    iop = _floats(value, 6, tag)
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > _TOL or abs(np.linalg.norm(col) - 1) > _TOL or abs(row @ col) > _TOL:
        raise InvalidDicomError(f"{tag} {_show(value)} is not two orthogonal unit vectors "
                                "(use --orientation as-stored)")
    return row / np.linalg.norm(row), col / np.linalg.norm(col)


def pixel_spacing(ds: Dataset, *, aspect: bool = True) -> tuple[float, float] | None:
    """(between rows, between columns) in mm from Pixel Spacing, the functional groups or Imager
    Pixel Spacing — or, with ``aspect``, in proportion only from Pixel Aspect Ratio."""
    return _spacing(_spacing_values(ds)[:None if aspect else -1])


def _spacing(sources: tuple[tuple[str, tuple[str, ...] | None], ...]) -> tuple[float, float] | None:
    for tag, value in sources:
        if value is None:
            continue
        rows, cols = _floats(value, 2, tag)
        if rows <= 0 or cols <= 0:
            raise InvalidDicomError(f"{tag} {_show(value)} must be positive")
        if max(rows, cols) / min(rows, cols) > MAX_ASPECT:
            raise InvalidDicomError(f"{tag} {_show(value)} gives pixels more than {MAX_ASPECT:g} "
                                    "times longer than wide")
        return float(rows), float(cols)
    return None


def frame_origin(ds: Dataset, frame: int | None = None) -> np.ndarray | None:
    """Image Position (Patient) (0020,0032) of a frame (1-based; the frame's Plane Position
    Sequence first), None when absent or malformed."""
    value = None
    groups = ds.get("PerFrameFunctionalGroupsSequence")
    if frame is not None and groups and len(groups) >= frame:
        inner = groups[frame - 1].get("PlanePositionSequence")
        value = inner[0].get("ImagePositionPatient") if inner else None
    if value is None:
        value = ds.get("ImagePositionPatient")
    if value is None:
        value = _functional(ds, "PlanePositionSequence", "ImagePositionPatient")
    if value is None:
        return None
    try:
        return _floats(value, 3, "(0020,0032) Image Position (Patient)")
    except InvalidDicomError:
        return None


def frame_position(ds: Dataset, frame: int | None = None) -> float | None:
    """A frame's position along the slice normal in mm (Image Position · normal), None if unknown."""
    try:
        vectors = orientation_vectors(ds)
    except InvalidDicomError:
        return None
    origin = frame_origin(ds, frame)
    if vectors is None or origin is None:
        return None
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is checked for just below
        position = float(origin @ np.cross(*vectors))
    return round(position, 4) + 0.0 if math.isfinite(position) else None  # finite terms, infinite sum


@dataclass(frozen=True)
class Display:
    """How one instance's frames go from the stored grid to what is shown."""

    transpose: bool = False
    flip_vertical: bool = False
    flip_horizontal: bool = False
    size: tuple[int, int] | None = None  # (rows, columns) shown; None keeps the grid's

    @property
    def identity(self) -> bool:
        return not (self.transpose or self.flip_vertical or self.flip_horizontal or self.size)

    def apply(self, img: np.ndarray) -> np.ndarray:
        """One frame (H×W or H×W×3) as displayed; the input itself when nothing changes."""
        if self.identity:
            return img
        out = img.swapaxes(0, 1) if self.transpose else img
        if self.flip_vertical:
            out = out[::-1]
        if self.flip_horizontal:
            out = out[:, ::-1]
        out = np.ascontiguousarray(out)
        return resize(out, self.size) if self.size else out

    def describe(self) -> dict:
        """For the manifest: the operations, in the order applied."""
        ops = [name for name, on in (("transpose", self.transpose), ("flip-vertical", self.flip_vertical),
                                     ("flip-horizontal", self.flip_horizontal)) if on]
        out: dict = {"operations": ops}
        if self.size:
            out["rows"], out["columns"] = self.size
        return out


def radiological_flips(row: np.ndarray, col: np.ndarray) -> tuple[bool, bool, bool]:
    """(transpose, flip vertical, flip horizontal) that put a plane in radiological convention."""
    normal = np.cross(row, col)
    right, down = _TARGETS[int(np.argmax(np.abs(normal)))]
    transpose = abs(col @ right) + abs(row @ down) > abs(row @ right) + abs(col @ down) + 1e-6
    shown_right, shown_down = (col, row) if transpose else (row, col)
    return bool(transpose), bool(shown_down @ down < 0), bool(shown_right @ right < 0)


def display_size(shape: tuple[int, int], spacing: tuple[float, float] | None,
                 max_size: int | None) -> tuple[int, int]:
    """(rows, columns) with square pixels (the coarser axis upsampled) and the longer side at most
    ``max_size``, keeping the aspect."""
    rows, cols = shape
    height, width = float(rows), float(cols)
    if spacing is not None:
        ratio = spacing[0] / spacing[1]  # a pixel's height over its width
        if abs(ratio - 1) > SQUARE_TOLERANCE:
            if ratio > 1:
                height *= ratio
            else:
                width /= ratio
    if max_size and max(height, width) > max_size:
        scale = max_size / max(height, width)
        height, width = height * scale, width * scale
    return max(1, round(height)), max(1, round(width))


def plan_display(ds: Dataset, shape: tuple[int, int], *, orientation: str = "radiological",
                 max_size: int | None = None) -> Display:
    """The display of frames of ``shape`` (rows, columns) of ``ds`` (cached on the attribute
    values: the slices of a series share it, and this runs once per instance)."""
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
    iop = _orientation_value(ds) if orientation == "radiological" else None
    return _plan(iop, _spacing_values(ds), (int(shape[0]), int(shape[1])), max_size)


@lru_cache(maxsize=256)
def _plan(iop: tuple[str, ...] | None, spacing_values: tuple, shape: tuple[int, int],
          max_size: int | None) -> Display:
    transpose = flip_v = flip_h = False
    vectors = _vectors(iop)
    if vectors is not None:
        transpose, flip_v, flip_h = radiological_flips(*vectors)
    spacing = _spacing(spacing_values)
    shown = (shape[1], shape[0]) if transpose else tuple(shape)
    if transpose and spacing is not None:
        spacing = (spacing[1], spacing[0])
    size = display_size(shown, spacing, max_size)
    return Display(transpose, flip_v, flip_h, None if size == shown else size)


def display(img: np.ndarray, ds: Dataset, *, orientation: str = "radiological",
            max_size: int | None = None) -> np.ndarray:
    """One rendered frame (H×W or H×W×3, uint8) as it is shown: oriented, square, sized."""
    return plan_display(ds, img.shape[:2], orientation=orientation, max_size=max_size).apply(img)


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (rows, columns): INTER_AREA on the axes that shrink, then INTER_CUBIC on those
    that grow (area averaging does not alias when shrinking; cubic is sharper when growing)."""
    rows, cols = img.shape[:2]
    target_rows, target_cols = size
    if (rows, cols) == (target_rows, target_cols):
        return img
    down = (min(rows, target_rows), min(cols, target_cols))
    cv2 = opencv()
    if down != (rows, cols):
        img = cv2.resize(img, (down[1], down[0]), interpolation=cv2.INTER_AREA)
    if down != (target_rows, target_cols):
        img = cv2.resize(img, (target_cols, target_rows), interpolation=cv2.INTER_CUBIC)
    return img
