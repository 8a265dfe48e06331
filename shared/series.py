"""Series outputs: made once per series after its instances and before the manifest.

The PDF report (shared/report.py), the ``--series-stack`` volumes (shared/stack.py) and the QA
sheets (shared/qa.py). Each re-reads the few sources it needs through the same steps as an
instance (fetch, parse, de-identify, decode, mask) and writes through the store; the manifest
lists what they wrote with its SHA-256 and size. A failing series output is recorded with its
one-line reason and never costs the instances their manifest.
"""
from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator

import numpy as np
from pydicom.dataset import Dataset

from .dataset import decode_pixels, read_dataset, read_header, source_limit
from .deid import deidentify
from .deid.burned_in import mask_regions
from .digest import sha256
from .errors import Transient, VerificationError, failure
from .metadata import embedded_fields, tiff_tags
from .options import ConvertOptions, Format
from .pixels.orientation import frame_position
from .store import Store, open_source, read_source
from .verify import decode, ssim

PDF_NAME, TIFF_NAME, NPY_NAME = "series.pdf", "series.tiff", "series.npy"


def load_instance(source: str, opts: ConvertOptions) -> tuple[Dataset, np.ndarray]:
    """A source as the chain sees it: de-identified header (without appending to the pseudonym
    map again: the instance pass did) and decoded, masked pixels."""
    ds = read_dataset(read_source(source, source_limit(opts.max_pixels)), max_pixels=opts.max_pixels)
    mask = ()
    if opts.deid:
        mask = deidentify(ds, dataclasses.replace(opts, pseudonym_map=None)).mask
    arr = decode_pixels(ds, max_pixels=opts.max_pixels)
    if mask:
        arr = mask_regions(arr, ds, regions=mask)
    return ds, arr


def _frames_of(arr: np.ndarray, ds: Dataset) -> list[np.ndarray]:
    from .chain import _frames

    return _frames(arr, ds)


def usable(records: list[dict]) -> list[int]:
    """Output numbers of the instances that converted (a refused format alone does not count)."""
    return sorted(r["index"] for r in records if not r["error"] or r["outputs"])


def _entry(store: Store, key: str, data: bytes, fmt: str, **extra) -> dict:
    store.write(key, data)
    return {"path": key, "format": fmt, "sha256": sha256(data), "size": len(data), **extra}


def series_outputs(job, records: list[dict], store: Store) -> tuple[list[dict], list[dict]]:
    """Make every series output ``job`` asks for: (manifest entries, errors)."""
    opts: ConvertOptions = job.options
    steps = []
    if Format.PDF in opts.formats:
        steps.append(("pdf", report_output))
    if opts.series_stack and Format.TIFF in opts.formats:
        steps.append(("tiff", tiff_output))
    if opts.series_stack and Format.NPY in opts.formats:
        steps.append(("npy", npy_output))
    if opts.qa_sheet:
        steps.append(("qa", qa_outputs))
    outputs: list[dict] = []
    errors: list[dict] = []
    ok = usable(records)
    for name, step in steps:
        try:
            outputs += step(job, records, ok, store)
        except Transient:
            raise
        except Exception as err:  # bad input, or a bug of ours: costs this output, never the manifest
            errors.append({"output": name, **failure(err)})
    return outputs, errors


# --- the PDF report ---------------------------------------------------------------------------

def report_units(job, ok: list[int]):
    """Every displayable image of the converted instances with its position (headers only)."""
    from .report import Unit

    units = []
    for index in ok:
        with open_source(job.sources[index - 1]) as fh:
            header = read_header(fh, max_pixels=job.options.max_pixels)
        frames = int(header.get("NumberOfFrames", 1) or 1)
        for frame in ([None] if frames == 1 else range(1, frames + 1)):
            units.append(Unit(index, frame, frame_position(header, frame)))
    return units


def _window_text(window) -> str:
    if window is None:
        return "colour"
    if window.lut is not None:
        return "VOI LUT"
    return f"C {window.center:g} W {window.width:g}"


def report_output(job, records: list[dict], ok: list[int], store: Store) -> list[dict]:
    from .chain import display_frames
    from .report import ReportImage, build_report, parse_slices, pick_slices

    opts: ConvertOptions = job.options
    choices = parse_slices(opts.slices)
    units = report_units(job, ok)
    picked = pick_slices(choices, units)
    images, fields, described = [], None, []
    for index in dict.fromkeys(u.index for u in picked):
        ds, arr = load_instance(job.sources[index - 1], opts)
        fields = fields if fields is not None else embedded_fields(ds, opts)
        frames, window, _ = display_frames(arr, ds, opts)
        for unit in (u for u in picked if u.index == index):
            pixels = frames[(unit.frame or 1) - 1]
            place = f"position {unit.position:.1f} mm" if unit.position is not None else "position unknown"
            name = f"{index:04d}" + (f" frame {unit.frame}" if unit.frame else "")
            attrs = [fields.get(k) for k in ("modality", "study_date", "series_description")]
            caption = (" \u00b7 ".join(a for a in attrs if a) or "(no attributes kept)",
                       f"image {units.index(unit) + 1} of {len(units)} (output {name}) \u00b7 {place}"
                       f" \u00b7 window {_window_text(window)}")
            images.append(ReportImage(pixels, caption))
            described.append({"index": index, "frame": unit.frame, "position": unit.position})
    fields = fields or {}
    head = [" \u00b7 ".join(f"{label} {fields[k]}" for k, label in (
        ("study_date", "Study date"), ("modality", "Modality"), ("series_description", "Series")) if k in fields)]
    head.append(f"Key slices {', '.join(c.text for c in choices)} of {len(units)} images along the slice "
                f"normal \u00b7 orientation {opts.orientation} \u00b7 window {opts.window}")
    if opts.deid:
        head.append("De-identified: DICOM PS3.15 Basic Application Level Confidentiality Profile")
    data = build_report(images, fields, tuple(h for h in head if h))
    _verify_report(data, images)
    return [_entry(store, f"{job.prefix}/{PDF_NAME}", data, "pdf", slices=described, verification="lossless")]


