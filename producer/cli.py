"""The `dicomfleet` command line. Exit codes: 0 all converted, 1 some instances failed, 2 usage."""
from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from shared.errors import ConfigError
from shared.options import DEFAULT_MAX_PIXELS, ConvertOptions, Format

from .local import RunSummary, default_workers, run_local

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Convert DICOM series to PNG, JPEG, TIFF and NumPy, verified, with a manifest.")
err = Console(stderr=True)


@app.callback()
def _root() -> None:
    """dicomfleet: DICOM series to everyday formats, verified, with a manifest."""


class _Bar:
    """A rich progress bar on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
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
    for prefix, index, reason in s.failures:
        err.print(f"  [red]failed[/red] {prefix}/{index:04d}: {reason}", highlight=False, soft_wrap=True)


@app.command()
def convert(
    sources: Annotated[list[str], typer.Argument(help="DICOM files or directories (recursive).")],
    out: Annotated[str, typer.Option("--out", "-o", envvar="DICOMFLEET_OUT", help="Destination directory.")],
    fmt: Annotated[list[Format], typer.Option("--format", "-f", help="Output format; repeat for several.")] = [Format.PNG],  # noqa: B006
    window: Annotated[str, typer.Option(envvar="DICOMFLEET_WINDOW",
                                        help="default|auto|lung|mediastinum|bone|brain|C,W")] = "default",
    quality: Annotated[int, typer.Option(envvar="DICOMFLEET_QUALITY", help="JPEG quality 1-100.")] = 95,
    workers: Annotated[int, typer.Option(envvar="DICOMFLEET_WORKERS", help="Processes (default: all cores).")] = 0,
    no_deid: Annotated[bool, typer.Option("--no-deid", help="Keep identifying attributes (trusted use only).")] = False,
    max_pixels: Annotated[int, typer.Option(envvar="DICOMFLEET_MAX_PIXELS",
                                            help="Refuse instances declaring more samples than this.")] = DEFAULT_MAX_PIXELS,
) -> None:
    """Convert DICOM series on this machine: no servers needed."""
    try:
        opts = ConvertOptions(formats=tuple(fmt), window=window, quality=quality, deid=not no_deid,
                              max_pixels=max_pixels)
        if opts.deid:
            _require_deid()
    except ConfigError as e:
        raise _usage(str(e)) from e
    bar = _Bar() if sys.stderr.isatty() else None
    try:
        summary = run_local(sources, out, opts, workers=workers or default_workers(), progress=bar)
    except FileNotFoundError as e:
        raise _usage(f"no such file or directory: {e.args[0]}") from e
    finally:
        if bar:
            bar.stop()
    print_summary(summary)
    raise typer.Exit(1 if summary.failures else 0)


def _require_deid() -> None:
    try:
        import shared.deid  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            "de-identification is not available yet; pass --no-deid to convert identifiable data") from e


def main() -> None:
    app()
