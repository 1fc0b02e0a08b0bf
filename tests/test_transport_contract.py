"""The transport contract, one suite run against both the in-memory broker and RabbitMQ.

``warren.testing``'s stub broker stands in for RabbitMQ in every fast test, so whatever it
does differently from RabbitMQ is a place where a test passes and production fails. Each
test here runs twice, on a fresh ``StubBroker`` and on a fresh vhost of the suite's
private RabbitMQ node, through the ``Connect`` factory the roles take, declaring what it
needs with ``warren.topology``; RabbitMQ is the truth, and the stub is fixed to match it.

Covered: publisher confirms, returns (mandatory), nacks (a queue with ``x-max-length`` and
``x-overflow: reject-publish`` refusing), dead-lettering of rejects and of expired
messages, redelivery after a dropped connection, prefetch, turn-taking between the queues
one connection consumes, exclusive queues, channel errors (a missing queue or exchange,
a queue redeclared with other arguments), ``user_id``, and where callbacks run.

One disagreement is left, marked xfail on the stub: RabbitMQ's turns between a
connection's queues are a prefetch long, the stub's one delivery long
(``test_turns_come_a_prefetch_at_a_time``). The stub's other fault hooks (``refuse``,
``intercept``, ``restart``) have no RabbitMQ twin to compare with and are exercised by the
role tests.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from devtools.localnode import LocalNode
from warren.broker import Connection, _pika_shut_socket
from warren.config import Settings
from warren.errors import BrokerRefused, BrokerUnavailable, Locked
from warren.testing import StubBroker
from warren.topology import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    MANAGER_EVENTS,
    QueueSpec,
    Topology,
    client_reply_queue,
    client_topology,
    manager_topology,
    route,
    worker_chunks,
    worker_control,
    worker_orders,
    worker_topology,
)
from warren.transport import Confirm, Connect, Delivery, Handler, Transport


@dataclass
class Broker:
    """One fresh broker (a StubBroker, or a vhost of its own on RabbitMQ) and the
    connections a test opened on it."""

    kind: str
    connect: Connect
    url_for: Callable[[str], str]  # the AMQP URL for a broker user
    drop: Callable[[Transport], None]  # the connection lost, as a network failure would
    opened: list[Transport] = field(default_factory=list)

    def open(self, name: str, user: str = "guest", **settings: Any) -> Transport:
        conn = self.connect(Settings(amqp_url=self.url_for(user), **settings), name)
        conn.open(give_up_after=5)
        self.opened.append(conn)
        return conn


@pytest.fixture(params=["stub", pytest.param("rabbitmq", marks=pytest.mark.integration)])
def broker(request: pytest.FixtureRequest) -> Iterator[Broker]:
    if request.param == "stub":
        stub = StubBroker()

        def stub_drop(conn: Transport) -> None:
            stub.disconnect(lambda name: name == conn.name)

        b = Broker("stub", stub.connect, lambda user: f"amqp://{user}:pw@stub/%2F", stub_drop)
        yield b
        for conn in b.opened:
            conn.close()
        return
    rabbit: LocalNode = request.getfixturevalue("rabbit")
    vhost = f"contract-{uuid.uuid4().hex[:8]}"
    rabbit.add_vhost(vhost)
    users: list[str] = []

    def url_for(user: str) -> str:
        if user != "guest" and user not in users:
            rabbit.api("PUT", f"users/{user}", {"password": "pw", "tags": ""})
            rabbit.api(
                "PUT",
                f"permissions/{vhost}/{user}",
                {"configure": ".*", "write": ".*", "read": ".*"},
            )
            users.append(user)
        return rabbit.url_for(user, "guest" if user == "guest" else "pw", vhost)

    def rabbit_drop(conn: Transport) -> None:
        assert isinstance(conn, Connection)
        _pika_shut_socket(conn._conn)

    b = Broker("rabbitmq", Connection, url_for, rabbit_drop)
    try:
        yield b
    finally:
        for conn in b.opened:
            conn.close()
        rabbit.delete_vhost(vhost)
        for user in users:
            rabbit.api("DELETE", f"users/{user}")


def pump(conn: Transport, until: Callable[[], bool], timeout: float = 3.0) -> None:
    """Process ``conn`` until ``until()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out waiting on the broker"
        conn.process(0.05)


