"""Cutting files into chunks by their content, and sealing each chunk so only its owner reads it.

This is the client's core for a repository no server can read (issue 24; DESIGN.md "Keys"
and "Chunks"): pure functions over bytes and files, the keys given as plain arguments (they
come from the owner's key, ``warren/ownerkey.py``). Nothing here touches the broker.

Cutting. A file is cut by content (FastCDC 2020, ``pyfastcdc``) so that inserting bytes into
it moves only the chunks around the insertion: an upload of the changed file sends those and
finds the rest already stored. The chunker's gear table is keyed by the owner's seed (as borg
keys its chunker), so chunk sizes do not fingerprint known content for anyone without the
key. Cut points depend on ``ChunkParams`` too: a client that changes ``WARREN_CHUNK_SIZE``
cuts differently and deduplicates nothing against what it stored before. Files are read
through a buffer of twice the largest chunk, never whole, and not mapped (a file truncated
while mapped kills the reader with SIGBUS; a backup reads files that change).

Chunk id: keyed BLAKE3 (32 bytes, the owner's ids key) of the plaintext. It names the chunk
for dedup within one owner and means nothing to anyone else: the same bytes under two owners
have unrelated ids and unrelated sealed bytes.

Sealed chunk format (``FORMAT`` 2; docs/protocol.md copies this)::

    offset  size  field
    0       1     FORMAT (2)
    1       32    chunk id: keyed BLAKE3 of the plaintext
    33      12    nonce: keyed BLAKE3 (nonce key) of chunk id + encoded, first 12 bytes
    45      n+16  AES-256-GCM(seal key, nonce) of ``encoded``, with its 16-byte tag;
                  associated data: bytes 0..33 (format byte and chunk id)

    encoded = one byte (0: the plaintext as it is, 1: one zstd frame of it, level 1, with
              its content size) + those bytes

The seal is deterministic: the same key and plaintext give the same sealed bytes, so a
worker's blob name (``sealed_digest``, SHA-256 of the sealed bytes, checkable without any
key) dedups within an owner. A deterministic nonce is safe only if a nonce never encrypts two
different messages; deriving it from everything that is encrypted (the id and the encoded
bytes, not just the id) keeps that true even if a later zstd compresses the same plaintext
to other bytes. The nonce key is derived from the seal key (BLAKE3 derive_key mode), so the
nonce reveals nothing but equality of whole sealed chunks, which the digest shows anyway.
The chunk id is authenticated data: a blob cannot be passed off under another id, and
``open_chunk`` also checks that the plaintext hashes to the id in the header.

Compression follows ``warren/compression.py``'s rule (zstd level 1 when it saves at least
1/32, the first 64 KiB tried first), so a sealed chunk is never more than ``SEAL_OVERHEAD``
bytes longer than its plaintext. Opening caps inflation at the caller's ``max_size``: a
frame claiming more is refused before anything is allocated.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pyfastcdc import FastCDC

from warren import compression
from warren.errors import DecodeError, IntegrityError
from warren.headers import ZSTD
from warren.pipeline import pipelined

FORMAT = 2
ID_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
_HEADER = 1 + ID_BYTES + NONCE_BYTES  # format byte, chunk id, nonce: before the ciphertext
# Bytes a sealed chunk carries beyond its plaintext at most: header, encoding flag, GCM tag.
SEAL_OVERHEAD = _HEADER + 1 + TAG_BYTES
_FLAG_RAW = 0
_FLAG_ZSTD = 1
_NONCE_CONTEXT = "warren 2026-12 chunkseal v2 nonce key"

# The largest chunk, whatever the message limit: about 1 MiB average chunks (DESIGN.md).
MAX_CHUNK = 4 * 1024 * 1024
# Room left under the caller's limit: the format may grow by a few bytes (a key id, say)
# without changing ``params_for``, whose every change moves cut points and loses dedup.
MARGIN = 64
# pyfastcdc's bounds (FastCDC.__init__ refuses values outside them).
_FASTCDC_MIN = (64, 1024 * 1024)
_FASTCDC_AVG = (256, 4 * 1024 * 1024)
_FASTCDC_MAX = (1024, 16 * 1024 * 1024)
# The smallest limit ``params_for`` takes: chunks of at least 64 bytes of plaintext. Below
# pyfastcdc's smallest maximum (1024) chunks are cut by content at 1 KiB at most and the
# longer ones split in two, so small WARREN_CHUNK_SIZEs (tests use 1 KiB) still work.
MIN_LIMIT = SEAL_OVERHEAD + MARGIN + 64
_MASK64 = (1 << 64) - 1


class Damaged(IntegrityError):
    """A sealed chunk that does not open to the chunk its header names: damaged on a disk or
    on the way, forged, sealed under another owner's key, or not a sealed chunk at all."""


