"""Chunk arithmetic and streaming hashes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from warren.chunks import (
    CACHE_WINDOW,
    EMPTY_SHA256,
    ChunkPlan,
    Writeback,
    read_chunks,
    sha256_file,
)


@pytest.mark.parametrize(
    "size, chunk, count, last",
    [(0, 4, 1, 0), (1, 4, 1, 1), (4, 4, 1, 4), (5, 4, 2, 1), (8, 4, 2, 4), (9, 4, 3, 1)],
)
def test_plan_counts_and_lengths(size: int, chunk: int, count: int, last: int) -> None:
    plan = ChunkPlan(size, chunk)
    assert plan.count == count
    assert plan.length(count - 1) == last
    assert sum(plan.length(i) for i in range(count)) == size
    assert [plan.offset(i) for i in range(count)] == [i * chunk for i in range(count)]


def test_plan_refuses_chunks_outside_the_file() -> None:
    with pytest.raises(IndexError):
        ChunkPlan(10, 4).offset(3)
    with pytest.raises(ValueError):
        ChunkPlan(-1, 4)


def test_read_chunks_reassembles_the_file(tmp_path: Path) -> None:
    data = bytes(range(256)) * 41 + b"tail"
    path = tmp_path / "f"
    path.write_bytes(data)
    chunks = list(read_chunks(path, ChunkPlan(len(data), 1000)))
    assert b"".join(c for _, _, c in chunks) == data
    assert [(s, o) for s, o, _ in chunks] == [(i, i * 1000) for i in range(len(chunks))]


def test_empty_file_is_one_empty_chunk(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert list(read_chunks(path, ChunkPlan(0, 1000))) == [(0, 0, b"")]
    assert sha256_file(path) == EMPTY_SHA256


def test_sha256_file_streams_and_reports_progress(tmp_path: Path) -> None:
    data = b"x" * (3 * 1024 * 1024 + 5)
    path = tmp_path / "f"
    path.write_bytes(data)
    seen: list[int] = []
    assert sha256_file(path, seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == len(data)


def test_large_files_are_written_and_read_back_while_their_pages_are_let_go(tmp_path: Path) -> None:
    """Every CACHE_WINDOW bytes the new bytes start going to disk and the window before
    them is dropped from memory; the file reads back exactly as written."""
    path = tmp_path / "big"
    block = os.urandom(1024 * 1024)
    blocks = 2 * CACHE_WINDOW // len(block) + 3
    wb = Writeback()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for i in range(blocks):
            os.pwrite(fd, block, i * len(block))
            wb.written_up_to(fd, (i + 1) * len(block))
    finally:
        os.close(fd)
    assert (wb.dropping, wb.started) == (CACHE_WINDOW, 2 * CACHE_WINDOW)
    assert sha256_file(path) == hashlib.sha256(block * blocks).hexdigest()
    # Read back in chunks, dropping what was read as it goes: every chunk intact.
    plan = ChunkPlan(len(block) * blocks, len(block))
    assert all(data == block for _seq, _offset, data in read_chunks(path, plan, let_go=True))
