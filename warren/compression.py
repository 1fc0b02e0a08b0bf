"""Compression on the wire: a chunk's bytes as zstd (level 1) when that makes them smaller.

The broker's CPU per byte limits what warren moves, and every uploaded byte crosses it
twice (client to primary, primary to backup): a byte that is not sent is the only way past
a raw hop. So the client compresses each chunk (and each pack of small files) on its own,
workers forward the compressed bytes exactly as they came and decompress them before they
write, and a worker compresses each chunk it sends back for a restore. Blobs on disk stay
the file's own bytes: ``sha256sum`` checks them, and scrub and verify are unchanged.

A chunk that does not shrink by at least ``MIN_SAVING`` travels as it is. Most content that
does not compress (photos, archives, video, encrypted files) is found out from a sample of
its first ``PROBE`` bytes, for a twentieth of the price of compressing the whole chunk.

The encoding travels in the message's ``encoding`` header (``headers.ZSTD``); no header
means the bytes as they are, so every message from before compression stays valid.
"""

from __future__ import annotations

import threading

import zstandard

from warren.errors import DecodeError
from warren.headers import RAW, ZSTD

LEVEL = 1
# A restore crosses the broker once, and not to its disk: there the broker's CPU per byte
# matters less than the worker's compressing and the client's decompressing, which a fast
# level cuts by a third and a half (log-like text: 2.5x smaller instead of 4.1x).
RESTORE_LEVEL = -5
# Chunks shorter than this are sent as they are: a frame's header is not worth it.
MIN_SIZE = 256
# The sample tried first on a chunk longer than twice its size.
PROBE = 64 * 1024
# Compressed bytes are sent only if they save at least this share of the chunk: decompressing
# costs each worker CPU too, and a few percent do not pay for it.
MIN_SAVING = 1 / 32

# The largest chunk there is (WARREN_CHUNK_SIZE's upper bound): what a restore chunk may
# decode to at most.
MAX_CHUNK = 64 * 1024 * 1024

_local = threading.local()  # a compression context is not to be shared between threads


def _compressor(level: int) -> zstandard.ZstdCompressor:
    made: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if made is None:
        made = _local.compressors = {}
    c = made.get(level)
    if c is None:
        c = made[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = zstandard.ZstdDecompressor()
    return d


def shrinks(size: int, packed: int) -> bool:
    return packed <= size - max(1, int(size * MIN_SAVING))


def encode(data: bytes, level: int = LEVEL) -> tuple[bytes, str]:
    """``(body, encoding)``: the bytes compressed with zstd (at ``level``) when that is
    worth it, else the bytes themselves with ``RAW``. Releases the GIL while it compresses."""
    size = len(data)
    if size < MIN_SIZE:
        return data, RAW
    c = _compressor(level)
    if size >= 2 * PROBE and not shrinks(PROBE, len(c.compress(memoryview(data)[:PROBE]))):
        return data, RAW
    packed = c.compress(data)
    if not shrinks(size, len(packed)):
        return data, RAW
    return packed, ZSTD


def decode(body: bytes, encoding: str, limit: int, exact: bool = False) -> bytes:
    """The bytes before ``encode``. ``limit``: how many they may be at most (``exact``: how
    many they must be), so a frame that claims more is refused before anything is made.
    Anything that is not a good frame is a DecodeError: the message is dead-lettered."""
    if encoding == RAW:
        out = body
    elif encoding == ZSTD:
        try:
            claimed = zstandard.frame_content_size(body)
        except zstandard.ZstdError as exc:
            raise DecodeError(f"not a zstd frame ({exc})") from None
        if claimed < 0:
            raise DecodeError("a zstd frame without its content size")
        if claimed > limit:
            raise DecodeError(f"a zstd frame of {claimed} bytes, more than the {limit} expected")
        if _frame_end(body) != len(body):
            raise DecodeError("bytes after the zstd frame")
        try:
            out = _decompressor().decompress(body, max_output_size=max(claimed, 1))
        except zstandard.ZstdError as exc:
            raise DecodeError(f"a damaged zstd frame ({exc})") from None
        if len(out) != claimed:
            raise DecodeError("a zstd frame shorter than it says")
    else:
        raise DecodeError(f"unknown encoding {encoding!r}")
    if len(out) > limit or (exact and len(out) != limit):
        raise DecodeError(f"{len(out)} bytes, expected {'' if exact else 'at most '}{limit}")
    return out


def _frame_end(body: bytes) -> int:
    """Where the zstd frame at the start of ``body`` ends, by walking its block headers:
    zstd would ignore whatever follows one frame, and a worker keeps a frame as it came, so
    a body must be exactly one frame (nothing hidden after it)."""
    try:
        at = zstandard.frame_header_size(body)
    except zstandard.ZstdError as exc:
        raise DecodeError(f"not a zstd frame ({exc})") from None
    checksum = 4 if body[4] & 0x04 else 0  # the frame header descriptor's checksum flag
    while at + 3 <= len(body):
        header = int.from_bytes(body[at : at + 3], "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        at += 3 + (1 if kind == 1 else size)  # an RLE block holds one byte
        if last and at + checksum <= len(body):
            return at + checksum
        if last:
            break
    raise DecodeError("a zstd frame cut short")
