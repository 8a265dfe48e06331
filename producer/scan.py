"""Find DICOM instances under the given sources (headers only), group them into series and
order each series along the slice normal, so output numbers follow anatomy, not file names."""
from __future__ import annotations

import hashlib
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import partial

from shared.attributes import is_image_class, is_uid_text
from shared.dataset import header_values
from shared.errors import DicomfleetError, InvalidDicomError, NoPixelDataError, NotDicomError, StorageError
from shared.options import DEFAULT_MAX_PIXELS
from shared.store import is_s3, iter_sources, open_source


@dataclass(frozen=True)
class Instance:
    """What scanning learns of one file: enough to group, order and name, no pixel data."""

    source: str
    study_uid: str
    series_uid: str
    sop_uid: str
    instance_number: int | None
    position: float | None  # ImagePositionPatient · slice normal, in mm


@dataclass
class Series:
    study_uid: str
    series_uid: str
    instances: list[Instance] = field(default_factory=list)


@dataclass
class ScanResult:
    series: list[Series]
    skipped: Counter  # reason → count (no paths: they may hold PHI); keys are SkipReasons


class SkipReason(str):
    """The one-line reason a file is skipped, carrying the error code it maps to (a metrics label)."""

    code: str

    def __new__(cls, reason: str, code: str) -> "SkipReason":
        self = super().__new__(cls, reason)
        self.code = code
        return self

    def __reduce__(self):  # crosses process pools (scan's map_fn) with its code
        return SkipReason, (str(self), self.code)


def _listed(path: str) -> bool:
    """A regular file, or a link that leads nowhere (a dangling or looping one, which the scan then
    skips as unreadable, with its reason); not a FIFO, socket or device, whose read would wait
    for a writer or never end."""
    return os.path.isfile(path) or (os.path.islink(path) and not os.path.exists(path))


def iter_files(sources: Iterable[str]) -> Iterator[str]:
    """Every regular file (or S3 object under an ``s3://`` prefix) in the sources, in a stable
    order; FIFOs, sockets and devices are passed over. FileNotFoundError for a source that is not
    there at all."""
    for src in sources:
        if is_s3(src):
            yield from iter_sources(src)
        elif os.path.isdir(src):
            for root, dirs, files in os.walk(src):
                dirs.sort()
                for name in sorted(files):
                    if _listed(path := os.path.join(root, name)):
                        yield path
        elif _listed(src):
            yield src
        elif not os.path.exists(src):
            raise FileNotFoundError(src)


def _slice_position(values: dict) -> float | None:
    """Image Position · the slice normal (row × column direction), None when either is missing,
    malformed or the directions are (near) parallel. Plain floats: numpy's cross product of two
    3-vectors costs ~50 µs, a sixth of reading the header."""
    try:
        iop = [float(v) for v in values["ImageOrientationPatient"]]
        ipp = [float(v) for v in values["ImagePositionPatient"]]
    except (KeyError, TypeError, ValueError):
        return None
    if len(iop) != 6 or len(ipp) != 3:
        return None
    r1, r2, r3, c1, c2, c3 = iop
    normal = (r2 * c3 - r3 * c2, r3 * c1 - r1 * c3, r1 * c2 - r2 * c1)
    if not math.hypot(*normal) > 0.5:  # NaN included
        return None
    return ipp[0] * normal[0] + ipp[1] * normal[1] + ipp[2] * normal[2]


def _instance_number(values: dict) -> int | None:
    try:
        return int(values["InstanceNumber"])
    except (KeyError, TypeError, ValueError):
        return None


