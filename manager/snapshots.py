"""Snapshots in the manager's catalog, and the requests that make, list, open and forget them.

A snapshot's names, sizes and chunk lists are in its manifest, which the client seals with
the owner's key and stores as chunks like any file's; the manager keeps only what it needs
to list snapshots and to collect garbage: the id, time, host, tags, the sealed ``meta``, the
manifest's chunks, and every blob the snapshot uses (``snapshot_chunks``). A blob one of
those rows names is in use (``Holdings._unused``), so it stays on the workers until the
last snapshot and the last version using it are gone.

The owner is always the sender's broker user (the AMQP ``user_id`` RabbitMQ validated),
never a field of a request: no owner can see, open, forget or refer to another's snapshots
or chunks.

Every snapshot made, and every snapshot forgotten, is also sent, sealed with the manager's
key (``manager/records.py``), to every worker's records log on the path owners' keys take
(``worker.forget``: a worker keeps each such line whatever blobs it holds), so a manager
rebuilding its catalog on an empty data dir gets the snapshots back and not the forgotten
ones (``SnapshotStore.merge``), and a worker can neither plant nor drop one.
"""

from __future__ import annotations

import builtins
import json
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from manager.outbox import Outbox
from manager.records import SnapshotGone, SnapshotRecord
from warren import messages as m
from warren.errors import NotFound, Unavailable

log = logging.getLogger("warren.manager")

SCHEMA = """
CREATE TABLE IF NOT EXISTS snapshots (
    owner TEXT NOT NULL, id TEXT NOT NULL, time REAL NOT NULL, host TEXT NOT NULL,
    tags TEXT NOT NULL, meta TEXT NOT NULL, manifest TEXT NOT NULL, created REAL NOT NULL,
    wanted INTEGER NOT NULL, PRIMARY KEY (owner, id));
CREATE TABLE IF NOT EXISTS snapshot_chunks (
    owner TEXT NOT NULL, id TEXT NOT NULL, sha256 TEXT NOT NULL,
    PRIMARY KEY (owner, id, sha256));
CREATE INDEX IF NOT EXISTS snapshot_chunks_by_sha ON snapshot_chunks (sha256);
CREATE TABLE IF NOT EXISTS snapshots_forgotten (
    owner TEXT NOT NULL, id TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (owner, id));
"""

# Rows a statement names at once (SQLite takes up to 32,766 parameters).
_BATCH = 500


class Owned(Protocol):
    owner: str


class Catalogued(Protocol):
    """What snapshots need of the catalog (``manager/catalog.py``)."""

    @property
    def db(self) -> sqlite3.Connection: ...

    def workers(self) -> list[m.WorkerEntry]: ...

    def held_chunks(self, owner: str, shas: list[str]) -> dict[str, list[str]]: ...

    def hold_chunks(
        self, owner: str, chunks: list[tuple[str, int]], wanted: int, now: float
    ) -> None: ...

    def _mark_if_unused(self, sha256: str, now: float) -> None: ...


