"""Commands only the manager may give, forged by a client or a worker, on the in-memory
broker with each service its own broker user (and its role's permissions, which the stub
broker enforces as RabbitMQ does), workers not told the manager's user: every forgery is
refused, by the broker or by the worker, and changes nothing.

A worker's chunks queue takes ``worker.record``, ``worker.discard`` and ``worker.forget``
as well as chunks, and its control queue takes ``worker.serve``, ``worker.delete`` and
``worker.copy``. Clients and workers may publish to the chunks queue by its ``chunks`` key
(they send chunks there); the manager's commands come by the ``orders`` key and to the
control queue, which only the manager may publish with. The worker takes a command only by
those keys (``worker.orders.ManagerOnly``): without that check, these tests see the
forger's records written, an upload's data discarded, a version forgotten; without the
broker's permissions, a blob streamed to the forger, deleted, or copied where the manager
never asked."""

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
from manager.service import check_worker_sender
from tests.stubcluster import FAST, StubCluster, file_chunks, place_blob, user_url, wait_for
from warren import messages as m
from warren.config import Settings
from warren.errors import BrokerRefused, DecodeError
from warren.testing import StubConnection
from warren.topology import (
    DEAD_LETTER_QUEUE,
    manager_only_keys,
    worker_chunks,
    worker_control,
    worker_orders,
)
from warren.transport import Delivery, Transport
from worker.blobs import BlobStore
from worker.incoming import Incoming
from worker.intake import Intake
from worker.orders import ManagerOnly
from worker.records import LOG


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
    logs = {w: worker.root / LOG for w, worker in c.workers.items()}
    return {w: path.read_bytes() if path.exists() else b"" for w, path in logs.items()}


