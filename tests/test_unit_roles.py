"""The manager, workers and client together on the in-memory broker: the protocol's cases
(duplicates, reordering, redelivery after a crash, a busy worker, a lost worker) in seconds.

What is asserted is what a user sees: bytes restored, replicas on the workers' disks,
workers alive or dead in ``status``, and where a bad message ended up.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from client.session import Progress
from tests.stubcluster import FAST, StubCluster, file_chunks, holds_file, wait_for
from warren import messages as m
from warren.errors import IntegrityError, NotFound, Refused, Unavailable, UsageError
from warren.testing import Message
from warren.topology import (
    DEAD_LETTER_QUEUE,
    MANAGER_EVENTS,
    MANAGER_REQUESTS,
    REQUESTS_MAX_LENGTH,
    worker_chunks,
)
from warren.transport import Confirm
from worker import intake


def random_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def stored(c: StubCluster, worker: str, data: bytes) -> bytes | None:
    """``data`` when ``worker`` keeps every sealed chunk of it, or None when it does not."""
    return data if holds_file(c, worker, hashlib.sha256(data).hexdigest()) else None


def good_copies(c: StubCluster, data: bytes, among: set[str] | None = None) -> list[int]:
    """For each sealed chunk of ``data`` (as its latest version lists them), on how many
    workers' disks (of ``among``) it is, as a blob whose bytes hash to its name. A file's
    chunks may lie on different workers (packs go to different chains)."""
    names = among if among is not None else set(c.workers)
    counts = []
    for chunk in file_chunks(c, hashlib.sha256(data).hexdigest()):
        n = 0
        for name in names:
            path = c.workers[name].blobs.blob_path(chunk.sha256)
            if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == chunk.sha256:
                n += 1
        counts.append(n)
    return counts


def on_disks(c: StubCluster, data: bytes, replicas: int) -> bool:
    """Every sealed chunk of ``data`` on ``replicas`` workers' disks, and no worker holds
    a piece of its plaintext."""
    counts = good_copies(c, data)
    return bool(counts) and set(counts) == {replicas} and not plaintext_on_workers(c, data)


def plaintext_on_workers(c: StubCluster, data: bytes) -> bool:
    probe = data[len(data) // 2 : len(data) // 2 + 64]
    return any(
        probe in path.read_bytes()
        for w in c.workers.values()
        for path in w.root.rglob("*")
        if path.is_file()
    )


def restore(c: StubCluster, name: str, dest: Path) -> bytes:
    with c.session() as s:
        s.download(name, dest, overwrite=True)
    return dest.read_bytes()


def test_upload_is_on_both_disks_and_restores_byte_for_byte(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = random_file(tmp_path / "a.bin", 5 * 64 * 1024 + 123)  # many chunks, several packs
    with stub.session() as s:
        result = s.upload(tmp_path / "a.bin", "a.bin", 2)
    assert len(result.chain) == 2 and set(result.confirmed) == set(result.chain)
    assert len(file_chunks(stub, result.sha256)) > 2
    assert on_disks(stub, data, 2)  # each chunk on two disks, no plaintext on any
    assert restore(stub, "a.bin", tmp_path / "out.bin") == data


def test_small_files_travel_in_packs_and_are_all_listed(stub: StubCluster, tmp_path: Path) -> None:
    items = []
    for i in range(40):
        random_file(tmp_path / f"f{i}", 1000 + i)
        items.append((tmp_path / f"f{i}", f"small/f{i}"))
    outcomes: dict[str, object] = {}
    with stub.session() as s:
        s.upload_many(items, 2, lambda _n: Progress(), outcomes.__setitem__)
        listed = {f.name: f for f in s.files()}
    assert all(not isinstance(o, Exception) for o in outcomes.values()), outcomes
    assert set(listed) == {name for _, name in items}
    assert all(len(f.replicas) == 2 for f in listed.values())
    packs = [
        p for p in stub.broker.published if p.type == m.PACK_TYPE and p.queue.endswith("chunks")
    ]
    assert packs, "no pack was sent: 40 small files went one by one"


def test_every_pack_delivered_twice_stores_one_good_copy(stub: StubCluster, tmp_path: Path) -> None:
    def twice(msg: Message) -> list[Message]:
        if msg.type == m.PACK_TYPE:
            delivered.append(msg)
            return [msg, msg]
        return [msg]

    delivered: list[Message] = []
    stub.broker.intercept = twice
    data = random_file(tmp_path / "d.bin", 4 * 64 * 1024)
    with stub.session() as s:
        s.upload(tmp_path / "d.bin", "d.bin", 2)
    stub.broker.intercept = None
    assert delivered
    assert on_disks(stub, data, 2)
    assert restore(stub, "d.bin", tmp_path / "out") == data


def test_packs_arriving_out_of_order_still_make_the_file(stub: StubCluster, tmp_path: Path) -> None:
    """The client's first pack (with the file's first chunk) reaches its primary after
    the second."""
    held: list[Message] = []
    passed: list[Message] = []

    def reorder(msg: Message) -> list[Message]:
        if msg.type != m.PACK_TYPE or (msg.headers or {}).get("hop") != 0:
            return [msg]
        if not held and not passed:
            held.append(msg)
            return []
        passed.append(msg)
        if held:
            return [msg, held.pop()]
        return [msg]

    stub.broker.intercept = reorder
    data = random_file(tmp_path / "o.bin", 5 * 64 * 1024)
    with stub.session() as s:
        s.upload(tmp_path / "o.bin", "o.bin", 2)
    stub.broker.intercept = None
    assert passed and not held
    assert on_disks(stub, data, 2)
    assert restore(stub, "o.bin", tmp_path / "out") == data


def test_primary_losing_its_connection_mid_upload_loses_nothing(
    stub: StubCluster, tmp_path: Path
) -> None:
    seen: list[str] = []

    def drop_primary_at_third_pack(msg: Message) -> list[Message]:
        if msg.type == m.PACK_TYPE and (msg.headers or {}).get("hop") == 0:
            seen.append(msg.queue)
            if len(seen) == 3:
                worker = msg.queue.split(".")[2]
                stub.broker.disconnect(lambda n: n == f"warren worker {worker} #{worker}")
        return [msg]

    stub.broker.intercept = drop_primary_at_third_pack
    data = random_file(tmp_path / "p.bin", 8 * 64 * 1024)
    with stub.session() as s:
        s.upload(tmp_path / "p.bin", "p.bin", 2)
    stub.broker.intercept = None
    assert len(seen) >= 3, "the fault was never injected"
    assert on_disks(stub, data, 2)
    assert restore(stub, "p.bin", tmp_path / "out") == data


def test_a_crash_between_write_and_ack_is_finished_by_the_restarted_worker(
    tmp_path: Path,
) -> None:
    """The primary dies while it stores a pack (a slow disk); restarted on the same data,
    it stores the redelivered pack and the upload finishes."""
    c = StubCluster(tmp_path)
    try:
        c.start_manager()
        c.start_worker("w1", finalize_delay=1.0)
        c.start_worker("w2")
        c.wait_for_manager()
        data = random_file(tmp_path / "c.bin", 3 * 64 * 1024)
        outcome: list[object] = []

        def upload() -> None:
            with c.session() as s:
                try:
                    outcome.append(s.upload(tmp_path / "c.bin", "c.bin", 1))
                except Exception as exc:  # noqa: BLE001 - shown by the assert below
                    outcome.append(exc)

        with c.session() as s:
            wait_for(lambda: sum(w.alive for w in s.status().workers) == 2, what="2 workers")
        # Make w1 the only choice: packs go to the roomiest, so stop w2 (and wait till the
        # manager knows it is gone: each pack is placed on its own)
        c.kill("w2")
        with c.session() as s:
            wait_for(lambda: [w.alive for w in s.status().workers] == [True, False], what="w2 dead")
        thread = threading.Thread(target=upload)
        thread.start()
        wait_for(
            lambda: any(p.queue == worker_chunks("w1") for p in list(c.broker.published)),
            what="a pack sent to w1",
        )
        time.sleep(0.3)  # inside the 1 s finalize: the pack taken in, not stored nor acked
        c.kill("w1")
        c.start_worker("w1")
        thread.join(timeout=30)
        assert outcome and not isinstance(outcome[0], Exception), outcome
        assert on_disks(c, data, 1)
        assert restore(c, "c.bin", tmp_path / "out") == data
    finally:
        c.stop_all()


def test_a_busy_worker_is_never_taken_for_dead(stub: StubCluster, tmp_path: Path) -> None:
    """Ingest blocked for three times ``dead_after`` on every chunk's write: heartbeats
    come from their own thread and connection, so no worker is reported dead."""
    dead_after = stub.settings.dead_after
    for worker in stub.workers.values():
        write = worker.incoming.write_chunk

        def slow_write(*args: object, _write: object = write) -> int:
            time.sleep(dead_after * 1.5)
            return _write(*args)  # type: ignore[operator, no-any-return]

        worker.incoming.write_chunk = slow_write  # type: ignore[method-assign, assignment]
    random_file(tmp_path / "busy.bin", 64 * 1024)  # one chunk: 1.5 s on each of two hops
    deaths: list[str] = []
    done = threading.Event()

    def watch() -> None:
        with stub.session() as s:
            while not done.is_set():
                deaths.extend(w.name for w in s.status().workers if not w.alive)
                s.idle(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with stub.session() as s:
            s.upload(tmp_path / "busy.bin", "busy.bin", 2)
    finally:
        done.set()
        watcher.join()
    assert deaths == []


def test_a_lost_worker_s_files_get_their_replicas_back(stub: StubCluster, tmp_path: Path) -> None:
    data = random_file(tmp_path / "r.bin", 3 * 64 * 1024)
    with stub.session() as s:
        result = s.upload(tmp_path / "r.bin", "r.bin", 2)
    lost = result.chain[0]
    stub.kill(lost)
    with stub.session() as s:

        def repaired() -> bool:
            [f] = s.files()
            return len(f.replicas) == 2 and lost not in f.replicas

        wait_for(repaired, what="a second copy elsewhere")
    # Every chunk is on two live workers' disks again (whichever held it on the lost one)
    live = set(stub.workers) - {lost}
    assert set(good_copies(stub, data, live)) == {2}
    assert restore(stub, "r.bin", tmp_path / "out") == data


def rot(path: Path) -> None:
    rotted = bytearray(path.read_bytes())
    rotted[-3:] = b"rot"
    path.write_bytes(bytes(rotted))


@pytest.mark.parametrize("kept_as", ["bytes", "text"])
def test_restore_fails_over_when_a_copy_of_a_chunk_is_damaged(
    stub: StubCluster, tmp_path: Path, kept_as: str
) -> None:
    """The copy of the file's first chunk that would be served first (the manager picks
    the least busy holder, then by name) is damaged: the restore reads the other."""
    if kept_as == "bytes":
        data = random_file(tmp_path / "f.bin", 2 * 64 * 1024)
    else:  # text: sealed, it is no longer kept as compressed frames
        data = b"GET /index.html 200\n" * 20_000
        (tmp_path / "f.bin").write_bytes(data)
    with stub.session() as s:
        s.upload(tmp_path / "f.bin", "f.bin", 2)
    first = file_chunks(stub, hashlib.sha256(data).hexdigest())[0]
    holders = sorted(n for n, w in stub.workers.items() if w.blobs.find(first.sha256))
    assert len(holders) == 2
    rot(stub.workers[holders[0]].blobs.blob_path(first.sha256))
    assert restore(stub, "f.bin", tmp_path / "out") == data
    # The worker found the damage as it read (never passing it off as good) and said so
    # (once for each time the chunk was asked: text repeats, and so do its chunks).
    said = [
        m.RestoreFailed.decode(p.body)
        for p in stub.broker.published
        if p.type == m.RestoreFailed.TYPE
    ]
    assert said and all(f.worker == holders[0] and "damaged" in f.reason for f in said)
    assert len(said) == 1 or kept_as == "text"


def test_a_restore_with_every_copy_of_a_chunk_damaged_is_exit_5(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = random_file(tmp_path / "f.bin", 2 * 64 * 1024)
    with stub.session() as s:
        s.upload(tmp_path / "f.bin", "f.bin", 2)
    last = file_chunks(stub, hashlib.sha256(data).hexdigest())[-1]
    for w in stub.workers.values():
        if w.blobs.find(last.sha256):
            rot(w.blobs.blob_path(last.sha256))
    with pytest.raises(IntegrityError) as lost:
        restore(stub, "f.bin", tmp_path / "out")
    assert lost.value.exit_code == 5
    assert "no good copy" in str(lost.value) and "\n" not in str(lost.value)
    assert not (tmp_path / "out").exists()


def test_garbage_is_dead_lettered_and_the_manager_keeps_answering(
    stub: StubCluster, tmp_path: Path
) -> None:
    raw = stub.broker.connect(stub.settings, "mallory")
    raw.open()
    raw.publish(MANAGER_REQUESTS, b"\xff not json", type=m.ListRequest.TYPE)  # no reply_to
    raw.publish(worker_chunks("w1"), b"x", type=m.CHUNK_TYPE, headers={"seq": "nope"})
    wait_for(lambda: stub.broker.depth(DEAD_LETTER_QUEUE) == 2, what="two dead letters")
    raw.close()
    with stub.session() as s, pytest.raises(NotFound):
        s.download("nothing-here", tmp_path / "x")  # the manager still answers


def refuse_forwards(stub: StubCluster, until: float) -> list[float]:
    """As while a quorum queue elects its leader: the backups' queues refuse (nack) every
    forward until the monotonic time ``until``. Returns the refusals' times."""
    refused: list[float] = []

    def refuse(msg: Message) -> bool:
        forward = msg.type in (m.CHUNK_TYPE, m.PACK_TYPE) and (msg.headers or {}).get("hop") == 1
        if forward and time.monotonic() < until:
            refused.append(time.monotonic())
            return True
        return False

    stub.broker.refuse = refuse
    return refused


