"""The manager: placement, the catalog, worker liveness and restores.

It consumes two queues on one connection and one thread: client requests
(``warren.manager.requests``: every one answered on the request's ``reply_to`` with its
``correlation_id``) and worker events (``warren.manager.events``: heartbeats, inventories,
replica outcomes). Every catalog change is committed before the message is acked.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

from manager.catalog import Catalog, Upload
from manager.holdings import Shortfall
from manager.placing import Awaiting, to_client
from manager.records import RecordSeal
from manager.repair import Repairs
from manager.requests import Requests
from warren import messages as m
from warren import metrics
from warren.config import Settings
from warren.errors import (
    DecodeError,
    Locked,
)
from warren.sealing import Sealer, load_or_create_key
from warren.service import run_connection
from warren.topology import (
    MANAGER_EVENTS,
    MANAGER_REQUESTS,
    manager_lock_topology,
    manager_topology,
    worker_chunks,
    worker_control,
    worker_topology,
)
from warren.transport import Connect, Delivery, Transport

log = logging.getLogger("warren.manager")

# Seconds between checks of every blob's copies when nothing says so (a safety net: work
# is otherwise driven by what changed, so an idle manager costs the same at any size).
FULL_PASS = 3600.0


class Manager(Requests):
    def __init__(self, settings: Settings, stop: threading.Event, connect: Connect) -> None:
        self.settings = settings
        self.connect = connect
        self.stop = stop
        data_dir = Path(settings.data_dir or ".")
        self.catalog = Catalog(data_dir / "catalog.sqlite3", settings.dead_after)
        self._alive: set[str] = set()
        self._serving: dict[str, int] = {}  # restores sent to each worker, to spread them
        self.repairs = Repairs(settings.repair_concurrency)
        self._started = time.monotonic()
        self._standing_by = False
        self._reported: set[str] = set()
        self._asked: dict[str, float] = {}
        self._scrub: dict[str, tuple[float, int]] = {}  # worker -> (last full scrub, damaged)
        self._dirty = True  # a version came or went: count the files again
        self._suspects: set[str] | None = None  # blobs to check for copies (None: all)
        self._short: set[str] = set()  # blobs found short of live copies, last time
        self._awaiting: dict[str, list[Awaiting]] = {}  # clients waiting for copies, by sha256
        self._last_pass = time.monotonic()
        self._counts = (0, 0)  # files, under-replicated, as of the last full pass
        self._conn: Transport | None = None  # the connection of this term
        self._seal: RecordSeal | None = None  # with the manager's key, read when it runs

    def run(self) -> None:
        self._seal = RecordSeal(Sealer(load_or_create_key(self.key_file)))
        self.catalog.open()
        metrics.serve(self.settings.metrics_port, self.settings.metrics_addr)
        log.info("manager: catalog at %s, %d files", self.catalog.path, self.catalog.count_files())
        try:
            run_connection(self.connect, self.settings, "warren manager", self._setup, self.stop)
        finally:
            self.catalog.close()
            log.info("manager: stopped")

    @property
    def key_file(self) -> Path:
        """The file of the key that seals the workers' records (WARREN_MANAGER_KEY_FILE)."""
        if self.settings.manager_key_file:
            return Path(self.settings.manager_key_file)
        return Path(self.settings.data_dir or ".") / "manager.key"

    def _setup(self, conn: Transport) -> None:
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
        self._dirty = True
        self._suspects = None  # a new term: check every blob once
        self._reported = set()  # this term: which workers have sent their inventory
        self._asked = {}
        self._conn = conn
        self._started = time.monotonic()
        conn.declare(manager_topology())
        conn.consume(MANAGER_EVENTS, lambda d: self._on_event(conn, d))
        conn.consume(MANAGER_REQUESTS, lambda d: self._on_request(conn, d))
        self._alive = self.catalog.live_workers()
        self._tick(conn)
        log.info("manager: ready")

    # -- periodic --------------------------------------------------------------------------

    def _tick(self, conn: Transport) -> None:
        """Once a second: notice silent workers, expire abandoned uploads, collect garbage
        (indexed queries on small tables). The pass over the whole catalog (gauges, repair
        planning) runs only when something changed that it depends on, while repairs are
        in flight, or every ``FULL_PASS`` seconds: an idle manager costs the same whatever
        the catalog's size."""
        if not conn.is_open or self.stop.is_set():
            return
        alive = self.catalog.live_workers()
        for name in sorted(self._alive - alive):
            log.warning(
                "worker %s: no heartbeat for %.0f s, marked dead", name, self.settings.dead_after
            )
            self._suspect(self.catalog.blobs_on(name))  # what it held may now be short
        self._alive = alive
        self._expire(conn)
        self._collect_garbage(conn)
        metrics.WORKERS_ALIVE.set(len(alive))
        now = time.monotonic()
        if self._dirty:  # a version came or went
            self._dirty = False
            self._counts = (self.catalog.count_files(), self._counts[1])
            metrics.FILES.set(self._counts[0])
        # Not in the first dead_after seconds after start: until every live worker has
        # sent a heartbeat, files would look under-replicated when they are not.
        if self._just_connected():
            return self._again(conn)
        if now - self._last_pass > FULL_PASS:
            self._last_pass = now
            self._suspects = None  # every blob, now and then: a safety net
        if self._suspects is None or self._suspects or self._short or self.repairs.in_flight:
            among = None
            if self._suspects is not None:
                among = self._suspects | self._short | set(self.repairs.in_flight)
            shortfalls = self.catalog.shortfalls(time.time(), among)
            self._suspects = set()
            self._short = {s.sha256 for s in shortfalls}
            self._counts = (self._counts[0], len(self._short))
            metrics.UNDER_REPLICATED.set(len(self._short))
            self._repair(conn, shortfalls)
        self._again(conn)

    def _again(self, conn: Transport) -> None:
        conn.call_later(1.0, lambda: self._tick(conn))

    def _suspect(self, shas: set[str]) -> None:
        """These blobs may have too few live copies now: the next tick checks them."""
        if self._suspects is not None:
            self._suspects |= shas

    def _expire(self, conn: Transport) -> None:
        """Uploads unfinished after ``upload_expiry`` seconds are abandoned: failed in the
        catalog, and their partial data removed from every worker of their chain (the
        command goes after their chunks, on the same queue)."""
        for up in self.catalog.expire_uploads(time.time() - self.settings.upload_expiry):
            cmd = m.DiscardUpload(upload_id=up.upload_id)
            for worker in up.chain:
                conn.declare(worker_topology(worker))
                conn.publish(worker_chunks(worker), cmd.encode(), type=cmd.TYPE)
            log.info(
                "upload %s: %r abandoned; discarding it on %s", up.upload_id, up.name, up.chain
            )

    def _collect_garbage(self, conn: Transport) -> None:
        """Blobs no version has used for ``gc_delay`` seconds: each holder deletes its copy
        (the command waits in a dead worker's queue until it is back)."""
        for sha, holders in self.catalog.garbage_due(time.time(), self.settings.gc_delay):
            cmd = m.DeleteBlob(sha256=sha)
            for worker in holders:
                conn.declare(worker_topology(worker))
                conn.publish(worker_control(worker), cmd.encode(), type=cmd.TYPE)
            log.info("gc: %s is used by no version; deleting it on %s", sha[:12], holders)

    def _repair(self, conn: Transport, shortfalls: list[Shortfall]) -> None:
        """Start copies for files with too few live replicas, a few at a time."""
        now = time.time()
        for copy in self.repairs.plan(shortfalls, self.catalog.candidates(now), now):
            # The target takes the copy's chunks from the source only (told first, on the
            # queue the chunks will come by).
            expect = m.RecordVersions(records=(), expect=(m.Expect(copy.upload_id, copy.source),))
            conn.declare(worker_topology(copy.target))
            conn.publish(worker_chunks(copy.target), expect.encode(), type=expect.TYPE)
            cmd = m.CopyRequest(
                sha256=copy.sha256, size=copy.size, target=copy.target, upload_id=copy.upload_id
            )
            conn.declare(worker_topology(copy.source))
            conn.publish(worker_control(copy.source), cmd.encode(), type=cmd.TYPE)
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
        msg = from_worker(conn, d)
        now = time.time()
        if isinstance(msg, m.Heartbeat):
            if self.catalog.worker_seen(msg.worker, msg.free_bytes, msg.used_bytes, msg.files, now):
                log.info(
                    "worker %s: alive (%d files, %d bytes free)",
                    msg.worker,
                    msg.files,
                    msg.free_bytes,
                )
                self._alive.add(msg.worker)
            self._ask_report(conn, msg.worker)
            self._scrub[msg.worker] = (msg.scrubbed_at, msg.damaged)
        elif isinstance(msg, m.Inventory):
            before = self.catalog.blobs_on(msg.worker)
            added, removed = self.catalog.reconcile(msg.worker, msg.blobs)
            opened = self.seal.open(msg)
            if opened.forged:
                log.error(
                    "worker %s: %d of its records do not open with this manager's key "
                    "(forged, damaged or sealed with another key): ignored",
                    msg.worker,
                    opened.forged,
                )
            more, fewer = self.catalog.merge_records(opened.records, opened.forgotten, now)
            self._suspect(before - {b.sha256 for b in msg.blobs})
            self._suspect({r.sha256 for r in opened.records})
            self._dirty = True
            self._reported.add(msg.worker)
            log.info(
                "worker %s: inventory of %d blobs reconciled (+%d, -%d); "
                "%d version records (+%d versions, -%d)",
                msg.worker,
                len(msg.blobs),
                added,
                removed,
                len(msg.records),
                more,
                fewer,
            )
        elif isinstance(msg, m.ReplicaStored):
            up = self.catalog.replica_stored(msg.upload_id, msg.worker, msg.sha256, msg.size, now)
            self._copy_landed(conn, msg.worker, msg.sha256)
            log.info("upload %s: replica on %s (hop %d)", msg.upload_id, msg.worker, msg.hop)
            if up is not None:
                log.info("upload %s: %r complete on %s", up.upload_id, up.name, ", ".join(up.chain))
                self._dirty = True
                self._tell_recorded(conn, up)
        elif isinstance(msg, m.PackStored):
            entries = [(f.upload_id, f.sha256, f.size) for f in msg.files]
            completed = self.catalog.replicas_stored(msg.worker, entries, now)
            for f in msg.files:
                self._copy_landed(conn, msg.worker, f.sha256)
            log.info(
                "pack %s: %d files on %s (hop %d)",
                d.correlation_id,
                len(entries),
                msg.worker,
                msg.hop,
            )
            if completed:
                self._dirty = True
                log.info("pack %s: %d files complete", d.correlation_id, len(completed))
                self._tell_pack_recorded(conn, completed, d.correlation_id)
        elif isinstance(msg, m.ReplicaFailed):
            log.error("upload %s: replica failed on %s: %s", msg.upload_id, msg.worker, msg.reason)
            self.catalog.upload_failed(msg.upload_id, now)
            self.repairs.failed(msg.upload_id)
        elif isinstance(msg, m.ReplicaDamaged):
            log.error(
                "worker %s: its copy of %s is damaged (%s); making a good copy elsewhere",
                msg.worker,
                msg.sha256[:12],
                msg.reason,
            )
            self.catalog.replica_lost(msg.worker, msg.sha256)
            self._suspect({msg.sha256})
            metrics.DAMAGED.inc()
        elif isinstance(msg, m.BlobDeleted):
            self.catalog.blob_deleted(msg.worker, msg.sha256)
            log.info("gc: %s deleted %s (%d bytes back)", msg.worker, msg.sha256[:12], msg.size)
        else:
            raise DecodeError(f"{d.type} is not a worker event")
        d.ack()

    def _copy_landed(self, conn: Transport, worker: str, sha256: str) -> None:
        """A verified copy of ``sha256`` is on ``worker``: it may be a repair finishing,
        and then the new holder keeps the records of the versions using it too."""
        self._tell_copied(conn, worker, sha256)
        copy = self.repairs.stored(sha256, worker)
        if copy is not None:
            metrics.REPAIRS.labels("done").inc()
            log.info("repair %s: %s now holds %s", copy.upload_id, worker, sha256[:12])
            self._send_records(conn, [worker], self.catalog.records_of(sha256))

    def _ask_report(self, conn: Transport, worker: str) -> None:
        """A worker alive but not heard from in this term (a manager that just became
        active, or started on an empty catalog): ask for its inventory and records."""
        now = time.monotonic()
        if worker in self._reported or now - self._asked.get(worker, -1e9) < 10.0:
            return
        self._asked[worker] = now
        conn.declare(worker_topology(worker))
        cmd = m.ReportRequest()
        conn.publish(worker_control(worker), cmd.encode(), type=cmd.TYPE)

    def _tell_recorded(self, conn: Transport, up: Upload) -> None:
        """Tell the uploading client its file is in the catalog, so that a ``list`` right
        after ``upload`` shows it. Best effort: the client may be gone (then it is returned)."""
        if up.reply_to:
            done = m.UploadRecorded(upload_id=up.upload_id, name=up.name)
            to_client(conn, up.reply_to, done, up.upload_id)

    def _tell_pack_recorded(self, conn: Transport, ups: list[Upload], cid: str | None) -> None:
        """The pack's UploadRecorded: one message for the files one event completed."""
        for reply_to in sorted({up.reply_to for up in ups if up.reply_to}):
            ids = tuple(up.upload_id for up in ups if up.reply_to == reply_to)
            to_client(conn, reply_to, m.PackRecorded(upload_ids=ids), cid)


def from_worker(conn: Transport, d: Delivery) -> m.Message:
    """The worker event in ``d``, if the worker it names sent it; anything else is a
    DecodeError, dead-lettered. (A function of its own, as the worker's ``from_manager``,
    so that a test and ``make mutants`` can aim at it.)"""
    msg = m.decode(d.type, d.body)
    claimed = getattr(msg, "worker", None)
    if not isinstance(claimed, str):
        raise DecodeError(f"{d.type} is not a worker event")
    # A worker's broker user is its name (manager users add worker NAME). Only where
    # everyone shares the manager's own login can the sender not be told apart.
    if d.user_id not in (claimed, conn.user):
        raise DecodeError(
            f"{d.type} claims to come from worker {claimed!r} but was sent by broker user "
            f"{d.user_id!r}: ignored"
        )
    return msg
