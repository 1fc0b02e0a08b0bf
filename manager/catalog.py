"""The manager's catalog: files, their replicas, uploads in flight and workers, in SQLite.

WAL mode and one transaction per change, so a manager killed at any moment restarts with
everything it had confirmed. Names map to content hashes; replicas are (hash, worker)
pairs, so a name is never a path anywhere and identical content is one blob.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manager.placement import Candidate
from warren.messages import BlobEntry, FileEntry, WorkerEntry

SCHEMA = """
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY, last_seen REAL NOT NULL,
    free_bytes INTEGER NOT NULL, used_bytes INTEGER NOT NULL, files INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS uploads (
    upload_id TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL,
    sha256 TEXT NOT NULL, wanted INTEGER NOT NULL, chain TEXT NOT NULL,
    client TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL,
    reply_to TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS upload_replicas (
    upload_id TEXT NOT NULL, worker TEXT NOT NULL, PRIMARY KEY (upload_id, worker));
CREATE TABLE IF NOT EXISTS files (
    name TEXT PRIMARY KEY, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
    wanted INTEGER NOT NULL, created REAL NOT NULL, upload_id TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS replicas (
    sha256 TEXT NOT NULL, worker TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (sha256, worker));
CREATE INDEX IF NOT EXISTS replicas_by_worker ON replicas (worker);
CREATE INDEX IF NOT EXISTS uploads_by_state ON uploads (state);
"""

PENDING = "pending"
COMPLETE = "complete"
FAILED = "failed"


@dataclass(frozen=True)
class Upload:
    upload_id: str
    name: str
    size: int
    sha256: str
    wanted: int
    chain: tuple[str, ...]
    client: str
    state: str
    reply_to: str = ""  # the client's queue, told when the upload is recorded


@dataclass(frozen=True)
class Shortfall:
    sha256: str
    size: int
    wanted: int
    live_holders: tuple[str, ...]


class Catalog:
    def __init__(self, path: Path, dead_after: float) -> None:
        self.path = path
        self.dead_after = dead_after
        self._db: sqlite3.Connection | None = None
        self._usage: dict[str, tuple[int, int]] | None = None  # see _replica_usage

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(uploads)")}
        if "reply_to" not in columns:  # a catalog from before uploads remembered it
            db.execute("ALTER TABLE uploads ADD COLUMN reply_to TEXT NOT NULL DEFAULT ''")
        self._db = db

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "catalog is not open"
        return self._db

    # -- workers ---------------------------------------------------------------------------

    def worker_seen(self, name: str, free: int, used: int, files: int, now: float) -> bool:
        """Record a heartbeat; True when the worker was dead or unknown until now."""
        row = self.db.execute("SELECT last_seen FROM workers WHERE name=?", (name,)).fetchone()
        self.db.execute(
            "INSERT INTO workers VALUES (?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
            "last_seen=excluded.last_seen, free_bytes=excluded.free_bytes, "
            "used_bytes=excluded.used_bytes, files=excluded.files",
            (name, now, free, used, files),
        )
        return row is None or now - row[0] > self.dead_after

    def workers(self, now: float | None = None) -> list[WorkerEntry]:
        now = time.time() if now is None else now
        rows = self.db.execute(
            "SELECT name, last_seen, free_bytes, used_bytes, files FROM workers ORDER BY name"
        ).fetchall()
        return [
            WorkerEntry(
                name=r[0],
                alive=now - r[1] <= self.dead_after,
                free_bytes=r[2],
                used_bytes=r[3],
                files=r[4],
                last_seen=r[1],
            )
            for r in rows
        ]

    def live_workers(self, now: float | None = None) -> set[str]:
        return {w.name for w in self.workers(now) if w.alive}

    def candidates(self, now: float | None = None) -> list[Candidate]:
        reserved: dict[str, int] = {}
        count: dict[str, int] = {}
        for worker, nbytes, nfiles in self.db.execute(
            "SELECT j.value, SUM(u.size), COUNT(*) FROM uploads u, json_each(u.chain) j "
            "WHERE u.state=? GROUP BY j.value",
            (PENDING,),
        ):
            reserved[worker], count[worker] = nbytes, nfiles
        usage = self._replica_usage()
        return [
            Candidate(
                w.name,
                w.alive,
                w.free_bytes,
                usage.get(w.name, (0, 0))[0],
                reserved.get(w.name, 0),
                count.get(w.name, 0) + usage.get(w.name, (0, 0))[1],
            )
            for w in self.workers(now)
        ]

    def _replica_usage(self) -> dict[str, tuple[int, int]]:
        """(bytes, replicas) the catalog knows on each worker.

        Placement asks on every upload, so this is summed over the replicas table once and
        then kept up to date as replicas are recorded; a reconcile sums it again.
        """
        if self._usage is None:
            self._usage = {
                worker: (nbytes, nfiles)
                for worker, nbytes, nfiles in self.db.execute(
                    "SELECT worker, SUM(size), COUNT(*) FROM replicas GROUP BY worker"
                )
            }
        return self._usage

    def reconcile(self, worker: str, blobs: Iterable[BlobEntry]) -> tuple[int, int]:
        """Make the catalog's replicas on ``worker`` exactly what it reports holding.

        Returns (added, removed). Blobs no file names are kept as replicas: they may belong
        to an upload that is finishing, and they cost nothing to remember.
        """
        reported = {b.sha256: b.size for b in blobs}
        known = {
            r[0] for r in self.db.execute("SELECT sha256 FROM replicas WHERE worker=?", (worker,))
        }
        added = set(reported) - known
        removed = known - set(reported)
        self._usage = None  # summed again on next use
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT OR IGNORE INTO replicas VALUES (?,?,?)",
                [(s, worker, reported[s]) for s in added],
            )
            self.db.executemany(
                "DELETE FROM replicas WHERE sha256=? AND worker=?", [(s, worker) for s in removed]
            )
        return len(added), len(removed)

    # -- uploads ---------------------------------------------------------------------------

    def add_upload(self, up: Upload, now: float) -> None:
        self.add_uploads([up], now)

    def add_uploads(self, ups: list[Upload], now: float) -> None:
        """Record placed uploads (a pack's files together), in one transaction."""
        rows = [
            (
                up.upload_id,
                up.name,
                up.size,
                up.sha256,
                up.wanted,
                json.dumps(list(up.chain)),
                up.client,
                up.state,
                now,
                up.reply_to,
            )
            for up in ups
        ]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT INTO uploads VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def upload(self, upload_id: str) -> Upload | None:
        row = self.db.execute(
            "SELECT upload_id, name, size, sha256, wanted, chain, client, state, reply_to "
            "FROM uploads WHERE upload_id=?",
            (upload_id,),
        ).fetchone()
        return _upload(row) if row else None

    def pending_uploads(self) -> list[Upload]:
        rows = self.db.execute(
            "SELECT upload_id, name, size, sha256, wanted, chain, client, state, reply_to "
            "FROM uploads WHERE state=?",
            (PENDING,),
        ).fetchall()
        return [_upload(r) for r in rows]

    def replica_stored(
        self, upload_id: str, worker: str, sha256: str, size: int, now: float
    ) -> Upload | None:
        """Record a verified replica. Returns the upload if this completed it."""
        done = self.replicas_stored(worker, [(upload_id, sha256, size)], now)
        return done[0] if done else None

    def replicas_stored(
        self, worker: str, stored: list[tuple[str, str, int]], now: float
    ) -> list[Upload]:
        """Record verified replicas on ``worker``, given as (upload id, sha256, size), in
        one transaction. Returns the uploads this completed."""
        completed = []
        with self.db:
            self.db.execute("BEGIN")
            for upload_id, sha256, size in stored:
                up = self._record_replica(upload_id, worker, sha256, size, now)
                if up is not None:
                    completed.append(up)
        return completed

    def _record_replica(
        self, upload_id: str, worker: str, sha256: str, size: int, now: float
    ) -> Upload | None:
        up = self.upload(upload_id)
        cur = self.db.execute(
            "INSERT OR IGNORE INTO replicas VALUES (?,?,?)", (sha256, worker, size)
        )
        if cur.rowcount == 1 and self._usage is not None:
            nbytes, nfiles = self._usage.get(worker, (0, 0))
            self._usage[worker] = (nbytes + size, nfiles + 1)
        if up is None or up.sha256 != sha256:
            return None
        self.db.execute("INSERT OR IGNORE INTO upload_replicas VALUES (?,?)", (upload_id, worker))
        have = {
            r[0]
            for r in self.db.execute(
                "SELECT worker FROM upload_replicas WHERE upload_id=?", (upload_id,)
            )
        }
        if up.state != PENDING or not set(up.chain) <= have:
            return None
        self.db.execute("UPDATE uploads SET state=? WHERE upload_id=?", (COMPLETE, upload_id))
        self.db.execute(
            "INSERT INTO files VALUES (?,?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
            "sha256=excluded.sha256, size=excluded.size, wanted=excluded.wanted, "
            "created=excluded.created, upload_id=excluded.upload_id",
            (up.name, up.sha256, up.size, up.wanted, now, up.upload_id),
        )
        return up

    def upload_failed(self, upload_id: str) -> None:
        self.db.execute(
            "UPDATE uploads SET state=? WHERE upload_id=? AND state=?", (FAILED, upload_id, PENDING)
        )

    def expire_uploads(self, older_than: float) -> int:
        """Pending uploads nobody finished are failed, so they stop reserving space."""
        cur = self.db.execute(
            "UPDATE uploads SET state=? WHERE state=? AND created<?", (FAILED, PENDING, older_than)
        )
        return cur.rowcount

    # -- files -----------------------------------------------------------------------------

    def files(self, now: float | None = None, name: str | None = None) -> list[FileEntry]:
        """Every file (or the one called ``name``) with the live workers holding it."""
        live = self.live_workers(now)
        query = "SELECT name, sha256, size, wanted, created FROM files"
        if name is None:
            rows = self.db.execute(query + " ORDER BY name").fetchall()
            holders = self._holders()
        else:
            rows = self.db.execute(query + " WHERE name=?", (name,)).fetchall()
            holders = self._holders(rows[0][1]) if rows else {}
        return [
            FileEntry(
                name=r[0],
                sha256=r[1],
                size=r[2],
                wanted=r[3],
                created=r[4],
                replicas=tuple(sorted(w for w in holders.get(r[1], ()) if w in live)),
            )
            for r in rows
        ]

    def shortfalls(self, now: float | None = None) -> list[Shortfall]:
        """Blobs with fewer live replicas than the most any file using them wants."""
        live = self.live_workers(now)
        holders = self._holders()
        out = []
        for sha, size, wanted in self.db.execute(
            "SELECT sha256, MAX(size), MAX(wanted) FROM files GROUP BY sha256 ORDER BY sha256"
        ):
            have = sorted(w for w in holders.get(sha, ()) if w in live)
            if len(have) < wanted:
                out.append(Shortfall(sha, size, wanted, tuple(have)))
        return out

    def file(self, name: str) -> FileEntry | None:
        found = self.files(name=name)
        return found[0] if found else None

    def _holders(self, sha256: str | None = None) -> dict[str, list[str]]:
        """Workers holding each blob (or just ``sha256``), alive or not."""
        holders: dict[str, list[str]] = {}
        query = "SELECT sha256, worker FROM replicas"
        args: tuple[str, ...] = ()
        if sha256 is not None:
            query, args = query + " WHERE sha256=?", (sha256,)
        for sha, worker in self.db.execute(query, args):
            holders.setdefault(sha, []).append(worker)
        return holders


def _upload(row: tuple[Any, ...]) -> Upload:
    return Upload(
        upload_id=row[0],
        name=row[1],
        size=row[2],
        sha256=row[3],
        wanted=row[4],
        chain=tuple(json.loads(row[5])),
        client=row[6],
        state=row[7],
        reply_to=row[8],
    )
