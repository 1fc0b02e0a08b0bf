"""Real processes for integration tests: a manager and workers on a private broker.

Each ``Cluster`` gets its own RabbitMQ virtual host on the suite's node, its own data
dirs and logs, so tests cannot see each other's queues or files.

Every client it runs reads the owner's password from a mode-600 file in the cluster's folder
(``WARREN_PASSWORD_FILE``) with cheap key wrapping (``WARREN_SCRYPT_N``), and each broker user
gets its key (``init``) before its first command that reads or writes content, as ``make up``
provisions a client: tests of anything else need not run ``init``.

What the workers hold is sealed chunks, each a blob named by the SHA-256 of its sealed bytes;
the helpers that look at disks find a file's chunks in the manager's catalog (read-only) by the
file's plaintext SHA-256, as listings show it, and open a worker's copies with the default
owner's key when a test needs the bytes back.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import zstandard

from client.session import Session
from devtools.localnode import LocalNode
from warren import chunkseal
from warren.broker import Connection
from warren.config import Settings
from warren.ownerkey import OwnerKeys

ROOT = Path(__file__).resolve().parent.parent


class MakeCluster(Protocol):
    """The ``make_cluster`` fixture: a new cluster (its own vhost) on the suite's node or
    another one, with extra WARREN_* settings for every process it starts."""

    def __call__(self, node: LocalNode | None = None, **env: str) -> Cluster: ...


def wait_for(
    predicate: Callable[[], object], timeout: float = 30, what: str = "it", every: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def while_running(
    client: subprocess.Popen[bytes], predicate: Callable[[], object], what: str, timeout: float = 60
) -> None:
    """Wait for what holds only while ``client`` works (chunks of its upload in flight),
    looking every 10 ms: an upload can be over within a second, and then it never holds."""

    def seen() -> bool:
        if predicate():
            return True
        assert client.poll() is None, f"the client ended before {what}"
        return False

    wait_for(seen, timeout, what, every=0.01)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file: a source's (what listings show), or a blob's (its name)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# The manager's log line for a pack of chunks placed (manager/placement.py).
PLACED = re.compile(r" chunks \(\d+ bytes\) from .*: (\d+) placed on (.*), \d+ already stored")
# Commands that read or write content: they need the owner's key (``init`` first).
CONTENT_COMMANDS = frozenset({"upload", "download", "backup", "restore"})
PASSWORD = "correct horse battery staple"
# The largest plaintext chunk the harness opens (chunkseal's cap is far below it).
MAX_PLAIN_CHUNK = 64 << 20


def stored_names(out: str) -> set[str]:
    """The files a client's ``upload`` output says are stored: every replica confirmed."""
    return {
        ln.strip().split("stored ", 1)[1].split(" (")[0]
        for ln in out.splitlines()
        if ln.strip().startswith("stored ")
    }


