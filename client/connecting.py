"""Opening a session the way a person at a terminal wants it: say at once what it waits
for, suggest ``make up`` when nothing answers, and with ``-v`` log every message."""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.status import Status

from client.session import Session
from warren.broker import Connection
from warren.config import Settings, redact
from warren.errors import BrokerRefused, BrokerUnavailable
from warren.transport import Connect, Delivery, Transport

MAKE_UP = "is warren running? try `make up`"
# Where `make up` keeps the first client's login (devtools/provision.py).
MADE_UP_CLIENT = Path(".warren") / "secrets" / "client1.toml"


def refused_everywhere(urls: list[str], timeout: float = 1.0) -> bool:
    """True when every broker address actively refuses a TCP connection (nothing listens
    there), as opposed to one that is slow, unreachable or answers."""
    for url in urls:
        parts = urlsplit(url)
        try:
            port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        except ValueError:
            return False
        try:
            with socket.create_connection((parts.hostname or "localhost", port), timeout):
                return False
        except ConnectionRefusedError:
            continue
        except OSError:
            return False
    return True


class WaitingNote(logging.Filter):
    """Catches the broker's "waiting for RabbitMQ" log line (its first failed attempt) and
    says it in the spinner instead, with a hint when nothing listens at the address. Off a
    terminal it is dropped: a script gets the one sentence of the final error, hint and all.
    """

    def __init__(self, settings: Settings, say: Callable[[str], None] | None) -> None:
        super().__init__()
        self.settings = settings
        self.say = say

    def filter(self, record: logging.LogRecord) -> bool:
        if "waiting for RabbitMQ" not in record.getMessage():
            return True
        if self.say is not None:
            self.say(waiting_text(self.settings))
        return logging.getLogger("warren.broker").isEnabledFor(logging.DEBUG)  # -v keeps it


def waiting_text(settings: Settings) -> str:
    urls = ", ".join(redact(u) for u in settings.amqp_urls)
    hint = f" (connection refused: {MAKE_UP})" if refused_everywhere(settings.amqp_urls) else ""
    return f"waiting for RabbitMQ at {urls}{hint}, for up to {settings.connect_timeout:g} s ..."


def login_hint(settings: Settings) -> str:
    """What to check when RabbitMQ refuses the login: `make up` made one per client."""
    user = urlsplit(settings.amqp_urls[0]).username or "guest"
    if user == "guest" and MADE_UP_CLIENT.is_file():
        return (
            "`make up` runs without guest and keeps your login in a config file: "
            f"export WARREN_CONFIG=$PWD/{MADE_UP_CLIENT}"
        )
    return f"check the user {user!r} and its password in WARREN_AMQP_URL (or WARREN_CONFIG)."


class BusyLine:
    """``Session.waiting`` on a terminal: while a request is asked again after Busy answers
    (the manager catching up, a queue electing its leader), the same spinner as while
    connecting says what it waits for; it goes once the answer comes."""

    def __init__(self, err: Console) -> None:
        self.err = err
        self.status: Status | None = None

    def __call__(self, text: str | None) -> None:
        if text is None:
            if self.status is not None:
                self.status.stop()
                self.status = None
        elif self.status is None:
            self.status = self.err.status(text)
            self.status.start()
        else:
            self.status.update(text)


def open_session(
    settings: Settings, err: Console, verbose: bool = False, quiet: bool = False
) -> Session:
    """A session, connected. On a terminal a spinner says at once what it waits for, and
    that nothing listens there (try `make up`) once an attempt is refused; giving up is one
    sentence with the same hint, on a terminal or not. Later waits for a busy cluster are
    shown the same way, unless ``quiet`` (-q, --json)."""
    connect: Connect = traced(Connection) if verbose else Connection
    session = Session(settings, connect)
    urls = ", ".join(redact(u) for u in settings.amqp_urls)
    status = err.status(f"connecting to RabbitMQ at {urls} ...") if err.is_terminal else None
    note = WaitingNote(settings, None if status is None else status.update)
    broker_log = logging.getLogger("warren.broker")
    broker_log.addFilter(note)
    try:
        with status or contextlib.nullcontext():
            session.open()
    except BrokerUnavailable as exc:
        session.close()
        if refused_everywhere(settings.amqp_urls):
            raise BrokerUnavailable(f"{str(exc).rstrip('.')}: {MAKE_UP}.") from None
        raise
    except BrokerRefused as exc:
        session.close()
        raise BrokerRefused(f"{str(exc).rstrip('.')}; {login_hint(settings)}") from None
    except BaseException:
        session.close()
        raise
    finally:
        broker_log.removeFilter(note)
    if err.is_terminal and not quiet:
        session.waiting = BusyLine(err)
    return session


def traced(connect: Connect) -> Connect:
    """``-v``: the same transport, logging each message sent and received on stderr."""

    def make(settings: Settings, name: str) -> Transport:
        return Traced(connect(settings, name))

    return make


class Traced:
    """A Transport that logs the protocol: every publish (queue, type, correlation id,
    size) and every delivery, at INFO on the ``warren.client.protocol`` logger."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self._log = logging.getLogger("warren.client.protocol")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def is_open(self) -> bool:
        return self._inner.is_open

    def open(self, give_up_after: float | None = None, stop: Any = None) -> None:
        urls = ", ".join(redact(u) for u in self._inner.settings.amqp_urls)
        self._log.info("connecting to %s", urls)
        started = time.monotonic()
        self._inner.open(give_up_after=give_up_after, stop=stop)
        self._log.info(
            "connected to %s as user %s in %.2f s (connection %r)",
            self._inner.url,
            getattr(self._inner, "user", "?"),
            time.monotonic() - started,
            self._inner.name,
        )

    def close(self) -> None:
        if self._inner.is_open:
            self._log.info("closing the connection")
        self._inner.close()

    def publish(self, queue: str, body: bytes, *, type: str, **kw: Any) -> None:
        self._log.info("-> %s %s%s %d B", queue, type, _cid(kw.get("correlation_id")), len(body))
        self._inner.publish(queue, body, type=type, **kw)

    def consume(
        self, queue: str, handler: Callable[[Delivery], None], prefetch: int | None = None
    ) -> str:
        def logged(d: Delivery) -> None:
            who = f" from {d.user_id}" if d.user_id else ""
            self._log.info(
                "<- %s %s%s %d B%s", d.queue, d.type, _cid(d.correlation_id), len(d.body), who
            )
            handler(d)

        self._log.info("consuming %s", queue)
        return self._inner.consume(queue, logged, prefetch)


def _cid(cid: str | None) -> str:
    return f" cid={cid[:8]}" if cid else ""