def _derived_uid(*parts: str) -> str:
    """A stable UID for files that lack one (2.25 form), derived without exposing the parts."""
    digest = hashlib.sha256("\0".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def path_uid(uid: str) -> str:
    """``uid`` as an output directory's name: itself when it is a UID of at most 64 characters,
    else a UID derived from it (2.25 form). A file's Study or Series Instance UID may hold any
    text — a name, a date, ``../`` — and none of it may reach a path or a manifest."""
    if is_uid_text(uid):
        return uid
    return _derived_uid("uid", uid)


NOT_DICOM = SkipReason("not DICOM", NotDicomError.code)
CORRUPT_IMAGE = SkipReason("a DICOM image whose (0028,0010) Rows cannot be read: its header is cut or corrupt",
                           InvalidDicomError.code)
#: skipped for what they are, not for a fault: other files among the images, documents (SR)
_NOT_IMAGES = frozenset({NotDicomError.code, NoPixelDataError.code})


def unreadable(skipped: Counter) -> int:
    """Files skipped for a fault — a DICOM image or header that could not be read — rather than
    for not being images: a run that skipped any did not convert everything (exit status 1)."""
    return sum(count for reason, count in skipped.items() if getattr(reason, "code", None) not in _NOT_IMAGES)
#: What the scan reads of every file: an image or not, its UIDs, its place in the series.
SCAN_KEYWORDS = ("Rows", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                 "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient")


def read_instance(path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Instance | SkipReason:
    """An Instance, or a one-line reason why the file is skipped."""
    try:
        with open_source(path) as fh:
            values = header_values(fh, max_pixels=max_pixels, keywords=SCAN_KEYWORDS)
    except StorageError:
        raise  # S3 unreachable is not a property of the file: the scan fails, nothing is skipped
    except DicomfleetError as err:  # e.g. a deflate bomb: its one-line reason (no path, no PHI)
        return NOT_DICOM if err.code == NotDicomError.code else SkipReason(str(err), err.code)
    except OSError as err:
        return SkipReason(f"unreadable ({err.strerror})", "unreadable")
    if "Rows" not in values:
        sop_class = values.get("SOPClassUID") or values.get("MediaStorageSOPClassUID")
        if not sop_class:  # a DICM marker over garbage parses to nothing usable: not DICOM either
            return NOT_DICOM
        if is_image_class(sop_class):  # an image class, yet no image
            return CORRUPT_IMAGE  # header: cut short, or a corrupt length threw the parser off
        return SkipReason("DICOM without an image (e.g. SR, RT plan)", NoPixelDataError.code)
    study = str(values.get("StudyInstanceUID") or "") or _derived_uid("study", path)
    series = str(values.get("SeriesInstanceUID") or "") or _derived_uid("series", path)
    sop = str(values.get("SOPInstanceUID") or "") or _derived_uid("sop", path)
    return Instance(path, study, series, sop, _instance_number(values), _slice_position(values))


def order_instances(instances: list[Instance]) -> list[Instance]:
    """Spatial order along the slice normal when every instance has a position, else by
    InstanceNumber; ties and gaps fall back to the SOP Instance UID for stability."""
    if instances and all(i.position is not None for i in instances):
        return sorted(instances, key=lambda i: (i.position, i.instance_number or 0, i.sop_uid, i.source))
    return sorted(instances, key=lambda i: (i.instance_number is None, i.instance_number or 0, i.sop_uid, i.source))


def _identity(path: str) -> str | tuple[int, int]:
    """What makes two names one file: its device and inode (symlinks, a directory given twice or
    inside another); the name itself for S3 objects and for what cannot be stat'ed (it is read,
    and skipped with its reason, like any other)."""
    if is_s3(path):
        return path
    try:
        st = os.stat(path)
    except OSError:
        return path
    return st.st_dev, st.st_ino


def unique_files(sources: Iterable[str]) -> list[str]:
    """`iter_files` without the same file named twice (overlapping sources, symlinks)."""
    seen: set[str | tuple[int, int]] = set()
    files = []
    for path in iter_files(sources):
        identity = _identity(path)
        if identity not in seen:
            seen.add(identity)
            files.append(path)
    return files


def scan(sources: Iterable[str], *, on_file: Callable[[], None] | None = None,
         max_pixels: int = DEFAULT_MAX_PIXELS,
         map_fn: Callable[[Callable, list], Iterable] = map) -> ScanResult:
    """Read headers under the sources; one Series per (study, series), instances in order.
    ``map_fn``: how headers are read, e.g. over a process pool (results in file order)."""
    groups: dict[tuple[str, str], list[Instance]] = defaultdict(list)
    skipped: Counter = Counter()
    for found in map_fn(partial(read_instance, max_pixels=max_pixels), unique_files(sources)):
        if on_file:
            on_file()
        if isinstance(found, str):
            skipped[found] += 1
            continue
        groups[(found.study_uid, found.series_uid)].append(found)
    series = [Series(study, ser, order_instances(members))
              for (study, ser), members in sorted(groups.items())]
    return ScanResult(series, skipped)
