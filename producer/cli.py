"""The `dicomfleet` command line. Exit codes: 0 all converted, 1 some instances or series outputs
failed, 2 usage, 3 all converted but some JPEG fell below the SSIM threshold.

Built on click alone and kept light at import: every run pays for this module before it does any
work (typer coerced each option through pydantic, ~0.1 s a run). Each command imports what it
needs; rich is loaded only when stderr is a terminal (the progress bar, the coloured labels)."""
from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

import click
from click.exceptions import Exit

from shared.errors import ConfigError, DicomfleetError
from shared.options import DEFAULT_MAX_PIXELS, ConvertOptions, Format

if TYPE_CHECKING:
    from rich.console import Console

    from .local import RunSummary


class _WholeLine:
    """Listed in its group's --help with the whole first line of its help, not cut at the width."""

    def get_short_help_str(self, limit: int = 45) -> str:
        return self.short_help or (self.help or "").strip().partition("\n")[0]


class _Command(_WholeLine, click.Command):
    pass


class _Group(_WholeLine, click.Group):
    """Commands listed as defined; its commands and subgroups are of these classes too."""

    command_class = _Command
    group_class = type  # subgroups are _Group too

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # in the order they are defined here, not sorted


app = _Group(help="Convert DICOM series to PNG, 16-bit PNG, JPEG, TIFF, NumPy and PDF reports, verified, with a manifest.",
             no_args_is_help=True, context_settings={"show_default": True})


def _stack(*decorators: Callable) -> Callable:
    """Several click decorators as one; --help lists their parameters in the order given."""
    def apply(f: Callable) -> Callable:
        for decorate in reversed(decorators):
            f = decorate(f)
        return f
    return apply


def _option(*decls: str, **attrs) -> Callable:
    """click.option that shows its environment variable (if any) in --help."""
    return click.option(*decls, show_envvar=True, **attrs)


# --- terminal output ---------------------------------------------------------------------------


@cache
def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True)


def _say(text: str, label: str = "", colour: str = "red", indent: str = "") -> None:
    """One line on stderr, never wrapped: `label` in `colour` on a terminal (through rich, loaded
    only then), plain text otherwise (a pipe, a log file, CliRunner)."""
    if sys.stderr.isatty():
        from rich.markup import escape

        tag = f"[{colour}]{escape(label)}[/{colour}] " if label else ""
        _console().print(f"{indent}{tag}{escape(text)}", highlight=False, soft_wrap=True)
    else:
        click.echo(f"{indent}{label} {text}" if label else f"{indent}{text}", err=True)


