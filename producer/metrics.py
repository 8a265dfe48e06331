"""Prometheus metrics of one `dicomfleet submit` run, pushed to a Pushgateway at its end.

The producer is a short-lived batch Job that nothing scrapes, so its figures are pushed
(``DICOMFLEET_PUSHGATEWAY_URL``; empty means no push) under job ``dicomfleet-producer``, grouped by
the fleet's key prefix and the priority: each run replaces the previous run's figures. Gauges,
not counters: a push is a snapshot of one run. Labels come from closed sets (job outcomes, the
error classes' codes via `shared.errors.reason_code`), never paths, UIDs or job ids.
"""
from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from shared.errors import reason_code
from shared.settings import Settings

JOB = "dicomfleet-producer"
#: `SubmittedJob.outcome` → label value
OUTCOMES = {"queued": "queued", "already done": "already_done", "in flight": "in_flight"}
log = logging.getLogger(__name__)


def registry(result, *, now: float | None = None) -> CollectorRegistry:
    """One run's figures (a `producer.submit.SubmitResult`) in a registry of their own."""
    reg = CollectorRegistry()

    def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=reg)

    gauge("dicomfleet_producer_series", "Series found by the last submit").set(len(result.jobs))
    jobs = gauge("dicomfleet_producer_jobs", "Series jobs of the last submit by outcome", ("outcome",))
    for label in OUTCOMES.values():
        jobs.labels(label).set(0)
    for job in result.jobs:
        jobs.labels(OUTCOMES.get(job.outcome, "other")).inc()
    files = gauge("dicomfleet_producer_files_skipped", "Files the last submit skipped, by reason code", ("reason",))
    for reason, count in result.skipped.items():
        files.labels(reason_code(getattr(reason, "code", None) or "other")).inc(count)
    gauge("dicomfleet_producer_instances_queued", "Instances in the series jobs the last submit queued").set(
        sum(j.instances for j in result.queued))
    gauge("dicomfleet_producer_scan_seconds", "Seconds the last submit spent scanning headers").set(
        result.scan_seconds)
    gauge("dicomfleet_producer_duration_seconds", "Seconds the last submit took in all").set(result.seconds)
    gauge("dicomfleet_producer_last_success_timestamp_seconds", "Unix time the last submit finished").set(
        time.time() if now is None else now)
    return reg


def families() -> set[str]:
    """Every family name the producer pushes."""
    from producer.submit import SubmitResult

    return {m.name for m in registry(SubmitResult()).collect()}


def push(result, settings: Settings, *, priority: str = "normal", timeout: float = 10.0) -> bool:
    """Push one run's figures when a Pushgateway is configured; a failure logs one line and is
    otherwise ignored (the jobs are queued already). True when pushed."""
    if not settings.pushgateway_url:
        return False
    try:
        push_to_gateway(settings.pushgateway_url, job=JOB, registry=registry(result), timeout=timeout,
                        grouping_key={"fleet": settings.key_prefix, "priority": priority})
    except Exception as err:  # noqa: BLE001 (urllib/socket errors of every kind: never fail the submit)
        log.warning("metrics not pushed to the Pushgateway: %s", _one_line(err))
        return False
    return True


def _one_line(err: BaseException) -> str:
    text = " ".join(str(getattr(err, "reason", None) or err).split())
    return f"{type(err).__name__}: {text}"[:200]
