"""The only module that imports pika.

A ``Connection`` is one pika ``BlockingConnection`` with one channel, owned by one thread
(pika's blocking adapter is not thread-safe; other threads hand work back through
``call_threadsafe``). It gives the rest of warren four things pika's blocking channel
does not:

* publisher confirms as a *window*: ``publish`` returns at once while fewer than
  ``settings.window`` publishes await their confirm, and calls ``on_confirm(ok)`` when the
  broker confirms (or returns, or nacks) that message;
* ``mandatory`` publishes whose return is reported through the same callback;
* deliveries that ack or dead-letter themselves, and a handler wrapper that dead-letters
  anything that fails to decode instead of crashing the service;
* pika's exceptions converted at the edge into ``warren.errors``: transient ones become
  ``BrokerUnavailable`` (reconnect and carry on), refusals ``BrokerRefused`` (stop).

It implements ``warren.transport.Transport``; ``warren.testing`` is its in-memory twin.

The blocking channel has no windowed confirms, so confirm mode is switched on through its
underlying channel (``_impl``) and waited for with its ``_flush_output``, exactly as the
blocking channel's own ``confirm_delivery`` does. Every use of pika's private attributes
sits in the ``_pika_*`` functions below, and ``tests/test_unit_broker.py`` fails loudly when
a pika release changes one of them; pika is pinned to 1.4.4 for that reason
(docs/operations.md says why each one is worth it).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pika
import pika.exceptions as pex
import tenacity

from warren.config import Settings, redact
from warren.errors import (
    BrokerBlocked,
    BrokerRefused,
    BrokerUnavailable,
    Locked,
    Undeliverable,
    WarrenError,
)
from warren.tls import (
    CertificateError,
    certificate_failure,
    client_certificate_refused,
    tls_context,
)
from warren.topology import (
    BOUND_ARGUMENTS,
    ExchangeSpec,
    QueueSpec,
    Topology,
    queue_arguments,
    reply_queue,
    route,
)
from warren.transport import Confirm, ConfirmCallback, Delivery, Handler, dispatch

log = logging.getLogger("warren.broker")
# Broker alarms get their own logger: the console client shows these even when quiet.
alarm_log = logging.getLogger("warren.alarm")

# pika reads its socket 4 KiB at a time; chunks are 1 MiB. Larger reads cut the Python
# work per byte received (measured by `make bench`). Set on each of our connections'
# transports only, never on pika's class: other pika users in the process are untouched.
RECV_BYTES = 256 * 1024
CONSUME_BYTES = 4 * 1024 * 1024
# Seconds a connection waits for RabbitMQ to answer its close before it shuts the socket.
CLOSE_SECONDS = 3.0

# The header every publish carries: when it was sent (ms since the epoch), for queue lag.
SENT_AT = "sent_at_ms"

# Broker reply codes that no retry will fix.
_FATAL_CODES = {403, 406, 530, 540}
ACCESS_REFUSED = 403
NOT_FOUND = 404
PRECONDITION_FAILED = 406


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn pika's exceptions into warren's, so no other module needs to know them."""
    try:
        yield
    except WarrenError:
        raise
    except pex.ConnectionBlockedTimeout:
        raise BrokerBlocked(
            "RabbitMQ blocked publishing for too long (a memory or disk alarm)."
        ) from None
    except (pex.ProbableAuthenticationError, pex.ProbableAccessDeniedError) as exc:
        # pika's guess from when the connection ended: the broker closing it (a refusal)
        # or the socket dropping, as when RabbitMQ stops mid-handshake (worth a retry).
        if str(exc).startswith("StreamLostError"):
            raise BrokerUnavailable(
                "lost the connection to RabbitMQ while logging in (StreamLostError)"
            ) from None
        if isinstance(exc, pex.ProbableAccessDeniedError):
            raise BrokerRefused(f"RabbitMQ denied access to the virtual host: {exc}") from None
        raise BrokerRefused(f"RabbitMQ refused the credentials: {exc}") from None
    except pex.AuthenticationError as exc:
        raise BrokerRefused(f"RabbitMQ refused the credentials: {exc}") from None
    except pex.ChannelClosedByBroker as exc:
        if exc.reply_code == 405:
            raise Locked(f"RabbitMQ says it is locked: {exc.reply_text}") from None
        if exc.reply_code in _FATAL_CODES:
            raise BrokerRefused(f"RabbitMQ refused: {exc.reply_text}") from None
        raise BrokerUnavailable(f"RabbitMQ closed the channel: {exc.reply_text}") from None
    except pex.ConnectionClosedByBroker as exc:
        if exc.reply_code in _FATAL_CODES:
            raise BrokerRefused(f"RabbitMQ refused: {exc.reply_text}") from None
        raise BrokerUnavailable(f"RabbitMQ closed the connection: {exc.reply_text}") from None
    except (pex.AMQPError, OSError) as exc:
        bad_cert = certificate_failure(exc)
        if bad_cert is not None:
            raise CertificateError(
                "RabbitMQ's TLS certificate did not verify "
                f"({bad_cert.verify_message or bad_cert.reason}): check WARREN_TLS_CA_FILE "
                "and the host name in WARREN_AMQP_URL."
            ) from None
        if refused := client_certificate_refused(exc):
            raise CertificateError(
                f"RabbitMQ refused this client's TLS certificate ({refused}): set "
                "WARREN_TLS_CERT_FILE (and WARREN_TLS_KEY_FILE) to one its CA signed."
            ) from None
        raise BrokerUnavailable(f"lost the connection to RabbitMQ ({type(exc).__name__})") from None


