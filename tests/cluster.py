"""Real processes for integration tests: a manager and workers on a private broker.

Each ``Cluster`` gets its own RabbitMQ virtual host on the suite's node, its own data
dirs and logs, so tests cannot see each other's queues or files.
"""

from __future__ import annotations

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

from devtools.localnode import LocalNode

ROOT = Path(__file__).resolve().parent.parent


class MakeCluster(Protocol):
    """The ``make_cluster`` fixture: a new cluster (its own vhost) on the suite's node or
    another one, with extra WARREN_* settings for every process it starts."""

    def __call__(self, node: LocalNode | None = None, **env: str) -> Cluster: ...


def wait_for(predicate: Callable[[], object], timeout: float = 30, what: str = "it") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


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
        if name == "manager":
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
        return self.data_dir(worker) / "blobs" / sha256[:2] / sha256

    def holders_on_disk(self, sha256: str) -> set[str]:
        data = self.base / "data"
        return {
            d.name
            for d in data.iterdir()
            if d.name != "manager" and (d / "blobs" / sha256[:2] / sha256).is_file()
        }

    def logs(self) -> str:
        out = []
        for path in sorted((self.base / "logs").glob("*.log")):
            lines = path.read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)