class _Bar:
    """A rich progress display on stderr, only when stderr is a terminal: a count of headers read
    while the sources are scanned (a large archive or network storage takes a while), then a bar
    of instances converted."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
                                 console=_console(), transient=True)
        self.task = None

    def scanned(self) -> None:
        if self.task is None:
            self.progress.start()
            self.task = self.progress.add_task("reading headers", total=None, rate="")
        self.progress.advance(self.task)

    def start(self, total: int) -> None:
        if self.task is None:
            self.progress.start()
        else:
            self.progress.remove_task(self.task)
        self.task = self.progress.add_task("converting", total=total, rate="")

    def advance(self) -> None:
        self.progress.advance(self.task)
        t = self.progress.tasks[-1]
        if t.speed:
            self.progress.update(self.task, rate=f"{t.speed:.0f} inst/s")

    def stop(self) -> None:
        if self.task is not None:
            self.progress.stop()


def _usage(message: str) -> Exit:
    _say(message, "error:")
    return Exit(2)


def print_summary(s: RunSummary) -> None:
    rate = s.instances / s.seconds if s.seconds else 0.0
    _say(f"{s.series} series, {s.instances} instances, {s.converted} converted, {s.outputs} outputs, "
         f"{len(s.failures)} failed in {s.seconds:.1f} s ({rate:.1f} instances/s)")
    for reason, count in sorted(s.skipped.items()):
        _say(f"skipped {count} file(s): {reason}", indent="  ")
    for reason, count in sorted(s.masked.items()):
        _say(f"masked {count} instance(s): {reason}", indent="  ")
    for prefix, index, reason in s.failures:
        _say(f"{prefix}/{index:04d}: {reason}", "failed", indent="  ")
    for prefix, output, reason in s.series_failures:
        _say(f"{prefix} {output}: {reason}", "failed", indent="  ")
    print_flagged(s.below_threshold)


def print_flagged(below: int) -> None:
    """The line for JPEG outputs under the SSIM threshold (exit status 3 when nothing failed)."""
    if below:
        _say(f"{below} JPEG output(s) below the SSIM threshold (see the manifests)", "flagged", "yellow", "  ")


# --- local conversion ------------------------------------------------------------------------

#: the conversion flags of `convert` and `submit`, defined once
conversion_flags = _stack(
    click.option("--format", "-f", "fmt", multiple=True, default=[Format.PNG.value],
                 type=click.Choice([f.value for f in Format]), help="Output format; repeat for several."),
    _option("--window", default="default", envvar="DICOMFLEET_WINDOW",
            help="default|auto|lung|mediastinum|bone|brain|C,W"),
    _option("--quality", type=int, default=95, envvar="DICOMFLEET_QUALITY", help="JPEG quality 1-100."),
    click.option("--no-deid", is_flag=True, help="Keep identifying attributes (trusted use only)."),
    click.option("--deid-option", multiple=True, help=(
        "PS3.15 option, repeatable: retain-long-full-dates, retain-long-modified-dates, retain-patient-chars, "
        "retain-device-id, retain-institution-id, retain-safe-private, clean-descriptors.")),
    _option("--burned-in", default="refuse", envvar="DICOMFLEET_BURNED_IN",
            help="Instances that may show burned-in text: refuse|mask."),
    click.option("--mask-region", multiple=True,
                 help="X,Y,W,H in pixels to black out with --burned-in mask; repeatable."),
    _option("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, envvar="DICOMFLEET_MAX_PIXELS",
            help="Refuse instances declaring more samples than this."),
    _option("--orientation", default="radiological", envvar="DICOMFLEET_ORIENTATION", help=(
        "8-bit outputs: radiological (patient right on image left, anterior/head up, from Image "
        "Orientation (Patient)) or as-stored.")),
    _option("--max-size", type=int, envvar="DICOMFLEET_MAX_SIZE",
            help="8-bit outputs: longest side at most PX pixels, aspect kept (INTER_AREA down)."),
    click.option("--series-stack", is_flag=True, help=(
        "tiff/npy: one multi-page TIFF / one .npy volume (+ JSON geometry) per series, in spatial order.")),
    click.option("--slices", multiple=True, help=(
        "pdf key slices, repeatable: N% of the extent along the slice normal, a position like -40mm, "
        "or an output number (default 25% 50% 75%).")),
    click.option("--qa-sheet", is_flag=True, help=(
        "Write side-by-side QA PNGs (reference, output, difference, SSIM) for a sample of each series.")),
    _option("--qa-fraction", type=float, default=0.01, envvar="DICOMFLEET_QA_FRACTION",
            help="Fraction (0, 1] of each series with a QA sheet (at least one)."),
    _option("--ssim-threshold", type=float, default=0.98, envvar="DICOMFLEET_SSIM_THRESHOLD",
            help="Flag JPEG outputs whose SSIM against the rendering is below this (exit status 3)."),
)


def conversion_options(*, fmt, no_deid: bool, deid_option, mask_region, slices, **fields) -> ConvertOptions:
    """The conversion flags of `convert` and `submit` as one validated ConvertOptions."""
    return ConvertOptions(formats=tuple(fmt), deid=not no_deid, deid_options=tuple(deid_option),
                          mask_regions=tuple(mask_region), slices=tuple(slices), **fields)


@app.command()
@click.argument("sources", nargs=-1, required=True, help="DICOM files or directories (recursive).")
@_option("--out", "-o", required=True, envvar="DICOMFLEET_OUT", help="Destination directory.")
@conversion_flags
@_option("--workers", type=click.IntRange(min=0), default=0, envvar="DICOMFLEET_WORKERS",
         help="Processes (default 0: one per core, fewer below 16 files a process).")
@_option("--pseudonym-map", envvar="DICOMFLEET_PSEUDONYM_MAP",
         help="Append original→pseudonym pairs, encrypted with DICOMFLEET_PSEUDONYM_MAP_KEY, to FILE.")
def convert(sources: tuple[str, ...], out: str, workers: int, pseudonym_map: str | None, **flags) -> None:
    """Convert DICOM series on this machine: no servers needed.

    De-identification is on unless --no-deid: its key comes from DICOMFLEET_DEID_KEY or
    DICOMFLEET_DEID_KEY_FILE, else one is created once in ~/.config/dicomfleet. Exit status: 0
    all converted, 1 some instance, series output or file failed, 2 usage or configuration, 3 some
    JPEG below the SSIM threshold."""
    from shared.quiet import silence_in_this_process
    from shared.runtime import import_pydicom_lean, imports_without_gc

    with imports_without_gc():
        import_pydicom_lean()
        from .local import run_local
        from .scan import unreadable

    try:
        opts = conversion_options(pseudonym_map=pseudonym_map, **flags)
        if opts.deid:
            _prepare_deid(opts)
    except ConfigError as e:
        raise _usage(str(e)) from e
    silence_in_this_process()  # decoders' own stderr (a Rust panic's text): the reasons say it
    bar = _Bar() if sys.stderr.isatty() else None
    default_term = signal.signal(signal.SIGTERM, _terminated)  # like Ctrl-C: temp files go, the pool ends
    try:
        summary = run_local(list(sources), out, opts, workers=workers, progress=bar)
    except (KeyboardInterrupt, _Terminated) as e:
        code = 143 if isinstance(e, _Terminated) else 130
        _say("interrupted: a series without its manifest.json is incomplete; run again to finish it",
             "stopped", "yellow")
        raise Exit(code) from None
    except FileNotFoundError as e:
        raise _usage(f"no such file or directory: {e.args[0]}") from e
    except DicomfleetError as e:
        partial = getattr(e, "partial", None)
        if partial is None:  # an s3:// source or target that cannot be reached: nothing done
            raise _usage(str(e)) from e
        print_summary(partial)  # the series done before the destination failed keep their manifests
        _say(f"{e}: the series in hand has no manifest; mend the destination and run again", "failed")
        raise Exit(1) from e
    finally:
        signal.signal(signal.SIGTERM, default_term)  # the summary and the exit are not interrupted
        if bar:
            bar.stop()
    print_summary(summary)
    _ended["convert"] = True  # everything it wrote is closed: main may skip the teardown
    failed = summary.failures or summary.series_failures or unreadable(summary.skipped)
    raise Exit(1 if failed else 3 if summary.below_threshold else 0)


class _Terminated(Exception):
    """SIGTERM, raised in the main thread so that a run unwinds as from Ctrl-C."""


def _terminated(signum, frame) -> None:
    raise _Terminated()


def _prepare_deid(opts: ConvertOptions) -> None:
    """Check the keys before any work; on one machine, create missing ones once (0600)."""
    import secrets

    from shared.deid import keys, mapping, pseudonyms

    notices = [keys.ensure_local_secret(pseudonyms.KEY_NAME, "deid.key", lambda: secrets.token_hex(32),
                                        "de-identification", "to get the same pseudonyms in later runs")]
    pseudonyms.deid_key()
    if opts.pseudonym_map:
        notices.append(keys.ensure_local_secret(mapping.KEY_NAME, "pseudonym-map.key", mapping.new_key,
                                                "pseudonym map", "secret: it re-identifies the map"))
        mapping.map_key_fernet()
    for line in filter(None, notices):
        _say(line)


# --- the fleet: submit, worker, status ------------------------------------------------------


def _fleet_settings():
    from shared.settings import Settings

    try:
        return Settings.from_env()
    except ConfigError as e:
        raise _usage(str(e)) from e


@app.command()
@click.argument("sources", nargs=-1, required=True,
                help="Directories, files or s3://bucket/prefix (headers only).")
@_option("--out", "-o", required=True, envvar="DICOMFLEET_OUT",
         help="s3://bucket/prefix or a directory the workers share.")
@conversion_flags
@click.option("--priority", default="normal", help="normal, or high: the real-time queue workers drain first.")
@click.option("--wait", is_flag=True, help="Wait until every job is done or failed.")
@click.option("--timeout", type=float, default=0, help="With --wait: give up after this many seconds (0: never).")
def submit(sources: tuple[str, ...], out: str, priority: str, wait: bool, timeout: float, **flags) -> None:
    """Queue one job per series for the workers; series already done at the target are skipped."""
    from .scan import unreadable
    from .status import below_threshold
    from .submit import submit as submit_jobs, wait as wait_jobs

    if priority not in ("normal", "high"):
        raise _usage(f"--priority must be normal or high, got {priority!r}")
    settings = _fleet_settings()
    try:
        opts = conversion_options(**flags)
        result = submit_jobs(list(sources), out, opts, priority=priority, settings=settings)
    except FileNotFoundError as e:
        raise _usage(f"no such file or directory: {e.args[0]}") from e
    except DicomfleetError as e:
        raise _usage(str(e)) from e
    for job in result.jobs:
        click.echo(f"{job.job_id}  {job.outcome:<12} {job.instances:>5} instances  {job.prefix}")
    for reason, count in sorted(result.skipped.items()):
        _say(f"skipped {count} file(s): {reason}", indent="  ")
    _say(f"{len(result.jobs)} series: {len(result.queued)} queued in {result.seconds:.1f} s")
    if not wait:
        raise Exit(1 if unreadable(result.skipped) else 0)
    try:
        records = wait_jobs([j.job_id for j in result.jobs if j.outcome != "already done"],
                            settings=settings, timeout=timeout or None)
    except (TimeoutError, DicomfleetError) as e:
        _say(str(e), "error:")
        raise Exit(1) from e
    bad = [(jid, r) for jid, r in records.items() if r.get("state") != "done" or r.get("failed")]
    for jid, r in bad:
        _say(f"{jid} {r.get('prefix', '')}: {r.get('reason') or '; '.join(r.get('failures') or [])}",
             str(r.get("state")), indent="  ")
    below = below_threshold(records)
    print_flagged(below)
    raise Exit(1 if bad or unreadable(result.skipped) else 3 if below else 0)


@app.command()
@_option("--concurrency", type=int, default=0, envvar="DICOMFLEET_WORKER_CONCURRENCY",
         help="Processes converting the series in hand (0: one per core).")
@click.option("--queues", default="", show_default=False, help="Queues to drain, first first (default: high, then normal).")
@click.option("--loglevel", default="INFO", help="Celery log level.")
def worker(concurrency: int, queues: str, loglevel: str) -> None:
    """A Celery worker with the fleet's settings: one series at a time, its instances in parallel."""
    import os

    os.environ["DICOMFLEET_WORKER_CONCURRENCY"] = str(concurrency)
    settings = _fleet_settings()
    from workers.tasks import app as celery_app

    names = queues or f"{settings.queue_high},{settings.queue}"
    celery_app.worker_main(["worker", "--queues", names, "--loglevel", loglevel, "--without-gossip",
                            "--without-mingle", "--without-heartbeat"])


