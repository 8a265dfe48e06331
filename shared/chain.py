"""The conversion chain for one instance and for one series (DESIGN.md, "The chain").

`convert_dataset` is pure (dataset in, encoded outputs out). `convert_instance` adds the I/O edges
(read the source, write outputs) and returns a JSON record; `convert_chunk` does so for several
instances, writing behind the conversion; `convert_series` maps it over a series with any ``map``
(inline, a process pool, a Celery worker) and writes the manifest last.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, wait
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from .attributes import value_of
from .dataset import decode_pixels, read_dataset, source_limit
from . import digest
from . import deid as deidentification  # light: the step itself loads on first use
from .deid.burned_in import Region, mask_regions
from .encode import encode_jpeg, encode_npy, encode_png, encode_tiff, to_png16
from .errors import PixelBudgetError, Transient, failure
from .manifest import build_manifest, manifest_bytes, manifest_key, without_timings
from .metadata import embedded_fields, jpeg_with_metadata, png_chunks, tiff_tags
from .options import DEFAULT_MAX_PIXELS, ConvertOptions, Format
from .pixels import apply_modality_lut, render_8bit
from .pixels.orientation import Display, plan_display
from .pixels.render import is_colour
from .pixels.voi import Window
from .runtime import tune_process
from .store import Store, open_store, read_source
from .timing import StageClock
from .verify import verify_lossless, verify_lossy

tune_process()  # malloc and OpenCV threads set for one instance after another (shared/runtime.py)


@dataclass
class Output:
    """One encoded file, before it is written."""

    format: Format
    data: bytes
    frame: int | None = None
    verification: str | dict = "lossless"
    extra: dict = field(default_factory=dict)

    def name(self, index: int) -> str:
        frame = f"_f{self.frame:03d}" if self.frame is not None else ""
        return f"{index:04d}{frame}.{self.format.extension}"


def _frames(arr: np.ndarray, ds: Dataset) -> list[np.ndarray]:
    """Split a decoded instance into frames (pydicom puts frames first when NumberOfFrames > 1)."""
    nframes = int(value_of(ds, "NumberOfFrames", 1) or 1)
    return list(arr) if nframes > 1 else [arr]


def display_frames(arr: np.ndarray, ds: Dataset, opts: ConvertOptions) -> tuple[list[np.ndarray], Window | None, Display]:
    """The 8-bit frames as shown (rendered, oriented, square pixels, sized), the window used and
    the display geometry: what PNG, JPEG, the PDF report and the QA sheets all show."""
    img_all, window = render_8bit(arr, ds, window=opts.window_spec)
    frames = _frames(img_all, ds)
    plan = plan_display(ds, frames[0].shape[:2], orientation=opts.orientation, max_size=opts.max_size)
    if plan.size is not None:  # square pixels may grow an axis up to MAX_ASPECT times: budgeted too
        shown = len(frames) * plan.size[0] * plan.size[1] * (frames[0].shape[2] if frames[0].ndim == 3 else 1)
        if shown > opts.max_pixels:
            raise PixelBudgetError(
                f"the display of {plan.size[0]} × {plan.size[1]} (square pixels) × {len(frames)} frame(s) "
                f"exceeds the pixel budget of {opts.max_pixels} (DICOMFLEET_MAX_PIXELS; or use --max-size)")
    return [plan.apply(f) for f in frames], window, plan


def convert_dataset(ds: Dataset, opts: ConvertOptions, clock: StageClock | None = None,
                    *, mask: tuple[Region, ...] = ()) -> tuple[list[Output], dict]:
    """Decode, render, encode and verify every requested output of one instance (no I/O).

    ``mask``: regions to black out in every frame (burned-in text), decided by de-identification.
    """
    clock = clock or StageClock()
    with clock.stage("decode"):
        arr = decode_pixels(ds, max_pixels=opts.max_pixels)
        if mask:
            arr = mask_regions(arr, ds, regions=mask)
    frames = _frames(arr, ds)
    multi = len(frames) > 1
    colour = is_colour(ds)
    info: dict = {"frames": len(frames), "rows": int(value_of(ds, "Rows")), "columns": int(value_of(ds, "Columns")),
                  "photometric": str(value_of(ds, "PhotometricInterpretation", ""))}
    outputs: list[Output] = []
    wanted = set(opts.formats)
    if Format.PNG16 in wanted and (arr.dtype.kind not in "iu" or arr.dtype.itemsize > 2):
        wanted.discard(Format.PNG16)  # the other formats still get made: nothing is lost
        info["format_errors"] = [{"format": "png16", "reason":
                                  f"holds integers of at most 16 bits; these pixels are "
                                  f"{arr.dtype.name} (use --format tiff or npy)"}]
    if opts.series_stack:
        wanted -= {Format.TIFF, Format.NPY}  # one per series instead (shared/stack.py)
    fields = embedded_fields(ds, opts)  # the whitelisted metadata (shared/metadata.py)
    rendered: list[np.ndarray] = []
    # the PDF report shows a few slices later, per series: each instance's display is made here
    # too, so that one that cannot be shown fails with its own reason, not the series' report
    if wanted & {Format.PNG, Format.JPEG, Format.PDF}:
        with clock.stage("render"):  # the whole instance at once: one window for all its frames
            rendered, window, plan = display_frames(arr, ds, opts)
        if window is not None:
            info["window"] = window.describe()
        if not plan.identity:
            info["display"] = plan.describe()
    for number, frame in enumerate(frames, start=1):
        tag = number if multi else None
        if rendered:
            img = rendered[number - 1]
            if Format.PNG in wanted:
                with clock.stage("encode"):
                    buf = encode_png(img, chunks=png_chunks(fields))
                with clock.stage("verify"):
                    outputs.append(Output(Format.PNG, buf, tag, verify_lossless("png", buf, img)))
            if Format.JPEG in wanted:
                with clock.stage("encode"):
                    buf = jpeg_with_metadata(encode_jpeg(img, opts.quality), fields)
                with clock.stage("verify"):
                    score = verify_lossy(buf, img)
                    check = {"ssim": score} if score >= opts.ssim_threshold else \
                        {"ssim": score, "below_threshold": opts.ssim_threshold}
                    outputs.append(Output(Format.JPEG, buf, tag, check))
        if Format.PNG16 in wanted:
            with clock.stage("encode"):
                u16, offset = to_png16(frame)
                buf = encode_png(u16, {"dicomfleet:offset": str(offset)}, png_chunks(fields))
            with clock.stage("verify"):
                outputs.append(Output(Format.PNG16, buf, tag, verify_lossless("png16", buf, u16),
                                      {"offset": offset}))
    if Format.TIFF in wanted:
        with clock.stage("encode"):
            buf = encode_tiff(arr, rgb=colour and arr.shape[-1] == 3, tags=tiff_tags(fields))
        with clock.stage("verify"):
            outputs.append(Output(Format.TIFF, buf, None, verify_lossless("tiff", buf, arr)))
    if Format.NPY in wanted:
        with clock.stage("encode"):
            values = arr if colour else np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
            buf = encode_npy(values)
        with clock.stage("verify"):
            outputs.append(Output(Format.NPY, buf, None, verify_lossless("npy", buf, values)))
    return outputs, info


def instance_task(source: str, index: int, prefix: str, dest: str, options: dict) -> dict:
    """The JSON unit of work for one instance: what a pool or a worker needs, and no PHI."""
    return {"source": source, "index": index, "prefix": prefix, "dest": dest, "options": options}


def convert_instance(task: dict) -> dict:
    """Read one source, convert it, write its outputs; return its manifest record.

    Permanent input errors become a recorded failure; transient storage errors propagate so the
    caller (pool or Celery task) can retry the series.
    """
    return convert_chunk([task])[0]


def convert_chunk(tasks: list[dict]) -> list[dict]:
    """`convert_instance` for several instances in order, each one's outputs uploading while the
    next converts (`Store.write_behind`); the records come back once every output is durable, so
    a record never lists an output the store does not hold. The unit a pool process runs.

    Sources are read a group at a time (`fetch_groups`) so that their SHA-256s, and then their
    outputs', are computed together (`digest.sha256_many`).
    Every upload of the chunk has ended when this returns or raises: none is left to land later.
    """
    started: list[_Started] = []
    try:
        for group in fetch_groups(tasks):
            for task, source in group:
                started.append(_start_instance(task, source))
            _hash_outputs(started[-len(group):])
    finally:
        waiting = time.perf_counter()
        wait([pending for one in started for _, pending in one.writes])
    waited = time.perf_counter() - waiting
    if started and started[-1].writes:  # the wait for the last uploads is the last instance's store time
        last = started[-1].record
        last["stages"]["store"] = round(last["stages"].get("store", 0.0) + waited, 6)
        last["seconds"] = round(last["seconds"] + waited, 4)
    return [_settle(one.record, one.writes) for one in started]


@dataclass
class Fetched:
    """One source as read: its bytes and SHA-256, or why it could not be read."""

    data: bytes | None = None
    sha256: str | None = None
    seconds: float = 0.0
    error: Exception | None = None


def fetch_groups(tasks: list[dict]) -> Iterator[list[tuple[dict, Fetched]]]:
    """The tasks with their sources read and hashed, in groups of up to `digest.lanes` tasks and
    `digest.BATCH_BYTES` (one task a group where hashlib hashes one message at a time anyway).

    A transient storage fault propagates (the series is retried); any other failure to read is
    that instance's, recorded when it starts."""
    width = digest.lanes()
    group: list[tuple[dict, Fetched]] = []
    held = 0
    for i, task in enumerate(tasks):
        source = Fetched()
        started = time.perf_counter()
        try:
            budget = task["options"].get("max_pixels", DEFAULT_MAX_PIXELS)
            source.data = read_source(task["source"], source_limit(budget))
            held += len(source.data)
        except Transient:
            raise
        except Exception as err:
            source.error = err
        source.seconds = time.perf_counter() - started
        group.append((task, source))
        if len(group) == width or held >= digest.BATCH_BYTES or i == len(tasks) - 1:
            _hash_sources([s for _, s in group])
            yield group
            group, held = [], 0


