"""What the workers hold, as the manager's catalog knows it: the workers and their space,
the replicas (which worker has which blob), the blobs short of live copies, the garbage on
its way out, and the version records the workers keep beside their blobs.

``Catalog`` (manager/catalog.py) is this plus the uploads and versions; the two share one
SQLite connection and schema.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

from manager.chains import Candidate
from warren.messages import BlobEntry, ChunkRef, VersionKey, VersionRecord, WorkerEntry

# An upload reserves room on its chain's workers for this long after it is placed: one that
# has sent nothing by then (a client gone, or one that asks and never sends) stops crowding
# out everyone else's uploads; what it did store counts as stored bytes.
RESERVE_FOR = 600.0

# A chunk an upload stored, or was told is stored, is kept from garbage collection this
# long for the upload to commit it (a version or a snapshot then keeps it). The manager sets
# ``Holdings.pin_for`` to WARREN_UPLOAD_EXPIRY: as long as an unfinished upload may last.

# An upload's state in the catalog.
PENDING = "pending"
COMPLETE = "complete"
FAILED = "failed"


@dataclass(frozen=True)
class Shortfall:
    sha256: str
    size: int
    wanted: int
    live_holders: tuple[str, ...]
    avoid: tuple[str, ...] = ()  # workers still deleting an old copy of it


class Holdings:
    dead_after: float
    _db: sqlite3.Connection | None
    _usage: dict[str, tuple[int, int]] | None
    # The workers table as last read: placing a pack asks who is alive for every file in
    # it, and only a heartbeat changes the table (worker_seen forgets this).
    _worker_rows: list[tuple[str, float, int, int, int]] | None = None
    pin_for: float = RESERVE_FOR  # see above: the manager sets WARREN_UPLOAD_EXPIRY

    @property
    def db(self) -> sqlite3.Connection:
        assert self._db is not None, "catalog is not open"
        return self._db

    # -- workers ---------------------------------------------------------------------------

    def worker_seen(self, name: str, free: int, used: int, files: int, now: float) -> bool:
        """Record a heartbeat; True when the worker was dead or unknown until now."""
        row = self.db.execute("SELECT last_seen FROM workers WHERE name=?", (name,)).fetchone()
        self._worker_rows = None
        # A heartbeat is not worth a disk sync (one a second or more, on the manager's one
        # thread, on a disk the uploads may be saturating): committed unsynced, it is made
        # durable by the next synced commit, as the log is written in order. Lost to a power
        # cut, it is learned again from the next heartbeat.
        unsynced = not self.db.in_transaction
        if unsynced:
            self.db.execute("PRAGMA synchronous=NORMAL")
        try:
            self.db.execute(
                "INSERT INTO workers VALUES (?,?,?,?,?) ON CONFLICT(name) DO UPDATE SET "
                "last_seen=excluded.last_seen, free_bytes=excluded.free_bytes, "
                "used_bytes=excluded.used_bytes, files=excluded.files",
                (name, now, free, used, files),
            )
        finally:
            if unsynced:
                self.db.execute("PRAGMA synchronous=FULL")
        return row is None or now - row[0] > self.dead_after

    def workers(self, now: float | None = None) -> list[WorkerEntry]:
        now = time.time() if now is None else now
        rows = self._worker_rows
        if rows is None:
            rows = self._worker_rows = self.db.execute(
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
        """Every known worker as placement sees it: its space, what the catalog knows on
        it, and what uploads placed in the last ``RESERVE_FOR`` seconds reserve there."""
        reserved: dict[str, int] = {}
        count: dict[str, int] = {}
        since = (time.time() if now is None else now) - RESERVE_FOR
        for worker, nbytes, nfiles in self.db.execute(
            "SELECT j.value, SUM(u.size), COUNT(*) FROM uploads u, json_each(u.chain) j "
            "WHERE u.state=? AND u.created>? GROUP BY j.value",
            (PENDING, since),
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

        Returns (added, removed). A blob the worker was told to delete is not counted (the
        command waits in its queue). A blob no version uses is remembered as a replica and
        kept: after a lost catalog, a blob stored before its worker kept records (or whose
        records live on a worker not heard from yet) must not be taken for garbage. Garbage
        comes only from deletes, failed or abandoned uploads and late copies.
        """
        doomed = {
            r[0] for r in self.db.execute("SELECT sha256 FROM deleting WHERE worker=?", (worker,))
        }
        reported = {b.sha256: b.size for b in blobs if b.sha256 not in doomed}
        known = self.blobs_on(worker)
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

    # -- the records kept beside the data ----------------------------------------------------

    def merge_records(
        self, records: Iterable[VersionRecord], forgotten: Iterable[VersionKey], now: float
    ) -> tuple[int, int]:
        """Take in what a worker keeps beside its blobs: versions the catalog lacks (it was
        lost, or this manager was a standby) are added, unless known deleted; deletions it
        lacks are applied. Idempotent. Returns (added, removed)."""
        added = removed = 0
        with self.db:
            self.db.execute("BEGIN")
            for k in forgotten:
                self.db.execute(
                    "INSERT OR IGNORE INTO forgotten VALUES (?,?,?)", (k.owner, k.name, k.version)
                )
                key = (k.owner, k.name, k.version)
                shas = [
                    r[0]
                    for r in self.db.execute(
                        "SELECT sha256 FROM version_chunks WHERE owner=? AND name=? AND version=?",
                        key,
                    )
                ]
                cur = self.db.execute(
                    "DELETE FROM versions WHERE owner=? AND name=? AND version=?", key
                )
                self.db.execute(
                    "DELETE FROM version_chunks WHERE owner=? AND name=? AND version=?", key
                )
                for sha in shas:
                    self._mark_if_unused(sha, now)
                removed += cur.rowcount
            for r in records:
                gone = self.db.execute(
                    "SELECT 1 FROM forgotten WHERE owner=? AND name=? AND version=?",
                    (r.owner, r.name, r.version),
                ).fetchone()
                if gone is not None:
                    continue
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO versions VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (
                        r.owner,
                        r.name,
                        r.version,
                        r.sha256,
                        r.size,
                        r.wanted,
                        r.created,
                        r.mode,
                        r.mtime,
                        r.upload_id,
                    ),
                )
                if cur.rowcount == 1:
                    added += 1
                    self.db.executemany(
                        "INSERT OR IGNORE INTO version_chunks VALUES (?,?,?,?,?,?,?)",
                        [
                            (r.owner, r.name, r.version, i, c.sha256, c.size, c.plain)
                            for i, c in enumerate(r.chunks)
                        ],
                    )
                    self.db.executemany(
                        "INSERT INTO chunks VALUES (?,?,?,?,?) ON CONFLICT(owner, sha256) DO "
                        "UPDATE SET wanted=MAX(wanted, excluded.wanted)",
                        [(r.owner, c.sha256, c.size, r.wanted, 0.0) for c in r.chunks],
                    )
                    self.db.executemany(
                        "DELETE FROM garbage WHERE sha256=?", [(c.sha256,) for c in r.chunks]
                    )
        return added, removed

    def records_of(self, sha256: str) -> list[VersionRecord]:
        """The records of every version whose first chunk is this blob (for a worker that
        now holds it: a version's record lives beside its first chunk)."""
        rows = self.db.execute(
            "SELECT v.owner, v.name, v.version, v.sha256, v.size, v.created, v.wanted, v.mode, "
            "v.mtime, v.upload_id FROM version_chunks c JOIN versions v ON v.owner=c.owner AND "
            "v.name=c.name AND v.version=c.version WHERE c.sha256=? AND c.seq=0",
            (sha256,),
        ).fetchall()
        return [
            dataclasses.replace(VersionRecord(*r), chunks=self.chunks_of(r[0], r[1], r[2]))
            for r in rows
        ]

    def chunks_of(self, owner: str, name: str, version: int) -> tuple[ChunkRef, ...]:
        """A version's sealed chunks, in order."""
        rows = self.db.execute(
            "SELECT sha256, size, plain FROM version_chunks WHERE owner=? AND name=? AND "
            "version=? ORDER BY seq",
            (owner, name, version),
        )
        return tuple(ChunkRef(*r) for r in rows)

    # -- quotas ----------------------------------------------------------------------------

    def set_quota(self, owner: str, nbytes: int | None) -> None:
        """At most ``nbytes`` of ``owner``'s data on the workers (None: no limit)."""
        with self.db:
            self.db.execute("BEGIN")
            if nbytes is None:
                self.db.execute("DELETE FROM quotas WHERE owner=?", (owner,))
            else:
                self.db.execute(
                    "INSERT INTO quotas VALUES (?,?) ON CONFLICT(owner) DO UPDATE SET "
                    "bytes=excluded.bytes",
                    (owner, nbytes),
                )

    def quota(self, owner: str) -> int | None:
        row = self.db.execute("SELECT bytes FROM quotas WHERE owner=?", (owner,)).fetchone()
        return None if row is None else int(row[0])

    def quotas(self) -> dict[str, int]:
        return {owner: int(n) for owner, n in self.db.execute("SELECT owner, bytes FROM quotas")}

    def owner_usage(self, owner: str) -> int:
        """The bytes ``owner``'s data takes on the workers, every replica counted (each
        content once, however many of the owner's versions use it), plus what its uploads
        in flight reserve (their size on each worker of their chain, while they do:
        ``RESERVE_FOR`` seconds after they were placed)."""
        (stored,) = self.db.execute(
            "SELECT COALESCE(SUM(c.size * (SELECT COUNT(*) FROM replicas r "
            "WHERE r.sha256=c.sha256)), 0) FROM chunks c WHERE c.owner=?",
            (owner,),
        ).fetchone()
        (flying,) = self.db.execute(
            "SELECT COALESCE(SUM(u.size * json_array_length(u.chain)), 0) FROM uploads u "
            "WHERE u.owner=? AND u.state=? AND u.created>?",
            (owner, PENDING, time.time() - RESERVE_FOR),
        ).fetchone()
        return int(stored) + int(flying)

    # -- garbage ---------------------------------------------------------------------------

    def _unused(self, sha256: str, now: float | None = None) -> bool:
        """No version and no snapshot uses this blob, no owner stored (or was told it holds)
        it within ``pin_for`` seconds, and no upload of it is in flight."""
        pinned = (time.time() if now is None else now) - self.pin_for
        return (
            not self._referenced(sha256)
            and self.db.execute(
                "SELECT 1 FROM chunks WHERE sha256=? AND pinned>? LIMIT 1", (sha256, pinned)
            ).fetchone()
            is None
            and self.db.execute(
                "SELECT 1 FROM uploads WHERE sha256=? AND state=? LIMIT 1", (sha256, PENDING)
            ).fetchone()
            is None
        )

    def _mark_if_unused(self, sha256: str, now: float) -> None:
        if self._unused(sha256):
            self.db.execute("INSERT OR IGNORE INTO garbage VALUES (?,?)", (sha256, now))

    def garbage_due(self, now: float, delay: float) -> list[tuple[str, list[str]]]:
        """Blobs unused for ``delay`` seconds, and still unused: their replicas leave the
        catalog now, and each (sha256, holders) is returned for the holders to delete it."""
        due = [
            r[0]
            for r in self.db.execute("SELECT sha256 FROM garbage WHERE since<=?", (now - delay,))
        ]
        out = []
        with self.db:
            self.db.execute("BEGIN")
            for sha in due:
                self.db.execute("DELETE FROM garbage WHERE sha256=?", (sha,))
                if not self._unused(sha, now):
                    if not self._referenced(sha):  # pinned: an upload may commit it yet
                        self.db.execute("INSERT INTO garbage VALUES (?,?)", (sha, now))
                    continue
                holders = self._holders(sha).get(sha, [])
                self.db.execute("DELETE FROM replicas WHERE sha256=?", (sha,))
                self.db.execute("DELETE FROM chunks WHERE sha256=?", (sha,))
                self.db.executemany(
                    "INSERT OR IGNORE INTO deleting VALUES (?,?)", [(sha, w) for w in holders]
                )
                out.append((sha, holders))
        if out:
            self._usage = None
        return out

    def _referenced(self, sha256: str) -> bool:
        """A version or a snapshot uses this blob (else only a pin or an upload keeps it)."""
        return any(
            self.db.execute(f"SELECT 1 FROM {table} WHERE sha256=? LIMIT 1", (sha256,)).fetchone()
            for table in ("version_chunks", "snapshot_chunks")
        )

    def stale_chunks(self, now: float, since: float = 0.0) -> int:
        """Chunks stored, or found stored, for an upload that never committed them, and
        used by no version: on their way out (``garbage_due``). Only pins that ran out
        after ``since`` are looked at (the last pass), so a pass costs what changed.
        Returns how many."""
        rows = self.db.execute(
            "SELECT DISTINCT c.sha256 FROM chunks c WHERE c.pinned<=? AND c.pinned>? AND NOT "
            "EXISTS (SELECT 1 FROM version_chunks v WHERE v.sha256=c.sha256) AND NOT EXISTS "
            "(SELECT 1 FROM garbage g WHERE g.sha256=c.sha256)",
            (now - self.pin_for, since - self.pin_for if since else -1.0),
        ).fetchall()
        with self.db:
            self.db.execute("BEGIN")
            for (sha,) in rows:
                self._mark_if_unused(sha, now)
        return len(rows)

    def blob_size(self, sha256: str) -> int:
        row = self.db.execute(
            "SELECT size FROM replicas WHERE sha256=? LIMIT 1", (sha256,)
        ).fetchone()
        return int(row[0]) if row else 0

    def blobs_on(self, worker: str) -> set[str]:
        """The blobs the catalog knows on one worker (indexed: its own rows only)."""
        return {
            r[0] for r in self.db.execute("SELECT sha256 FROM replicas WHERE worker=?", (worker,))
        }

    def count_files(self) -> int:
        (files,) = self.db.execute(
            "SELECT COUNT(*) FROM (SELECT 1 FROM versions GROUP BY owner, name)"
        ).fetchone()
        return int(files)

    def live_holders(self, sha256: str, now: float | None = None) -> list[str]:
        """Live workers with a verified copy of this content."""
        live = self.live_workers(now)
        return sorted(w for w in self._holders(sha256).get(sha256, []) if w in live)

    def holders_for(self, owner: str, sha256: str) -> list[str]:
        """Live holders of this content for deduplicating an upload by ``owner``: none
        unless one of the owner's own versions uses it. Content is never shared across
        owners on a hash alone: whoever knows another owner's SHA-256 and size must send
        the bytes, or neither get them back nor learn that they are stored."""
        mine = self.db.execute(
            "SELECT 1 FROM chunks WHERE sha256=? AND owner=? LIMIT 1", (sha256, owner)
        ).fetchone()
        return self.live_holders(sha256) if mine is not None else []

    def replica_lost(self, worker: str, sha256: str) -> None:
        """A copy found damaged (and quarantined): it no longer counts, so repair makes a
        good one elsewhere."""
        self.db.execute("DELETE FROM replicas WHERE sha256=? AND worker=?", (sha256, worker))
        self._usage = None

    def blob_deleted(self, worker: str, sha256: str) -> None:
        self.db.execute("DELETE FROM deleting WHERE sha256=? AND worker=?", (sha256, worker))

    def deleting(self, sha256: str) -> set[str]:
        """Workers told to delete this content that have not confirmed yet."""
        rows = self.db.execute("SELECT worker FROM deleting WHERE sha256=?", (sha256,))
        return {r[0] for r in rows}

    def shortfalls(
        self, now: float | None = None, among: set[str] | None = None
    ) -> list[Shortfall]:
        """Blobs with fewer live replicas than the most any version using them wants: of
        all (a full pass, in SQL over the indexes), or only ``among`` these (the blobs a
        lost worker held, a damaged copy, repairs under way), which is what a change costs."""
        live = sorted(self.live_workers(now))
        slots = ",".join("?" * len(live)) or "NULL"
        query = (
            "SELECT sha256, MAX(size), MAX(wanted) FROM chunks v {where} GROUP BY sha256 "
            "HAVING MAX(wanted) > (SELECT COUNT(*) FROM replicas r WHERE r.sha256 = v.sha256 "
            f"AND r.worker IN ({slots})) ORDER BY sha256"
        )
        if among is None:
            rows = self.db.execute(query.format(where=""), live).fetchall()
        else:
            rows = []
            todo = sorted(among)
            for i in range(0, len(todo), 500):
                part = todo[i : i + 500]
                where = f"WHERE sha256 IN ({','.join('?' * len(part))})"
                rows += self.db.execute(query.format(where=where), (*part, *live)).fetchall()
        holders = self._holders_of({r[0] for r in rows})
        return [
            Shortfall(
                sha,
                size,
                wanted,
                tuple(sorted(w for w in holders.get(sha, ()) if w in live)),
                tuple(self.deleting(sha)),
            )
            for sha, size, wanted in rows
        ]

    def _holders_of(self, shas: set[str]) -> dict[str, list[str]]:
        """Workers holding each of these blobs, alive or not (indexed: a few rows each)."""
        holders: dict[str, list[str]] = {}
        todo = sorted(shas)
        for i in range(0, len(todo), 500):
            part = todo[i : i + 500]
            query = (
                f"SELECT sha256, worker FROM replicas WHERE sha256 IN ({','.join('?' * len(part))})"
            )
            for sha, worker in self.db.execute(query, part):
                holders.setdefault(sha, []).append(worker)
        return holders

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