def settle_for(conn: Transport, seconds: float) -> None:
    """Process ``conn`` for ``seconds``: time for anything more the broker would send."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.process(0.05)


def acking(into: list[Any], *, body: bool = False, label: str | None = None) -> Handler:
    """A handler that notes each delivery (or its body, or a label) and acks it."""

    def handler(d: Delivery) -> None:
        into.append(label if label is not None else d.body if body else d)
        d.ack()

    return handler


W = "w1"
CHUNKS = worker_chunks(W)
CONTROL = worker_control(W)


def publish_confirmed(conn: Transport, queue: str, bodies: list[bytes], **kw: Any) -> None:
    outcomes: list[Confirm] = []
    for body in bodies:
        conn.publish(queue, body, type="t", on_confirm=outcomes.append, **kw)
    conn.wait_for_confirms()
    assert outcomes == [Confirm.ACK] * len(bodies)


# -- publishing ----------------------------------------------------------------------------


def test_a_routed_publish_is_confirmed_later_never_inside_publish(broker: Broker) -> None:
    conn = broker.open("pub")
    conn.declare(worker_topology(W))
    got: list[Confirm] = []
    conn.publish(CHUNKS, b"x", type="t", on_confirm=got.append)
    assert got == []  # never inside publish
    pump(conn, lambda: bool(got))
    assert got == [Confirm.ACK]


def test_a_publish_to_a_queue_that_does_not_exist_is_returned(broker: Broker) -> None:
    conn = broker.open("pub")
    conn.declare(manager_topology())  # the exchanges, but no worker's queue
    got: list[Confirm] = []
    conn.publish(worker_chunks("nobody"), b"x", type="t", on_confirm=got.append)
    conn.publish(client_reply_queue("gone"), b"x", type="t", on_confirm=got.append)
    conn.wait_for_confirms()
    assert got == [Confirm.RETURNED, Confirm.RETURNED]


def test_a_full_queue_that_rejects_publishes_nacks_them(broker: Broker) -> None:
    exchange, key = route(CHUNKS)
    full = QueueSpec(
        CHUNKS,
        arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
        bind_to=exchange,
        routing_key=key,
    )
    conn = broker.open("pub")
    conn.declare(manager_topology() + Topology(queues=(full,)))
    got: list[Confirm] = []
    for body in (b"first", b"second"):
        conn.publish(CHUNKS, body, type="t", on_confirm=got.append)
        conn.wait_for_confirms()
    assert got == [Confirm.ACK, Confirm.NACK]
    bodies: list[bytes] = []
    conn.consume(CHUNKS, acking(bodies, body=True))
    settle_for(conn, 0.3)
    assert bodies == [b"first"]


# -- dead letters ---------------------------------------------------------------------------


def test_a_full_queue_drops_its_oldest_into_the_dead_letters_by_default(broker: Broker) -> None:
    exchange, key = route(CHUNKS)
    full = QueueSpec(
        CHUNKS,
        arguments={"x-max-length": 1, "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE},
        bind_to=exchange,
        routing_key=key,
    )
    conn = broker.open("pub")
    conn.declare(manager_topology() + Topology(queues=(full,)))
    publish_confirmed(conn, CHUNKS, [b"first", b"second"])
    bodies: list[bytes] = []
    dead: list[bytes] = []
    conn.consume(CHUNKS, acking(bodies, body=True))
    conn.consume(DEAD_LETTER_QUEUE, acking(dead, body=True))
    settle_for(conn, 0.3)
    assert bodies == [b"second"] and dead == [b"first"]


def test_a_delivery_rejected_without_requeue_is_dead_lettered(broker: Broker) -> None:
    conn = broker.open("w")
    conn.declare(worker_topology(W))
    publish_confirmed(conn, CHUNKS, [b"bad", b"worse"], headers={"k": "v"})
    seen: list[Delivery] = []

    def refuse(d: Delivery) -> None:
        seen.append(d)
        if d.body == b"bad":
            d.reject(requeue=False)
        else:
            raise ValueError("a handler that fails: dispatch dead-letters it")

    conn.consume(CHUNKS, refuse)
    dead: list[Delivery] = []
    conn.consume(DEAD_LETTER_QUEUE, acking(dead))
    pump(conn, lambda: len(dead) == 2)
    settle_for(conn, 0.2)
    assert [d.body for d in seen] == [b"bad", b"worse"]  # neither came back
    assert sorted(d.body for d in dead) == [b"bad", b"worse"]
    for d in dead:
        assert d.type == "t"
        assert d.user_id == conn.user
        assert d.headers is not None and d.headers["k"] == "v"
        assert d.redelivered is False


def test_a_message_that_outlives_its_expiration_is_never_delivered(broker: Broker) -> None:
    conn = broker.open("w")
    conn.declare(worker_topology(W))
    publish_confirmed(conn, MANAGER_EVENTS, [b"stale"], expiration_ms=50, persistent=False)
    publish_confirmed(conn, MANAGER_EVENTS, [b"fresh"], expiration_ms=10_000)
    publish_confirmed(conn, MANAGER_EVENTS, [b"forever"])
    time.sleep(0.3)
    got: list[bytes] = []
    conn.consume(MANAGER_EVENTS, acking(got, body=True))
    pump(conn, lambda: len(got) >= 2)
    settle_for(conn, 0.2)
    assert got == [b"fresh", b"forever"]


def test_an_expired_message_goes_to_its_queues_dead_letter_exchange(broker: Broker) -> None:
    """RabbitMQ dead-letters an expired message when its queue has a dead-letter exchange
    (every durable warren queue has): a heartbeat that waited out a manager's absence ends
    up in ``warren.dead-letters``, not nowhere."""
    conn = broker.open("w")
    conn.declare(worker_topology(W))
    publish_confirmed(conn, MANAGER_EVENTS, [b"beat"], expiration_ms=50, persistent=False)
    time.sleep(0.2)
    got: list[bytes] = []
    conn.consume(MANAGER_EVENTS, acking(got, body=True))
    dead: list[bytes] = []
    conn.consume(DEAD_LETTER_QUEUE, acking(dead, body=True))
    pump(conn, lambda: bool(dead))
    assert got == [] and dead == [b"beat"]


# -- consuming ----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["dropped", "closed"])
def test_unacked_deliveries_come_back_redelivered_on_a_new_connection(
    broker: Broker, how: str
) -> None:
    first = broker.open("first")
    first.declare(worker_topology(W))
    publish_confirmed(first, CHUNKS, [b"%d" % i for i in range(5)])
    held: list[Delivery] = []
    first.consume(CHUNKS, held.append, prefetch=3)
    pump(first, lambda: len(held) == 3)
    assert [d.body for d in held] == [b"0", b"1", b"2"]
    assert not any(d.redelivered for d in held)
    if how == "dropped":
        broker.drop(first)
    else:
        first.close()

    second = broker.open("second")
    second.declare(worker_topology(W))
    got: list[Delivery] = []
    second.consume(CHUNKS, acking(got))
    pump(second, lambda: len(got) == 5)
    # Back in their places, ahead of what was never delivered.
    assert [(d.body, d.redelivered) for d in got] == [
        (b"0", True),
        (b"1", True),
        (b"2", True),
        (b"3", False),
        (b"4", False),
    ]


def test_a_delivery_rejected_with_requeue_comes_back_redelivered_first(broker: Broker) -> None:
    conn = broker.open("w")
    conn.declare(worker_topology(W))
    publish_confirmed(conn, CHUNKS, [b"a", b"b"])
    got: list[tuple[bytes, bool]] = []

    def handler(d: Delivery) -> None:
        got.append((d.body, d.redelivered))
        if len(got) == 1:
            d.reject(requeue=True)
        else:
            d.ack()

    conn.consume(CHUNKS, handler, prefetch=1)
    pump(conn, lambda: len(got) == 3)
    assert got == [(b"a", False), (b"a", True), (b"b", False)]


def test_a_consumer_holds_at_most_its_prefetch_unacked(broker: Broker) -> None:
    conn = broker.open("w")
    conn.declare(worker_topology(W))
    publish_confirmed(conn, CHUNKS, [b"%d" % i for i in range(6)])
    held: list[Delivery] = []
    conn.consume(CHUNKS, held.append, prefetch=2)
    pump(conn, lambda: len(held) == 2)
    settle_for(conn, 0.3)
    assert len(held) == 2
    held[0].ack()
    pump(conn, lambda: len(held) == 3)
    settle_for(conn, 0.3)
    assert [d.body for d in held] == [b"0", b"1", b"2"]


def test_the_queues_one_connection_consumes_take_turns(broker: Broker) -> None:
    """With a backlog on both, neither queue is drained before the other gets a turn."""
    conn = broker.open("w", prefetch=2)
    conn.declare(worker_topology(W))
    publish_confirmed(conn, CHUNKS, [b"c"] * 15)
    publish_confirmed(conn, CONTROL, [b"k"] * 15)
    order: list[str] = []
    conn.consume(CHUNKS, acking(order, label="chunks"))
    conn.consume(CONTROL, acking(order, label="control"))
    pump(conn, lambda: len(order) >= 10)
    first = order[:10]
    assert first.count("chunks") >= 3 and first.count("control") >= 3, first


# -- exclusive queues ------------------------------------------------------------------------


def test_an_exclusive_reply_queue_is_its_connections_alone_and_dies_with_it(
    broker: Broker,
) -> None:
    services = broker.open("manager")
    services.declare(manager_topology())
    reply = client_reply_queue("alice")
    owner = broker.open("client")
    owner.declare(client_topology(reply))

    other = broker.open("intruder")
    with pytest.raises(Locked):
        other.consume(reply, acking([]))
    other = broker.open("intruder-2")
    with pytest.raises(Locked):
        other.declare(client_topology(reply))

    got: list[Confirm] = []
    services.publish(reply, b"answer", type="t", on_confirm=got.append)
    services.wait_for_confirms()
    owner.close()
    services.publish(reply, b"too late", type="t", on_confirm=got.append)
    services.wait_for_confirms()
    assert got == [Confirm.ACK, Confirm.RETURNED]


def test_consuming_a_queue_that_is_not_there_fails_and_takes_the_channel_with_it(
    broker: Broker,
) -> None:
    """RabbitMQ closes the channel over a refused consume (NOT_FOUND): the connection
    reconnects, as over any lost channel, rather than stop (it is not a refusal)."""
    conn = broker.open("w")
    conn.declare(manager_topology())
    with pytest.raises(BrokerUnavailable):
        conn.consume(worker_chunks("nobody"), acking([]))
    with pytest.raises(BrokerUnavailable):
        conn.publish(MANAGER_EVENTS, b"x", type="t")
        conn.wait_for_confirms()


def test_a_publish_through_an_exchange_that_is_not_there_fails_the_channel(
    broker: Broker,
) -> None:
    """Not a return: RabbitMQ closes the channel (NOT_FOUND) and no confirm ever comes."""
    conn = broker.open("pub")
    got: list[Confirm] = []
    with pytest.raises(BrokerUnavailable):
        conn.publish(MANAGER_EVENTS, b"x", type="t", on_confirm=got.append)
        conn.wait_for_confirms()
    assert got == []


def test_redeclaring_a_queue_with_other_arguments_is_refused(broker: Broker) -> None:
    """PRECONDITION_FAILED: a queue keeps the arguments it was made with, so a deployment
    that changes them (say, a queue type) must delete the queue first."""
    exchange, key = route(CHUNKS)
    conn = broker.open("w")
    conn.declare(worker_topology(W))
    other = broker.open("w-again")
    changed = QueueSpec(CHUNKS, arguments={"x-max-length": 5}, bind_to=exchange, routing_key=key)
    with pytest.raises(BrokerRefused):
        other.declare(manager_topology() + Topology(queues=(changed,)))
    publish_confirmed(conn, CHUNKS, [b"still works"])  # the other connection's refusal only


# -- identity, threads, timers ---------------------------------------------------------------


def test_a_delivery_carries_the_publishing_connections_user(broker: Broker) -> None:
    consumer = broker.open("manager")
    consumer.declare(worker_topology(W))
    sender = broker.open("alice", user=f"alice-{uuid.uuid4().hex[:6]}")
    assert sender.user.startswith("alice-")
    publish_confirmed(sender, CHUNKS, [b"hi"])
    got: list[Delivery] = []
    consumer.consume(CHUNKS, acking(got))
    pump(consumer, lambda: bool(got))
    assert got[0].user_id == sender.user


def test_a_delivery_says_the_routing_key_it_came_by(broker: Broker) -> None:
    # A worker's chunks queue is bound with two keys: its chunks and the manager's orders
    # (only the manager may publish with the latter), and each delivery tells them apart.
    conn = broker.open("manager")
    conn.declare(worker_topology(W))
    publish_confirmed(conn, CHUNKS, [b"chunk"])
    publish_confirmed(conn, worker_orders(W), [b"order"])
    got: list[Delivery] = []
    conn.consume(CHUNKS, acking(got))
    pump(conn, lambda: len(got) == 2)
    assert [(d.body, d.queue, d.routing_key) for d in got] == [
        (b"chunk", CHUNKS, f"{W}.chunks"),
        (b"order", CHUNKS, f"{W}.orders"),
    ]


def test_threadsafe_calls_and_timers_run_on_the_connections_thread_inside_process(
    broker: Broker,
) -> None:
    conn = broker.open("w")
    ran: list[tuple[str, int]] = []
    me = threading.get_ident()

    def from_elsewhere() -> None:
        conn.call_threadsafe(lambda: ran.append(("threadsafe", threading.get_ident())))

    t = threading.Thread(target=from_elsewhere)
    t.start()
    t.join()
    conn.call_later(0.1, lambda: ran.append(("later", threading.get_ident())))
    time.sleep(0.2)
    assert ran == []  # nothing runs outside process
    started = time.monotonic()
    pump(conn, lambda: len(ran) == 2)
    assert sorted(ran) == [("later", me), ("threadsafe", me)]
    assert time.monotonic() - started < 1.0


def test_process_returns_once_something_ran(broker: Broker) -> None:
    conn = broker.open("w")
    conn.declare(worker_topology(W))
    got: list[bytes] = []
    conn.consume(CHUNKS, acking(got, body=True))
    conn.call_later(0.1, lambda: conn.publish(CHUNKS, b"x", type="t"))
    started = time.monotonic()
    while not got:
        conn.process(5.0)
    assert time.monotonic() - started < 2.0


def test_turns_come_a_prefetch_at_a_time(broker: Broker, request: pytest.FixtureRequest) -> None:
    """RabbitMQ pushes a consumer up to its prefetch as soon as it consumes, so with a
    backlog on both queues the one consumed first is delivered a whole prefetch before the
    other gets a turn: turns are prefetch-sized, not one delivery each. The stub takes
    turns delivery by delivery, fairer than RabbitMQ: a role test on it cannot see a queue
    kept waiting behind a prefetch of another's (the manager's heartbeats behind 32
    requests). Matching it needs the stub to push deliveries to a connection as RabbitMQ
    does, not hand them out when its process asks: a larger change, left for now."""
    if broker.kind == "stub":
        request.applymarker(
            pytest.mark.xfail(strict=True, reason="the stub alternates delivery by delivery")
        )
    conn = broker.open("w", prefetch=8)
    conn.declare(worker_topology(W))
    publish_confirmed(conn, CHUNKS, [b"c"] * 12)
    publish_confirmed(conn, CONTROL, [b"k"] * 12)
    order: list[str] = []
    conn.consume(CHUNKS, acking(order, label="c"))
    conn.consume(CONTROL, acking(order, label="k"))
    pump(conn, lambda: len(order) == 24)
    assert "".join(order).startswith("c" * 8), "".join(order)
