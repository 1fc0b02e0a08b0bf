"""Least authority on the in-memory broker: what one party can get from another by
knowing something (a hash, an id) rather than by holding what it stands for.

Each service and client here logs in as its own broker user (``StubCluster(users=True)``),
so every message carries its sender's user, as RabbitMQ validates it."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import pytest

from tests.stubcluster import FAST, StubCluster, file_chunks, user_url, wait_for
from warren import messages as m
from warren.errors import NotFound, Unavailable
from warren.topology import MANAGER_EVENTS


def test_a_hash_is_no_key_to_another_owners_file(users: StubCluster, tmp_path: Path) -> None:
    """Alice stores a file. Mallory knows the name (SHA-256) and size of each of its
    sealed chunks and offers them in a pack without the bytes, asks to commit a file made
    of them, and asks for one of them: the manager says none is stored, records nothing
    for her and serves her nothing. When she really has the bytes she sends every chunk of
    her own. Alice's own content still deduplicates."""
    data = os.urandom(150_000)
    (tmp_path / "f").write_bytes(data)
    with users.session(amqp_url=user_url("alice")) as alice:
        alice.upload(tmp_path / "f", "report.txt", 2)
    chunks = file_chunks(users, hashlib.sha256(data).hexdigest())
    assert chunks

    with users.session(amqp_url=user_url("mallory")) as mallory:
        # Given the names and sizes of Alice's sealed chunks, and nothing else:
        packed = mallory.request(
            m.PackRequest(tuple(m.PackFile("", c.size, c.sha256) for c in chunks), 2, chunks=True),
            m.PackAccepted,
        )
        # Then: placed as new content, to be sent; nothing recorded, nothing to restore.
        assert packed.stored == ()
        with pytest.raises(Unavailable, match="not stored"):
            mallory.request(
                m.CommitRequest(
                    (
                        m.CommitFile(
                            "loot", len(data), hashlib.sha256(data).hexdigest(), tuple(chunks)
                        ),
                    ),
                    2,
                ),
                m.CommitReply,
            )
        for c in chunks:
            with pytest.raises(NotFound):
                mallory.request(m.DownloadRequest("", blob=c.sha256), m.DownloadAccepted)
        assert mallory.files() == []
        with pytest.raises(NotFound):
            mallory.download("loot", tmp_path / "loot")
        # With the bytes in hand, she sends every chunk (sealed with her own key).
        mine = mallory.upload(tmp_path / "f", "mine", 2)
        assert not mine.deduplicated
        assert mine.sent > len(data)  # sealed: the bytes and each chunk's seal
        mallory.download("mine", tmp_path / "back")

    assert not (tmp_path / "loot").exists()
    assert (tmp_path / "back").read_bytes() == data
    with users.session(amqp_url=user_url("alice")) as alice:
        again = alice.upload(tmp_path / "f", "copy.txt", 2)
        assert (again.deduplicated, again.sent) == (True, 0)
        assert [f.name for f in alice.files()] == ["copy.txt", "report.txt"]


_EMPTY = hashlib.sha256(b"").hexdigest()


def test_a_worker_is_credited_only_with_replicas_the_manager_placed_on_it(
    users: StubCluster, tmp_path: Path
) -> None:
    """A worker outside a file's chain says, as itself, that it stored the file's (one)
    sealed chunk (alone and as part of a pack). It is credited with nothing: the file is
    listed on its chain only, so the claim can neither make it a holder nor hide a
    shortfall from repair."""
    data = os.urandom(2_000)  # one chunk: a holder more of it would be a replica more
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "f").write_bytes(data)
    with users.session(amqp_url=user_url("alice")) as alice:
        chain = alice.upload(tmp_path / "f", "f", 2).chain
        first = file_chunks(users, sha)[0]  # its holders are the file's replicas
        [stored] = [
            e
            for p in users.broker.published
            if p.type == m.PackStored.TYPE
            for e in m.PackStored.decode(p.body).files
            if e.sha256 == first.sha256
        ][:1]
        outsider = next(w for w in sorted(users.workers) if w not in chain)
        liar = users.broker.connect(dataclasses.replace(FAST, amqp_url=user_url(outsider)), "l")
        liar.open()
        for claim in (
            m.ReplicaStored(stored.upload_id, outsider, first.sha256, first.size, 2),
            m.PackStored(outsider, 0, (m.PackEntry(stored.upload_id, first.sha256, first.size),)),
        ):
            liar.publish(MANAGER_EVENTS, claim.encode(), type=claim.TYPE)
        wait_for(lambda: users.broker.depth(MANAGER_EVENTS) == 0, what="the claims taken in")
        alice.status()  # answered after the claims: the manager has handled them
        [entry] = alice.files()
        liar.close()
    assert entry.replicas == tuple(sorted(chain))
