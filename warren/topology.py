"""Every exchange, queue and queue argument warren uses, and who may touch which, in one place.

Callers name a queue; ``route`` maps each queue name to the exchange and routing key it is
published through, and every queue is bound to its exchange with that key. Nothing goes
through the default exchange: write permission there reaches every queue by name, so it
cannot be granted per queue. Named topic exchanges can be, with topic permissions on their
routing keys (RabbitMQ >= 3.7): ``permissions`` below is what each role's broker user may
configure, write and read, and docs/security.md says why.

Everything is declared idempotently by whoever uses it, again after every reconnect; what a
user may not declare it only checks for (``warren.broker.Connection.declare``). Anything a
consumer rejects goes to the dead-letter exchange and waits in ``warren.dead-letters`` for
an operator.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("warren.topology")

DEAD_LETTER_EXCHANGE = "warren.dlx"
DEAD_LETTER_QUEUE = "warren.dead-letters"
MANAGER_REQUESTS = "warren.manager.requests"  # clients ask: upload, download, list, status
MANAGER_EVENTS = "warren.manager.events"  # workers tell: heartbeat, inventory, replica stored

# Topic exchanges, one per kind of consumer; each queue is bound with its own routing key.
MANAGER_EXCHANGE = "warren.manager"  # routing keys: requests, events
# Routing keys: <worker>.chunks, <worker>.control, and <worker>.orders: the manager's
# commands for a worker's chunks queue (bound with both keys, so they stay in order with its
# chunks), by a key only the manager may write. The key a message came by is thereby who may
# have sent it, as the broker checked (``manager_only_keys``).
WORKERS_EXCHANGE = "warren.workers"
CLIENTS_EXCHANGE = "warren.clients"  # routing key: the reply queue's own name
EXCHANGES = (MANAGER_EXCHANGE, WORKERS_EXCHANGE, CLIENTS_EXCHANGE)

# The largest message the broker takes, set explicitly as ``max_message_size`` in
# broker/rabbitmq.conf and in devtools/localnode.py's config (RabbitMQ 3.x defaults to it,
# 4.x to 16 MiB): a chunk (or a pack, or a restore chunk, at most a chunk's bytes in a zstd
# frame) plus its headers must fit, so the largest WARREN_CHUNK_SIZE leaves room for them.
MAX_MESSAGE_SIZE = 128 * 1024 * 1024
MESSAGE_HEADROOM = 1024 * 1024  # headers (a pack's manifest) and a zstd frame's overhead


def max_chunk_size() -> int:
    """The largest WARREN_CHUNK_SIZE: 64 MiB (what a restore takes, compression.MAX_CHUNK),
    less if the broker's messages could not hold it with its headers."""
    return min(64 * 1024 * 1024, MAX_MESSAGE_SIZE - MESSAGE_HEADROOM)


CLIENT_QUEUE_PREFIX = "warren.client."

# Bounds on the queues anyone may fill. Past REQUESTS_MAX_LENGTH waiting requests RabbitMQ
# refuses (nacks) another (reject-publish): a client that floods the manager's queue is
# told busy, and so is everyone else while it lasts, but the broker's memory and disk are
# not the flood's. Dead letters wait for an operator: past their bound the oldest go
# (drop-head), so a storm of rejects cannot fill the broker's disk either.
REQUESTS_MAX_LENGTH = 10_000
DEAD_LETTERS_MAX_LENGTH = 10_000
DEAD_LETTERS_MAX_BYTES = 512 * 1024 * 1024  # rejected chunks are large: bytes bound too
BOUND_ARGUMENTS = ("x-max-length", "x-max-length-bytes", "x-overflow")
_WORKER_QUEUE = re.compile(r"warren\.worker\.(?P<worker>.+)\.(?P<kind>chunks|control|orders)")


@dataclass(frozen=True)
class ExchangeSpec:
    name: str
    kind: str = "fanout"
    durable: bool = True
    # Only check that it exists, never create it: the services own it (a client's view).
    passive: bool = False


@dataclass(frozen=True)
class QueueSpec:
    name: str
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False
    arguments: dict[str, Any] = field(default_factory=dict)
    bind_to: str | None = None  # an exchange to bind the queue to
    routing_key: str = ""  # the binding's key (a fanout exchange ignores it)
    also_bound: tuple[str, ...] = ()  # more keys it is bound with, on the same exchange

    @property
    def routing_keys(self) -> tuple[str, ...]:
        return (self.routing_key, *self.also_bound)


@dataclass(frozen=True)
class Topology:
    exchanges: tuple[ExchangeSpec, ...] = ()
    queues: tuple[QueueSpec, ...] = ()

    def __add__(self, other: Topology) -> Topology:
        return Topology(self.exchanges + other.exchanges, self.queues + other.queues)


