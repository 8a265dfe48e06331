"""Fleet settings: every ``DICOMFLEET_*`` variable the producer and workers read, in one place.

The Helm chart, the docs and the CLI use exactly these names. Secrets (the S3 keys) go through
`shared.options.env`, so ``DICOMFLEET_S3_SECRET_KEY_FILE`` may name a mounted Secret instead.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from urllib.parse import quote, urlsplit, urlunsplit

from .errors import ConfigError
from .options import env

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(f"DICOMFLEET_{name} must be true or false, got {value!r}")


def _number(name: str, value: str, kind: type) -> int | float:
    try:
        number = kind(value)
    except ValueError as err:
        raise ConfigError(f"DICOMFLEET_{name} must be a {kind.__name__}, got {value!r}") from err
    if number < 0:
        raise ConfigError(f"DICOMFLEET_{name} must not be negative, got {value!r}")
    return number


#: the password of a URL's user part, up to the last '@' before the host: on the raw text, as a
#: password pasted unencoded may hold '/', '#' or '?', where a URL parser ends the user part early
_URL_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def _masked(value):
    """A URL with its password replaced by ***; any other value as it is."""
    return _URL_PASSWORD.sub(r"\1***@", value) if isinstance(value, str) else value


@dataclass(frozen=True)
class Settings:
    """The fleet's configuration; field ``x`` is read from ``DICOMFLEET_X`` (upper case)."""

    #: Celery broker (Redis). Key/queue names below keep several fleets apart on one server.
    broker_url: str = "redis://127.0.0.1:6379/0"
    #: Celery result backend and the fleet's job-state store (status, redelivery counts).
    result_backend: str = "redis://127.0.0.1:6379/0"
    #: Redis password, put into both URLs above (percent-encoded) unless they carry one already.
    redis_password: str = ""  # secret: DICOMFLEET_REDIS_PASSWORD or DICOMFLEET_REDIS_PASSWORD_FILE
    #: S3 endpoint as host[:port] (MinIO or any S3); empty means AWS's default endpoint.
    s3_endpoint: str = "127.0.0.1:9000"
    s3_access_key: str = ""  # secret: DICOMFLEET_S3_ACCESS_KEY or DICOMFLEET_S3_ACCESS_KEY_FILE
    s3_secret_key: str = ""  # secret: DICOMFLEET_S3_SECRET_KEY or DICOMFLEET_S3_SECRET_KEY_FILE
    s3_secure: bool = False  # TLS to the S3 endpoint
    s3_region: str = "us-east-1"
    #: Queue names: the batch queue and the real-time queue workers drain first.
    queue: str = "dicomfleet"
    queue_high: str = "dicomfleet.high"
    #: Prefix of every Redis key the fleet itself writes (job states, redelivery counters).
    key_prefix: str = "dicomfleet"
    #: Seconds a taken job stays invisible before Redis redelivers it; must exceed the longest series.
    visibility_timeout: int = 3600
    #: Worker processes per worker pod (0 = one per core).
    worker_concurrency: int = 0
    #: Seconds a worker on SIGTERM keeps working on the job in hand before returning it to the queue.
    soft_shutdown_timeout: float = 60.0
    #: Redeliveries of a job whose worker died under it (counted in Redis); one more death parks it.
    max_redeliveries: int = 3
    #: Retries of a transient fault (S3/Redis unreachable) with exponential backoff and jitter.
    max_retries: int = 8
    retry_backoff_max: float = 30.0
    #: Prometheus metrics port of a worker (0 = no metrics server).
    metrics_port: int = 9808
    #: Prometheus Pushgateway URL `dicomfleet submit` pushes its run's metrics to (empty = no push).
    pushgateway_url: str = ""

    SECRETS = ("s3_access_key", "s3_secret_key", "redis_password")

    @classmethod
    def from_env(cls) -> "Settings":
        """Read every field from its ``DICOMFLEET_`` variable, falling back to the default."""
        values: dict = {}
        for f in fields(cls):
            name = f.name.upper()
            raw = env(name)
            if raw is None:
                continue
            if f.type == "bool":
                values[f.name] = _bool(name, raw)
            elif f.type in ("int", "float"):
                values[f.name] = _number(name, raw, int if f.type == "int" else float)
            else:
                values[f.name] = raw.strip()
        return cls(**values)

    @property
    def broker(self) -> str:
        """The broker URL as clients take it (`redis_url`)."""
        return self.redis_url(self.broker_url)

    @property
    def backend(self) -> str:
        """The result backend's URL as clients take it (`redis_url`)."""
        return self.redis_url(self.result_backend)

    def redis_url(self, url: str) -> str:
        """``url`` with `redis_password` in it, percent-encoded (a managed Redis's token may hold
        '@', '/' or '#'), where it has none; a ``rediss://`` URL verifies the server's certificate
        (``ssl_cert_reqs=required``, which Celery's backend insists be said) unless it says otherwise."""
        parts = urlsplit(url)
        if not parts.hostname:  # a unix socket (unix://, redis+socket://): left exactly as written
            return url
        changed = parts
        if self.redis_password and parts.password is None:  # an ACL user's name is kept
            user = quote(parts.username, safe="") if parts.username else ""
            changed = changed._replace(
                netloc=f"{user}:{quote(self.redis_password, safe='')}@{parts.netloc.rpartition('@')[2]}")
        if parts.scheme == "rediss" and "ssl_cert_reqs" not in parts.query:
            changed = changed._replace(query="&".join(filter(None, (parts.query, "ssl_cert_reqs=required"))))
        return url if changed == parts else urlunsplit(changed)

    @staticmethod
    def env_names() -> list[str]:
        """Every variable name, for docs and the Helm chart's tests."""
        return [f"DICOMFLEET_{f.name.upper()}" for f in fields(Settings)]

    def __repr__(self) -> str:  # never print a secret, nor a password written into a URL
        shown = {f.name: ("***" if f.name in self.SECRETS and getattr(self, f.name) else _masked(getattr(self, f.name)))
                 for f in fields(self)}
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"
