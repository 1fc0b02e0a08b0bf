"""Bounds only RabbitMQ shows: the manager's request queue refuses (nacks) a publish past
its bound, and a request queue declared by an older warren (no bound) is still used.

The in-memory broker keeps the same bounds for the role tests (``warren.testing``); these
prove that the arguments warren declares make RabbitMQ behave as the stub does.
"""

from __future__ import annotations

import logging
import urllib.parse
import uuid
from collections.abc import Iterator

import pytest

from devtools.localnode import LocalNode
from warren.broker import Connection
from warren.config import Settings
from warren.topology import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    MANAGER_REQUESTS,
    REQUESTS_MAX_LENGTH,
    QueueSpec,
    Topology,
    manager_topology,
    route,
)
from warren.transport import Confirm


@pytest.fixture
def vhost(rabbit: LocalNode) -> Iterator[str]:
    name = f"limits-{uuid.uuid4().hex[:8]}"
    rabbit.add_vhost(name)
    yield name
    rabbit.delete_vhost(name)


def guest(rabbit: LocalNode, vhost: str, name: str) -> Connection:
    conn = Connection(Settings(amqp_url=rabbit.url_for("guest", "guest", vhost)), name)
    conn.open(give_up_after=10)
    return conn


def test_the_request_queue_nacks_a_publish_past_its_bound(rabbit: LocalNode, vhost: str) -> None:
    # Given the manager's topology, with nobody consuming its requests
    conn = guest(rabbit, vhost, "flood")
    conn.declare(manager_topology())
    # When a client publishes one request more than the bound
    results: list[Confirm] = []
    for _ in range(REQUESTS_MAX_LENGTH + 1):
        conn.publish(MANAGER_REQUESTS, b"{}", type="list", on_confirm=results.append)
    conn.wait_for_confirms(timeout=30)
    conn.close()
    # Then RabbitMQ took the bound's worth and nacked the one past it (reject-publish)
    assert results.count(Confirm.ACK) == REQUESTS_MAX_LENGTH
    assert results.count(Confirm.NACK) == 1
    # And the dead letters are bounded too, dropping the oldest
    quoted = urllib.parse.quote(vhost, safe="")
    dead = rabbit.api("GET", f"queues/{quoted}/{urllib.parse.quote(DEAD_LETTER_QUEUE)}")
    assert dead["arguments"]["x-overflow"] == "drop-head"
    assert dead["arguments"]["x-max-length"] > 0


def test_a_request_queue_from_before_the_bound_is_used_as_it_is(
    rabbit: LocalNode, vhost: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the request queue as an older warren declared it: no bound
    old = guest(rabbit, vhost, "old")
    exchange, key = route(MANAGER_REQUESTS)
    unbounded = QueueSpec(
        MANAGER_REQUESTS,
        arguments={"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE},
        bind_to=exchange,
        routing_key=key,
    )
    old.declare(Topology(exchanges=manager_topology().exchanges, queues=(unbounded,)))
    old.close()
    # When this version declares its topology (RabbitMQ refuses the changed arguments)
    conn = guest(rabbit, vhost, "new")
    with caplog.at_level(logging.WARNING, logger="warren.broker"):
        conn.declare(manager_topology())
    # Then it goes on with the queue as it is, and says how to bound it
    results: list[Confirm] = []
    conn.publish(MANAGER_REQUESTS, b"{}", type="list", on_confirm=results.append)
    conn.wait_for_confirms(timeout=10)
    conn.close()
    assert results == [Confirm.ACK]
    assert "docs/operations.md" in caplog.text
