"""A term: one stretch of being the active manager, from taking the lock on a connection
to losing it. What the manager knows only for this term lives here: when it began, and
which workers have sent their inventory (their records) since.
"""

from __future__ import annotations

import time

# A worker asked for its report is not asked again for this long.
ASK_AGAIN = 10.0


class Term:
    def __init__(self, dead_after: float) -> None:
        self.dead_after = dead_after
        self.started = time.monotonic()
        self.reported: set[str] = set()  # workers whose inventory came in this term
        self._asked: dict[str, float] = {}

    def begin(self) -> None:
        """A new term: nobody has reported yet."""
        self.started = time.monotonic()
        self.reported = set()
        self._asked = {}

    def just_connected(self) -> bool:
        """Within dead_after seconds of this term's start: a worker silent since may only
        not have sent its next heartbeat yet."""
        return time.monotonic() - self.started < self.dead_after

    def catching_up(self, live: set[str]) -> bool:
        """Until every live worker has reported, the catalog may lack versions only the
        workers know: nothing that adds or deletes versions is taken on meanwhile."""
        return not live <= self.reported

    def should_ask(self, worker: str) -> bool:
        """A worker alive but not heard from in this term (a manager that just became
        active, or started on an empty catalog) is asked for its inventory, now and then."""
        now = time.monotonic()
        if worker in self.reported or now - self._asked.get(worker, -1e9) < ASK_AGAIN:
            return False
        self._asked[worker] = now
        return True
