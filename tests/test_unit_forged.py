"""Commands only the manager may give, forged by a client, on the in-memory broker with
each service its own broker user: every one is dead-lettered and changes nothing.

A worker's chunks queue takes ``worker.record``, ``worker.discard`` and ``worker.forget``
as well as chunks, and its control queue takes ``worker.serve``, ``worker.delete`` and
``worker.copy``; any client may publish to both queues (it sends its chunks there). Only
the broker-validated ``user_id`` tells the manager's commands from a forger's
(``worker.intake.from_manager``): without that check, these tests see the forger's
records written, an upload's data discarded, a version forgotten, a blob streamed to the
forger, deleted, or copied where the manager never asked."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import cast

import pytest

from client.session import Session
from manager.service import from_worker
from tests.stubcluster import FAST, StubCluster, user_url, wait_for
from warren import messages as m
from warren.config import Settings
from warren.errors import DecodeError
from warren.testing import StubConnection
from warren.topology import DEAD_LETTER_QUEUE, worker_chunks, worker_control
from warren.transport import Delivery, Transport
from worker.intake import Intake, from_manager
from worker.records import LOG
from worker.store import ChunkStore


@pytest.fixture
def users(tmp_path: Path) -> Iterator[StubCluster]:
    c = StubCluster(tmp_path, FAST, users=True)
    try:
        yield c.start(4)
    finally:
        c.stop_all()


@pytest.fixture
def mallory(users: StubCluster) -> Iterator[StubConnection]:
    conn = users.broker.connect(dataclasses.replace(FAST, amqp_url=user_url("mallory")), "m")
    conn.open()
    try:
        yield conn
    finally:
        conn.close()


def dead_letters(c: StubCluster) -> collections.Counter[str]:
    return collections.Counter(msg.type for msg in c.broker.messages(DEAD_LETTER_QUEUE))


def records(c: StubCluster) -> dict[str, bytes]:
    """Every worker's records.log, as it is on disk."""
    logs = {w: worker.store.root / LOG for w, worker in c.workers.items()}
    return {w: path.read_bytes() if path.exists() else b"" for w, path in logs.items()}


def partial(c: StubCluster, worker: str, upload_id: str) -> list[Path]:
    return sorted(c.workers[worker].store.incoming.glob(f"{upload_id}.*"))


