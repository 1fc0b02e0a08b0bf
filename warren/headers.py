"""Chunks, packs and restore chunks: raw bytes in the body, never JSON or base64, and their
metadata in AMQP headers. These classes read and write those headers, validating what they
read (a bad header is a ``DecodeError``, so the message is dead-lettered). ``warren.messages``
offers them too."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from warren.codec import MAX_PACK_FILES, _build, check_chain, check_sha256, check_upload_id
from warren.errors import DecodeError
from warren.worker_messages import PackEntry

# -- chunks: raw bytes with their metadata in AMQP headers ---------------------------------

CHUNK_TYPE = "upload.chunk"
RESTORE_CHUNK_TYPE = "restore.chunk"

# The ``encoding`` header of a chunk, a pack or a restore chunk: how its body is to be read.
RAW = ""  # no header: the bytes as they are
ZSTD = "zstd"  # one zstd frame, with its content size (warren.compression)
ENCODINGS = (RAW, ZSTD)


def _encoding(headers: dict[str, Any], where: str) -> str:
    value = headers.get("encoding", RAW)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if value not in ENCODINGS:
        raise DecodeError(f"{where}: unknown encoding {value!r}")
    return str(value)


def _with_encoding(headers: dict[str, Any], encoding: str) -> dict[str, Any]:
    """Raw bytes carry no ``encoding`` header, as before there was compression."""
    if encoding != RAW:
        headers["encoding"] = encoding
    return headers


@dataclass(frozen=True)
class ChunkHeaders:
    """Where one upload chunk belongs. The body is the chunk's bytes, nothing else: as they
    are, or compressed as ``encoding`` says (then ``validate`` them again once decoded)."""

    upload_id: str
    seq: int
    offset: int
    total_size: int
    chunk_count: int
    sha256: str  # of the whole file
    chain: tuple[str, ...]  # every worker that must store the file, primary first
    hop: int  # index in chain of the worker this message is addressed to
    encoding: str = RAW  # of the body: RAW (no header) or ZSTD

    def to_headers(self) -> dict[str, Any]:
        h = dataclasses.asdict(self)
        h["chain"] = list(self.chain)
        del h["encoding"]
        return _with_encoding(h, self.encoding)

    @classmethod
    def from_headers(cls, headers: dict[str, Any] | None, body_len: int) -> ChunkHeaders:
        if not headers:
            raise DecodeError("upload.chunk: no headers")
        data = dict(headers)
        chain = data.get("chain")
        if isinstance(chain, list):
            data["chain"] = [c.decode() if isinstance(c, bytes) else c for c in chain]
        for key in ("upload_id", "sha256"):
            if isinstance(data.get(key), bytes):
                data[key] = data[key].decode()
        data["encoding"] = _encoding(data, "upload.chunk")
        value: ChunkHeaders = _build(cls, data, "upload.chunk")
        # An encoded body's length says nothing of the bytes': checked once decoded.
        value.validate(body_len if value.encoding == RAW else 0)
        return value

    def validate(self, body_len: int) -> None:
        """``body_len``: of the chunk's bytes, decoded."""
        check_upload_id(self.upload_id, "upload_id")
        check_sha256(self.sha256, "sha256")
        check_chain(self.chain, "upload.chunk")
        if not 0 <= self.hop < len(self.chain):
            raise DecodeError("upload.chunk: hop is outside the chain")
        if self.total_size < 0 or self.chunk_count < 1:
            raise DecodeError("upload.chunk: bad sizes")
        if not 0 <= self.seq < self.chunk_count:
            raise DecodeError("upload.chunk: seq is outside the upload")
        if self.offset < 0 or self.offset + body_len > self.total_size:
            raise DecodeError("upload.chunk: bytes fall outside the file")

    @property
    def next_worker(self) -> str | None:
        nxt = self.hop + 1
        return self.chain[nxt] if nxt < len(self.chain) else None


PACK_TYPE = "upload.pack"


@dataclass(frozen=True)
class PackHeaders:
    """What a pack message holds: its body is the files' bytes back to back, in order, as
    they are or compressed (one zstd frame for the whole body) as ``encoding`` says."""

    files: tuple[PackEntry, ...]
    chain: tuple[str, ...]
    hop: int
    encoding: str = RAW

    def to_headers(self) -> dict[str, Any]:
        manifest = [[f.upload_id, f.sha256, f.size] for f in self.files]
        headers = {
            "files": json.dumps(manifest, separators=(",", ":")),
            "chain": list(self.chain),
            "hop": self.hop,
        }
        return _with_encoding(headers, self.encoding)

    @classmethod
    def from_headers(cls, headers: dict[str, Any] | None, body_len: int) -> PackHeaders:
        h = headers or {}
        manifest, chain, hop = h.get("files"), h.get("chain"), h.get("hop")
        if isinstance(manifest, bytes):
            manifest = manifest.decode("utf-8", "replace")
        if not isinstance(manifest, str) or not isinstance(chain, list):
            raise DecodeError("upload.pack: no manifest or chain")
        try:
            rows = json.loads(manifest)
            files = tuple(PackEntry(str(u), str(s), int(n)) for u, s, n in rows)
        except (ValueError, TypeError) as exc:
            raise DecodeError(f"upload.pack: bad manifest ({exc})") from None
        names = tuple(c.decode() if isinstance(c, bytes) else c for c in chain)
        if not isinstance(hop, int) or isinstance(hop, bool):
            raise DecodeError("upload.pack: hop is not a number")
        value = cls(files, names, hop, _encoding(h, "upload.pack"))
        # An encoded body is checked once decoded: it must come to exactly ``total`` bytes.
        value.validate(body_len if value.encoding == RAW else value.total)
        return value

    @property
    def total(self) -> int:
        """The files' bytes together: the body's length, decoded."""
        return sum(f.size for f in self.files)

    def validate(self, body_len: int) -> None:
        """``body_len``: of the body, decoded."""
        if not 1 <= len(self.files) <= MAX_PACK_FILES:
            raise DecodeError(f"upload.pack: 1 to {MAX_PACK_FILES} files")
        for f in self.files:
            f.validate("upload.pack")
        if self.total != body_len:
            raise DecodeError("upload.pack: the sizes do not add up to the body")
        check_chain(self.chain, "upload.pack")
        if not 0 <= self.hop < len(self.chain):
            raise DecodeError("upload.pack: hop is outside the chain")

    @property
    def next_worker(self) -> str | None:
        nxt = self.hop + 1
        return self.chain[nxt] if nxt < len(self.chain) else None

    def slices(self) -> list[tuple[PackEntry, int, int]]:
        """Each file with its start and end in the body."""
        out, at = [], 0
        for f in self.files:
            out.append((f, at, at + f.size))
            at += f.size
        return out


@dataclass(frozen=True)
class RestoreChunk:
    """Where a restore chunk's bytes go; its body is them, as ``encoding`` says."""

    seq: int
    offset: int
    encoding: str = RAW

    def to_headers(self) -> dict[str, Any]:
        return _with_encoding({"seq": self.seq, "offset": self.offset}, self.encoding)

    @classmethod
    def from_headers(cls, headers: dict[str, Any] | None) -> RestoreChunk:
        data = dict(headers or {})
        data["encoding"] = _encoding(data, RESTORE_CHUNK_TYPE)
        value: RestoreChunk = _build(cls, data, RESTORE_CHUNK_TYPE)
        if value.offset < 0 or value.seq < 0:
            raise DecodeError("restore.chunk: negative offset")
        return value
