"""``make up`` / ``make cluster-up`` without Docker: private RabbitMQ, the manager, 4 workers.

``up`` runs one RabbitMQ node; ``cluster-up`` runs three, clustered with rabbitmqctl, and
the services on quorum queues with the list of node URLs. Each layout keeps everything in
its own folder: ``.warren/`` (single node) or ``.warren/cluster/``, with the nodes' data,
the manager's catalog, each worker's store, logs and pid files. A second ``up`` reuses the
same ports and data.

    python -m devtools.localcluster up|down|status [--workers N]
    python -m devtools.localcluster cluster-up|cluster-down|cluster-status [--workers N]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devtools.localnode import (
    LocalNode,
    cluster_url,
    free_port,
    port_open,
    start_cluster,
    stop_all,
)
from warren.config import Settings
from warren.errors import WarrenError

DEFAULT_PORTS = (5672, 15672, 25672)


@dataclass(frozen=True)
class Layout:
    root: Path
    nodes: int  # 1, or 3 for a cluster

    @property
    def queue_type(self) -> str:
        return "quorum" if self.nodes > 1 else "classic"

    def node_dirs(self) -> list[Path]:
        if self.nodes == 1:
            return [self.root / "rabbitmq"]
        return [self.root / f"rabbit{i}" for i in range(1, self.nodes + 1)]

    def load_nodes(self) -> list[LocalNode] | None:
        nodes = [LocalNode.load(d) for d in self.node_dirs()]
        return None if any(n is None for n in nodes) else [n for n in nodes if n]

    def make_nodes(self) -> list[LocalNode]:
        """The nodes from an earlier run, or new ones (default ports when they are free)."""
        existing = self.load_nodes()
        if existing:
            return existing
        nodes = []
        for i, base in enumerate(self.node_dirs()):
            ports = DEFAULT_PORTS
            if i > 0 or any(port_open(p) for p in ports):
                ports = (free_port(), free_port(), free_port())
            name = "warren" if self.nodes == 1 else f"warren{i + 1}"
            n = LocalNode(base.resolve(), *ports, name=name)
            n.write_config()
            nodes.append(n)
        return nodes

    def services(self, workers: int) -> dict[str, list[str]]:
        procs = {"manager": ["-m", "manager", "--data-dir", str(self.root / "manager")]}
        for i in range(1, workers + 1):
            name = f"w{i}"
            data = str(self.root / "workers" / name)
            procs[name] = ["-m", "worker", "--name", name, "--data-dir", data]
        return procs

    def pid_of(self, name: str) -> int | None:
        try:
            pid = int((self.root / "pids" / f"{name}.pid").read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None


SINGLE = Layout(Path(".warren"), 1)
CLUSTER = Layout(Path(".warren") / "cluster", 3)


def up(layout: Layout, workers: int) -> int:
    nodes = layout.make_nodes()
    if not all(n.running() for n in nodes):
        print(
            f"starting RabbitMQ ({layout.nodes} node{'s' if layout.nodes > 1 else ''}) ...",
            flush=True,
        )
        if layout.nodes == 1:
            nodes[0].start()
        elif (layout.root / "clustered").exists():
            start_cluster(nodes, join=False)
        else:
            start_cluster(nodes)
            (layout.root / "clustered").write_text("yes\n")
    url = nodes[0].url if layout.nodes == 1 else cluster_url(nodes)
    env = dict(os.environ, WARREN_AMQP_URL=url, WARREN_QUEUE_TYPE=layout.queue_type)
    (layout.root / "pids").mkdir(parents=True, exist_ok=True)
    (layout.root / "logs").mkdir(parents=True, exist_ok=True)
    for name, args in layout.services(workers).items():
        if layout.pid_of(name):
            continue
        with open(layout.root / "logs" / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, *args],
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (layout.root / "pids" / f"{name}.pid").write_text(str(proc.pid))
    wait_for_workers(url, workers, layout)
    # The client's default URL reaches a single node on 5672; anything else must be exported.
    export = "" if layout.nodes == 1 and nodes[0].amqp_port == 5672 else url
    print(f"""
warren is up: RabbitMQ on port{"s" if len(nodes) > 1 else ""} \
{", ".join(str(n.amqp_port) for n in nodes)}, manager and {workers} workers running.
  management UI  {nodes[0].management_url}  (user guest, password guest)
  logs           {layout.root / "logs"}/
{
        f'''  first run      export WARREN_AMQP_URL={export}
'''
        if export
        else ""
    }  try it         .venv/bin/warren upload README.md --replicas 2
                 .venv/bin/warren list
                 .venv/bin/warren status
                 .venv/bin/warren          (in a terminal: the menu)
  stop           make {"cluster-down" if layout.nodes > 1 else "down"}
""")
    return 0


def wait_for_workers(url: str, workers: int, layout: Layout, timeout: float = 60.0) -> None:
    from client.session import Session  # the client's own code: this is what users run

    settings = dataclasses.replace(Settings.load(), amqp_url=url, client_name="make-up")
    deadline = time.monotonic() + timeout
    alive = 0
    while time.monotonic() < deadline:
        with contextlib.suppress(WarrenError), Session(settings) as s:
            alive = sum(w.alive for w in s.status().workers)
            if alive >= workers:
                return
        time.sleep(0.5)
    raise WarrenError(f"only {alive} of {workers} workers came up; see {layout.root / 'logs'}/")


def down(layout: Layout) -> int:
    pids = layout.root / "pids"
    for name in sorted(os.listdir(pids)) if pids.is_dir() else []:
        pid = layout.pid_of(name.removesuffix(".pid"))
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        (pids / name).unlink(missing_ok=True)
    nodes = layout.load_nodes()
    if nodes and any(n.running() for n in nodes):
        print("stopping RabbitMQ ...", flush=True)
        stop_all(nodes)
    print(f"warren is down (data kept in {layout.root}/)")
    return 0


def status(layout: Layout) -> int:
    for n in layout.load_nodes() or []:
        state = f"running on port {n.amqp_port}" if n.running() else "stopped"
        print(f"rabbitmq {n.nodename}: {state}")
    pids = layout.root / "pids"
    for name in sorted(os.listdir(pids)) if pids.is_dir() else []:
        svc = name.removesuffix(".pid")
        print(f"{svc}: {'running' if layout.pid_of(svc) else 'stopped'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.localcluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = ("up", "down", "status", "cluster-up", "cluster-down", "cluster-status")
    parser.add_argument("action", choices=actions)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    layout = CLUSTER if args.action.startswith("cluster-") else SINGLE
    action = args.action.removeprefix("cluster-")
    try:
        if action == "up":
            return up(layout, args.workers)
        return down(layout) if action == "down" else status(layout)
    except WarrenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