def _hash_sources(sources: list[Fetched]) -> None:
    """Each read source's SHA-256, computed together; the time shared out as fetch time."""
    read = [s for s in sources if s.data is not None]
    started = time.perf_counter()
    for source, hexdigest in zip(read, digest.sha256_many([s.data for s in read])):
        source.sha256 = hexdigest
    share = (time.perf_counter() - started) / max(1, len(read))
    for source in read:
        source.seconds += share


@dataclass
class _Started:
    """An instance converted and writing: its record, each output's entry with its pending write,
    and the outputs whose SHA-256 the group computes next (`_hash_outputs`)."""

    record: dict
    writes: list[tuple[dict, Future]]
    unhashed: list[tuple[dict, bytes]]


def _hash_outputs(group: list[_Started]) -> None:
    """The SHA-256 of every output of a group, computed together and counted as verify time."""
    entries = [(one, entry, data) for one in group for entry, data in one.unhashed]
    started = time.perf_counter()
    digests = digest.sha256_many([data for _, _, data in entries])
    share = (time.perf_counter() - started) / max(1, len(entries))
    for (one, entry, _), hexdigest in zip(entries, digests):
        entry["sha256"] = hexdigest
        stages = one.record["stages"]
        stages["verify"] = round(stages.get("verify", 0.0) + share, 6)
        one.record["seconds"] = round(one.record["seconds"] + share, 4)
    for one in group:
        one.unhashed = []


