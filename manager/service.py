"""The manager: placement, the catalog, worker liveness and restores.

It consumes two queues on one connection and one thread: client requests
(``warren.manager.requests``, answered by ``Answers``, manager/requests.py) and worker
events (``warren.manager.events``: heartbeats, inventories, replica outcomes, one handler a
type here). Every catalog change is committed before the message is acked.

The parts, each handed what it needs: the catalog; the ``Outbox`` (everything it sends);
the ``Term`` (what holds only while this manager is the active one); ``Health`` (liveness,
blobs short of copies, the counts status shows); ``Placement`` and ``Repairs``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from manager.catalog import Catalog, Upload
from manager.health import Health
from manager.holdings import Shortfall
from manager.keys import KeyStore
from manager.outbox import Outbox
from manager.placement import Placement
from manager.records import RecordSeal
from manager.repair import Repairs
from manager.requests import Answers
from manager.snapshots import SnapshotStore
from manager.term import Term
from warren import messages as m
from warren import metrics
from warren.config import Settings
from warren.errors import DecodeError, Locked
from warren.private import private_dir
from warren.sealing import Sealer, load_or_create_key
from warren.service import run_connection
from warren.topology import (
    MANAGER_EVENTS,
    MANAGER_REQUESTS,
    manager_lock_topology,
    manager_topology,
)
from warren.transport import Connect, Delivery, Transport

log = logging.getLogger("warren.manager")


def pin_for(settings: Settings) -> float:
    """How long the chunks an upload stored wait for its commit (a version or a snapshot
    then keeps them): as long as an unfinished upload may last (WARREN_UPLOAD_EXPIRY), so a
    backup of many hours commits what it stored in its first minutes."""
    return settings.upload_expiry


# Chunks stored for uploads that never committed them are looked for this often (seconds).
STALE_PASS = 60.0


class Manager:
    def __init__(self, settings: Settings, stop: threading.Event, connect: Connect) -> None:
        self.settings = settings
        self.connect = connect
        self.stop = stop
        data_dir = Path(settings.data_dir or ".")
        self.catalog = Catalog(data_dir / "catalog.sqlite3", settings.dead_after)
        self.catalog.pin_for = pin_for(settings)
        self.repairs = Repairs(settings.repair_concurrency)
        self.term = Term(settings.dead_after)
        self.health = Health(self.catalog, self.repairs)
        self._standing_by = False
        self._stale_pass = 0.0  # when chunks no upload committed were last looked for
        self._conn: Transport | None = None  # the connection of this term
        # Made when it runs: the records' key is read then, not at construction.
        self.outbox: Outbox | None = None
        self.placement: Placement | None = None
        self.answers: Answers | None = None
        self._events: dict[type[m.Message], Callable[[Any, Delivery], None]] = {
            m.Heartbeat: self._heartbeat,
            m.Inventory: self._inventory,
            m.ReplicaStored: self._replica_stored,
            m.PackStored: self._pack_stored,
            m.ReplicaFailed: self._replica_failed,
            m.ReplicaDamaged: self._replica_damaged,
            m.BlobDeleted: self._blob_deleted,
        }

    @property
    def key_file(self) -> Path:
        """The file of the key that seals the workers' records (WARREN_MANAGER_KEY_FILE)."""
        if self.settings.manager_key_file:
            return Path(self.settings.manager_key_file)
        return Path(self.settings.data_dir or ".") / "manager.key"

    def run(self) -> None:
        if self.settings.data_dir is not None:  # the catalog names every user's files
            private_dir(Path(self.settings.data_dir))
        seal = RecordSeal(Sealer(load_or_create_key(self.key_file)))
        self.outbox = outbox = Outbox(seal)
        self.placement = Placement(self.settings, self.catalog, outbox, self.term, self.health)
        self.answers = Answers(
            self.catalog, outbox, self.term, self.health, self.placement, self.repairs
        )
        self.catalog.open()
        metrics.serve(self.settings.metrics_port, self.settings.metrics_addr)
        log.info("manager: catalog at %s, %d files", self.catalog.path, self.catalog.count_files())
        try:
            run_connection(self.connect, self.settings, "warren manager", self._setup, self.stop)
        finally:
            self.catalog.close()
            log.info("manager: stopped")

    def _setup(self, conn: Transport) -> None:
        assert self.outbox is not None and self.answers is not None
        try:
            conn.declare(manager_lock_topology())
        except Locked:
            if not self._standing_by:
                self._standing_by = True
                log.info("manager: another manager is active; standing by to take over")
            raise
        if self._standing_by:
            log.warning("manager: the active manager is gone; taking over")
        self._standing_by = False
        self._conn = conn
        self.outbox.attach(conn)
        self.term.begin()
        self.health.new_term()
        conn.declare(manager_topology())
        conn.consume(MANAGER_EVENTS, lambda d: self._on_event(conn, d))
        conn.consume(MANAGER_REQUESTS, self.answers.on_request)
        self._tick(conn)
        log.info("manager: ready")

    # -- periodic --------------------------------------------------------------------------

    def _tick(self, conn: Transport) -> None:
        """Once a second: notice silent workers, expire abandoned uploads, collect garbage
        (indexed queries on small tables), and check the blobs something happened to
        (``Health``). Not in the first dead_after seconds of a term: until every live
        worker has sent a heartbeat, files would look under-replicated when they are not."""
        if not conn.is_open or self.stop.is_set():
            return
        self.health.look_at_workers()
        self._expire()
        self._collect_garbage()
        self.health.count_files()
        if not self.term.just_connected():
            shortfalls = self.health.shortfalls()
            if shortfalls is not None:
                self._repair(shortfalls)
        conn.call_later(1.0, lambda: self._tick(conn))

    def _expire(self) -> None:
        """Uploads unfinished after ``upload_expiry`` seconds are abandoned: failed in the
        catalog, and their partial data removed from every worker of their chain (the
        command goes after their chunks, on the same queue)."""
        for up in self.catalog.expire_uploads(time.time() - self.settings.upload_expiry):
            self._discard(up)
            log.info(
                "upload %s: %r abandoned; discarding it on %s", up.upload_id, up.name, up.chain
            )

    def _discard(self, up: Upload) -> None:
        """Every worker of the chain removes what it holds of an upload that will never
        finish, and drops its chunks still to come (the command goes after them)."""
        assert self.outbox is not None
        for worker in up.chain:
            self.outbox.to_worker(worker, m.DiscardUpload(upload_id=up.upload_id))

    def _collect_garbage(self) -> None:
        """Blobs no version has used for ``gc_delay`` seconds: each holder deletes its copy
        (the command waits in a dead worker's queue until it is back)."""
        assert self.outbox is not None
        now = time.time()
        if now - self._stale_pass >= STALE_PASS:
            self.catalog.stale_chunks(now, self._stale_pass)
            self._stale_pass = now
        for sha, holders in self.catalog.garbage_due(now, self.settings.gc_delay):
            for worker in holders:
                self.outbox.command(worker, m.DeleteBlob(sha256=sha))
            log.info("gc: %s is used by no version; deleting it on %s", sha[:12], holders)

    def _repair(self, shortfalls: list[Shortfall]) -> None:
        """Start copies for files with too few live replicas, a few at a time."""
        assert self.outbox is not None
        now = time.time()
        for copy in self.repairs.plan(shortfalls, self.catalog.candidates(now), now):
            # The target takes the copy's chunks from the source only (told first, on the
            # queue the chunks will come by).
            expect = m.Expect(copy.upload_id, copy.source, (copy.target,))
            self.outbox.to_worker(copy.target, m.RecordVersions(records=(), expect=(expect,)))
            cmd = m.CopyRequest(
                sha256=copy.sha256, size=copy.size, target=copy.target, upload_id=copy.upload_id
            )
            self.outbox.command(copy.source, cmd)
            metrics.REPAIRS.labels("started").inc()
            log.info(
                "repair %s: copying %s (%d bytes) from %s to %s; %d files short",
                copy.upload_id,
                copy.sha256[:12],
                copy.size,
                copy.source,
                copy.target,
                len(shortfalls),
            )

    # -- worker events ---------------------------------------------------------------------

    def _on_event(self, conn: Transport, d: Delivery) -> None:
        msg = m.decode(d.type, d.body)
        handler = self._events.get(type(msg))
        if handler is None:
            raise DecodeError(f"{d.type} is not a worker event")
        check_worker_sender(d, msg, conn.user)
        handler(msg, d)
        d.ack()

    def _heartbeat(self, msg: m.Heartbeat, _d: Delivery) -> None:
        now = time.time()
        if self.catalog.worker_seen(msg.worker, msg.free_bytes, msg.used_bytes, msg.files, now):
            log.info(
                "worker %s: alive (%d files, %d bytes free)",
                msg.worker,
                msg.files,
                msg.free_bytes,
            )
            self.health.alive.add(msg.worker)
        if self.term.should_ask(msg.worker):
            # Alive, but not heard from in this term: its inventory and records, please.
            assert self.outbox is not None
            self.outbox.command(msg.worker, m.ReportRequest())
        self.health.scrub[msg.worker] = (msg.scrubbed_at, msg.damaged)
        if msg.refused > self.health.refused.get(msg.worker, msg.refused):
            log.error(
                "worker %s: refused %d commands in the manager's name so far (its log says "
                "from whom)",
                msg.worker,
                msg.refused,
            )
        self.health.refused[msg.worker] = msg.refused

    def _inventory(self, msg: m.Inventory, _d: Delivery) -> None:
        """A page of a worker's inventory: its records are merged at once (idempotent); its
        blobs once the last page is in, when the catalog's replicas on that worker are made
        exactly what it holds, and the worker counts as reported in this term."""
        assert self.outbox is not None
        opened = self.outbox.seal.open(msg)
        if opened.forged:
            log.error(
                "worker %s: %d of its records do not open with this manager's key "
                "(forged, damaged or sealed with another key): ignored",
                msg.worker,
                opened.forged,
            )
        more, fewer = self.catalog.merge_records(opened.records, opened.forgotten, time.time())
        got, lost = KeyStore(self.catalog).merge(opened.keys)
        if got or lost:
            log.info("worker %s: owner keys merged (+%d, -%d)", msg.worker, got, lost)
        got, lost = SnapshotStore(self.catalog).merge(
            opened.snapshots, opened.snapshots_gone, time.time()
        )
        if got or lost:
            log.info("worker %s: snapshots merged (+%d, -%d)", msg.worker, got, lost)
        self.health.suspect({r.sha256 for r in opened.records})
        self.health.changed()
        if more or fewer:
            log.info("worker %s: records merged (+%d versions, -%d)", msg.worker, more, fewer)
        blobs = self.term.inventory_page(msg)
        if blobs is None:
            return
        before = self.catalog.blobs_on(msg.worker)
        added, removed = self.catalog.reconcile(msg.worker, blobs)
        self.health.suspect(before - {b.sha256 for b in blobs})
        self.term.reported.add(msg.worker)
        log.info(
            "worker %s: inventory of %d blobs reconciled (+%d, -%d) in %d pages",
            msg.worker,
            len(blobs),
            added,
            removed,
            msg.page + 1,
        )

    def _replica_stored(self, msg: m.ReplicaStored, _d: Delivery) -> None:
        copies = self.repairs.copies_to(msg.worker)
        up = self.catalog.replica_stored(
            msg.upload_id, msg.worker, msg.sha256, msg.size, time.time(), copies
        )
        self._copy_landed(msg.worker, msg.sha256)
        log.info("upload %s: replica on %s (hop %d)", msg.upload_id, msg.worker, msg.hop)
        if up is not None:
            log.info("upload %s: %r complete on %s", up.upload_id, up.name, ", ".join(up.chain))
            self.health.changed()
            self._tell_recorded(up)

    def _pack_stored(self, msg: m.PackStored, d: Delivery) -> None:
        entries = [(f.upload_id, f.sha256, f.size) for f in msg.files]
        copies = self.repairs.copies_to(msg.worker)
        completed = self.catalog.replicas_stored(msg.worker, entries, time.time(), copies)
        for f in msg.files:
            self._copy_landed(msg.worker, f.sha256)
        log.info(
            "pack %s: %d files on %s (hop %d)", d.correlation_id, len(entries), msg.worker, msg.hop
        )
        if completed:
            self.health.changed()
            log.info("pack %s: %d files complete", d.correlation_id, len(completed))
            self._tell_pack_recorded(completed, d.correlation_id)

    def _replica_failed(self, msg: m.ReplicaFailed, _d: Delivery) -> None:
        log.error("upload %s: replica failed on %s: %s", msg.upload_id, msg.worker, msg.reason)
        failed = self.catalog.upload_failed(msg.upload_id, time.time())
        self.repairs.failed(msg.upload_id)
        if failed is not None:  # the other workers of its chain hold parts of it
            self._discard(failed)

    def _replica_damaged(self, msg: m.ReplicaDamaged, _d: Delivery) -> None:
        log.error(
            "worker %s: its copy of %s is damaged (%s); making a good copy elsewhere",
            msg.worker,
            msg.sha256[:12],
            msg.reason,
        )
        self.catalog.replica_lost(msg.worker, msg.sha256)
        self.health.suspect({msg.sha256})
        metrics.DAMAGED.inc()

    def _blob_deleted(self, msg: m.BlobDeleted, _d: Delivery) -> None:
        self.catalog.blob_deleted(msg.worker, msg.sha256)
        log.info("gc: %s deleted %s (%d bytes back)", msg.worker, msg.sha256[:12], msg.size)

    def _copy_landed(self, worker: str, sha256: str) -> None:
        """A verified copy of ``sha256`` is on ``worker``: it may be a repair finishing:
        then the new holder keeps the records of the versions using it too."""
        assert self.outbox is not None
        copy = self.repairs.stored(sha256, worker)
        if copy is not None:
            metrics.REPAIRS.labels("done").inc()
            log.info("repair %s: %s now holds %s", copy.upload_id, worker, sha256[:12])
            self.outbox.records([worker], self.catalog.records_of(sha256))

    def _tell_recorded(self, up: Upload) -> None:
        """Tell the uploading client its file is in the catalog, so that a ``list`` right
        after ``upload`` shows it. Best effort: the client may be gone (then it is returned)."""
        assert self.outbox is not None
        if up.reply_to:
            done = m.UploadRecorded(upload_id=up.upload_id, name=up.name)
            self.outbox.to_client(up.reply_to, done, up.upload_id)

    def _tell_pack_recorded(self, ups: list[Upload], cid: str | None) -> None:
        """The pack's UploadRecorded: one message for the files one event completed."""
        assert self.outbox is not None
        for reply_to in sorted({up.reply_to for up in ups if up.reply_to}):
            ids = tuple(up.upload_id for up in ups if up.reply_to == reply_to)
            self.outbox.to_client(reply_to, m.PackRecorded(upload_ids=ids), cid)


def check_worker_sender(d: Delivery, msg: m.Message, own_user: str) -> None:
    """A worker event is taken only from the broker user named as its worker (RabbitMQ
    validated ``user_id``; a worker's user is its name: manager users add worker NAME).
    Only where everyone shares the manager's own login can the sender not be told apart."""
    claimed = getattr(msg, "worker", None)
    if not isinstance(claimed, str):
        raise DecodeError(f"{d.type} names no worker")
    if d.user_id not in (claimed, own_user):
        raise DecodeError(
            f"{d.type} claims to come from worker {claimed!r} but was sent by broker user "
            f"{d.user_id!r}: ignored"
        )
