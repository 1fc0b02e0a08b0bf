"""What the roles need from a message broker, and nothing more.

The manager, the workers and the client are written against ``Transport``, not against
pika: ``warren.broker.Connection`` implements it on RabbitMQ, ``warren.testing`` in
memory, so the roles' logic runs in fast tests with no broker at all (dramatiq's
``StubBroker`` beside its RabbitMQ broker is the precedent).

The contract both implementations keep:

* A transport is one connection owned by one thread. Handlers, confirm callbacks, timers
  and ``call_threadsafe`` functions all run on that thread, inside ``process`` (confirm
  callbacks also in ``wait_for_confirms`` and ``poll_confirms``): never on another thread,
  never inside a ``publish`` call.
* Every publish carries the connection's broker user as ``user_id``; a delivery's
  ``user_id`` is therefore its sender's identity.
* ``publish`` is mandatory and confirmed: ``on_confirm(Confirm.ACK)`` once the broker has
  taken responsibility for the message, ``Confirm.RETURNED`` when it had nowhere to go,
  ``Confirm.NACK`` when the broker refused it. Confirm callbacks run from ``process``,
  ``wait_for_confirms`` or ``poll_confirms``: one message's follow-up never runs inside
  another's publish.
* A delivery is settled exactly once, by ``ack`` or ``reject``; rejected without requeue it
  goes to the dead-letter queue. ``dispatch`` dead-letters anything a handler fails on.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from warren.config import Settings
from warren.errors import BrokerRefused, BrokerUnavailable, DecodeError
from warren.topology import Topology

log = logging.getLogger("warren.transport")


class Confirm(enum.Enum):
    """What RabbitMQ did with a publish: took it, refused it (a nack: say, a quorum queue
    with no leader for a moment), or returned it (no queue for it). Only ``ACK`` is true,
    so ``if ok:`` reads as "taken"."""

    ACK = "ack"
    NACK = "nack"
    RETURNED = "returned"

    def __bool__(self) -> bool:
        return self is Confirm.ACK


ConfirmCallback = Callable[[Confirm], None]
# Settles a delivery on its connection: (delivery tag, ack?, requeue?).
Settle = Callable[[int, bool, bool], None]


@dataclass
class Delivery:
    """One message taken from a queue. Settle it exactly once: ack or reject."""

    body: bytes
    delivery_tag: int
    redelivered: bool
    type: str | None
    headers: dict[str, Any] | None
    reply_to: str | None
    correlation_id: str | None
    queue: str
    settle: Settle = field(repr=False)
    # The publisher's broker user, as RabbitMQ validated it (it refuses a user_id that is
    # not the connection's own user): who sent this, not what a body claims.
    user_id: str | None = None
    # The routing key it was published with: on a key only one user may publish with
    # (``topology.permissions``), the broker checked the publisher's right to it.
    routing_key: str | None = None
    settled: bool = False

    def ack(self) -> None:
        if not self.settled:
            self.settled = True
            self.settle(self.delivery_tag, True, False)

    def reject(self, requeue: bool = False) -> None:
        """Without requeue the message goes to the dead-letter queue."""
        if not self.settled:
            self.settled = True
            self.settle(self.delivery_tag, False, requeue)


Handler = Callable[[Delivery], None]


class Transport(Protocol):
    """One connection and channel to the broker, for one thread."""

    name: str
    settings: Settings
    url: str
    user: str  # the broker user it logged in as: what its messages carry as user_id

    def open(
        self, give_up_after: float | None = None, stop: threading.Event | None = None
    ) -> None: ...

    def close(self) -> None: ...

    @property
    def is_open(self) -> bool: ...

    def declare(self, topology: Topology) -> None: ...

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
    ) -> None: ...

    def publish_and_wait(self, queue: str, body: bytes, *, type: str, **kw: Any) -> None: ...

    def wait_for_confirms(self, timeout: float | None = None) -> None: ...

    def poll_confirms(self) -> None: ...

    def consume(self, queue: str, handler: Handler, prefetch: int | None = None) -> str: ...

    def process(self, time_limit: float = 0.5) -> None: ...

    def call_threadsafe(self, fn: Callable[[], None]) -> None: ...

    def call_later(self, delay: float, fn: Callable[[], None]) -> None: ...


# Makes a transport for a role: (settings, connection name shown in the management UI).
Connect = Callable[[Settings, str], Transport]


def dispatch(who: str, delivery: Delivery, handler: Handler) -> None:
    """Run ``handler`` on a delivery; dead-letter (and log) what it cannot handle.

    A message that fails to decode, or that trips a bug, must never crash a service nor
    come back forever: it is rejected without requeue into the dead-letter queue. Broker
    errors propagate, so the service reconnects (or stops, when refused).
    """
    try:
        handler(delivery)
    except (BrokerUnavailable, BrokerRefused):
        raise
    except DecodeError as exc:
        log.warning(
            "%s: dead-lettering an invalid %s message from %s: %s",
            who,
            delivery.type,
            delivery.queue,
            exc,
        )
        _count_rejected(delivery.queue)
        delivery.reject(requeue=False)
    except Exception:
        log.exception(
            "%s: dead-lettering a %s message from %s that failed",
            who,
            delivery.type,
            delivery.queue,
        )
        _count_rejected(delivery.queue)
        delivery.reject(requeue=False)


def _count_rejected(queue: str) -> None:
    # Imported here: the client never serves metrics, and prometheus_client is a sixth of
    # its start-up.
    from warren import metrics

    metrics.REJECTED.labels(queue).inc()
