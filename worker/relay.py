"""What an intake job sends: the chunk or pack republished to the next worker of its
chain, and the outcome announced to the manager (confirmed) and the client (best effort);
and the hand-back of work done on another thread to the connection's own."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from warren import messages as m
from warren import metrics
from warren.errors import BrokerUnavailable
from warren.topology import MANAGER_EVENTS, worker_chunks, worker_topology
from warren.transport import Confirm, Delivery, Transport
from worker.jobs import ChunkJob, PackJob, Step


def settled(job: ChunkJob | PackJob, settle: Callable[[], None]) -> None:
    job.step = Step.SETTLED
    settle()


def relay(
    conn: Transport,
    d: Delivery,
    nxt: str | None,
    headers: dict[str, Any],
    confirmed: Callable[[Confirm], None],
) -> None:
    """Republish a chunk or pack to the next worker of the chain; ``confirmed(ok)`` once
    the broker has it (at once, with True, at the chain's end)."""
    if nxt is None:
        confirmed(Confirm.ACK)
        return
    conn.declare(worker_topology(nxt))
    metrics.BYTES_OUT.labels("forward").inc(len(d.body))
    conn.publish(
        worker_chunks(nxt),
        d.body,
        type=d.type or m.CHUNK_TYPE,
        headers=headers,
        reply_to=d.reply_to,
        correlation_id=d.correlation_id,
        on_confirm=confirmed,
    )


def announce(conn: Transport, d: Delivery, msg: m.Message, then: Callable[[], None]) -> None:
    """Tell the manager (confirmed, then ``then``) and the client (best effort)."""
    body = msg.encode()
    if d.reply_to:
        conn.publish(
            d.reply_to, body, type=msg.TYPE, correlation_id=d.correlation_id, persistent=False
        )
    conn.publish(
        MANAGER_EVENTS,
        body,
        type=msg.TYPE,
        correlation_id=d.correlation_id,
        on_confirm=lambda ok: then() if ok else d.reject(requeue=True),
    )


def call_on(conn: Transport, fn: Callable[[], None]) -> None:
    """Run fn on conn's thread if that connection is still the live one."""
    # If the connection died, the unacked delivery will come again: nothing to do.
    with contextlib.suppress(BrokerUnavailable):
        conn.call_threadsafe(lambda: fn() if conn.is_open else None)