def test_a_forward_refused_for_a_few_seconds_is_tried_again_and_the_upload_succeeds(
    stub: StubCluster, tmp_path: Path
) -> None:
    # Given the backups' queues refuse forwards for 1.5 s, as during a leader election
    data = random_file(tmp_path / "x.bin", 3 * 64 * 1024)
    items = [(tmp_path / f"s{i}", f"small/s{i}") for i in range(10)]
    smalls = [random_file(path, 500 + i) for i, (path, _) in enumerate(items)]
    refused = refuse_forwards(stub, time.monotonic() + 1.5)
    # When a file and ten small files (a pack) are uploaded with 2 replicas
    outcomes: dict[str, object] = {}
    with stub.session() as s:
        result = s.upload(tmp_path / "x.bin", "x.bin", 2)
        s.upload_many(items, 2, lambda _n: Progress(), outcomes.__setitem__)
    # Then both succeed: every replica is on its disk, after refusals over half a second
    assert set(result.confirmed) == set(result.chain)
    assert on_disks(stub, data, 2)
    assert all(not isinstance(o, Exception) for o in outcomes.values()), outcomes
    with stub.session() as s:
        listed = {f.name: f for f in s.files()}
    for (_, name), small in zip(items, smalls, strict=True):
        assert len(listed[name].replicas) == 2
        assert on_disks(stub, small, 2)
    assert refused and refused[-1] - refused[0] > 0.5, refused


