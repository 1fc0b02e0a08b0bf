"""The manager's side of snapshots, on the in-memory broker: what a snapshot commit
records and refuses, whose snapshots an owner sees, the space a forget gives back (and what
it must not take), the pin a ``snapshot.get`` gives a backup reusing a snapshot, and the
snapshots a catalog rebuilt from the workers' records has (and the forged ones it has not).

The client's side is not used: the chunks are stored as a backup stores them
(``upload_many(commit=False)``) and the requests sent as it sends them."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.outcomes import Progress, UploadResult
from client.session import Session
from manager.records import _SNAPSHOT, _SNAPSHOT_GONE, SnapshotGone, SnapshotRecord
from tests.stubcluster import FAST, StubCluster, holds_blob, short_pins, user_url, wait_for
from warren import messages as m
from warren.errors import NotFound, Unavailable, WarrenError
from warren.sealing import Sealer
from warren.topology import worker_control
from worker.records import append_records

ALICE, BOB = user_url("alice"), user_url("bob")
META = base64.b64encode(b"the paths, sealed with the owner's manifest key").decode()
GC = dataclasses.replace(FAST, gc_delay=0.5)


@pytest.fixture
def gc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StubCluster]:
    """A cluster whose garbage goes in half a second, and whose pins (a stored chunk not
    committed yet, a snapshot.get) last half a second."""
    short_pins(monkeypatch, 0.5)
    c = StubCluster(tmp_path, GC)
    try:
        yield c.start(3)
    finally:
        c.stop_all()


def store(s: Session, tmp_path: Path, files: dict[str, bytes]) -> dict[str, UploadResult]:
    """Each file's chunks stored as a backup stores them (no version), by name."""
    results: dict[str, UploadResult] = {}
    items = []
    for name, data in files.items():
        path = tmp_path / f"{uuid.uuid4().hex}-{name}"
        path.write_bytes(data)
        items.append((path, name))

    def done(name: str, result: UploadResult | WarrenError) -> None:
        assert isinstance(result, UploadResult), result
        results[name] = result

    s.upload_many(items, 2, lambda _n: Progress(), done, commit=False)
    assert set(results) == set(files)
    return results


def commit(
    s: Session,
    manifest: UploadResult,
    files: list[UploadResult],
    when: float = 1000.0,
    tags: tuple[str, ...] = (),
    extra: tuple[str, ...] = (),
    replicas: int = 2,
) -> str:
    """A snapshot of ``files`` whose manifest is ``manifest``; its id."""
    chunks = dict.fromkeys(
        [*(c.sha256 for c in manifest.chunks), *(c.sha256 for f in files for c in f.chunks)]
    )
    req = m.SnapshotCommit(
        time=when,
        host="desk",
        tags=tags,
        meta=META,
        manifest=manifest.chunks,
        chunks=(*chunks, *extra),
        replicas=replicas,
    )
    return s.request(req, m.SnapshotCommitted).id


def snapshots(s: Session) -> list[m.SnapshotEntry]:
    return list(s.request(m.SnapshotsRequest(), m.SnapshotsReply).snapshots)


def get(s: Session, sid: str, pin: bool = False) -> m.SnapshotEntry:
    return s.request(m.SnapshotGet(id=sid, pin=pin), m.SnapshotGot).snapshot


def forget(s: Session, *ids: str) -> tuple[str, ...]:
    return s.request(m.ForgetRequest(ids=ids), m.Forgotten).ids


def blobs(*results: UploadResult) -> set[str]:
    return {c.sha256 for r in results for c in r.chunks}


def anywhere(c: StubCluster, sha: str) -> bool:
    return any(holds_blob(c, w, sha) for w in c.workers)