@app.command("status")
@click.argument("jobs", nargs=-1, help="Job ids (as `submit` printed them).")
@click.option("--all", "all_jobs", is_flag=True, help="Every job, not just the failed ones.")
def status_cmd(jobs: tuple[str, ...], all_jobs: bool) -> None:
    """Queued / running / done / failed counts, and the reason of every failure."""
    from .status import status

    try:
        report = status(list(jobs) or None, settings=_fleet_settings())
    except DicomfleetError as e:
        raise _usage(str(e)) from e
    if jobs and not report.jobs:
        raise _usage(f"no such job: {', '.join(jobs)}")
    for line in report.lines(detail=all_jobs or bool(jobs)):
        click.echo(line)
    print_flagged(report.below_threshold)
    raise Exit(report.exit_code)


# --- the pseudonym map -----------------------------------------------------------------------

map_app = _Group("pseudonym-map", help="The encrypted pseudonym map (GDPR access and erasure).",
                 no_args_is_help=True)
app.add_command(map_app)

_map_arguments = _stack(
    click.argument("file", help="The pseudonym map file."),
    click.argument("patient", required=False, help=(
        "Patient ID, patient pseudonym, or any original/pseudonymous UID of theirs; stdin if omitted.")),
)


def _open_map(file: str, value: str | None):
    """The map and the patient to look up: the argument, else one line from stdin (keeps PHI out
    of argv and shell history). The map key may be the one `convert` created on this machine."""
    from shared.deid import keys, mapping

    keys.use_local_secret(mapping.KEY_NAME, "pseudonym-map.key")
    value = value if value is not None else sys.stdin.readline()
    if not value.strip():
        raise _usage("name the patient: a Patient ID, its pseudonym, or a UID of theirs (or on stdin)")
    return mapping.PseudonymMap(file), value.strip()


