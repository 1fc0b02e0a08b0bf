"""Every message warren sends, as values.

Control messages are frozen dataclasses carried as compact JSON; the AMQP ``type``
property names the class (``TYPE``). Chunk bodies are never JSON: they travel as raw
bytes and their metadata rides in AMQP headers (``ChunkHeaders``, ``RestoreChunk``).
``decode`` wraps every failure, from bad JSON to a wrong field type, in ``DecodeError``
so that a consumer can dead-letter the message and carry on.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar, Union

from warren.errors import DecodeError

HEX64 = re.compile(r"^[0-9a-f]{64}$")
HEX32 = re.compile(r"^[0-9a-f]{32}$")
WORKER_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_NAME_BYTES = 4096

T = TypeVar("T", bound="Message")


class Message:
    """Base of every control message: JSON on the wire, the class in the ``type`` property."""

    TYPE: ClassVar[str] = ""

    def encode(self) -> bytes:
        data = dataclasses.asdict(self)  # type: ignore[call-overload]
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()

    @classmethod
    def decode(cls: type[T], body: bytes) -> T:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"{cls.TYPE}: body is not JSON ({exc})") from None
        value: T = _build(cls, data, cls.TYPE)
        value.validate()
        return value

    def validate(self) -> None:
        """Check the values, not just the types; raise DecodeError on anything invalid."""


REGISTRY: dict[str, type[Message]] = {}


def message(cls: type[T]) -> type[T]:
    """Register a message class under its TYPE so that ``decode`` can find it."""
    if not cls.TYPE or cls.TYPE in REGISTRY:
        raise TypeError(f"message type {cls.TYPE!r} is empty or taken")
    REGISTRY[cls.TYPE] = cls
    return cls


def decode(type_name: str | None, body: bytes) -> Message:
    """Decode a control message by its AMQP ``type`` property."""
    cls = REGISTRY.get(type_name or "")
    if cls is None:
        raise DecodeError(f"unknown message type {type_name!r}")
    return cls.decode(body)


_HINTS: dict[type[Any], dict[str, Any]] = {}


def _type_hints(cls: type[Any]) -> dict[str, Any]:
    """The resolved field types of a message class, cached: resolving costs an eval each."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _build(cls: type[Any], data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise DecodeError(f"{where}: expected an object")
    hints = _type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if f.default is not dataclasses.MISSING:
                continue
            raise DecodeError(f"{where}: missing field {f.name!r}")
        kwargs[f.name] = _coerce(data[f.name], hints[f.name], f"{where}.{f.name}")
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list):
            raise DecodeError(f"{where}: expected a list")
        (item,) = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return tuple(_coerce(v, item, f"{where}[]") for v in value)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(value, hint, where)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, bool):
        raise DecodeError(f"{where}: expected int")
    if not isinstance(value, hint):
        raise DecodeError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    return value


def check_sha256(value: str, where: str) -> None:
    if not HEX64.match(value):
        raise DecodeError(f"{where}: not a hex SHA-256")


def check_upload_id(value: str, where: str) -> None:
    if not HEX32.match(value):
        raise DecodeError(f"{where}: not an upload id")


def check_worker(value: str, where: str) -> None:
    if not WORKER_NAME.match(value):
        raise DecodeError(f"{where}: {value!r} is not a worker name")


def check_chain(chain: tuple[str, ...], where: str) -> None:
    """A chain names at least one worker, each by a valid name."""
    if not chain:
        raise DecodeError(f"{where}: empty chain")
    for w in chain:
        if not isinstance(w, str):
            raise DecodeError(f"{where}: the chain holds a non-name")
        check_worker(w, "chain")


def check_file_name(value: str) -> None:
    """File names may hold spaces and any Unicode; they only ever live in the catalog."""
    if not value or "\x00" in value or len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise DecodeError("a file name must be 1 to 4096 bytes with no NUL character")


def check_size(value: int, where: str) -> None:
    if value < 0:
        raise DecodeError(f"{where}: negative size")


# -- client -> manager ---------------------------------------------------------------------


@message
@dataclass(frozen=True)
class UploadRequest(Message):
    TYPE = "upload.request"
    name: str
    size: int
    sha256: str
    replicas: int
    client: str = ""
    mode: int = 0  # the file's permission bits, restored with it (0: unknown)
    mtime: float = 0.0  # its modification time, restored with it (0: unknown)

    def validate(self) -> None:
        check_file_name(self.name)
        check_size(self.size, "size")
        check_sha256(self.sha256, "sha256")


