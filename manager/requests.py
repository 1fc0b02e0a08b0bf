"""The manager's answers to clients: placement (new, resumed or deduplicated uploads),
restores, listings, versions, deletes, prunes, verify and status.

A part of ``Manager`` (it inherits ``Requests``), in a module of its own: everything here
runs on the manager's one thread, like the rest of it, and changes the catalog in one
transaction per request before the request is acked.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Iterable

from manager.catalog import Catalog, Upload
from manager.holdings import PENDING
from manager.placement import choose_chain
from manager.repair import Repairs
from warren import messages as m
from warren.config import Settings
from warren.errors import (
    DecodeError,
    NoReplica,
    NotFound,
    Refused,
    Unavailable,
    WarrenError,
    to_wire,
)
from warren.topology import (
    worker_chunks,
    worker_control,
    worker_topology,
)
from warren.transport import Delivery, Transport

log = logging.getLogger("warren.manager")

# A listing goes back in pages of this many files, so a big one starts printing at once.
LIST_PAGE = 1000

# A client waiting for copies of deduplicated content is forgotten after this long (it has
# given up by then; the copies go on as repairs).
AWAIT_COPIES = 3600.0


@dataclasses.dataclass(frozen=True)
class Awaiting:
    """A client told its content is being copied to more workers: it hears of each copy,
    and of the record once ``wanted`` live workers hold it."""

    upload_id: str
    name: str
    size: int
    reply_to: str
    wanted: int
    since: float = dataclasses.field(default_factory=time.monotonic)


class Requests:
    """Client requests, answered on the request's ``reply_to`` with its correlation id."""

    settings: Settings
    catalog: Catalog
    repairs: Repairs
    _serving: dict[str, int]
    _scrub: dict[str, tuple[float, int]]
    _counts: tuple[int, int]
    _dirty: bool
    _conn: Transport | None
    _reported: set[str]
    _alive: set[str]
    _started: float  # when this term (connection) began, monotonic
    _suspects: set[str] | None
    _short: set[str]
    _awaiting: dict[str, list[Awaiting]]  # by sha256

    def _suspect(self, shas: set[str]) -> None: ...

    def _on_request(self, conn: Transport, d: Delivery) -> None:
        if not d.reply_to:
            raise DecodeError(f"{d.type} request without reply_to")
        serve_on: str | None = None
        then: list[tuple[str, m.Message]] = []  # commands to workers, after the reply
        reply: m.Message
        owner = d.user_id or ""  # validated by RabbitMQ: the sender's own broker user
        try:
            msg = m.decode(d.type, d.body)
            if self._catching_up() and isinstance(msg, _CHANGES) and not _dry_run(msg):
                raise Unavailable(
                    "the manager is catching up with the workers' records; try again in a moment."
                )
            if isinstance(msg, m.DownloadRequest):
                reply, serve_on = self._restore(msg, owner)
            elif isinstance(msg, m.UploadRequest):
                reply = self._place(msg, d.reply_to, owner, d.correlation_id or "", then)
            elif isinstance(msg, m.PackRequest):
                reply = self._place_pack(msg, d.reply_to, owner)
            elif isinstance(msg, m.VerifyRequest):
                reply = self._verify(msg, owner, d.reply_to, d.correlation_id or "", then)
            else:
                reply = self._answer(msg, owner)
        except DecodeError as exc:
            log.warning("invalid %s request: %s", d.type, exc)
            reply = m.ErrorReply(code="invalid", message=f"invalid request: {exc}")
        except WarrenError as exc:
            reply = m.ErrorReply(code=to_wire(exc), message=str(exc))
        # The reply goes first: it reaches the client's queue before any restore chunk.
        to_client(conn, d.reply_to, reply, d.correlation_id)
        if serve_on is not None and isinstance(reply, m.DownloadAccepted):
            serve = m.ServeRequest(
                sha256=reply.sha256,
                size=reply.size,
                reply_to=d.reply_to,
                correlation_id=d.correlation_id or "",
            )
            conn.declare(worker_topology(serve_on))
            conn.publish(worker_control(serve_on), serve.encode(), type=serve.TYPE)
            log.info("restore %s: %r served by %s", d.correlation_id, reply.name, serve_on)
        for worker, cmd in then:
            conn.declare(worker_topology(worker))
            conn.publish(worker_control(worker), cmd.encode(), type=cmd.TYPE)
        d.ack()

    def _answer(self, msg: m.Message, owner: str) -> m.Message:
        now = time.time()
        if isinstance(msg, m.ListRequest):
            page = self.catalog.files(
                owner=owner, prefix=msg.prefix, after=msg.after, limit=LIST_PAGE + 1
            )
            return m.ListReply(files=tuple(page[:LIST_PAGE]), more=len(page) > LIST_PAGE)
        if isinstance(msg, m.VersionsRequest):
            found = self.catalog.versions(owner, msg.name)
            if not found:
                raise NotFound(f"no file named {msg.name!r} is stored.")
            return m.VersionsReply(versions=tuple(found))
        if isinstance(msg, m.DeleteRequest):
            gone = self.catalog.delete(owner, msg.name, msg.version, now)
            if not gone:
                which = f"version {msg.version} of " if msg.version else ""
                raise NotFound(f"no {which}file named {msg.name!r} is stored.")
            self._forget([m.VersionKey(owner, msg.name, v) for v in gone])
            self._dirty = True
            log.info("delete: %r versions %s of %s", msg.name, gone, owner or "a client")
            return m.DeleteReply(name=msg.name, versions=tuple(gone))
        if isinstance(msg, m.PruneRequest):
            removed = self.catalog.prune(owner, msg.keep_last, msg.prefix, msg.dry_run, now)
            if removed and not msg.dry_run:
                log.info("prune: %d versions of %s", len(removed), owner or "a client")
                self._forget([m.VersionKey(owner, v.name, v.version) for v in removed])
                self._dirty = True
            return m.PruneReply(removed=tuple(removed), dry_run=msg.dry_run)
        if isinstance(msg, m.StatusRequest):
            files_count, under = self._counts
            if self._dirty:  # versions came or went since the tick counted
                files_count = self.catalog.count_files()
            # One snapshot: liveness is as of now, so the count of short blobs must be too
            # (a worker may have gone silent since the last tick looked).
            silent = self._alive - self.catalog.live_workers()
            if (silent or self._suspects) and self._suspects is not None:
                among = self._short | self._suspects
                for worker in silent:
                    among |= self.catalog.blobs_on(worker)
                under = len(self.catalog.shortfalls(now, among))
            scrub = self._scrub
            return m.StatusReply(
                workers=tuple(
                    dataclasses.replace(
                        w,
                        scrubbed_at=scrub.get(w.name, (0.0, 0))[0],
                        damaged=scrub.get(w.name, (0.0, 0))[1],
                    )
                    for w in self.catalog.workers()
                ),
                under_replicated=under,
                files=files_count,
                uploads_in_flight=len(self.catalog.pending_uploads()),
                repairs_in_flight=len(self.repairs.in_flight),
            )
        raise DecodeError(f"{msg.TYPE} is not a client request")

    def _place(
        self,
        req: m.UploadRequest,
        reply_to: str,
        owner: str,
        cid: str,
        then: list[tuple[str, m.Message]],
    ) -> m.Message:
        file = m.PackFile(req.name, req.size, req.sha256, req.mode, req.mtime)
        stored = self._deduplicate(file, req.replicas, req.client, owner, reply_to)
        if stored is not None:
            return stored
        live = self.catalog.live_workers()
        old = self.catalog.resumable(owner, req.name, req.sha256, req.size, live)
        if old is not None and len(old.chain) == req.replicas:
            # The same file, unfinished, by the same user, on live workers: go on with it.
            # Its primary tells the client which chunks it has, after this answer.
            self.catalog.resume(old.upload_id, reply_to)
            then.append((old.chain[0], m.HaveRequest(old.upload_id, reply_to, cid)))
            log.info("upload %s: %r resumed on %s", old.upload_id, req.name, " -> ".join(old.chain))
            return m.UploadAccepted(
                upload_id=old.upload_id,
                chain=old.chain,
                chunk_size=self.settings.chunk_size,
                resumed=True,
            )
        [up] = self._reserve([file], req.replicas, req.client, reply_to, owner)
        log.info(
            "upload %s: %r (%d bytes) from %s, placed on %s",
            up.upload_id,
            req.name,
            req.size,
            req.client or "a client",
            " -> ".join(up.chain),
        )
        return m.UploadAccepted(
            upload_id=up.upload_id, chain=up.chain, chunk_size=self.settings.chunk_size
        )

    def _deduplicate(
        self, file: m.PackFile, replicas: int, client: str, owner: str, reply_to: str
    ) -> m.UploadAccepted | None:
        """Content some live worker already holds is recorded as a new version at once:
        nothing is sent. With fewer live copies than asked, the holders copy it to other
        workers (a repair), and the client hears of each copy and of the record when the
        last one is on disk."""
        if replicas < 1:
            return None
        holders = self.catalog.live_holders(file.sha256)
        if not holders or len(self.catalog.live_workers()) < replicas:
            return None  # sent as any upload (or refused: too few workers for the copies)
        chain = tuple(holders[:replicas])
        up, record = self._record_held(file, replicas, chain, client, owner)
        self._send_records(self._live_conn(), chain, [record])
        copies = replicas - len(chain)
        if copies:
            self._awaiting.setdefault(file.sha256, []).append(
                Awaiting(up.upload_id, up.name, up.size, reply_to, replicas)
            )
            self._suspect({file.sha256})  # the next tick plans the copies
        return m.UploadAccepted(
            upload_id=up.upload_id,
            chain=chain,
            chunk_size=self.settings.chunk_size,
            stored=True,
            copies=copies,
        )

    def _record_held(
        self, file: m.PackFile, replicas: int, chain: tuple[str, ...], client: str, owner: str
    ) -> tuple[Upload, m.VersionRecord]:
        """A new version of content ``chain`` already holds, in the catalog; its record
        is for the caller to send to the holders."""
        up = _upload_of(file, replicas, chain, client, owner)
        now = time.time()
        version = self.catalog.record_existing(up, now)
        self._dirty = True
        log.info(
            "upload %s: %r (%d bytes) from %s already stored on %s: version %d, nothing sent",
            up.upload_id,
            file.name,
            file.size,
            client or "a client",
            ", ".join(chain),
            version,
        )
        return up, _record(up, version, now)

    def _place_pack(self, req: m.PackRequest, reply_to: str, owner: str) -> m.Message:
        """Small files together: those whose content enough live workers hold are recorded
        at once (``stored``), the others placed on one chain and sent in one message."""
        ids: dict[int, str] = {}
        stored = []
        records: dict[str, list[m.VersionRecord]] = {}  # by holder: one message each
        for i, f in enumerate(req.files):
            holders = self.catalog.live_holders(f.sha256) if req.replicas >= 1 else []
            if len(holders) >= req.replicas:
                held_on = tuple(holders[: req.replicas])
                up, record = self._record_held(f, req.replicas, held_on, req.client, owner)
                ids[i] = up.upload_id
                stored.append(m.StoredFile(up.upload_id, up.chain))
                for worker in held_on:
                    records.setdefault(worker, []).append(record)
        for worker, held in records.items():
            self._send_records(self._live_conn(), [worker], held)
        rest = [i for i in range(len(req.files)) if i not in ids]
        chain = stored[0].chain if stored else ()
        if rest:
            ups = self._reserve(
                [req.files[i] for i in rest], req.replicas, req.client, reply_to, owner
            )
            ids.update(zip(rest, (up.upload_id for up in ups), strict=True))
            chain = ups[0].chain
            log.info(
                "pack of %d files (%d bytes) from %s, placed on %s; %d already stored",
                len(ups),
                sum(up.size for up in ups),
                req.client or "a client",
                " -> ".join(chain),
                len(stored),
            )
        return m.PackAccepted(
            upload_ids=tuple(ids[i] for i in range(len(req.files))),
            chain=chain,
            stored=tuple(stored),
        )

    def _reserve(
        self, files: list[m.PackFile], replicas: int, client: str, reply_to: str, owner: str
    ) -> list[Upload]:
        """Pick one chain with room for all of ``files`` and record each as a pending
        upload, in one transaction (a plain upload is one file, a pack several). A worker
        still deleting an old copy of the same content is not picked for it."""
        total = sum(f.size for f in files)
        # Each file's version is fixed now, so its workers keep its record before any chunk.
        last: dict[str, int] = {}
        numbers = []
        for f in files:
            last[f.name] = (
                last[f.name] + 1 if f.name in last else self.catalog.next_version(owner, f.name)
            )
            numbers.append(last[f.name])
        avoid = set().union(*(self.catalog.deleting(f.sha256) for f in files))
        candidates = [c for c in self.catalog.candidates() if c.name not in avoid]
        try:
            chain = tuple(choose_chain(candidates, total, replicas))
        except Refused as exc:
            silent = [c for c in candidates if not c.alive]
            if self._just_connected() and silent and 1 <= replicas <= len(candidates):
                # After the broker restarted, say: the workers may be reconnecting too,
                # silent only until their next heartbeat. Not a refusal yet.
                raise Unavailable(
                    f"{exc} The manager has just connected and may not have heard from "
                    "every worker yet: try again in a moment."
                ) from None
            raise
        ups = [
            _upload_of(f, replicas, chain, client, owner, reply_to, version)
            for f, version in zip(files, numbers, strict=True)
        ]
        now = time.time()
        self.catalog.add_uploads(ups, now)
        # Published before the answer, so they are in each worker's queue before any chunk:
        # the records, and whom to take the chunks from (the client, then each worker).
        records = tuple(_record(up, up.version, now) for up in ups)
        conn = self._live_conn()
        for hop, worker in enumerate(chain):
            sender = owner if hop == 0 else chain[hop - 1]
            cmd = m.RecordVersions(records, tuple(m.Expect(up.upload_id, sender) for up in ups))
            conn.declare(worker_topology(worker))
            conn.publish(worker_chunks(worker), cmd.encode(), type=cmd.TYPE)
        return ups

    def _tell_copied(self, conn: Transport, worker: str, sha256: str) -> None:
        """A copy of ``sha256`` landed on ``worker``: the clients waiting for copies of it
        hear of it, and of their record once enough live workers hold it."""
        waiting = self._awaiting.pop(sha256, [])
        if not waiting:
            return
        holders = self.catalog.live_holders(sha256)
        stale = time.monotonic() - AWAIT_COPIES
        for w in waiting:
            if w.since < stale:
                continue
            hop = holders.index(worker) if worker in holders else len(holders)
            stored = m.ReplicaStored(w.upload_id, worker, sha256, w.size, hop)
            to_client(conn, w.reply_to, stored, w.upload_id)
            if len(holders) >= w.wanted:
                log.info("upload %s: %r now on %s", w.upload_id, w.name, ", ".join(holders))
                to_client(conn, w.reply_to, m.UploadRecorded(w.upload_id, w.name), w.upload_id)
            else:
                self._awaiting.setdefault(sha256, []).append(w)

    def _verify(
        self,
        req: m.VerifyRequest,
        owner: str,
        reply_to: str,
        cid: str,
        then: list[tuple[str, m.Message]],
    ) -> m.VerifyAccepted:
        """Every live holder of the files named (or of all the owner's) re-hashes its copy
        now and answers the client; a damaged copy is quarantined and repaired."""
        if req.names:
            entries = []
            for name in req.names:
                entry = self.catalog.version(owner, name)
                if entry is None:
                    raise NotFound(f"no file named {name!r} is stored.")
                entries.append(entry)
        else:
            entries = self.catalog.files(owner=owner)
        copies = []
        for e in entries:
            for worker in e.replicas:
                copies.append(m.VerifyCopy(e.name, e.version, worker, e.sha256))
                then.append((worker, m.VerifyBlob(e.sha256, e.size, reply_to, cid)))
        missing = tuple(e.name for e in entries if not e.replicas)
        return m.VerifyAccepted(copies=tuple(copies), missing=missing)

    def _forget(self, keys: list[m.VersionKey]) -> None:
        """Deleted versions, to every worker's log (a dead one's queue keeps it): a catalog
        rebuilt from the workers keeps them deleted."""
        cmd = m.ForgetVersions(keys=tuple(keys))
        conn = self._live_conn()
        for w in self.catalog.workers():
            conn.declare(worker_topology(w.name))
            conn.publish(worker_chunks(w.name), cmd.encode(), type=cmd.TYPE)

    def _live_conn(self) -> Transport:
        assert self._conn is not None, "no connection: not active"
        return self._conn

    def _restore(self, req: m.DownloadRequest, owner: str) -> tuple[m.DownloadAccepted, str]:
        entry = self.catalog.version(owner, req.name, req.version)
        if entry is None:
            which = f"version {req.version} of " if req.version else ""
            raise NotFound(f"no {which}file named {req.name!r} is stored.")
        holders = [w for w in entry.replicas if w not in req.exclude]
        if not holders:
            raise NoReplica(f"no live worker holds a copy of {req.name!r} right now.")
        worker = min(holders, key=lambda w: (self._serving.get(w, 0), w))
        self._serving[worker] = self._serving.get(worker, 0) + 1
        accepted = m.DownloadAccepted(
            name=entry.name,
            size=entry.size,
            sha256=entry.sha256,
            worker=worker,
            version=entry.version,
            mode=entry.mode,
            mtime=entry.mtime,
        )
        return accepted, worker

    def _send_records(
        self, conn: Transport, workers: Iterable[str], records: list[m.VersionRecord]
    ) -> None:
        """Version records to keep beside the data, on each worker's chunks queue."""
        if not records:
            return
        cmd = m.RecordVersions(records=tuple(records))
        for worker in workers:
            conn.declare(worker_topology(worker))
            conn.publish(worker_chunks(worker), cmd.encode(), type=cmd.TYPE)

    def _just_connected(self) -> bool:
        """Within dead_after seconds of this term's start: a worker silent since may only
        not have sent its next heartbeat yet."""
        return time.monotonic() - self._started < self.settings.dead_after

    def _catching_up(self) -> bool:
        """Until every live worker has reported, the catalog may lack versions only the
        workers know: nothing that adds or deletes versions is taken on meanwhile."""
        return not self.catalog.live_workers() <= self._reported


