"""The manager's answers to clients: restores, listings, versions, deletes, prunes, verify
and status; uploads and packs are placed by ``Placing`` (``manager/placing.py``).

A part of ``Manager`` (it inherits ``Requests``), in a module of its own: everything here
runs on the manager's one thread, like the rest of it, and changes the catalog in one
transaction per request before the request is acked.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from manager.placing import Placing, to_client
from manager.repair import Repairs
from warren import messages as m
from warren.errors import Busy, DecodeError, NoReplica, NotFound, WarrenError, to_wire
from warren.topology import worker_chunks, worker_control, worker_topology
from warren.transport import Delivery, Transport

log = logging.getLogger("warren.manager")

# A listing goes back in pages of this many files, so a big one starts printing at once.
LIST_PAGE = 1000


class Requests(Placing):
    """Client requests, answered on the request's ``reply_to`` with its correlation id."""

    repairs: Repairs
    _serving: dict[str, int]
    _scrub: dict[str, tuple[float, int]]
    _counts: tuple[int, int]
    _reported: set[str]
    _alive: set[str]
    _suspects: set[str] | None
    _short: set[str]

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
                raise Busy(  # nothing done: the client asks again until its timeout
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
            # One snapshot of the catalog as of now, the one `list` reads: the blobs the next
            # tick would check (short last time, suspects, repairs under way: a repair that
            # landed since counts at once) and those of workers gone silent since it looked.
            # Only in a new term, before the first full pass, is the last pass's count it.
            if self._suspects is not None:
                among = self._short | self._suspects | set(self.repairs.in_flight)
                for worker in self._alive - self.catalog.live_workers():
                    among |= self.catalog.blobs_on(worker)
                under = len(self.catalog.shortfalls(now, among)) if among else 0
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
        cmd = m.ForgetVersions(keys=self.seal.seal_deletions(keys))
        conn = self._live_conn()
        for w in self.catalog.workers():
            conn.declare(worker_topology(w.name))
            conn.publish(worker_chunks(w.name), cmd.encode(), type=cmd.TYPE)

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

    def _catching_up(self) -> bool:
        """Until every live worker has reported, the catalog may lack versions only the
        workers know: nothing that adds or deletes versions is taken on meanwhile."""
        return not self.catalog.live_workers() <= self._reported


# Requests that add or delete versions: refused while the catalog catches up.
_CHANGES = (m.UploadRequest, m.PackRequest, m.DeleteRequest, m.PruneRequest)


def _dry_run(msg: m.Message) -> bool:
    return isinstance(msg, m.PruneRequest) and msg.dry_run