# Small files travel in packs: one request, one message and one confirmation per worker for
# up to MAX_PACK_FILES files, instead of all of that for each file.
MAX_PACK_FILES = 256


@dataclass(frozen=True)
class PackFile:
    name: str
    size: int
    sha256: str
    mode: int = 0
    mtime: float = 0.0


@message
@dataclass(frozen=True)
class PackRequest(Message):
    """Place several small files at once, on one chain; the manager answers PackAccepted."""

    TYPE = "pack.request"
    files: tuple[PackFile, ...]
    replicas: int
    client: str = ""

    def validate(self) -> None:
        if not 1 <= len(self.files) <= MAX_PACK_FILES:
            raise DecodeError(f"pack.request: 1 to {MAX_PACK_FILES} files")
        for f in self.files:
            check_file_name(f.name)
            check_size(f.size, "size")
            check_sha256(f.sha256, "sha256")


@message
@dataclass(frozen=True)
class DownloadRequest(Message):
    TYPE = "download.request"
    name: str
    exclude: tuple[str, ...] = ()  # workers that already failed this client
    client: str = ""
    version: int = 0  # 0: the latest


@message
@dataclass(frozen=True)
class VersionsRequest(Message):
    """Every kept version of one of the sender's files; answered with VersionsReply."""

    TYPE = "versions.request"
    name: str


@message
@dataclass(frozen=True)
class DeleteRequest(Message):
    """Delete one version of a file, or (version 0) all of them; answered DeleteReply."""

    TYPE = "delete.request"
    name: str
    version: int = 0


@message
@dataclass(frozen=True)
class VerifyRequest(Message):
    """Have every live holder re-hash its copy of these files (latest versions), or of all
    the sender's files; answered VerifyAccepted, then a verify.result per copy."""

    TYPE = "verify.request"
    names: tuple[str, ...] = ()


@message
@dataclass(frozen=True)
class PruneRequest(Message):
    """Keep the ``keep_last`` newest versions of each file under ``prefix``, delete the
    rest (or, with ``dry_run``, only say which); answered PruneReply."""

    TYPE = "prune.request"
    keep_last: int
    prefix: str = ""
    dry_run: bool = False

    def validate(self) -> None:
        if self.keep_last < 1:
            raise DecodeError("prune.request: keep_last must be at least 1")


@message
@dataclass(frozen=True)
class ListRequest(Message):
    TYPE = "list.request"
    client: str = ""
    prefix: str = ""  # only names that start with it


@message
@dataclass(frozen=True)
class StatusRequest(Message):
    TYPE = "status.request"
    client: str = ""


# -- manager -> client ---------------------------------------------------------------------


@message
@dataclass(frozen=True)
class UploadAccepted(Message):
    TYPE = "upload.accepted"
    upload_id: str
    chain: tuple[str, ...]
    chunk_size: int
    # The cluster already held this content on every worker of ``chain``: the upload is
    # recorded as it is, nothing is to be sent.
    stored: bool = False
    # An unfinished upload of the same file by the same user goes on: the primary says
    # which chunks it has (upload.have), and only the others are sent.
    resumed: bool = False

    def validate(self) -> None:
        check_upload_id(self.upload_id, "upload_id")
        check_chain(self.chain, "upload.accepted")


@message
@dataclass(frozen=True)
class PackAccepted(Message):
    """Where a pack goes: one upload id per file, in the request's order, and one chain."""

    TYPE = "pack.accepted"
    upload_ids: tuple[str, ...]
    chain: tuple[str, ...]

    def validate(self) -> None:
        for u in self.upload_ids:
            check_upload_id(u, "upload_ids")
        check_chain(self.chain, "pack.accepted")


@message
@dataclass(frozen=True)
class PackRecorded(Message):
    """These uploads of a pack are in the catalog (the pack's UploadRecorded)."""

    TYPE = "pack.recorded"
    upload_ids: tuple[str, ...]


@message
@dataclass(frozen=True)
class UploadRecorded(Message):
    """Every replica of the upload is in the catalog: ``list`` shows the file from now on."""

    TYPE = "upload.recorded"
    upload_id: str
    name: str