def partial(c: StubCluster, worker: str, upload_id: str) -> list[Path]:
    return sorted(c.workers[worker].incoming.dir.glob(f"{upload_id}.*"))


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
    dead-lettered; no records.log changes, the partial data stays, Alice's second upload
    is finished with her bytes on both workers, and her first file restores byte for byte."""
    c = users
    kept = os.urandom(100_000)
    (tmp_path / "kept").write_bytes(kept)
    data = os.urandom(3 * FAST.chunk_size)
    sha = hashlib.sha256(data).hexdigest()
    with c.session(amqp_url=user_url("alice")) as s:
        holders = s.upload(tmp_path / "kept", "kept", 2).chain
        placed = place_blob(s, len(data), sha)
        assert placed.chunk_size == FAST.chunk_size
        for seq in (0, 1):
            send_chunk(s, placed, data, seq, sha)

        def both_have_two_chunks() -> bool:
            s.conn.process(0)
            have = [c.workers[w].incoming.have(placed.upload_id) for w in placed.chain]
            return all(len(seqs) == 2 for seqs, _ in have)

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
        # By the manager's key, the broker refuses her (and closes her channel).
        for worker, cmd in forged:
            with pytest.raises(BrokerRefused):
                refused = c.broker.connect(mallory.settings, "m2")
                refused.open()
                refused.publish(worker_orders(worker), cmd.encode(), type=cmd.TYPE)

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
        # Each refusal is counted, and status shows it.
        per_worker = collections.Counter(w for w, _cmd in forged)

        def counted() -> bool:
            shown = {w.name: w.refused for w in s.status().workers}
            return all(shown[w] == n for w, n in per_worker.items())

        wait_for(counted, what="the refusals shown by status")
        assert {w.name: w.refused for w in s.status().workers} == {
            w: per_worker.get(w, 0) for w in c.workers
        }

        # Alice's upload goes on where it was: the last chunk finishes it on both workers.
        send_chunk(s, placed, data, 2, sha)

        def stored() -> bool:
            s.conn.process(0)
            return all(c.workers[w].blobs.blob_path(sha).exists() for w in placed.chain)

        wait_for(stored, what="'half' finished on both workers")
        # (It is one blob of Alice's, sent as a repair copy travels: its bytes on both
        # workers are what she sent.)
        for w in placed.chain:
            blob = c.workers[w].blobs.blob_path(sha)
            assert blob.exists() and blob.read_bytes() == data, f"{w} has no copy of 'half'"
        s.download("kept", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == kept


def test_forged_serve_delete_and_copy_on_a_control_queue_are_refused(
    users: StubCluster, mallory: StubConnection, tmp_path: Path
) -> None:
    """Mallory asks a holder of Alice's file to stream it to her, to copy it to a worker
    that has none, and to delete it: the broker refuses each publish (only the manager may
    publish to a control queue), nothing reaches Mallory, the blob stays, no chunk goes to
    the other worker."""
    c = users
    data = os.urandom(150_000)
    (tmp_path / "f").write_bytes(data)
    with c.session(amqp_url=user_url("alice")) as s:
        result = s.upload(tmp_path / "f", "f", 2)
    # Each of its sealed chunks is a blob on two workers: its first one is asked for.
    chunk = file_chunks(c, result.sha256)[0]
    holders = [w for w in sorted(c.workers) if c.workers[w].blobs.blob_path(chunk.sha256).exists()]
    assert len(holders) == 2, holders
    holder = holders[0]
    [target] = sorted(set(c.workers) - set(holders))[:1]
    kept = c.workers[holder].blobs.blob_path(chunk.sha256).read_bytes()
    copy_id = uuid.uuid4().hex
    stolen: list[str] = []
    with c.session(amqp_url=user_url("mallory")) as ms:

        def take(d: Delivery) -> None:
            stolen.append(d.type or "")
            d.ack()

        ms.route("steal", take)
        forged: list[m.Message] = [
            m.ServeRequest(chunk.sha256, chunk.size, ms.reply_queue, "steal"),
            m.CopyRequest(chunk.sha256, chunk.size, target, copy_id),
            m.DeleteBlob(chunk.sha256),  # last: served and copied first, were they obeyed
        ]
        kinds = {cmd.TYPE for cmd in forged}
        for cmd in forged:
            with pytest.raises(BrokerRefused):
                conn = c.broker.connect(mallory.settings, "m2")
                conn.open()
                conn.publish(worker_control(holder), cmd.encode(), type=cmd.TYPE)
        blob = c.workers[holder].blobs.blob_path(chunk.sha256)

        def copied() -> bool:
            return any(
                p.queue == worker_chunks(target) and p.correlation_id == copy_id
                for p in c.broker.published
            )

        ms.idle(0.3)  # a restore chunk on its way would arrive now
    obeyed = [
        *([f"streamed the blob to mallory ({len(stolen)} messages)"] if stolen else []),
        *([] if blob.exists() else ["deleted its copy"]),
        *([f"copied the blob to {target}"] if copied() else []),
    ]
    assert obeyed == [], f"{holder} obeyed forged orders"
    assert not [p for p in c.broker.published if p.user_id == "mallory" and p.type in kinds]
    assert not c.workers[target].blobs.blob_path(chunk.sha256).exists()
    assert blob.read_bytes() == kept


def test_a_worker_cannot_give_another_the_managers_orders(
    users: StubCluster, tmp_path: Path
) -> None:
    """w1 tells w2 to forget a version and to discard an upload: by the manager's key the
    broker refuses it, by the chunks key (w1 may send chunks there) w2 dead-letters both
    and counts them, status shows the count, and w2 still takes the manager's records
    (workers not told WARREN_MANAGER_USER)."""
    c = users
    forget = m.ForgetVersions(("AQ" + "B" * 80,))
    discard = m.DiscardUpload(uuid.uuid4().hex)
    w1 = c.broker.connect(dataclasses.replace(FAST, amqp_url=user_url("w1")), "w1-forger")
    w1.open()
    for cmd in (forget, discard):
        w1.publish(worker_chunks("w2"), cmd.encode(), type=cmd.TYPE)
    with pytest.raises(BrokerRefused):
        w1.publish(worker_orders("w2"), forget.encode(), type=forget.TYPE)
    wait_for(lambda: c.broker.depth(DEAD_LETTER_QUEUE) == 2, what="the forgeries dead-lettered")
    assert dead_letters(c) == collections.Counter([forget.TYPE, discard.TYPE])
    with c.session() as s:
        wait_for(
            lambda: {w.name: w.refused for w in s.status().workers}["w2"] == 2,
            what="w2's refusals in status",
        )
        assert sum(w.refused for w in s.status().workers) == 2
    # The manager's orders still reach w2 (its records place every upload): one on w2.
    with c.session(amqp_url=user_url("alice")) as s:
        for _ in range(2 * len(c.workers)):  # placement spreads: until w2 holds one
            (tmp_path / "f").write_bytes(os.urandom(100_000))
            if "w2" in s.upload(tmp_path / "f", "f", 2).chain:
                break
        else:
            raise AssertionError("no upload was placed on w2")
        s.download("f", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == (tmp_path / "f").read_bytes()
    assert c.broker.depth(DEAD_LETTER_QUEUE) == 2


def test_each_sender_check_takes_the_sender_it_names_and_says_whom_it_refused(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The checks called directly, as ``make mutants`` aims at them: the expected sender
    (or key) passes, and so does a service sharing the checker's own login where it may;
    anyone else is refused, and the dead-letter's reason names who really sent it."""
    conn = cast(Transport, Login("w1"))
    # A worker's commands: only by the manager's keys (and user, where one is named).
    only = ManagerOnly(Settings(name="w1"))
    only.check(forged("worker.record", b"", "boss", "w1.orders"))
    only.check(forged("worker.serve", b"", "boss", "w1.control"))
    with pytest.raises(DecodeError) as refused:
        only.check(forged("worker.record", b"", "boss", "w1.chunks"))
    assert (
        str(refused.value) == "worker.record from broker user 'boss' is not the manager's: ignored"
    )
    # ... and the operator's log says who sent it, by which key and why, as an error
    [logged] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert logged == (
        "w1: refused worker.record, a command only the manager gives: it came from broker "
        "user 'boss', by routing key 'w1.chunks', which others may publish with (the "
        f"manager's keys: {', '.join(manager_only_keys('w1'))})"
    )
    named = ManagerOnly(Settings(name="w1", manager_user="boss"))
    named.check(forged("worker.record", b"", "boss", "w1.orders"))
    with pytest.raises(DecodeError):
        named.check(forged("worker.record", b"", "w2", "w1.orders"))
    assert "not from WARREN_MANAGER_USER ('boss')" in caplog.text
    assert {r.levelname for r in caplog.records if "refused" in r.getMessage()} == {"ERROR"}
    assert (only.refused, named.refused) == (1, 1)
    # A chunk: only from the sender the manager named for its upload, placed here.
    placed, unplaced = uuid.uuid4().hex, uuid.uuid4().hex
    chain = ("w1", "w2")
    blobs = BlobStore(tmp_path / "w1")
    with ThreadPoolExecutor(1) as pool:
        intake = Intake(
            Settings(name="w1"), tmp_path / "w1", Incoming(tmp_path / "w1", blobs), blobs, pool
        )
    intake.expected.add([(placed, "alice", chain)])
    intake._check_sender(conn, forged("chunk", b"", "alice"), placed, chain)
    intake._check_sender(conn, forged("chunk", b"", "w1"), placed, chain)
    with pytest.raises(DecodeError) as refused:
        intake._check_sender(conn, forged("chunk", b"", "mallory"), placed, chain)
    assert str(refused.value) == (
        f"chunk for upload {placed} placed for 'alice' came from broker user 'mallory': ignored"
    )
    with pytest.raises(DecodeError) as refused:
        intake._check_sender(conn, forged("chunk", b"", "alice"), unplaced, chain)
    assert str(refused.value) == (
        f"chunk for upload {unplaced}, which the manager did not place on w1, from broker user "
        "'alice': ignored"
    )
    with pytest.raises(DecodeError) as refused:
        intake._check_sender(conn, forged("chunk", b"", "alice"), placed, ("w1", "w3"))
    assert str(refused.value) == (
        f"chunk for upload {placed} placed on w1, w2 came along w1, w3, from broker user "
        "'alice': ignored"
    )
    with pytest.raises(DecodeError) as refused:
        intake._check_sender(conn, forged("chunk", b"", None), placed, chain)
    assert str(refused.value) == f"chunk for upload {placed} without a sender: ignored"
    # A chunk or pack for another worker of the chain: refused before anything else.
    intake._addressed_here("pack", ("w2", "w1"), 1)
    with pytest.raises(DecodeError) as refused:
        intake._addressed_here("chunk", ("w2", "w1"), 0)
    assert str(refused.value) == "chunk addressed to w2, not w1"
    # A worker event: only from the worker it names (or the manager's own shared login).
    beat = m.Heartbeat(worker="w2", free_bytes=1, used_bytes=0, files=0)
    check_worker_sender(forged(beat.TYPE, b"", "w2"), beat, "boss")
    check_worker_sender(forged(beat.TYPE, b"", "boss"), beat, "boss")
    with pytest.raises(DecodeError) as refused:
        check_worker_sender(forged(beat.TYPE, b"", "w3"), beat, "boss")
    assert str(refused.value) == (
        "worker.heartbeat claims to come from worker 'w2' but was sent by broker user 'w3': ignored"
    )
    order = m.DeleteBlob(sha256="c" * 64)
    with pytest.raises(DecodeError) as refused:
        check_worker_sender(forged(order.TYPE, b"", "w2"), order, "boss")
    assert str(refused.value) == f"{order.TYPE} names no worker"


def forged(type_: str, body: bytes, user_id: str | None, key: str | None = None) -> Delivery:
    return Delivery(
        body, 1, False, type_, None, None, None, "q", lambda *a: None, user_id, routing_key=key
    )


class Login:
    """The one thing the checks ask of a connection: whose login it is."""

    def __init__(self, user: str) -> None:
        self.user = user
