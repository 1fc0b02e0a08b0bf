"""Every exchange, queue and queue argument warren uses, in one place.

Messages are published through the default exchange straight to a queue by name, so the
names below are the whole routing table. Everything is declared idempotently by whoever
uses it, again after every reconnect. Anything a consumer rejects goes to the
dead-letter exchange and waits in ``warren.dead-letters`` for an operator.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

DEAD_LETTER_EXCHANGE = "warren.dlx"
DEAD_LETTER_QUEUE = "warren.dead-letters"
MANAGER_REQUESTS = "warren.manager.requests"  # clients ask: upload, download, list, status
MANAGER_EVENTS = "warren.manager.events"  # workers tell: heartbeat, inventory, replica stored

HEARTBEAT_TTL_MS = 30_000  # a heartbeat older than this says nothing useful


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    kind: str = "fanout"
    durable: bool = True


@dataclass(frozen=True)
class QueueSpec:
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    bind_to: str | None = None  # an exchange to bind the queue to (fanout: no routing key)


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[ExchangeSpec, ...] = ()
    queues: tuple[QueueSpec, ...] = ()

    def __add__(self, other: Topology) -> Topology:
        return Topology(self.exchanges + other.exchanges, self.queues + other.queues)


def _durable(name: str) -> QueueSpec:
    """A durable queue whose rejected messages are dead-lettered, never dropped or looped."""
    return QueueSpec(name, arguments={"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE})


QUEUE_TYPES = ("classic", "quorum")


def queue_arguments(spec: QueueSpec, queue_type: str) -> dict[str, Any]:
    """The arguments to declare ``spec`` with, for the deployment's queue type.

    On a RabbitMQ cluster (``WARREN_QUEUE_TYPE=quorum``) every durable queue is a quorum
    queue, replicated on a majority of nodes, so losing one node loses no message. A
    client's exclusive reply queue lives and dies with its connection: always classic.
    """
    args = dict(spec.arguments)
    if spec.durable and not spec.exclusive and queue_type != "classic":
        args["x-queue-type"] = queue_type
    return args


def worker_chunks(worker: str) -> str:
    """The queue a worker stores upload chunks from."""
    return f"warren.worker.{worker}.chunks"


def worker_control(worker: str) -> str:
    """The queue a worker takes commands from (serve a restore, copy a blob)."""
    return f"warren.worker.{worker}.control"


def client_reply_queue(client_name: str) -> str:
    """A client's private reply queue: named for the client so the management UI reads well."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", client_name or "anonymous")[:64]
    return f"warren.client.{safe}.{uuid.uuid4().hex[:8]}"


DEAD_LETTERS = Topology(
    exchanges=(ExchangeSpec(DEAD_LETTER_EXCHANGE),),
    queues=(QueueSpec(DEAD_LETTER_QUEUE, bind_to=DEAD_LETTER_EXCHANGE),),
)


def manager_topology() -> Topology:
    return DEAD_LETTERS + Topology(queues=(_durable(MANAGER_REQUESTS), _durable(MANAGER_EVENTS)))


def worker_topology(worker: str) -> Topology:
    """A worker's own queues, and the manager's it reports to.

    Whoever publishes to a queue declares it first, so a message sent before its consumer
    ever started waits in a durable queue instead of being returned.
    """
    queues = (_durable(worker_chunks(worker)), _durable(worker_control(worker)))
    return manager_topology() + Topology(queues=queues)


def client_topology(reply_queue: str) -> Topology:
    """Only the client's reply queue, which dies with its connection.

    Clients declare nothing shared: the services own the durable queues and their type
    (classic or quorum), so a client needs no knowledge of how the cluster is deployed.
    """
    reply = QueueSpec(reply_queue, durable=False, exclusive=True, auto_delete=True)
    return Topology(queues=(reply,))


# The active manager holds this exclusive queue on its connection; a second manager cannot
# declare it (RESOURCE_LOCKED) and waits as a standby. The queue dies with the active
# manager's connection, so a standby takes over as soon as the broker notices it is gone.
MANAGER_LOCK = "warren.manager.lock"


def manager_lock_topology() -> Topology:
    return Topology(queues=(QueueSpec(MANAGER_LOCK, durable=False, exclusive=True),))