@message
@dataclass(frozen=True)
class DownloadAccepted(Message):
    TYPE = "download.accepted"
    name: str
    size: int
    sha256: str
    worker: str
    version: int = 1
    mode: int = 0
    mtime: float = 0.0


@message
@dataclass(frozen=True)
class ErrorReply(Message):
    """The manager's answer when it cannot do what was asked; ``code`` picks the exit code."""

    TYPE = "error"
    code: str  # one of warren.errors.WIRE_CODES ("not_found", "refused", ...)
    message: str


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    sha256: str
    replicas: tuple[str, ...]  # live workers holding a verified copy
    wanted: int
    created: float
    version: int = 1  # this entry's version of the name
    versions: int = 1  # how many versions of the name are kept
    mode: int = 0
    mtime: float = 0.0


@message
@dataclass(frozen=True)
class ListReply(Message):
    """The latest version of each of the sender's files (under the request's prefix)."""

    TYPE = "list.reply"
    files: tuple[FileEntry, ...]


@dataclass(frozen=True)
class VerifyCopy:
    name: str
    version: int
    worker: str
    sha256: str


@message
@dataclass(frozen=True)
class VerifyAccepted(Message):
    """The copies being re-hashed: a verify.result will come for each (under the request's
    correlation id). ``missing``: files with no live copy at all."""

    TYPE = "verify.accepted"
    copies: tuple[VerifyCopy, ...]
    missing: tuple[str, ...] = ()


@message
@dataclass(frozen=True)
class VersionsReply(Message):
    """Every kept version of one file, oldest first."""

    TYPE = "versions.reply"
    versions: tuple[FileEntry, ...]


@message
@dataclass(frozen=True)
class DeleteReply(Message):
    """The versions a DeleteRequest removed."""

    TYPE = "delete.reply"
    name: str
    versions: tuple[int, ...]


@message
@dataclass(frozen=True)
class PruneReply(Message):
    """The versions a prune removed (or, in a dry run, would remove)."""

    TYPE = "prune.reply"
    removed: tuple[FileEntry, ...]
    dry_run: bool = False


@dataclass(frozen=True)
class WorkerEntry:
    name: str
    alive: bool
    free_bytes: int
    used_bytes: int
    files: int
    last_seen: float
    scrubbed_at: float = 0.0  # its last full scrub finished then (0: not since it started)
    damaged: int = 0  # damaged copies it found and quarantined


@message
@dataclass(frozen=True)
class StatusReply(Message):
    TYPE = "status.reply"
    workers: tuple[WorkerEntry, ...]
    under_replicated: int
    files: int
    uploads_in_flight: int = 0  # placed, not yet confirmed by every replica
    repairs_in_flight: int = 0  # copies under way to restore replica counts


# -- worker -> manager (and client) --------------------------------------------------------


@message
@dataclass(frozen=True)
class ReplicaStored(Message):
    """A worker has the whole file on disk, fsynced and SHA-256 verified."""

    TYPE = "replica.stored"
    upload_id: str
    worker: str
    sha256: str
    size: int
    hop: int  # 0 = primary, 1 = first backup, ...

    def validate(self) -> None:
        check_upload_id(self.upload_id, "upload_id")
        check_worker(self.worker, "worker")
        check_sha256(self.sha256, "sha256")


@dataclass(frozen=True)
class PackEntry:
    """One file of a pack: its upload and its bytes' hash and length (in pack order)."""

    upload_id: str
    sha256: str
    size: int

    def validate(self, where: str) -> None:
        check_upload_id(self.upload_id, f"{where}.upload_id")
        check_sha256(self.sha256, f"{where}.sha256")
        check_size(self.size, f"{where}.size")


@message
@dataclass(frozen=True)
class PackStored(Message):
    """A worker has these files of a pack on disk, synced and SHA-256 verified."""

    TYPE = "pack.stored"
    worker: str
    hop: int
    files: tuple[PackEntry, ...]

    def validate(self) -> None:
        check_worker(self.worker, "worker")
        for f in self.files:
            f.validate("files")


@message
@dataclass(frozen=True)
class ReplicaFailed(Message):
    TYPE = "replica.failed"
    upload_id: str
    worker: str
    reason: str


