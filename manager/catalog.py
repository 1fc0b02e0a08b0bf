"""The manager's catalog: versions of files, their replicas, uploads in flight, workers
and the blobs on their way out, in SQLite.

WAL mode and one transaction per change, so a manager killed at any moment restarts with
everything it had confirmed. A file is (owner, name), and each upload of it adds a version;
a version is an ordered list of sealed chunks (``version_chunks``), each a blob named by
the SHA-256 of its sealed bytes; replicas are (blob, worker) pairs, so a name is never a
path anywhere. A chunk is its owner's (``chunks``): sealed with the owner's key, the same
bytes of two owners are two blobs, and one owner's chunk is stored once however many of
its versions use it.

A blob no version, no snapshot (``manager/snapshots.py``), no recent chunk upload and no
upload in flight uses becomes garbage:
after ``gc_delay`` seconds
its replicas leave the catalog (so nothing new is deduplicated onto them) and each holder
is told to delete it; until a holder confirms, no new copy of that content is placed there.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from manager.holdings import COMPLETE, FAILED, PENDING, Holdings
from manager.keys import SCHEMA as KEYS_SCHEMA
from manager.snapshots import SCHEMA as SNAPSHOTS_SCHEMA
from warren.errors import Unavailable
from warren.messages import ChunkRef, CommitFile, FileEntry, VersionRecord
from warren.private import private_file

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
CREATE TABLE IF NOT EXISTS replicas (
    sha256 TEXT NOT NULL, worker TEXT NOT NULL, size INTEGER NOT NULL,
    PRIMARY KEY (sha256, worker));
CREATE INDEX IF NOT EXISTS replicas_by_worker ON replicas (worker);
CREATE INDEX IF NOT EXISTS uploads_by_state ON uploads (state);
CREATE TABLE IF NOT EXISTS versions (
    owner TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, wanted INTEGER NOT NULL,
    created REAL NOT NULL, mode INTEGER NOT NULL, mtime REAL NOT NULL,
    upload_id TEXT NOT NULL, PRIMARY KEY (owner, name, version));
CREATE INDEX IF NOT EXISTS versions_by_sha ON versions (sha256);
CREATE TABLE IF NOT EXISTS garbage (sha256 TEXT PRIMARY KEY, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS forgotten (
    owner TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
    PRIMARY KEY (owner, name, version));
CREATE TABLE IF NOT EXISTS deleting (
    sha256 TEXT NOT NULL, worker TEXT NOT NULL, PRIMARY KEY (sha256, worker));
CREATE TABLE IF NOT EXISTS quotas (owner TEXT PRIMARY KEY, bytes INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS version_chunks (
    owner TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL, seq INTEGER NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, plain INTEGER NOT NULL,
    PRIMARY KEY (owner, name, version, seq));
CREATE INDEX IF NOT EXISTS version_chunks_by_sha ON version_chunks (sha256);
CREATE TABLE IF NOT EXISTS chunks (
    owner TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, wanted INTEGER NOT NULL,
    pinned REAL NOT NULL, PRIMARY KEY (owner, sha256));
CREATE INDEX IF NOT EXISTS chunks_by_sha ON chunks (sha256);
CREATE INDEX IF NOT EXISTS chunks_by_pin ON chunks (pinned);
"""
# Files recorded before versions and owners existed were all uploaded as RabbitMQ's default
# user: they become version 1 of that user's files.
LEGACY_OWNER = "guest"


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
    owner: str = ""  # the broker user who uploads it
    mode: int = 0
    mtime: float = 0.0
    version: int = 0  # the version it becomes, fixed when it is placed (0: when recorded)


