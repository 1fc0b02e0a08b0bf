"""Every message warren sends, as values.

Control messages are frozen dataclasses carried as compact JSON; the AMQP ``type``
property names the class (``TYPE``); ``warren.codec`` encodes, decodes and validates them.
Chunk bodies are never JSON: they travel as raw bytes and their metadata rides in AMQP
headers (``ChunkHeaders``, ``PackHeaders``, ``RestoreChunk``, at the end of this module).
This module holds what clients and the manager say to each other and offers, under the
same names, the codec and the workers' messages (``warren.worker_messages``).
"""

from __future__ import annotations

from dataclasses import dataclass

from warren.codec import (
    HEX32,
    HEX64,
    MAX_NAME_BYTES,
    MAX_PACK_FILES,
    REGISTRY,
    WORKER_NAME,
    Message,
    check_chain,
    check_file_name,
    check_sha256,
    check_size,
    check_upload_id,
    check_worker,
    decode,
    message,
)
from warren.errors import DecodeError
from warren.headers import (
    CHUNK_TYPE,
    ENCODINGS,
    PACK_TYPE,
    RAW,
    RESTORE_CHUNK_TYPE,
    ZSTD,
    ChunkHeaders,
    PackHeaders,
    RestoreChunk,
)
from warren.key_messages import (
    KeyAdd,
    KeyAdded,
    KeyEntry,
    KeyGet,
    KeyList,
    KeyListReply,
    KeyRecord,
    KeyRemove,
    KeyRemoved,
)
from warren.snapshot_messages import (
    ForgetRequest,
    Forgotten,
    SnapshotCommit,
    SnapshotCommitted,
    SnapshotEntry,
    SnapshotGet,
    SnapshotGot,
    SnapshotsReply,
    SnapshotsRequest,
)
from warren.worker_messages import (
    BlobDeleted,
    BlobEntry,
    ChunkRef,
    CopyRequest,
    DeleteBlob,
    DiscardUpload,
    Expect,
    ForgetVersions,
    HaveRequest,
    Heartbeat,
    Inventory,
    PackEntry,
    PackStored,
    RecordVersions,
    ReplicaDamaged,
    ReplicaFailed,
    ReplicaStored,
    ReportRequest,
    RestoreEnd,
    RestoreFailed,
    SealedRecord,
    ServeRequest,
    UploadHave,
    VerifyBlob,
    VerifyResult,
    VersionKey,
    VersionRecord,
)

# Offered here too, so that one import serves: the codec, the workers' messages, the headers.
__all__ = [
    "ForgetRequest",
    "Forgotten",
    "SnapshotCommit",
    "SnapshotCommitted",
    "SnapshotEntry",
    "SnapshotGet",
    "SnapshotGot",
    "SnapshotsReply",
    "SnapshotsRequest",
    "MAX_PACK_FILES",
    "CHUNK_TYPE",
    "RESTORE_CHUNK_TYPE",
    "PACK_TYPE",
    "RAW",
    "ZSTD",
    "ENCODINGS",
    "ChunkHeaders",
    "PackHeaders",
    "RestoreChunk",
    "HEX32",
    "HEX64",
    "MAX_NAME_BYTES",
    "Message",
    "REGISTRY",
    "WORKER_NAME",
    "check_chain",
    "check_file_name",
    "check_sha256",
    "check_size",
    "check_upload_id",
    "check_worker",
    "decode",
    "message",
    "BlobDeleted",
    "BlobEntry",
    "ChunkRef",
    "CopyRequest",
    "DeleteBlob",
    "DiscardUpload",
    "ForgetVersions",
    "HaveRequest",
    "Heartbeat",
    "Inventory",
    "PackEntry",
    "PackStored",
    "Expect",
    "RecordVersions",
    "ReplicaDamaged",
    "ReplicaFailed",
    "ReplicaStored",
    "ReportRequest",
    "RestoreEnd",
    "RestoreFailed",
    "SealedRecord",
    "ServeRequest",
    "UploadHave",
    "VerifyBlob",
    "VerifyResult",
    "VersionKey",
    "VersionRecord",
    "KeyAdd",
    "KeyAdded",
    "KeyEntry",
    "KeyGet",
    "KeyList",
    "KeyListReply",
    "KeyRecord",
    "KeyRemove",
    "KeyRemoved",
]


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
    """Place several sealed chunks at once, on one chain; the manager answers PackAccepted.

    ``chunks``: the files are sealed chunks, named by nothing (``name`` empty): they
    become the sender's chunks, not versions, and a ``commit.request`` names the files
    they make up. (Without it, the files of a pack are versions, as before chunks.)"""

    TYPE = "pack.request"
    files: tuple[PackFile, ...]
    replicas: int
    client: str = ""
    chunks: bool = False

    def validate(self) -> None:
        if not 1 <= len(self.files) <= MAX_PACK_FILES:
            raise DecodeError(f"pack.request: 1 to {MAX_PACK_FILES} files")
        for f in self.files:
            if self.chunks:
                if f.name:
                    raise DecodeError("pack.request: a chunk has no name")
            else:
                check_file_name(f.name)
            check_size(f.size, "size")
            check_sha256(f.sha256, "sha256")


