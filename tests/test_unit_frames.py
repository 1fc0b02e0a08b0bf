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
from worker.blobs import BlobStore, CorruptUpload
from worker.incoming import Incoming

UID = "cd" * 16
CHUNK = 64 * 1024


def text(size: int) -> bytes:
    lines = b"".join(b"GET /api/items/%d HTTP/1.1 200 %d\n" % (i, i * 7) for i in range(size))
    return lines[:size]


def pieces(data: bytes) -> list[tuple[int, int, bytes]]:
    return [(n, at, data[at : at + CHUNK]) for n, at in enumerate(range(0, len(data), CHUNK))]


def write(incoming: Incoming, data: bytes, seqs: list[int]) -> int:
    """Write those chunks of ``data`` as a client sends them: each compressed when it
    shrinks. Returns how many chunks are in."""
    chunks = pieces(data)
    got = 0
    for seq in seqs:
        _, offset, part = chunks[seq]
        wire = compression.encode(part)
        got = incoming.write_chunk(UID, seq, offset, part, len(chunks), wire, len(data))
    return got


def opened(root: Path) -> tuple[BlobStore, Incoming]:
    blobs = BlobStore(root)
    blobs.open()
    incoming = Incoming(root, blobs)
    incoming.open()
    return blobs, incoming


def finish(incoming: Incoming, sha256: str, size: int) -> Path:
    """Finish the upload whose chunks are all in, as the worker does, on this one thread."""
    return incoming.finish(UID, sha256, size, incoming.take_running(UID))


def test_text_is_kept_as_frames_that_zstd_reads_back(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    data = text(5 * CHUNK + 99)
    assert write(incoming, data, [0, 1, 2, 3, 4, 5]) == 6
    sha = hashlib.sha256(data).hexdigest()
    path = finish(incoming, sha, len(data))
    assert path.name == sha + ".zst" and path.stat().st_size < len(data) / 3
    assert stored_content(path) == data
    if shutil.which("zstd"):  # the operator's check, as docs/operations.md gives it
        out = subprocess.run(["zstd", "-dc", str(path)], capture_output=True, check=True)
        assert out.stdout == data
    assert blobs.find(sha) == path and blobs.check(sha, len(data)) is None
    assert [(b.sha256, b.size) for b in blobs.inventory()] == [(sha, len(data))]
    assert blobs.usage().used_bytes == path.stat().st_size  # the disk's bytes
    assert opened(tmp_path)[0].usage().used_bytes == path.stat().st_size  # after a restart too
    assert incoming.done_sha256(UID) == sha
    assert not list(incoming.dir.glob("*.zpart"))


def test_a_crash_mid_record_loses_only_that_record(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    data = text(4 * CHUNK)
    write(incoming, data, [0, 1])
    zpart = incoming.dir / f"{UID}.zpart"
    with open(zpart, "ab") as f:  # chunk 2's record, cut short by the crash
        f.write(b"".join(bytes(p) for p in frames.chunk_record(2, CHUNK, b"x" * 999, ZSTD))[:500])
    _, again = opened(tmp_path)  # the restarted worker
    assert again.have(UID) == ((0, 1), False)
    assert write(again, data, [2, 3]) == 4
    sha = hashlib.sha256(data).hexdigest()
    assert stored_content(finish(again, sha, len(data))) == data


def test_chunks_out_of_order_after_a_restart_are_put_in_order(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    data = text(4 * CHUNK + 5)
    write(incoming, data, [0, 3])
    again_blobs, again = opened(tmp_path)
    assert write(again, data, [4, 3, 1, 2]) == 5  # 3 again is a no-op
    sha = hashlib.sha256(data).hexdigest()
    path = finish(again, sha, len(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        assert [c.seq for c, _ in frames.chunks(fd)] == [0, 1, 2, 3, 4]
    finally:
        os.close(fd)
    assert again_blobs.check(sha, len(data)) is None


def test_a_wrong_hash_or_size_is_never_kept(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    data = text(3 * CHUNK)
    write(incoming, data, [0, 1, 2])
    with pytest.raises(CorruptUpload):
        finish(incoming, "00" * 32, len(data))
    assert list(blobs.inventory()) == [] and not any(incoming.dir.iterdir())
    # Chunks that cover more than the file their first chunk announced.
    incoming.write_chunk(UID, 0, 0, data[:CHUNK], 2, compression.encode(data[:CHUNK]), 2 * CHUNK)
    more = data[:CHUNK] * 2
    incoming.write_chunk(UID, 1, CHUNK, more, 2, compression.encode(more), 3 * CHUNK)
    whole = data[:CHUNK] * 3
    with pytest.raises(CorruptUpload):
        finish(incoming, hashlib.sha256(whole).hexdigest(), len(whole))
    assert list(blobs.inventory()) == []


def test_a_damaged_frame_is_found_by_check_and_by_every_reader(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    data = text(3 * CHUNK)
    write(incoming, data, [0, 1, 2])
    sha = hashlib.sha256(data).hexdigest()
    path = finish(incoming, sha, len(data))
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert "does not match its digest" in (blobs.check(sha, len(data)) or "")
    with pytest.raises(frames.Damaged):
        b"".join(frames.content(path))
    blobs.quarantine(sha)
    assert blobs.find(sha) is None and blobs.damaged == 1
    assert list((tmp_path / "quarantine").iterdir())[0].name.startswith(sha + ".zst.")


def test_content_stored_both_ways_is_kept_once(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    data = text(3 * CHUNK)
    sha = hashlib.sha256(data).hexdigest()
    blobs.put_blobs([(sha, memoryview(data))])  # as a pack's file: its own bytes
    write(incoming, data, [0, 1, 2])
    assert finish(incoming, sha, len(data)) == blobs.blob_path(sha)
    assert [b.sha256 for b in blobs.inventory()] == [sha]
    assert blobs.delete_blob(sha) == len(data) and blobs.find(sha) is None


def test_a_header_claiming_a_huge_frame_is_damage_not_an_allocation(tmp_path: Path) -> None:
    blobs, incoming = opened(tmp_path)
    data = text(2 * CHUNK)
    write(incoming, data, [0, 1])
    sha = hashlib.sha256(data).hexdigest()
    path = finish(incoming, sha, len(data))
    raw = bytearray(path.read_bytes())
    at = 32 + 16  # the file header, then the first chunk header up to its frame length
    raw[at : at + 4] = (2**32 - 1).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    assert "claims a frame of 4294967295 bytes" in (blobs.check(sha, len(data)) or "")
