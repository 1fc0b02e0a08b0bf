"""The messages of snapshots (restic's vocabulary: ``backup``, ``snapshots``, ``forget``):
a client's requests to the manager and its answers.

A snapshot's names, sizes, modes and chunk lists are in its manifest, which the client
stores as sealed chunks like any file's; the manager keeps only what it needs to list
snapshots and to collect garbage: the id, time, host and tags, the manifest's chunks, the
blobs the snapshot uses (opaque), and ``meta`` (the backed-up paths, sealed with the
owner's manifest key: base64 the manager cannot open). The owner of every request is the
AMQP ``user_id`` the broker validated, never a field of the body.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from warren.codec import Message, check_sha256, check_size, message
from warren.errors import DecodeError
from warren.worker_messages import ChunkRef

SNAPSHOT_ID = re.compile(r"^[0-9a-f]{16}$")
MAX_TAGS = 64
MAX_TAG = 255
MAX_HOST = 255
MAX_META_TEXT = 1 << 20  # base64 of the sealed paths
# A snapshot names at most this many blobs in one commit (10 million files of one chunk).
MAX_SNAPSHOT_CHUNKS = 10_000_000


def check_snapshot_id(value: str, where: str) -> None:
    if not SNAPSHOT_ID.match(value):
        raise DecodeError(f"{where}: a snapshot id is 16 lower-case hex digits")


def check_label(value: str, where: str, most: int) -> None:
    if len(value) > most or not value.isprintable():
        raise DecodeError(f"{where}: at most {most} printable characters")


def check_meta(value: str, where: str) -> None:
    if len(value) > MAX_META_TEXT:
        raise DecodeError(f"{where}: sealed meta of at most {MAX_META_TEXT} characters")
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError(f"{where}: sealed meta that is not base64") from None


@dataclass(frozen=True)
class SnapshotEntry:
    """One snapshot as the manager lists it (``manifest`` only in ``snapshot.got``)."""

    id: str
    time: float  # when the backup started, seconds since the epoch (the client's clock)
    host: str
    tags: tuple[str, ...]
    meta: str  # base64: the paths, sealed with the owner's manifest key
    manifest: tuple[ChunkRef, ...] = ()  # the sealed chunks of its manifest, in order


# -- client -> manager ---------------------------------------------------------------------


@message
@dataclass(frozen=True)
class SnapshotCommit(Message):
    """Record a snapshot whose manifest and every chunk it names the sender stored (or
    found stored); answered SnapshotCommitted, or an error when a chunk is not the
    sender's or has no live holder (then nothing is recorded). ``chunks``: every blob the
    snapshot uses (its files' chunks and its manifest's), each once: the references that
    keep them from garbage collection. ``parent``: the snapshot this backup read as its
    parent (``snapshot.get`` pinned its blobs): those pins end with this commit."""

    TYPE = "snapshot.commit"
    time: float
    host: str
    tags: tuple[str, ...]
    meta: str
    manifest: tuple[ChunkRef, ...]
    chunks: tuple[str, ...]
    replicas: int
    client: str = ""
    parent: str = ""

    def validate(self) -> None:
        check_label(self.host, "snapshot.commit host", MAX_HOST)
        if len(self.tags) > MAX_TAGS:
            raise DecodeError(f"snapshot.commit: at most {MAX_TAGS} tags")
        for tag in self.tags:
            check_label(tag, "snapshot.commit tag", MAX_TAG)
        check_meta(self.meta, "snapshot.commit meta")
        if not self.manifest:
            raise DecodeError("snapshot.commit: a manifest is at least one chunk")
        for c in self.manifest:
            check_sha256(c.sha256, "manifest chunk sha256")
            check_size(c.size, "manifest chunk size")
            check_size(c.plain, "manifest chunk plain size")
        if len(self.chunks) > MAX_SNAPSHOT_CHUNKS:
            raise DecodeError(f"snapshot.commit: at most {MAX_SNAPSHOT_CHUNKS} chunks")
        for sha in self.chunks:
            check_sha256(sha, "snapshot.commit chunk")
        if self.parent:
            check_snapshot_id(self.parent, "snapshot.commit parent")


@message
@dataclass(frozen=True)
class SnapshotsRequest(Message):
    """The sender's snapshots, oldest first; answered SnapshotsReply."""

    TYPE = "snapshots.request"


@message
@dataclass(frozen=True)
class SnapshotGet(Message):
    """One snapshot with its manifest's chunks; answered SnapshotGot, or error not_found.
    ``pin``: the chunks the snapshot uses are pinned for the sender (as an upload's are),
    until its next ``snapshot.commit`` names this one as its parent: a backup that takes it
    as its parent reuses them safely while another client forgets it. (``ls``, ``diff`` and
    ``restore`` only read: they pin nothing, or a forget would free nothing for a day.)"""

    TYPE = "snapshot.get"
    id: str
    pin: bool = False

    def validate(self) -> None:
        check_snapshot_id(self.id, "snapshot.get id")


@message
@dataclass(frozen=True)
class ForgetRequest(Message):
    """Forget these snapshots of the sender (their chunks no snapshot and no version uses
    leave the workers within WARREN_GC_DELAY); answered Forgotten, or error not_found
    naming an unknown id (then nothing is forgotten)."""

    TYPE = "forget.request"
    ids: tuple[str, ...]

    def validate(self) -> None:
        if not self.ids:
            raise DecodeError("forget.request: at least one snapshot id")
        for i in self.ids:
            check_snapshot_id(i, "forget.request id")


# -- manager -> client ---------------------------------------------------------------------


@message
@dataclass(frozen=True)
class SnapshotCommitted(Message):
    TYPE = "snapshot.committed"
    id: str


@message
@dataclass(frozen=True)
class SnapshotsReply(Message):
    TYPE = "snapshots.reply"
    snapshots: tuple[SnapshotEntry, ...]


@message
@dataclass(frozen=True)
class SnapshotGot(Message):
    TYPE = "snapshot.got"
    snapshot: SnapshotEntry


@message
@dataclass(frozen=True)
class Forgotten(Message):
    TYPE = "forgotten"
    ids: tuple[str, ...]