@dataclass(frozen=True)
class ChunkParams:
    """Chunk sizes in bytes: ``max_size`` is a hard bound on every chunk; ``avg_size`` and
    ``min_size`` are FastCDC's targets (chunks shorter than ``min_size`` only at a file's end
    or, under a tiny limit, after a split)."""

    min_size: int
    avg_size: int
    max_size: int

    def __post_init__(self) -> None:
        if not 1 <= self.min_size <= self.avg_size <= self.max_size:
            raise ValueError(f"chunk sizes out of order: {self}")

    def chunker(self, seed: int) -> FastCDC:
        """A FastCDC with these sizes clamped to what pyfastcdc takes, keyed by ``seed``
        (taken modulo 2**64: pyfastcdc XORs it into its gear table, and ignores 0 or less)."""
        return FastCDC(
            _clamp(self.avg_size, _FASTCDC_AVG),
            min_size=_clamp(self.min_size, _FASTCDC_MIN),
            max_size=_clamp(self.max_size, _FASTCDC_MAX),
            seed=seed & _MASK64,
        )


@functools.lru_cache(maxsize=16)
def _chunker(params: ChunkParams, seed: int) -> FastCDC:
    """One chunker for every small file cut in memory (``cut_buf`` keeps no state)."""
    return params.chunker(seed)


def _clamp(value: int, bounds: tuple[int, int]) -> int:
    return max(bounds[0], min(bounds[1], value))


