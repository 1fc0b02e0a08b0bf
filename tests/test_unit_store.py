"""The worker's chunk store on a real disk: idempotent writes, verified atomic finish."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from worker.store import ChunkStore, CorruptUpload

UID = "ab" * 16


def test_chunks_in_any_order_with_repeats_make_the_file(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.open()
    data = b"0123456789" * 3
    pieces = [(0, 0, data[:10]), (2, 20, data[20:]), (1, 10, data[10:20])]
    counts = [store.write_chunk(UID, s, o, b, 3) for s, o, b in pieces + pieces[:1]]
    assert counts == [1, 2, 3, 3]  # the repeat is a no-op
    sha = hashlib.sha256(data).hexdigest()
    path = store.finalize(UID, sha, len(data))
    assert path.read_bytes() == data
    assert path == store.blob_path(sha)
    assert store.done_sha256(UID) == sha
    assert [b.sha256 for b in store.inventory()] == [sha]
    assert store.usage().files == 1 and store.usage().used_bytes == len(data)


def test_a_restarted_store_resumes_from_its_journal(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.open()
    store.write_chunk(UID, 0, 0, b"aaaa", 2)
    again = ChunkStore(tmp_path)  # a new process after a crash
    again.open()
    assert again.write_chunk(UID, 1, 4, b"bbbb", 2) == 2


def test_a_bad_hash_is_never_stored(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.open()
    store.write_chunk(UID, 0, 0, b"data", 2)
    with pytest.raises(CorruptUpload):
        store.finalize(UID, "00" * 32, 4)
    assert list(store.inventory()) == []
    assert not any(store.incoming.iterdir())


def test_empty_file(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.open()
    store.write_chunk(UID, 0, 0, b"", 1)
    path = store.finalize(UID, hashlib.sha256(b"").hexdigest(), 0)
    assert path.read_bytes() == b""


def test_ids_never_become_paths(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.open()
    with pytest.raises(ValueError):
        store.write_chunk("../../etc/passwd", 0, 0, b"x", 1)
    with pytest.raises(ValueError):
        store.blob_path("../x")


def test_out_of_order_chunks_are_verified_by_reading_back(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.open()
    store.write_chunk(UID, 1, 4, b"bbbb", 2)
    store.write_chunk(UID, 0, 0, b"aaaa", 2)
    good = hashlib.sha256(b"aaaabbbb").hexdigest()
    assert store.finalize(UID, good, 8).read_bytes() == b"aaaabbbb"


def test_in_order_hash_still_catches_a_wrong_announced_hash(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.open()
    store.write_chunk(UID, 0, 0, b"aaaa", 2)
    store.write_chunk(UID, 1, 4, b"bbbb", 2)
    with pytest.raises(CorruptUpload):
        store.finalize(UID, hashlib.sha256(b"aaaabbbX").hexdigest(), 8)


def test_a_one_chunk_file_leaves_no_journal_and_can_be_stored_again(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.open()
    sha = hashlib.sha256(b"small").hexdigest()
    store.write_chunk(UID, 0, 0, b"small", 1)
    store.finalize(UID, sha, 5)
    assert not any(store.incoming.iterdir())  # no .part, .seqs or .done left behind
    # A redelivery of its only chunk stores it again, identically, and counts once
    store.write_chunk(UID, 0, 0, b"small", 1)
    assert store.finalize(UID, sha, 5).read_bytes() == b"small"
    assert store.usage().files == 1


def blob(data: bytes) -> tuple[str, memoryview]:
    return hashlib.sha256(data).hexdigest(), memoryview(data)


def test_a_pack_stores_each_file_whole_and_again_is_a_no_op(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.open()
    files = [blob(b"first"), blob(b""), blob(b"first"), blob(b"x" * 5000)]
    store.put_blobs(files)
    store.put_blobs(files)  # a redelivered pack
    for sha, data in files:
        assert store.blob_path(sha).read_bytes() == bytes(data)
    assert store.usage().files == 3 and store.usage().used_bytes == 5 + 0 + 5000
    assert not any(store.incoming.iterdir())


def test_a_pack_with_one_bad_hash_stores_nothing(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.open()
    with pytest.raises(CorruptUpload):
        store.put_blobs([blob(b"good"), ("00" * 32, memoryview(b"bad"))])
    assert list(store.inventory()) == []


def test_a_pack_cut_short_by_a_crash_leaves_nothing_at_restart(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    store.open()
    (store.incoming / f"{'ab' * 32}.1234abcd.blob").write_bytes(b"half")
    ChunkStore(tmp_path).open()
    assert not any(store.incoming.iterdir())
