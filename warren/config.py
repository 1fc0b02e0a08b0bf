"""One typed settings object for every warren process.

Settings come from four places, strongest first: command-line flags (passed in as
overrides), ``WARREN_*`` environment variables, a TOML config file, and the defaults below.
Nothing else in the code base reads the environment, so this file is the full list of knobs.

The config file is the one ``WARREN_CONFIG`` names, else ``config.toml`` in the platform's
user config directory (``~/.config/warren/config.toml`` on Linux), if it exists. Its keys
are the settings' names, the env var's without ``WARREN_`` in lower case
(``amqp_url = "amqp://me:secret@host/%2F"``). It may hold a password, so a file that
anyone but its owner can read is refused.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from warren import topology
from warren.errors import UsageError
from warren.topology import QUEUE_TYPES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

DEFAULT_AMQP_URL = "amqp://guest:guest@localhost:5672/%2F"
MIB = 1024 * 1024
CONFIG_ENV = "WARREN_CONFIG"  # names the config file; not a setting itself


@dataclass(frozen=True)
class Settings:
    """Every setting a warren process reads; the env var is WARREN_ + the upper-cased name."""

    amqp_url: str = DEFAULT_AMQP_URL
    data_dir: Path | None = None  # each service has its own default under .warren/
    name: str = ""  # a worker's name (w1, w2, ...)
    client_name: str = ""  # shown in the management UI and the manager's logs
    chunk_size: int = 4 * MIB  # the largest sealed chunk, and pack, a message carries
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
    scrub_interval: float = 604800.0  # seconds within which a worker re-reads every blob
    scrub_rate: float = 32 * MIB  # bytes a second a worker's scrub reads, at most
    # The manager's broker user: a worker takes commands only from it. Empty: only from
    # its own user (every service and client sharing one login, where nothing can tell
    # senders apart anyway).
    manager_user: str = ""
    tls_ca_file: str = ""  # amqps://: PEM bundle that signed the broker's certificate
    tls_cert_file: str = ""  # amqps://: a client certificate (PEM), if the broker asks for one
    tls_key_file: str = ""  # its private key, unless the certificate file holds it
    admin_url: str = ""  # management HTTP API with an administrator's login (manager users)
    # The manager's own key, which seals the records workers keep beside their blobs; made
    # there on the first start. Empty: manager.key in the manager's data dir. Standby
    # managers, and one rebuilding on an empty data dir, must read the same file.
    manager_key_file: str = ""
    # A file holding the owner's password, which opens the owner's key (client/owner.py);
    # empty: asked on the terminal. Only its owner may be able to read it.
    password_file: str = ""
    # scrypt's cost for keys wrapped from now on (warren/ownerkey.py). FOR TESTS ONLY: the
    # suite lowers it to run many commands fast; a key records its own cost and opens with
    # any setting. Lowering it makes a stolen wrapped key cheaper to guess at.
    scrypt_n: int = 2**15

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
        """Build settings from the config file, the environment and then flags (None flags
        are ignored).

        With ``environ`` given (tests, compose checks), only a ``WARREN_CONFIG`` in it names
        a config file: the user's own file is never read behind the caller's back.
        """
        return cls.load_with_sources(overrides, environ)[0]

    @classmethod
    def load_with_sources(
        cls,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> tuple[Settings, dict[str, str]]:
        """``load``, and where each setting came from: ``default``, ``config file``,
        ``env WARREN_X`` or ``flag`` (``warren config`` shows them)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        sources = {f.name: "default" for f in fields(cls)}
        path = config_path(env, user_dir=environ is None)
        if path is not None:
            for key, raw in read_config_file(path).items():
                f = _field(cls, key, where=str(path))
                values[key] = _convert(f, raw, where=f"{key} in {path}")
                sources[key] = "config file"
        for f in fields(cls):
            var = "WARREN_" + f.name.upper()
            raw = env.get(var)
            if raw is not None and raw != "":
                values[f.name] = _convert(f, raw)
                sources[f.name] = f"env {var}"
        for key, value in (overrides or {}).items():
            if value is not None:
                values[key] = _convert(_field(cls, key), value)
                sources[key] = "flag"
        settings = cls(**values)
        settings.validate()
        return settings, sources

    def validate(self) -> None:
        if not self.amqp_urls:
            raise UsageError("WARREN_AMQP_URL is empty: give at least one amqp:// URL.")
        for url in self.amqp_urls:
            if urlsplit(url).scheme not in ("amqp", "amqps"):
                raise UsageError(f"{redact(url)} is not an amqp:// or amqps:// URL.")
        top = topology.max_chunk_size()  # a chunk and its headers fit the broker's messages
        if self.chunk_size < 1024 or self.chunk_size > top:
            raise UsageError(
                f"WARREN_CHUNK_SIZE must be between 1 KiB and {top // MIB} MiB (RabbitMQ "
                f"takes messages of at most {topology.MAX_MESSAGE_SIZE // MIB} MiB)."
            )
        if self.queue_type not in QUEUE_TYPES:
            raise UsageError("WARREN_QUEUE_TYPE must be classic or quorum.")
        if self.scrypt_n < 2 or self.scrypt_n & (self.scrypt_n - 1) or self.scrypt_n > 2**20:
            raise UsageError("WARREN_SCRYPT_N must be a power of two from 2 to 1048576.")
        for name in ("window", "prefetch"):
            if getattr(self, name) < 1:
                raise UsageError(f"WARREN_{name.upper()} must be at least 1.")


