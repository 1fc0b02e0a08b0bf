"""Content kept as its frames (worker/frames.py) on a real disk: the upload's records as its
journal through crashes and redeliveries, the finished file in chunk order, damage found
by every reader, and what an operator's ``zstd -dc`` makes of it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.cluster import stored_content
from warren import compression
from warren.messages import ZSTD
from worker import frames
from worker.store import ChunkStore, CorruptUpload

UID = "cd" * 16
CHUNK = 64 * 1024


def text(size: int) -> bytes:
    lines = b"".join(b"GET /api/items/%d HTTP/1.1 200 %d\n" % (i, i * 7) for i in range(size))
    return lines[:size]


def pieces(data: bytes) -> list[tuple[int, int, bytes]]:
    return [(n, at, data[at : at + CHUNK]) for n, at in enumerate(range(0, len(data), CHUNK))]


def write(store: ChunkStore, data: bytes, seqs: list[int]) -> int:
    """Write those chunks of ``data`` as a client sends them: each compressed when it
    shrinks. Returns how many chunks the store has."""
    chunks = pieces(data)
    got = 0
    for seq in seqs:
        _, offset, part = chunks[seq]
        wire = compression.encode(part)
        got = store.write_chunk(UID, seq, offset, part, len(chunks), wire, len(data))
    return got


def opened(root: Path) -> ChunkStore:
    store = ChunkStore(root)
    store.open()
    return store


def test_text_is_kept_as_frames_that_zstd_reads_back(tmp_path: Path) -> None:
    store = opened(tmp_path)
    data = text(5 * CHUNK + 99)
    assert write(store, data, [0, 1, 2, 3, 4, 5]) == 6
    sha = hashlib.sha256(data).hexdigest()
    path = store.finalize(UID, sha, len(data))
    assert path.name == sha + ".zst" and path.stat().st_size < len(data) / 3
    assert stored_content(path) == data
    if shutil.which("zstd"):  # the operator's check, as docs/operations.md gives it
        out = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True)
        assert out.stdout == data
    assert store.find(sha) == path and store.check(sha, len(data)) is None
    assert [(b.sha256, b.size) for b in store.inventory()] == [(sha, len(data))]
    assert store.usage().used_bytes == path.stat().st_size  # the disk's bytes
    assert opened(tmp_path).usage().used_bytes == path.stat().st_size  # after a restart too
    assert store.done_sha256(UID) == sha
    assert not list(store.incoming.glob("*.zpart"))


def test_a_crash_mid_record_loses_only_that_record(tmp_path: Path) -> None:
    store = opened(tmp_path)
    data = text(4 * CHUNK)
    write(store, data, [0, 1])
    zpart = store.incoming / f"{UID}.zpart"
    with open(zpart, "ab") as f:  # chunk 2's record, cut short by the crash
        f.write(b"".join(bytes(p) for p in frames.chunk_record(2, CHUNK, b"x" * 999, ZSTD))[:500])
    again = opened(tmp_path)  # the restarted worker
    assert again.have(UID) == ((0, 1), False)
    assert write(again, data, [2, 3]) == 4
    sha = hashlib.sha256(data).hexdigest()
    assert stored_content(again.finalize(UID, sha, len(data))) == data


def test_chunks_out_of_order_after_a_restart_are_put_in_order(tmp_path: Path) -> None:
    store = opened(tmp_path)
    data = text(4 * CHUNK + 5)
    write(store, data, [0, 3])
    again = opened(tmp_path)
    assert write(again, data, [4, 3, 1, 2]) == 5  # 3 again is a no-op
    sha = hashlib.sha256(data).hexdigest()
    path = again.finalize(UID, sha, len(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert [c.seq for c, _ in frames.chunks(fd)] == [0, 1, 2, 3, 4]
    finally:
        os.close(fd)
    assert again.check(sha, len(data)) is None


def test_a_wrong_hash_or_size_is_never_kept(tmp_path: Path) -> None:
    store = opened(tmp_path)
    data = text(3 * CHUNK)
    write(store, data, [0, 1, 2])
    with pytest.raises(CorruptUpload):
        store.finalize(UID, "00" * 32, len(data))
    assert list(store.inventory()) == [] and not any(store.incoming.iterdir())
    # Chunks that cover more than the file their first chunk announced.
    store.write_chunk(UID, 0, 0, data[:CHUNK], 2, compression.encode(data[:CHUNK]), 2 * CHUNK)
    more = data[:CHUNK] * 2
    store.write_chunk(UID, 1, CHUNK, more, 2, compression.encode(more), 3 * CHUNK)
    whole = data[:CHUNK] * 3
    with pytest.raises(CorruptUpload):
        store.finalize(UID, hashlib.sha256(whole).hexdigest(), len(whole))
    assert list(store.inventory()) == []


def test_a_damaged_frame_is_found_by_check_and_by_every_reader(tmp_path: Path) -> None:
    store = opened(tmp_path)
    data = text(3 * CHUNK)
    write(store, data, [0, 1, 2])
    sha = hashlib.sha256(data).hexdigest()
    path = store.finalize(UID, sha, len(data))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert "does not match its digest" in (store.check(sha, len(data)) or "")
    with pytest.raises(frames.Damaged):
        b"".join(frames.content(path))
    store.quarantine(sha)
    assert store.find(sha) is None and store.damaged == 1
    assert list((tmp_path / "quarantine").iterdir())[0].name.startswith(sha + ".zst.")


def test_content_stored_both_ways_is_kept_once(tmp_path: Path) -> None:
    store = opened(tmp_path)
    data = text(3 * CHUNK)
    sha = hashlib.sha256(data).hexdigest()
    store.put_blobs([(sha, memoryview(data))])  # as a pack's file: its own bytes
    write(store, data, [0, 1, 2])
    assert store.finalize(UID, sha, len(data)) == store.blob_path(sha)
    assert [b.sha256 for b in store.inventory()] == [sha]
    assert store.delete_blob(sha) == len(data) and store.find(sha) is None


def test_a_header_claiming_a_huge_frame_is_damage_not_an_allocation(tmp_path: Path) -> None:
    store = opened(tmp_path)
    data = text(2 * CHUNK)
    write(store, data, [0, 1])
    sha = hashlib.sha256(data).hexdigest()
    path = store.finalize(UID, sha, len(data))
    raw = bytearray(path.read_bytes())
    at = 32 + 16  # the file header, then the first chunk header up to its frame length
    raw[at : at + 4] = (2**32 - 1).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    assert "claims a frame of 4294967295 bytes" in (store.check(sha, len(data)) or "")
