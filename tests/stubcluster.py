"""The manager and workers as threads on the in-memory broker: role logic, tested fast.

The same classes run here as in production (``Manager``, ``Worker``, ``Session``); only the
transport differs (``warren.testing.StubBroker`` instead of RabbitMQ). Killing a service is
dropping its connections, as a kill -9 would, and stopping its thread.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from rich.console import Console

from client import keys_cmd
from client.session import Session
from manager import holdings, service
from manager.service import Manager
from warren import messages as m
from warren.config import Settings
from warren.errors import UsageError
from warren.ownerkey import OwnerKeys
from warren.testing import Message, StubBroker
from warren.topology import MANAGER_REQUESTS
from warren.transport import Connect, Transport
from worker.service import Worker

FAST = Settings(
    scrypt_n=2**4,  # owners' keys wrapped cheaply: tests make many
    chunk_size=64 * 1024,
    heartbeat_interval=0.1,
    dead_after=1.0,
    request_timeout=5.0,
    transfer_timeout=10.0,
    connect_timeout=2.0,
)


def wait_for(predicate: Callable[[], object], timeout: float = 20, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def user_url(user: str) -> str:
    return f"amqp://{user}:secret@localhost:5672/%2F"


class StubCluster:
    def __init__(self, base: Path, settings: Settings = FAST, users: bool = False) -> None:
        """``users``: each service logs in as its own broker user (the manager as
        ``manager``, a worker as its name), as ``manager users add`` sets them up, with
        their role's permissions (any other user is a client)."""
        self.base = base
        self.settings = settings
        self.users = users
        self.broker = StubBroker()
        self.workers: dict[str, Worker] = {}
        self.manager: Manager | None = None
        self.managers: dict[str, Manager] = {}
        self._stops: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}

    def _start(self, key: str, run: Callable[[], None]) -> None:
        thread = threading.Thread(target=run, name=f"stub-{key}", daemon=True)
        self._threads[key] = thread
        thread.start()

    def _connect(self, key: str) -> Connect:
        """Connections tagged with the service's key, so ``kill`` drops only its own."""

        def connect(settings: Settings, name: str) -> Transport:
            return self.broker.connect(settings, f"{name} #{key}")

        return connect

    def start_manager(self, key: str = "manager") -> Manager:
        stop = self._stops[key] = threading.Event()
        # Every manager of the cluster (a standby, one rebuilding on an empty data dir)
        # reads the same key, as WARREN_MANAGER_KEY_FILE has them do.
        s = dataclasses.replace(
            self.settings, data_dir=self.base / key, manager_key_file=str(self.base / "manager.key")
        )
        if self.users:
            s = dataclasses.replace(s, amqp_url=user_url("manager"))
            self.broker.roles["manager"] = "manager"
        manager = Manager(s, stop, self._connect(key))
        self.managers[key] = manager
        if key == "manager":
            self.manager = manager
        self._start(key, manager.run)
        return manager

    def start_worker(self, name: str, **overrides: Any) -> Worker:
        stop = self._stops[name] = threading.Event()
        s = dataclasses.replace(
            self.settings, name=name, data_dir=self.base / "workers" / name, **overrides
        )
        if self.users:
            # No WARREN_MANAGER_USER: the broker's topic permissions tell a worker which
            # commands are the manager's (the key they came by).
            s = dataclasses.replace(s, amqp_url=user_url(name))
            self.broker.roles[name] = "worker"
        worker = self.workers[name] = Worker(s, stop, self._connect(name))
        self._start(name, worker.run)
        return worker

    def start(self, workers: int = 4) -> StubCluster:
        self.start_manager()
        for i in range(1, workers + 1):
            self.start_worker(f"w{i}")
        self.wait_for_manager()
        with self.session() as s:
            wait_for(
                lambda: sum(w.alive for w in s.status().workers) == workers,
                what=f"{workers} live workers",
            )
        return self

    def wait_for_manager(self) -> None:
        """Until the first manager has declared its exchanges and queues: a session opened
        before then is told the manager has never run."""
        wait_for(lambda: MANAGER_REQUESTS in self.broker.queues, what="the manager's queue")

    def kill(self, key: str) -> None:
        """As kill -9: its connections drop at once (unacked messages go back), then its
        thread is stopped."""
        self._stops[key].set()
        self.broker.disconnect(lambda n: n.endswith(f" #{key}"))
        self._threads[key].join(timeout=10)

    def stop_all(self) -> None:
        for key in list(self._threads):
            self._stops[key].set()
        self.broker.disconnect()  # so no thread waits out its process() to see the stop
        for thread in self._threads.values():
            thread.join(timeout=10)

    def session(self, **overrides: Any) -> Session:
        # The manager's login, as provisioning writes it into every client's config.
        manager = "manager" if self.users else urlsplit(self.settings.amqp_urls[0]).username
        overrides.setdefault("manager_user", manager or "guest")
        overrides.setdefault("password_file", str(self.password_file()))
        s = dataclasses.replace(self.settings, client_name="tester", **overrides)
        return OwnerSession(s, self.broker.connect)

    def password_file(self) -> Path:
        """The password every test client uses (as `make up` provisions one a client)."""
        path = self.base / "password"
        if not path.exists():
            path.write_text("correct horse battery staple\n")
            path.chmod(0o600)
        return path