def config_path(environ: Mapping[str, str], user_dir: bool = True) -> Path | None:
    """The config file to read: the one ``WARREN_CONFIG`` names (it must exist), else
    ``config.toml`` in the user config directory if there is one there (and ``user_dir``)."""
    named = environ.get(CONFIG_ENV, "")
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise UsageError(f"{CONFIG_ENV} names {path}, which is not a file.")
        return path
    if not user_dir:
        return None
    path = default_config_path()
    return path if path.is_file() else None


def default_config_path() -> Path:
    """Where the config file lives unless ``WARREN_CONFIG`` says otherwise."""
    import platformdirs  # only when there is no WARREN_CONFIG: services seldom need it

    return Path(platformdirs.user_config_dir("warren")) / "config.toml"


def read_config_file(path: Path) -> dict[str, Any]:
    """The settings in a TOML file that only its owner can read (it may hold a password)."""
    try:
        mode = path.stat().st_mode
        if os.name == "posix" and mode & 0o077:
            raise UsageError(
                f"{path} can be read by others (mode {mode & 0o777:o}) and may hold a "
                f"password, so it is not used: run chmod 600 {path}."
            )
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise UsageError(f"cannot read the config file {path}: {exc.strerror or exc}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}.") from None
    return data


def _field(cls: type[Settings], key: str, where: str = "") -> dataclasses.Field[Any]:
    for f in fields(cls):
        if f.name == key:
            return f
    if where:
        raise UsageError(
            f"{where} sets {key!r}, which is not a setting (the names are the WARREN_* "
            "variables' in lower case without WARREN_, e.g. amqp_url)."
        )
    raise KeyError(key)


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


def _convert(f: dataclasses.Field[Any], raw: Any, where: str = "") -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if isinstance(raw, (dict, list)):
            raise ValueError(raw)
        if kind == "bool":
            if isinstance(raw, bool):
                return raw
            if str(raw).strip().lower() in TRUE + FALSE:
                return str(raw).strip().lower() in TRUE
            raise ValueError(raw)
        if kind == "int":
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind.startswith("Path"):
            return Path(raw)
        return str(raw)
    except (TypeError, ValueError):
        what = f"{where} ({raw!r})" if where else f"WARREN_{f.name.upper()}={raw!r}"
        raise UsageError(f"{what} is not a valid {kind}.") from None


SECRET_WORDS = ("password", "secret", "token")


def shown(name: str, value: Any) -> str:
    """A setting as ``warren config`` prints it: passwords in URLs (and any setting whose
    name says it is secret) masked."""
    if value is None:
        return ""
    if any(word in name for word in SECRET_WORDS):
        return "****" if value else ""
    text = str(value)
    if "://" in text:
        return ",".join(mask(u.strip()) for u in text.split(","))
    return text


def mask(url: str) -> str:
    """The URL with its password replaced by ``****`` (``redact`` drops it altogether)."""
    return _without_password(url, "****")


def redact(url: str) -> str:
    """The URL without its password, for logs and messages."""
    return _without_password(url, None)


def _without_password(url: str, stand_in: str | None) -> str:
    """The URL with its password replaced by ``stand_in``, or dropped (None)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    login = f"{user}:{stand_in}" if stand_in is not None else user
    netloc = f"{login}@{host}" if login else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
