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
from collections import Counter
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, push_to_gateway
from prometheus_client.core import GaugeMetricFamily

from shared.errors import reason_code
from shared.settings import Settings

JOB = "dicomfleet-producer"
#: `SubmittedJob.outcome` → label value
OUTCOMES = {"queued": "queued", "already done": "already_done", "in flight": "in_flight"}
log = logging.getLogger(__name__)


class _Run:
    """A collector of one run's figures: metric families built at collect time, never the global
    value classes (which `workers.metrics` may have switched to shared mmap files in this process)."""

    def __init__(self, result, now: float | None) -> None:
        self.result, self.now = result, now

    def collect(self) -> Iterable[GaugeMetricFamily]:
        r = self.result
        yield GaugeMetricFamily("dicomfleet_producer_series", "Series found by the last submit", len(r.jobs))
        jobs = GaugeMetricFamily("dicomfleet_producer_jobs", "Series jobs of the last submit by outcome",
                                 labels=["outcome"])
        by_outcome = Counter(OUTCOMES.get(j.outcome, "other") for j in r.jobs)
        for label in sorted(set(OUTCOMES.values()) | set(by_outcome)):
            jobs.add_metric([label], by_outcome[label])
        yield jobs
        files = GaugeMetricFamily("dicomfleet_producer_files_skipped",
                                  "Files the last submit skipped, by reason code", labels=["reason"])
        by_reason: Counter = Counter()
        for reason, count in r.skipped.items():
            by_reason[reason_code(getattr(reason, "code", None) or "other")] += count
        for label, count in sorted(by_reason.items()):
            files.add_metric([label], count)
        yield files
        yield GaugeMetricFamily("dicomfleet_producer_instances_queued",
                                "Instances in the series jobs the last submit queued",
                                sum(j.instances for j in r.queued))
        yield GaugeMetricFamily("dicomfleet_producer_scan_seconds",
                                "Seconds the last submit spent scanning headers", r.scan_seconds)
        yield GaugeMetricFamily("dicomfleet_producer_duration_seconds", "Seconds the last submit took in all",
                                r.seconds)
        yield GaugeMetricFamily("dicomfleet_producer_last_success_timestamp_seconds",
                                "Unix time the last submit finished", time.time() if self.now is None else self.now)


def registry(result, *, now: float | None = None) -> CollectorRegistry:
    """One run's figures (a `producer.submit.SubmitResult`) in a registry of their own."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Run(result, now))
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