def route(queue: str) -> tuple[str, str]:
    """The exchange and routing key a message for ``queue`` is published with.

    The manager's and workers' queues each have their exchange; any other name is a
    client's reply queue, reached through ``warren.clients`` under its own name.
    """
    if queue in (MANAGER_REQUESTS, MANAGER_EVENTS):
        return MANAGER_EXCHANGE, queue.rsplit(".", 1)[1]
    found = _WORKER_QUEUE.fullmatch(queue)
    if found:
        return WORKERS_EXCHANGE, f"{found['worker']}.{found['kind']}"
    return CLIENTS_EXCHANGE, queue


def is_service_queue(name: str) -> bool:
    """A queue of the manager, of a worker or of the broker's plumbing: never a reply queue.

    A delivery's ``reply_to`` naming one is dropped by the transport, so no client can make
    a service answer (as itself) into another service's queue.
    """
    return name.startswith("warren.") and not name.startswith(CLIENT_QUEUE_PREFIX)


def _durable(name: str, *also: str, **bounds: Any) -> QueueSpec:
    """A durable queue bound to its exchange, whose rejected messages are dead-lettered;
    also reached by the routes named ``also`` (on the same exchange)."""
    exchange, key = route(name)
    return QueueSpec(
        name,
        arguments={"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE, **bounds},
        bind_to=exchange,
        routing_key=key,
        also_bound=tuple(route(a)[1] for a in also),
    )


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


def worker_orders(worker: str) -> str:
    """Not a queue: the manager's route to a worker's chunks queue (records, discards and
    deletions that must stay in order with the chunks), by the key ``<worker>.orders``,
    which only the manager's user may publish with."""
    return f"warren.worker.{worker}.orders"


def manager_only_keys(worker: str) -> tuple[str, ...]:
    """The routing keys to ``worker``'s queues that only the manager may publish with
    (``permissions``): a message that came by one of them is the manager's, as far as the
    broker's topic permissions go. Where every service shares one login, anyone may."""
    return (route(worker_orders(worker))[1], route(worker_control(worker))[1])


def client_reply_queue(client_name: str) -> str:
    """A client's private reply queue: named for the client so the management UI reads well.

    Its name is also its routing key on ``warren.clients``, and a client may bind only exact
    keys there: the random part (128 bits) is what keeps another client from binding a
    queue of its own to this one's key.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]", "-", client_name or "anonymous")[:64]
    return f"{CLIENT_QUEUE_PREFIX}{safe}.{uuid.uuid4().hex}"


DEAD_LETTERS = Topology(
    exchanges=(ExchangeSpec(DEAD_LETTER_EXCHANGE),),
    queues=(
        QueueSpec(
            DEAD_LETTER_QUEUE,
            arguments={
                "x-max-length": DEAD_LETTERS_MAX_LENGTH,
                "x-max-length-bytes": DEAD_LETTERS_MAX_BYTES,
                "x-overflow": "drop-head",
            },
            bind_to=DEAD_LETTER_EXCHANGE,
        ),
    ),
)

ROUTING = Topology(exchanges=tuple(ExchangeSpec(x, "topic") for x in EXCHANGES))


def manager_topology() -> Topology:
    requests = _durable(
        MANAGER_REQUESTS, **{"x-max-length": REQUESTS_MAX_LENGTH, "x-overflow": "reject-publish"}
    )
    queues = (requests, _durable(MANAGER_EVENTS))
    return DEAD_LETTERS + ROUTING + Topology(queues=queues)


def worker_topology(worker: str) -> Topology:
    """A worker's own queues, and the manager's it reports to.

    Whoever publishes to a queue declares it first, so a message sent before its consumer
    ever started waits in a durable queue instead of being returned. A user that may not
    declare a queue (a worker forwarding to another) only checks that it exists.
    """
    chunks = _durable(worker_chunks(worker), worker_orders(worker))
    queues = (chunks, _durable(worker_control(worker)))
    return manager_topology() + Topology(queues=queues)


def client_topology(reply_queue: str) -> Topology:
    """Only the client's reply queue, which dies with its connection.

    Clients declare nothing shared: the services own the exchanges and the durable queues
    and their type (classic or quorum), so a client needs no knowledge of how the cluster
    is deployed. It checks that the exchanges exist: if not, no manager ever ran here.
    """
    exchange, key = route(reply_queue)
    reply = QueueSpec(
        reply_queue,
        durable=False,
        exclusive=True,
        auto_delete=True,
        bind_to=exchange,
        routing_key=key,
    )
    passive = tuple(ExchangeSpec(x, "topic", passive=True) for x in EXCHANGES)
    return Topology(exchanges=passive, queues=(reply,))


# -- who may do what -------------------------------------------------------------------------

ROLES = ("manager", "worker", "client")
NOTHING = "^$"  # matches no resource name and no routing key warren uses
KEYS = "(chunks|control|orders)$"  # the keys of a worker's queues (a regex's tail)


@dataclass(frozen=True)
class Permissions:
    """One broker user's rights on the vhost: regular expressions over exchange and queue
    names (configure, write, read), and per topic exchange over routing keys (write:
    publish with that key; read: bind a queue with that key). RabbitMQ allows every routing
    key on a topic exchange that has no entry, so every role has one for each."""

    configure: str
    write: str
    read: str
    topics: dict[str, tuple[str, str]]  # exchange -> (write, read)


def _names(*names: str) -> str:
    return "|".join(re.escape(n) for n in names)


def permissions(role: str, user: str) -> Permissions:
    """Exactly what ``role``'s broker user may do (``user`` is a worker's own name).

    RabbitMQ's rules that shape these: declaring a queue or exchange needs configure on it;
    binding needs write on the queue and read on the exchange (and, on a topic exchange,
    topic read on the key); a queue declared with a dead-letter exchange needs read on the
    queue and write on that exchange; consuming and purging need read on the queue, deleting
    configure; publishing needs write on the exchange (and topic write on the key).
    """
    any_worker = r"^[A-Za-z0-9_.-]+\."
    if role == "manager":
        queues = r"^warren\.manager\..+$|^warren\.worker\..+\.(chunks|control)$"
        return Permissions(
            configure=f"^({_names(*EXCHANGES, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE)})$|{queues}",
            write=f"^({_names(WORKERS_EXCHANGE, CLIENTS_EXCHANGE, DEAD_LETTER_EXCHANGE)})$"
            f"|^{re.escape(DEAD_LETTER_QUEUE)}$|{queues}",
            read=f"^({_names(MANAGER_EXCHANGE, WORKERS_EXCHANGE, DEAD_LETTER_EXCHANGE)})$|{queues}",
            topics={
                MANAGER_EXCHANGE: (NOTHING, "^(requests|events)$"),
                # Commands only: never a chunk, so never a client's or a worker's voice.
                WORKERS_EXCHANGE: (any_worker + "(orders|control)$", any_worker + KEYS),
                CLIENTS_EXCHANGE: (".*", NOTHING),
            },
        )
    if role == "worker":
        mine = f"^warren\\.worker\\.{re.escape(user)}\\.(chunks|control)$"
        return Permissions(
            configure=mine,
            write=f"^({_names(*EXCHANGES, DEAD_LETTER_EXCHANGE)})$|{mine}",
            read=f"^{re.escape(WORKERS_EXCHANGE)}$|{mine}",
            topics={
                MANAGER_EXCHANGE: ("^events$", NOTHING),
                WORKERS_EXCHANGE: (
                    any_worker + "chunks$",
                    f"^{re.escape(user)}\\.{KEYS}",
                ),
                CLIENTS_EXCHANGE: (".*", NOTHING),
            },
        )
    if role == "client":
        mine = "^" + re.escape(CLIENT_QUEUE_PREFIX)
        return Permissions(
            configure=mine,
            write=f"^({_names(MANAGER_EXCHANGE, WORKERS_EXCHANGE)})$|{mine}",
            read=f"^{re.escape(CLIENTS_EXCHANGE)}$|{mine}",
            topics={
                MANAGER_EXCHANGE: ("^requests$", NOTHING),
                WORKERS_EXCHANGE: (any_worker + "chunks$", NOTHING),
                # Exact keys only: no wildcard, so no binding that catches others' replies.
                CLIENTS_EXCHANGE: (NOTHING, mine + "[^*#]+$"),
            },
        )
    raise ValueError(f"unknown role {role!r}: the roles are manager, worker and client.")


# The active manager holds this exclusive queue on its connection; a second manager cannot
# declare it (RESOURCE_LOCKED) and waits as a standby. The queue dies with the active
# manager's connection, so a standby takes over as soon as the broker notices it is gone.
MANAGER_LOCK = "warren.manager.lock"


def manager_lock_topology() -> Topology:
    return Topology(queues=(QueueSpec(MANAGER_LOCK, durable=False, exclusive=True),))


def reply_queue(reply_to: str | None) -> str | None:
    """A delivery's ``reply_to``, unless it names a service's queue: answers and
    confirmations go to clients only, so nobody can make a service publish (as itself) into
    another service's queue, nor trip over a permission it rightly lacks."""
    if reply_to and is_service_queue(reply_to):
        log.warning("ignoring reply_to %s: it names a service's queue", reply_to)
        return None
    return reply_to
