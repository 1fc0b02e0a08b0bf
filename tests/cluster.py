"""Real processes for integration tests: a manager and workers on a private broker.

Each ``Cluster`` gets its own RabbitMQ virtual host on the suite's node, its own data
dirs and logs, so tests cannot see each other's queues or files.
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import zstandard

from client.session import Session
from devtools.localnode import LocalNode
from warren.broker import Connection
from warren.config import Settings
from worker import frames

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
    """The SHA-256 of a file, or of the content a blob kept as frames holds."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        reader: Any = f
        if path.suffix == ".zst":  # what zstd -dc makes of it
            reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
        while block := reader.read(1 << 20):
            h.update(block)
    return h.hexdigest()


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

    def __post_init__(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        self.url = self.node.add_vhost(self.vhost)

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

    def client_process(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """A client running in the background, for faults injected while it works."""
        return subprocess.Popen(
            [sys.executable, "-m", "client", *args],
            env=self.env(**env),
            cwd=self.base,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
        )

    def chain(self, name: str) -> list[str]:
        """The workers the manager placed an upload of ``name`` on, from its log."""
        for line in reversed(self.log_path("manager").read_text().splitlines()):
            if f": {name!r} (" in line and ", placed on " in line:
                return line.rsplit(", placed on ", 1)[1].strip().split(" -> ")
        raise AssertionError(f"no placement of {name!r} in the manager's log")

    def client(self, *args: str, timeout: float = 180, **env: str) -> Result:
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
        """The worker's blob of this content: its own bytes, or (content that came
        compressed) its frames, ``<sha256>.zst``."""
        path = self.data_dir(worker) / "blobs" / sha256[:2] / sha256
        framed = path.with_name(sha256 + ".zst")
        return framed if framed.is_file() and not path.is_file() else path

    def stored(self, worker: str, sha256: str) -> bytes:
        """The content a worker's blob holds, decoded if it is kept as frames (what
        ``zstd -dc`` gives an operator)."""
        return stored_content(self.blob(worker, sha256))

    def holders_on_disk(self, sha256: str) -> set[str]:
        data = self.base / "data"
        return {
            d.name
            for d in data.iterdir()
            if not d.name.startswith("manager") and self.blob(d.name, sha256).is_file()
        }

    def verify_stored(
        self, files: list[Path] | dict[str, Path], replicas: int = 2, timeout: float = 60
    ) -> dict[str, list[str]]:
        """Check that confirmed uploads are not lost. ``files`` maps each stored name to its
        source (a list: stored under their own names). Each must be listed with ``replicas``
        live holders (waiting up to ``timeout`` for the catalog to catch up), each holder's
        blob on disk must hash to the file's SHA-256, and a download, through the client's
        own code, must give back the same bytes. Returns each name's holders."""
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
            for w in holders[name]:
                blob = self.blob(w, sha)
                assert blob.is_file(), f"{name!r}: {w} is listed as a holder but has no blob"
                assert file_sha256(blob) == sha, f"{name!r}: {w}'s blob has other bytes"
        dest = self.base / f"verify-{uuid.uuid4().hex}"
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


def chunks_on_disk(c: Cluster, workers: tuple[str, ...] = ("w1", "w2")) -> int:
    """How many chunks the workers have journaled for uploads in progress (in ``.seqs``,
    or as records of an upload kept as frames)."""
    total = 0
    for w in workers:
        for p in c.data_dir(w).glob("incoming/*.seqs"):
            with contextlib.suppress(FileNotFoundError):  # finished meanwhile
                total += len(p.read_text().split())
        for p in c.data_dir(w).glob("incoming/*.zpart"):
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(p, os.O_RDONLY)
                try:
                    total += len(frames.end_of(fd)[0])
                finally:
                    os.close(fd)
    return total


def most_on_one(c: Cluster, workers: tuple[str, ...] = ("w1", "w2", "w3", "w4")) -> int:
    """The most chunks any one worker has journaled (an upload's primary is ahead)."""
    return max(chunks_on_disk(c, (w,)) for w in workers)


def stored_content(path: Path) -> bytes:
    """A blob file's content: its bytes, or its frames decoded as ``zstd -dc`` does."""
    if path.suffix != ".zst":
        return path.read_bytes()
    with open(path, "rb") as f:
        return zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
