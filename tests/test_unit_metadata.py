"""The metadata as safe as the data, on the in-memory broker: a catalog rebuilt from the
workers' records, and a standby manager that takes over with nothing missing."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import pytest

from client.outcomes import Progress
from client.session import Session
from tests.stubcluster import FAST, StubCluster, file_chunks, place_blob, user_url, wait_for
from warren import messages as m
from warren.errors import BrokerRefused, NotFound, Refused, Unavailable
from warren.topology import DEAD_LETTER_QUEUE, MANAGER_EVENTS, worker_chunks, worker_control
from worker import serve
from worker.blobs import BlobStore, NoCopy

ALICE = "amqp://alice:secret@localhost:5672/%2F"


def listing(s: Session) -> dict[str, list[tuple[int, str, int]]]:
    """Every file with its versions, as a user sees them."""
    return {f.name: [(v.version, v.sha256, v.mode) for v in s.versions(f.name)] for f in s.files()}


def fill(s: Session, tmp_path: Path) -> None:
    """Three versions of a, b deleted, c's first version deleted, a small-file pack."""
    src = tmp_path / "src"
    for i in range(3):
        src.write_bytes(os.urandom(100_000 + i))
        s.upload(src, "docs/a.bin", 2)
    src.write_bytes(b"bee" * 1000)
    s.upload(src, "b.txt", 2)
    s.delete("b.txt")
    for data in (b"c1" * 500, b"c2" * 500):
        src.write_bytes(data)
        s.upload(src, "c.txt", 2)
    s.delete("c.txt", version=1)
    items = []
    for i in range(5):
        p = tmp_path / f"small{i}"
        p.write_bytes(f"small {i}".encode())
        os.chmod(p, 0o640)
        items.append((p, f"smalls/{i}"))
    s.upload_many(items, 2, lambda _n: Progress(), lambda *_: None)


def test_a_manager_started_on_an_empty_data_dir_rebuilds_the_catalog(
    stub: StubCluster, tmp_path: Path
) -> None:
    with stub.session(amqp_url=ALICE) as s:
        fill(s, tmp_path)
        before = listing(s)
    assert "b.txt" not in before and [v for v, _, _ in before["c.txt"]] == [2]

    stub.kill("manager")
    shutil.rmtree(tmp_path / "manager")
    stub.start_manager()

    with stub.session(amqp_url=ALICE) as s:
        wait_for(lambda: listing(s) == before, what="the rebuilt listing")
        s.download("docs/a.bin", tmp_path / "v1", version=1)
        # New versions go on from where they were, not from 1
        (tmp_path / "src").write_bytes(b"fourth")
        wait_for(lambda: _uploads(s, tmp_path), what="uploads to be taken again")
        assert [v.version for v in s.versions("docs/a.bin")] == [1, 2, 3, 4]


def _uploads(s: Session, tmp_path: Path) -> bool:
    """True once the upload is taken; False while the manager says to try again (it is
    catching up until every worker has reported). Any other failure fails the test."""
    try:
        s.upload(tmp_path / "src", "docs/a.bin", 2)
    except Unavailable as exc:
        assert str(exc).endswith("try again in a moment."), exc
        return False
    return True


def test_a_standby_manager_takes_over_with_nothing_missing(
    stub: StubCluster, tmp_path: Path
) -> None:
    standby = stub.start_manager("standby")
    with stub.session(amqp_url=ALICE) as s:
        fill(s, tmp_path)
        before = listing(s)
    assert standby._standing_by and standby._conn is None  # it never took a request

    stub.kill("manager")  # the active one
    with stub.session(amqp_url=ALICE) as s:
        wait_for(lambda: listing(s) == before, what="the standby's listing")
        wait_for(lambda: _uploads(s, tmp_path), what="the standby to take uploads")
        assert [v.version for v in s.versions("docs/a.bin")] == [1, 2, 3, 4]

    back = stub.start_manager()  # the old one comes back: it stands by
    wait_for(lambda: back._standing_by, what="the old manager to stand by")
    with stub.session(amqp_url=ALICE) as s:
        s.delete("docs/a.bin", version=4)
        assert [v.version for v in s.versions("docs/a.bin")] == [1, 2, 3]
    assert back._standing_by and back._conn is None  # it never took a request


