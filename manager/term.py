"""A term: one stretch of being the active manager, from taking the lock on a connection
to losing it. What the manager knows only for this term lives here: when it began, and
which workers have sent their inventory (their records) since.
"""

from __future__ import annotations

import logging
import time

from warren import messages as m

log = logging.getLogger("warren.manager")

# A worker asked for its report is not asked again for this long.
ASK_AGAIN = 10.0


class Term:
    def __init__(self, dead_after: float) -> None:
        self.dead_after = dead_after
        self.started = time.monotonic()
        self.reported: set[str] = set()  # workers whose inventory came in this term
        self._asked: dict[str, float] = {}
        # Inventories coming in pages: each worker's report so far (id, next page, blobs).
        self._pages: dict[str, tuple[str, int, list[m.BlobEntry]]] = {}

    def begin(self) -> None:
        """A new term: nobody has reported yet."""
        self.started = time.monotonic()
        self.reported = set()
        self._asked = {}
        self._pages = {}

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

    def inventory_page(self, page: m.Inventory) -> list[m.BlobEntry] | None:
        """Take a page of a worker's inventory: every blob it holds once the last page of
        its report is in, else None. A page that does not follow the one before (another
        report began) starts over from it; a report that never ends is asked for again."""
        report, expected, blobs = self._pages.get(page.worker, (page.report, 0, []))
        if page.report != report or page.page != expected:
            if page.page != 0:
                log.warning(
                    "worker %s: inventory page %d out of turn; waiting for a whole report",
                    page.worker,
                    page.page,
                )
                self._pages.pop(page.worker, None)
                return None
            blobs = []
        blobs.extend(page.blobs)
        if not page.last:
            self._pages[page.worker] = (page.report, page.page + 1, blobs)
            return None
        self._pages.pop(page.worker, None)
        return blobs
