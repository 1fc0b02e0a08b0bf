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
from tests.stubcluster import FAST, StubCluster, holds_file, wait_for
from warren import messages as m
from warren.errors import NotFound, Refused, Unavailable, UsageError
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


def restore(c: StubCluster, name: str, dest: Path) -> bytes:
    with c.session() as s:
        s.download(name, dest, overwrite=True)
    return dest.read_bytes()


def test_upload_is_on_both_disks_and_restores_byte_for_byte(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = random_file(tmp_path / "a.bin", 5 * 64 * 1024 + 123)  # 6 chunks, the last short
    with stub.session() as s:
        result = s.upload(tmp_path / "a.bin", "a.bin", 2)
    assert len(result.chain) == 2 and set(result.confirmed) == set(result.chain)
    for worker in result.chain:
        assert stored(stub, worker, data) == data
    others = set(stub.workers) - set(result.chain)
    assert all(stored(stub, w, data) is None for w in others)
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


def test_every_chunk_delivered_twice_stores_one_good_copy(
    stub: StubCluster, tmp_path: Path
) -> None:
    def twice(msg: Message) -> list[Message]:
        return [msg, msg] if msg.type == m.CHUNK_TYPE else [msg]

    stub.broker.intercept = twice
    data = random_file(tmp_path / "d.bin", 4 * 64 * 1024)
    with stub.session() as s:
        result = s.upload(tmp_path / "d.bin", "d.bin", 2)
    stub.broker.intercept = None
    for worker in result.chain:
        assert stored(stub, worker, data) == data
    assert restore(stub, "d.bin", tmp_path / "out") == data


def test_chunks_arriving_out_of_order_still_make_the_file(
    stub: StubCluster, tmp_path: Path
) -> None:
    """The client's first chunk reaches the primary last."""
    held: list[Message] = []

    def reorder(msg: Message) -> list[Message]:
        if msg.type != m.CHUNK_TYPE or (msg.headers or {}).get("hop") != 0:
            return [msg]
        seq = int((msg.headers or {})["seq"])
        count = int((msg.headers or {})["chunk_count"])
        if seq == 0:
            held.append(msg)
            return []
        if seq == count - 1:
            mine = [h for h in held if h.queue == msg.queue]
            for h in mine:
                held.remove(h)
            return [msg, *mine]
        return [msg]

    stub.broker.intercept = reorder
    data = random_file(tmp_path / "o.bin", 5 * 64 * 1024)
    with stub.session() as s:
        result = s.upload(tmp_path / "o.bin", "o.bin", 2)
    stub.broker.intercept = None
    for worker in result.chain:
        assert stored(stub, worker, data) == data


def test_primary_losing_its_connection_mid_upload_loses_nothing(
    stub: StubCluster, tmp_path: Path
) -> None:
    seen: list[str] = []

    def drop_primary_at_third_chunk(msg: Message) -> list[Message]:
        if msg.type == m.CHUNK_TYPE and (msg.headers or {}).get("hop") == 0:
            seen.append(msg.queue)
            if len(seen) == 3:
                worker = msg.queue.split(".")[2]
                stub.broker.disconnect(lambda n: n == f"warren worker {worker} #{worker}")
        return [msg]

    stub.broker.intercept = drop_primary_at_third_chunk
    data = random_file(tmp_path / "p.bin", 8 * 64 * 1024)
    with stub.session() as s:
        result = s.upload(tmp_path / "p.bin", "p.bin", 2)
    stub.broker.intercept = None
    assert len(seen) >= 3, "the fault was never injected"
    for worker in result.chain:
        assert stored(stub, worker, data) == data
    assert restore(stub, "p.bin", tmp_path / "out") == data


def test_a_crash_between_write_and_ack_is_finished_by_the_restarted_worker(
    tmp_path: Path,
) -> None:
    """The primary dies while it verifies the last chunk (a slow disk); restarted on the
    same data, it finishes the replica from the redelivered chunk."""
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
                outcome.append(s.upload(tmp_path / "c.bin", "c.bin", 1))

        with c.session() as s:
            wait_for(lambda: sum(w.alive for w in s.status().workers) == 2, what="2 workers")
        # Make w1 the only choice: a one-replica upload goes to the roomiest, so stop w2.
        c.kill("w2")
        thread = threading.Thread(target=upload)
        thread.start()
        incoming = tmp_path / "workers" / "w1" / "incoming"
        wait_for(lambda: list(incoming.glob("*")), what="w1 to take in the file")
        time.sleep(0.3)  # inside the 1 s finalize: every chunk written, the last not acked
        c.kill("w1")
        c.start_worker("w1")
        thread.join(timeout=30)
        assert outcome and not isinstance(outcome[0], Exception), outcome
        assert stored(c, "w1", data) == data
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
        [entry] = s.files()
    new = (set(entry.replicas) - set(result.chain)).pop()
    assert stored(stub, new, data) == data


@pytest.mark.parametrize("kept_as", ["bytes", "frames"])
def test_restore_fails_over_when_a_copy_is_damaged(
    stub: StubCluster, tmp_path: Path, kept_as: str
) -> None:
    if kept_as == "bytes":
        data = random_file(tmp_path / "f.bin", 2 * 64 * 1024)
    else:  # text: kept as its frames, which a restore sends as they are
        data = b"GET /index.html 200\n" * 20_000
        (tmp_path / "f.bin").write_bytes(data)
    with stub.session() as s:
        result = s.upload(tmp_path / "f.bin", "f.bin", 2)
    for worker in result.chain:  # damage the copy that would be served first
        path = stub.workers[worker].blobs.find(hashlib.sha256(data).hexdigest())
        assert path is not None and (path.suffix == ".zst") == (kept_as == "frames")
        rotted = bytearray(path.read_bytes())
        rotted[-3:] = b"rot"
        path.write_bytes(bytes(rotted))
        break
    assert restore(stub, "f.bin", tmp_path / "out") == data
    # The worker found the damage as it read (never passing it off as good) and said so.
    said = [p.body for p in stub.broker.published if p.type == m.RestoreFailed.TYPE]
    assert len(said) == 1 and b"damaged" in said[0]


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
    assert all(stored(stub, w, data) == data for w in result.chain)
    assert all(not isinstance(o, Exception) for o in outcomes.values()), outcomes
    with stub.session() as s:
        listed = {f.name: f for f in s.files()}
    for (_, name), small in zip(items, smalls, strict=True):
        assert len(listed[name].replicas) == 2
        assert all(stored(stub, w, small) == small for w in listed[name].replicas)
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
        if msg.type == m.CHUNK_TYPE and (msg.headers or {}).get("hop") == 1:
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
    assert all(stored(stub, w, data) == data for w in result.chain)


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
