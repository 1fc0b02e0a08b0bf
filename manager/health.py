"""What the manager watches between its ticks: which workers were alive at the last look,
which blobs may be short of live copies, the counts ``status`` shows, and each worker's
scrub report.

Work is driven by what changed: a worker gone silent, a damaged copy, an inventory that
lost blobs, a repair under way make their blobs *suspects*, and only those are checked
(indexed queries), so an idle manager costs the same at any catalog size. Every blob is
checked when a term begins and once every ``FULL_PASS`` seconds, as a safety net.
"""

from __future__ import annotations

import logging
import time

from manager.catalog import Catalog
from manager.holdings import Shortfall
from manager.repair import Repairs
from warren import metrics

log = logging.getLogger("warren.manager")

# Seconds between checks of every blob's copies when nothing says so.
FULL_PASS = 3600.0


class Health:
    def __init__(self, catalog: Catalog, repairs: Repairs) -> None:
        self.catalog = catalog
        self.repairs = repairs
        self.alive: set[str] = set()  # as of the last look
        self.suspects: set[str] | None = None  # blobs to check for copies (None: all)
        self.short: set[str] = set()  # blobs found short of live copies, last time
        self.files = 0  # files in the catalog, as last counted
        self.dirty = True  # a version came or went since: count the files again
        self.scrub: dict[str, tuple[float, int]] = {}  # worker -> (last full scrub, damaged)
        self.refused: dict[str, int] = {}  # worker -> manager commands it refused (forged)
        self._last_pass = time.monotonic()

    def new_term(self) -> None:
        """Every blob is checked once, and the files counted again."""
        self.dirty = True
        self.suspects = None
        self.alive = self.catalog.live_workers()

    def suspect(self, shas: set[str]) -> None:
        """These blobs may have too few live copies now: the next look checks them."""
        if self.suspects is not None:
            self.suspects |= shas

    def changed(self) -> None:
        """A version came or went."""
        self.dirty = True

    def count_files(self) -> int:
        if self.dirty:
            self.dirty = False
            self.files = self.catalog.count_files()
            metrics.FILES.set(self.files)
        return self.files

    def look_at_workers(self) -> set[str]:
        """Notice workers gone silent since the last look (what they held may be short
        now); the live ones."""
        alive = self.catalog.live_workers()
        for name in sorted(self.alive - alive):
            log.warning(
                "worker %s: no heartbeat for %.0f s, marked dead", name, self.catalog.dead_after
            )
            self.suspect(self.catalog.blobs_on(name))
        self.alive = alive
        metrics.WORKERS_ALIVE.set(len(alive))
        return alive

    def shortfalls(self) -> list[Shortfall] | None:
        """The blobs short of live copies among those to check (all of them now and then),
        or None when nothing needs a look."""
        now = time.monotonic()
        if now - self._last_pass > FULL_PASS:
            self._last_pass = now
            self.suspects = None  # every blob, now and then: a safety net
        if not (self.suspects is None or self.suspects or self.short or self.repairs.in_flight):
            return None
        among = None
        if self.suspects is not None:
            among = self.suspects | self.short | set(self.repairs.in_flight)
        found = self.catalog.shortfalls(time.time(), among)
        self.suspects = set()
        self.short = {s.sha256 for s in found}
        metrics.UNDER_REPLICATED.set(len(self.short))
        return found

    def under_replicated(self, now: float) -> int:
        """Blobs short of live copies as of now: one snapshot of the catalog, the one `list`
        reads. The blobs the next look would check (short last time, suspects, repairs
        under way: a repair that landed since counts at once) and those of workers gone
        silent since it looked. Only in a new term, before the first full look, is the last
        count it."""
        if self.suspects is None:
            return len(self.short)
        among = self.short | self.suspects | set(self.repairs.in_flight)
        for worker in self.alive - self.catalog.live_workers():
            among |= self.catalog.blobs_on(worker)
        return len(self.catalog.shortfalls(now, among)) if among else 0