@message
@dataclass(frozen=True)
class Heartbeat(Message):
    TYPE = "worker.heartbeat"
    worker: str
    free_bytes: int
    used_bytes: int
    files: int
    scrubbed_at: float = 0.0  # when the worker last finished re-reading every blob (0: never)
    damaged: int = 0  # damaged copies it has found and quarantined, in all

    def validate(self) -> None:
        check_worker(self.worker, "worker")


@message
@dataclass(frozen=True)
class ReplicaDamaged(Message):
    """Worker -> manager: a stored copy failed its SHA-256 when re-read (scrub or verify).
    It is quarantined: never served, never counted; the manager has a good copy made."""

    TYPE = "replica.damaged"
    worker: str
    sha256: str
    reason: str

    def validate(self) -> None:
        check_worker(self.worker, "worker")
        check_sha256(self.sha256, "sha256")


@dataclass(frozen=True)
class BlobEntry:
    sha256: str
    size: int


@dataclass(frozen=True)
class VersionKey:
    owner: str
    name: str
    version: int


@dataclass(frozen=True)
class VersionRecord:
    """One version of a file, as the workers holding its content keep it beside the data:
    enough for a manager with an empty catalog to list and restore it again."""

    owner: str
    name: str
    version: int
    sha256: str
    size: int
    created: float
    wanted: int
    mode: int
    mtime: float
    upload_id: str

    @property
    def key(self) -> VersionKey:
        return VersionKey(self.owner, self.name, self.version)


@message
@dataclass(frozen=True)
class Inventory(Message):
    """Everything a worker holds: its blobs, the version records of those blobs, and the
    versions it was told were deleted. Sent on every (re)connect and when the manager asks
    (``worker.report``), so a manager can rebuild its catalog from the workers."""

    TYPE = "worker.inventory"
    worker: str
    blobs: tuple[BlobEntry, ...]
    records: tuple[VersionRecord, ...] = ()
    forgotten: tuple[VersionKey, ...] = ()

    def validate(self) -> None:
        check_worker(self.worker, "worker")
        for b in self.blobs:
            check_sha256(b.sha256, "blobs")
        for r in self.records:
            check_sha256(r.sha256, "records")


@message
@dataclass(frozen=True)
class RecordVersions(Message):
    """Manager -> worker, on its chunks queue: keep these version records beside the data
    (written and synced before the worker takes the next message: before any chunk of a
    new upload, whose placement published them first)."""

    TYPE = "worker.record"
    records: tuple[VersionRecord, ...]

    def validate(self) -> None:
        for r in self.records:
            check_sha256(r.sha256, "records")
            check_file_name(r.name)


@message
@dataclass(frozen=True)
class ForgetVersions(Message):
    """Manager -> every worker, on its chunks queue: these versions were deleted."""

    TYPE = "worker.forget"
    keys: tuple[VersionKey, ...]


@message
@dataclass(frozen=True)
class ReportRequest(Message):
    """Manager -> worker: send your inventory (with records) again, e.g. to a manager that
    has just become active."""

    TYPE = "worker.report"


# -- manager -> worker ---------------------------------------------------------------------


@message
@dataclass(frozen=True)
class ServeRequest(Message):
    """Stream a blob to a client's reply queue."""

    TYPE = "worker.serve"
    sha256: str
    size: int
    reply_to: str
    correlation_id: str

    def validate(self) -> None:
        check_sha256(self.sha256, "sha256")


@message
@dataclass(frozen=True)
class CopyRequest(Message):
    """Repair: send a blob to ``target`` as an upload of one hop, so it gets a replica."""

    TYPE = "worker.copy"
    sha256: str
    size: int
    target: str
    upload_id: str

    def validate(self) -> None:
        check_sha256(self.sha256, "sha256")
        check_worker(self.target, "target")
        check_upload_id(self.upload_id, "upload_id")


@message
@dataclass(frozen=True)
class DeleteBlob(Message):
    """Manager -> worker: remove this blob, which no version has used for WARREN_GC_DELAY
    seconds. The worker answers BlobDeleted once it is gone from its disk."""

    TYPE = "worker.delete"
    sha256: str

    def validate(self) -> None:
        check_sha256(self.sha256, "sha256")


@message
@dataclass(frozen=True)
class BlobDeleted(Message):
    """Worker -> manager: the blob is no longer on this worker's disk."""

    TYPE = "blob.deleted"
    worker: str
    sha256: str
    size: int  # bytes given back (0 when it was not there)

    def validate(self) -> None:
        check_worker(self.worker, "worker")
        check_sha256(self.sha256, "sha256")


