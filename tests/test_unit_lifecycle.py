"""Versions, owners, deduplication, delete and garbage collection, on the in-memory broker.

What is asserted is what a user sees: which versions are listed and restored, whether a
byte was sent, and whether the workers' disks gave the space back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.args import build_parser
from client.cli import App
from client.outcomes import Progress, UploadResult
from client.session import Session
from manager.holdings import COMPLETE
from tests.stubcluster import FAST, StubCluster, short_pins, wait_for
from warren import chunkseal
from warren import messages as m
from warren.errors import NotFound, Refused, WarrenError
from warren.testing import Message
from warren.topology import MANAGER_REQUESTS, client_topology

GC = dataclasses.replace(FAST, gc_delay=0.3)
ALICE = "amqp://alice:secret@localhost:5672/%2F"
BOB = "amqp://bob:secret@localhost:5672/%2F"


@pytest.fixture
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StubCluster]:
    short_pins(monkeypatch, 1.0)
    c = StubCluster(tmp_path, GC)
    try:
        yield c.start(4)
    finally:
        c.stop_all()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


_SEALED: dict[tuple[int, str], set[str]] = {}


def sealed_names(c: StubCluster, data: bytes) -> set[str]:
    """The blobs ``data`` is stored as, by the test client's owner (cut and sealed here
    with its keys, as an upload does: the same whether or not a version names them)."""
    key = (id(c), hashlib.sha256(data).hexdigest())
    if key not in _SEALED:
        with c.session() as s:
            keys = s.owner_keys()
        path = c.base / f"sealed-{key[1]}"
        path.write_bytes(data)
        params = chunkseal.params_for(c.settings.chunk_size)
        _SEALED[key] = {
            chunkseal.seal_one(keys.seal, keys.ids, piece).digest
            for piece in chunkseal.cut(path, params, keys.chunker_seed)
        }
        path.unlink()
    return _SEALED[key]


def on_disk(c: StubCluster, data: bytes) -> set[str]:
    """The workers whose disks hold any of ``data``'s sealed chunks."""
    names = sealed_names(c, data)
    return {n for n, w in c.workers.items() if any(w.blobs.blob_path(b).exists() for b in names)}


def copies(c: StubCluster, data: bytes) -> int:
    """On how many workers' disks each of ``data``'s sealed chunks is (the fewest)."""
    return min(
        sum(w.blobs.blob_path(b).exists() for w in c.workers.values())
        for b in sealed_names(c, data)
    )


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
    # Only the new files' chunks went in the packs the client sent (to primaries, hop 0;
    # how many packs depends on how fast they were cut).
    packs = [m.PackHeaders.from_headers(p.headers, len(p.body)) for p in sent]
    assert sorted(f.sha256 for h in packs if h.hop == 0 for f in h.files) == sorted(
        set().union(*(sealed_names(stub, d) for d in new))
    )
    assert listed >= {f"b/f{i}" for i in range(len(old))} | {f"c/f{i}" for i in range(25)}
    assert (tmp_path / "back").read_bytes() == old[3]


def test_content_held_too_few_times_is_stored_as_many_times_as_asked(
    stub: StubCluster, tmp_path: Path
) -> None:
    """Held once, asked for three times: each chunk short of live copies is sent again
    (no longer copied worker to worker), and the new name is on three workers."""
    data = os.urandom(300_000)
    with stub.session() as s:
        s.upload(write(tmp_path / "one", data), "one", 1)
        assert copies(stub, data) == 1
        again = s.upload(write(tmp_path / "two", data), "two", 3)
        [entry] = [f for f in s.files() if f.name == "two"]
        s.download("two", tmp_path / "back")
    assert not again.deduplicated and again.sent > 0
    assert len(again.confirmed) == 3
    assert copies(stub, data) >= 3
    assert len(entry.replicas) == 3
    assert (tmp_path / "back").read_bytes() == data


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
        assert copies(stub, alone) == 2
        s.delete("alone")
        s.delete("shared-1")
        with pytest.raises(NotFound):
            s.delete("alone")
        wait_for(lambda: not on_disk(stub, alone), what="the deleted file's blobs to go")
        gc_had_its_chance(stub, s, tmp_path)  # what is still used must stay
    assert copies(stub, shared) == 2
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
    assert copies(stub, data) >= 2
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


