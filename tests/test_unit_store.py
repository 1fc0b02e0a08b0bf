"""The worker's uploads (worker/incoming.py) and blob store (worker/blobs.py) on a real
disk: idempotent writes, verified atomic finish; and what keeps that disk tidy and shared:
the sweep of ``incoming/`` at start, scrub's pace."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from warren.config import Settings
from warren.errors import BrokerRefused
from warren.transport import Transport
from worker import scrub
from worker.blobs import BlobStore, CorruptUpload
from worker.incoming import Incoming
from worker.service import Worker

UID = "ab" * 16


def opened(root: Path) -> tuple[BlobStore, Incoming]:
    blobs = BlobStore(root)
    blobs.open()
    incoming = Incoming(root, blobs)
    incoming.open()
    return blobs, incoming


def finish(incoming: Incoming, sha256: str, size: int) -> Path:
    """Finish the upload whose chunks are all in, as the worker does, on this one thread."""
    return incoming.finish(UID, sha256, size, incoming.take_running(UID))


def test_chunks_in_any_order_with_repeats_make_the_file(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    data = b"0123456789" * 3
    pieces = [(0, 0, data[:10]), (2, 20, data[20:]), (1, 10, data[10:20])]
    counts = [incoming.write_chunk(UID, s, o, b, 3) for s, o, b in pieces + pieces[:1]]
    assert counts == [1, 2, 3, 3]  # the repeat is a no-op
    sha = hashlib.sha256(data).hexdigest()
    path = finish(incoming, sha, len(data))
    assert path.read_bytes() == data
    assert path == blobs.blob_path(sha)
    assert incoming.done_sha256(UID) == sha
    assert [b.sha256 for b in blobs.inventory()] == [sha]
    assert blobs.usage().files == 1 and blobs.usage().used_bytes == len(data)


def test_a_restarted_store_resumes_from_its_journal(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    incoming.write_chunk(UID, 0, 0, b"aaaa", 2)
    _, again = opened(tmp_path)  # a new process after a crash
    assert again.write_chunk(UID, 1, 4, b"bbbb", 2) == 2


def test_a_bad_hash_is_never_stored(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    incoming.write_chunk(UID, 0, 0, b"data", 2)
    with pytest.raises(CorruptUpload):
        finish(incoming, "00" * 32, 4)
    assert list(blobs.inventory()) == []
    assert not any(incoming.dir.iterdir())


def test_empty_file(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    incoming.write_chunk(UID, 0, 0, b"", 1)
    path = finish(incoming, hashlib.sha256(b"").hexdigest(), 0)
    assert path.read_bytes() == b""


def test_ids_never_become_paths(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    with pytest.raises(ValueError):
        incoming.write_chunk("../../etc/passwd", 0, 0, b"x", 1)
    with pytest.raises(ValueError):
        blobs.blob_path("../x")


def test_out_of_order_chunks_are_verified_by_reading_back(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    incoming.write_chunk(UID, 1, 4, b"bbbb", 2)
    incoming.write_chunk(UID, 0, 0, b"aaaa", 2)
    good = hashlib.sha256(b"aaaabbbb").hexdigest()
    assert finish(incoming, good, 8).read_bytes() == b"aaaabbbb"


def test_in_order_hash_still_catches_a_wrong_announced_hash(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    incoming.write_chunk(UID, 0, 0, b"aaaa", 2)
    incoming.write_chunk(UID, 1, 4, b"bbbb", 2)
    with pytest.raises(CorruptUpload):
        finish(incoming, hashlib.sha256(b"aaaabbbX").hexdigest(), 8)


def test_a_one_chunk_file_leaves_no_journal_and_can_be_stored_again(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    sha = hashlib.sha256(b"small").hexdigest()
    incoming.write_chunk(UID, 0, 0, b"small", 1)
    finish(incoming, sha, 5)
    assert not any(incoming.dir.iterdir())  # no .part, .seqs or .done left behind
    # A redelivery of its only chunk stores it again, identically, and counts once
    incoming.write_chunk(UID, 0, 0, b"small", 1)
    assert finish(incoming, sha, 5).read_bytes() == b"small"
    assert blobs.usage().files == 1


def blob(data: bytes) -> tuple[str, memoryview]:
    return hashlib.sha256(data).hexdigest(), memoryview(data)


def test_a_pack_stores_each_file_whole_and_again_is_a_no_op(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    files = [blob(b"first"), blob(b""), blob(b"first"), blob(b"x" * 5000)]
    blobs.put_blobs(files)
    blobs.put_blobs(files)  # a redelivered pack
    for sha, data in files:
        assert blobs.blob_path(sha).read_bytes() == bytes(data)
    assert blobs.usage().files == 3 and blobs.usage().used_bytes == 5 + 0 + 5000
    assert not any(incoming.dir.iterdir())


def test_a_pack_with_one_bad_hash_stores_nothing(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    with pytest.raises(CorruptUpload):
        blobs.put_blobs([blob(b"good"), ("00" * 32, memoryview(b"bad"))])
    assert list(blobs.inventory()) == []


def test_a_pack_cut_short_by_a_crash_leaves_nothing_at_restart(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    (incoming.dir / f"{'ab' * 32}.1234abcd.blob").write_bytes(b"half")
    opened(tmp_path)
    assert not any(incoming.dir.iterdir())


class RefusingBroker:
    """A transport whose broker refuses the login: the worker's run ends at its first
    connection, after what it does before connecting and before any thread starts."""

    tried = False

    def open(self, **_kw: Any) -> None:
        RefusingBroker.tried = True
        raise BrokerRefused("RabbitMQ refused the credentials")

    def close(self) -> None:
        pass


def test_a_starting_worker_removes_what_is_stale_in_incoming(tmp_path: Path) -> None:
    # Given a worker's incoming/ holding the partial data of an upload untouched for longer
    # than an upload may take, and that of one still under way
    blobs, incoming = opened(tmp_path)
    stale, fresh = incoming.dir / f"{'ab' * 16}.part", incoming.dir / f"{'cd' * 16}.part"
    stale.write_bytes(b"abandoned")
    fresh.write_bytes(b"under way")
    expiry = 3600.0
    an_hour_and_a_minute_ago = time.time() - expiry - 60
    os.utime(stale, (an_hour_and_a_minute_ago, an_hour_and_a_minute_ago))
    # When the worker starts (here with a broker that refuses it, so no scrub pass runs)
    settings = Settings(name="w1", data_dir=tmp_path, upload_expiry=expiry)
    worker = Worker(settings, threading.Event(), lambda _s, _n: cast(Transport, RefusingBroker()))
    with pytest.raises(BrokerRefused):
        worker.run()
    # Then the stale one is gone and the other kept
    assert RefusingBroker.tried
    assert sorted(p.name for p in incoming.dir.iterdir()) == [fresh.name]


class Clock:
    """A transport that only records what the scrubber schedules, for the test to run."""

    is_open = True

    def __init__(self) -> None:
        self.scheduled: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.scheduled.append((delay, callback))


def test_scrub_reads_no_faster_than_warren_scrub_rate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a stored blob of 3 MiB, scrubbed a MiB at a time at 512 KiB a second
    mib = 1024 * 1024
    blobs, incoming = opened(tmp_path)
    data = os.urandom(3 * mib)
    incoming.write_chunk(UID, 0, 0, data, 1)
    finish(incoming, hashlib.sha256(data).hexdigest(), len(data))
    monkeypatch.setattr(scrub, "SLICE", mib)
    # (and in incoming/ the partial data of an upload untouched for two hours)
    stale = incoming.dir / f"{'cd' * 16}.part"
    stale.write_bytes(b"abandoned")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    settings = Settings(name="w1", scrub_rate=512 * 1024, scrub_interval=3600, upload_expiry=3600)
    scrubber = scrub.Scrubber(settings, blobs, incoming.sweep, threading.Event())
    clock = Clock()
    conn = cast(Transport, clock)
    # When it runs one pass, each step when the one before scheduled it
    scrubber._step(conn)
    while scrubber.finished_at == 0:
        clock.scheduled[-1][1]()
    # Then after each MiB read it waits two seconds, 3 MiB in 6 s (then the pass ends and
    # it waits for the next), and the copy is good
    delays = [delay for delay, _ in clock.scheduled[:-1]]
    assert delays == [2.0, 2.0, 2.0, 0.0] and sum(delays) == len(data) / settings.scrub_rate
    assert blobs.damaged == 0
    # And the pass swept what was stale in incoming/
    assert not stale.exists()
