"""The manager's answers to clients: each request type has one handler (``HANDLERS``);
packs of sealed chunks are placed by ``Placement`` (``manager/placement.py``).

Everything here runs on the manager's one thread and changes the catalog in one
transaction per request before the request is acked. The answer goes to the request's
``reply_to`` with its correlation id, first; commands to workers the request causes (a
restore to stream, copies to verify, a resumed upload's primary to ask) follow it.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from manager.catalog import Catalog
from manager.health import Health
from manager.keys import KeyAnswers
from manager.outbox import Outbox
from manager.placement import WHOLE_FILES, Placement
from manager.repair import Repairs
from manager.snapshots import SnapshotAnswers
from manager.term import Term
from warren import messages as m
from warren.errors import (
    INVALID,
    Busy,
    DecodeError,
    NoReplica,
    NotFound,
    Refused,
    WarrenError,
    to_wire,
)
from warren.transport import Delivery

log = logging.getLogger("warren.manager")

# A listing goes back in pages of this many files, so a big one starts printing at once.
LIST_PAGE = 1000


@dataclass
class Asked:
    """One request: who asked (the broker-validated user), where the answer goes, and the
    commands to workers to send once it has gone."""

    owner: str
    reply_to: str
    cid: str
    then: list[tuple[str, m.Message]] = field(default_factory=list)  # (worker, command)


class Answers:
    """Client requests, answered on the request's ``reply_to`` with its correlation id."""

    def __init__(
        self,
        catalog: Catalog,
        outbox: Outbox,
        term: Term,
        health: Health,
        placement: Placement,
        repairs: Repairs,
    ) -> None:
        self.catalog = catalog
        self.outbox = outbox
        self.term = term
        self.health = health
        self.placement = placement
        self.repairs = repairs
        self._serving: dict[str, int] = {}  # restores sent to each worker, to spread them
        # One handler a request type, each taking the request and who asked.
        self._handlers: dict[type[m.Message], Callable[[Any, Asked], m.Message]] = {
            m.UploadRequest: self._upload,
            m.PackRequest: self._pack,
            m.CommitRequest: self._commit,
            m.DownloadRequest: self._restore,
            m.ListRequest: self._list,
            m.VersionsRequest: self._versions,
            m.DeleteRequest: self._delete,
            m.PruneRequest: self._prune,
            m.VerifyRequest: self._verify,
            m.StatusRequest: self._status,
        }
        self._handlers.update(KeyAnswers(catalog, outbox).handlers())
        self._handlers.update(SnapshotAnswers(catalog, outbox, health.suspect).handlers())

    def on_request(self, d: Delivery) -> None:
        if not d.reply_to:
            raise DecodeError(f"{d.type} request without reply_to")
        if not d.user_id:  # RabbitMQ validates a user_id but lets a publisher leave it out
            raise DecodeError(f"{d.type} request without a user_id: whose would it be?")
        # The owner is the sender's own broker user, as RabbitMQ validated it.
        asked = Asked(owner=d.user_id, reply_to=d.reply_to, cid=d.correlation_id or "")
        reply: m.Message
        try:
            msg = m.decode(d.type, d.body)
            handler = self._handlers.get(type(msg))
            if handler is None:
                raise DecodeError(f"{msg.TYPE} is not a client request")
            if isinstance(msg, _CHANGES) and not _dry_run(msg) and self._catching_up():
                raise Busy(  # nothing done: the client asks again until its timeout
                    "the manager is catching up with the workers' records; try again in a moment."
                )
            reply = handler(msg, asked)
        except DecodeError as exc:
            log.warning("invalid %s request: %s", d.type, exc)
            reply = m.ErrorReply(code=INVALID, message=f"invalid request: {exc}")
            asked.then.clear()
        except WarrenError as exc:
            reply = m.ErrorReply(code=to_wire(exc), message=str(exc))
            asked.then.clear()
        # The reply goes first: it reaches the client's queue before any restore chunk.
        self.outbox.to_client(d.reply_to, reply, d.correlation_id)
        for worker, cmd in asked.then:
            self.outbox.command(worker, cmd)
        d.ack()

    def _catching_up(self) -> bool:
        return self.term.catching_up(self.catalog.live_workers())

    # -- the handlers ----------------------------------------------------------------------

    def _upload(self, _req: m.UploadRequest, _a: Asked) -> m.Message:
        raise Refused(WHOLE_FILES)  # a client from before sealed chunks

    def _pack(self, req: m.PackRequest, a: Asked) -> m.Message:
        return self.placement.place_pack(req, a.reply_to, a.owner)

    def _commit(self, req: m.CommitRequest, a: Asked) -> m.CommitReply:
        """Files whose sealed chunks the sender stored become versions; each version's
        record goes to the live holders of its first chunk."""
        records = self.catalog.commit(a.owner, list(req.files), req.replicas, time.time())
        by_holder: dict[str, list[m.VersionRecord]] = {}
        anchors = self.catalog.held_chunks(a.owner, [r.chunks[0].sha256 for r in records])
        for r in records:
            for worker in anchors.get(r.chunks[0].sha256, []):
                by_holder.setdefault(worker, []).append(r)
        for worker, held in by_holder.items():
            self.outbox.records([worker], held)
        self.health.changed()
        log.info(
            "commit: %d files of %s (%d chunks)",
            len(records),
            a.owner or "a client",
            sum(len(r.chunks) for r in records),
        )
        return m.CommitReply(versions=tuple(r.version for r in records))

    def _list(self, req: m.ListRequest, a: Asked) -> m.ListReply:
        page = self.catalog.files(
            owner=a.owner, prefix=req.prefix, after=req.after, limit=LIST_PAGE + 1
        )
        return m.ListReply(files=tuple(page[:LIST_PAGE]), more=len(page) > LIST_PAGE)

    def _versions(self, req: m.VersionsRequest, a: Asked) -> m.VersionsReply:
        found = self.catalog.versions(a.owner, req.name)
        if not found:
            raise NotFound(f"no file named {req.name!r} is stored.")
        return m.VersionsReply(versions=tuple(found))

    def _delete(self, req: m.DeleteRequest, a: Asked) -> m.DeleteReply:
        gone = self.catalog.delete(a.owner, req.name, req.version, time.time())
        if not gone:
            which = f"version {req.version} of " if req.version else ""
            raise NotFound(f"no {which}file named {req.name!r} is stored.")
        self._forget(a.owner, [(req.name, v) for v in gone])
        log.info("delete: %r versions %s of %s", req.name, gone, a.owner or "a client")
        return m.DeleteReply(name=req.name, versions=tuple(gone))

    def _prune(self, req: m.PruneRequest, a: Asked) -> m.PruneReply:
        removed = self.catalog.prune(a.owner, req.keep_last, req.prefix, req.dry_run, time.time())
        if removed and not req.dry_run:
            log.info("prune: %d versions of %s", len(removed), a.owner or "a client")
            self._forget(a.owner, [(v.name, v.version) for v in removed])
        return m.PruneReply(removed=tuple(removed), dry_run=req.dry_run)

    def _forget(self, owner: str, versions: list[tuple[str, int]]) -> None:
        """Deleted versions go to every worker's records, so a rebuilt catalog keeps them
        deleted; the file count changes."""
        keys = [m.VersionKey(owner, name, version) for name, version in versions]
        self.outbox.forget([w.name for w in self.catalog.workers()], keys)
        self.health.changed()

    def _status(self, _req: m.StatusRequest, _a: Asked) -> m.StatusReply:
        scrub = self.health.scrub
        return m.StatusReply(
            workers=tuple(
                dataclasses.replace(
                    w,
                    scrubbed_at=scrub.get(w.name, (0.0, 0))[0],
                    damaged=scrub.get(w.name, (0.0, 0))[1],
                    refused=self.health.refused.get(w.name, 0),
                )
                for w in self.catalog.workers()
            ),
            under_replicated=self.health.under_replicated(time.time()),
            files=self.health.count_files(),
            uploads_in_flight=len(self.catalog.pending_uploads()),
            repairs_in_flight=len(self.repairs.in_flight),
        )

    def _verify(self, req: m.VerifyRequest, a: Asked) -> m.VerifyAccepted:
        """Every live holder of the files named (or of all the owner's) re-hashes its copy
        now and answers the client; a damaged copy is quarantined and repaired."""
        if req.names:
            entries = []
            for name in req.names:
                entry = self.catalog.version(a.owner, name)
                if entry is None:
                    raise NotFound(f"no file named {name!r} is stored.")
                entries.append(entry)
        else:
            entries = self.catalog.files(owner=a.owner)
        copies = []
        missing = []
        live = self.catalog.live_workers()
        for e in entries:
            chunks = self.catalog.chunks_of(a.owner, e.name, e.version)
            holders = self.catalog.held_chunks(a.owner, [c.sha256 for c in chunks])
            if not chunks or any(not holders.get(c.sha256) for c in chunks):
                missing.append(e.name)
            for c in dict.fromkeys(chunks):  # each blob once, on each of its live holders
                for worker in holders.get(c.sha256, []):
                    if worker in live:
                        copies.append(m.VerifyCopy(e.name, e.version, worker, c.sha256))
                        a.then.append((worker, m.VerifyBlob(c.sha256, c.size, a.reply_to, a.cid)))
        return m.VerifyAccepted(copies=tuple(copies), missing=tuple(missing))

    def _restore(self, req: m.DownloadRequest, a: Asked) -> m.DownloadAccepted:
        """A file: what it is and its chunks, which the client then fetches one by one
        (``blob``): each from the live holder serving the fewest so far, so the chunks of
        one restore come from several workers at once."""
        if req.blob:
            return self._serve_blob(req, a)
        entry = self.catalog.version(a.owner, req.name, req.version)
        if entry is None:
            which = f"version {req.version} of " if req.version else ""
            raise NotFound(f"no {which}file named {req.name!r} is stored.")
        log.info("restore %s: %r", a.cid, entry.name)
        return m.DownloadAccepted(
            name=entry.name,
            size=entry.size,
            sha256=entry.sha256,
            worker="",
            version=entry.version,
            mode=entry.mode,
            mtime=entry.mtime,
            chunks=self.catalog.chunks_of(a.owner, entry.name, entry.version),
        )

    def _serve_blob(self, req: m.DownloadRequest, a: Asked) -> m.DownloadAccepted:
        held = self.catalog.held_chunks(a.owner, [req.blob]).get(req.blob)
        if held is None:
            raise NotFound("no such chunk is stored for you.")
        holders = [w for w in held if w not in req.exclude]
        if not holders:
            raise NoReplica("no live worker holds a copy of a chunk right now.")
        worker = min(holders, key=lambda w: (self._serving.get(w, 0), w))
        self._serving[worker] = self._serving.get(worker, 0) + 1
        size = self.catalog.blob_size(req.blob)
        a.then.append((worker, m.ServeRequest(req.blob, size, a.reply_to, a.cid)))
        return m.DownloadAccepted(name="", size=size, sha256=req.blob, worker=worker)


# Requests that add or delete versions, and every key request (an owner's keys may still be
# on their way from the workers: `init` must not make a second master key meanwhile), and
# every snapshot request (a commit or a get pins chunks whose records may still be on their
# way, a forget must not miss a snapshot not merged yet, and a listing would leave out those
# not merged yet, so a backup would pick an older parent and `forget` apply its policy to
# part of them): refused while the catalog catches up.
_CHANGES = (
    m.UploadRequest,
    m.PackRequest,
    m.CommitRequest,
    m.DeleteRequest,
    m.PruneRequest,
    m.KeyAdd,
    m.KeyGet,
    m.KeyList,
    m.KeyRemove,
    m.SnapshotCommit,
    m.SnapshotsRequest,
    m.SnapshotGet,
    m.ForgetRequest,
)


def _dry_run(msg: m.Message) -> bool:
    return isinstance(msg, m.PruneRequest) and msg.dry_run