def params_for(limit: int) -> ChunkParams:
    """Chunk sizes for messages that carry sealed chunks of at most ``limit`` bytes: the
    largest plaintext that seals within it (less ``MARGIN``), 4 MiB at most, an average a
    quarter of that and a minimum a quarter of the average (1 MiB / 256 KiB at 4 MiB)."""
    if limit < MIN_LIMIT:
        raise ValueError(f"a chunk limit of {limit} bytes is below the {MIN_LIMIT} allowed")
    top = min(MAX_CHUNK, limit - SEAL_OVERHEAD - MARGIN)
    avg = min(top, _clamp(top // 4, _FASTCDC_AVG))
    low = min(avg, _clamp(avg // 4, _FASTCDC_MIN))
    return ChunkParams(min_size=low, avg_size=avg, max_size=top)


def cut(path: Path, params: ChunkParams, seed: int) -> Iterator[bytes]:
    """The chunks of the file at ``path`` in order, cut by content with FastCDC keyed by
    ``seed``. Memory stays at about twice ``max_size`` whatever the file's size. An empty
    file is one empty chunk (every file has a chunk to name it). Each chunk is a copy of its
    own: it stays valid while the next ones are read (pyfastcdc reuses its buffer)."""
    top = params.max_size
    with open(path, "rb", buffering=0) as f:  # readinto straight into pyfastcdc's buffer
        any_chunk = False
        if os.fstat(f.fileno()).st_size < top:
            # A small file is read whole and cut in memory: the stream reader's buffer of
            # twice the largest chunk, made for every file, cost 0.7 ms a file of 4 KiB.
            data = f.read(top + 1)
            if len(data) <= top:  # (a file that grew meanwhile is cut as a stream below)
                for c in _chunker(params, seed).cut_buf(data):
                    any_chunk = True
                    view = c.data
                    for at in range(0, len(view), top) if len(view) > top else (0,):
                        yield bytes(view[at : at + top])
                if not any_chunk:
                    yield b""
                return
            f.seek(0)
        for c in params.chunker(seed).cut_stream(f):
            any_chunk = True
            view = c.data
            if len(view) <= top:
                yield bytes(view)
                continue
            for at in range(0, len(view), top):  # only under limits below pyfastcdc's 1024
                yield bytes(view[at : at + top])
        if not any_chunk:
            yield b""


def chunk_id(ids_key: bytes, data: bytes | memoryview) -> bytes:
    """The chunk's id: keyed BLAKE3 of its plaintext, 32 bytes (releases the GIL)."""
    return blake3.blake3(data, key=ids_key).digest()


@functools.lru_cache(maxsize=16)
def _sealing(seal_key: bytes) -> tuple[AESGCM, bytes]:
    """The cipher and the nonce key for one seal key: made once, not per chunk."""
    if len(seal_key) != KEY_BYTES:
        raise ValueError(f"a seal key is {KEY_BYTES} bytes, not {len(seal_key)}")
    nonce_key = blake3.blake3(seal_key, derive_key_context=_NONCE_CONTEXT).digest()
    return AESGCM(seal_key), nonce_key


def seal_chunk(seal_key: bytes, chunk_id: bytes, data: bytes | memoryview) -> bytes:
    """The chunk sealed (format in the module docstring): deterministic, so the same key and
    plaintext give the same bytes. ``chunk_id`` must be ``chunk_id(ids_key, data)``."""
    if len(chunk_id) != ID_BYTES:
        raise ValueError(f"a chunk id is {ID_BYTES} bytes, not {len(chunk_id)}")
    cipher, nonce_key = _sealing(seal_key)
    # encode reads any buffer (len, slicing, zstd) and hands a raw one back as it came.
    body, encoding = compression.encode(cast(bytes, data))
    flag = bytes((_FLAG_ZSTD if encoding == ZSTD else _FLAG_RAW,))
    encoded = flag + body
    nonce = blake3.blake3(chunk_id, key=nonce_key).update(encoded).digest(NONCE_BYTES)
    head = bytes((FORMAT,)) + chunk_id
    return head + nonce + cipher.encrypt(nonce, encoded, head)


def open_chunk(
    seal_key: bytes, ids_key: bytes, sealed: bytes, max_size: int
) -> tuple[bytes, bytes]:
    """``(chunk id, plaintext)`` of a sealed chunk whose plaintext may be ``max_size`` bytes
    at most. Anything else (a damaged or forged blob, another owner's, a zstd frame claiming
    more than ``max_size``, a plaintext that is not its id's) is ``Damaged``."""
    if len(sealed) < SEAL_OVERHEAD:
        raise Damaged(f"a sealed chunk of {len(sealed)} bytes is too short to be one")
    if sealed[0] != FORMAT:
        raise Damaged(f"a sealed chunk in unknown format {sealed[0]}")
    cipher, _ = _sealing(seal_key)
    view = memoryview(sealed)
    head, nonce = view[: 1 + ID_BYTES], view[1 + ID_BYTES : _HEADER]
    try:
        encoded = cipher.decrypt(nonce, view[_HEADER:], head)
    except InvalidTag:
        raise Damaged(
            "a sealed chunk that does not open with this key (damaged or forged)"
        ) from None
    flag, body = encoded[0], memoryview(encoded)[1:]
    if flag == _FLAG_RAW:
        if len(body) > max_size:
            raise Damaged(f"a chunk of {len(body)} bytes, more than the {max_size} allowed")
        plain = bytes(body)
    elif flag == _FLAG_ZSTD:
        try:  # refuses a frame claiming more than max_size before inflating anything
            plain = compression.decode(cast(bytes, body), ZSTD, max_size)
        except DecodeError as exc:
            raise Damaged(f"a sealed chunk whose compressed bytes are bad: {exc}") from None
    else:
        raise Damaged(f"a sealed chunk with unknown encoding {flag}")
    named = bytes(head[1:])
    if not hmac.compare_digest(chunk_id(ids_key, plain), named):
        raise Damaged("a sealed chunk whose bytes are not those of the chunk id it names")
    return named, plain


def sealed_digest(sealed: bytes) -> str:
    """The blob's name on workers: hex SHA-256 of the sealed bytes, checkable without keys."""
    return hashlib.sha256(sealed).hexdigest()


@dataclass(frozen=True)
class SealedChunk:
    """One chunk as the uploader sends it: its blob name, its sealed bytes, and how many
    plaintext bytes it stands for (for progress and ``bytes_sent``)."""

    digest: str
    sealed: bytes
    plain_size: int


def seal_one(seal_key: bytes, ids_key: bytes, data: bytes | memoryview) -> SealedChunk:
    """Id, seal and name one chunk of plaintext."""
    sealed = seal_chunk(seal_key, chunk_id(ids_key, data), data)
    return SealedChunk(sealed_digest(sealed), sealed, len(data))


def seal_file_chunks(
    path: Path,
    seal_key: bytes,
    ids_key: bytes,
    seed: int,
    params: ChunkParams,
    threads: int = 0,
) -> Iterator[SealedChunk]:
    """The file's chunks, in order, cut, named and sealed. ``threads`` > 0: sealing is done
    on that many threads a few chunks ahead of the caller (``warren.pipeline``), overlapping
    reading and publishing; hashing, zstd and AES release the GIL, so two threads seal
    about twice as fast. Reading and cutting stay in order on one thread at a time."""
    chunks = cut(path, params, seed)
    if threads <= 0:
        for data in chunks:
            yield seal_one(seal_key, ids_key, data)
        return
    yield from pipelined(chunks, lambda data: seal_one(seal_key, ids_key, data), threads=threads)