class SnapshotStore:
    """Every owner's snapshots, in the catalog's database (tables in ``SCHEMA``, made when
    the catalog opens)."""

    def __init__(self, catalog: Catalogued) -> None:
        self.catalog = catalog

    @property
    def db(self) -> sqlite3.Connection:
        return self.catalog.db

    def commit(self, owner: str, req: m.SnapshotCommit, now: float) -> SnapshotRecord:
        """Record a snapshot; the record to hand the workers. Every blob it names (its
        manifest's and ``chunks``) must be ``owner``'s and held by a live worker, or nothing
        is recorded: a snapshot is only worth keeping if it can be restored. Its blobs are
        wanted on ``req.replicas`` workers, and no longer pinned (the snapshot keeps them),
        nor are its parent's (pinned when the backup read it): a forget then gives their
        space back within the GC delay, not a day later."""
        shas = list(dict.fromkeys([*(c.sha256 for c in req.manifest), *req.chunks]))
        held = self.catalog.held_chunks(owner, shas)
        missing = sum(1 for sha in shas if not held.get(sha))
        if missing:
            raise Unavailable(
                f"{missing} of the chunks this snapshot names are not stored (any more): "
                "run the backup again."
            )
        sizes = self._sizes(owner, shas)
        record = SnapshotRecord(
            owner=owner,
            id=secrets.token_hex(8),
            time=req.time,
            host=req.host,
            tags=tuple(req.tags),
            meta=req.meta,
            manifest=tuple(req.manifest),
            chunks=tuple(shas),
            sizes=tuple(sizes[sha] for sha in shas),
            wanted=req.replicas,
            created=now,
        )
        with self.db:
            self.db.execute("BEGIN")
            self._insert(record)
            self.catalog.hold_chunks(
                owner, list(zip(shas, record.sizes, strict=True)), req.replicas, 0.0
            )
            if req.parent:
                self.db.execute(
                    "UPDATE chunks SET pinned=0 WHERE owner=? AND sha256 IN (SELECT sha256 FROM "
                    "snapshot_chunks WHERE owner=? AND id=?)",
                    (owner, owner, req.parent),
                )
        return record

    def list(self, owner: str) -> builtins.list[m.SnapshotEntry]:
        """``owner``'s snapshots, oldest first (by the time each backup started). (Methods
        below name the built-in ``builtins.list``: ``list`` is this one in the class.)"""
        rows = self.db.execute(
            "SELECT id, time, host, tags, meta FROM snapshots WHERE owner=? "
            "ORDER BY time, created, id",
            (owner,),
        ).fetchall()
        return [
            m.SnapshotEntry(i, t, h, tuple(json.loads(tags)), meta) for i, t, h, tags, meta in rows
        ]

    def get(self, owner: str, sid: str, now: float, pin: bool = False) -> m.SnapshotEntry:
        """One of ``owner``'s snapshots with its manifest. ``pin``: every blob it uses is
        pinned for ``pin_for`` seconds (WARREN_UPLOAD_EXPIRY), so a backup taking it as its
        parent may reuse them while another client forgets it (one indexed pass over its
        blobs); that backup's commit ends the pins."""
        row = self.db.execute(
            "SELECT id, time, host, tags, meta, manifest, wanted FROM snapshots "
            "WHERE owner=? AND id=?",
            (owner, sid),
        ).fetchone()
        if row is None:
            raise NotFound(f"you have no snapshot {sid}.")
        i, t, h, tags, meta, manifest, wanted = row
        refs = tuple(m.ChunkRef(*c) for c in json.loads(manifest))
        if not pin:
            return m.SnapshotEntry(i, t, h, tuple(json.loads(tags)), meta, refs)
        chunks = self.db.execute(
            "SELECT c.sha256, c.size FROM snapshot_chunks s JOIN chunks c ON c.owner=s.owner "
            "AND c.sha256=s.sha256 WHERE s.owner=? AND s.id=?",
            (owner, sid),
        ).fetchall()
        with self.db:
            self.db.execute("BEGIN")
            self.catalog.hold_chunks(owner, [(sha, size) for sha, size in chunks], wanted, now)
        return m.SnapshotEntry(i, t, h, tuple(json.loads(tags)), meta, refs)

    def forget(self, owner: str, ids: Iterable[str], now: float) -> builtins.list[SnapshotGone]:
        """Forget these snapshots of ``owner`` (NotFound for an id it does not have, and
        then none is forgotten); the blobs no longer used start their way out
        (``garbage_due``). Costs what the forgotten snapshots use, not the repository."""
        wanted = list(dict.fromkeys(ids))
        for sid in wanted:
            if (
                self.db.execute(
                    "SELECT 1 FROM snapshots WHERE owner=? AND id=?", (owner, sid)
                ).fetchone()
                is None
            ):
                raise NotFound(f"you have no snapshot {sid}: nothing was forgotten.")
        gone = [SnapshotGone(owner, sid, now) for sid in wanted]
        with self.db:
            self.db.execute("BEGIN")
            for g in gone:
                self._remove(g, now)
        return gone

    def merge(
        self, records: Iterable[SnapshotRecord], gone: Iterable[SnapshotGone], now: float
    ) -> tuple[int, int]:
        """Take in the snapshot records a worker keeps: snapshots the catalog lacks are
        added unless forgotten, forgotten ones are removed. Idempotent. Returns (added,
        removed)."""
        added = removed = 0
        with self.db:
            self.db.execute("BEGIN")
            for g in gone:  # marked now: records of versions using a blob may come later
                removed += self._remove(g, now)
            for r in records:
                known = self.db.execute(
                    "SELECT 1 FROM snapshots_forgotten WHERE owner=? AND id=?", (r.owner, r.id)
                ).fetchone()
                if known is not None or len(r.chunks) != len(r.sizes) or not self._insert(r):
                    continue
                added += 1
                # Its blobs are the owner's again (a rebuilt catalog has no chunks yet),
                # wanted on as many workers as the snapshot asked, not pinned.
                self.db.executemany(
                    "INSERT INTO chunks VALUES (?,?,?,?,?) ON CONFLICT(owner, sha256) DO "
                    "UPDATE SET wanted=MAX(wanted, excluded.wanted)",
                    [
                        (r.owner, sha, size, r.wanted, 0.0)
                        for sha, size in zip(r.chunks, r.sizes, strict=True)
                    ],
                )
        return added, removed

    def _insert(self, r: SnapshotRecord) -> int:
        """The rows of a snapshot; 0 if it was known. A blob of it already marked as garbage
        stays marked: ``garbage_due`` looks again before anything is deleted, and finds it
        used."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO snapshots VALUES (?,?,?,?,?,?,?,?,?)",
            (
                r.owner,
                r.id,
                r.time,
                r.host,
                json.dumps(list(r.tags)),
                r.meta,
                json.dumps([[c.sha256, c.size, c.plain] for c in r.manifest]),
                r.created,
                r.wanted,
            ),
        )
        if cur.rowcount == 0:
            return 0
        self.db.executemany(
            "INSERT OR IGNORE INTO snapshot_chunks VALUES (?,?,?)",
            [(r.owner, r.id, sha) for sha in r.chunks],
        )
        return 1

    def _remove(self, g: SnapshotGone, now: float) -> int:
        """Forget one snapshot (inside the caller's transaction); 1 if it was there."""
        self.db.execute(
            "INSERT OR IGNORE INTO snapshots_forgotten VALUES (?,?,?)", (g.owner, g.id, g.at)
        )
        shas = [
            r[0]
            for r in self.db.execute(
                "SELECT sha256 FROM snapshot_chunks WHERE owner=? AND id=?", (g.owner, g.id)
            )
        ]
        cur = self.db.execute("DELETE FROM snapshots WHERE owner=? AND id=?", (g.owner, g.id))
        self.db.execute("DELETE FROM snapshot_chunks WHERE owner=? AND id=?", (g.owner, g.id))
        for sha in shas:
            self.catalog._mark_if_unused(sha, now)
        return cur.rowcount

    def _sizes(self, owner: str, shas: builtins.list[str]) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for at in range(0, len(shas), _BATCH):
            part = shas[at : at + _BATCH]
            marks = ",".join("?" * len(part))
            sizes.update(
                self.db.execute(
                    f"SELECT sha256, size FROM chunks WHERE owner=? AND sha256 IN ({marks})",
                    (owner, *part),
                ).fetchall()
            )
        return sizes


class SnapshotAnswers:
    """The manager's answers to snapshot requests (registered in ``manager/requests.py``)."""

    def __init__(
        self,
        catalog: Catalogued,
        outbox: Outbox,
        suspect: Callable[[set[str]], None] = lambda _shas: None,
    ) -> None:
        """``suspect``: blobs that may now have fewer live copies than wanted (a snapshot
        may want more than its chunks were stored with): ``Health.suspect``."""
        self.store = SnapshotStore(catalog)
        self.catalog = catalog
        self.outbox = outbox
        self.suspect = suspect

    def handlers(self) -> dict[type[m.Message], Callable[[Any, Any], m.Message]]:
        return {
            m.SnapshotCommit: self._commit,
            m.SnapshotsRequest: self._list,
            m.SnapshotGet: self._get,
            m.ForgetRequest: self._forget,
        }

    def _commit(self, req: m.SnapshotCommit, a: Owned) -> m.SnapshotCommitted:
        record = self.store.commit(a.owner, req, time.time())
        self._to_workers([record])
        self.suspect(set(record.chunks))
        log.info(
            "snapshot: %s recorded %s of %s (%d chunks)",
            a.owner,
            record.id,
            req.host or "no host",
            len(record.chunks),
        )
        return m.SnapshotCommitted(id=record.id)

    def _list(self, _req: m.SnapshotsRequest, a: Owned) -> m.SnapshotsReply:
        return m.SnapshotsReply(snapshots=tuple(self.store.list(a.owner)))

    def _get(self, req: m.SnapshotGet, a: Owned) -> m.SnapshotGot:
        return m.SnapshotGot(snapshot=self.store.get(a.owner, req.id, time.time(), req.pin))

    def _forget(self, req: m.ForgetRequest, a: Owned) -> m.Forgotten:
        gone = self.store.forget(a.owner, req.ids, time.time())
        self._to_workers(gone)
        log.info("snapshot: %s forgot %s", a.owner, ", ".join(g.id for g in gone))
        return m.Forgotten(ids=tuple(g.id for g in gone))

    def _to_workers(self, records: Iterable[SnapshotRecord | SnapshotGone]) -> None:
        """To every worker's records log, sealed (a dead one's queue keeps it)."""
        cmd = m.ForgetVersions(keys=tuple(self.outbox.seal.seal_snapshot(r) for r in records))
        for w in self.catalog.workers():
            self.outbox.to_worker(w.name, cmd)
