"""The records the workers keep beside their blobs, sealed with the manager's key.

Every version record and every deletion the manager hands to a worker is sealed here
(``warren.sealing``), so a worker keeps them without reading them, and a manager rebuilding
its catalog from the workers' inventories takes only what opens with its key: a worker can
neither plant a version, nor forge a deletion, nor move a record onto other content (the
content's SHA-256 is part of what a record is sealed with). Owners' wrapped keys, added or
removed (``manager/keys.py``), are sealed here too and ride with the deletions, which a worker
keeps and hands back whatever blobs it holds.
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


def _record_context(sha256: str) -> bytes:
    return b"warren record " + sha256.encode()


@dataclass(frozen=True)
class Opened:
    """What an inventory's records say, once opened: the versions, the deletions, and how
    many records did not open (forged, damaged, or sealed with another key)."""

    records: list[m.VersionRecord]
    forgotten: list[m.VersionKey]
    forged: int
    keys: list[m.KeyRecord] = field(default_factory=list)


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

    def open(self, inventory: m.Inventory) -> Opened:
        records, forgotten, keys, forged = [], [], [], 0
        for entry in inventory.records:
            try:
                record = self._open(entry.sealed, _record_context(entry.sha256), m.VersionRecord)
            except DecodeError:
                forged += 1
                continue
            records.append(record)
        for sealed in inventory.forgotten:
            try:
                forgotten.append(self._open(sealed, _DELETION, m.VersionKey))
                continue
            except DecodeError:
                pass
            try:
                keys.append(self._open(sealed, _KEY, m.KeyRecord))
            except DecodeError:
                forged += 1
        return Opened(records, forgotten, forged, keys)

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


def _json(value: m.VersionRecord | m.VersionKey | m.KeyRecord) -> bytes:
    return json.dumps(dataclasses.asdict(value), separators=(",", ":")).encode()
