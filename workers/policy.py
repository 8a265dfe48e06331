"""Retry and failure policy for every fleet task, in one place.

- transient faults (S3, Redis) → retry the series with exponential backoff and jitter, bounded;
- permanent faults (a bad message or option) → fail at once with the reason;
- a worker process dying under a job → hand it back, counted in Redis; past the bound the job
  is parked as a dead letter instead of being run again (no crash loop);
- SIGTERM past the soft-shutdown timeout → hand the job back unfinished (never acked).
Every outcome lands in the ledger (`status`) and, for failures, in a record in the bucket.
"""
from __future__ import annotations

import functools
import os
import random
import socket
import time
from collections.abc import Callable

from celery.exceptions import Reject

from shared.errors import BrokerError, ConfigError, DicomfleetError, Transient
from shared.jobs import SeriesMessage, failure_record
from shared.ledger import Ledger
from shared.settings import Settings
from shared.store import open_store

from . import metrics
from .pool import PoolCrashed, ShutdownRequested


def backoff(attempt: int, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Seconds before retry ``attempt`` (0-based): exponential, capped, with equal jitter so a
    fleet that failed together does not retry together."""
    delay = min(cap, base * (2 ** attempt))
    return delay / 2 + random.uniform(0, delay / 2)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@functools.lru_cache(maxsize=1)
def settings() -> Settings:
    return Settings.from_env()


@functools.lru_cache(maxsize=1)
def ledger() -> Ledger:
    return Ledger(settings())


class PatientLedger:
    """The ledger with every call retried on BrokerError with backoff and jitter, at most
    DICOMFLEET_MAX_RETRIES times: a series that finishes while Redis restarts is booked once Redis
    is back instead of failing the task (its message could not be acked then either)."""

    def __init__(self, book: Ledger, s: Settings) -> None:
        self._book, self._settings = book, s

    def __getattr__(self, name: str):
        call = getattr(self._book, name)

        def patient(*args, **kwargs):
            for attempt in range(self._settings.max_retries + 1):
                try:
                    return call(*args, **kwargs)
                except BrokerError:
                    if attempt == self._settings.max_retries:
                        raise
                    time.sleep(backoff(attempt, cap=self._settings.retry_backoff_max))
        return patient


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:300] if isinstance(err, DicomfleetError) else f"internal error ({type(err).__name__}: {text[:200]})"


def _record_failure(msg: SeriesMessage, code: str, reason: str, deliveries: int) -> None:
    """Best effort: the failure record in the bucket (the ledger has it regardless)."""
    try:
        open_store(msg.dest).write(msg.failure_key, failure_record(msg, code, reason, deliveries))
    except DicomfleetError:
        pass


def summary(manifest: dict) -> tuple[dict, list[str]]:
    """Counts (with the JPEG outputs below the SSIM threshold, when JPEG was asked for) and up to
    five distinct instance failure reasons, for the ledger (no PHI)."""
    reasons = list(dict.fromkeys(f"{e['index']:04d}: {e['reason']}" for e in manifest.get("errors", [])))
    counts = dict(manifest["counts"])
    if "below_ssim_threshold" in manifest:
        counts["below_ssim_threshold"] = manifest["below_ssim_threshold"]
    return counts, reasons[:5]


def series_task(run: Callable[[SeriesMessage], dict]) -> Callable:
    """Wrap ``run(message) -> manifest`` as a bound Celery task body with the fleet's policy."""

    def task(self, message: dict) -> dict:
        s = settings()
        book = PatientLedger(ledger(), s)
        try:
            msg = SeriesMessage.from_json(message)
        except ConfigError as err:  # nothing to retry: a malformed message never gets better
            job = message.get("job_id") if isinstance(message, dict) else None
            if isinstance(job, str) and job:
                book.failed(job, err.code, str(err))
            metrics.observe_series("failed", code=err.code)
            return {"job_id": job, "state": "failed", "reason": str(err)}

        deliveries = book.started(msg.job_id, worker_name())
        if deliveries > s.max_redeliveries + 1:
            reason = (f"dead letter: a worker died under this job {deliveries - 1} times "
                      f"(DICOMFLEET_MAX_REDELIVERIES={s.max_redeliveries})")
            book.dead(msg.job_id, reason, msg.to_json(), deliveries - 1)
            _record_failure(msg, "dead_letter", reason, deliveries - 1)
            metrics.count_dead_letter("dead_letter")
            metrics.observe_series("dead", code="dead_letter", priority=msg.priority)
            return {"job_id": msg.job_id, "state": "dead", "reason": reason}

        started = time.perf_counter()
        try:
            manifest = run(msg)
        except ShutdownRequested as err:
            book.requeued(msg.job_id, str(err))
            raise Reject(str(err), requeue=True) from err
        except PoolCrashed as err:
            book.crashed(msg.job_id, str(err))
            raise Reject(str(err), requeue=True) from err
        except Transient as err:
            attempt = self.request.retries
            if attempt >= s.max_retries:
                reason = f"gave up after {attempt} retries: {err}"
                book.failed(msg.job_id, err.code, reason)
                _record_failure(msg, err.code, reason, deliveries)
                metrics.observe_series("failed", code=err.code, priority=msg.priority)
                return {"job_id": msg.job_id, "state": "failed", "reason": reason}
            countdown = backoff(attempt, cap=s.retry_backoff_max)
            book.retrying(msg.job_id, str(err), attempt + 1, countdown)
            raise self.retry(countdown=countdown, max_retries=None, exc=err) from err
        except Exception as err:  # permanent, or a bug of ours: fail this job, keep the worker
            code = err.code if isinstance(err, DicomfleetError) else "internal"
            book.failed(msg.job_id, code, _one_line(err))
            _record_failure(msg, code, _one_line(err), deliveries)
            metrics.observe_series("failed", code=code, priority=msg.priority)
            return {"job_id": msg.job_id, "state": "failed", "reason": _one_line(err)}

        counts, failures = summary(manifest)
        try:
            open_store(msg.dest).delete(msg.failure_key)  # a stale failure record from an earlier try
        except DicomfleetError:
            pass
        book.done(msg.job_id, counts, failures)
        metrics.observe_series("partial" if counts.get("failed") else "done",
                               seconds=time.perf_counter() - started, priority=msg.priority)
        return {"job_id": msg.job_id, "state": "done", "counts": counts}

    task.__name__, task.__qualname__, task.__doc__ = run.__name__, run.__qualname__, run.__doc__
    task.__module__ = run.__module__
    return task
