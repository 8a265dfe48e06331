"""`dicomfleet submit`: scan sources (headers only), one job per series, enqueue what is not done.

A job id is derived from the sources' content (S3 ETags or SHA-256 of local files), the target
and the parameters, so a re-submission of the same work is recognised: a series whose manifest
at the target is complete is skipped, and one already queued or running is not queued twice.
"""
from __future__ import annotations

import json
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.errors import BrokerError, DicomfleetError
from shared.jobs import SeriesMessage, job_id, manifest_complete
from shared.ledger import TERMINAL, Ledger
from shared.options import ConvertOptions
from shared.settings import Settings
from shared.runtime import usable_cores
from shared.store import Store, is_s3, open_store, source_fingerprints

from .local import MapFn, pool_map, series_prefix
from .scan import scan

IN_FLIGHT = ("queued", "running", "retrying")


@dataclass
class SubmittedJob:
    job_id: str
    prefix: str
    instances: int
    outcome: str  # queued | already done | in flight
    queue: str = ""


@dataclass
class SubmitResult:
    jobs: list[SubmittedJob] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    seconds: float = 0.0
    scan_seconds: float = 0.0  # headers read, series planned and fingerprinted

    @property
    def queued(self) -> list[SubmittedJob]:
        return [j for j in self.jobs if j.outcome == "queued"]


def _done_at_target(store: Store, msg: SeriesMessage, fingerprints: list[str]) -> bool:
    """The manifest is the commit marker: present and complete for this job means done."""
    if not store.exists(msg.manifest_key):
        return False
    try:
        manifest = json.loads(store.read(msg.manifest_key))
    except (ValueError, DicomfleetError):
        return False
    return manifest_complete(manifest, msg, fingerprints)


def plan(sources: list[str], dest: str, opts: ConvertOptions, priority: str = "normal",
         *, map_fn: MapFn = map) -> tuple[list[tuple[SeriesMessage, list[str]]], Counter]:
    """One message per series found under the sources, with its sources' fingerprints.
    ``map_fn``: how headers are read and local files hashed, e.g. over a process pool."""
    found = scan(sources, max_pixels=opts.max_pixels, map_fn=map_fn)
    messages = []
    for series in found.series:
        prefix = series_prefix(series, opts)
        refs = [i.source for i in series.instances]
        fps = [fp for chunk in map_fn(source_fingerprints, [refs[i:i + 16] for i in range(0, len(refs), 16)])
               for fp in chunk]
        messages.append((SeriesMessage(job_id(prefix, dest, fps, opts), prefix, dest, tuple(refs), opts,
                                       priority), fps))
    return messages, found.skipped


def submit(sources: list[str], dest: str, opts: ConvertOptions, *, priority: str = "normal",
           settings: Settings | None = None) -> SubmitResult:
    """Enqueue every series not done and not in flight; Redis round trips are per series.
    With ``pushgateway_url`` set, the run's figures are pushed at the end (`producer.metrics`)."""
    from workers.client import Enqueuer  # the only Celery import on this side

    from .metrics import push

    started = time.perf_counter()
    s = settings or Settings.from_env()
    # a worker resolves a relative path in its own directory: local paths travel absolute
    sources = [src if is_s3(src) else os.path.abspath(src) for src in sources]
    dest = dest if is_s3(dest) else os.path.abspath(dest)
    store = open_store(dest)
    with ExitStack() as stack:
        map_fn: MapFn = map
        cores = usable_cores()
        if cores > 1 and not any(is_s3(src) for src in sources):  # S3 clients are not shared across fork
            map_fn = pool_map(stack.enter_context(ProcessPoolExecutor(cores)), cores)
        messages, skipped = plan(sources, dest, opts, priority, map_fn=map_fn)
    result = SubmitResult(skipped=skipped, scan_seconds=time.perf_counter() - started)
    ledger = Ledger(s)
    known = ledger.jobs([m.job_id for m, _ in messages])
    enqueuer = Enqueuer(s)
    for msg, fps in messages:
        state = known.get(msg.job_id, {}).get("state")
        if state in IN_FLIGHT:
            result.jobs.append(SubmittedJob(msg.job_id, msg.prefix, len(msg.sources), "in flight"))
            continue
        if _done_at_target(store, msg, fps):
            result.jobs.append(SubmittedJob(msg.job_id, msg.prefix, len(msg.sources), "already done"))
            continue
        queue = enqueuer.queue_for(priority)
        ledger.queued(msg.job_id, prefix=msg.prefix, instances=len(msg.sources), priority=priority, queue=queue)
        enqueuer.enqueue(msg)
        result.jobs.append(SubmittedJob(msg.job_id, msg.prefix, len(msg.sources), "queued", queue))
    result.seconds = time.perf_counter() - started
    push(result, s, priority=priority)
    return result


def wait(job_ids: list[str], *, settings: Settings | None = None, timeout: float | None = None,
         poll: float = 0.5, on_poll: Callable[[dict[str, dict]], None] | None = None) -> dict[str, dict]:
    """Poll the ledger (one round trip per poll) until every job is done, failed or dead; Redis
    unreachable for a while (restarting, failing over) is polled through until the timeout."""
    ledger = Ledger(settings or Settings.from_env())
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            records = ledger.jobs(job_ids)
        except BrokerError:
            if deadline is not None and time.monotonic() > deadline:
                raise
            time.sleep(poll)
            continue
        if on_poll:
            on_poll(records)
        if all(records.get(j, {}).get("state") in TERMINAL for j in job_ids):
            return records
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{sum(records.get(j, {}).get('state') not in TERMINAL for j in job_ids)} "
                               f"job(s) not finished after {timeout:.0f} s")
        time.sleep(poll)
