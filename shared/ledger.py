"""Job states in Redis: what `status` shows, and the redelivery count that bounds poison jobs.

Kept outside the worker process on purpose: a job that kills its worker cannot lose its own
count. Every state change is one pipelined round trip per series (never per slice). Keys live
under ``<DICOMFLEET_KEY_PREFIX>:`` and expire after a week.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import BrokerError
from .settings import Settings

TTL = 7 * 24 * 3600
#: States a job goes through; ``retrying`` and ``running`` count as running, ``dead`` as failed.
STATES = ("queued", "running", "retrying", "done", "failed", "dead")
TERMINAL = ("done", "failed", "dead")


class Ledger:
    """Job records ``<prefix>:job:<id>``, an index ``<prefix>:jobs`` and dead letters ``<prefix>:dead``."""

    def __init__(self, settings: Settings, client=None) -> None:
        import redis

        self.settings = settings
        self.kp = settings.key_prefix
        self.redis = client or redis.Redis.from_url(
            settings.broker, socket_timeout=10, socket_connect_timeout=3, decode_responses=True)

    def _job(self, job_id: str) -> str:
        return f"{self.kp}:job:{job_id}"

    @property
    def dead_key(self) -> str:
        return f"{self.kp}:dead"

    @property
    def running_key(self) -> str:
        """A list of the jobs a worker holds (running, or waiting out a retry's countdown), each
        once: the queues' lists count only jobs not yet taken, and an autoscaler that saw those
        alone would scale busy workers away (KEDA reads this list's length as a third trigger)."""
        return f"{self.kp}:running"

    @contextmanager
    def _pipe(self) -> Iterator:
        import redis

        try:
            pipe = self.redis.pipeline(transaction=True)
            yield pipe
        except redis.RedisError as err:
            raise BrokerError(f"job state store unreachable ({type(err).__name__})") from err

    def _set(self, pipe, job_id: str, fields: dict) -> None:
        pipe.hset(self._job(job_id), mapping={k: _enc(v) for k, v in fields.items()})
        pipe.expire(self._job(job_id), TTL)

    # --- producer side -----------------------------------------------------------------------

    def queued(self, job_id: str, *, prefix: str, instances: int, priority: str, queue: str) -> None:
        now = time.time()
        with self._pipe() as pipe:
            pipe.delete(self._job(job_id))
            self._set(pipe, job_id, {"state": "queued", "prefix": prefix, "instances": instances,
                                     "priority": priority, "queue": queue, "submitted": now})
            pipe.zadd(f"{self.kp}:jobs", {job_id: now})
            pipe.execute()

    # --- worker side -------------------------------------------------------------------------

    def started(self, job_id: str, worker: str) -> int:
        """Count this delivery; return the deliveries that have not ended cleanly, this one included."""
        with self._pipe() as pipe:
            pipe.hincrby(self._job(job_id), "open_deliveries", 1)
            pipe.hincrby(self._job(job_id), "deliveries", 1)
            self._set(pipe, job_id, {"state": "running", "worker": worker, "started": time.time()})
            pipe.zadd(f"{self.kp}:jobs", {job_id: time.time()}, nx=True)
            pipe.lrem(self.running_key, 0, job_id)  # a redelivery after a crash: listed once
            pipe.lpush(self.running_key, job_id)
            pipe.expire(self.running_key, TTL)
            open_deliveries, *_ = pipe.execute()
        return int(open_deliveries)

    def _end(self, job_id: str, fields: dict, *, clean: bool, terminal: bool, held: bool = False) -> None:
        """Record how a delivery ended; unless a worker still ``held`` the job (a retry's countdown
        runs in the worker), it leaves the running list: done, failed, or back in its queue. A job
        whose whole worker died stays listed until its redelivery ends: it is in flight."""
        with self._pipe() as pipe:
            self._set(pipe, job_id, {**fields, "ended": time.time()})
            if terminal:  # finished one way or another: what crashed before was not poison enough
                pipe.hset(self._job(job_id), "open_deliveries", 0)
            elif clean:  # a hand-back (retry, shutdown) is not a crash
                pipe.hincrby(self._job(job_id), "open_deliveries", -1)
            if not held:
                pipe.lrem(self.running_key, 0, job_id)
            pipe.execute()

    def done(self, job_id: str, counts: dict, failures: list[str]) -> None:
        self._end(job_id, {"state": "done", **counts, "failures": failures, "code": "", "reason": ""},
                  clean=True, terminal=True)

    def retrying(self, job_id: str, reason: str, attempt: int, countdown: float) -> None:
        self._end(job_id, {"state": "retrying", "reason": reason, "attempts": attempt,
                           "countdown": round(countdown, 2)}, clean=True, terminal=False, held=True)

    def requeued(self, job_id: str, reason: str) -> None:
        """Handed back unfinished on shutdown: queued again, not counted as a crash."""
        self._end(job_id, {"state": "queued", "reason": reason}, clean=True, terminal=False)

    def crashed(self, job_id: str, reason: str) -> None:
        """A worker process died under the job: the delivery stays counted, the job goes back."""
        self._end(job_id, {"state": "queued", "reason": reason}, clean=False, terminal=False)

    def failed(self, job_id: str, code: str, reason: str) -> None:
        self._end(job_id, {"state": "failed", "code": code, "reason": reason}, clean=True, terminal=True)

    def dead(self, job_id: str, reason: str, message: dict, deliveries: int) -> None:
        """Park a poison job: its state, and a dead-letter record holding the message to replay."""
        record = {"job_id": job_id, "reason": reason, "deliveries": deliveries, "at": time.time(),
                  "message": message}
        with self._pipe() as pipe:
            self._set(pipe, job_id, {"state": "dead", "code": "dead_letter", "reason": reason,
                                     "ended": time.time()})
            pipe.hset(self._job(job_id), "open_deliveries", 0)
            pipe.lpush(self.dead_key, json.dumps(record, sort_keys=True))
            pipe.lrem(self.running_key, 0, job_id)
            pipe.expire(self.dead_key, TTL)  # the message names its sources: kept a week, as jobs are
            pipe.execute()

    # --- readers -----------------------------------------------------------------------------

    def get(self, job_id: str) -> dict | None:
        with self._pipe() as pipe:
            pipe.hgetall(self._job(job_id))
            (raw,) = pipe.execute()
        return _dec(raw) if raw else None

    def jobs(self, job_ids: list[str] | None = None) -> dict[str, dict]:
        """Records of the given jobs (or of every job in the index), in one round trip."""
        with self._pipe() as pipe:
            if job_ids is None:
                job_ids = list(self.redis.zrange(f"{self.kp}:jobs", 0, -1))
            for jid in job_ids:
                pipe.hgetall(self._job(jid))
            rows = pipe.execute()
        return {jid: _dec(raw) for jid, raw in zip(job_ids, rows) if raw}

    def dead_letters(self) -> list[dict]:
        with self._pipe() as pipe:
            pipe.lrange(self.dead_key, 0, -1)
            (rows,) = pipe.execute()
        return [json.loads(r) for r in rows]

    def queue_lengths(self, queues: dict[str, str]) -> dict[str, int]:
        """Messages waiting per queue (each queue is one Redis list named like it)."""
        with self._pipe() as pipe:
            for name in queues.values():
                pipe.llen(name)
            lengths = pipe.execute()
        return {label: int(n) for label, n in zip(queues, lengths)}

    def open_deliveries(self, job_id: str) -> int:
        record = self.get(job_id) or {}
        return int(record.get("open_deliveries", 0))


def _enc(value) -> str:
    return json.dumps(value)


def _dec(raw: dict) -> dict:
    return {k: json.loads(v) for k, v in raw.items()}
