"""The fleet's tasks: stable names, one JSON argument, one call into the shared chain.

Retries, failures and redelivery bounds are `policy.series_task`'s business, not the task's.
"""
from __future__ import annotations

from celery.signals import worker_shutting_down

from shared.chain import convert_series
from shared.jobs import SeriesMessage
from shared.runtime import opencv, usable_cores
from shared.store import preload_s3

from . import metrics
from .celery_app import SERIES_TASK, app
from .policy import series_task, settings
from .pool import InstancePool, request_shutdown

_pool: InstancePool | None = None


def instance_pool() -> InstancePool:
    """This worker's processes (DICOMFLEET_WORKER_CONCURRENCY, default one per core)."""
    global _pool
    if _pool is None:
        _pool = InstancePool(settings().worker_concurrency or usable_cores())
    return _pool


@app.task(name=SERIES_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
@series_task
def convert_series_task(message: SeriesMessage) -> dict:
    """One series through the chain that `convert` runs, its instances over this worker's pool."""
    pool = instance_pool()
    return convert_series(message.series_job(), map_fn=pool.map, processes=pool.processes,
                          on_record=metrics.observe_instance)


metrics.install(app, settings())  # /metrics, /healthz, /readyz on DICOMFLEET_METRICS_PORT
preload_s3()  # the pool's processes are forked from this one: imported once, before the fork
opencv()


@worker_shutting_down.connect
def _soft_shutdown(**_) -> None:
    """SIGTERM: finish the job in hand within DICOMFLEET_SOFT_SHUTDOWN_TIMEOUT, else hand it back."""
    request_shutdown(settings().soft_shutdown_timeout)