class Catalog(Holdings):
    def __init__(self, path: Path, dead_after: float) -> None:
        self.path = path
        self.dead_after = dead_after
        self._db: sqlite3.Connection | None = None
        self._usage: dict[str, tuple[int, int]] | None = None  # see _replica_usage

    def open(self) -> None:
        """Open (or create) the catalog: the file and its WAL and shared-memory files are
        0600 (sqlite gives the latter two the mode of the first; older ones are tightened)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        private_file(self.path)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.chmod(side, 0o600)
        db = sqlite3.connect(self.path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        db.executescript(KEYS_SCHEMA)  # owners' wrapped keys (manager/keys.py)
        db.executescript(SNAPSHOTS_SCHEMA)  # snapshots (manager/snapshots.py)
        columns = {row[1] for row in db.execute("PRAGMA table_info(uploads)")}
        for column, kind in (
            ("reply_to", "TEXT NOT NULL DEFAULT ''"),
            ("owner", f"TEXT NOT NULL DEFAULT '{LEGACY_OWNER}'"),
            ("mode", "INTEGER NOT NULL DEFAULT 0"),
            ("mtime", "REAL NOT NULL DEFAULT 0"),
            ("version", "INTEGER NOT NULL DEFAULT 0"),
        ):
            if column not in columns:  # a catalog from before uploads remembered it
                db.execute(f"ALTER TABLE uploads ADD COLUMN {column} {kind}")
        # next_version looks up a name's uploads for every file placed: without this
        # index each lookup reads the whole table (5,000 small files: 44% of the manager).
        db.execute("CREATE INDEX IF NOT EXISTS uploads_by_name ON uploads (owner, name)")
        self._db = db
        self._migrate_files()

    def _migrate_files(self) -> None:
        """A catalog from before versions: its ``files`` become version 1 of each name."""
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master")}
        if "files" not in tables:
            return
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute(
                "INSERT OR IGNORE INTO versions SELECT ?, name, 1, sha256, size, wanted, "
                "created, 0, 0, upload_id FROM files",
                (LEGACY_OWNER,),
            )
            self.db.execute("DROP TABLE files")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # -- uploads ---------------------------------------------------------------------------

    def add_upload(self, up: Upload, now: float) -> None:
        self.add_uploads([up], now)

    def add_uploads(self, ups: list[Upload], now: float) -> None:
        """Record placed uploads (a pack's files together), in one transaction."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                f"INSERT INTO uploads ({_UPLOAD_COLUMNS}, created) VALUES ({_UPLOAD_SLOTS}, ?)",
                [(*_upload_row(up), now) for up in ups],
            )

    def upload(self, upload_id: str) -> Upload | None:
        row = self.db.execute(
            f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE upload_id=?", (upload_id,)
        ).fetchone()
        return _upload(row) if row else None

    def pending_uploads(self) -> list[Upload]:
        rows = self.db.execute(
            f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE state=?", (PENDING,)
        ).fetchall()
        return [_upload(r) for r in rows]

    def replica_stored(
        self,
        upload_id: str,
        worker: str,
        sha256: str,
        size: int,
        now: float,
        copies: frozenset[str] = frozenset(),
    ) -> Upload | None:
        """Record a verified replica. Returns the upload if this completed it."""
        done = self.replicas_stored(worker, [(upload_id, sha256, size)], now, copies)
        return done[0] if done else None

    def replicas_stored(
        self,
        worker: str,
        stored: list[tuple[str, str, int]],
        now: float,
        copies: frozenset[str] = frozenset(),
    ) -> list[Upload]:
        """Record verified replicas on ``worker``, given as (upload id, sha256, size), in
        one transaction. Returns the uploads this completed. (A pack's files come
        together: each step is one statement for all of them, not one a file.)

        A replica counts only where the manager put it: an upload of that content placed
        with ``worker`` in its chain, or a repair copy to it (``copies``: the ids of the
        copies under way to ``worker``). A worker that says it stored anything else is
        credited with nothing: it can neither pass for a holder nor hide a shortfall."""
        completed: list[Upload] = []
        with self.db:
            self.db.execute("BEGIN")
            for at in range(0, len(stored), _BATCH):
                part = stored[at : at + _BATCH]
                completed += self._record_replicas(worker, part, now, copies)
        return completed

    def _record_replicas(
        self, worker: str, stored: list[tuple[str, str, int]], now: float, copies: frozenset[str]
    ) -> list[Upload]:
        ids = list(dict.fromkeys(upload_id for upload_id, _, _ in stored))
        marks = ",".join("?" * len(ids))
        # Each upload with the time it was placed (see _add_version below).
        uploads = {
            r[0]: (_upload(r), r[-1])
            for r in self.db.execute(
                f"SELECT {_UPLOAD_COLUMNS}, created FROM uploads WHERE upload_id IN ({marks})", ids
            )
        }
        stored = [
            (upload_id, sha256, size)
            for upload_id, sha256, size in stored
            if upload_id in copies
            or (
                (found := uploads.get(upload_id)) is not None
                and found[0].sha256 == sha256
                and worker in found[0].chain
            )
        ]
        if not stored:
            return []
        shas = {sha: size for _, sha, size in stored}
        marks = ",".join("?" * len(shas))
        held = {
            r[0]
            for r in self.db.execute(
                f"SELECT sha256 FROM replicas WHERE worker=? AND sha256 IN ({marks})",
                (worker, *shas),
            )
        }
        fresh = [(sha, worker, size) for sha, size in shas.items() if sha not in held]
        self.db.executemany("INSERT INTO replicas VALUES (?,?,?)", fresh)
        if fresh and self._usage is not None:
            nbytes, nfiles = self._usage.get(worker, (0, 0))
            self._usage[worker] = (nbytes + sum(f[2] for f in fresh), nfiles + len(fresh))
        mine: dict[str, tuple[Upload, float]] = {}
        for upload_id, sha256, _ in stored:
            found = uploads.get(upload_id)
            if found is None or found[0].sha256 != sha256:
                self._mark_if_unused(sha256, now)  # a late copy of content nobody uses now
            else:
                mine[upload_id] = found
        if not mine:
            return []
        self.db.executemany(
            "INSERT OR IGNORE INTO upload_replicas VALUES (?,?)", [(u, worker) for u in mine]
        )
        marks = ",".join("?" * len(mine))
        have: dict[str, set[str]] = {}
        for upload_id, holder in self.db.execute(
            f"SELECT upload_id, worker FROM upload_replicas WHERE upload_id IN ({marks})",
            list(mine),
        ):
            have.setdefault(upload_id, set()).add(holder)
        completed = []
        for upload_id, (up, placed) in mine.items():
            if up.state != PENDING or not set(up.chain) <= have[upload_id]:
                continue
            self.db.execute("UPDATE uploads SET state=? WHERE upload_id=?", (COMPLETE, upload_id))
            if not up.name:  # a sealed chunk: the owner's, until a version uses it or not
                self.hold_chunks(up.owner, [(up.sha256, up.size)], up.wanted, now)
            else:
                # Created when placed: the time in the record its workers keep, so a
                # catalog rebuilt from them says the same.
                self._add_version(up, placed)
            completed.append(up)
        return completed

    def next_version(self, owner: str, name: str) -> int:
        """The number the next upload of a name gets: past every version kept, deleted or
        still being uploaded."""
        (top,) = self.db.execute(
            "SELECT MAX(v) FROM (SELECT MAX(version) AS v FROM versions WHERE owner=? AND name=? "
            "UNION ALL SELECT MAX(version) FROM forgotten WHERE owner=? AND name=? "
            "UNION ALL SELECT MAX(version) FROM uploads WHERE owner=? AND name=?)",
            (owner, name) * 3,
        ).fetchone()
        return int(top or 0) + 1

    def _add_version(self, up: Upload, now: float) -> int:
        version = up.version or self.next_version(up.owner, up.name)
        self.db.execute(
            "INSERT OR IGNORE INTO versions VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                up.owner,
                up.name,
                version,
                up.sha256,
                up.size,
                up.wanted,
                now,
                up.mode,
                up.mtime,
                up.upload_id,
            ),
        )
        self.db.execute("DELETE FROM garbage WHERE sha256=?", (up.sha256,))
        return version

    # -- sealed chunks and the versions made of them -------------------------------------

    def hold_chunks(
        self, owner: str, chunks: list[tuple[str, int]], wanted: int, now: float
    ) -> None:
        """``owner``'s chunks (sha256, size as stored), stored or found stored just now:
        pinned for ``pin_for`` seconds (WARREN_UPLOAD_EXPIRY), so garbage collection leaves
        them alone while the upload that needs them goes on to commit them."""
        self.db.executemany(
            "INSERT INTO chunks VALUES (?,?,?,?,?) ON CONFLICT(owner, sha256) DO UPDATE SET "
            "pinned=excluded.pinned, wanted=MAX(wanted, excluded.wanted)",
            [(owner, sha, size, wanted, now) for sha, size in chunks],
        )

    def held_chunks(self, owner: str, shas: list[str]) -> dict[str, list[str]]:
        """Of these chunks, those that are ``owner``'s, with their live holders (none, for
        a chunk whose every copy is lost or damaged)."""
        live = self.live_workers()
        found: dict[str, list[str]] = {}
        for at in range(0, len(shas), _BATCH):
            part = shas[at : at + _BATCH]
            marks = ",".join("?" * len(part))
            mine = {
                r[0]
                for r in self.db.execute(
                    f"SELECT sha256 FROM chunks WHERE owner=? AND sha256 IN ({marks})",
                    (owner, *part),
                )
            }
            holders = self._holders_of(mine)
            for sha in mine:
                found[sha] = sorted(w for w in holders.get(sha, ()) if w in live)
        return found

    def commit(
        self, owner: str, files: list[CommitFile], wanted: int, now: float
    ) -> list[VersionRecord]:
        """Record each file as a new version of its name, made of its chunks, in one
        transaction: the records its workers keep. Every chunk must be ``owner``'s and held
        by a live worker, or nothing is recorded (``Refused`` names what is missing)."""
        shas = list(dict.fromkeys(c.sha256 for f in files for c in f.chunks))
        held = self.held_chunks(owner, shas)
        missing = [sha for sha in shas if not held.get(sha)]
        if missing:
            raise Unavailable(
                f"{len(missing)} of the chunks to record are not stored (any more): "
                "run the upload again to send them."
            )
        records = []
        with self.db:
            self.db.execute("BEGIN")
            for f in files:
                version = self.next_version(owner, f.name)
                up = Upload(
                    upload_id=uuid.uuid4().hex,
                    name=f.name,
                    size=f.size,
                    sha256=f.sha256,
                    wanted=wanted,
                    chain=(),
                    client="",
                    state=COMPLETE,
                    owner=owner,
                    mode=f.mode,
                    mtime=f.mtime,
                    version=version,
                )
                self._add_version(up, now)
                self._add_chunks(owner, f.name, version, f.chunks)
                # Unpinned: the version keeps them now, and its delete must free them
                # within the GC delay, not RESERVE_FOR seconds after this commit.
                self.hold_chunks(owner, [(c.sha256, c.size) for c in f.chunks], wanted, 0.0)
                records.append(
                    VersionRecord(
                        owner, f.name, version, f.sha256, f.size, now, wanted, f.mode,
                        f.mtime, up.upload_id, f.chunks,
                    )
                )  # fmt: skip
        return records

    def _add_chunks(
        self, owner: str, name: str, version: int, chunks: tuple[ChunkRef, ...]
    ) -> None:
        self.db.executemany(
            "INSERT OR IGNORE INTO version_chunks VALUES (?,?,?,?,?,?,?)",
            [(owner, name, version, i, c.sha256, c.size, c.plain) for i, c in enumerate(chunks)],
        )

    def upload_failed(self, upload_id: str, now: float | None = None) -> Upload | None:
        """A pending upload failed: it stops reserving space. Returns it if it was pending
        (None for a repair's id, or an upload already over)."""
        up = self.upload(upload_id)
        changed = self.db.execute(
            "UPDATE uploads SET state=? WHERE upload_id=? AND state=?", (FAILED, upload_id, PENDING)
        ).rowcount
        if up is not None:
            self._mark_if_unused(up.sha256, time.time() if now is None else now)
        return up if changed else None

    def expire_uploads(self, older_than: float, now: float | None = None) -> list[Upload]:
        """Pending uploads nobody finished are failed, so they stop reserving space; the
        caller has their partial data removed from their chain."""
        now = time.time() if now is None else now
        expired = [
            _upload(r)
            for r in self.db.execute(
                f"SELECT {_UPLOAD_COLUMNS} FROM uploads WHERE state=? AND created<?",
                (PENDING, older_than),
            ).fetchall()
        ]
        with self.db:
            self.db.execute("BEGIN")
            for up in expired:
                self.db.execute(
                    "UPDATE uploads SET state=? WHERE upload_id=?", (FAILED, up.upload_id)
                )
                self._mark_if_unused(up.sha256, now)
        return expired

    # -- files and their versions ----------------------------------------------------------

    def files(
        self,
        now: float | None = None,
        name: str | None = None,
        owner: str | None = None,
        prefix: str = "",
        after: str = "",
        limit: int = -1,
    ) -> list[FileEntry]:
        """The latest version of every file (of ``owner``, or everyone's; under
        ``prefix``; or only the one called ``name``), with the live workers holding it;
        a page: only names after ``after``, at most ``limit`` of them (-1: all)."""
        where, args = _where(owner, name, prefix)
        if after:
            where += " AND name > ?"
            args += (after,)
        rows = self.db.execute(
            f"SELECT {_ENTRY_COLUMNS}, c.n, {_ENTRY_TAIL} FROM versions v JOIN ("
            f"SELECT owner AS o, name AS nm, MAX(version) AS top, COUNT(*) AS n FROM versions "
            f"WHERE {where} GROUP BY owner, name ORDER BY owner, name LIMIT ?) c "
            "ON v.owner=c.o AND v.name=c.nm AND v.version=c.top ORDER BY v.name, v.owner",
            (*args, limit),
        ).fetchall()
        return self._entries(rows, now)

    def versions(self, owner: str, name: str, now: float | None = None) -> list[FileEntry]:
        """Every kept version of one file, oldest first."""
        rows = self.db.execute(
            f"SELECT {_ENTRY_COLUMNS}, (SELECT COUNT(*) FROM versions WHERE owner=? AND name=?), "
            f"{_ENTRY_TAIL} FROM versions v WHERE owner=? AND name=? ORDER BY version",
            (owner, name, owner, name),
        ).fetchall()
        return self._entries(rows, now)

    def version(self, owner: str, name: str, version: int = 0) -> FileEntry | None:
        """One version of a file (0: the latest)."""
        found = self.versions(owner, name)
        if version == 0:
            return found[-1] if found else None
        return next((v for v in found if v.version == version), None)

    def file(self, name: str, owner: str | None = None) -> FileEntry | None:
        found = self.files(name=name, owner=owner)
        return found[0] if found else None

    def _entries(self, rows: list[tuple[Any, ...]], now: float | None) -> list[FileEntry]:
        copies = self._copies([(r[9], r[0], r[5]) for r in rows], sorted(self.live_workers(now)))
        return [
            FileEntry(
                name=r[0],
                sha256=r[1],
                size=r[2],
                wanted=r[3],
                created=r[4],
                version=r[5],
                mode=r[6],
                mtime=r[7],
                versions=r[8],
                replicas=copies.get((r[9], r[0], r[5]), ()),
            )
            for r in rows
        ]

    def _copies(
        self, keys: list[tuple[str, str, int]], live: list[str]
    ) -> dict[tuple[str, str, int], tuple[str, ...]]:
        """The live workers holding a verified copy of each version (owner, name, version):
        those holding its first chunk, as many as its least-held chunk has live copies (its
        chunks may lie on different workers; each counts only as often as every chunk is
        held). One statement a page of versions, not one a version."""
        slots = ",".join("?" * len(live)) or "NULL"
        least: dict[tuple[str, str, int], tuple[int, str]] = {}
        for at in range(0, len(keys), _BATCH):
            part = keys[at : at + _BATCH]
            values = ",".join("(?,?,?)" for _ in part)
            rows = self.db.execute(
                f"WITH page(o, n, v) AS (VALUES {values}) "
                "SELECT c.owner, c.name, c.version, MIN((SELECT COUNT(*) FROM replicas r WHERE "
                f"r.sha256=c.sha256 AND r.worker IN ({slots}))), "
                "MAX(CASE WHEN c.seq=0 THEN c.sha256 END) FROM page p JOIN version_chunks c "
                "ON c.owner=p.o AND c.name=p.n AND c.version=p.v GROUP BY c.owner, c.name, "
                "c.version",
                (*(x for k in part for x in k), *live),
            )
            for owner, name, version, count, anchor in rows:
                least[(owner, name, version)] = (int(count or 0), anchor)
        holders = self._holders_of({anchor for _, anchor in least.values() if anchor})
        live_set = set(live)
        return {
            key: tuple(sorted(w for w in holders.get(anchor, ()) if w in live_set)[:count])
            for key, (count, anchor) in least.items()
        }

    def delete(self, owner: str, name: str, version: int, now: float) -> list[int]:
        """Remove one version (or, with 0, every version) of a file; return those removed.
        Content no version uses any more starts its way out (``garbage_due``)."""
        victims = [v for v in self.versions(owner, name) if version in (0, v.version)]
        self._remove(owner, victims, now)
        return [v.version for v in victims]

    def prune(
        self, owner: str, keep_last: int, prefix: str, dry_run: bool, now: float
    ) -> list[FileEntry]:
        """All but the ``keep_last`` newest versions of each file under ``prefix``."""
        victims: list[FileEntry] = []
        for latest in self.files(owner=owner, prefix=prefix):
            if latest.versions > keep_last:
                victims += self.versions(owner, latest.name)[:-keep_last]
        if not dry_run:
            self._remove(owner, victims, now)
        return victims

    def _remove(self, owner: str, victims: list[FileEntry], now: float) -> None:
        keys = [(owner, v.name, v.version) for v in victims]
        with self.db:
            self.db.execute("BEGIN")
            shas: set[str] = set()
            for key in keys:
                shas.update(
                    r[0]
                    for r in self.db.execute(
                        "SELECT sha256 FROM version_chunks WHERE owner=? AND name=? AND version=?",
                        key,
                    )
                )
            self.db.executemany("DELETE FROM versions WHERE owner=? AND name=? AND version=?", keys)
            self.db.executemany(
                "DELETE FROM version_chunks WHERE owner=? AND name=? AND version=?", keys
            )
            self.db.executemany("INSERT OR IGNORE INTO forgotten VALUES (?,?,?)", keys)
            for sha in sorted(shas):
                self._mark_if_unused(sha, now)