def _verify_report(data: bytes, images: list) -> None:
    """Every embedded image decodes back to the pixels shown, in order."""
    import pikepdf

    with pikepdf.open(io.BytesIO(data)) as pdf:
        found = [np.asarray(pikepdf.PdfImage(image).as_pil_image())
                 for page in pdf.pages for _, image in sorted(page.get_images(recursive=False).items(),
                                                              key=lambda item: int(item[0][3:]))]
    if len(found) != len(images) or any(not np.array_equal(f, i.pixels) for f, i in zip(found, images)):
        raise VerificationError("pdf images do not decode back to the pixels rendered")


# --- the stacks -------------------------------------------------------------------------------

def _slices(job, ok: list[int]) -> Iterator[tuple[int, int | None, Dataset, np.ndarray]]:
    """Every frame of the converted instances in series order, one instance loaded at a time."""
    for index in ok:
        ds, arr = load_instance(job.sources[index - 1], job.options)
        frames = _frames_of(arr, ds)
        for number, frame in enumerate(frames, start=1):
            yield index, number if len(frames) > 1 else None, ds, frame


def tiff_output(job, records: list[dict], ok: list[int], store: Store) -> list[dict]:
    from .stack import tiff_stack

    data, pages = tiff_stack(lambda: _slices(job, ok), lambda ds: tiff_tags(embedded_fields(ds, job.options)))
    return [_entry(store, f"{job.prefix}/{TIFF_NAME}", data, "tiff", pages=pages, instances=ok)]


def npy_output(job, records: list[dict], ok: list[int], store: Store) -> list[dict]:
    from .stack import npy_stack, sidecar_bytes

    frames = {r["index"]: int(r.get("frames", 1)) for r in records}
    data, sidecar = npy_stack(lambda: _slices(job, ok), sum(frames[i] for i in ok))
    meta = sidecar_bytes(sidecar)
    return [_entry(store, f"{job.prefix}/{NPY_NAME}", data, "npy", shape=sidecar["shape"], instances=ok),
            _entry(store, f"{job.prefix}/{NPY_NAME}.json", meta, "json")]


# --- QA sheets --------------------------------------------------------------------------------

def qa_outputs(job, records: list[dict], ok: list[int], store: Store) -> list[dict]:
    from .chain import display_frames
    from .encode import encode_png
    from .qa import difference, qa_sheet, sample

    opts: ConvertOptions = job.options
    by_index = {r["index"]: r for r in records}
    entries = []
    for index in sample(ok, opts.qa_fraction):
        outs = by_index[index]["outputs"]
        compared = next((o for fmt in ("jpeg", "png") for o in outs if o["format"] == fmt), None)
        if compared is None:
            continue
        ds, arr = load_instance(job.sources[index - 1], opts)
        frames, _, _ = display_frames(arr, ds, opts)
        reference = frames[(compared["frame"] or 1) - 1]
        output = decode(compared["format"], store.read(compared["path"]))
        if output.shape != reference.shape:
            raise VerificationError(f"output {index:04d} decodes to {list(output.shape)}, "
                                    f"the reference rendering is {list(reference.shape)}")
        score = round(ssim(reference, output), 6)
        diff = difference(reference, output)
        kind = f"JPEG q{opts.quality}" if compared["format"] == "jpeg" else "PNG"
        verdict = "below the threshold" if score < opts.ssim_threshold else "pass"
        footer = (f"SSIM {score:.4f} (threshold {opts.ssim_threshold:g}: {verdict}) \u00b7 "
                  f"max |difference| {int(diff.max())} \u00b7 mean {float(diff.mean()):.2f}")
        name = compared["path"].rsplit("/", 1)[-1]
        sheet = qa_sheet(reference, output, labels=("reference (from DICOM)", f"{name} ({kind})"), footer=footer)
        entries.append(_entry(store, f"{job.prefix}/qa/{index:04d}.png", encode_png(sheet), "qa",
                              index=index, frame=compared["frame"], compared=compared["path"], ssim=score,
                              max_difference=int(diff.max())))
    return entries