def _start_instance(task: dict, source: Fetched) -> _Started:
    """Convert one read source and start writing its outputs."""
    opts = ConvertOptions.from_json(task["options"])
    store = open_store(task["dest"])
    index, prefix = int(task["index"]), task["prefix"].rstrip("/")
    record: dict = {"index": index, "source_sha256": source.sha256, "outputs": [], "error": None}
    one = _Started(record, [], [])
    clock = StageClock()
    clock.seconds["fetch"] = source.seconds
    started = time.perf_counter() - source.seconds
    try:
        if source.error is not None:
            raise source.error
        record["source_bytes"] = len(source.data)  # the manifest and the bytes-in metric
        with clock.stage("parse"):
            ds = read_dataset(source.data, max_pixels=opts.max_pixels)
        source.data = None  # the dataset holds what it needs
        mask: tuple[Region, ...] = ()
        if opts.deid:
            with clock.stage("deid"):
                deid = deidentification.deidentify(ds, opts)
            mask = deid.mask
            if deid.masked_reason:
                record["masked"] = deid.masked_reason
        outputs, info = convert_dataset(ds, opts, clock, mask=mask)
        format_errors = info.pop("format_errors", None)
        record.update(info)
        if format_errors:
            record["error"] = {"code": "unsupported",
                               "reason": "; ".join(f"{e['format']}: {e['reason']}" for e in format_errors)}
        for out in outputs:
            key = f"{prefix}/{out.name(index)}"
            with clock.stage("store"):  # blocks only while the uploads in flight are at their bound
                pending = store.write_behind(key, out.data)
            entry = {"path": key, "format": out.format.value, "sha256": None,
                     "size": len(out.data), "frame": out.frame, "verification": out.verification}
            entry.update(out.extra)
            one.writes.append((entry, pending))
            one.unhashed.append((entry, out.data))
    except Transient:
        wait([pending for _, pending in one.writes])
        raise
    except Exception as err:  # bad input, or a bug of ours: costs one instance, never the series
        record["error"] = failure(err)
    record["seconds"] = round(time.perf_counter() - started, 4)
    record["stages"] = clock.rounded()
    return one


