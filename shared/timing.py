"""Per-stage wall time of the chain, for the benchmark profile and the workers' histograms."""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

#: The chain's stages, in order (DESIGN.md "The chain"); metric label values come only from here.
STAGES = ("fetch", "parse", "deid", "decode", "render", "encode", "verify", "store")


class StageClock:
    """Accumulates seconds per stage; cheap enough (~1 µs a stage) for the per-slice path."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def rounded(self) -> dict[str, float]:
        return {k: round(v, 6) for k, v in self.seconds.items()}


NULL_CLOCK = StageClock()
