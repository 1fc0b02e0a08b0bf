"""Versions, owners, deduplication, delete and garbage collection, on the in-memory broker.

What is asserted is what a user sees: which versions are listed and restored, whether a
byte was sent, and whether the workers' disks gave the space back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.args import build_parser
from client.cli import App
from client.outcomes import Progress, UploadResult
from client.session import Session
from tests.stubcluster import FAST, StubCluster, wait_for
from warren import messages as m
from warren.errors import NotFound, Refused, WarrenError
from warren.testing import Message
from warren.topology import MANAGER_REQUESTS, client_topology

GC = dataclasses.replace(FAST, gc_delay=0.3)
ALICE = "amqp://alice:secret@localhost:5672/%2F"
BOB = "amqp://bob:secret@localhost:5672/%2F"


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubCluster]:
    c = StubCluster(tmp_path, GC)
    try:
        yield c.start(4)
    finally:
        c.stop_all()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def on_disk(c: StubCluster, data: bytes) -> set[str]:
    """The workers whose disks hold ``data``'s blob."""
    sha = hashlib.sha256(data).hexdigest()
    return {n for n, w in c.workers.items() if w.blobs.blob_path(sha).exists()}


def gc_had_its_chance(c: StubCluster, s: Session, tmp_path: Path) -> None:
    """Store and delete content of its own, and wait until its blobs are gone: the garbage
    collector has then passed the delay of everything deleted before, and acted on it."""
    later = os.urandom(100_000)
    s.upload(write(tmp_path / "later", later), "deleted-later", 2)
    s.delete("deleted-later")
    wait_for(lambda: not on_disk(c, later), what="content deleted later to be collected")


def chunks_sent(c: StubCluster) -> int:
    return sum(1 for p in c.broker.published if p.type in (m.CHUNK_TYPE, m.PACK_TYPE))


def test_each_upload_of_a_name_adds_a_version_and_any_can_be_restored(
    stub: StubCluster, tmp_path: Path
) -> None:
    contents = [os.urandom(70_000 + i) for i in range(3)]  # large enough to go alone
    with stub.session() as s:
        for data in contents:
            s.upload(write(tmp_path / "a.txt", data), "notes/a.txt", 2)
        [latest] = s.files()
        versions = s.versions("notes/a.txt")
        s.download("notes/a.txt", tmp_path / "v1", version=1)
        s.download("notes/a.txt", tmp_path / "now")
        assert s.delete("notes/a.txt", version=2) == (2,)
        after = [v.version for v in s.versions("notes/a.txt")]
        with pytest.raises(NotFound):
            s.download("notes/a.txt", tmp_path / "v2", version=2)
    assert (latest.version, latest.versions, latest.size) == (3, 3, len(contents[2]))
    assert [v.version for v in versions] == [1, 2, 3]
    assert [v.sha256 for v in versions] == [hashlib.sha256(d).hexdigest() for d in contents]
    assert (tmp_path / "v1").read_bytes() == contents[0]
    assert (tmp_path / "now").read_bytes() == contents[2]
    assert after == [1, 3]


