"""Where uploads go: new files and packs placed on a chain of workers, content the owner
already stored recorded at once (and copied to more workers when held too few times), and
the clients waiting for those copies.

It runs on the manager's one thread, and each placement is one catalog transaction,
published to the chain's workers before the client hears where to send.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid

from manager.catalog import Catalog, Upload
from manager.chains import choose_chain
from manager.health import Health
from manager.holdings import PENDING
from manager.outbox import Outbox
from manager.term import Term
from warren import messages as m
from warren.config import Settings
from warren.errors import Busy, Refused
from warren.sizes import human_size

log = logging.getLogger("warren.manager")

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


class Placement:
    """Placement of uploads and packs, and deduplication within an owner."""

    def __init__(
        self, settings: Settings, catalog: Catalog, outbox: Outbox, term: Term, health: Health
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.outbox = outbox
        self.term = term
        self.health = health
        self._awaiting: dict[str, list[Awaiting]] = {}  # clients waiting for copies, by sha256

    def place(
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
        """Content the owner already stored, which some live worker holds, is recorded as
        a new version at once: nothing is sent. With fewer live copies than asked, the
        holders copy it to other workers (a repair), and the client hears of each copy and
        of the record when the last one is on disk."""
        if replicas < 1:
            return None
        holders = self.catalog.holders_for(owner, file.sha256)
        if not holders or len(self.catalog.live_workers()) < replicas:
            return None  # sent as any upload (or refused: too few workers for the copies)
        chain = tuple(holders[:replicas])
        self._within_quota(owner, file.size * (replicas - len(chain)))
        up, record = self._record_held(file, replicas, chain, client, owner)
        self.outbox.records(chain, [record])
        copies = replicas - len(chain)
        if copies:
            self._awaiting.setdefault(file.sha256, []).append(
                Awaiting(up.upload_id, up.name, up.size, reply_to, replicas)
            )
            self.health.suspect({file.sha256})  # the next tick plans the copies
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
        self.health.changed()
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

    def place_pack(self, req: m.PackRequest, reply_to: str, owner: str) -> m.Message:
        """Small files together: those whose content enough live workers hold are recorded
        at once (``stored``), the others placed on one chain and sent in one message."""
        if req.chunks:
            return self._place_chunks(req, reply_to, owner)
        ids: dict[int, str] = {}
        stored = []
        records: dict[str, list[m.VersionRecord]] = {}  # by holder: one message each
        for i, f in enumerate(req.files):
            holders = self.catalog.holders_for(owner, f.sha256) if req.replicas >= 1 else []
            if len(holders) >= req.replicas:
                held_on = tuple(holders[: req.replicas])
                up, record = self._record_held(f, req.replicas, held_on, req.client, owner)
                ids[i] = up.upload_id
                stored.append(m.StoredFile(up.upload_id, up.chain))
                for worker in held_on:
                    records.setdefault(worker, []).append(record)
        for worker, held in records.items():
            self.outbox.records([worker], held)
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

    def _place_chunks(self, req: m.PackRequest, reply_to: str, owner: str) -> m.PackAccepted:
        """Sealed chunks: those the owner already stored, which ``replicas`` live workers
        hold, are ``stored`` (and pinned for the commit that will use them: garbage
        collection leaves them be meanwhile); the others are placed on one chain."""
        ids: dict[int, str] = {}
        stored = []
        now = time.time()
        held = self.catalog.held_chunks(owner, [f.sha256 for f in req.files])
        for i, f in enumerate(req.files):
            holders = held.get(f.sha256, [])
            if req.replicas >= 1 and len(holders) >= req.replicas:
                ids[i] = uuid.uuid4().hex
                stored.append(m.StoredFile(ids[i], tuple(holders[: req.replicas])))
        if stored:
            found = [(f.sha256, f.size) for i, f in enumerate(req.files) if i in ids]
            self.catalog.hold_chunks(owner, found, req.replicas, now)
        rest = [i for i in range(len(req.files)) if i not in ids]
        chain = stored[0].chain if stored else ()
        if rest:
            ups = self._reserve(
                [req.files[i] for i in rest], req.replicas, req.client, reply_to, owner, True
            )
            ids.update(zip(rest, (up.upload_id for up in ups), strict=True))
            chain = ups[0].chain
        log.info(
            "%d chunks (%d bytes) from %s: %d placed on %s, %d already stored",
            len(req.files),
            sum(f.size for f in req.files),
            req.client or "a client",
            len(rest),
            " -> ".join(chain),
            len(stored),
        )
        return m.PackAccepted(
            upload_ids=tuple(ids[i] for i in range(len(req.files))),
            chain=chain,
            stored=tuple(stored),
        )

    def _reserve(
        self,
        files: list[m.PackFile],
        replicas: int,
        client: str,
        reply_to: str,
        owner: str,
        chunks: bool = False,
    ) -> list[Upload]:
        """Pick one chain with room for all of ``files`` and record each as a pending
        upload, in one transaction (a plain upload is one file, a pack several). A worker
        still deleting an old copy of the same content is not picked for it. ``chunks``:
        they are sealed chunks, which become no version (and have no record)."""
        total = sum(f.size for f in files)
        self._within_quota(owner, total * replicas)
        # Each file's version is fixed now, so its workers keep its record before any chunk.
        last: dict[str, int] = {}
        numbers = []
        for f in files:
            if chunks:
                numbers.append(0)
                continue
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
            if self.term.just_connected() and silent and 1 <= replicas <= len(candidates):
                # After the broker restarted, say: the workers may be reconnecting too,
                # silent only until their next heartbeat. Not a refusal yet: nothing was
                # done, and the client asks again until its request timeout.
                raise Busy(
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
        senders = {w: owner if hop == 0 else chain[hop - 1] for hop, w in enumerate(chain)}
        self.outbox.records(
            chain,
            [] if chunks else [_record(up, up.version, now) for up in ups],
            lambda worker: tuple(m.Expect(up.upload_id, senders[worker], chain) for up in ups),
        )
        return ups

    def _within_quota(self, owner: str, more: int) -> None:
        """Refuse, before any byte is sent, what would take ``owner`` past its quota: its
        data on the workers (every replica) and its uploads in flight, plus ``more``."""
        quota = self.catalog.quota(owner)
        if quota is None or more <= 0:
            return
        used = self.catalog.owner_usage(owner)
        if used + more > quota:
            raise Refused(
                f"this would take {owner or 'you'} past the quota of {human_size(quota)}: "
                f"{human_size(used)} stored or on the way (every replica counted), and this "
                f"needs {human_size(more)} more."
            )

    def copied(self, worker: str, sha256: str) -> None:
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
            self.outbox.to_client(w.reply_to, stored, w.upload_id)
            if len(holders) >= w.wanted:
                log.info("upload %s: %r now on %s", w.upload_id, w.name, ", ".join(holders))
                done = m.UploadRecorded(w.upload_id, w.name)
                self.outbox.to_client(w.reply_to, done, w.upload_id)
            else:
                self._awaiting.setdefault(sha256, []).append(w)


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