def rows(c: StubCluster, table: str) -> int:
    assert c.manager is not None
    db = sqlite3.connect(c.manager.catalog.path)
    try:
        (n,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
    finally:
        db.close()
    return int(n)


def test_a_committed_snapshot_is_listed_oldest_first_and_got_with_its_manifest(
    stub: StubCluster, tmp_path: Path
) -> None:
    with stub.session(amqp_url=ALICE) as s:
        got = store(s, tmp_path, {"a": os.urandom(150_000), "b": b"b" * 10, "m1": b"M1" * 9})
        got |= store(s, tmp_path, {"m2": os.urandom(70_000)})
        later = commit(s, got["m2"], [got["a"]], when=2000.0, tags=("daily",))
        earlier = commit(s, got["m1"], [got["a"], got["b"]], when=1000.0)
        assert later != earlier
        assert snapshots(s) == [  # by the time each backup started, not by commit
            m.SnapshotEntry(earlier, 1000.0, "desk", (), META),
            m.SnapshotEntry(later, 2000.0, "desk", ("daily",), META),
        ]
        assert get(s, later) == m.SnapshotEntry(
            later, 2000.0, "desk", ("daily",), META, got["m2"].chunks
        )
        assert len(got["m2"].chunks) > 1  # the manifest's chunks in order, sizes and all
        with pytest.raises(NotFound, match=r"^you have no snapshot 0123456789abcdef\.$"):
            get(s, "0123456789abcdef")
    # Every blob each uses, each once.
    assert rows(stub, "snapshot_chunks") == len(blobs(got["a"], got["b"], got["m1"])) + len(
        blobs(got["a"], got["m2"])
    )


def test_a_commit_naming_a_chunk_not_mine_or_unknown_records_nothing(
    stub: StubCluster, tmp_path: Path
) -> None:
    with stub.session(amqp_url=BOB) as bob:
        bobs = store(bob, tmp_path, {"secret": os.urandom(90_000)})
    with stub.session(amqp_url=ALICE) as s:
        mine = store(s, tmp_path, {"a": os.urandom(90_000), "m": b"manifest"})
        stranger = tuple(c.sha256 for c in bobs["secret"].chunks)
        for extra in (stranger, ("ab" * 32,)):
            with pytest.raises(Unavailable) as refused:
                commit(s, mine["m"], [mine["a"]], extra=extra)
            assert str(refused.value) == (
                f"{len(extra)} of the chunks this snapshot names are not stored (any more): "
                "run the backup again."
            )
        # Bob's chunk as the manifest is refused the same way.
        with pytest.raises(Unavailable, match="1 of the chunks"):
            commit(s, dataclasses.replace(mine["m"], chunks=bobs["secret"].chunks[:1]), [])
        assert snapshots(s) == []
    assert rows(stub, "snapshots") == rows(stub, "snapshot_chunks") == 0


def test_another_owner_cannot_list_get_or_forget_my_snapshots(
    stub: StubCluster, tmp_path: Path
) -> None:
    with stub.session(amqp_url=ALICE) as s:
        got = store(s, tmp_path, {"a": os.urandom(50_000), "m": b"manifest"})
        sid = commit(s, got["m"], [got["a"]])
    with stub.session(amqp_url=BOB) as bob:
        assert snapshots(bob) == []
        with pytest.raises(NotFound):
            get(bob, sid)
        with pytest.raises(NotFound, match=f"^you have no snapshot {sid}: nothing was forgotten"):
            forget(bob, sid)
    with stub.session(amqp_url=ALICE) as s:
        assert [e.id for e in snapshots(s)] == [sid]
        # An unknown id among known ones: nothing is forgotten.
        with pytest.raises(NotFound):
            forget(s, sid, "0123456789abcdef")
        assert [e.id for e in snapshots(s)] == [sid]


def test_forget_gives_space_back_but_keeps_what_others_use(gc: StubCluster, tmp_path: Path) -> None:
    kept_bytes = os.urandom(80_000)
    with gc.session(amqp_url=ALICE) as s:
        got = store(
            s,
            tmp_path,
            {
                "shared": os.urandom(150_000),
                "only1": os.urandom(150_000),
                "kept": kept_bytes,
                "m1": os.urandom(1000),
                "m2": os.urandom(1000),
            },
        )
        one = commit(s, got["m1"], [got["shared"], got["only1"], got["kept"]])
        two = commit(s, got["m2"], [got["shared"]], when=2000.0)
        (tmp_path / "kept").write_bytes(kept_bytes)
        s.upload(tmp_path / "kept", "kept.bin", 2)  # a version of the same content
        time.sleep(1.5)  # every pin has run out: only the snapshots keep these
        assert all(anywhere(gc, sha) for sha in blobs(*got.values()))

        assert forget(s, one) == (one,)
        assert [e.id for e in snapshots(s)] == [two]
        wait_for(
            lambda: not any(anywhere(gc, sha) for sha in blobs(got["only1"], got["m1"])),
            what="the forgotten snapshot's own blobs to leave every worker",
        )
        time.sleep(1.0)  # twice the delay again: nothing else goes
        assert all(anywhere(gc, sha) for sha in blobs(got["shared"], got["m2"], got["kept"]))

        forget(s, two)
        wait_for(
            lambda: not any(anywhere(gc, sha) for sha in blobs(got["shared"], got["m2"])),
            what="the last snapshot's blobs to leave",
        )
        assert all(anywhere(gc, sha) for sha in blobs(got["kept"]))  # the version's
        assert rows(gc, "snapshots") == rows(gc, "snapshot_chunks") == 0


def test_get_pins_a_snapshots_chunks_so_a_backup_reusing_them_commits_after_a_forget(
    gc: StubCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    short_pins(monkeypatch, 3.0, gc)
    with gc.session(amqp_url=ALICE) as s:
        got = store(s, tmp_path, {"a": os.urandom(100_000), "m": os.urandom(500)})
        parent = commit(s, got["m"], [got["a"]])
        time.sleep(3.3)  # the commit's pins have run out
        assert get(s, parent, pin=True).manifest == got["m"].chunks  # a backup's parent
        forget(s, parent)  # another client forgets it meanwhile
        time.sleep(1.5)  # three times the gc delay
        child = commit(s, got["m"], [got["a"]], when=2000.0)  # reusing every chunk
        assert [e.id for e in snapshots(s)] == [child]
        assert all(anywhere(gc, sha) for sha in blobs(got["a"], got["m"]))


def test_a_snapshot_wanting_more_copies_gets_them(gc: StubCluster, tmp_path: Path) -> None:
    with gc.session(amqp_url=ALICE) as s:
        got = store(s, tmp_path, {"a": os.urandom(100_000), "m": b"m" * 99})  # 2 copies each
        time.sleep(1.5)  # the manager has looked at the blobs just stored: enough copies
        commit(s, got["m"], [got["a"]], replicas=3)
    everywhere = blobs(got["a"], got["m"])
    wait_for(
        lambda: all(holds_blob(gc, w, sha) for w in gc.workers for sha in everywhere),
        what="a third copy of every blob",
    )


def test_a_blob_marked_garbage_then_used_by_a_new_snapshot_is_unmarked(
    gc: StubCluster, tmp_path: Path
) -> None:
    """Forgotten (its pins run out: marked garbage), then used again by a snapshot at once:
    the mark goes at the next look, and no blob leaves."""
    with gc.session(amqp_url=ALICE) as s:
        got = store(s, tmp_path, {"a": os.urandom(100_000), "m": b"m" * 99})
        old = commit(s, got["m"], [got["a"]])
        time.sleep(1.0)  # the commit's pins have run out
        forget(s, old)
        assert rows(gc, "garbage") == len(blobs(got["a"], got["m"]))
        commit(s, got["m"], [got["a"]], when=2000.0)
    wait_for(lambda: rows(gc, "garbage") == 0, timeout=5, what="the marks to go")
    assert all(anywhere(gc, sha) for sha in blobs(got["a"], got["m"]))


def rebuild(c: StubCluster) -> None:
    c.kill("manager")
    shutil.rmtree(c.base / "manager")
    c.start_manager()


def answered(s: Session) -> list[m.SnapshotEntry] | None:
    """The snapshots, or None while the rebuilt manager is still catching up."""
    try:
        return snapshots(s)
    except Unavailable:
        return None


def test_a_rebuilt_catalog_has_the_snapshots_and_not_the_forgotten_ones(
    stub: StubCluster, tmp_path: Path
) -> None:
    with stub.session(amqp_url=ALICE) as s:
        got = store(s, tmp_path, {"a": os.urandom(100_000), "m1": b"1" * 99, "m2": b"2" * 99})
        gone = commit(s, got["m1"], [got["a"]])
        kept = commit(s, got["m2"], [got["a"]], when=2000.0, tags=("t",))
        forget(s, gone)
        before = snapshots(s)
        entry = get(s, kept)
    assert [e.id for e in before] == [kept]

    rebuild(stub)
    with stub.session(amqp_url=ALICE) as s:
        wait_for(lambda: answered(s) == before, what="the rebuilt snapshots")
        assert get(s, kept) == entry
        # Its blobs are alice's chunks again: a new snapshot may use them (once every
        # worker's inventory says where they are: the records may come first).

        def committed() -> bool:
            try:
                commit(s, got["m2"], [got["a"]], when=3000.0)
            except Unavailable:
                return False
            return True

        wait_for(committed, what="a new snapshot of the rebuilt blobs")
    assert rows(stub, "snapshot_chunks") == 2 * len(blobs(got["a"], got["m2"]))


def test_snapshot_requests_wait_while_the_manager_catches_up(
    stub: StubCluster, tmp_path: Path
) -> None:
    """A rebuilt manager one live worker has not reported to yet turns every snapshot
    request away (a listing or a forget would miss the snapshots only the workers know)."""
    with stub.session(amqp_url=ALICE) as s:
        got = store(s, tmp_path, {"a": os.urandom(10_000), "m": b"m" * 99})
        sid = commit(s, got["m"], [got["a"]])
    stub.broker.intercept = lambda msg: (
        [] if msg.type == m.Inventory.TYPE and msg.sender.startswith("warren worker w1") else [msg]
    )
    before = len(stub.broker.published)
    rebuild(stub)
    # Until a worker's heartbeat, the rebuilt manager knows of no live worker to wait for:
    # wait until it has asked w1 for its records (it knows w1 alive, then).
    wait_for(
        lambda: any(
            msg.type == m.ReportRequest.TYPE and msg.queue == worker_control("w1")
            for msg in stub.broker.published[before:]
        ),
        what="the rebuilt manager to ask w1",
    )
    with stub.session(amqp_url=ALICE, request_timeout=3.0) as s:
        for ask in (
            lambda: snapshots(s),
            lambda: get(s, sid),
            lambda: commit(s, got["m"], [got["a"]]),
            lambda: forget(s, sid),
        ):
            with pytest.raises(Unavailable, match="catching up"):
                ask()


def test_a_snapshot_record_a_worker_forged_is_not_taken(stub: StubCluster, tmp_path: Path) -> None:
    """Every worker writes records of its own into its log: a snapshot of alice's chunks,
    and the forgetting of her real one, sealed with a key that is not the manager's, and as
    plain JSON (what a manager that did not seal would take). A rebuilt catalog takes none."""
    with stub.session(amqp_url=ALICE) as s:
        got = store(s, tmp_path, {"a": os.urandom(100_000), "m": b"m" * 99})
        real = commit(s, got["m"], [got["a"]])
        before = snapshots(s)
    shas = tuple(sorted(blobs(got["a"], got["m"])))
    planted = SnapshotRecord(
        "alice", "feedfacefeedface", 5.0, "w1", (), META, got["m"].chunks, shas,
        tuple(1 for _ in shas), 2, 5.0,
    )  # fmt: skip
    dropped = SnapshotGone("alice", real, 9e9)
    forger = Sealer(os.urandom(32))
    lines = [
        {"forget": base64.b64encode(forger.seal(_json(r), context)).decode()}
        for r, context in ((planted, _SNAPSHOT), (dropped, _SNAPSHOT_GONE))
    ] + [{"forget": base64.b64encode(_json(r)).decode()} for r in (planted, dropped)]
    for worker in stub.workers.values():
        append_records(worker.root, lines)

    rebuild(stub)
    with stub.session(amqp_url=ALICE) as s:
        wait_for(lambda: answered(s) == before, what="alice's real snapshot only")
        time.sleep(0.5)  # every inventory in: still only hers
        assert snapshots(s) == before


def _json(r: SnapshotRecord | SnapshotGone) -> bytes:
    return json.dumps(dataclasses.asdict(r), separators=(",", ":")).encode()
