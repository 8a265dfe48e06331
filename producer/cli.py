"""The `dicomfleet` command line. Exit codes: 0 all converted, 1 some instances or series outputs
failed, 2 usage, 3 all converted but some JPEG fell below the SSIM threshold."""
from __future__ import annotations

import secrets
import sys
from typing import Annotated

import typer
from rich.console import Console

from shared.errors import ConfigError, DicomfleetError, StorageError
from shared.options import DEFAULT_MAX_PIXELS, ConvertOptions, Format
from shared.quiet import silence_in_this_process

from shared.runtime import usable_cores

from .local import RunSummary, run_local

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Convert DICOM series to PNG, JPEG, TIFF and NumPy, verified, with a manifest.")
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """dicomfleet: DICOM series to everyday formats, verified, with a manifest."""


class _Bar:
    """A rich progress bar on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("converting"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 console=err, transient=True)
        self.task = None

    def start(self, total: int) -> None:
        self.progress.start()
        self.task = self.progress.add_task("convert", total=total, rate="")

    def advance(self) -> None:
        self.progress.advance(self.task)
        t = self.progress.tasks[0]
        if t.speed:
            self.progress.update(self.task, rate=f"{t.speed:.0f} inst/s")

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()


def _usage(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(2)


def print_summary(s: RunSummary) -> None:
    rate = s.instances / s.seconds if s.seconds else 0.0
    err.print(
        f"{s.series} series, {s.instances} instances, {s.converted} converted, {s.outputs} outputs, "
        f"{len(s.failures)} failed in {s.seconds:.1f} s ({rate:.1f} instances/s)", highlight=False, soft_wrap=True)
    for reason, count in sorted(s.skipped.items()):
        err.print(f"  skipped {count} file(s): {reason}", highlight=False, soft_wrap=True)
    for reason, count in sorted(s.masked.items()):
        err.print(f"  masked {count} instance(s): {reason}", highlight=False, soft_wrap=True)
    for prefix, index, reason in s.failures:
        err.print(f"  [red]failed[/red] {prefix}/{index:04d}: {reason}", highlight=False, soft_wrap=True)
    for prefix, output, reason in s.series_failures:
        err.print(f"  [red]failed[/red] {prefix} {output}: {reason}", highlight=False, soft_wrap=True)
    print_flagged(s.below_threshold)


def print_flagged(below: int) -> None:
    """The line for JPEG outputs under the SSIM threshold (exit status 3 when nothing failed)."""
    if below:
        err.print(f"  [yellow]flagged[/yellow] {below} JPEG output(s) below the SSIM threshold "
                  "(see the manifests)", highlight=False, soft_wrap=True)


#: conversion flags shared by `convert` and `submit`
FormatsOpt = Annotated[list[Format], typer.Option("--format", "-f", help="Output format; repeat for several.")]
WindowOpt = Annotated[str, typer.Option(envvar="DICOMFLEET_WINDOW", help="default|auto|lung|mediastinum|bone|brain|C,W")]
QualityOpt = Annotated[int, typer.Option(envvar="DICOMFLEET_QUALITY", help="JPEG quality 1-100.")]
NoDeidOpt = Annotated[bool, typer.Option("--no-deid", help="Keep identifying attributes (trusted use only).")]
DeidOptionOpt = Annotated[list[str], typer.Option(
    "--deid-option", help="PS3.15 option, repeatable: retain-long-full-dates, retain-long-modified-dates, "
    "retain-patient-chars, retain-device-id, retain-institution-id, retain-safe-private, clean-descriptors.")]
BurnedInOpt = Annotated[str, typer.Option(envvar="DICOMFLEET_BURNED_IN",
                                          help="Instances that may show burned-in text: refuse|mask.")]
MaskRegionOpt = Annotated[list[str], typer.Option(
    "--mask-region", help="X,Y,W,H in pixels to black out with --burned-in mask; repeatable.")]
MaxPixelsOpt = Annotated[int, typer.Option(envvar="DICOMFLEET_MAX_PIXELS",
                                           help="Refuse instances declaring more samples than this.")]
OrientationOpt = Annotated[str, typer.Option(envvar="DICOMFLEET_ORIENTATION", help=(
    "8-bit outputs: radiological (patient right on image left, anterior/head up, from Image "
    "Orientation (Patient)) or as-stored."))]
MaxSizeOpt = Annotated[int | None, typer.Option(envvar="DICOMFLEET_MAX_SIZE", help=(
    "8-bit outputs: longest side at most PX pixels, aspect kept (INTER_AREA down)."))]
SeriesStackOpt = Annotated[bool, typer.Option("--series-stack", help=(
    "tiff/npy: one multi-page TIFF / one .npy volume (+ JSON geometry) per series, in spatial order."))]
SlicesOpt = Annotated[list[str], typer.Option("--slices", help=(
    "pdf key slices, repeatable: N% of the extent along the slice normal, a position like -40mm, "
    "or an output number (default 25% 50% 75%)."))]
QaSheetOpt = Annotated[bool, typer.Option("--qa-sheet", help=(
    "Write side-by-side QA PNGs (reference, output, difference, SSIM) for a sample of each series."))]
QaFractionOpt = Annotated[float, typer.Option(envvar="DICOMFLEET_QA_FRACTION",
                                              help="Fraction of each series with a QA sheet (at least one).")]
SsimThresholdOpt = Annotated[float, typer.Option(envvar="DICOMFLEET_SSIM_THRESHOLD", help=(
    "Flag JPEG outputs whose SSIM against the rendering is below this (exit status 3)."))]


def conversion_options(*, fmt: list[Format], no_deid: bool, deid_option: list[str], mask_region: list[str],
                       slices: list[str], **fields) -> ConvertOptions:
    """The conversion flags of `convert` and `submit` as one validated ConvertOptions."""
    return ConvertOptions(formats=tuple(fmt), deid=not no_deid, deid_options=tuple(deid_option),
                          mask_regions=tuple(mask_region), slices=tuple(slices), **fields)


@app.command()
def convert(
    sources: Annotated[list[str], typer.Argument(help="DICOM files or directories (recursive).")],
    out: Annotated[str, typer.Option("--out", "-o", envvar="DICOMFLEET_OUT", help="Destination directory.")],
    fmt: FormatsOpt = [Format.PNG],  # noqa: B006
    window: WindowOpt = "default",
    quality: QualityOpt = 95,
    workers: Annotated[int, typer.Option(envvar="DICOMFLEET_WORKERS", help="Processes (default: all cores).")] = 0,
    no_deid: NoDeidOpt = False,
    deid_option: DeidOptionOpt = [],  # noqa: B006
    burned_in: BurnedInOpt = "refuse",
    mask_region: MaskRegionOpt = [],  # noqa: B006
    pseudonym_map: Annotated[str | None, typer.Option(
        envvar="DICOMFLEET_PSEUDONYM_MAP",
        help="Append original→pseudonym pairs, encrypted with DICOMFLEET_PSEUDONYM_MAP_KEY, to FILE.")] = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    orientation: OrientationOpt = "radiological",
    max_size: MaxSizeOpt = None,
    series_stack: SeriesStackOpt = False,
    slices: SlicesOpt = [],  # noqa: B006
    qa_sheet: QaSheetOpt = False,
    qa_fraction: QaFractionOpt = 0.01,
    ssim_threshold: SsimThresholdOpt = 0.98,
) -> None:
    """Convert DICOM series on this machine: no servers needed."""
    try:
        opts = conversion_options(
            fmt=fmt, window=window, quality=quality, no_deid=no_deid, max_pixels=max_pixels,
            deid_option=deid_option, burned_in=burned_in, mask_region=mask_region,
            pseudonym_map=pseudonym_map, orientation=orientation, max_size=max_size,
            series_stack=series_stack, slices=slices, qa_sheet=qa_sheet, qa_fraction=qa_fraction,
            ssim_threshold=ssim_threshold)
        if opts.deid:
            _prepare_deid(opts)
    except ConfigError as e:
        raise _usage(str(e)) from e
    silence_in_this_process()  # decoders' own stderr (a Rust panic's text): the reasons say it
    bar = _Bar() if sys.stderr.isatty() else None
    try:
        summary = run_local(sources, out, opts, workers=workers or usable_cores(), progress=bar)
    except FileNotFoundError as e:
        raise _usage(f"no such file or directory: {e.args[0]}") from e
    except StorageError as e:  # an s3:// source or target that cannot be reached
        raise _usage(str(e)) from e
    finally:
        if bar:
            bar.stop()
    print_summary(summary)
    raise typer.Exit(1 if summary.failures or summary.series_failures else 3 if summary.below_threshold else 0)


def _prepare_deid(opts: ConvertOptions) -> None:
    """Check the keys before any work; on one machine, create missing ones once (0600)."""
    from shared.deid import keys, mapping, pseudonyms

    notices = [keys.ensure_local_secret(pseudonyms.KEY_NAME, "deid.key", lambda: secrets.token_hex(32),
                                        "de-identification", "to get the same pseudonyms in later runs")]
    pseudonyms.deid_key()
    if opts.pseudonym_map:
        notices.append(keys.ensure_local_secret(mapping.KEY_NAME, "pseudonym-map.key", mapping.new_key,
                                                "pseudonym map", "secret: it re-identifies the map"))
        mapping.map_key_fernet()
    for line in filter(None, notices):
        err.print(line, highlight=False, soft_wrap=True)


map_app = typer.Typer(no_args_is_help=True, help="The encrypted pseudonym map (GDPR access and erasure).")
app.add_typer(map_app, name="pseudonym-map")


def _open_map(file: str, value: str | None):
    """The map and the patient to look up: the argument, else one line from stdin (keeps PHI out
    of argv and shell history). The map key may be the one `convert` created on this machine."""
    from shared.deid import keys, mapping

    keys.use_local_secret(mapping.KEY_NAME, "pseudonym-map.key")
    value = value if value is not None else sys.stdin.readline()
    if not value.strip():
        raise _usage("name the patient: a Patient ID, its pseudonym, or a UID of theirs (or on stdin)")
    return mapping.PseudonymMap(file), value.strip()


_MapFile = Annotated[str, typer.Argument(help="The pseudonym map file.")]
_Patient = Annotated[str | None, typer.Argument(
    help="Patient ID, patient pseudonym, or any original/pseudonymous UID of theirs; stdin if omitted.")]


@map_app.command("forget")
def map_forget(file: _MapFile, patient: _Patient = None) -> None:
    """Erase one patient's entries from the map (right to erasure)."""
    pmap, value = _open_map(file, patient)
    try:
        removed, patients = pmap.forget(value)
    except DicomfleetError as e:
        raise _usage(str(e)) from e
    err.print(f"removed {removed} entr{'y' if removed == 1 else 'ies'} of {patients} patient(s)", highlight=False)
    raise typer.Exit(0 if patients else 1)


