"""A worker whose disk fills up, on the in-memory broker: writing a chunk, storing a pack
or appending its records. The upload fails at once as "unavailable" (exit 4) and names the
worker, instead of waiting out the transfer timeout; the worker lives on, keeps nothing of
the upload, the manager releases its reservation, and once there is room again the same
upload goes through.

The disk is a store method (or the record append) that raises ENOSPC, as a full disk does.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from client.session import Progress
from manager.chains import HEADROOM
from tests.stubcluster import StubCluster, wait_for
from warren.errors import Unavailable, WarrenError
from worker import intake
from worker.blobs import BlobStore, Usage
from worker.records import LOG
from worker.records import append_records as real_append

FILE = 300_000  # many chunks, several packs of at most 64 KiB
FULL = "w2"  # the worker whose disk fills


def enospc(*_: Any, **__: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def little_room(stub: StubCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every worker reports room for one file of FILE bytes and a half: a reservation the
    manager did not release makes a second upload to every worker refused."""
    room = HEADROOM + FILE * 3 // 2
    for w in stub.workers.values():
        blobs = w.blobs

        def usage(blobs: BlobStore = blobs) -> Usage:
            return dataclasses.replace(BlobStore.usage(blobs), free_bytes=room)

        monkeypatch.setattr(blobs, "usage", usage)
    with stub.session() as s:
        wait_for(
            lambda: all(w.free_bytes == room for w in s.status().workers),
            what="the workers' small free space",
        )


def failed_at_once(stub: StubCluster, upload: Callable[[], object]) -> WarrenError:
    """The upload fails as unavailable, naming the full worker and its disk, well before
    the transfer timeout; the worker's thread lives on."""
    start = time.monotonic()
    with pytest.raises(Unavailable) as failure:
        upload()
    took = time.monotonic() - start
    assert took < stub.settings.transfer_timeout / 2, f"{took:.1f} s: the timeout, not the worker"
    assert failure.value.exit_code == 4
    assert FULL in str(failure.value) and "No space left on device" in str(failure.value)
    assert stub._threads[FULL].is_alive()
    return failure.value


def nothing_left(stub: StubCluster) -> None:
    """No worker keeps partial data of the failed upload, the full one's space accounting
    is its disk's, and the manager has no upload in flight any more."""

    def clean() -> bool:
        return not any(any(w.incoming.dir.iterdir()) for w in stub.workers.values())

    wait_for(clean, timeout=5, what="every worker's incoming/ emptied")
    store = stub.workers[FULL].blobs
    blobs = [p for p in store.dir.rglob("*") if p.is_file()]
    usage = BlobStore.usage(store)
    assert (usage.used_bytes, usage.files) == (sum(p.stat().st_size for p in blobs), len(blobs))
    with stub.session() as s:
        wait_for(lambda: s.status().uploads_in_flight == 0, timeout=5, what="no upload in flight")


def upload_to_all(stub: StubCluster, path: Path, name: str) -> None:
    with stub.session() as s:
        result = s.upload(path, name, 4)
    assert set(result.confirmed) == set(stub.workers)


def upload_many_to_all(stub: StubCluster, items: list[tuple[Path, str]]) -> None:
    outcomes: dict[str, object] = {}
    with stub.session() as s:
        s.upload_many(items, 4, lambda _n: Progress(), outcomes.__setitem__)
    errors = [o for o in outcomes.values() if isinstance(o, WarrenError)]
    if errors:
        raise errors[0]


def test_a_chunk_write_on_a_full_disk_fails_the_upload_at_once_and_leaves_nothing(
    stub: StubCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file cut into many chunks, sent in several packs: w2's disk fills after its first
    pack."""
    # Given every worker has room for one upload, and w2's disk fills after one pack
    little_room(stub, monkeypatch)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(FILE))
    blobs = stub.workers[FULL].blobs
    real_put = blobs.put_blobs
    writes = 0

    def put_blobs(*args: Any, **kw: Any) -> None:
        nonlocal writes
        writes += 1
        if writes > 1:
            enospc()
        real_put(*args, **kw)

    monkeypatch.setattr(blobs, "put_blobs", put_blobs)
    # When the file is uploaded to every worker: it fails at once, naming w2's full disk
    failed_at_once(stub, lambda: upload_to_all(stub, src, "big.bin"))
    assert writes > 1
    # Then nothing of it is left anywhere and its reservation is gone
    nothing_left(stub)
    # And once w2 has room again, the same upload to every worker is taken and stored
    monkeypatch.setattr(blobs, "put_blobs", real_put)
    upload_to_all(stub, src, "big.bin")


def test_a_pack_stored_on_a_full_disk_fails_its_files_at_once_and_leaves_nothing(
    stub: StubCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given w2's disk fills once a pack's files are written, as it makes their folders
    items = []
    for i in range(5):
        (tmp_path / f"s{i}").write_bytes(os.urandom(1000 + i))
        items.append((tmp_path / f"s{i}", f"small/s{i}"))
    monkeypatch.setattr(stub.workers[FULL].blobs, "_folder", enospc)
    # When the five small files (one pack) are uploaded to every worker: each fails at once
    failed_at_once(stub, lambda: upload_many_to_all(stub, items))
    # Then nothing of them is left on w2 and the manager has nothing in flight
    nothing_left(stub)
    # And once w2 has room again, they are stored
    monkeypatch.undo()
    upload_many_to_all(stub, items)


def test_records_that_cannot_be_appended_fail_the_uploads_they_place(
    stub: StubCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given every worker has room for one upload, and w2 cannot append to records.log
    little_room(stub, monkeypatch)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(FILE))
    full = stub.workers[FULL].root

    def append_records(root: Path, lines: list[dict[str, Any]]) -> None:
        if root == full:
            enospc()
        real_append(root, lines)

    monkeypatch.setattr(intake, "append_records", append_records)
    # When a file is uploaded to every worker: it fails at once, naming w2's full disk
    failed_at_once(stub, lambda: upload_to_all(stub, src, "big.bin"))
    # Then nothing of it is left and its reservation is gone
    nothing_left(stub)
    # And once w2 can write again, the same upload to every worker is taken and stored
    monkeypatch.setattr(intake, "append_records", real_append)
    upload_to_all(stub, src, "big.bin")
    with stub.session() as s:
        assert [f.name for f in s.files()] == ["big.bin"]


def test_a_deletion_that_cannot_be_recorded_is_recorded_once_there_is_room(
    stub: StubCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a file on every worker, and w2 that cannot append to records.log
    monkeypatch.setattr(intake, "RECORD_PAUSE", 0.1)
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(1000))
    upload_to_all(stub, src, "f.bin")
    log = stub.workers[FULL].root / LOG
    full = log.parent
    refused = 0

    def append_records(root: Path, lines: list[dict[str, Any]]) -> None:
        nonlocal refused
        if root == full:
            refused += 1
            enospc()
        real_append(root, lines)

    monkeypatch.setattr(intake, "append_records", append_records)

    def forgets() -> int:  # (an owner's first key already forgets a record of its own)
        return log.read_text().count('"forget":')

    before = forgets()
    # When the file is deleted: w2 tries again and again to record it, and lives on
    with stub.session() as s:
        s.delete("f.bin")
    wait_for(lambda: refused >= 3, timeout=5, what="w2 trying again")
    assert forgets() == before
    assert stub._threads[FULL].is_alive()
    # Then once it can write again, the deletion is in its records
    monkeypatch.setattr(intake, "append_records", real_append)
    wait_for(lambda: forgets() > before, timeout=5, what="the deletion recorded")
