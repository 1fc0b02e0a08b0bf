"""An in-memory broker for fast tests of the manager, worker and client logic.

``StubBroker`` keeps queues, messages and consumers in memory and hands out
``StubConnection``s that implement ``warren.transport.Transport`` the way
``warren.broker.Connection`` does on RabbitMQ: one connection per thread, deliveries and
confirm callbacks run only inside that thread's ``process`` (or an explicit wait),
publishes routed as on RabbitMQ (``topology.route``: a queue's exchange and routing key,
exact-key bindings, a queue bound with several keys), a publish refused as RabbitMQ
refuses it when its user lacks write permission on the exchange or topic write on the key
(``topology.permissions`` of the user's role, ``StubBroker.roles``: ACCESS_REFUSED closes
the channel), mandatory publishes that reach no queue returned, ``reply_to``
naming a service's queue dropped from deliveries, unacked deliveries requeued as
redelivered (in their places) when their connection goes, rejects and expired messages
dead-lettered, queue bounds kept (``x-max-length`` and ``x-max-length-bytes``: the oldest
dead-lettered, or with ``x-overflow: reject-publish`` the publish nacked), exclusive queues
locked to and deleted with their connection, a consume of a missing or locked queue and a
publish through a missing exchange failing the connection (RabbitMQ closes its channel), a
queue redeclared with other arguments refused, transient messages and queues lost on a
broker restart. ``tests/test_transport_contract.py`` runs the same tests on both brokers.

Faults are the test's to inject: ``disconnect`` drops connections (as a network blip or a
killed process would), ``restart`` restarts the broker, ``intercept`` sees every publish
and may drop, duplicate or reorder it, ``refuse`` nacks what it picks (a quorum queue
with no leader for a moment). ``published`` is a firehose of what was sent, by
whom.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from warren.config import Settings
from warren.errors import BrokerRefused, BrokerUnavailable, Locked, Undeliverable
from warren.topology import Topology, is_service_queue, permissions, route
from warren.transport import Confirm, ConfirmCallback, Delivery, Handler, dispatch


@dataclass(frozen=True)
class Message:
    """A message as the stub broker holds it."""

    queue: str
    body: bytes
    type: str
    headers: dict[str, Any] | None = None
    reply_to: str | None = None
    correlation_id: str | None = None
    persistent: bool = True
    expires_at: float | None = None
    sender: str = ""  # the publishing connection's name
    user_id: str = ""  # its broker user, as RabbitMQ would validate it
    redelivered: bool = False
    routing_key: str = ""  # the key it was published with (``queue`` is where it went)


# Sees each publish that found its queue; returns what the queue gets instead (drop: []).
Intercept = Callable[[Message], list[Message]]


@dataclass
class _Consumer:
    conn: StubConnection
    handler: Handler
    prefetch: int
    tag: str
    unacked: int = 0


@dataclass
class _Queue:
    name: str
    durable: bool
    owner: StubConnection | None  # exclusive queues belong to one connection
    dead_letter_exchange: str | None
    # As RabbitMQ's x-max-length, x-max-length-bytes and x-overflow: past the bound a
    # publish is nacked (reject-publish) or the oldest message goes (drop-head).
    max_length: int | None = None
    max_bytes: int | None = None
    overflow: str = "drop-head"
    # What it was declared with: a declaration that differs is refused, as on RabbitMQ.
    declared: tuple[bool, bool, dict[str, Any]] = (True, False, {})
    messages: collections.deque[Message] = field(default_factory=collections.deque)
    consumers: list[_Consumer] = field(default_factory=list)
    next_consumer: int = 0

    def full(self, msg: Message) -> bool:
        """Whether taking ``msg`` would go past the queue's bound."""
        if self.max_length is not None and len(self.messages) + 1 > self.max_length:
            return True
        if self.max_bytes is not None:
            held = sum(len(m.body) for m in self.messages)
            return held + len(msg.body) > self.max_bytes
        return False


