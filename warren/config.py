"""One typed settings object for every warren process.

Settings come from three places, strongest first: command-line flags (passed in as
overrides), ``WARREN_*`` environment variables, and the defaults below. Nothing else in
the code base reads the environment, so this file is the full list of knobs.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from warren.errors import UsageError
from warren.topology import QUEUE_TYPES

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/%2F"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Every setting a warren process reads; the env var is WARREN_ + the upper-cased name."""

    amqp_url: str = DEFAULT_AMQP_URL
    data_dir: Path | None = None  # each service has its own default under .warren/
    name: str = ""  # a worker's name (w1, w2, ...)
    client_name: str = ""  # shown in the management UI and the manager's logs
    chunk_size: int = MIB
    window: int = 16  # publishes in flight before waiting for a confirm
    prefetch: int = 32  # unacked deliveries a consumer holds
    heartbeat_interval: float = 2.0  # seconds between worker heartbeats to the manager
    dead_after: float = 10.0  # seconds of silence before the manager marks a worker dead
    amqp_heartbeat: int = 30  # AMQP heartbeat negotiated with the broker, seconds
    blocked_timeout: float = 60.0  # seconds a publisher waits while the broker blocks it
    connect_timeout: float = 10.0  # seconds a client tries to reach the broker
    request_timeout: float = 15.0  # seconds a client waits for the manager to answer
    transfer_timeout: float = 60.0  # seconds a transfer may make no progress
    log_level: str = "INFO"
    metrics_port: int = 0  # Prometheus /metrics on this port; 0 = off
    metrics_addr: str = "127.0.0.1"  # 0.0.0.0 to let a Prometheus elsewhere scrape it
    queue_type: str = "classic"  # "quorum" on a RabbitMQ cluster
    repair_concurrency: int = 2  # copies the manager runs at once to restore replica counts
    finalize_delay: float = 0.0  # fault injection for tests: a slow disk when finishing a file
    gc_delay: float = 3600.0  # seconds after a blob's last version goes before it is deleted
    upload_expiry: float = 86400.0  # seconds before an unfinished upload is abandoned

    @property
    def amqp_urls(self) -> list[str]:
        """The broker URLs to try in order; a cluster is given as a comma-separated list."""
        return [u.strip() for u in self.amqp_url.split(",") if u.strip()]

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Settings:
        """Build settings from the environment and then flags (None flags are ignored)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get("WARREN_" + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f, raw)
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = _convert(_field(cls, key), value)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.amqp_urls:
            raise UsageError("WARREN_AMQP_URL is empty: give at least one amqp:// URL.")
        for url in self.amqp_urls:
            if urlsplit(url).scheme not in ("amqp", "amqps"):
                raise UsageError(f"{redact(url)} is not an amqp:// or amqps:// URL.")
        if self.chunk_size < 1024 or self.chunk_size > 64 * MIB:
            raise UsageError("WARREN_CHUNK_SIZE must be between 1 KiB and 64 MiB.")
        if self.queue_type not in QUEUE_TYPES:
            raise UsageError("WARREN_QUEUE_TYPE must be classic or quorum.")
        for name in ("window", "prefetch"):
            if getattr(self, name) < 1:
                raise UsageError(f"WARREN_{name.upper()} must be at least 1.")


def _field(cls: type[Settings], key: str) -> dataclasses.Field[Any]:
    for f in fields(cls):
        if f.name == key:
            return f
    raise KeyError(key)


def _convert(f: dataclasses.Field[Any], raw: Any) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("Path"):
            return Path(raw)
        return str(raw)
    except ValueError:
        raise UsageError(f"WARREN_{f.name.upper()}={raw!r} is not a valid {kind}.") from None


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    netloc = f"{parts.username}@{host}" if parts.username else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