def hop0_packs(c: StubCluster) -> list[m.PackHeaders]:
    """The packs the client sent (to their primaries, hop 0), as published."""
    return [
        m.PackHeaders.from_headers(p.headers, len(p.body))
        for p in list(c.broker.published)
        if p.type == m.PACK_TYPE and (p.headers or {}).get("hop") == 0
    ]


def cut_off_after(c: StubCluster, packs: int) -> None:
    """Drop the uploading client's connection once it has sent ``packs`` packs."""
    sent: list[Message] = []

    def cut(msg: Message) -> list[Message]:
        if msg.type == m.PACK_TYPE and (msg.headers or {}).get("hop") == 0:
            sent.append(msg)
            if len(sent) == packs:
                c.broker.disconnect(lambda n: n.startswith("warren client"))
        return [msg]

    c.broker.intercept = cut


def sent_chunks(packs: list[m.PackHeaders]) -> set[str]:
    return {f.sha256 for h in packs for f in h.files}


def test_an_interrupted_upload_run_again_sends_only_what_is_missing(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = os.urandom(10 * 64 * 1024)  # tens of chunks, in several packs
    src = write(tmp_path / "big", data)
    names = sealed_names(stub, data)
    cut_off_after(stub, 3)
    with pytest.raises(WarrenError), stub.session() as s:
        s.upload(src, "big", 2)
    stub.broker.intercept = None
    # The user runs it again later: by then the workers have stored what they were sent.
    first = sent_chunks(hop0_packs(stub))
    assert first and first < names

    ids = {f.upload_id for h in hop0_packs(stub) for f in h.files}

    def stored() -> bool:  # on two disks, and the manager has heard so
        return copies_of(stub, first) >= 2 and recorded(stub, ids)

    wait_for(stored, what="the chunks sent before the cut on two workers")
    before = len(hop0_packs(stub))

    with stub.session() as s:
        result = s.upload(src, "big", 2)
        [entry] = s.files()
    again = sent_chunks(hop0_packs(stub)[before:])
    assert again == names - first, "chunks stored before the cut were sent again"
    assert result.sent < len(data)
    assert (entry.version, entry.sha256) == (1, hashlib.sha256(data).hexdigest())
    assert copies(stub, data) == 2
    with stub.session() as s:
        s.download("big", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == data


def recorded(c: StubCluster, upload_ids: set[str]) -> bool:
    """The manager has recorded every replica of these uploads (its catalog says so)."""
    assert c.manager is not None
    db = sqlite3.connect(c.manager.catalog.path)  # the manager's own is its thread's
    try:
        states = [
            db.execute("SELECT state FROM uploads WHERE upload_id=?", (u,)).fetchone()
            for u in upload_ids
        ]
    finally:
        db.close()
    return all(st is not None and st[0] == COMPLETE for st in states)


def copies_of(c: StubCluster, names: set[str]) -> int:
    return min(sum(w.blobs.blob_path(b).exists() for w in c.workers.values()) for b in names)


def test_an_abandoned_upload_leaves_no_partial_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chunks an upload stored and never committed go as garbage once their pin
    (RESERVE_FOR) and gc_delay have passed."""
    short_pins(monkeypatch, 1.0)
    c = StubCluster(tmp_path, dataclasses.replace(GC, upload_expiry=3.0))
    try:
        c.start(4)
        data = os.urandom(10 * 64 * 1024)
        src = write(tmp_path / "big", data)
        cut_off_after(c, 3)
        with pytest.raises(WarrenError), c.session() as s:
            s.upload(src, "big", 2)
        c.broker.intercept = None

        def partial() -> list[Path]:
            return [p for w in c.workers.values() for p in w.incoming.dir.iterdir()]

        wait_for(lambda: on_disk(c, data), what="chunks of it on the workers")
        wait_for(lambda: not on_disk(c, data), what="the abandoned upload's chunks to go")
        assert not partial()
        with c.session() as s:
            wait_for(lambda: s.status().uploads_in_flight == 0, what="no upload in flight")
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