class StubBroker:
    """One in-memory broker, shared by every connection a test makes."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.queues: dict[str, _Queue] = {}
        self.exchanges: dict[str, str] = {}  # name -> kind
        self.bindings: dict[str, list[tuple[str, str]]] = {}  # exchange -> (queue, key)
        self.connections: list[StubConnection] = []
        self.published: list[Message] = []
        self.intercept: Intercept | None = None
        self.refuse: Callable[[Message], bool] | None = None
        self.up = True
        self._tags = itertools.count(1)
        # Each broker user's role, whose ``topology.permissions`` its publishes must keep,
        # as ``manager users add`` sets them on RabbitMQ. A user not named here is a client;
        # ``guest`` (one login shared by everyone) may publish anything, and so may a user
        # whose role is None (one made by hand with every right).
        self.roles: dict[str, str | None] = {}

    def may_publish(self, user: str, exchange: str, key: str) -> bool:
        """Whether RabbitMQ would let ``user`` publish to ``exchange`` with ``key``: write
        on the exchange, and topic write on the key (a topic exchange with no entry for
        the user allows every key)."""
        role = self.roles.get(user, "client")
        if user == "guest" or role is None:
            return True
        rights = permissions(role, user)
        if not re.search(rights.write, exchange):
            return False
        topic = rights.topics.get(exchange)
        return topic is None or re.search(topic[0], key) is not None

    def connect(self, settings: Settings, name: str) -> StubConnection:
        """The ``Connect`` factory the roles take: ``Worker(settings, stop, broker.connect)``."""
        return StubConnection(self, settings, name)

    # -- inspection ------------------------------------------------------------------------

    def depth(self, queue: str) -> int:
        with self.lock:
            q = self.queues.get(queue)
            if q is None:
                return 0
            self._expire(q)
            return len(q.messages)

    def messages(self, queue: str) -> list[Message]:
        with self.lock:
            q = self.queues.get(queue)
            if q is None:
                return []
            self._expire(q)
            return list(q.messages)

    # -- faults ----------------------------------------------------------------------------

    def disconnect(self, match: Callable[[str], bool] = lambda _n: True) -> int:
        """Drop every open connection whose name matches; return how many."""
        with self.lock:
            dropped = [c for c in self.connections if match(c.name)]
            for conn in dropped:
                self._drop(conn)
            self.changed.notify_all()
            return len(dropped)

    def restart(self, downtime: float = 0.0) -> None:
        """Stop and start again: connections drop, transient queues and messages are lost."""
        with self.lock:
            self.up = False
            for conn in list(self.connections):
                self._drop(conn)
            for name, q in list(self.queues.items()):
                if not q.durable:
                    del self.queues[name]
                else:
                    q.messages = collections.deque(m for m in q.messages if m.persistent)
            self.changed.notify_all()
        time.sleep(downtime)
        with self.lock:
            self.up = True
            self.changed.notify_all()

    # -- internals (under the lock) --------------------------------------------------------

    def _drop(self, conn: StubConnection) -> None:
        if conn in self.connections:
            self.connections.remove(conn)
        conn.closed = True
        # Back in their places, as RabbitMQ requeues: the first delivered ends up first.
        for queue, msg in reversed(conn.unacked.values()):
            q = self.queues.get(queue)
            if q is not None:
                q.messages.appendleft(replace(msg, redelivered=True))
        conn.unacked.clear()
        for name, q in list(self.queues.items()):
            q.consumers = [c for c in q.consumers if c.conn is not conn]
            if q.owner is conn:
                del self.queues[name]

    def _route(self, msg: Message) -> Confirm | None:
        """Deliver through the queue's exchange, as RabbitMQ does: only a queue bound there
        with the message's routing key gets it (warren binds exact keys only). None: there
        is no such exchange, over which RabbitMQ closes the channel (NOT_FOUND)."""
        exchange, key = route(msg.queue)
        if exchange not in self.exchanges:
            return None
        bound = [q for q, k in self.bindings.get(exchange, []) if k == key and q in self.queues]
        if not bound:
            return Confirm.RETURNED
        for target in bound:  # one queue in warren's topology; ``queue``: where it went
            msg = replace(msg, queue=target, routing_key=key)
            if self.refuse is not None and self.refuse(msg):
                return Confirm.NACK
            q = self.queues[target]
            self._expire(q)
            if q.full(msg) and q.overflow in ("reject-publish", "reject-publish-dlx"):
                return Confirm.NACK
            self.published.append(msg)
            arrived = self.intercept(msg) if self.intercept else [msg]
            for m in arrived:
                self._put(self.queues[m.queue], m)
        self.changed.notify_all()
        return Confirm.ACK

    def _dead_letter(self, queue: str, msg: Message) -> None:
        """To the queue's dead-letter exchange, if it has one; without its expiration, as
        RabbitMQ strips it so that a dead letter does not expire again."""
        q = self.queues.get(queue)
        if q is None or q.dead_letter_exchange is None:
            return
        for target, _key in self.bindings.get(q.dead_letter_exchange, []):  # a fanout
            if target in self.queues:
                self._put(
                    self.queues[target],
                    replace(msg, queue=target, redelivered=False, expires_at=None),
                )

    def _put(self, q: _Queue, msg: Message) -> None:
        """Append to ``q``, dead-lettering its oldest while over its bound (drop-head)."""
        while q.messages and q.full(msg):
            self._dead_letter(q.name, q.messages.popleft())
        q.messages.append(msg)

    def _expire(self, q: _Queue) -> None:
        """Dead-letter the expired messages at the head of ``q`` (RabbitMQ expires a
        message once it reaches the head, and dead-letters it like a reject)."""
        now = time.monotonic()
        while q.messages and (exp := q.messages[0].expires_at) is not None and exp < now:
            self._dead_letter(q.name, q.messages.popleft())

    def _next_delivery(self, conn: StubConnection) -> tuple[_Consumer, str, Message] | None:
        """A message for one of ``conn``'s consumers with room under its prefetch."""
        names = list(self.queues)
        # Round robin over the queues, for each connection: start after the queue this
        # connection was last given from, so a busy queue cannot starve another one it
        # consumes (as RabbitMQ interleaves a channel's consumers).
        start = names.index(conn.last_queue) + 1 if conn.last_queue in self.queues else 0
        for i in range(len(names)):
            name = names[(start + i) % len(names)]
            q = self.queues[name]
            self._expire(q)
            if not q.messages:
                continue
            mine = [c for c in q.consumers if c.conn is conn and c.unacked < c.prefetch]
            if not mine:
                continue
            consumer = mine[q.next_consumer % len(mine)]
            q.next_consumer += 1
            consumer.unacked += 1
            conn.last_queue = name
            return consumer, name, q.messages.popleft()
        return None