def to_client(conn: Transport, queue: str, msg: m.Message, cid: str | None) -> None:
    """A message to a client's reply queue: transient, like the queue itself."""
    conn.publish(queue, msg.encode(), type=msg.TYPE, correlation_id=cid, persistent=False)


# Requests that add or delete versions: refused while the catalog catches up.
_CHANGES = (m.UploadRequest, m.PackRequest, m.DeleteRequest, m.PruneRequest)


def _dry_run(msg: m.Message) -> bool:
    return isinstance(msg, m.PruneRequest) and msg.dry_run


def _upload_of(
    f: m.PackFile,
    replicas: int,
    chain: tuple[str, ...],
    client: str,
    owner: str,
    reply_to: str = "",
    version: int = 0,
) -> Upload:
    """A new upload of ``f`` on ``chain`` (placed, or deduplicated onto its holders)."""
    return Upload(
        upload_id=uuid.uuid4().hex,
        name=f.name,
        size=f.size,
        sha256=f.sha256,
        wanted=replicas,
        chain=chain,
        client=client,
        state=PENDING,
        reply_to=reply_to,
        owner=owner,
        mode=f.mode,
        mtime=f.mtime,
        version=version,
    )


def _record(up: Upload, version: int, created: float) -> m.VersionRecord:
    return m.VersionRecord(
        owner=up.owner,
        name=up.name,
        version=version,
        sha256=up.sha256,
        size=up.size,
        created=created,
        wanted=up.wanted,
        mode=up.mode,
        mtime=up.mtime,
        upload_id=up.upload_id,
    )
