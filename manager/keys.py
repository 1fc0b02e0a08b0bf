"""Owners' wrapped keys in the manager's catalog, and the requests that manage them.

The manager keeps each owner's master key only as the client wrapped it (``warren.ownerkey``:
sealed under a key derived from a password it never sees), so it cannot open any of them;
it hands an owner's wrapped keys to that owner alone. The owner is always the sender's
broker user (the AMQP ``user_id`` RabbitMQ validated), never a field of a request, so no
owner can see, add to or remove another's keys.

Every key added or removed is also sent, sealed with the manager's key, to every worker's
records log (``manager/records.py``), so a manager rebuilding its catalog on an empty data
dir gets the keys back (``merge``), and a worker can neither plant a key nor drop one.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from manager.outbox import Outbox
from warren import messages as m
from warren.errors import NotFound, Refused

log = logging.getLogger("warren.manager")

SCHEMA = """
CREATE TABLE IF NOT EXISTS owner_keys (
    owner TEXT NOT NULL, id TEXT NOT NULL, wrapped BLOB NOT NULL, created REAL NOT NULL,
    host TEXT NOT NULL, PRIMARY KEY (owner, id));
CREATE TABLE IF NOT EXISTS owner_keys_removed (
    owner TEXT NOT NULL, id TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (owner, id));