def test_never_two_active_managers(tmp_path: Path) -> None:
    c = StubCluster(tmp_path, dataclasses.replace(FAST))
    try:
        c.start_manager("m1")
        c.start_manager("m2")
        c.start_manager("m3")
        wait_for(
            lambda: (
                sum(not m._standing_by and m._conn is not None for m in c.managers.values()) == 1
            ),
            what="one active manager",
        )
        active = [k for k, m in c.managers.items() if not m._standing_by][0]
        c.kill(active)
        wait_for(
            lambda: (
                sum(
                    not m._standing_by and m._conn is not None and m._conn.is_open
                    for k, m in c.managers.items()
                    if k != active
                )
                == 1
            ),
            what="exactly one of the others to take over",
        )
    finally:
        c.stop_all()


def flip_a_byte(c: StubCluster, worker: str, sha256: str) -> None:
    path = c.workers[worker].blobs.find(sha256)
    assert path is not None
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def good_copies(c: StubCluster, sha256: str) -> set[str]:
    """Workers whose copy of the blob is whole, read from their disks."""
    return {n for n, w in c.workers.items() if _good(w.blobs, sha256)}


def _good(blobs: BlobStore, sha256: str) -> bool:
    try:
        return blobs.check(sha256) is None
    except NoCopy:
        return False


def first_chunk(c: StubCluster, sha256: str) -> str:
    """The blob of a file's first sealed chunk: the one its ``chain`` names the workers of."""
    chunks = file_chunks(c, sha256)
    assert len(chunks) > 1, "a file of several chunks, so one chunk's damage is told apart"
    return chunks[0].sha256


