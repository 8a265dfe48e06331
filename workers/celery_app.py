"""The Celery app and the configuration the fleet's guarantees rest on (issue 4, "Guarantees").

- JSON only: no pickle anywhere (tasks, results, events).
- At-least-once: ``acks_late`` + ``reject_on_worker_lost`` + prefetch multiplier 1, so a message is
  acked only after its series finished and the backlog stays visible in Redis for the autoscaler.
- One visibility timeout, the same for the broker and the result backend, longer than any series.
- Two named queues, the real-time one first in every worker's list and drained first
  (``queue_order_strategy=priority``); no Redis priority steps, so each queue is one list whose
  length KEDA can read under its own name.
"""
from __future__ import annotations

import logging

from celery import Celery
from kombu import Exchange, Queue

from shared.settings import Settings

SERIES_TASK = "dicomfleet.convert_series"

# Celery's pool logs every task's arguments at DEBUG ("TaskPool: Apply … (args: …)"), and a
# series job's arguments hold its sources' paths: a worker at --loglevel DEBUG must not write
# them. The pool reads its level once, when it starts, after this module is imported.
logging.getLogger("celery.pool").setLevel(logging.INFO)


def transport_options(s: Settings) -> dict:
    """Redis transport options shared by broker and result backend."""
    # A worker scans for messages whose visibility timeout lapsed (their worker died) this often.
    restore_every = max(1, min(10, s.visibility_timeout // 10))
    return {
        "visibility_timeout": s.visibility_timeout,
        "queue_order_strategy": "priority",
        "priority_steps": [0],
        "unacked_key": f"{s.key_prefix}:unacked",
        "unacked_index_key": f"{s.key_prefix}:unacked_index",
        "unacked_mutex_key": f"{s.key_prefix}:unacked_mutex",
        "unacked_restore_interval": restore_every,
        "unacked_restore_throttle": 1,
    }


def celery_config(s: Settings) -> dict:
    options = transport_options(s)
    return {
        "broker_url": s.broker,
        "result_backend": s.backend,
        "broker_transport_options": options,
        "result_backend_transport_options": {"visibility_timeout": s.visibility_timeout},
        "broker_connection_retry_on_startup": True,
        # JSON only
        "task_serializer": "json",
        "result_serializer": "json",
        "event_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # at-least-once
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        # queues: high first; one exchange per queue, named like it
        "task_queues": [Queue(q, Exchange(q, type="direct"), routing_key=q) for q in (s.queue_high, s.queue)],
        "task_default_queue": s.queue,
        "task_default_exchange": s.queue,
        "task_default_routing_key": s.queue,
        "task_create_missing_queues": False,
        # a worker runs one series at a time; the series' instances go to its process pool
        "worker_pool": "solo",
        "worker_concurrency": 1,
        "worker_enable_remote_control": False,
        "worker_send_task_events": False,
        "task_send_sent_event": False,
        "worker_hijack_root_logger": False,
        "result_expires": 7 * 24 * 3600,
        "result_extended": False,
    }


def make_app(settings: Settings | None = None) -> Celery:
    app = Celery("dicomfleet")
    app.conf.update(celery_config(settings or Settings.from_env()))
    return app


app = make_app()
