"""The messages of the workers: what they tell the manager (events, inventories, records),
what the manager tells them (commands), and what they send a client directly (a restore's
end, a verify result). Values, as in ``warren.messages``, which offers these too."""

from __future__ import annotations

from dataclasses import dataclass

from warren.codec import (
    Message,
    check_chain,
    check_sha256,
    check_size,
    check_upload_id,
    check_worker,
    message,
)
from warren.errors import INTEGRITY, DecodeError

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
    # A wire code (warren.errors.WIRE_CODES): INTEGRITY when the bytes were wrong,
    # UNAVAILABLE when the worker could not forward or write them (a retry may succeed).
    code: str = INTEGRITY


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
    # Commands only the manager gives that it refused since it started: they came by a key
    # anyone may publish with, or not from WARREN_MANAGER_USER (worker.orders.ManagerOnly).
    refused: int = 0

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
class ChunkRef:
    """One chunk of a file, as the catalog knows it: the blob that holds it sealed (its
    SHA-256 and size as stored) and how many bytes of the file it holds once opened. Only
    the owner's key opens it; to the manager and the workers it is an opaque blob."""

    sha256: str
    size: int
    plain: int


@dataclass(frozen=True)
class VersionRecord:
    """One version of a file, as the workers holding its content keep it beside the data:
    enough for a manager with an empty catalog to list and restore it again. ``sha256``
    and ``size`` are the file's own; ``chunks`` the sealed blobs that hold it, in order."""

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
    chunks: tuple[ChunkRef, ...] = ()

    @property
    def key(self) -> VersionKey:
        return VersionKey(self.owner, self.name, self.version)


@dataclass(frozen=True)
class SealedRecord:
    """A version record as a worker keeps it: sealed with the manager's key
    (``manager/records.py``), beside the content it names (``sha256``, in the clear: the
    worker holds that blob and keeps the record only while it does). The worker can
    neither read it nor forge one: ``sealed`` is base64 text."""

    sha256: str
    sealed: str


@message
@dataclass(frozen=True)
class Inventory(Message):
    """Everything a worker holds: its blobs, the sealed version records of those blobs,
    and the sealed deletions it was told of. Sent on every (re)connect and when the manager
    asks (``worker.report``), so a manager can rebuild its catalog from the workers."""

    TYPE = "worker.inventory"
    worker: str
    blobs: tuple[BlobEntry, ...]
    records: tuple[SealedRecord, ...] = ()
    forgotten: tuple[str, ...] = ()  # sealed VersionKeys, base64
    # A large inventory travels in pages (a message has a size limit): ``report`` names
    # the report they belong to, ``page`` counts from 0, ``last`` ends it. The blobs the
    # worker holds are the union of every page's.
    report: str = ""
    page: int = 0
    last: bool = True

    def validate(self) -> None:
        check_worker(self.worker, "worker")
        for b in self.blobs:
            check_sha256(b.sha256, "blobs")
        for r in self.records:
            check_sha256(r.sha256, "records")


@dataclass(frozen=True)
class Expect:
    """An upload placed on this worker, the broker user its chunks come from, and the
    chain the manager placed it on (its chunks must carry exactly that one; empty from
    a manager before chains were sent: any chain then)."""

    upload_id: str
    sender: str
    chain: tuple[str, ...] = ()


@message
@dataclass(frozen=True)
class RecordVersions(Message):
    """Manager -> worker, on its chunks queue: keep these sealed version records beside the
    data (written and synced before the worker takes the next message: before any chunk of a
    new upload, whose placement published them first), and take the chunks of the uploads
    in ``expect`` from their sender only (worker.expected)."""

    TYPE = "worker.record"
    records: tuple[SealedRecord, ...]
    expect: tuple[Expect, ...] = ()

    def validate(self) -> None:
        for r in self.records:
            check_sha256(r.sha256, "records")
        for e in self.expect:
            check_upload_id(e.upload_id, "expect")
            if not e.sender:
                raise DecodeError("worker.record: an expected upload without its sender")
            if e.chain:
                check_chain(e.chain, "worker.record")


@message
@dataclass(frozen=True)
class ForgetVersions(Message):
    """Manager -> every worker, on its chunks queue: these versions were deleted (each a
    VersionKey sealed with the manager's key, base64: kept, never read, by the worker)."""

    TYPE = "worker.forget"
    keys: tuple[str, ...]


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