@message
@dataclass(frozen=True)
class HaveRequest(Message):
    """Manager -> a resumed upload's primary: tell the client which chunks you have."""

    TYPE = "worker.have"
    upload_id: str
    reply_to: str
    correlation_id: str

    def validate(self) -> None:
        check_upload_id(self.upload_id, "upload_id")


@message
@dataclass(frozen=True)
class UploadHave(Message):
    """Primary -> client: the chunks of an unfinished upload already written here (or
    ``complete``: every one, the replica is finished)."""

    TYPE = "upload.have"
    upload_id: str
    seqs: tuple[int, ...]
    complete: bool = False


@message
@dataclass(frozen=True)
class DiscardUpload(Message):
    """Manager -> worker, on its chunks queue (after any chunk of it): the upload was
    abandoned; remove its partial data."""

    TYPE = "worker.discard"
    upload_id: str

    def validate(self) -> None:
        check_upload_id(self.upload_id, "upload_id")


@message
@dataclass(frozen=True)
class VerifyBlob(Message):
    """Manager -> a holder: re-read and re-hash this blob now; answer the client with
    verify.result (and the manager with replica.damaged if it is damaged)."""

    TYPE = "worker.verify"
    sha256: str
    size: int
    reply_to: str
    correlation_id: str

    def validate(self) -> None:
        check_sha256(self.sha256, "sha256")


@message
@dataclass(frozen=True)
class VerifyResult(Message):
    """Holder -> client: one copy, re-hashed just now."""

    TYPE = "verify.result"
    worker: str
    sha256: str
    ok: bool
    reason: str = ""


# -- worker -> client: a restore -----------------------------------------------------------


@message
@dataclass(frozen=True)
class RestoreEnd(Message):
    """Sent after the last restore chunk: the worker read every byte it holds."""

    TYPE = "restore.end"
    worker: str
    sha256: str
    size: int


@message
@dataclass(frozen=True)
class RestoreFailed(Message):
    TYPE = "restore.failed"
    worker: str
    reason: str


# -- chunks: raw bytes with their metadata in AMQP headers ---------------------------------

CHUNK_TYPE = "upload.chunk"
RESTORE_CHUNK_TYPE = "restore.chunk"


@dataclass(frozen=True)
class ChunkHeaders:
    """Where one upload chunk belongs. The body is the chunk's bytes, nothing else."""

    upload_id: str
    seq: int
    offset: int
    total_size: int
    chunk_count: int
    sha256: str  # of the whole file
    chain: tuple[str, ...]  # every worker that must store the file, primary first
    hop: int  # index in chain of the worker this message is addressed to

    def to_headers(self) -> dict[str, Any]:
        h = dataclasses.asdict(self)
        h["chain"] = list(self.chain)
        return h

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
        value: ChunkHeaders = _build(cls, data, "upload.chunk")
        value.validate(body_len)
        return value

    def validate(self, body_len: int) -> None:
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
    """What a pack message holds: its body is the files' bytes back to back, in order."""

    files: tuple[PackEntry, ...]
    chain: tuple[str, ...]
    hop: int

    def to_headers(self) -> dict[str, Any]:
        manifest = [[f.upload_id, f.sha256, f.size] for f in self.files]
        return {
            "files": json.dumps(manifest, separators=(",", ":")),
            "chain": list(self.chain),
            "hop": self.hop,
        }

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
        value = cls(files, names, hop)
        value.validate(body_len)
        return value

    def validate(self, body_len: int) -> None:
        if not 1 <= len(self.files) <= MAX_PACK_FILES:
            raise DecodeError(f"upload.pack: 1 to {MAX_PACK_FILES} files")
        for f in self.files:
            f.validate("upload.pack")
        if sum(f.size for f in self.files) != body_len:
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
    seq: int
    offset: int

    def to_headers(self) -> dict[str, Any]:
        return {"seq": self.seq, "offset": self.offset}

    @classmethod
    def from_headers(cls, headers: dict[str, Any] | None) -> RestoreChunk:
        value: RestoreChunk = _build(cls, headers or {}, RESTORE_CHUNK_TYPE)
        if value.offset < 0 or value.seq < 0:
            raise DecodeError("restore.chunk: negative offset")
        return value
