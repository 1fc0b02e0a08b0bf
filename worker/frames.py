"""Compressed blobs: compressible content kept on disk as the chunks' zstd frames.

A file whose chunks came compressed (the client compresses each one when that saves
bytes) is stored as they came: ``blobs/ab/<sha256>.zst``, and a restore or a repair sends
the frames as they are, with no compressing or decompressing on the worker. Content that
does not compress stays the file's own bytes (``blobs/ab/<sha256>``, DESIGN's rule).

The file is a valid zstd stream, so ``zstd -dc <sha256>.zst | sha256sum`` checks it:

    file header    a skippable frame: "warren blob" format 1, the file's size, its chunks
    per chunk      a skippable frame: the chunk's number, its length, the length of the
                   frame that follows and the first 12 bytes of that frame's SHA-256
                   then the chunk as one zstd frame (a chunk that came raw is wrapped in a
                   frame of raw blocks: its bytes, unchanged, 3 bytes of header a 128 KiB)

zstd skips the skippable frames; warren reads them to walk the file without decoding it.
Each chunk's digest makes it self-checking: a restore checks every frame it sends (a
damaged copy is reported, never passed off as good) for a fraction of what hashing the
decoded file costs, and a file cut short by a crash ends at its last whole chunk. Scrub
and verify decode it all and check the file's SHA-256, as for any blob.

While an upload comes in, its frames are appended to ``incoming/<id>.zpart`` in the order
they arrive; the chunk records are its journal (no ``.seqs`` file is needed).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from warren import compression
from warren.errors import DecodeError
from warren.messages import RAW, ZSTD
from worker.disk import write_all

SUFFIX = ".zst"
_SKIPPABLE = 0x184D2A5E  # one of zstd's sixteen skippable-frame magic numbers
_ZSTD_MAGIC = 0xFD2FB528
_FORMAT = 1
# file header: magic, frame size, b"warren blob", format, file size, chunk count
_FILE = struct.Struct("<II11sBQI")
# chunk header: magic, frame size, seq, chunk length, frame length, digest of the frame
_CHUNK = struct.Struct("<IIIII12s")
_BLOCK = 128 * 1024  # zstd's largest block
# The longest frame there can be: the largest chunk in raw blocks (a header says how much to
# read: a damaged one must not make a worker allocate gigabytes).
MAX_FRAME = compression.MAX_CHUNK + 3 * (compression.MAX_CHUNK // _BLOCK + 1) + 13


class Damaged(OSError):
    """A compressed blob (or the part of one being received) that does not read back."""


@dataclass(frozen=True)
class Chunk:
    seq: int
    length: int  # of the chunk's own bytes
    at: int  # where its frame starts in the file
    frame_length: int


def file_header(size: int, count: int) -> bytes:
    return _FILE.pack(_SKIPPABLE, _FILE.size - 8, b"warren blob", _FORMAT, size, count)


def read_file_header(fd: int) -> tuple[int, int]:
    """(the file's size, its chunk count) from a compressed blob's header."""
    raw = os.pread(fd, _FILE.size, 0)
    if len(raw) != _FILE.size:
        raise Damaged("no file header")
    magic, frame, name, fmt, size, count = _FILE.unpack(raw)
    if (magic, frame, name, fmt) != (_SKIPPABLE, _FILE.size - 8, b"warren blob", _FORMAT):
        raise Damaged("not a warren blob of format 1")
    return size, count


def chunk_record(seq: int, length: int, body: bytes, encoding: str) -> list[bytes | memoryview]:
    """The pieces to write for one chunk of ``length`` bytes as it came over the wire
    (``body`` in ``encoding``): its header, then its frame. A raw chunk is wrapped in raw
    blocks, not compressed again."""
    if encoding == ZSTD:
        parts: list[bytes | memoryview] = [body]
    elif encoding == RAW:
        parts = raw_frame(memoryview(body))
    else:
        raise ValueError(f"unknown encoding {encoding!r}")
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    frame_length = sum(len(p) for p in parts)
    header = _CHUNK.pack(
        _SKIPPABLE, _CHUNK.size - 8, seq, length, frame_length, digest.digest()[:12]
    )
    return [header, *parts]


def raw_frame(data: memoryview) -> list[bytes | memoryview]:
    """A zstd frame holding ``data`` as raw blocks: what zstd itself writes for bytes that
    do not compress, built here without trying to compress them."""
    size = len(data)
    # single segment, an 8-byte content size, no checksum, no dictionary
    parts: list[bytes | memoryview] = [struct.pack("<IBQ", _ZSTD_MAGIC, 0xE0, size)]
    start = 0
    while True:
        n = min(_BLOCK, size - start)
        last = start + n >= size
        parts.append((n << 3 | int(last)).to_bytes(3, "little"))  # block type 0: raw
        parts.append(data[start : start + n])
        start += n
        if last:
            return parts


def append(fd: int, at: int, parts: list[bytes | memoryview]) -> int:
    """Write ``parts`` at ``at``; return where the next record goes."""
    total = sum(len(p) for p in parts)
    written = os.pwritev(fd, parts, at)
    if written != total:  # a short write (rare): the rest
        write_all(fd, memoryview(b"".join(parts))[written:], at + written)
    return at + total


def chunks(fd: int, strict: bool = True) -> Iterator[tuple[Chunk, bytes]]:
    """The chunks of a compressed blob (or of an upload's ``.zpart``) in file order, each
    with its frame, checked against its digest. ``strict``: a record that does not read
    back is ``Damaged``; otherwise the walk ends there (a crash cut the file short)."""
    at = _FILE.size
    while True:
        raw = os.pread(fd, _CHUNK.size, at)
        if not raw:
            return
        try:
            if len(raw) != _CHUNK.size:
                raise Damaged(f"a chunk header cut short at byte {at}")
            magic, size, seq, length, frame_length, digest = _CHUNK.unpack(raw)
            if (magic, size) != (_SKIPPABLE, _CHUNK.size - 8):
                raise Damaged(f"no chunk header at byte {at}")
            if frame_length > MAX_FRAME:
                raise Damaged(f"chunk {seq} claims a frame of {frame_length} bytes")
            body = os.pread(fd, frame_length, at + _CHUNK.size)
            if hashlib.sha256(body).digest()[:12] != digest:
                raise Damaged(f"chunk {seq} does not match its digest")
        except Damaged:
            if strict:
                raise
            return
        yield Chunk(seq, length, at + _CHUNK.size, frame_length), body
        at += _CHUNK.size + frame_length


def end_of(fd: int) -> tuple[set[int], int]:
    """The chunks of an upload's ``.zpart`` that read back, and where the last of them
    ends (the file header's end if there is none; 0 if there is no header yet)."""
    try:
        read_file_header(fd)
    except Damaged:
        return set(), 0
    seqs: set[int] = set()
    end = _FILE.size
    for c, _ in chunks(fd, strict=False):
        seqs.add(c.seq)
        end = c.at + c.frame_length
    return seqs, end


def decode(c: Chunk, body: bytes) -> bytes:
    """A chunk's own bytes, from its frame."""
    try:
        return compression.decode(body, ZSTD, c.length, exact=True)
    except DecodeError as exc:
        raise Damaged(f"chunk {c.seq} does not decode ({exc})") from None


def compressed_enough(size: int, kept: int) -> bool:
    """Frames worth keeping: they save what a compressed chunk must (compression.MIN_SAVING)."""
    return compression.shrinks(size, kept)


def file_size(path: Path) -> int:
    """The size of the file a compressed blob holds, by its header (0 if it does not read)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        return read_file_header(fd)[0]
    except OSError:  # Damaged among them
        return 0
    finally:
        os.close(fd)


def in_order(path: Path, size: int) -> str:
    """The SHA-256 of an upload's frames (``.zpart``), read back in chunk order; the file
    is rewritten in that order, without repeats, when it is not in it (chunks that came
    out of order after a restart). Damaged unless every chunk is there once and they add
    up to ``size``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        said, count = read_file_header(fd)
        index: dict[int, Chunk] = {}
        order = []
        for c, _ in chunks(fd, strict=False):
            index.setdefault(c.seq, c)
            order.append(c.seq)
        if sorted(index) != list(range(count)):
            raise Damaged(f"{len(index)} of {count} chunks")
        if said != size or sum(c.length for c in index.values()) != size:
            raise Damaged("its chunks do not add up to the file")
        digest = hashlib.sha256()
        if order == list(range(count)):
            for c, body in chunks(fd):
                digest.update(decode(c, body))
            return digest.hexdigest()
        tmp = path.with_suffix(".zsort")
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            end = append(out, 0, [file_header(size, count)])
            for seq in range(count):
                c = index[seq]
                body = os.pread(fd, c.frame_length, c.at)
                digest.update(decode(c, body))
                end = append(out, end, chunk_record(seq, c.length, body, ZSTD))
        finally:
            os.close(out)
        os.replace(tmp, path)
        return digest.hexdigest()
    finally:
        os.close(fd)


def unframe(fd: int, out: Path) -> None:
    """Write the file a blob's frames hold to ``out``, synced (frames that hardly compress
    are stored as the file's own bytes instead)."""
    target = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        offset = 0
        for c, body in chunks(fd):
            data = decode(c, body)
            write_all(target, memoryview(data), offset)
            offset += len(data)
        os.fsync(target)
    finally:
        os.close(target)


def content(path: Path, piece: int = 8 * 1024 * 1024) -> Iterator[bytes]:
    """A stored blob's bytes, in order, a piece at a time: a blob kept as bytes ``piece``
    bytes at a time, one kept as frames a chunk at a time, each checked and decoded
    (``Damaged`` if one is not good, or not where it belongs)."""
    with open(path, "rb", buffering=0) as f:
        if path.suffix != SUFFIX:
            while data := f.read(piece):
                yield data
            return
        _, count = read_file_header(f.fileno())
        seen = 0
        for n, (c, body) in enumerate(chunks(f.fileno())):
            if c.seq != n:
                raise Damaged(f"chunk {c.seq} where {n} belongs")
            seen += 1
            yield decode(c, body)
        if seen != count:
            raise Damaged(f"{seen} of its {count} chunks")


def chunk_count(path: Path) -> int:
    """How many chunks a compressed blob holds (a repair copy sends as many)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return read_file_header(fd)[1]
    finally:
        os.close(fd)