class OwnerSession(Session):
    """A session whose owner gets a key on first need (``init``, as provisioning runs it
    for every client it makes), so that tests of anything else need not run it."""

    def owner_keys(self) -> OwnerKeys:
        if self._keys is None:
            try:
                return super().owner_keys()
            except UsageError as exc:
                if "init" not in str(exc):
                    raise
            keys_cmd.init(_Quiet(), self)
        return super().owner_keys()


class _Quiet:
    json = False
    out = Console(file=io.StringIO())

    def emit(self, obj: Any) -> None:
        pass


def silence_backups(c: StubCluster) -> list[str]:
    """Drop every "stored" a backup (hop 1 or later) sends, to the client and the manager:
    as if it never wrote the bytes. Only the services' own (a test's forgeries pass).
    Returns the workers silenced, as they are."""
    silenced: list[str] = []

    def drop(msg: Message) -> list[Message]:
        if msg.type in (m.ReplicaStored.TYPE, m.PackStored.TYPE) and msg.sender.startswith(
            "warren"
        ):
            stored = m.decode(msg.type, msg.body)
            assert isinstance(stored, m.ReplicaStored | m.PackStored)
            if stored.hop >= 1:
                silenced.append(stored.worker)
                return []
        return [msg]

    c.broker.intercept = drop
    return silenced


def file_chunks(c: StubCluster, sha256: str, owner: str | None = None) -> list[m.ChunkRef]:
    """The sealed chunks of the latest version whose content has this SHA-256 (of
    ``owner``, or anyone's), as the active manager's catalog lists them; [] when none."""
    assert c.manager is not None
    db = sqlite3.connect(c.manager.catalog.path)  # the manager's own is its thread's
    try:
        row = db.execute(
            "SELECT owner, name, version FROM versions WHERE sha256=? AND owner LIKE ? "
            "ORDER BY created DESC LIMIT 1",
            (sha256, "%" if owner is None else owner),
        ).fetchone()
        if row is None:
            return []
        rows = db.execute(
            "SELECT sha256, size, plain FROM version_chunks WHERE owner=? AND name=? AND "
            "version=? ORDER BY seq",
            row,
        ).fetchall()
    finally:
        db.close()
    return [m.ChunkRef(*r) for r in rows]


def holds_file(c: StubCluster, worker: str, sha256: str) -> bool:
    """``worker`` keeps every sealed chunk of that content, each a blob whose bytes hash to
    its name (checkable without any key)."""
    chunks = file_chunks(c, sha256)
    if not chunks:
        return False
    return all(holds_blob(c, worker, chunk.sha256) for chunk in chunks)


def holds_blob(c: StubCluster, worker: str, sha256: str) -> bool:
    """``worker`` keeps this blob, and its bytes hash to its name."""
    path = c.workers[worker].blobs.blob_path(sha256)
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def place_blob(s: Session, size: int, sha256: str, replicas: int = 2) -> m.UploadAccepted:
    """Have the manager place one blob of the sender's (a pack of one sealed chunk, as
    a client asks), for tests that then send its bytes themselves, as a client or a forger
    would: its upload id and chain, as an ``upload.accepted`` once said them."""
    req = m.PackRequest((m.PackFile("", size, sha256),), replicas, "tester", chunks=True)
    acc = s.request(req, m.PackAccepted)
    return m.UploadAccepted(acc.upload_ids[0], acc.chain, s.settings.chunk_size)


def short_pins(
    monkeypatch: pytest.MonkeyPatch, seconds: float, c: StubCluster | None = None
) -> None:
    """Chunks an upload stored wait for its commit for WARREN_UPLOAD_EXPIRY (a day), and are
    looked for every STALE_PASS (60 s) once their pin runs out: ``seconds`` and a fifth of a
    second here (for managers started from now on, and those of ``c``), so what is deleted
    goes within the test. Quota reservations (RESERVE_FOR) run out as soon."""
    monkeypatch.setattr(holdings, "RESERVE_FOR", seconds)
    monkeypatch.setattr(service, "pin_for", lambda _settings: seconds)
    monkeypatch.setattr(service, "STALE_PASS", 0.2)
    for manager in c.managers.values() if c is not None else ():
        manager.catalog.pin_for = seconds