def send_chunk(s: Session, placed: m.UploadAccepted, data: bytes, seq: int, sha: str) -> None:
    """One chunk of an upload, as the client that asked for it sends it."""
    size = placed.chunk_size
    count = -(-len(data) // size)
    h = m.ChunkHeaders(placed.upload_id, seq, seq * size, len(data), count, sha, placed.chain, 0)
    s.conn.publish(
        worker_chunks(placed.chain[0]),
        data[seq * size : (seq + 1) * size],
        type=m.CHUNK_TYPE,
        headers=h.to_headers(),
        reply_to=s.reply_queue,
        correlation_id=placed.upload_id,
    )


def test_forged_records_discards_and_forgets_on_a_chunks_queue_are_refused(
    users: StubCluster, mallory: StubConnection, tmp_path: Path
) -> None:
    """Alice has a file stored and a second one half sent. Mallory tells the workers of
    both to keep a record of hers (and to take her chunks of an upload nobody placed), to
    discard Alice's half-sent upload and to forget her stored file. All six commands are
    dead-lettered; no records.log changes, the partial data stays, and Alice's second file
    is finished and restores byte for byte."""
    c = users
    kept = os.urandom(100_000)
    (tmp_path / "kept").write_bytes(kept)
    data = os.urandom(3 * FAST.chunk_size)
    sha = hashlib.sha256(data).hexdigest()
    with c.session(amqp_url=user_url("alice")) as s:
        holders = s.upload(tmp_path / "kept", "kept", 2).chain
        placed = s.request(m.UploadRequest("half", len(data), sha, 2, "alice"), m.UploadAccepted)
        assert placed.chunk_size == FAST.chunk_size
        for seq in (0, 1):
            send_chunk(s, placed, data, seq, sha)

        def both_have_two_chunks() -> bool:
            s.conn.process(0)
            return all(len(c.workers[w].store.have(placed.upload_id)[0]) == 2 for w in placed.chain)

        wait_for(both_have_two_chunks, what="two chunks of 'half' on both workers")
        before = records(c)
        halves = {w: partial(c, w, placed.upload_id) for w in placed.chain}
        # Records are sealed with the manager's key: Mallory can only make some up.
        planted = m.SealedRecord(hashlib.sha256(kept).hexdigest(), "AQ" + "A" * 100)
        record = m.RecordVersions((planted,), (m.Expect(uuid.uuid4().hex, "mallory"),))
        forget = m.ForgetVersions(("AQ" + "B" * 80,))
        discard = m.DiscardUpload(placed.upload_id)
        forged: list[tuple[str, m.Message]] = [(w, record) for w in holders] + [
            (w, forget) for w in holders
        ]
        forged += [(w, discard) for w in placed.chain]
        for worker, cmd in forged:
            mallory.publish(worker_chunks(worker), cmd.encode(), type=cmd.TYPE)

        def settled() -> bool:
            s.conn.process(0)
            changed = records(c) != before
            discarded = any(partial(c, w, placed.upload_id) != halves[w] for w in placed.chain)
            return changed or discarded or c.broker.depth(DEAD_LETTER_QUEUE) >= len(forged)

        wait_for(settled, what="the forged commands dead-lettered")
        assert records(c) == before, "a forged record or forget was written to records.log"
        for w in placed.chain:
            assert partial(c, w, placed.upload_id) == halves[w], f"{w} discarded 'half'"
        assert dead_letters(c) == collections.Counter(cmd.TYPE for _w, cmd in forged)

        # Alice's upload goes on where it was: the last chunk finishes it on both workers.
        send_chunk(s, placed, data, 2, sha)

        def recorded() -> bool:
            s.conn.process(0)
            return "half" in {f.name for f in s.files()}

        wait_for(recorded, what="'half' finished and recorded")
        s.download("half", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data
    for w in placed.chain:
        assert c.workers[w].store.blob_path(sha).exists(), f"{w} has no copy of 'half'"


def test_forged_serve_delete_and_copy_on_a_control_queue_are_refused(
    users: StubCluster, mallory: StubConnection, tmp_path: Path
) -> None:
    """Mallory asks a holder of Alice's file to stream it to her, to copy it to a worker
    that has none, and to delete it: each command is dead-lettered, nothing reaches
    Mallory, the blob stays, no chunk goes to the other worker."""
    c = users
    data = os.urandom(150_000)
    (tmp_path / "f").write_bytes(data)
    with c.session(amqp_url=user_url("alice")) as s:
        result = s.upload(tmp_path / "f", "f", 2)
    holder = result.chain[0]
    [target] = sorted(set(c.workers) - set(result.chain))[:1]
    copy_id = uuid.uuid4().hex
    stolen: list[str] = []
    with c.session(amqp_url=user_url("mallory")) as ms:

        def take(d: Delivery) -> None:
            stolen.append(d.type or "")
            d.ack()

        ms.route("steal", take)
        forged: list[m.Message] = [
            m.ServeRequest(result.sha256, result.size, ms.reply_queue, "steal"),
            m.CopyRequest(result.sha256, result.size, target, copy_id),
            m.DeleteBlob(result.sha256),  # last: served and copied first, were they obeyed
        ]
        for cmd in forged:
            mallory.publish(worker_control(holder), cmd.encode(), type=cmd.TYPE)
        blob = c.workers[holder].store.blob_path(result.sha256)

        def copied() -> bool:
            return any(
                p.queue == worker_chunks(target) and p.correlation_id == copy_id
                for p in c.broker.published
            )

        def settled() -> bool:
            ms.conn.process(0.05)
            effect = bool(stolen) or not blob.exists() or copied()
            return effect or c.broker.depth(DEAD_LETTER_QUEUE) >= len(forged)

        wait_for(settled, what="the forged commands dead-lettered")
        ms.idle(0.2)  # a restore chunk on its way would arrive now
    obeyed = [
        *([f"streamed the blob to mallory ({len(stolen)} messages)"] if stolen else []),
        *([] if blob.exists() else ["deleted its copy"]),
        *([f"copied the blob to {target}"] if copied() else []),
    ]
    assert obeyed == [], f"{holder} obeyed forged orders"
    assert dead_letters(c) == collections.Counter(cmd.TYPE for cmd in forged)
    assert not c.workers[target].store.blob_path(result.sha256).exists()


def forged(type_: str, body: bytes, user_id: str | None) -> Delivery:
    return Delivery(body, 1, False, type_, None, None, None, "q", lambda *a: None, user_id)


class Login:
    """The one thing the checks ask of a connection: whose login it is."""

    def __init__(self, user: str) -> None:
        self.user = user


def test_each_sender_check_takes_the_sender_it_names_and_says_whom_it_refused(
    tmp_path: Path,
) -> None:
    """The three checks called directly, as ``make mutants`` aims at them: the expected
    sender and a service sharing the checker's own login pass; anyone else is refused, and
    the dead-letter's reason names whom the check expected and who really sent it."""
    conn = cast(Transport, Login("w1"))
    # A worker's commands: only the manager's broker user (or, unset, the worker's own).
    settings = Settings(name="w1", manager_user="boss")
    from_manager(forged("worker.record", b"", "boss"), conn, settings)
    from_manager(forged("worker.record", b"", "w1"), conn, Settings(name="w1"))
    with pytest.raises(DecodeError) as refused:
        from_manager(forged("worker.record", b"", "w1"), conn, settings)
    assert str(refused.value) == (
        "worker.record may come only from the manager ('boss'), not from broker user 'w1': ignored"
    )
    # A chunk: only from the sender the manager named for its upload, placed here.
    placed, unplaced = uuid.uuid4().hex, uuid.uuid4().hex
    with ThreadPoolExecutor(1) as pool:
        intake = Intake(Settings(name="w1"), ChunkStore(tmp_path / "w1"), pool)
    intake.expected.add([(placed, "alice")])
    intake._check_sender(conn, forged("chunk", b"", "alice"), placed)
    intake._check_sender(conn, forged("chunk", b"", "w1"), placed)
    with pytest.raises(DecodeError) as refused:
        intake._check_sender(conn, forged("chunk", b"", "mallory"), placed)
    assert str(refused.value) == (
        f"chunk for upload {placed} placed for 'alice' came from broker user 'mallory': ignored"
    )
    with pytest.raises(DecodeError) as refused:
        intake._check_sender(conn, forged("chunk", b"", "alice"), unplaced)
    assert str(refused.value) == (
        f"chunk for upload {unplaced}, which the manager did not place on w1, from broker user "
        "'alice': ignored"
    )
    # A chunk for another worker of the chain: refused before anything else is looked at.
    h = m.ChunkHeaders(placed, 0, 0, 1, 1, "c" * 64, ("w2", "w1"), 0)
    misaddressed = forged(m.CHUNK_TYPE, b"x", "alice")
    misaddressed.headers = h.to_headers()
    with pytest.raises(DecodeError) as refused:
        intake._on_chunk(conn, misaddressed)
    assert str(refused.value) == "chunk addressed to w2, not w1"
    # A worker event: only from the worker it names (or the manager's own shared login).
    boss = cast(Transport, Login("boss"))
    beat = m.Heartbeat(worker="w2", free_bytes=1, used_bytes=0, files=0)
    assert from_worker(boss, forged(beat.TYPE, beat.encode(), "w2")) == beat
    assert from_worker(boss, forged(beat.TYPE, beat.encode(), "boss")) == beat
    with pytest.raises(DecodeError) as refused:
        from_worker(boss, forged(beat.TYPE, beat.encode(), "w3"))
    assert str(refused.value) == (
        "worker.heartbeat claims to come from worker 'w2' but was sent by broker user 'w3': ignored"
    )
    order = m.DeleteBlob(sha256="c" * 64)
    with pytest.raises(DecodeError) as refused:
        from_worker(boss, forged(order.TYPE, order.encode(), "w2"))
    assert str(refused.value) == f"{order.TYPE} is not a worker event"