@map_app.command("forget")
@_map_arguments
def map_forget(file: str, patient: str | None) -> None:
    """Erase one patient's entries from the map (right to erasure)."""
    pmap, value = _open_map(file, patient)
    try:
        removed, patients = pmap.forget(value)
    except DicomfleetError as e:
        raise _usage(str(e)) from e
    _say(f"removed {removed} entr{'y' if removed == 1 else 'ies'} of {patients} patient(s)")
    raise Exit(0 if patients else 1)


@map_app.command("show")
@_map_arguments
def map_show(file: str, patient: str | None) -> None:
    """Print one patient's original→pseudonym pairs as JSON (right of access)."""
    import json

    pmap, value = _open_map(file, patient)
    try:
        found = pmap.access(value)
    except DicomfleetError as e:
        raise _usage(str(e)) from e
    click.echo(json.dumps(found, indent=2, sort_keys=True))
    raise Exit(0 if found else 1)


#: Commands that ran to their end in this process (set by the command, read by `main`).
_ended: dict[str, bool] = {}


def main() -> None:
    """The console entry point.

    A `convert` that ran to its end leaves with ``os._exit`` once stdout, stderr and logging are
    flushed: the interpreter's teardown (every module and object of pydicom and numpy freed one by
    one, ~20 ms) would outlast the conversion of a short series, and nothing is left for it to do
    (outputs, manifests and the pseudonym map are written and closed, the pool is joined, S3
    uploads have ended). Any other command, a convert that failed, and a process under a tracer or
    profiler (coverage, cProfile, pyinstrument write their results at exit) exit as usual."""
    from shared.quiet import ignore_input_warnings

    ignore_input_warnings()  # before any header is read: no command shows a library's warning
    _ended.clear()
    try:
        app()
    except SystemExit as done:
        watched = sys.gettrace() is not None or sys.getprofile() is not None
        if _ended.get("convert") and not watched and (done.code is None or isinstance(done.code, int)) \
                and _flushed():
            import os

            os._exit(done.code or 0)
        raise


def _flushed() -> bool:
    """Whether what Python still holds for logging, stdout and stderr is written; not when a
    stream is closed or its pipe broken (the usual exit then says so as it always did)."""
    import logging

    try:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):
        return False
    return True