# An upload's columns are its fields, by name, in the dataclass's order (the chain as JSON).
_UPLOAD_FIELDS = tuple(f.name for f in dataclasses.fields(Upload))
_UPLOAD_COLUMNS = ", ".join(_UPLOAD_FIELDS)
_UPLOAD_SLOTS = ",".join("?" * len(_UPLOAD_FIELDS))
# Rows a statement names at once (SQLite takes up to 32,766 parameters).
_BATCH = 500
_ENTRY_COLUMNS = "v.name, v.sha256, v.size, v.wanted, v.created, v.version, v.mode, v.mtime"
_ENTRY_TAIL = "v.owner"  # after the version count


def _upload_row(up: Upload) -> tuple[Any, ...]:
    values = dataclasses.asdict(up)
    values["chain"] = json.dumps(list(up.chain))
    return tuple(values[name] for name in _UPLOAD_FIELDS)


def _upload(row: tuple[Any, ...]) -> Upload:
    """An upload from a row of ``_UPLOAD_COLUMNS`` (further columns, if any, ignored)."""
    values = dict(zip(_UPLOAD_FIELDS, row, strict=False))
    values["chain"] = tuple(json.loads(values["chain"]))
    return Upload(**values)


def _where(owner: str | None, name: str | None, prefix: str) -> tuple[str, tuple[Any, ...]]:
    clauses: list[str] = ["1"]
    args: list[Any] = []
    if owner is not None:
        clauses.append("owner=?")
        args.append(owner)
    if name is not None:
        clauses.append("name=?")
        args.append(name)
    if prefix:  # a range, so the (owner, name, version) index finds it
        clauses.append("name >= ? AND name < ?")
        args += [prefix, prefix + "\U0010ffff"]
    return " AND ".join(clauses), tuple(args)
