"""What `convert` reports as it goes: one tick per header read, then one per instance converted."""
from __future__ import annotations

import pytest

from producer.local import run_local
from shared.options import ConvertOptions
from tests.synthetic import write_series


class Recorder:
    """A Progress that writes down what it is told, in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def scanned(self) -> None:
        self.events.append(("scanned",))

    def start(self, total: int) -> None:
        self.events.append(("start", total))

    def advance(self) -> None:
        self.events.append(("advance",))


@pytest.mark.parametrize("workers", [1, 2])
def test_headers_then_instances(tmp_path, workers):
    write_series(tmp_path / "in", slices=9, size=32)
    (tmp_path / "in" / "notes.txt").write_text("not DICOM")
    rec = Recorder()
    summary = run_local([str(tmp_path / "in")], str(tmp_path / "out"),
                        ConvertOptions(formats=("png",), deid=False), workers=workers, progress=rec)
    assert summary.converted == 9 and sum(summary.skipped.values()) == 1
    assert rec.events == [("scanned",)] * 10 + [("start", 9)] + [("advance",)] * 9