"""


def key_id(wrapped: bytes) -> str:
    """A key's id: the first 8 bytes of the SHA-256 of its wrapped bytes, in hex. The same
    wrapping sent twice (a client retrying) is the same key."""
    return hashlib.sha256(wrapped).hexdigest()[:16]


class Owned(Protocol):
    owner: str


class Catalogued(Protocol):
    @property
    def db(self) -> sqlite3.Connection: ...

    def workers(self) -> list[m.WorkerEntry]: ...


class KeyStore:
    """The wrapped keys of every owner, in the catalog's database (tables in ``SCHEMA``,
    made when the catalog opens)."""

    def __init__(self, catalog: Catalogued) -> None:
        self.catalog = catalog

    @property
    def db(self) -> sqlite3.Connection:
        return self.catalog.db

    def entries(self, owner: str, wrapped: bool = False) -> list[m.KeyEntry]:
        rows = self.db.execute(
            "SELECT id, created, host, wrapped FROM owner_keys WHERE owner=? ORDER BY created, id",
            (owner,),
        ).fetchall()
        return [
            m.KeyEntry(i, c, h, base64.b64encode(w).decode() if wrapped else "")
            for i, c, h, w in rows
        ]

    def add(self, owner: str, wrapped: bytes, host: str, now: float) -> m.KeyRecord | None:
        """Keep a wrapping; the record to hand the workers, or None if it was kept already."""
        kid = key_id(wrapped)
        with self.db:
            self.db.execute("BEGIN")
            cur = self.db.execute(
                "INSERT OR IGNORE INTO owner_keys VALUES (?,?,?,?,?)",
                (owner, kid, wrapped, now, host),
            )
            if cur.rowcount == 0:
                return None
            self.db.execute("DELETE FROM owner_keys_removed WHERE owner=? AND id=?", (owner, kid))
        return m.KeyRecord(owner, kid, now, host, base64.b64encode(wrapped).decode())

    def remove(self, owner: str, kid: str, now: float) -> m.KeyRecord:
        """Forget one key of ``owner``: NotFound for an id it does not have, Refused for its
        last one (the data would be lost with it)."""
        with self.db:
            self.db.execute("BEGIN")
            rows = self.db.execute("SELECT id FROM owner_keys WHERE owner=?", (owner,))
            ids = [r[0] for r in rows]
            if kid not in ids:
                raise NotFound(f"you have no key with id {kid}.")
            if len(ids) == 1:
                raise Refused(
                    f"key {kid} is your last key: without it nothing you stored can be read, "
                    "so it is kept (add another with `key add` first)."
                )
            self.db.execute("DELETE FROM owner_keys WHERE owner=? AND id=?", (owner, kid))
            self.db.execute(
                "INSERT OR REPLACE INTO owner_keys_removed VALUES (?,?,?)", (owner, kid, now)
            )
        return m.KeyRecord(owner, kid, now, removed=True)

    def merge(self, records: Iterable[m.KeyRecord]) -> tuple[int, int]:
        """Take in the key records a worker keeps: keys the catalog lacks are added unless
        removed since, removals are applied (the later of an add and a removal of one id
        wins). Idempotent. Returns (added, removed)."""
        added = removed = 0
        with self.db:
            self.db.execute("BEGIN")
            for r in records:
                if r.removed:
                    row = self.db.execute(
                        "SELECT at FROM owner_keys_removed WHERE owner=? AND id=?", (r.owner, r.id)
                    ).fetchone()
                    if row is None or row[0] < r.created:
                        self.db.execute(
                            "INSERT OR REPLACE INTO owner_keys_removed VALUES (?,?,?)",
                            (r.owner, r.id, r.created),
                        )
                    cur = self.db.execute(
                        "DELETE FROM owner_keys WHERE owner=? AND id=? AND created<=?",
                        (r.owner, r.id, r.created),
                    )
                    removed += cur.rowcount
                    continue
                gone = self.db.execute(
                    "SELECT 1 FROM owner_keys_removed WHERE owner=? AND id=? AND at>=?",
                    (r.owner, r.id, r.created),
                ).fetchone()
                wrapped = base64.b64decode(r.wrapped)
                if gone is not None or key_id(wrapped) != r.id:
                    continue
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO owner_keys VALUES (?,?,?,?,?)",
                    (r.owner, r.id, wrapped, r.created, r.host),
                )
                added += cur.rowcount
        return added, removed


class KeyAnswers:
    """The manager's answers to key requests (registered in ``manager/requests.py``)."""

    def __init__(self, catalog: Catalogued, outbox: Outbox) -> None:
        self.store = KeyStore(catalog)
        self.catalog = catalog
        self.outbox = outbox

    def handlers(self) -> dict[type[m.Message], Callable[[Any, Any], m.Message]]:
        return {
            m.KeyAdd: self._add,
            m.KeyList: self._list,
            m.KeyGet: self._get,
            m.KeyRemove: self._remove,
        }

    def _add(self, req: m.KeyAdd, a: Owned) -> m.KeyAdded:
        wrapped = base64.b64decode(req.wrapped)
        if req.first and self.store.entries(a.owner):
            raise Refused(f"{a.owner} has a key already: `init` is done once per owner.")
        record = self.store.add(a.owner, wrapped, req.host, time.time())
        if record is None:
            return m.KeyAdded(id=key_id(wrapped), existed=True)
        self._to_workers(record)
        log.info("keys: %s added key %s (%s)", a.owner, record.id, req.host or "no host")
        return m.KeyAdded(id=record.id)

    def _list(self, _req: m.KeyList, a: Owned) -> m.KeyListReply:
        return m.KeyListReply(keys=tuple(self.store.entries(a.owner)))

    def _get(self, _req: m.KeyGet, a: Owned) -> m.KeyListReply:
        return m.KeyListReply(keys=tuple(self.store.entries(a.owner, wrapped=True)))

    def _remove(self, req: m.KeyRemove, a: Owned) -> m.KeyRemoved:
        record = self.store.remove(a.owner, req.id, time.time())
        self._to_workers(record)
        log.info("keys: %s removed key %s", a.owner, req.id)
        return m.KeyRemoved(id=req.id)

    def _to_workers(self, record: m.KeyRecord) -> None:
        """To every worker's records log, sealed (a dead one's queue keeps it)."""
        cmd = m.ForgetVersions(keys=(self.outbox.seal.seal_key(record),))
        for w in self.catalog.workers():
            self.outbox.to_worker(w.name, cmd)
