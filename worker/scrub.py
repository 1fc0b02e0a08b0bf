"""Scrub: every blob re-read and re-hashed at least once per ``WARREN_SCRUB_INTERVAL``.

Rot on a disk is otherwise found only when somebody restores that file, and a file whose
copies rot in turn is lost unseen. The scrubber walks the store in passes on a thread and
a connection of its own, a slice (at most ``SLICE`` bytes) at a time, paced to
``WARREN_SCRUB_RATE`` bytes a second so uploads and restores keep the disk. A copy that
fails is quarantined and reported (``replica.damaged``); the manager has a good copy made
from a verified holder.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from warren import messages as m
from warren.config import Settings
from warren.topology import MANAGER_EVENTS, manager_topology
from warren.transport import Transport
from worker import frames
from worker.blobs import BlobStore

log = logging.getLogger("warren.worker.scrub")

SLICE = 8 * 1024 * 1024  # bytes hashed per step: the connection is serviced in between


@dataclass
class _Blob:
    """The blob being re-hashed: its bytes still to come, and the hash so far."""

    sha256: str
    pieces: Iterator[bytes] | None
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)


class Scrubber:
    def __init__(
        self,
        settings: Settings,
        blobs: BlobStore,
        sweep: Callable[[float], int],
        stop: threading.Event,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.blobs = blobs
        self.sweep = sweep  # Incoming.sweep: only removes stale files, safe from this thread
        self.stop = stop
        self.finished_at = 0.0  # the last full pass ended then (0: none since start)
        self._todo: list[str] = []
        self._pass_started = 0.0  # when the pass under way began (0: none is)
        self._next_pass = 0.0
        self._current: _Blob | None = None

    def setup(self, conn: Transport) -> None:
        conn.declare(manager_topology())
        conn.call_later(self._delay(0), lambda: self._step(conn))

    def _delay(self, nbytes: int) -> float:
        return nbytes / max(1.0, self.settings.scrub_rate)

    def _step(self, conn: Transport) -> None:
        """Hash the next slice; schedule the next step after as long as the rate allows."""
        if not conn.is_open or self.stop.is_set():
            return
        if self._current is None and not self._todo:
            wait = self._between_passes()
            if wait > 0:
                conn.call_later(min(wait, 5.0), lambda: self._step(conn))
                return
        nbytes = self._hash_slice(conn) if self._current or self._todo else 0
        conn.call_later(self._delay(nbytes), lambda: self._step(conn))

    def _between_passes(self) -> float:
        """A pass just ended, or none ran yet: seconds until the next may start (0: now,
        and it has). Passes start every half interval, so a blob stored at any moment is
        re-read within one interval."""
        now = time.time()
        if self._pass_started:
            self.finished_at = now
            log.info(
                "scrub: %s re-read all its blobs (a pass of %.0f s)",
                self.name,
                now - self._pass_started,
            )
            self._next_pass = self._pass_started + self.settings.scrub_interval / 2
            self._pass_started = 0.0
        if now < self._next_pass:
            return self._next_pass - now
        self._todo = [b.sha256 for b in self.blobs.inventory()]
        self._pass_started = now
        # Also, now and then: markers of finished uploads, and partial data of uploads the
        # manager's discard never reached, untouched for longer than an upload may take.
        swept = self.sweep(now - self.settings.upload_expiry)
        if swept:
            log.info("scrub: %s removed %d stale files from incoming/", self.name, swept)
        return 0.0

    def _hash_slice(self, conn: Transport) -> int:
        """Hash the next piece of the blob under way: SLICE bytes of one kept as its own
        bytes, a chunk of one kept as frames (each frame checked and decoded)."""
        if self._current is None:
            sha256 = self._todo.pop()
            path = self.blobs.find(sha256)
            pieces = frames.content(path, SLICE) if path is not None else None
            self._current = _Blob(sha256, pieces)
        blob = self._current
        try:
            data = next(blob.pieces) if blob.pieces is not None else None
        except StopIteration:
            data = None
        except FileNotFoundError:  # deleted or quarantined meanwhile
            self._current = None
            return 0
        except OSError as exc:  # frames.Damaged among them
            self._current = None
            self.damaged(conn, blob.sha256, f"found by scrub: {exc}")
            return 0
        if data is None:
            self._current = None
            if blob.pieces is not None and blob.digest.hexdigest() != blob.sha256:
                self.damaged(conn, blob.sha256, "SHA-256 mismatch found by scrub")
            return 0
        blob.digest.update(data)
        return len(data)

    def damaged(self, conn: Transport, sha256: str, reason: str) -> None:
        """Quarantine a damaged copy and tell the manager (confirmed)."""
        log.error(
            "scrub: %s's copy of %s is damaged (%s); quarantined", self.name, sha256[:12], reason
        )
        self.blobs.quarantine(sha256)
        report = m.ReplicaDamaged(worker=self.name, sha256=sha256, reason=reason)
        conn.publish_and_wait(MANAGER_EVENTS, report.encode(), type=report.TYPE)
