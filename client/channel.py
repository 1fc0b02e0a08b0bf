"""The client's channel to the cluster: one connection, one exclusive reply queue, and
the routes that hand what arrives there to whoever waits for it.

Everything addressed to the client (the manager's answers, replica confirmations, restore
chunks) arrives on the reply queue and is routed by ``correlation_id``: to a request
(``Channel.request``), an upload (``client/upload.py``), a restore (``client/restore.py``).
``client.session.Session`` is a channel with the user's operations on top; uploads and
restores need only the channel.

A correlation id is no secret (it travels in every chunk's headers), and anyone may publish
to a client's reply queue, so each message is also judged by its sender: the AMQP
``user_id``, which RabbitMQ checks against the publisher's login. Answers come only from the
manager's broker user (``WARREN_MANAGER_USER``), a replica's word only from the workers of
its chain, restore chunks only from the worker the manager named (a worker's user is its
name). Anything else is acked and ignored, with a debug line: it never changes a state.
A worker's word is also taken from the manager's user (services that share one login
cannot be told apart, and the manager is trusted anyway); where every process shares one
login, there is no ``WARREN_MANAGER_USER`` and the client's own user is the manager's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Collection
from typing import TypeVar

from client.outcomes import decode_answer, not_taken
from warren import messages as m
from warren.config import Settings
from warren.errors import Busy, Unavailable, WarrenError, from_wire
from warren.topology import MANAGER_REQUESTS, client_reply_queue, client_topology
from warren.transport import Confirm, Connect, Delivery

R = TypeVar("R", bound=m.Message)

log = logging.getLogger("warren.client")

# Pauses before asking again after a Busy answer, the last one repeated: short at first
# (after a restart the manager catches up in about 2 s), never long enough to leave a
# cluster that is ready again waiting for more than half a second.
BUSY_PAUSES = (0.1, 0.2, 0.4, 0.5)


C = TypeVar("C", bound="Channel")


class Channel:
    """One connection and reply queue to the cluster, for one thread."""

    def __init__(self, settings: Settings, connect: Connect) -> None:
        self.settings = settings
        self.client_name = settings.client_name or f"{os.uname().nodename}-{os.getpid()}"
        self.connect = connect
        self.conn = connect(settings, f"warren client {self.client_name}")
        self.reply_queue = client_reply_queue(self.client_name)
        self.routes: dict[str, Callable[[Delivery], None]] = {}
        # Told what the session waits for while it asks again after Busy answers, and None
        # once it no longer waits: the CLI shows it on a terminal (``client.connecting``).
        self.waiting: Callable[[str | None], None] = lambda _text: None
        # The sender of the last answer ignored as not the manager's: named if none comes.
        self.not_manager = ""

    def __enter__(self: C) -> C:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        self.conn.open(give_up_after=self.settings.connect_timeout)
        self.conn.declare(client_topology(self.reply_queue))
        self.conn.consume(self.reply_queue, self._on_reply)

    def close(self) -> None:
        self.conn.close()

    def reconnect(self) -> None:
        """A new connection, with a fresh reply queue: the old exclusive one may outlive
        its connection on the broker for a moment."""
        self.close()
        self.reply_queue = client_reply_queue(self.client_name)
        self.open()

    @property
    def manager_user(self) -> str:
        """The broker user the manager's answers must come from."""
        return self.settings.manager_user or self.conn.user

    def from_manager(self, d: Delivery) -> bool:
        """Whether ``d`` came from the manager; if not, say so (debug) and ack it."""
        if d.user_id and d.user_id == self.manager_user:
            return True
        self.not_manager = d.user_id or ""
        return self.ignore(d, f"the manager ({self.manager_user!r})")

    def from_worker(self, d: Delivery, workers: Collection[str]) -> bool:
        """Whether ``d`` came from one of ``workers`` (a worker's broker user is its name)
        or from the manager's login; if not, say so (debug) and ack it."""
        if d.user_id and (d.user_id in workers or self.as_manager(d)):
            return True
        return self.ignore(d, ", ".join(sorted(workers)) or "no worker")

    def as_manager(self, d: Delivery) -> bool:
        """``d`` came from the manager's login: the manager, or a worker that shares it
        (where the services, or every process, share one login), who cannot be told
        apart. The manager is trusted with what it says of any worker."""
        return bool(d.user_id) and d.user_id == self.manager_user

    def ignore(self, d: Delivery, expected: str) -> bool:
        log.debug(
            "ignored %s (cid %s) from broker user %r: it may come only from %s",
            d.type,
            d.correlation_id,
            d.user_id,
            expected,
        )
        d.ack()
        return False

    def route(self, cid: str, handler: Callable[[Delivery], None]) -> None:
        """Send what arrives under correlation id ``cid`` to ``handler``."""
        self.routes[cid] = handler

    def unroute(self, cid: str) -> None:
        self.routes.pop(cid, None)

    def _on_reply(self, d: Delivery) -> None:
        route = self.routes.get(d.correlation_id or "")
        if route is None:
            d.ack()  # a late answer to something we stopped waiting for
            return
        route(d)

    def wait(self, done: Callable[[], bool], timeout: float, failure: str) -> None:
        """Process events until ``done()``; after ``timeout`` s raise Unavailable(failure)."""
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(failure)
            self.conn.process(min(left, 0.25))

    def idle(self, seconds: float) -> None:
        """Wait, keeping the connection serviced (AMQP heartbeats, stray deliveries)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.conn.process(min(left, 0.25))

    def send_request(self, msg: m.Message, cid: str, refused: Callable[[Confirm], None]) -> None:
        """Publish a request to the manager; ``refused(why)`` if RabbitMQ did not take it:
        returned (no queue: clients never declare the manager's queues, the services do,
        so the manager never ran here) or nacked (its queue could not take it just now).
        """
        self.conn.publish(
            MANAGER_REQUESTS,
            msg.encode(),
            type=msg.TYPE,
            reply_to=self.reply_queue,
            correlation_id=cid,
            persistent=False,
            expiration_ms=int(self.settings.request_timeout * 1000),
            on_confirm=lambda ok: None if ok else refused(ok),
        )

    # -- requests to the manager -----------------------------------------------------------

    def request(
        self,
        msg: m.Message,
        expect: type[R],
        on_other: Callable[[Delivery], None] | None = None,
        cid: str = "",
        on_answer: Callable[[R], None] | None = None,
    ) -> R:
        """Ask the manager and wait for its answer; an ErrorReply becomes an exception.

        With ``on_other``, whatever else arrives under the same correlation id (restore
        chunks) goes there, and the route stays until the caller removes ``cid``;
        ``on_answer`` is given the answer as it arrives, before anything after it.
        """
        cid = cid or uuid.uuid4().hex
        answers: list[m.Message] = []

        def route(d: Delivery) -> None:
            if d.type in (expect.TYPE, m.ErrorReply.TYPE):
                if answers or not self.from_manager(d):
                    d.ack()
                    return
                answer = decode_answer(d)
                answers.append(answer)
                d.ack()
                if on_answer is not None and isinstance(answer, expect):
                    on_answer(answer)
            elif on_other is not None:
                on_other(d)
            else:
                d.ack()

        self.routes[cid] = route
        deadline = time.monotonic() + self.settings.request_timeout
        tries = 0
        try:
            while True:
                answers.clear()
                self.send_request(msg, cid, lambda why: answers.append(not_taken(why)))
                self.wait(lambda: bool(answers), max(deadline - time.monotonic(), 0), self.silent())
                answer = answers[0]
                if isinstance(answer, m.ErrorReply):
                    exc = from_wire(answer.code, answer.message)
                    if not isinstance(exc, Busy):
                        raise exc
                    pause = self.busy_pause(tries, deadline, exc)
                    if pause is None:
                        raise self.outlasted(exc)
                    tries += 1
                    self.idle(pause)  # nothing was done with it: ask again
                    continue
                assert isinstance(answer, expect)
                return answer
        finally:
            if tries:
                self.waiting(None)
            if on_other is None:
                self.routes.pop(cid, None)

    def busy_pause(self, tries: int, deadline: float, exc: Busy) -> float | None:
        """How long to wait before asking again after the ``tries``-th Busy answer, saying
        so; None when the request timeout runs out first (what outlasts it is final)."""
        left = deadline - time.monotonic()
        if left < 0.1:
            return None
        timeout = self.settings.request_timeout
        self.waiting(f"waiting for the cluster, for up to {timeout:g} s: {exc}")
        return min(BUSY_PAUSES[min(tries, len(BUSY_PAUSES) - 1)], left - 0.05)

    def outlasted(self, exc: Busy) -> Busy:
        """The last Busy answer, once it has outlasted the request timeout."""
        return Busy(f"after {self.settings.request_timeout:g} s of asking, {exc}")

    # -- threads -----------------------------------------------------------------------------

    def wake(self) -> None:
        """From another thread: make the connection's thread return from ``process``."""
        with contextlib.suppress(WarrenError):
            self.conn.call_threadsafe(lambda: None)

    def silent(self) -> str:
        waited = f"the manager did not answer within {self.settings.request_timeout:g} s"
        if self.not_manager and not self.settings.manager_user:
            return (
                f"{waited}: answers came from broker user {self.not_manager!r}, not from yours; "
                "set WARREN_MANAGER_USER to the manager's user."
            )
        return f"{waited}; is it running?"
