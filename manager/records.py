"""The records the workers keep beside their blobs, sealed with the manager's key.

Every version record and every deletion the manager hands to a worker is sealed here
(``warren.sealing``), so a worker keeps them without reading them, and a manager rebuilding
its catalog from the workers' inventories takes only what opens with its key: a worker can
neither plant a version, nor forge a deletion, nor move a record onto other content (the
content's SHA-256 is part of what a record is sealed with). Owners' wrapped keys, added or
removed (``manager/keys.py``), are sealed here too and ride with the deletions, which a worker
keeps and hands back whatever blobs it holds; so do snapshots, made or forgotten
(``manager/snapshots.py``), for the same reason: a snapshot is not one blob's, and a rebuilt
catalog must have every one of them (and none that was forgotten).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from warren import messages as m
from warren.codec import _build
from warren.errors import DecodeError
from warren.sealing import Sealer

_DELETION = b"warren deletion"
# Owners' wrapped keys ride with the deletions (worker.forget): a worker keeps every such
# line and hands each back, whatever blobs it holds, which is what a key needs. The context
# differs, so neither can pass for the other.
_KEY = b"warren owner key"
# Snapshots made and forgotten ride there too, each kind under its own context.
_SNAPSHOT = b"warren snapshot"
_SNAPSHOT_GONE = b"warren snapshot forgotten"


def _record_context(sha256: str) -> bytes:
    return b"warren record " + sha256.encode()


@dataclass(frozen=True)
class SnapshotRecord:
    """A snapshot as the workers keep it: its row and every blob it uses with its size as
    stored (``chunks`` and ``sizes`` side by side), so a rebuilt catalog knows them as the
    owner's chunks again, wanted on ``wanted`` workers."""

    owner: str
    id: str
    time: float
    host: str
    tags: tuple[str, ...]
    meta: str
    manifest: tuple[m.ChunkRef, ...]
    chunks: tuple[str, ...]
    sizes: tuple[int, ...]
    wanted: int
    created: float


@dataclass(frozen=True)
class SnapshotGone:
    """A snapshot forgotten at ``at``: a rebuilt catalog does not take it back."""

    owner: str
    id: str
    at: float


@dataclass(frozen=True)
class Opened:
    """What an inventory's records say, once opened: the versions, the deletions, and how
    many records did not open (forged, damaged, or sealed with another key)."""

    records: list[m.VersionRecord]
    forgotten: list[m.VersionKey]
    forged: int
    keys: list[m.KeyRecord] = field(default_factory=list)
    snapshots: list[SnapshotRecord] = field(default_factory=list)
    snapshots_gone: list[SnapshotGone] = field(default_factory=list)


class RecordSeal:
    def __init__(self, sealer: Sealer) -> None:
        self._sealer = sealer

    def seal(self, records: list[m.VersionRecord]) -> tuple[m.SealedRecord, ...]:
        """Each record beside its version's first chunk (a worker keeps it while it holds
        that blob): the file's own SHA-256 never reaches a worker."""
        return tuple(
            m.SealedRecord(_anchor(r), self._seal(_json(r), _record_context(_anchor(r))))
            for r in records
        )

    def seal_deletions(self, keys: list[m.VersionKey]) -> tuple[str, ...]:
        return tuple(self._seal(_json(k), _DELETION) for k in keys)

    def seal_key(self, record: m.KeyRecord) -> str:
        """An owner's key added or removed, for every worker's log (``worker.forget``)."""
        return self._seal(_json(record), _KEY)

    def seal_snapshot(self, record: SnapshotRecord | SnapshotGone) -> str:
        """A snapshot made or forgotten, for every worker's log (``worker.forget``)."""
        context = _SNAPSHOT if isinstance(record, SnapshotRecord) else _SNAPSHOT_GONE
        return self._seal(_json(record), context)

    def open(self, inventory: m.Inventory) -> Opened:
        records: list[m.VersionRecord] = []
        forgotten: list[m.VersionKey] = []
        keys: list[m.KeyRecord] = []
        forged = 0
        snapshots: list[SnapshotRecord] = []
        gone: list[SnapshotGone] = []
        for entry in inventory.records:
            try:
                record = self._open(entry.sealed, _record_context(entry.sha256), m.VersionRecord)
            except DecodeError:
                forged += 1
                continue
            records.append(record)
        # Each line is one of these kinds; the context it opens under says which.
        kinds: tuple[tuple[bytes, type[Any], list[Any]], ...] = (
            (_DELETION, m.VersionKey, forgotten),
            (_KEY, m.KeyRecord, keys),
            (_SNAPSHOT, SnapshotRecord, snapshots),
            (_SNAPSHOT_GONE, SnapshotGone, gone),
        )
        for sealed in inventory.forgotten:
            for context, kind, into in kinds:
                try:
                    into.append(self._open(sealed, context, kind))
                    break
                except DecodeError:
                    continue
            else:
                forged += 1
        return Opened(records, forgotten, forged, keys, snapshots, gone)

    def _seal(self, plaintext: bytes, context: bytes) -> str:
        return base64.b64encode(self._sealer.seal(plaintext, context)).decode()

    def _open(self, text: str, context: bytes, kind: type[Any]) -> Any:
        try:
            sealed = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise DecodeError("a record that is not base64") from None
        plaintext = self._sealer.open(sealed, context)
        try:
            return _build(kind, json.loads(plaintext), "record")
        except ValueError as exc:  # sealed by this key but unreadable: a bug, not a forgery
            raise DecodeError(f"a sealed record that does not decode ({exc})") from None


def _anchor(r: m.VersionRecord) -> str:
    return r.chunks[0].sha256 if r.chunks else r.sha256


def _json(
    value: m.VersionRecord | m.VersionKey | m.KeyRecord | SnapshotRecord | SnapshotGone,
) -> bytes:
    return json.dumps(dataclasses.asdict(value), separators=(",", ":")).encode()