def _settle(record: dict, writes: list[tuple[dict, Future]]) -> dict:
    """List the outputs whose writes completed, in order. A transient fault propagates (the series
    is retried); any other stops the listing and fails the instance with its reason."""
    for entry, pending in writes:
        try:
            pending.result()
        except Transient:
            raise
        except Exception as err:
            record["error"] = failure(err)
            break
        record["outputs"].append(entry)
    return record


#: Instances a pool task holds at most. A task costs the parent ~0.5 ms of CPU (pickling it,
#: receiving its records, the executor's threads), taken from the processes converting on the
#: same cores: tasks of 8 cost a 1000-slice run on 2 vCPUs 70–100 ms of the parent's CPU, tasks
#: of 32 about 55. The shrinking tail of `chunked` keeps the processes finishing together, and
#: 32 slices are ~50 ms of a png run: the progress bar still moves several times a second.
MAX_CHUNK = 32


def chunk_size(items: int, processes: int) -> int:
    """Instances per pool task: at least four tasks per process, at most `MAX_CHUNK` instances;
    a chunk also amortises the wait for its last uploads."""
    return max(1, min(MAX_CHUNK, items // (4 * max(1, processes))))


def chunked(items: list, processes: int) -> list[list]:
    """``items`` in pool tasks of `chunk_size`, shrinking towards the end when several processes
    share them (guided scheduling: each chunk at most 1/(2·processes) of what is left), so the
    processes finish together. Equal chunks of 25 leave 200 instances on 2 processes ending
    with one process 25 instances (12% of the series) behind the other."""
    size = chunk_size(len(items), processes)
    chunks, start = [], 0
    while start < len(items):
        left = len(items) - start
        step = size if processes <= 1 else max(1, min(size, -(-left // (2 * processes))))
        chunks.append(items[start:start + step])
        start += step
    return chunks


@dataclass
class SeriesJob:
    """One series: its output prefix (pseudonymous study/series) and its instances in order."""

    prefix: str
    sources: list[str]
    dest: str
    options: ConvertOptions

    def tasks(self) -> list[dict]:
        opts = self.options.to_json()
        return [instance_task(src, i, self.prefix, self.dest, opts)
                for i, src in enumerate(self.sources, start=1)]


def convert_series(job: SeriesJob, *, map_fn: Callable[[Callable, Iterable], Iterator] = map,
                   on_record: Callable[[dict], None] | None = None, processes: int = 1) -> dict:
    """Convert every instance, then write the manifest last (the series' commit marker).

    ``map_fn`` maps `convert_chunk` over chunks of instances (sized for ``processes``), one chunk
    per call: each chunk's outputs are durable when its records come back, so the manifest written
    after the last one only lists what the store holds. An earlier run's manifest is removed
    first: a run stopped while it rewrites the outputs leaves no manifest that no longer
    describes them (other options, another window).
    """
    store: Store = open_store(job.dest)
    store.delete(manifest_key(job.prefix))
    records = []
    for chunk in map_fn(convert_chunk, chunked(job.tasks(), processes)):
        for record in chunk:
            if on_record:
                on_record(record)
            records.append(without_timings(record))  # held until the manifest: kept small
    series = None
    if job.options.series_outputs:  # pdf, stacks, QA sheets: after the instances (shared/series.py)
        from .series import series_outputs

        series = series_outputs(job, records, store)
    manifest = build_manifest(job.prefix, records, job.options, series=series)
    store.write(manifest_key(job.prefix), manifest_bytes(manifest))
    return manifest