class StubConnection:
    """One connection to a ``StubBroker``, owned by one thread: ``Transport`` in memory."""

    def __init__(self, broker: StubBroker, settings: Settings, name: str) -> None:
        self.broker = broker
        self.settings = settings
        self.name = name
        self.url = "stub://"
        self.user = urllib.parse.urlsplit(settings.amqp_urls[0]).username or "guest"
        self.closed = True
        self.unacked: dict[int, tuple[str, Message]] = {}
        self._consumers: dict[int, _Consumer] = {}  # delivery tag -> who got it
        self._done: collections.deque[tuple[ConfirmCallback, Confirm]] = collections.deque()
        self._calls: collections.deque[Callable[[], None]] = collections.deque()
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.last_queue: str | None = None  # the queue of the last delivery, for round robin

    # -- lifecycle -------------------------------------------------------------------------

    def open(self, give_up_after: float | None = None, stop: threading.Event | None = None) -> None:
        started = time.monotonic()
        with self.broker.lock:
            while not self.broker.up:
                if stop is not None and stop.is_set():
                    raise BrokerUnavailable("stopped while waiting for the broker")
                if give_up_after is not None and time.monotonic() - started >= give_up_after:
                    raise BrokerUnavailable("cannot reach the stub broker.")
                self.broker.changed.wait(0.05)
            self.closed = False
            self.broker.connections.append(self)

    def close(self) -> None:
        with self.broker.lock:
            if not self.closed:
                self.broker._drop(self)

    @property
    def is_open(self) -> bool:
        return not self.closed

    def _check(self) -> None:
        if self.closed:
            raise BrokerUnavailable(f"{self.name}: lost the connection to the stub broker")

    # -- topology --------------------------------------------------------------------------

    def declare(self, topology: Topology) -> None:
        self._check()
        with self.broker.lock:
            for ex in topology.exchanges:
                if ex.name not in self.broker.exchanges:
                    if ex.passive:
                        raise BrokerUnavailable(
                            "the manager has never run on this broker "
                            f"(there is no exchange {ex.name})."
                        )
                    self.broker.exchanges[ex.name] = ex.kind
                self.broker.bindings.setdefault(ex.name, [])
            for spec in topology.queues:
                q = self.broker.queues.get(spec.name)
                if q is not None and q.owner is not None and q.owner is not self:
                    raise Locked(f"queue {spec.name} is exclusive to another connection")
                if q is None:
                    self.broker.queues[spec.name] = _Queue(
                        spec.name,
                        durable=spec.durable,
                        owner=self if spec.exclusive else None,
                        dead_letter_exchange=spec.arguments.get("x-dead-letter-exchange"),
                        max_length=spec.arguments.get("x-max-length"),
                        max_bytes=spec.arguments.get("x-max-length-bytes"),
                        overflow=spec.arguments.get("x-overflow", "drop-head"),
                        declared=(spec.durable, spec.auto_delete, dict(spec.arguments)),
                    )
                elif q.declared != (spec.durable, spec.auto_delete, spec.arguments):
                    raise BrokerRefused(
                        f"queue {spec.name} exists with other arguments (PRECONDITION_FAILED)"
                    )
                if spec.bind_to:
                    if spec.bind_to not in self.broker.exchanges:
                        raise BrokerUnavailable(f"no exchange {spec.bind_to} to bind to")
                    for key in spec.routing_keys:
                        binding = (spec.name, key)
                        if binding not in self.broker.bindings[spec.bind_to]:
                            self.broker.bindings[spec.bind_to].append(binding)

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
        self._check()
        expires = time.monotonic() + expiration_ms / 1000 if expiration_ms is not None else None
        msg = Message(
            queue,
            bytes(body),
            type,
            dict(headers) if headers else None,
            reply_to,
            correlation_id,
            persistent,
            expires,
            self.name,
            self.user,
        )
        exchange, key = route(queue)
        with self.broker.lock:
            if not self.broker.may_publish(self.user, exchange, key):
                # RabbitMQ closes the channel (the one channel of a Transport), and
                # warren.broker raises BrokerRefused for ACCESS_REFUSED.
                self.broker._drop(self)
                raise BrokerRefused(
                    f"RabbitMQ refused: ACCESS_REFUSED - write access to topic {key!r} in "
                    f"exchange {exchange!r} refused for user {self.user!r} (stub)"
                )
            outcome = self.broker._route(msg)
            if outcome is None:
                # RabbitMQ closes the channel, and the connection's next call fails.
                self.broker._drop(self)
                return
        if on_confirm is not None:
            self._done.append((on_confirm, outcome))

    def publish_and_wait(self, queue: str, body: bytes, *, type: str, **kw: Any) -> None:
        result: list[Confirm] = []
        self.publish(queue, body, type=type, on_confirm=result.append, **kw)
        self.wait_for_confirms()
        if result != [Confirm.ACK]:
            raise Undeliverable(f"the stub broker did not accept a {type} message for {queue}.")

    def wait_for_confirms(self, timeout: float | None = None) -> None:
        self._check()
        self.poll_confirms()

    def poll_confirms(self) -> None:
        while self._done:
            callback, ok = self._done.popleft()
            callback(ok)

    # -- consuming -------------------------------------------------------------------------

    def consume(self, queue: str, handler: Handler, prefetch: int | None = None) -> str:
        self._check()
        with self.broker.lock:
            q = self.broker.queues.get(queue)
            # RabbitMQ closes the channel over either (NOT_FOUND, RESOURCE_LOCKED): the one
            # channel of a Transport, so the connection is as good as lost.
            if q is None:
                self.broker._drop(self)
                raise BrokerUnavailable(f"no queue {queue!r} to consume from")
            if q.owner is not None and q.owner is not self:
                self.broker._drop(self)
                raise Locked(f"queue {queue} is exclusive to another connection")
            tag = f"ctag-{next(self.broker._tags)}"
            q.consumers.append(_Consumer(self, handler, prefetch or self.settings.prefetch, tag))
            self.broker.changed.notify_all()
        return tag

    def _settle(self, tag: int, ack: bool, requeue: bool) -> None:
        self._check()
        with self.broker.lock:
            entry = self.unacked.pop(tag, None)
            consumer = self._consumers.pop(tag, None)
            if entry is None:
                raise BrokerRefused(f"unknown delivery tag {tag} (PRECONDITION_FAILED)")
            if consumer is not None:
                consumer.unacked -= 1
            queue, msg = entry
            q = self.broker.queues.get(queue)
            if not ack and requeue and q is not None:
                q.messages.appendleft(replace(msg, redelivered=True))
            elif not ack:
                self.broker._dead_letter(queue, msg)
            self.broker.changed.notify_all()

    def process(self, time_limit: float = 0.5) -> None:
        """Run due timers, threadsafe calls, confirm callbacks and deliveries on this
        thread; return once some ran, or when ``time_limit`` has passed (as pika's
        ``process_data_events`` does)."""
        deadline = time.monotonic() + time_limit
        while True:
            self._check()
            worked = self._run_ready()
            if worked or time.monotonic() >= deadline:
                return
            if not worked:
                with self.broker.lock:
                    if not self._has_work():
                        wait = deadline - time.monotonic()
                        if self._timers:
                            wait = min(wait, self._timers[0][0] - time.monotonic())
                        self.broker.changed.wait(max(0.0, min(wait, 0.05)))

    def _has_work(self) -> bool:
        if self._calls or self._done or self.closed:
            return True
        if self._timers and self._timers[0][0] <= time.monotonic():
            return True
        return any(
            q.messages and any(c.conn is self and c.unacked < c.prefetch for c in q.consumers)
            for q in self.broker.queues.values()
        )

    def _run_ready(self) -> bool:
        worked = False
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            fn()
            worked = True
        with self.broker.lock:
            calls = list(self._calls)
            self._calls.clear()
        for fn in calls:
            fn()
            worked = True
        if self._done:
            self.poll_confirms()
            worked = True
        while not self.closed:
            with self.broker.lock:
                got = self.broker._next_delivery(self)
                if got is None:
                    break
                consumer, queue, msg = got
                tag = next(self.broker._tags)
                self.unacked[tag] = (queue, msg)
                self._consumers[tag] = consumer
            delivery = Delivery(
                body=msg.body,
                delivery_tag=tag,
                redelivered=msg.redelivered,
                type=msg.type,
                headers=msg.headers,
                reply_to=None if is_service_queue(msg.reply_to or "") else msg.reply_to,
                correlation_id=msg.correlation_id,
                queue=queue,
                settle=self._settle,
                user_id=msg.user_id,
                routing_key=msg.routing_key,
            )
            dispatch(self.name, delivery, consumer.handler)
            worked = True
        return worked

    # -- threads and timers ----------------------------------------------------------------

    def call_threadsafe(self, fn: Callable[[], None]) -> None:
        with self.broker.lock:
            if self.closed:
                raise BrokerUnavailable("the connection is closed")
            self._calls.append(fn)
            self.broker.changed.notify_all()

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._seq), fn))