@dataclass(frozen=True)
class CommitFile:
    """A file whose sealed chunks are all stored: its name, what it is, and its chunks in
    order (``sha256`` and ``size`` are the whole file's, as the client read it)."""

    name: str
    size: int
    sha256: str
    chunks: tuple[ChunkRef, ...]
    mode: int = 0
    mtime: float = 0.0


@message
@dataclass(frozen=True)
class CommitRequest(Message):
    """Record files as new versions, each made of chunks the sender already stored; the
    manager answers CommitReply, or an error when a chunk is not the sender's or is held
    by no live worker (then nothing is recorded)."""

    TYPE = "commit.request"
    files: tuple[CommitFile, ...]
    replicas: int
    client: str = ""

    def validate(self) -> None:
        if not 1 <= len(self.files) <= MAX_PACK_FILES:
            raise DecodeError(f"commit.request: 1 to {MAX_PACK_FILES} files")
        for f in self.files:
            check_file_name(f.name)
            check_size(f.size, "size")
            check_sha256(f.sha256, "sha256")
            if not f.chunks:
                raise DecodeError("commit.request: a file is at least one chunk")
            plain = 0
            for c in f.chunks:
                check_sha256(c.sha256, "chunk sha256")
                check_size(c.size, "chunk size")
                check_size(c.plain, "chunk plain size")
                plain += c.plain
            if plain != f.size:
                raise DecodeError("commit.request: the chunks do not add up to the file")


@message
@dataclass(frozen=True)
class CommitReply(Message):
    """The version each committed file became, in the request's order."""

    TYPE = "commit.reply"
    versions: tuple[int, ...]


@message
@dataclass(frozen=True)
class DownloadRequest(Message):
    TYPE = "download.request"
    name: str
    exclude: tuple[str, ...] = ()  # workers that already failed this client
    client: str = ""
    version: int = 0  # 0: the latest
    blob: str = ""  # one of the sender's sealed chunks to stream (then ``name`` is empty)

    def validate(self) -> None:
        if self.blob:
            check_sha256(self.blob, "blob")
        else:
            check_file_name(self.name)


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
    prefix: str = ""  # only names that start with it
    after: str = ""  # only names after it: the next page starts after the last name seen


@message
@dataclass(frozen=True)
class StatusRequest(Message):
    TYPE = "status.request"


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
    # With ``stored``: the holders in ``chain`` are fewer than asked, so they copy the
    # content to this many more workers; the manager sends a replica.stored for each copy
    # and upload.recorded once every one is on disk. Nothing is sent by the client.
    copies: int = 0

    def validate(self) -> None:
        check_upload_id(self.upload_id, "upload_id")
        check_chain(self.chain, "upload.accepted")


@dataclass(frozen=True)
class StoredFile:
    """A file of a pack recorded on the workers that already held its content."""

    upload_id: str
    chain: tuple[str, ...]


@message
@dataclass(frozen=True)
class PackAccepted(Message):
    """Where a pack goes: one upload id per file, in the request's order, and one chain.
    The files in ``stored`` were already held by enough live workers: each is recorded on
    its holders as it is and not sent (the pack carries the others)."""

    TYPE = "pack.accepted"
    upload_ids: tuple[str, ...]
    chain: tuple[str, ...]
    stored: tuple[StoredFile, ...] = ()

    def validate(self) -> None:
        for u in self.upload_ids:
            check_upload_id(u, "upload_ids")
        check_chain(self.chain, "pack.accepted")
        for f in self.stored:
            if f.upload_id not in self.upload_ids:
                raise DecodeError("pack.accepted: a stored file that is not in upload_ids")
            check_chain(f.chain, "pack.accepted stored")


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
    worker: str  # the worker that streams a blob ("" for a file: its chunks are fetched)
    version: int = 1
    mode: int = 0
    mtime: float = 0.0
    chunks: tuple[ChunkRef, ...] = ()  # a file's sealed chunks, in order


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
    """The latest version of each of the sender's files (under the request's prefix), a
    page at a time, in name order: ``more`` says another page follows the last name."""

    TYPE = "list.reply"
    files: tuple[FileEntry, ...]
    more: bool = False


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
    refused: int = 0  # commands claiming to be the manager's it refused since it started


@message
@dataclass(frozen=True)
class StatusReply(Message):
    TYPE = "status.reply"
    workers: tuple[WorkerEntry, ...]
    under_replicated: int
    files: int
    uploads_in_flight: int = 0  # placed, not yet confirmed by every replica
    repairs_in_flight: int = 0  # copies under way to restore replica counts
