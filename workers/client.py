"""Enqueueing from the producer: the one place outside the worker that touches Celery."""
from __future__ import annotations

from shared.jobs import SeriesMessage
from shared.settings import Settings

from .celery_app import SERIES_TASK, make_app


class Enqueuer:
    """Publishes series jobs to the normal or the real-time queue (one round trip per series)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = make_app(settings)

    def queue_for(self, priority: str) -> str:
        return self.settings.queue_high if priority == "high" else self.settings.queue

    def enqueue(self, message: SeriesMessage) -> str:
        """Publish ``message``. Its sources' paths (a folder may be named after a patient) travel
        in the body only: the headers' ``argsrepr``, which Celery shows in events and logs in place
        of the arguments, says which job and how many instances."""
        queue = self.queue_for(message.priority)
        self.app.send_task(SERIES_TASK, args=[message.to_json()], task_id=message.job_id,
                           queue=queue, routing_key=queue, exchange=queue,
                           argsrepr=f"[series job {message.job_id}: {len(message.sources)} instances]",
                           kwargsrepr="{}")
        return queue