def test_content_the_cluster_holds_is_recorded_without_sending_a_byte(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    with stub.session() as s:
        first = s.upload(write(tmp_path / "one", data), "one", 2)
        sent = chunks_sent(stub)
        again = s.upload(write(tmp_path / "two", data), "elsewhere/two", 2)
        names = {f.name for f in s.files()}
    assert not first.deduplicated and again.deduplicated
    assert chunks_sent(stub) == sent, "chunks were sent for content already stored"
    assert set(again.confirmed) == set(first.chain)
    assert names == {"one", "elsewhere/two"}


def upload_all(
    s: Session, items: list[tuple[Path, str]], replicas: int
) -> dict[str, UploadResult | WarrenError]:
    outcomes: dict[str, UploadResult | WarrenError] = {}
    s.upload_many(items, replicas, lambda _n: Progress(), outcomes.__setitem__)
    return outcomes


def test_small_files_the_cluster_holds_are_recorded_without_being_sent_again(
    stub: StubCluster, tmp_path: Path
) -> None:
    old = [os.urandom(1000 + i) for i in range(20)]
    new = [os.urandom(1000 + i) for i in range(5)]
    for i, data in enumerate(old + new):
        write(tmp_path / f"f{i}", data)
    first = [(tmp_path / f"f{i}", f"a/f{i}") for i in range(len(old))]
    with stub.session() as s:
        upload_all(s, first, 2)
        packed = sum(1 for p in stub.broker.published if p.type == m.PACK_TYPE)
        again = upload_all(s, [(path, "b/" + name[2:]) for path, name in first], 2)
        after_same = sum(1 for p in stub.broker.published if p.type == m.PACK_TYPE)
        mixed = [(tmp_path / f"f{i}", f"c/f{i}") for i in range(len(old) + len(new))]
        both = upload_all(s, mixed, 2)
        sent = [p for p in stub.broker.published if p.type == m.PACK_TYPE][after_same:]
        listed = {f.name for f in s.files()}
        s.download("b/f3", tmp_path / "back")
    assert packed >= 1
    assert after_same == packed, "a pack was sent for small files already stored"
    assert all(
        isinstance(r, UploadResult) and r.deduplicated and r.sent == 0 for r in again.values()
    )
    results = [both[f"c/f{i}"] for i in range(len(old) + len(new))]
    assert all(isinstance(r, UploadResult) for r in results), results
    assert [isinstance(r, UploadResult) and r.deduplicated for r in results] == [True] * len(
        old
    ) + [False] * len(new)
    # Only the new files went in the pack the client sent (to the primary, hop 0).
    packs = [m.PackHeaders.from_headers(p.headers, len(p.body)) for p in sent]
    assert sorted(len(h.files) for h in packs if h.hop == 0) == [len(new)]
    assert listed >= {f"b/f{i}" for i in range(len(old))} | {f"c/f{i}" for i in range(25)}
    assert (tmp_path / "back").read_bytes() == old[3]


def test_content_held_too_few_times_is_copied_worker_to_worker_not_sent(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = os.urandom(300_000)

    def from_clients() -> int:
        return sum(
            1 for p in stub.broker.published if p.type == m.CHUNK_TYPE and "#" not in p.sender
        )

    with stub.session() as s:
        first = s.upload(write(tmp_path / "one", data), "one", 1)
        sent = from_clients()
        again = s.upload(write(tmp_path / "two", data), "two", 3)
        [entry] = [f for f in s.files() if f.name == "two"]
    assert sent > 0
    assert from_clients() == sent, "the client sent chunks of content the cluster holds"
    assert again.deduplicated and again.sent == 0
    assert len(again.confirmed) == 3 and set(first.chain) <= set(again.confirmed)
    assert on_disk(stub, data) == set(again.confirmed)
    assert set(entry.replicas) == set(again.confirmed)


def test_held_content_asked_on_more_workers_than_are_alive_is_refused_in_one_sentence(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    with stub.session() as s:
        s.upload(write(tmp_path / "one", data), "one", 1)
        with pytest.raises(Refused, match="5 replicas but only 4 workers"):
            s.upload(write(tmp_path / "two", data), "two", 5)
        assert [f.name for f in s.files()] == ["one"]


def test_delete_gives_the_space_back_but_keeps_content_another_name_uses(
    stub: StubCluster, tmp_path: Path
) -> None:
    shared, alone = os.urandom(200_000), os.urandom(200_000)
    with stub.session() as s:
        s.upload(write(tmp_path / "s", shared), "shared-1", 2)
        s.upload(write(tmp_path / "s", shared), "shared-2", 2)
        s.upload(write(tmp_path / "a", alone), "alone", 2)
        assert len(on_disk(stub, alone)) == 2
        s.delete("alone")
        s.delete("shared-1")
        with pytest.raises(NotFound):
            s.delete("alone")
        wait_for(lambda: not on_disk(stub, alone), what="the deleted file's blobs to go")
        gc_had_its_chance(stub, s, tmp_path)  # what is still used must stay
    assert len(on_disk(stub, shared)) == 2
    with stub.session() as s:
        s.download("shared-2", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == shared


def test_content_deleted_and_uploaded_again_while_its_blobs_go_is_not_lost(
    stub: StubCluster, tmp_path: Path
) -> None:
    """The race: a new upload of the same content while the old copies are being
    deleted. Whatever the order, the new version restores."""
    data = os.urandom(150_000)
    with stub.session() as s:
        s.upload(write(tmp_path / "f", data), "f", 2)
        s.delete("f")
        for _ in range(10):  # upload again at every moment of the garbage's way out
            s.upload(write(tmp_path / "f", data), "f", 2)
            s.delete("f")
            time.sleep(GC.gc_delay / 3)
        s.upload(write(tmp_path / "f", data), "f", 2)
        gc_had_its_chance(stub, s, tmp_path)
    assert len(on_disk(stub, data)) >= 2
    with stub.session() as s:
        s.download("f", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data


def test_a_worker_down_during_the_delete_deletes_when_it_is_back(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = os.urandom(100_000)
    with stub.session() as s:
        result = s.upload(write(tmp_path / "f", data), "f", 2)
    down = result.chain[1]
    stub.kill(down)
    with stub.session() as s:
        s.delete("f")
    wait_for(lambda: on_disk(stub, data) == {down}, what="the live holder to delete")
    stub.start_worker(down)
    wait_for(lambda: not on_disk(stub, data), what="the returning worker to delete too")


def test_prune_keeps_the_newest_versions(stub: StubCluster, tmp_path: Path) -> None:
    with stub.session() as s:
        for i in range(4):
            s.upload(write(tmp_path / "p", f"v{i}".encode() * 1000), "logs/p", 2)
        s.upload(write(tmp_path / "q", b"q" * 1000), "other/q", 2)
        s.upload(write(tmp_path / "q", b"Q" * 1000), "other/q", 2)
        planned = s.prune(keep_last=2, prefix="logs/", dry_run=True)
        assert [v.version for v in s.versions("logs/p")] == [1, 2, 3, 4]  # a dry run
        removed = s.prune(keep_last=2, prefix="logs/")
        kept = [v.version for v in s.versions("logs/p")]
        others = [v.version for v in s.versions("other/q")]
    assert [(v.name, v.version) for v in planned] == [("logs/p", 1), ("logs/p", 2)]
    assert [(v.name, v.version) for v in removed] == [("logs/p", 1), ("logs/p", 2)]
    assert kept == [3, 4] and others == [1, 2]


def test_each_client_sees_only_its_own_files(stub: StubCluster, tmp_path: Path) -> None:
    with stub.session(amqp_url=ALICE) as alice, stub.session(amqp_url=BOB) as bob:
        alice.upload(write(tmp_path / "d", b"alice's diary" * 100), "diary.txt", 2)
        bob.upload(write(tmp_path / "d", b"bob's diary" * 100), "diary.txt", 2)
        assert [f.version for f in alice.files()] == [1]  # not version 2 of a shared name
        bob.download("diary.txt", tmp_path / "b")
        bob.delete("diary.txt")
        with pytest.raises(NotFound):
            bob.download("diary.txt", tmp_path / "b2")
        alice.download("diary.txt", tmp_path / "a")
    assert (tmp_path / "b").read_bytes() == b"bob's diary" * 100
    assert (tmp_path / "a").read_bytes() == b"alice's diary" * 100


def test_the_owner_is_the_broker_user_not_a_field_in_the_body(
    stub: StubCluster, tmp_path: Path
) -> None:
    with stub.session(amqp_url=ALICE) as alice:
        alice.upload(write(tmp_path / "d", b"secret" * 100), "secret.txt", 2)
    raw = stub.broker.connect(dataclasses.replace(GC, amqp_url=BOB), "mallory")
    raw.open()
    answers: list[Message] = []

    def record(msg: Message) -> list[Message]:
        answers.append(msg)
        return [msg]

    stub.broker.intercept = record
    raw.declare(client_topology("mallory-q"))
    raw.publish(
        MANAGER_REQUESTS,
        m.ListRequest().encode(),
        type=m.ListRequest.TYPE,
        reply_to="mallory-q",
        correlation_id="1",
    )
    wait_for(lambda: any(a.queue == "mallory-q" for a in answers), what="the answer")
    stub.broker.intercept = None
    [reply] = [a for a in answers if a.queue == "mallory-q"]
    assert m.decode(reply.type, reply.body) == m.ListReply(files=())
    raw.close()


def test_restored_files_get_their_mode_and_mtime_back(stub: StubCluster, tmp_path: Path) -> None:
    src = write(tmp_path / "script.sh", b"#!/bin/sh\necho hi\n")
    os.chmod(src, 0o750)
    os.utime(src, (1_600_000_000, 1_600_000_000))
    with stub.session() as s:
        s.upload(src, "script.sh", 2)
        s.download("script.sh", tmp_path / "back.sh")
    st = (tmp_path / "back.sh").stat()
    assert (st.st_mode & 0o777, int(st.st_mtime)) == (0o750, 1_600_000_000)


def cut_off_after(c: StubCluster, chunks: int) -> None:
    """Drop the uploading client's connection once it has sent ``chunks`` chunks."""
    sent: list[Message] = []

    def cut(msg: Message) -> list[Message]:
        if msg.type == m.CHUNK_TYPE and (msg.headers or {}).get("hop") == 0:
            sent.append(msg)
            if len(sent) == chunks:
                c.broker.disconnect(lambda n: n.startswith("warren client"))
        return [msg]

    c.broker.intercept = cut


def first_hop_chunks(c: StubCluster) -> int:
    return sum(
        1
        for p in c.broker.published
        if p.type == m.CHUNK_TYPE and (p.headers or {}).get("hop") == 0
    )


def test_an_interrupted_upload_run_again_sends_only_what_is_missing(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = os.urandom(10 * 64 * 1024)  # ten chunks
    src = write(tmp_path / "big", data)
    cut_off_after(stub, 6)
    with pytest.raises(WarrenError), stub.session() as s:
        s.upload(src, "big", 2)
    stub.broker.intercept = None
    # The user runs it again later: by then the primary has written what it was sent.
    [first] = [p for p in stub.broker.published if p.type == m.CHUNK_TYPE][:1]
    primary = stub.workers[first.queue.split(".")[2]]
    upload_id = str((first.headers or {})["upload_id"])
    wait_for(lambda: len(primary.incoming.have(upload_id)[0]) == 6, what="6 chunks on the primary")
    before = first_hop_chunks(stub)

    with stub.session() as s:
        result = s.upload(src, "big", 2)
        [entry] = s.files()
    resent = first_hop_chunks(stub) - before
    assert resent <= 4, f"{resent} chunks sent again; the primary had 6"
    assert (entry.version, entry.sha256) == (1, hashlib.sha256(data).hexdigest())
    assert on_disk(stub, data) == set(result.chain)
    with stub.session() as s:
        s.download("big", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data


def test_an_abandoned_upload_leaves_no_partial_data(tmp_path: Path) -> None:
    c = StubCluster(tmp_path, dataclasses.replace(GC, upload_expiry=3.0))
    try:
        c.start(4)
        src = write(tmp_path / "big", os.urandom(10 * 64 * 1024))
        cut_off_after(c, 5)
        with pytest.raises(WarrenError), c.session() as s:
            s.upload(src, "big", 2)
        c.broker.intercept = None

        def partial() -> list[Path]:
            return [p for w in c.workers.values() for p in w.incoming.dir.iterdir()]

        wait_for(partial, what="partial data on the workers")
        wait_for(lambda: not partial(), what="the abandoned upload's data to go")
        with c.session() as s:
            assert s.status().uploads_in_flight == 0
            assert s.files() == []
    finally:
        c.stop_all()


def test_a_big_listing_comes_in_pages_and_prints_whole(
    stub: StubCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [f"docs/{i:05}.txt" for i in range(2_100)]
    items = []
    for i, name in enumerate(names):
        items.append((write(tmp_path / f"{i}", f"file {i}".encode()), name))
    args = build_parser().parse_args(["list", "docs/"])
    with stub.session() as s:
        outcomes = upload_all(s, items, 1)
        failed = {n: str(r) for n, r in outcomes.items() if not isinstance(r, UploadResult)}
        assert not failed
        pages = [len(p) for p in s.pages("docs/")]
        App(args).list(s)
        lines = capsys.readouterr().out.splitlines()
        App(build_parser().parse_args(["list", "--json"])).list(s)
        listed = json.loads(capsys.readouterr().out)
    assert pages == [1000, 1000, 100]
    assert [line.split("\t")[0] for line in lines[:-1]] == names and lines[-1] == "2100 files"
    assert [f["name"] for f in listed] == names