@dataclass
class Result:
    code: int
    out: str
    err: str

    def ok(self) -> Result:
        assert self.code == 0, f"exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"
        return self

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass
class Cluster:
    node: LocalNode
    base: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    vhost: str = field(default_factory=lambda: f"t-{uuid.uuid4().hex[:8]}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    url: str = ""
    keyed: set[str] = field(default_factory=set)  # broker users that ran init
    _keys: OwnerKeys | None = None

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.url = self.node.add_vhost(self.vhost)
        # The node runs as another user, but only clients (this user) read the file.
        self.password_file.write_text(PASSWORD + "\n")
        self.password_file.chmod(0o600)

    @property
    def password_file(self) -> Path:
        """The owner's password every client of this cluster reads (mode 600)."""
        return self.base / "password"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            WARREN_AMQP_URL=self.url,
            WARREN_HEARTBEAT_INTERVAL="0.5",
            WARREN_DEAD_AFTER="4",
            WARREN_CONNECT_TIMEOUT="10",
            WARREN_REQUEST_TIMEOUT="10",
            WARREN_TRANSFER_TIMEOUT="30",
            # Every manager of this cluster (a standby, one on an empty data dir) shares one key.
            WARREN_MANAGER_KEY_FILE=str(self.base / "manager.key"),
            WARREN_PASSWORD_FILE=str(self.password_file),
            WARREN_SCRYPT_N="16",  # key wrapping in microseconds, not a second a client
            PYTHONPATH=str(ROOT),
        )
        env.update(self.env_extra)
        env.update(extra)
        return env

    def log_path(self, name: str) -> Path:
        return self.base / "logs" / f"{name}.log"

    def data_dir(self, name: str) -> Path:
        return self.base / "data" / name

    def start(self, name: str, **env: str) -> subprocess.Popen[bytes]:
        """Start the manager (name "manager") or a worker (any other name)."""
        self.log_path(name).parent.mkdir(parents=True, exist_ok=True)
        if name.startswith("manager"):
            args = ["-m", "manager", "--data-dir", str(self.data_dir(name))]
        else:
            args = ["-m", "worker", "--name", name, "--data-dir", str(self.data_dir(name))]
        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, *args],
                env=self.env(**env),
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=self.base,
            )
        self.procs[name] = proc
        return proc

    def start_all(self, workers: int = 4) -> None:
        self.start("manager")
        for i in range(1, workers + 1):
            self.start(f"w{i}")
        self.wait_alive([f"w{i}" for i in range(1, workers + 1)])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        return proc.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.procs):
            proc = self.procs.pop(name)
            if proc.poll() is None:
                proc.terminate()
        self.node.delete_vhost(self.vhost)

    def ensure_key(self, **env: str) -> None:
        """``init`` for the broker user these settings log in as, once: a client's first
        command that reads or writes content needs the owner's key (``make up`` runs init
        for every client it provisions)."""
        url = self.env(**env)["WARREN_AMQP_URL"].split(",")[0]
        user = unquote(urlsplit(url).username or "guest")
        if user in self.keyed:
            return
        # A failed init (no manager yet, a test's fault) is left for the command itself
        # to meet and say: it would fail the same way.
        if self._run(("init",), env, timeout=180).code == 0:
            self.keyed.add(user)

    def _needs_key(self, args: tuple[str, ...], env: dict[str, str]) -> None:
        if any(a in CONTENT_COMMANDS for a in args):  # options may come first
            self.ensure_key(**env)

    def client_process(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """A client running in the background, for faults injected while it works."""
        self._needs_key(args, env)
        return subprocess.Popen(
            [sys.executable, "-m", "client", *args],
            env=self.env(**env),
            cwd=self.base,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )

    def last_chain(self) -> list[str]:
        """The workers the manager placed the latest pack of new chunks on, from its log
        (the chain a client sends to; names reach the manager only with the commit)."""
        for line in reversed(self.log_path("manager").read_text().splitlines()):
            found = PLACED.search(line)
            if found and int(found[1]) > 0:
                return found[2].strip().split(" -> ")
        raise AssertionError("no pack of chunks placed in the manager's log")

    def client(self, *args: str, timeout: float = 180, **env: str) -> Result:
        self._needs_key(args, env)
        return self._run(args, env, timeout)

    def _run(self, args: tuple[str, ...], env: dict[str, str], timeout: float) -> Result:
        proc = subprocess.run(
            [sys.executable, "-m", "client", *args],
            env=self.env(**env),
            cwd=self.base,
            capture_output=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return Result(proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.client("status", "--json").ok().json()
        return result

    def files(self) -> dict[str, dict[str, Any]]:
        return {f["name"]: f for f in self.client("list", "--json").ok().json()}

    def wait_alive(self, workers: list[str], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        alive: set[str] = set()
        while time.monotonic() < deadline:
            res = self.client("status", "--json")
            if res.code == 0:
                alive = {w["name"] for w in res.json()["workers"] if w["alive"]}
                if set(workers) <= alive:
                    return
            time.sleep(0.3)
        raise AssertionError(f"workers {workers} not alive (alive: {alive})\n{self.logs()}")

    def blob(self, worker: str, sha256: str) -> Path:
        """The worker's blob named ``sha256`` (a sealed chunk, named by its own SHA-256)."""
        return self.data_dir(worker) / "blobs" / sha256[:2] / sha256

    def chunks(self, sha256: str) -> list[str]:
        """The blobs (in order) of the newest version whose content has this SHA-256 (a
        file's, as listings show it), from the manager's catalog, read-only beside it."""
        for db in sorted((self.base / "data").glob("manager*/catalog.sqlite3")):
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
            try:
                row = conn.execute(
                    "SELECT owner, name, version FROM versions WHERE sha256 = ? "
                    "ORDER BY created DESC LIMIT 1",
                    (sha256,),
                ).fetchone()
                if row is not None:
                    return [
                        blob
                        for (blob,) in conn.execute(
                            "SELECT sha256 FROM version_chunks WHERE owner = ? AND name = ? "
                            "AND version = ? ORDER BY seq",
                            row,
                        )
                    ]
            finally:
                conn.close()
        raise AssertionError(f"no version with content {sha256[:12]} in the manager's catalog")

    def workers_on_disk(self) -> list[str]:
        return sorted(
            d.name for d in (self.base / "data").iterdir() if not d.name.startswith("manager")
        )

    def intact_copies(self, blob: str) -> set[str]:
        """The workers with this blob on disk, hashing to its name."""
        return {
            w
            for w in self.workers_on_disk()
            if self.blob(w, blob).is_file() and file_sha256(self.blob(w, blob)) == blob
        }

    def blobs_on_disk(self, blobs: list[str]) -> dict[str, set[str]]:
        """Which workers have each of these blobs on disk (whatever its bytes)."""
        workers = self.workers_on_disk()
        return {b: {w for w in workers if self.blob(w, b).is_file()} for b in blobs}

    def owner_keys(self) -> OwnerKeys:
        """The default client's keys (the harness's password), to open what workers hold."""
        if self._keys is None:
            self.ensure_key()
            settings = Settings.load(environ=self.env(WARREN_CLIENT_NAME=f"keys-{self.vhost}"))
            with Session(settings, Connection) as session:
                self._keys = session.owner_keys()
        return self._keys

    def stored(self, sha256: str) -> bytes:
        """The default owner's file with this SHA-256 as the workers' disks give it back:
        every copy of each chunk opened with the owner's key (a worker cannot), all copies
        of a chunk the same, the chunks in order."""
        keys = self.owner_keys()
        out = []
        for b in self.chunks(sha256):
            opened = {
                w: chunkseal.open_chunk(
                    keys.seal, keys.ids, self.blob(w, b).read_bytes(), MAX_PLAIN_CHUNK
                )[1]
                for w in self.blobs_on_disk([b])[b]
            }
            assert opened, f"chunk {b[:12]} of {sha256[:12]} is on no disk"
            assert len(set(opened.values())) == 1, f"copies of chunk {b[:12]} differ"
            out.append(next(iter(opened.values())))
        return b"".join(out)

    def holders_on_disk(self, sha256: str) -> set[str]:
        """The workers a listing names for the file with this SHA-256 as far as the disks
        say: those with an intact copy of its first chunk (its version record lives
        there). None for a file with no chunks (an empty one)."""
        blobs = self.chunks(sha256)
        return self.intact_copies(blobs[0]) if blobs else set()

    def copies_on_disk(self, sha256: str, leaving: frozenset[str] = frozenset()) -> int:
        """How many intact copies the least-copied chunk of the file has on the disks (how
        many whole copies of it the workers hold between them), not counting ``leaving``'s
        (dead workers whose disks are still there)."""
        return min((len(self.intact_copies(b) - leaving) for b in self.chunks(sha256)), default=0)

    def verify_stored(
        self, files: list[Path] | dict[str, Path], replicas: int = 2, timeout: float = 60
    ) -> dict[str, list[str]]:
        """Check that confirmed uploads are not lost. ``files`` maps each stored name to its
        source (a list: stored under their own names). Each must be listed with ``replicas``
        live holders (waiting up to ``timeout`` for the catalog to catch up), each holder
        must have its first chunk on disk (where its record is), every chunk must have
        ``replicas`` copies on disk, each hashing to its name, and a download,
        through the client's own code, must give back the same bytes. Returns each name's
        holders."""
        named = files if isinstance(files, dict) else {p.name: p for p in files}
        want = {name: file_sha256(src) for name, src in named.items()}
        listed: dict[str, dict[str, Any]] = {}

        def all_listed() -> bool:
            listed.clear()
            listed.update(self.files())
            return all(
                listed.get(n, {}).get("sha256") == sha and len(listed[n]["replicas"]) >= replicas
                for n, sha in want.items()
            )

        try:
            wait_for(all_listed, timeout, what=f"every file listed with {replicas} replicas")
        except AssertionError as exc:
            wrong = {
                n: listed.get(n)
                for n, sha in want.items()
                if listed.get(n, {}).get("sha256") != sha or len(listed[n]["replicas"]) < replicas
            }
            raise AssertionError(f"{exc}: {wrong}") from None
        holders: dict[str, list[str]] = {}
        for name, sha in want.items():
            holders[name] = listed[name]["replicas"]
            blobs = self.chunks(sha)
            if blobs:
                first = self.intact_copies(blobs[0])
                assert set(holders[name]) <= first, f"{name!r}: listed {holders[name]}, {first}"
                assert self.copies_on_disk(sha) >= replicas, f"{name!r}: a chunk is short"
        dest = self.base / f"verify-{uuid.uuid4().hex}"
        self.ensure_key()
        settings = Settings.load(environ=self.env(WARREN_CLIENT_NAME=f"verify-{self.vhost}"))
        try:
            with Session(settings, Connection) as session:
                for name, src in named.items():
                    session.download(name, dest, overwrite=True)
                    assert filecmp.cmp(src, dest, shallow=False), f"{name!r}: other bytes"
        finally:
            dest.unlink(missing_ok=True)
        return holders

    def logs(self) -> str:
        out = []
        for path in sorted((self.base / "logs").glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)


def _chunk_files(c: Cluster, worker: str, since: float) -> list[int]:
    """The sizes of the sealed chunk blobs a worker holds or is writing (a pack's files in
    ``incoming/``), written at ``since`` (a ``time.time()``) or later."""
    sizes = []
    data = c.data_dir(worker)
    for p in [*data.glob("blobs/*/*"), *data.glob("incoming/*.blob")]:
        with contextlib.suppress(FileNotFoundError):  # renamed or deleted meanwhile
            st = p.stat()
            if st.st_mtime >= since:
                sizes.append(st.st_size)
    return sizes


def chunks_on_disk(c: Cluster, workers: tuple[str, ...] = ("w1", "w2"), since: float = 0.0) -> int:
    """How many sealed chunks the workers have written since ``since``: finished blobs and
    a pack's files still being written (an upload in progress shows here)."""
    return sum(len(_chunk_files(c, w, since)) for w in workers)


def bytes_on_disk(
    c: Cluster, workers: tuple[str, ...] = ("w1", "w2", "w3", "w4"), since: float = 0.0
) -> int:
    """The sealed bytes the workers have written since ``since``, every replica counted
    (an upload's packs go to several chains, so no one worker need hold most of it)."""
    return sum(sum(_chunk_files(c, w, since)) for w in workers)


def stored_content(path: Path) -> bytes:
    """A blob file's content: its bytes, or its frames decoded as ``zstd -dc`` does (a
    worker still keeps frames for content that came compressed, worker/frames.py)."""
    if path.suffix != ".zst":
        return path.read_bytes()
    with open(path, "rb") as f:
        data: bytes = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
        return data