@map_app.command("show")
def map_show(file: _MapFile, patient: _Patient = None) -> None:
    """Print one patient's original→pseudonym pairs as JSON (right of access)."""
    import json

    pmap, value = _open_map(file, patient)
    try:
        found = pmap.access(value)
    except DicomfleetError as e:
        raise _usage(str(e)) from e
    typer.echo(json.dumps(found, indent=2, sort_keys=True))
    raise typer.Exit(0 if found else 1)


# --- the fleet: submit, worker, status ------------------------------------------------------


def _fleet_settings():
    from shared.settings import Settings

    try:
        return Settings.from_env()
    except ConfigError as e:
        raise _usage(str(e)) from e


@app.command()
def submit(
    sources: Annotated[list[str], typer.Argument(help="Directories, files or s3://bucket/prefix (headers only).")],
    out: Annotated[str, typer.Option("--out", "-o", envvar="DICOMFLEET_OUT", help="s3://bucket/prefix or a directory the workers share.")],
    fmt: FormatsOpt = [Format.PNG],  # noqa: B006
    window: WindowOpt = "default",
    quality: QualityOpt = 95,
    no_deid: NoDeidOpt = False,
    deid_option: DeidOptionOpt = [],  # noqa: B006
    burned_in: BurnedInOpt = "refuse",
    mask_region: MaskRegionOpt = [],  # noqa: B006
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    orientation: OrientationOpt = "radiological",
    max_size: MaxSizeOpt = None,
    series_stack: SeriesStackOpt = False,
    slices: SlicesOpt = [],  # noqa: B006
    qa_sheet: QaSheetOpt = False,
    qa_fraction: QaFractionOpt = 0.01,
    ssim_threshold: SsimThresholdOpt = 0.98,
    priority: Annotated[str, typer.Option(help="normal, or high: the real-time queue workers drain first.")] = "normal",
    wait: Annotated[bool, typer.Option("--wait", help="Wait until every job is done or failed.")] = False,
    timeout: Annotated[float, typer.Option(help="With --wait: give up after this many seconds (0: never).")] = 0,
) -> None:
    """Queue one job per series for the workers; series already done at the target are skipped."""
    from shared.errors import DicomfleetError

    from .status import below_threshold
    from .submit import submit as submit_jobs, wait as wait_jobs

    if priority not in ("normal", "high"):
        raise _usage(f"--priority must be normal or high, got {priority!r}")
    settings = _fleet_settings()
    try:
        opts = conversion_options(
            fmt=fmt, window=window, quality=quality, no_deid=no_deid, max_pixels=max_pixels,
            deid_option=deid_option, burned_in=burned_in, mask_region=mask_region,
            orientation=orientation, max_size=max_size, series_stack=series_stack, slices=slices,
            qa_sheet=qa_sheet, qa_fraction=qa_fraction, ssim_threshold=ssim_threshold)
        result = submit_jobs(sources, out, opts, priority=priority, settings=settings)
    except FileNotFoundError as e:
        raise _usage(f"no such file or directory: {e.args[0]}") from e
    except DicomfleetError as e:
        raise _usage(str(e)) from e
    for job in result.jobs:
        typer.echo(f"{job.job_id}  {job.outcome:<12} {job.instances:>5} instances  {job.prefix}")
    for reason, count in sorted(result.skipped.items()):
        err.print(f"  skipped {count} file(s): {reason}", highlight=False, soft_wrap=True)
    err.print(f"{len(result.jobs)} series: {len(result.queued)} queued in {result.seconds:.1f} s", highlight=False)
    if not wait:
        raise typer.Exit(0)
    try:
        records = wait_jobs([j.job_id for j in result.jobs if j.outcome != "already done"],
                            settings=settings, timeout=timeout or None)
    except (TimeoutError, DicomfleetError) as e:
        err.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(1) from e
    bad = [(jid, r) for jid, r in records.items() if r.get("state") != "done" or r.get("failed")]
    for jid, r in bad:
        err.print(f"  [red]{r.get('state')}[/red] {jid} {r.get('prefix', '')}: "
                  f"{r.get('reason') or '; '.join(r.get('failures') or [])}", highlight=False, soft_wrap=True)
    below = below_threshold(records)
    print_flagged(below)
    raise typer.Exit(1 if bad else 3 if below else 0)