def test_scrub_finds_a_flipped_byte_and_a_good_second_copy_is_made(tmp_path: Path) -> None:
    c = StubCluster(tmp_path, dataclasses.replace(FAST, scrub_interval=0.6))
    try:
        c.start(4)
        data = os.urandom(300_000)
        (tmp_path / "f").write_bytes(data)
        with c.session() as s:
            result = s.upload(tmp_path / "f", "f", 2)
            sha = first_chunk(c, result.sha256)
            rotted, kept = result.chain
            flip_a_byte(c, rotted, sha)

            wait_for(lambda: c.workers[rotted].blobs.damaged == 1, what="scrub to find it")
            wait_for(lambda: len(good_copies(c, sha)) == 2, what="a second good copy")
            status = {w.name: w for w in s.status().workers}
        assert status[rotted].damaged == 1 and status[rotted].scrubbed_at > 0
        assert list((tmp_path / "workers" / rotted / "quarantine").iterdir())

        c.kill(kept)  # the copy that never rotted goes too: the repaired one serves
        with c.session() as s:
            s.download("f", tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == data
    finally:
        c.stop_all()


def test_verify_reports_a_copy_damaged_between_scrubs(stub: StubCluster, tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(os.urandom(200_000))
    with stub.session() as s:
        result = s.upload(tmp_path / "f", "f", 2)
        clean, _ = s.verify(("f",))
        chunk = first_chunk(stub, result.sha256)
        flip_a_byte(stub, result.chain[1], chunk)
        checks, missing = s.verify(("f",))
        with pytest.raises(NotFound):
            s.verify(("no-such-file",))
    # One check per copy of each sealed chunk: all good, then all but the damaged one.
    assert len(clean) == 2 * len(set(file_chunks(stub, result.sha256)))
    assert [c.ok for c in clean] == [True] * len(clean)
    assert len(checks) == len(clean)
    [bad] = [c for c in checks if not c.ok]
    assert bad.worker == result.chain[1] and "SHA-256" in bad.reason and missing == []
    wait_for(lambda: len(good_copies(stub, chunk)) == 2, what="the repair")


def test_verify_says_which_worker_has_no_copy_and_quarantines_nothing(
    stub: StubCluster, tmp_path: Path
) -> None:
    # Given a file on two workers, and the second's copy of its first chunk gone from disk
    (tmp_path / "f").write_bytes(os.urandom(50_000))
    with stub.session() as s:
        result = s.upload(tmp_path / "f", "f", 2)
        gone = stub.workers[result.chain[1]]
        path = gone.blobs.find(first_chunk(stub, result.sha256))
        assert path is not None
        path.unlink()
        # When the file is verified
        checks, _ = s.verify(("f",))
    # Then that worker says it has no copy (not that a copy is damaged), every other copy
    # is good, and nothing was quarantined
    assert [(c.worker, c.ok, c.reason) for c in checks if not c.ok] == [
        (result.chain[1], False, "this worker has no copy")
    ]
    assert {c.reason for c in checks if c.ok} == {""} and len(checks) > 2
    assert gone.blobs.damaged == 0 and not (gone.root / "quarantine").exists()


def test_forged_worker_messages_change_nothing(tmp_path: Path) -> None:
    """Each service as its own broker user. Another worker replays w1's heartbeats after
    w1 is killed (the manager dead-letters them), and a client tells w2 to delete a blob
    (RabbitMQ refuses: only the manager may publish to a control queue): w1 still goes dead
    and its file is repaired, and w2 keeps the blob."""
    c = StubCluster(tmp_path, FAST, users=True)
    try:
        c.start(4)
        data = os.urandom(150_000)
        (tmp_path / "f").write_bytes(data)
        with c.session(amqp_url=user_url("mallory")) as s:
            result = s.upload(tmp_path / "f", "f", 2)
        victim, other = result.chain
        mallory = c.broker.connect(dataclasses.replace(FAST, amqp_url=user_url("mallory")), "m")
        mallory.open()
        c.kill(victim)
        beat = m.Heartbeat(worker=victim, free_bytes=10**12, used_bytes=0, files=1)
        chunk = first_chunk(c, result.sha256)  # on victim and other
        order = m.DeleteBlob(sha256=chunk)
        with pytest.raises(BrokerRefused):
            mallory.publish(worker_control(other), order.encode(), type=order.TYPE)
        liar = sorted(set(c.workers) - {victim, other})[0]
        replay = c.broker.connect(dataclasses.replace(FAST, amqp_url=user_url(liar)), "r")
        replay.open()
        with c.session(amqp_url=user_url("mallory")) as s:

            def repaired() -> bool:
                replay.publish(MANAGER_EVENTS, beat.encode(), type=beat.TYPE, persistent=False)
                alive = {w.name for w in s.status().workers if w.alive}
                [f] = s.files()
                return victim not in alive and len(f.replicas) == 2

            wait_for(repaired, what=f"{victim} dead and its file repaired despite the replay")
        assert _good(c.workers[other].blobs, chunk)
        assert c.broker.depth(DEAD_LETTER_QUEUE) >= 1  # the replayed heartbeats
        replay.close()
    finally:
        c.stop_all()


def test_chunks_from_anyone_but_the_sender_the_manager_named_are_refused(tmp_path: Path) -> None:
    """Each service as its own broker user. Alice's upload is placed; Mallory, who has
    learnt its id, sends a chunk of it to the primary, and one to the backup posing as the
    primary, and a chunk of an upload nobody placed. Each is dead-lettered and nothing of
    them is written; Alice's own chunks are taken and her file restores byte for byte."""
    c = StubCluster(tmp_path, FAST, users=True)
    try:
        c.start(4)
        data = os.urandom(150_000)
        (tmp_path / "f").write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        with c.session(amqp_url=user_url("alice")) as s:
            placed = place_blob(s, len(data), sha)
        primary, backup = placed.chain
        mallory = c.broker.connect(dataclasses.replace(FAST, amqp_url=user_url("mallory")), "m")
        mallory.open()
        forged = [
            (placed.upload_id, primary, 0),
            (placed.upload_id, backup, 1),
            (uuid.uuid4().hex, primary, 0),
        ]
        for upload_id, worker, hop in forged:
            h = m.ChunkHeaders(upload_id, 0, 0, len(data), 3, sha, placed.chain, hop)
            body = b"x" * placed.chunk_size
            mallory.publish(worker_chunks(worker), body, type=m.CHUNK_TYPE, headers=h.to_headers())
        wait_for(lambda: c.broker.depth(DEAD_LETTER_QUEUE) == 3, what="the forged chunks refused")
        for upload_id, worker, _hop in forged:
            incoming = c.workers[worker].incoming.dir
            assert not list(incoming.glob(f"{upload_id}.*")), f"{worker} wrote a forged chunk"
        with c.session(amqp_url=user_url("alice")) as s:
            s.upload(tmp_path / "f", "f", 2)
            s.download("f", tmp_path / "back")
        assert (tmp_path / "back").read_bytes() == data
        mallory.close()
    finally:
        c.stop_all()


def test_a_worker_cannot_plant_alter_or_delete_what_a_rebuilt_catalog_shows(
    stub: StubCluster, tmp_path: Path
) -> None:
    """Every worker rewrites what it keeps beside its blobs: it plants a version (in the
    old plain form, and as base64 JSON passed off as sealed), makes up sealed records and
    deletions, flips a byte of a real record, moves one onto other content and passes one
    off as a deletion. A manager rebuilding on an empty data dir shows exactly what the
    manager recorded: no planted name or version, nothing deleted. And no worker's records
    name a file in the clear."""
    with stub.session(amqp_url=ALICE) as s:
        fill(s, tmp_path)
        before = listing(s)
    for name, worker in stub.workers.items():
        log = worker.root / "records.log"
        assert b"docs/a.bin" not in log.read_bytes(), f"{name} can read a file's name"
        _tamper(log, [b.sha256 for b in worker.blobs.inventory()])

    stub.kill("manager")
    shutil.rmtree(tmp_path / "manager")
    stub.start_manager()
    (tmp_path / "probe").write_bytes(b"probe")
    with stub.session(amqp_url=ALICE) as s:

        def caught_up() -> bool:  # uploads are taken once every worker has reported
            try:
                s.upload(tmp_path / "probe", "probe", 2)
            except (Unavailable, Refused):  # workers not heard from yet, or not reported
                return False
            return True

        wait_for(caught_up, what="every worker's report")
        rebuilt = listing(s)
    del rebuilt["probe"]
    assert rebuilt == before


def _tamper(log: Path, held: list[str]) -> None:
    """What a worker could write into its records.log, knowing the format but not the key."""
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    real = next(r for r in lines if "sealed" in r)
    other = next(sha for sha in held if sha != real["sha256"])
    raw = base64.b64decode(real["sealed"])
    flipped = raw[:20] + bytes([raw[20] ^ 1]) + raw[21:]
    planted = {
        "owner": "alice",
        "name": "docs/a.bin",
        "version": 7,
        "sha256": other,
        "size": 5,
        "created": 1.0,
        "wanted": 2,
        "mode": 0o4755,
        "mtime": 0.0,
        "upload_id": "0" * 32,
    }
    deletion = {"owner": "alice", "name": "docs/a.bin", "version": 1}

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    forged: list[dict[str, object]] = [
        planted,
        {**deletion, "forget": True},
        {"sha256": other, "sealed": b64(json.dumps(planted).encode())},
        {"sha256": other, "sealed": b64(bytes([1]) + os.urandom(80))},
        {"sha256": real["sha256"], "sealed": b64(flipped)},
        {"sha256": other, "sealed": real["sealed"]},
        {"forget": b64(json.dumps(deletion).encode())},
        {"forget": b64(bytes([1]) + os.urandom(60))},
        {"forget": real["sealed"]},
    ]
    with open(log, "a") as f:
        f.writelines(json.dumps(line) + "\n" for line in forged)


def test_an_inventory_in_pages_rebuilds_the_same_catalog(
    stub: StubCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pages of 3 blobs and 2 records (a big worker's, small): a manager rebuilding on an
    empty data dir lists what it listed before, and each worker holds what it holds."""
    monkeypatch.setattr(serve, "PAGE_BLOBS", 3)
    monkeypatch.setattr(serve, "PAGE_RECORDS", 2)
    with stub.session(amqp_url=ALICE) as s:
        fill(s, tmp_path)
        before = listing(s)
        holders = {f.name: f.replicas for f in s.files()}
    stub.kill("manager")
    shutil.rmtree(tmp_path / "manager")
    stub.broker.published.clear()
    stub.start_manager()
    with stub.session(amqp_url=ALICE) as s:
        wait_for(lambda: listing(s) == before, what="the rebuilt listing")
        wait_for(lambda: {f.name: f.replicas for f in s.files()} == holders, what="holders")
    pages = [
        m.Inventory.decode(p.body) for p in stub.broker.published if p.type == m.Inventory.TYPE
    ]
    assert any(not p.last for p in pages) and all(p.page < 10 for p in pages)
