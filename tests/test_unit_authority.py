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

from tests.stubcluster import FAST, StubCluster, user_url, wait_for
from warren import messages as m
from warren.errors import NotFound
from warren.topology import MANAGER_EVENTS


def test_a_hash_is_no_key_to_another_owners_file(users: StubCluster, tmp_path: Path) -> None:
    """Alice stores a file. Mallory knows its SHA-256 and size and asks to upload it
    without the bytes, alone and in a pack: the manager records nothing for her and says
    nothing of what is stored, so she can neither list nor download it. When she really
    has the bytes she sends them all. Alice's own content still deduplicates."""
    data = os.urandom(150_000)
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "f").write_bytes(data)
    with users.session(amqp_url=user_url("alice")) as alice:
        alice.upload(tmp_path / "f", "report.txt", 2)

    with users.session(amqp_url=user_url("mallory")) as mallory:
        # Given the hash and size of Alice's file, and nothing else:
        alone = mallory.request(m.UploadRequest("loot", len(data), sha, 2), m.UploadAccepted)
        packed = mallory.request(
            m.PackRequest((m.PackFile("a", len(data), sha), m.PackFile("b", 0, _EMPTY)), 2),
            m.PackAccepted,
        )
        # Then: placed as new content, to be sent; nothing recorded, nothing to restore.
        assert (alone.stored, alone.copies) == (False, 0)
        assert packed.stored == ()
        assert mallory.files() == []
        with pytest.raises(NotFound):
            mallory.download("loot", tmp_path / "loot")
        # With the bytes in hand, she sends every one of them.
        mine = mallory.upload(tmp_path / "f", "mine", 2)
        assert (mine.deduplicated, mine.sent) == (False, len(data))
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
    """A worker outside a file's chain says, as itself, that it stored the file (alone and
    as part of a pack). It is credited with nothing: the file is listed on its chain only,
    so the claim can neither make it a holder nor hide a shortfall from repair."""
    data = os.urandom(150_000)
    sha = hashlib.sha256(data).hexdigest()
    (tmp_path / "f").write_bytes(data)
    with users.session(amqp_url=user_url("alice")) as alice:
        chain = alice.upload(tmp_path / "f", "f", 2).chain
        [stored] = [
            m.ReplicaStored.decode(p.body)
            for p in users.broker.published
            if p.type == "replica.stored"
        ][:1]
        outsider = next(w for w in sorted(users.workers) if w not in chain)
        liar = users.broker.connect(dataclasses.replace(FAST, amqp_url=user_url(outsider)), "l")
        liar.open()
        for claim in (
            m.ReplicaStored(stored.upload_id, outsider, sha, len(data), 2),
            m.PackStored(outsider, 0, (m.PackEntry(stored.upload_id, sha, len(data)),)),
        ):
            liar.publish(MANAGER_EVENTS, claim.encode(), type=claim.TYPE)
        wait_for(lambda: users.broker.depth(MANAGER_EVENTS) == 0, what="the claims taken in")
        alice.status()  # answered after the claims: the manager has handled them
        [entry] = alice.files()
        liar.close()
    assert entry.replicas == tuple(sorted(chain))
