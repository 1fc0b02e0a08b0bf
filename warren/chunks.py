"""Chunking, hashing and offsets: the arithmetic every role agrees on, with no I/O but files."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

READ_SIZE = 1024 * 1024
# Readers and writers of large files let go of their pages every this many bytes.
CACHE_WINDOW = 16 * 1024 * 1024
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class ChunkPlan:
    """How a file of ``size`` bytes is cut into chunks of ``chunk_size`` bytes.

    A file always has at least one chunk, so an empty file still travels (as one empty
    chunk) and every replica has a message to finish on.
    """

    size: int
    chunk_size: int

    def __post_init__(self) -> None:
        if self.size < 0 or self.chunk_size < 1:
            raise ValueError("size must be >= 0 and chunk_size >= 1")

    @property
    def count(self) -> int:
        return max(1, -(-self.size // self.chunk_size))

    def offset(self, seq: int) -> int:
        self._check(seq)
        return seq * self.chunk_size

    def length(self, seq: int) -> int:
        self._check(seq)
        return min(self.chunk_size, self.size - seq * self.chunk_size)

    def _check(self, seq: int) -> None:
        if not 0 <= seq < self.count:
            raise IndexError(f"chunk {seq} is outside 0..{self.count - 1}")


def sha256_file(path: Path, progress: Callable[[int], None] | None = None) -> str:
    """SHA-256 of a file, read in 1 MiB blocks so memory stays flat at any size."""
    digest = hashlib.sha256()
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
            if progress:
                progress(n)
    return digest.hexdigest()


def read_chunks(
    path: Path, plan: ChunkPlan, let_go: bool = False
) -> Iterator[tuple[int, int, bytes]]:
    """Yield (seq, offset, bytes) for every chunk of the file; one chunk in memory at a time.

    The file is read once, front to back. With ``let_go``, every CACHE_WINDOW bytes the
    pages already read are dropped from the page cache, as Writeback does for writes: a
    worker restoring a large blob then reuses the same few pages instead of taking fresh
    ones for every chunk, which costs more CPU than the read on a virtual machine (a
    512 MiB restore read from disk: the worker's CPU 1.6-2.1 s -> 0.8-1.0 s).

    A client reading a user's file leaves the page cache alone: the file may be in use,
    and it was just read whole by the SHA-256 pass, so dropping it only made the next
    read of it go to the disk (the next upload of the file: its SHA-256 pass took twice
    as long, and 1 CPU-second more per GB).
    """
    with open(path, "rb", buffering=0) as f:
        dropped = 0  # bytes before this offset have been let go
        for seq in range(plan.count):
            offset = plan.offset(seq)
            data = os.pread(f.fileno(), plan.length(seq), offset)
            if len(data) != plan.length(seq):
                raise OSError(f"{path} changed size while it was being read")
            yield seq, offset, data
            end = offset + len(data)
            if let_go and end - dropped >= CACHE_WINDOW and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(f.fileno(), dropped, end - dropped, os.POSIX_FADV_DONTNEED)
                dropped = end


class Writeback:
    """Write a large file's bytes to disk as it is written in order, and drop them from memory.

    Left alone, the kernel keeps a large file's bytes in memory and the fsync at the end
    waits for all of them: seconds for a large file, with the disk idle until then. Every
    CACHE_WINDOW bytes, this asks the kernel to start writing the new bytes out and to
    drop the ones it was asked to write the time before, which are on disk by then. Memory
    pages freed that way are reused for the next chunks; taking fresh pages instead costs
    more CPU than the write itself on a virtual machine (``bench/cpu.py --size-mib 512``:
    w1 2.2 -> 1.5 CPU-seconds). A hint only: durability still comes from the fsync at the end.
    """

    def __init__(self) -> None:
        self.dropping = 0  # bytes from here on may still be in memory
        self.started = 0  # bytes before this offset have been handed to the disk

    def written_up_to(self, fd: int, offset: int) -> None:
        if offset - self.started >= CACHE_WINDOW and hasattr(os, "posix_fadvise"):
            # DONTNEED starts writing dirty pages out and drops the clean ones.
            os.posix_fadvise(fd, self.dropping, offset - self.dropping, os.POSIX_FADV_DONTNEED)
            self.dropping, self.started = self.started, offset