@app.command()
def worker(
    concurrency: Annotated[int, typer.Option(envvar="DICOMFLEET_WORKER_CONCURRENCY",
                                             help="Processes converting the series in hand (0: one per core).")] = 0,
    queues: Annotated[str, typer.Option(help="Queues to drain, first first (default: high, then normal).")] = "",
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
) -> None:
    """A Celery worker with the fleet's settings: one series at a time, its instances in parallel."""
    import os

    os.environ["DICOMFLEET_WORKER_CONCURRENCY"] = str(concurrency)
    settings = _fleet_settings()
    from workers.tasks import app as celery_app

    names = queues or f"{settings.queue_high},{settings.queue}"
    celery_app.worker_main(["worker", "--queues", names, "--loglevel", loglevel, "--without-gossip",
                            "--without-mingle", "--without-heartbeat"])


@app.command("status")
def status_cmd(
    jobs: Annotated[list[str] | None, typer.Argument(help="Job ids (as `submit` printed them).")] = None,
    all_jobs: Annotated[bool, typer.Option("--all", help="Every job, not just the failed ones.")] = False,
) -> None:
    """Queued / running / done / failed counts, and the reason of every failure."""
    from shared.errors import DicomfleetError

    from .status import status

    try:
        report = status(jobs or None, settings=_fleet_settings())
    except DicomfleetError as e:
        raise _usage(str(e)) from e
    if jobs and not report.jobs:
        raise _usage(f"no such job: {', '.join(jobs)}")
    for line in report.lines(detail=all_jobs or bool(jobs)):
        typer.echo(line)
    print_flagged(report.below_threshold)
    raise typer.Exit(report.exit_code)


def main() -> None:
    app()
