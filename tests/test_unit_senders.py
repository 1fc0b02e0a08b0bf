"""A client believes only the sender that may say it, on the in-memory broker with each
service its own broker user: answers and records from the manager's user, a replica's
word from the worker of the chain it names, restore bytes from the worker the manager
named. A forger publishes to the client's reply queue under the right correlation id
(neither is secret: both travel in every chunk's headers) and changes nothing.

Without these checks a worker (or another client) could make an upload whose backup never
wrote a byte report success, answer a request in the manager's stead, or feed a restore
its own bytes; and the manager served a request that carried no user at all."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from client.outcomes import Progress, UploadResult
from tests.stubcluster import (
    FAST,
    StubCluster,
    file_chunks,
    silence_backups,
    user_url,
    wait_for,
)
from warren import messages as m
from warren.errors import Unavailable, WarrenError
from warren.testing import Message
from warren.topology import DEAD_LETTER_QUEUE, MANAGER_REQUESTS
from warren.transport import Delivery

TRANSFER_TIMEOUT = 1.0


Forgeries = Callable[[Message], tuple[str, list[m.Message]]]


def forge_on(c: StubCluster, when: Callable[[Message], bool], forge: Forgeries) -> list[Message]:
    """Once a message ``when`` picks is published, ``forge(it)`` says who (a broker user)
    publishes what to its ``reply_to``, under its correlation id: done on a thread of its
    own, with its own connection. Returns the forged messages as the broker took them."""
    forged: list[Message] = []

    def run() -> None:
        deadline = time.monotonic() + 10
        seen: Message | None = None
        while seen is None and time.monotonic() < deadline:
            seen = next((p for p in list(c.broker.published) if when(p)), None)
            time.sleep(0.005)
        assert seen is not None and seen.reply_to
        user, msgs = forge(seen)
        conn = c.broker.connect(dataclasses.replace(FAST, amqp_url=user_url(user)), "forger")
        conn.open()
        for msg in msgs:
            conn.publish(
                seen.reply_to,
                msg.encode(),
                type=msg.TYPE,
                correlation_id=seen.correlation_id,
                persistent=False,
            )
        forged.extend(
            p
            for p in c.broker.published
            if p.sender == "forger" and p.correlation_id == seen.correlation_id
        )
        conn.close()

    threading.Thread(target=run, daemon=True).start()
    return forged


def first_pack(p: Message) -> bool:
    return p.type == m.PACK_TYPE and p.user_id == "alice"


def chain_of(p: Message) -> tuple[str, ...]:
    return m.PackHeaders.from_headers(p.headers, len(p.body)).chain


@pytest.mark.parametrize("forger", ["a worker not in the chain", "the primary", "a client"])
def test_a_forged_stored_for_a_silent_backup_does_not_make_the_upload_succeed(
    users: StubCluster, tmp_path: Path, forger: str
) -> None:
    data = os.urandom(2000)  # one chunk, one pack: believing the forgery would be success
    (tmp_path / "f").write_bytes(data)
    silence_backups(users)
    # RabbitMQ refuses a client's publish to another's reply queue (its role's rights):
    # here Mallory has every right (a user made by hand), so only Alice's own check is left.
    users.broker.roles["mallory"] = None

    def forge(p: Message) -> tuple[str, list[m.Message]]:
        primary, backup = chain_of(p)
        user = {
            "a worker not in the chain": sorted(set(users.workers) - {primary, backup})[0],
            "the primary": primary,
            "a client": "mallory",
        }[forger]
        pack = m.PackHeaders.from_headers(p.headers, len(p.body))
        ids = tuple(f.upload_id for f in pack.files)
        return user, [m.PackStored(backup, 1, pack.files), m.PackRecorded(upload_ids=ids)]

    forged = forge_on(users, first_pack, forge)
    alice = users.session(amqp_url=user_url("alice"), transfer_timeout=TRANSFER_TIMEOUT)
    with alice as s, pytest.raises(Unavailable) as caught:
        s.upload(tmp_path / "f", "f", 2)
    assert [p.type for p in forged] == [m.PackStored.TYPE, m.PackRecorded.TYPE]
    assert len([p for p in users.broker.published if first_pack(p)]) == 1
    backup = chain_of(next(p for p in users.broker.published if first_pack(p)))[1]
    assert str(caught.value) == f"{backup} did not confirm 'f' in time."


def test_a_forged_pack_stored_and_recorded_do_not_make_a_pack_succeed(
    users: StubCluster, tmp_path: Path
) -> None:
    items = []
    for i in range(3):
        (tmp_path / f"s{i}").write_bytes(os.urandom(500 + i))
        items.append((tmp_path / f"s{i}", f"s{i}"))
    silence_backups(users)

    def forge(p: Message) -> tuple[str, list[m.Message]]:
        pack = m.PackHeaders.from_headers(p.headers, len(p.body))
        ids = tuple(f.upload_id for f in pack.files)
        primary, backup = pack.chain  # the primary speaks for its silent backup
        return primary, [m.PackStored(backup, 1, pack.files), m.PackRecorded(upload_ids=ids)]

    forged = forge_on(users, lambda p: p.type == m.PACK_TYPE, forge)
    outcomes: dict[str, UploadResult | WarrenError] = {}
    with users.session(amqp_url=user_url("alice"), transfer_timeout=TRANSFER_TIMEOUT) as s:
        s.upload_many(items, 2, lambda _n: Progress(), outcomes.__setitem__)
    assert [p.type for p in forged] == [m.PackStored.TYPE, m.PackRecorded.TYPE]
    assert sorted(outcomes) == ["s0", "s1", "s2"]
    for name, outcome in outcomes.items():
        assert isinstance(outcome, Unavailable), f"{name}: {outcome!r}"


def hold_requests(
    c: StubCluster, which: Callable[[Message], bool] = lambda _: True
) -> Callable[[], None]:
    """Requests (``which`` of them) wait, unseen by the manager, until the returned
    function lets them go."""
    held: list[Message] = []
    holding = [True]

    def hold(msg: Message) -> list[Message]:
        if msg.queue == MANAGER_REQUESTS and holding[0] and which(msg):
            held.append(msg)
            return []
        return [msg]

    c.broker.intercept = hold

    def release() -> None:
        with c.broker.lock:
            holding[0] = False
            c.broker.queues[MANAGER_REQUESTS].messages.extend(held)
            c.broker.changed.notify_all()

    return release


@pytest.mark.parametrize("forger", ["w1", "mallory"])
def test_forged_answers_from_anyone_but_the_manager_are_ignored(
    users: StubCluster, tmp_path: Path, forger: str
) -> None:
    """A made-up listing and a made-up error arrive first; the manager's answers win.
    Mallory has every right on the broker (a user made by hand; a client's role may not
    publish to another's reply queue): only the client's own check stops her."""
    users.broker.roles["mallory"] = None
    (tmp_path / "real").write_bytes(b"real bytes")
    with users.session(amqp_url=user_url("alice")) as s:
        s.upload(tmp_path / "real", "real", 2)
        release = hold_requests(users)
        fake = m.FileEntry("forged", 1, "d" * 64, ("w1",), 1, 1.0)

        def forge(p: Message) -> tuple[str, list[m.Message]]:
            if p.type == m.ListRequest.TYPE:
                reply: m.Message = m.ListReply(files=(fake,))
            else:
                reply = m.ErrorReply("not_found", "forged: no such thing")
            try:
                return forger, [reply]
            finally:
                threading.Timer(0.3, release).start()

        forged = forge_on(users, lambda p: p.type == m.ListRequest.TYPE, forge)
        assert [f.name for f in s.files()] == ["real"]
        assert [p.type for p in forged] == [m.ListReply.TYPE]

        release = hold_requests(users)
        forged = forge_on(users, lambda p: p.type == m.VersionsRequest.TYPE, forge)
        assert [v.version for v in s.versions("real")] == [1]
        assert [p.type for p in forged] == [m.ErrorReply.TYPE]


def test_restore_bytes_from_anyone_but_the_named_worker_are_ignored(
    users: StubCluster, tmp_path: Path
) -> None:
    """One replica of a one-chunk file: a forged chunk and end, in after the manager named
    the holder and before the holder's own, would fail the SHA-256 check, and no other
    holder is left to ask."""
    data = os.urandom(2000)
    (tmp_path / "f").write_bytes(data)
    with users.session(amqp_url=user_url("alice")) as s:
        holder = s.upload(tmp_path / "f", "f", 1).chain[0]
        other = sorted(set(users.workers) - {holder})[0]
        [chunk] = file_chunks(users, hashlib.sha256(data).hexdigest())
        serves: list[Message] = []
        holding = [True]

        def hold(msg: Message) -> list[Message]:  # the holder is told to serve, later
            if msg.type == m.ServeRequest.TYPE and holding[0]:
                serves.append(msg)
                return []
            return [msg]

        users.broker.intercept = hold
        forged: list[Message] = []

        def forge() -> None:
            wait_for(lambda: serves, what="the holder told to serve")
            cid = m.ServeRequest.decode(serves[0].body).correlation_id
            wait_for(
                lambda: any(
                    p.type == m.DownloadAccepted.TYPE and p.correlation_id == cid
                    for p in list(users.broker.published)
                ),
                what="the manager's answer",
            )
            reply_to = m.ServeRequest.decode(serves[0].body).reply_to
            url = user_url(other)
            conn = users.broker.connect(dataclasses.replace(FAST, amqp_url=url), "forger")
            conn.open()
            junk = bytes(chunk.size)
            end = m.RestoreEnd(other, hashlib.sha256(junk).hexdigest(), len(junk))
            for body, kind, headers in [
                (junk, m.RESTORE_CHUNK_TYPE, m.RestoreChunk(0, 0).to_headers()),
                (end.encode(), end.TYPE, None),
            ]:
                conn.publish(
                    reply_to,
                    body,
                    type=kind,
                    headers=headers,
                    correlation_id=cid,
                    persistent=False,
                )
            forged.extend(p for p in users.broker.published if p.sender == "forger")
            conn.close()
            with users.broker.lock:
                holding[0] = False
                for msg in serves:
                    users.broker.queues[msg.queue].messages.append(msg)
                users.broker.changed.notify_all()

        threading.Thread(target=forge, daemon=True).start()
        result = s.download("f", tmp_path / "back")
    assert [p.type for p in forged] == [m.RESTORE_CHUNK_TYPE, m.RestoreEnd.TYPE]
    assert result.worker == holder
    assert (tmp_path / "back").read_bytes() == data


def test_the_manager_refuses_a_request_without_a_user(users: StubCluster) -> None:
    """RabbitMQ checks a user_id that is there; a publisher may leave it out."""
    with users.session(amqp_url=user_url("alice")) as s:
        answers: list[str] = []

        def take(d: Delivery) -> None:
            answers.append(d.type or "")
            d.ack()

        cid = uuid.uuid4().hex
        s.route(cid, take)
        req = m.StatusRequest()
        raw = Message(
            MANAGER_REQUESTS, req.encode(), req.TYPE, reply_to=s.reply_queue, correlation_id=cid
        )
        with users.broker.lock:
            users.broker.queues[MANAGER_REQUESTS].messages.append(raw)
            users.broker.changed.notify_all()

        def settled() -> bool:
            s.conn.process(0.05)
            return bool(answers) or users.broker.depth(DEAD_LETTER_QUEUE) > 0

        wait_for(settled, what="the request dead-lettered or answered")
        s.idle(0.2)
    assert answers == []
    assert [p.type for p in users.broker.messages(DEAD_LETTER_QUEUE)] == [m.StatusRequest.TYPE]
