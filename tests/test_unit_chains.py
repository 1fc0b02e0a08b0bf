"""A worker holds the placement it was told, on the in-memory broker with each service its
own broker user: a chunk must travel the chain the manager placed its upload on (no worker
twice, none added, none left out) and may inflate to at most a chunk's bytes.

Without these checks a client could loop one chunk through the workers by its ``chain``
header, each storing and forwarding it again, or send a few KB of zstd that a worker
inflates to the file size the client declares (200 MiB here)."""

from __future__ import annotations

import collections
import hashlib
import tracemalloc

import pytest
import zstandard

from client.session import Session
from tests.stubcluster import StubCluster, place_blob, user_url, wait_for
from warren import messages as m
from warren.codec import MAX_CHAIN
from warren.errors import DecodeError
from warren.topology import DEAD_LETTER_QUEUE, worker_chunks

BOMB = 200 * 1024 * 1024  # bytes of zeros, a few KB as zstd


def place(s: Session, data: bytes, replicas: int = 2) -> m.UploadAccepted:
    return place_blob(s, len(data), hashlib.sha256(data).hexdigest(), replicas)


def send(
    s: Session,
    placed: m.UploadAccepted,
    body: bytes,
    chain: tuple[str, ...],
    total: int,
    sha: str,
    encoding: str = m.RAW,
) -> None:
    """One chunk (the whole file) of a placed upload, with the headers given."""
    h = m.ChunkHeaders(placed.upload_id, 0, 0, total, 1, sha, chain, 0, encoding)
    s.conn.publish(
        worker_chunks(chain[0]),
        body,
        type=m.CHUNK_TYPE,
        headers=h.to_headers(),
        reply_to=s.reply_queue,
        correlation_id=placed.upload_id,
    )


def refused(c: StubCluster, s: Session, upload_id: str) -> None:
    """Until the chunk is dead-lettered; then nothing of the upload was forwarded by a
    worker, and no worker wrote any of it."""

    def dead() -> bool:
        s.conn.process(0)
        return c.broker.depth(DEAD_LETTER_QUEUE) > 0

    wait_for(dead, what="the chunk dead-lettered")
    s.idle(0.2)  # a forward under way would be published now
    assert collections.Counter(msg.type for msg in c.broker.messages(DEAD_LETTER_QUEUE)) == {
        m.CHUNK_TYPE: 1
    }
    chunks = [
        p for p in c.broker.published if p.type == m.CHUNK_TYPE and p.correlation_id == upload_id
    ]
    assert [p.user_id for p in chunks] == ["alice"], "a worker forwarded the chunk"
    for name, worker in c.workers.items():
        assert not list(worker.incoming.dir.glob(f"{upload_id}.*")), f"{name} wrote it"


@pytest.mark.parametrize(
    "chain",
    [
        ("w1", "w2", "w1"),
        tuple(f"w{i % 4 + 1}" for i in range(200)),
        tuple(f"x{i}" for i in range(MAX_CHAIN + 1)),
    ],
    ids=["repeats", "loops-200", "too-long"],
)
def test_a_chain_that_names_a_worker_twice_or_too_many_is_refused(chain: tuple[str, ...]) -> None:
    uid, sha = "a" * 32, "b" * 64
    h = m.ChunkHeaders(uid, 0, 0, 10, 1, sha, chain, 0)
    with pytest.raises(DecodeError, match="chain"):
        m.ChunkHeaders.from_headers(h.to_headers(), 10)
    p = m.PackHeaders((m.PackEntry(uid, sha, 10),), chain, 0)
    with pytest.raises(DecodeError, match="chain"):
        m.PackHeaders.from_headers(p.to_headers(), 10)


def test_a_chunk_looped_through_the_chain_is_dead_lettered_and_not_forwarded(
    users: StubCluster,
) -> None:
    data = b"looped" * 100
    with users.session(amqp_url=user_url("alice")) as s:
        placed = place(s, data)
        first, second = placed.chain
        loop = (first, second) * 100
        send(s, placed, data, loop, len(data), hashlib.sha256(data).hexdigest())
        refused(users, s, placed.upload_id)


@pytest.mark.parametrize("how", ["another", "fewer", "more"])
def test_a_chunk_along_another_chain_than_the_placed_one_is_refused(
    users: StubCluster, how: str
) -> None:
    """The primary is the placed one and the sender is right: only the chain differs."""
    data = b"elsewhere" * 100
    with users.session(amqp_url=user_url("alice")) as s:
        placed = place(s, data)
        spare = sorted(set(users.workers) - set(placed.chain))[0]
        chain = {
            "another": (placed.chain[0], spare),
            "fewer": placed.chain[:1],
            "more": (*placed.chain, spare),
        }[how]
        send(s, placed, data, chain, len(data), hashlib.sha256(data).hexdigest())
        refused(users, s, placed.upload_id)


def test_a_zstd_bomb_in_a_placed_upload_is_refused_before_it_inflates(
    users: StubCluster,
) -> None:
    """200 MiB of zeros, a few KB compressed, declared as the file's size: refused without
    the worker allocating it (measured: Python's allocations, every thread)."""
    body = zstandard.ZstdCompressor(level=3).compress(bytes(BOMB))
    assert len(body) < 64 * 1024
    with users.session(amqp_url=user_url("alice")) as s:
        placed = place(s, b"small" * 10)
        tracemalloc.start()
        try:
            send(s, placed, body, placed.chain, BOMB, "c" * 64, m.ZSTD)
            refused(users, s, placed.upload_id)
            _now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 32 * 1024 * 1024, f"{peak / 2**20:.0f} MiB allocated meanwhile"


def test_a_zstd_bomb_in_a_pack_is_refused_before_it_inflates(users: StubCluster) -> None:
    """Two placed chunks declared at 100 MiB each: more than a pack may hold."""
    body = zstandard.ZstdCompressor(level=3).compress(bytes(BOMB))
    with users.session(amqp_url=user_url("alice")) as s:
        files = tuple(m.PackFile("", 10, hashlib.sha256(b"%d" % i).hexdigest()) for i in (1, 2))
        placed = s.request(m.PackRequest(files, 2, "alice", chunks=True), m.PackAccepted)
        entries = tuple(
            m.PackEntry(u, f.sha256, BOMB // 2)
            for u, f in zip(placed.upload_ids, files, strict=True)
        )
        p = m.PackHeaders(entries, placed.chain, 0, m.ZSTD)
        tracemalloc.start()
        try:
            s.conn.publish(
                worker_chunks(placed.chain[0]),
                body,
                type=m.PACK_TYPE,
                headers=p.to_headers(),
                reply_to=s.reply_queue,
                correlation_id="pack",
            )

            def dead() -> bool:
                s.conn.process(0)
                return users.broker.depth(DEAD_LETTER_QUEUE) > 0

            wait_for(dead, what="the pack dead-lettered")
            s.idle(0.2)
            _now, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert [msg.type for msg in users.broker.messages(DEAD_LETTER_QUEUE)] == [m.PACK_TYPE]
    packs = [p for p in users.broker.published if p.type == m.PACK_TYPE]
    assert [p.user_id for p in packs] == ["alice"], "a worker forwarded the pack"
    assert peak < 32 * 1024 * 1024, f"{peak / 2**20:.0f} MiB allocated meanwhile"
