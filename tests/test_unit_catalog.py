"""The manager's catalog in SQLite: completion, reconciliation, and surviving a reopen."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from manager.catalog import Catalog, Upload
from manager.holdings import COMPLETE, PENDING
from warren.errors import Unavailable
from warren.messages import BlobEntry, ChunkRef, CommitFile

SHA = "ab" * 32  # a file's plaintext SHA-256
CHUNK = "cd" * 32  # a sealed chunk's blob


def catalog(tmp_path: Path, now: float = 1000) -> Catalog:
    c = Catalog(tmp_path / "catalog.sqlite3", dead_after=10)
    c.open()
    for w in ("w1", "w2", "w3"):
        c.worker_seen(w, free=100, used=0, files=0, now=now)
    return c


def upload(uid: str = "1" * 32, name: str = "a b.txt") -> Upload:
    return Upload(uid, name, 5, SHA, 2, ("w1", "w2"), "c1", PENDING)


def chunk_upload(uid: str, sha: str, size: int, chain: tuple[str, ...]) -> Upload:
    """A sealed chunk placed for alice (a pack of chunks: no name, no version)."""
    return Upload(uid, "", size, sha, len(chain), chain, "c1", PENDING, owner="alice")


def commit_file(name: str, *chunks: tuple[str, int]) -> CommitFile:
    refs = tuple(ChunkRef(sha, size, size - 1) for sha, size in chunks)
    return CommitFile(name, sum(c.plain for c in refs), SHA, refs)


def test_a_file_is_listed_only_when_every_replica_is_stored(tmp_path: Path) -> None:
    # Its chunks must be stored on every worker of their chain before a commit records it.
    now = time.time()
    c = catalog(tmp_path, now)
    c.add_upload(chunk_upload("1" * 32, CHUNK, 5, ("w1", "w2")), now=now)
    assert c.replica_stored("1" * 32, "w1", CHUNK, 5, now=now) is None
    with pytest.raises(Unavailable, match="not stored"):
        c.commit("alice", [commit_file("a b.txt", (CHUNK, 5))], 2, now)
    assert c.files(now=now) == []
    done = c.replica_stored("1" * 32, "w2", CHUNK, 5, now=now)
    assert done is not None and done.name == ""  # a chunk, not yet a file
    assert c.files(now=now) == []
    [record] = c.commit("alice", [commit_file("a b.txt", (CHUNK, 5))], 2, now)
    assert (record.name, record.version, record.sha256) == ("a b.txt", 1, SHA)
    [entry] = c.files(now=now)
    assert (entry.name, entry.sha256, entry.replicas) == ("a b.txt", SHA, ("w1", "w2"))
    assert c.files(now=now, name="a b.txt") == [entry]
    assert c.files(now=now, name="other") == []
    assert c.upload("1" * 32).state == COMPLETE  # type: ignore[union-attr]


def test_duplicate_confirmations_count_once(tmp_path: Path) -> None:
    c = catalog(tmp_path)
    c.add_upload(upload(), now=1000)
    for _ in range(3):
        c.replica_stored("1" * 32, "w1", SHA, 5, now=1001)
    assert c.files(now=1001) == []


def test_catalog_survives_reopen(tmp_path: Path) -> None:
    c = catalog(tmp_path)
    c.add_upload(upload(), now=1000)
    c.replica_stored("1" * 32, "w1", SHA, 5, now=1001)
    c.replica_stored("1" * 32, "w2", SHA, 5, now=1001)
    c.close()
    again = Catalog(tmp_path / "catalog.sqlite3", dead_after=10)
    again.open()
    assert [f.name for f in again.files(now=1001)] == ["a b.txt"]


def test_dead_workers_do_not_count_as_replicas(tmp_path: Path) -> None:
    now = time.time()
    c = catalog(tmp_path, now)
    other = "ef" * 32
    c.add_uploads(
        [
            chunk_upload("1" * 32, CHUNK, 5, ("w1", "w2")),
            chunk_upload("2" * 32, other, 6, ("w1", "w2")),
        ],
        now=now,
    )
    for w in ("w1", "w2"):
        c.replicas_stored(w, [("1" * 32, CHUNK, 5), ("2" * 32, other, 6)], now=now)
    c.commit("alice", [commit_file("a b.txt", (CHUNK, 5), (other, 6))], 2, now)
    assert c.files(now=now)[0].replicas == ("w1", "w2")
    c.worker_seen("w1", 100, 0, 0, now=now + 20)  # w2 silent for 20 s > dead_after
    [entry] = c.files(now=now + 20)
    assert entry.replicas == ("w1",)


def test_reconcile_makes_the_catalog_match_the_inventory(tmp_path: Path) -> None:
    c = catalog(tmp_path)
    other = "cd" * 32
    c.reconcile("w1", [BlobEntry(SHA, 5), BlobEntry(other, 7)])
    assert c.reconcile("w1", [BlobEntry(SHA, 5), BlobEntry(other, 7)]) == (0, 0)
    assert c.reconcile("w1", [BlobEntry(other, 7)]) == (0, 1)


def test_pending_uploads_reserve_space_for_placement(tmp_path: Path) -> None:
    c = catalog(tmp_path)
    c.add_upload(upload(), now=1000)
    reserved = {cand.name: cand.reserved_bytes for cand in c.candidates(now=1000)}
    assert reserved == {"w1": 5, "w2": 5, "w3": 0}
    assert [up.upload_id for up in c.expire_uploads(older_than=2000)] == ["1" * 32]
    assert all(cand.reserved_bytes == 0 for cand in c.candidates(now=1000))


def test_placement_sees_replicas_as_they_are_recorded(tmp_path: Path) -> None:
    c = catalog(tmp_path)
    assert {x.name: x.used_bytes for x in c.candidates(now=1000)} == {"w1": 0, "w2": 0, "w3": 0}
    c.add_upload(upload(), now=1000)
    c.replica_stored("1" * 32, "w1", SHA, 5, now=1001)
    c.replica_stored("1" * 32, "w1", SHA, 5, now=1001)  # a duplicate counts once
    used = {x.name: (x.used_bytes, x.files) for x in c.candidates(now=1001)}
    assert used["w1"] == (5, 2)  # 5 bytes stored, and 1 replica + 1 pending upload
    c.reconcile("w1", [])
    assert {x.name: x.used_bytes for x in c.candidates(now=1001)}["w1"] == 0


def test_a_catalog_from_before_reply_to_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    old = sqlite3.connect(tmp_path / "catalog.sqlite3")
    old.execute(
        "CREATE TABLE uploads (upload_id TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER "
        "NOT NULL, sha256 TEXT NOT NULL, wanted INTEGER NOT NULL, chain TEXT NOT NULL, client "
        "TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL)"
    )
    old.execute(
        "INSERT INTO uploads VALUES (?,?,?,?,?,?,?,?,?)",
        ("2" * 32, "old.txt", 1, SHA, 2, '["w1", "w2"]', "c", "pending", 1.0),
    )
    old.commit()
    old.close()
    c = catalog(tmp_path)
    assert c.upload("2" * 32) == Upload(
        "2" * 32, "old.txt", 1, SHA, 2, ("w1", "w2"), "c", PENDING, reply_to="", owner="guest"
    )
    # And new uploads keep their reply_to, across a reopen too
    new = Upload("3" * 32, "new.txt", 1, SHA, 2, ("w1", "w2"), "c", PENDING, "amq.gen-q1")
    c.add_upload(new, now=1000)
    assert c.upload("3" * 32) == new
    c.close()
    again = Catalog(tmp_path / "catalog.sqlite3", dead_after=10)
    again.open()
    assert again.upload("3" * 32) == new
    assert again.upload("2" * 32) == Upload(
        "2" * 32, "old.txt", 1, SHA, 2, ("w1", "w2"), "c", PENDING, reply_to="", owner="guest"
    )


def test_a_pack_is_placed_and_recorded_in_one_go(tmp_path: Path) -> None:
    c = catalog(tmp_path)
    ups = [upload(str(i) * 32, f"f{i}") for i in range(1, 4)]
    c.add_uploads(ups, now=1000)
    stored = [(u.upload_id, u.sha256, u.size) for u in ups]
    assert c.replicas_stored("w1", stored, now=1001) == []
    done = c.replicas_stored("w2", stored, now=1002)
    assert [u.name for u in done] == ["f1", "f2", "f3"]
    assert [f.name for f in c.files(now=1002)] == ["f1", "f2", "f3"]
    assert c.replicas_stored("w2", stored, now=1003) == []  # a redelivery completes nothing


def test_a_batch_of_replicas_ends_as_the_same_replicas_one_at_a_time_would(
    tmp_path: Path,
) -> None:
    # Given two catalogs with the same uploads: two files of the same content, one of them
    # placed twice (a retry), and a copy of content no upload uses
    def placed(where: Path) -> Catalog:
        where.mkdir()
        c = catalog(where)
        c.candidates()  # the usage figures are cached from here on, and kept up to date
        c.add_uploads(
            [
                Upload("1" * 32, "a", 5, SHA, 2, ("w1", "w2"), "c1", PENDING, version=1),
                Upload("2" * 32, "b", 5, SHA, 2, ("w1", "w2"), "c1", PENDING, version=1),
                Upload("3" * 32, "c", 7, "cd" * 32, 1, ("w1",), "c1", PENDING, version=1),
            ],
            now=1000,
        )
        return c

    events = [
        ("1" * 32, SHA, 5),
        ("2" * 32, SHA, 5),
        ("3" * 32, "cd" * 32, 7),
        ("3" * 32, "cd" * 32, 7),  # a redelivered confirmation
        ("9" * 32, "ef" * 32, 9),  # of no upload placed on it: not credited
        ("1" * 32, "00" * 32, 5),  # not the content placed under that upload: not credited
    ]
    one, batch = placed(tmp_path / "one"), placed(tmp_path / "batch")
    # When w1 reports them one at a time to one catalog and all at once to the other,
    # then w2 reports the first two
    done_one = [
        up for e in events if (up := one.replica_stored(e[0], "w1", e[1], e[2], 1001)) is not None
    ]
    done_batch = batch.replicas_stored("w1", events, 1001)
    for c in (one, batch):
        c.replicas_stored("w2", events[:2], 1002)

    # Then both hold the same: completed uploads, files, holders, usage and garbage
    assert [u.upload_id for u in done_one] == [u.upload_id for u in done_batch] == ["3" * 32]

    def state(c: Catalog) -> object:
        tables = ("replicas", "upload_replicas", "versions", "garbage", "uploads")
        return [sorted(c.db.execute(f"SELECT * FROM {t}").fetchall()) for t in tables] + [
            c.candidates()
        ]

    assert state(one) == state(batch)
    assert sorted(f.name for f in batch.files(now=1002)) == ["a", "b", "c"]
    w1 = next(x for x in batch.candidates() if x.name == "w1")
    assert w1.used_bytes == 5 + 7  # each content placed on it once, however many uploads
    held = {r[0] for r in batch.db.execute("SELECT sha256 FROM replicas WHERE worker='w1'")}
    assert held == {SHA, "cd" * 32}


def test_a_heartbeat_is_kept_without_a_sync_and_everything_after_it_is_synced(
    tmp_path: Path,
) -> None:
    # Given a catalog, when a worker's heartbeat is recorded (unsynced: it is not worth a
    # disk sync, and the next synced commit makes it durable)
    c = catalog(tmp_path)
    c.worker_seen("w4", free=100, used=0, files=0, now=1000)
    # Then the catalog is back to syncing every commit, so an upload recorded next is durable
    assert c.db.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    c.add_upload(upload(), now=1000)
    c.close()
    again = Catalog(tmp_path / "catalog.sqlite3", dead_after=10)
    again.open()
    assert "w4" in {w.name for w in again.workers(now=1000)}
    assert again.upload("1" * 32) is not None