def test_a_forward_refused_past_every_pause_is_tried_again_on_a_new_connection(
    stub: StubCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the backups' queues refuse every forward from the connections open now (as a
    # channel stuck after a quorum queue's leader moved), and short pauses
    monkeypatch.setattr(intake, "FORWARD_PAUSES", (0.05, 0.1))
    data = random_file(tmp_path / "x.bin", 3 * 64 * 1024)
    first = {id(c) for c in stub.broker.connections}
    refused: list[str] = []

    def refuse(msg: Message) -> bool:
        if msg.type == m.PACK_TYPE and (msg.headers or {}).get("hop") == 1:
            senders = [c for c in stub.broker.connections if c.name == msg.sender]
            if any(id(c) in first for c in senders):
                refused.append(msg.sender)
                return True
        return False

    stub.broker.refuse = refuse
    # When a file is uploaded with 2 replicas
    with stub.session() as s:
        result = s.upload(tmp_path / "x.bin", "x.bin", 2)
    # Then the primary, refused past every pause, reconnected, and both replicas are on disk
    assert refused
    assert set(result.confirmed) == set(result.chain)
    assert on_disks(stub, data, 2)


def test_a_worker_that_cannot_forward_makes_the_upload_unavailable_not_damaged(
    stub: StubCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backup's queue refuses the forward for good (past every pause). The client says
    the cluster is unavailable (exit 4), not that bytes were bad."""
    monkeypatch.setattr(intake, "FORWARD_PAUSES", (0.05, 0.1))
    random_file(tmp_path / "x.bin", 3 * 64 * 1024)
    refused = refuse_forwards(stub, float("inf"))
    with stub.session() as s, pytest.raises(Unavailable) as failure:
        s.upload(tmp_path / "x.bin", "x.bin", 2)
    assert "could not forward" in str(failure.value)
    assert failure.value.exit_code == 4
    assert len(refused) >= 3  # the first try and one after each pause


def test_a_restore_whose_disk_fills_up_ends_in_one_sentence_and_leaves_nothing(
    stub: StubCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(300_000)  # five chunks of 64 KiB
    (tmp_path / "f").write_bytes(data)
    out = tmp_path / "restored"
    out.mkdir()
    with stub.session() as s:
        s.upload(tmp_path / "f", "f", 2)
        writes = 0
        real_pwrite = os.pwrite

        def pwrite(fd: int, data: bytes, offset: int) -> int:
            nonlocal writes
            writes += 1
            if writes > 2:  # the disk is full from the third chunk on
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_pwrite(fd, data, offset)

        monkeypatch.setattr(os, "pwrite", pwrite)  # the client writes a restore with it
        with pytest.raises(UsageError, match="No space left on device") as failed:
            s.download("f", out / "f")
    assert "\n" not in str(failed.value)
    assert list(out.iterdir()) == []  # neither the file nor its temporary part


def test_a_manager_that_just_connected_is_waited_out_while_workers_are_silent(
    stub: StubCluster, tmp_path: Path
) -> None:
    # Given a manager and its workers all gone for longer than dead_after (as while the
    # broker restarts), and a manager back first, before any worker
    random_file(tmp_path / "x.bin", 1000)
    for key in ["manager", *stub.workers]:
        stub.kill(key)
    time.sleep(stub.settings.dead_after + 0.2)
    stub.start_manager()
    # When an upload asks for 2 replicas at once, and the workers come back a moment later
    back = threading.Timer(0.3, lambda: [stub.start_worker(n) for n in list(stub.workers)])
    back.start()
    try:
        with stub.session() as s:
            # Then the client waits that out (the manager says "busy", not "refused") and
            # the upload is stored on two workers
            assert len(s.upload(tmp_path / "x.bin", "x.bin", 2).confirmed) == 2
    finally:
        back.cancel()
        back.join()
    # And when no worker comes back within dead_after of the manager's start, it is a
    # refusal (exit 6), said after the client waited
    for key in ["manager", *stub.workers]:
        stub.kill(key)
    time.sleep(stub.settings.dead_after + 0.2)
    stub.start_manager()
    with stub.session() as s, pytest.raises(Refused) as late:
        s.upload(tmp_path / "x.bin", "y.bin", 2)
    assert late.value.exit_code == 6 and "only 0 workers are alive" in str(late.value)


def test_heartbeats_queued_while_the_manager_was_down_do_not_bring_dead_workers_back(
    stub: StubCluster,
) -> None:
    # Given a manager down while its workers go on beating (their heartbeats queue up),
    # then the workers gone too, for longer than dead_after
    stub.kill("manager")
    time.sleep(0.5)
    queued = stub.broker.queues[MANAGER_EVENTS].messages
    assert len(queued) >= 4, "no heartbeat waited for the manager"
    for name in list(stub.workers):
        stub.kill(name)
    time.sleep(stub.settings.dead_after + 0.2)
    # When the manager comes back and reads what waited for it, and then a heartbeat of
    # now from another worker (read after those: one queue, one consumer)
    stub.start_manager()
    beat = m.Heartbeat(worker="w9", free_bytes=10**12, used_bytes=0, files=0)
    later = stub.broker.connect(stub.settings, "a worker beating now")
    later.open()
    later.publish(MANAGER_EVENTS, beat.encode(), type=beat.TYPE, persistent=False)
    # Then only that one is alive: heartbeats older than dead_after said nothing of now
    with stub.session() as s:
        wait_for(lambda: any(w.alive for w in s.status().workers), what="the later heartbeat")
        assert [w.name for w in s.status().workers if w.alive] == ["w9"]
    later.close()


def test_a_request_its_queue_refuses_is_try_again_not_a_manager_that_never_ran(
    stub: StubCluster, tmp_path: Path
) -> None:
    # Given the manager's request queue refusing (nacking) what is published to it, as a
    # quorum queue does while it elects a leader
    random_file(tmp_path / "x.bin", 1000)
    stub.broker.refuse = lambda msg: msg.queue == MANAGER_REQUESTS
    # When a client asks for a listing, and to upload (asking again for up to 1 s)
    with stub.session(request_timeout=1.0) as s:
        with pytest.raises(Unavailable) as listing:
            s.files()
        with pytest.raises(Unavailable) as upload:
            s.upload(tmp_path / "x.bin", "x.bin", 2)
    # Then both say try again (exit 4), not that the manager never ran here
    for exc in (listing.value, upload.value):
        assert exc.exit_code == 4
        assert "the manager is busy" in str(exc) and "try again" in str(exc)
        assert "never run" not in str(exc)
    # And once the queue takes requests again, the upload succeeds
    stub.broker.refuse = None
    with stub.session() as s:
        assert len(s.upload(tmp_path / "x.bin", "x.bin", 2).confirmed) == 2


def test_a_full_request_queue_is_busy_until_the_timeout_then_exit_4(
    stub: StubCluster,
) -> None:
    # Given the manager gone and its request queue full to its bound (a client flooding it)
    stub.kill("manager")
    flood = stub.broker.connect(FAST, "flood")
    flood.open()
    results: list[Confirm] = []
    for _ in range(REQUESTS_MAX_LENGTH + 1):
        flood.publish(MANAGER_REQUESTS, b"{}", type="list", on_confirm=results.append)
    flood.poll_confirms()
    # Then RabbitMQ (here the stub) took the bound's worth and refused the one past it
    assert results.count(Confirm.ACK) == REQUESTS_MAX_LENGTH
    assert results[-1] is Confirm.NACK
    assert stub.broker.depth(MANAGER_REQUESTS) == REQUESTS_MAX_LENGTH
    # And another client asking for a listing is told busy, once its timeout has run out
    started = time.monotonic()
    with stub.session(request_timeout=1.0) as s, pytest.raises(Unavailable) as caught:
        s.files()
    assert time.monotonic() - started >= 0.9  # it asked again, for about its timeout
    assert caught.value.exit_code == 4
    assert "after 1 s of asking, the manager is busy" in str(caught.value)
    flood.close()