class Connection:
    """One AMQP connection and channel for one thread, with windowed publisher confirms."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.name = name  # the connection_name shown in the management UI
        self._conn: Any = None
        self._channel: Any = None
        self._side: Any = None  # declarations happen here: a refusal must not close _channel
        self._next_tag = 1
        self._pending: collections.OrderedDict[int, ConfirmCallback | None] = (
            collections.OrderedDict()
        )
        self._returned: set[int] = set()
        self._done: collections.deque[tuple[ConfirmCallback, Confirm]] = collections.deque()
        self._wakeup_scheduled = False
        self._declared: set[str] = set()
        self.url = ""
        self.user = ""  # the broker user this connection logged in as

    # -- lifecycle -------------------------------------------------------------------------

    def open(self, give_up_after: float | None = None, stop: threading.Event | None = None) -> None:
        """Connect, retrying with capped exponential back-off.

        Services pass ``give_up_after=None`` and wait for the broker for as long as it
        takes (until ``stop`` is set); clients pass a timeout and fail with one sentence.
        Refusals (bad credentials, no access) are never retried.
        """
        said = False
        started = time.monotonic()

        def before_sleep(state: tenacity.RetryCallState) -> None:
            nonlocal said
            if not said:
                said = True
                urls = ", ".join(redact(u) for u in self.settings.amqp_urls)
                log.warning("%s: waiting for RabbitMQ at %s ...", self.name, urls)

        def should_stop(state: tenacity.RetryCallState) -> bool:
            if stop is not None and stop.is_set():
                return True
            return give_up_after is not None and time.monotonic() - started >= give_up_after

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(BrokerUnavailable),
            wait=tenacity.wait_exponential(multiplier=0.2, max=5.0),
            stop=should_stop,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            retrying(self._open_once)
        except BrokerUnavailable:
            urls = ", ".join(redact(u) for u in self.settings.amqp_urls)
            waited = time.monotonic() - started
            raise BrokerUnavailable(
                f"cannot reach RabbitMQ at {urls} (tried for {waited:.0f} s)."
            ) from None
        if said:
            log.info("%s: connected to RabbitMQ at %s", self.name, redact(self.url))

    def _open_once(self) -> None:
        params = []
        context: ssl.SSLContext | None = None
        for url in self.settings.amqp_urls:
            p = pika.URLParameters(url)
            if urlsplit(url).scheme == "amqps":
                context = context or tls_context(self.settings)
                p.ssl_options = pika.SSLOptions(context, server_hostname=p.host)
            p.heartbeat = self.settings.amqp_heartbeat
            p.blocked_connection_timeout = self.settings.blocked_timeout
            p.client_properties = {"connection_name": self.name, "product": "warren"}
            p.connection_attempts = 1
            p.socket_timeout = 5
            p.stack_timeout = 10
            params.append(p)
        with translate_errors():
            self._conn = pika.BlockingConnection(params)
            self._conn.add_on_connection_blocked_callback(self._on_blocked)
            self._conn.add_on_connection_unblocked_callback(self._on_unblocked)
            _pika_tune_reads(self._conn)
            self._channel = self._conn.channel()
            _pika_enable_confirms(self._channel, self._on_confirm, self._on_return)
        self._side = None
        host, port, self.user = _pika_connected_to(self._conn)  # which URL of a list answered
        self.url = f"amqp://{host}:{port}/"
        self._next_tag = 1
        self._pending.clear()
        self._returned.clear()
        self._declared.clear()
        self._done.clear()
        self._wakeup_scheduled = False

    def close(self) -> None:
        """Wait briefly for outstanding confirms, then close; unacked deliveries go back.

        Bounded: if RabbitMQ has not answered the close within CLOSE_SECONDS (a stream left
        inconsistent by a Ctrl-C inside pika's I/O, say, or a peer gone silent), the socket
        is shut, which ends the close at once; the broker then drops the connection."""
        if self._conn is None:
            return
        conn = self._conn
        try:
            if conn.is_open:
                with contextlib.suppress(WarrenError):
                    self.wait_for_confirms(timeout=5.0)
                abort = threading.Timer(CLOSE_SECONDS, _pika_shut_socket, (conn,))
                abort.daemon = True
                abort.start()
                try:
                    conn.close()
                finally:
                    abort.cancel()
        except Exception:  # noqa: BLE001 - closing a broken connection must not raise
            log.debug("%s: error while closing", self.name, exc_info=True)
        finally:
            self._conn = None
            self._side = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None and bool(self._conn.is_open)

    # -- topology --------------------------------------------------------------------------

    def declare(self, topology: Topology) -> None:
        """Declare exchanges and queues (idempotent); each only once per connection.

        Each declaration that this connection's user is not allowed to make (RabbitMQ
        refuses it: ACCESS_REFUSED) is checked instead: what exists is fine, since its owner
        declared it (a worker forwarding to another worker, a client and the exchanges).
        Declarations run on a channel of their own, so a refusal never closes the channel
        that publishes and consumes.
        """
        for ex in topology.exchanges:
            if ("x:" + ex.name) not in self._declared:
                self._declare_one(ex)
                self._declared.add("x:" + ex.name)
        for q in topology.queues:
            if ("q:" + q.name) not in self._declared:
                self._declare_one(q)
                self._declared.add("q:" + q.name)

    def _declare_one(self, spec: ExchangeSpec | QueueSpec) -> None:
        kind = "exchange" if isinstance(spec, ExchangeSpec) else "queue"
        if not (isinstance(spec, ExchangeSpec) and spec.passive):
            code = self._on_side(lambda ch: self._declare_on(ch, spec))
            if code is None:
                return
            if code == PRECONDITION_FAILED and isinstance(spec, QueueSpec):
                # Declared before its bound existed (an older warren): RabbitMQ refuses to
                # change a queue's arguments, so use it as it is, and say how to bound it.
                log.warning(
                    "%s: queue %s exists without the bound this version declares it with "
                    "(%s); it is used as it is, unbounded, until an operator deletes it once "
                    'or sets a policy (docs/operations.md, "Queue bounds")',
                    self.name,
                    spec.name,
                    ", ".join(
                        f"{k}={spec.arguments[k]}" for k in BOUND_ARGUMENTS if k in spec.arguments
                    ),
                )
                if self._on_side(lambda ch: self._declare_on(ch, spec, passive=True)) is None:
                    return
                code = NOT_FOUND
            if code == NOT_FOUND:  # binding to an exchange that is not there
                raise BrokerUnavailable(
                    "the manager has never run on this broker "
                    f"(no exchange to bind {spec.name} to)."
                )
            log.debug("%s: may not declare %s %s; checking it exists", self.name, kind, spec.name)
        if self._on_side(lambda ch: self._check_exists(ch, spec)) != NOT_FOUND:
            return
        if isinstance(spec, ExchangeSpec):
            raise BrokerUnavailable(
                f"the manager has never run on this broker (there is no exchange {spec.name})."
            )
        raise Undeliverable(
            f"there is no queue {spec.name} on this broker, and {self.user} may not "
            "declare it (its owner does)."
        )

    def _on_side(self, fn: Callable[[Any], None]) -> int | None:
        """Run ``fn`` on the declarations' channel. When the broker closes that channel over
        it, ACCESS_REFUSED or NOT_FOUND is returned (the next call opens a new channel);
        anything else is raised as warren's error."""
        with translate_errors():
            if self._side is None or not self._side.is_open:
                self._side = self._conn.channel()
            try:
                fn(self._side)
            except pex.ChannelClosedByBroker as exc:
                self._side = None
                if exc.reply_code in (ACCESS_REFUSED, NOT_FOUND):
                    return int(exc.reply_code)
                if exc.reply_code == PRECONDITION_FAILED and any(
                    f"'{arg}'" in str(exc.reply_text) for arg in BOUND_ARGUMENTS
                ):
                    return PRECONDITION_FAILED  # only a bound differs: see _declare_one
                raise
        return None

    def _declare_on(
        self, channel: Any, spec: ExchangeSpec | QueueSpec, passive: bool = False
    ) -> None:
        if isinstance(spec, ExchangeSpec):
            channel.exchange_declare(spec.name, spec.kind, durable=spec.durable)
            return
        channel.queue_declare(
            spec.name,
            passive=passive,
            durable=spec.durable,
            exclusive=spec.exclusive,
            auto_delete=spec.auto_delete,
            arguments=queue_arguments(spec, self.settings.queue_type) or None,
        )
        if spec.bind_to:
            for key in spec.routing_keys:
                channel.queue_bind(spec.name, spec.bind_to, key or None)

    def _check_exists(self, channel: Any, spec: ExchangeSpec | QueueSpec) -> None:
        if isinstance(spec, ExchangeSpec):
            channel.exchange_declare(spec.name, passive=True)
        else:
            channel.queue_declare(spec.name, passive=True)

    # -- publishing ------------------------------------------------------------------------

    def publish(
        self,
        queue: str,
        body: bytes,
        *,
        type: str,
        headers: dict[str, Any] | None = None,
        reply_to: str | None = None,
        correlation_id: str | None = None,
        persistent: bool = True,
        expiration_ms: int | None = None,
        on_confirm: ConfirmCallback | None = None,
    ) -> None:
        """Publish to a queue by name (through its exchange: ``topology.route``),
        mandatory, with a confirm.

        Returns once the message is written and fewer than ``window`` publishes are
        unconfirmed. ``on_confirm(Confirm.ACK)`` runs on this thread once the broker has
        taken responsibility for the message, ``Confirm.RETURNED`` when it was returned (no
        such queue), ``Confirm.NACK`` when it was nacked: later, from ``process``,
        ``wait_for_confirms`` or ``poll_confirms``, never inside this or another ``publish``.
        """
        self._wait_window(self.settings.window - 1)
        tag = self._next_tag
        self._next_tag += 1
        props = pika.BasicProperties(
            delivery_mode=2 if persistent else 1,
            type=type,
            headers={**(headers or {}), SENT_AT: int(time.time() * 1000)},
            reply_to=reply_to,
            correlation_id=correlation_id,
            expiration=str(expiration_ms) if expiration_ms is not None else None,
            message_id=str(tag),  # lets a basic.return be matched to its confirm
            app_id="warren",
            user_id=self.user,  # RabbitMQ checks it is this connection's user
        )
        self._pending[tag] = on_confirm
        exchange, routing_key = route(queue)
        with translate_errors():
            self._channel.basic_publish(
                exchange, routing_key, body, properties=props, mandatory=True
            )

    def publish_and_wait(self, queue: str, body: bytes, *, type: str, **kw: Any) -> None:
        """Publish and wait for this one confirm; raise Undeliverable if it fails."""
        result: list[Confirm] = []
        self.publish(queue, body, type=type, on_confirm=result.append, **kw)
        self.wait_for_confirms()
        if result != [Confirm.ACK]:
            raise Undeliverable(f"RabbitMQ did not accept a {type} message for {queue}.")

    def wait_for_confirms(self, timeout: float | None = None) -> None:
        """Block until every publish so far is confirmed (and its callback has run)."""
        self._wait_window(0, timeout)

    def _wait_window(self, at_most: int, timeout: float | None = None) -> None:
        if len(self._pending) > at_most:
            deadline = time.monotonic() + (timeout or self.settings.transfer_timeout)
            timed_out = False

            def ready() -> bool:
                nonlocal timed_out
                timed_out = time.monotonic() > deadline
                return len(self._pending) <= at_most or timed_out

            with translate_errors():
                _pika_flush(self._channel, ready)
            if timed_out:
                raise BrokerUnavailable("RabbitMQ did not confirm publishes in time.")
        if at_most == 0:
            self._run_done()

    def poll_confirms(self) -> None:
        """Run the confirm callbacks of what the broker has confirmed so far (no I/O):
        for a loop that publishes a long stream and wants to hear of a refusal early."""
        self._run_done()

    def _on_confirm(self, frame: Any) -> None:
        """pika's callback (inside its I/O loop): record results, run them later."""
        method = frame.method
        ok = isinstance(method, pika.spec.Basic.Ack)
        tags = (
            [t for t in self._pending if t <= method.delivery_tag]
            if method.multiple
            else [method.delivery_tag]
        )
        if not ok:
            log.info("%s: RabbitMQ refused (nack) publish %d", self.name, method.delivery_tag)
        for tag in tags:
            callback = self._pending.pop(tag, None)
            outcome = (
                Confirm.RETURNED if tag in self._returned else Confirm.ACK if ok else Confirm.NACK
            )
            self._returned.discard(tag)
            if callback is not None:
                self._done.append((callback, outcome))
        if self._done and not self._wakeup_scheduled and self._conn is not None:
            # Wake process_data_events so callbacks run promptly, outside pika's I/O loop.
            self._wakeup_scheduled = True
            self._conn.add_callback_threadsafe(self._run_done)

    def _on_return(self, _channel: Any, method: Any, props: Any, _body: bytes) -> None:
        log.info(
            "%s: RabbitMQ returned a message for %s (%s)",
            self.name,
            method.routing_key,
            method.reply_text,
        )
        with contextlib.suppress(TypeError, ValueError):
            self._returned.add(int(props.message_id))

    def _run_done(self) -> None:
        self._wakeup_scheduled = False
        while self._done:
            callback, ok = self._done.popleft()
            callback(ok)

    # -- consuming -------------------------------------------------------------------------

    def consume(self, queue: str, handler: Handler, prefetch: int | None = None) -> str:
        """Deliver messages from ``queue`` to ``handler`` on this thread.

        A handler that raises ``DecodeError`` (or any unexpected error) gets its message
        dead-lettered and logged; the service carries on. Broker errors propagate.
        """

        lags = None
        if self.settings.metrics_port:  # only a process that serves /metrics records them
            from warren import metrics  # not at the top: the client needs none of it

            lags = metrics.QUEUE_LAG.labels(queue)

        def on_message(_ch: Any, method: Any, props: Any, body: bytes) -> None:
            sent_at = (props.headers or {}).get(SENT_AT)
            if lags is not None and isinstance(sent_at, int):
                lags.observe(max(0.0, time.time() - sent_at / 1000))
            delivery = Delivery(
                body=body,
                delivery_tag=method.delivery_tag,
                redelivered=method.redelivered,
                type=props.type,
                headers=props.headers,
                reply_to=reply_queue(props.reply_to),
                correlation_id=props.correlation_id,
                queue=queue,
                settle=self._settle,
                user_id=props.user_id,
                routing_key=method.routing_key,
            )
            dispatch(self.name, delivery, handler)

        with translate_errors():
            self._channel.basic_qos(prefetch_count=prefetch or self.settings.prefetch)
            tag: str = self._channel.basic_consume(queue, on_message)
        return tag

    def _settle(self, delivery_tag: int, ack: bool, requeue: bool) -> None:
        with translate_errors():
            if ack:
                self._channel.basic_ack(delivery_tag)
            else:
                self._channel.basic_reject(delivery_tag, requeue=requeue)

    def process(self, time_limit: float = 0.5) -> None:
        """Run I/O, consumer handlers, timers and confirm callbacks for up to time_limit."""
        with translate_errors():
            self._conn.process_data_events(time_limit=time_limit)
        self._run_done()

    # -- threads and timers ----------------------------------------------------------------

    def call_threadsafe(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on this connection's thread (the only safe way in from elsewhere)."""
        conn = self._conn
        if conn is None:
            raise BrokerUnavailable("the connection is closed")
        with translate_errors():
            conn.add_callback_threadsafe(fn)

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        with translate_errors():
            self._conn.call_later(delay, fn)

    # -- broker alarms ---------------------------------------------------------------------

    def _on_blocked(self, _conn: Any, frame: Any) -> None:
        reason = getattr(frame.method, "reason", "an alarm")
        alarm_log.warning(
            "%s: RabbitMQ is blocking publishes (%s); waiting up to %.0f s",
            self.name,
            reason,
            self.settings.blocked_timeout,
        )

    def _on_unblocked(self, _conn: Any, _frame: Any) -> None:
        alarm_log.warning("%s: RabbitMQ unblocked publishes", self.name)


# -- pika's private attributes: every use in one place ----------------------------------------
# tests/test_unit_broker.py checks each of them exists on the installed pika.


def _pika_tune_reads(conn: Any) -> None:
    """Larger socket reads for this connection's transport (see RECV_BYTES)."""
    transport = conn._impl._transport
    transport._MAX_RECV_BYTES = RECV_BYTES
    transport._MAX_CONSUME_BYTES = CONSUME_BYTES


def _pika_enable_confirms(
    channel: Any, on_confirm: Callable[[Any], None], on_return: Callable[..., None]
) -> None:
    """Confirm mode with a callback per confirm (the blocking channel only offers a wait
    per publish, which would allow one message in flight at a time)."""
    impl = channel._impl
    ready = threading.Event()
    impl.confirm_delivery(ack_nack_callback=on_confirm, callback=lambda _f: ready.set())
    impl.add_on_return_callback(on_return)
    _pika_flush(channel, ready.is_set)


def _pika_flush(channel: Any, ready: Callable[[], bool]) -> None:
    """Run the connection's I/O until ``ready()``: how the blocking channel waits itself."""
    channel._flush_output(ready)


def _pika_shut_socket(conn: Any) -> None:
    """From another thread: shut the connection's socket, so that a close waiting for an
    answer that will not come sees the connection lost and returns."""
    transport = conn._impl._transport
    sock = getattr(transport, "_sock", None) if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _pika_connected_to(conn: Any) -> tuple[str, int, str]:
    """The host, port and user name of the URL (of a cluster's list) that answered."""
    params = conn._impl.params
    return str(params.host), int(params.port), str(params.credentials.username)
