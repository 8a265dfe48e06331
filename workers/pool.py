"""The worker's instance pool: the series in hand is spread over N processes, like the local
`convert` spreads it, with the soft-shutdown deadline checked while results come back."""
from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from shared.runtime import pool_child_init

T = TypeVar("T")
R = TypeVar("R")

#: set by the SIGTERM handler: the monotonic time by which the job in hand must be finished
_deadline: float | None = None


class ShutdownRequested(Exception):
    """The soft-shutdown timeout ran out before the series finished: hand the job back."""


class PoolCrashed(Exception):
    """A pool process died under an instance (killed, out of memory, a crashing decoder)."""


def request_shutdown(timeout: float) -> None:
    """Give the job in hand ``timeout`` seconds more (called once, on SIGTERM)."""
    global _deadline
    if _deadline is None:
        _deadline = time.monotonic() + max(0.0, timeout)


class InstancePool:
    """A lazily started process pool, restarted after a crash."""

    def __init__(self, processes: int) -> None:
        self.processes = max(1, processes)
        self._executor: ProcessPoolExecutor | None = None

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.processes, initializer=pool_child_init)
        return self._executor

    def pids(self) -> list[int]:
        ex = self._executor
        return sorted(ex._processes) if ex is not None and ex._processes else []  # noqa: SLF001

    def close(self, *, kill: bool = False) -> None:
        ex, self._executor = self._executor, None
        if ex is None:
            return
        if kill:  # abandon in-flight instances: their outputs are rewritten by the next delivery
            for pid in list(ex._processes or {}):  # noqa: SLF001
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        ex.shutdown(wait=not kill, cancel_futures=True)

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        """``fn`` over the items, one item per process task (`convert_series` hands chunks of
        instances); results in order; raises ShutdownRequested past the deadline, PoolCrashed on
        a crash."""
        pool = self._pool()
        try:
            futures = [pool.submit(fn, item) for item in items]
        except BrokenProcessPool as err:
            self.close(kill=True)
            raise PoolCrashed("a worker process died while converting this series") from err
        try:
            for future in futures:
                while True:
                    if _deadline is not None and time.monotonic() >= _deadline:
                        self.close(kill=True)
                        raise ShutdownRequested("the soft-shutdown timeout ran out before the series finished")
                    try:
                        result = future.result(timeout=0.2)
                        break
                    except FutureTimeout:
                        continue
                yield result
        except BrokenProcessPool as err:
            self.close(kill=True)
            raise PoolCrashed("a worker process died while converting this series") from err
        except BaseException:
            for future in futures:
                future.cancel()
            raise
