"""Repair: bring every file back to its wanted number of live replicas.

The manager calls ``Repairs.plan`` once a second. Each planned copy is a ``worker.copy``
command to a live holder, which sends the blob to the target as a one-hop upload; the
target verifies it and reports ``replica.stored`` like any replica. At most
``limit`` copies run at once, so a lost worker does not flood the cluster, and a copy
that does not finish in time is planned again, possibly from another holder.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass

from manager.chains import Candidate, choose_chain
from manager.holdings import Shortfall
from warren.errors import Refused

log = logging.getLogger("warren.manager.repair")

# A copy gets this long plus time for its bytes before it counts as lost.
BASE_TIMEOUT = 60.0
SECONDS_PER_BYTE = 1 / (20 * 1024 * 1024)


@dataclass(frozen=True)
class Copy:
    sha256: str
    size: int
    source: str
    target: str
    upload_id: str
    deadline: float


class Repairs:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight: dict[str, Copy] = {}  # by sha256

    def plan(
        self, shortfalls: list[Shortfall], candidates: list[Candidate], now: float
    ) -> list[Copy]:
        """The copies to start now (at most ``limit`` in flight in all)."""
        for sha, copy in list(self.in_flight.items()):
            if now > copy.deadline:
                log.warning(
                    "repair %s: copy of %s to %s timed out; will try again",
                    copy.upload_id,
                    sha[:12],
                    copy.target,
                )
                del self.in_flight[sha]
        started: list[Copy] = []
        for short in shortfalls:
            if len(self.in_flight) >= self.limit:
                break
            if short.sha256 in self.in_flight or not short.live_holders:
                continue  # under way, or nothing left to copy from
            # Not to a worker still deleting an old copy of it: the delete, on another
            # queue, could come after the copy and take it away.
            taken = set(short.live_holders) | set(short.avoid)
            others = [c for c in candidates if c.name not in taken]
            try:
                (target,) = choose_chain(others, short.size, 1)
            except Refused:
                continue  # no live worker with room: try again later
            copy = Copy(
                sha256=short.sha256,
                size=short.size,
                source=short.live_holders[int(short.sha256[:8], 16) % len(short.live_holders)],
                target=target,
                upload_id=uuid.uuid4().hex,
                deadline=now + BASE_TIMEOUT + short.size * SECONDS_PER_BYTE,
            )
            self.in_flight[short.sha256] = copy
            started.append(copy)
        return started

    def stored(self, sha256: str, worker: str) -> Copy | None:
        """A replica arrived; return the copy it completes, if it was one of ours."""
        copy = self.in_flight.get(sha256)
        if copy is not None and copy.target == worker:
            del self.in_flight[sha256]
            return copy
        return None

    def copies_to(self, worker: str) -> frozenset[str]:
        """The upload ids of the copies under way to ``worker``: the replicas it may be
        credited with beyond the uploads placed on it."""
        return frozenset(c.upload_id for c in self.in_flight.values() if c.target == worker)

    def failed(self, upload_id: str) -> None:
        for sha, copy in list(self.in_flight.items()):
            if copy.upload_id == upload_id:
                del self.in_flight[sha]
