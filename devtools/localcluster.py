"""``make up`` / ``make cluster-up`` without Docker: private RabbitMQ, the manager, 4 workers.

``up`` runs one RabbitMQ node; ``cluster-up`` runs three, clustered with rabbitmqctl, and
the services on quorum queues with the list of node URLs. Each layout keeps everything in
its own folder: ``.warren/`` (single node) or ``.warren/cluster/``, with the nodes' data,
the manager's catalog, each worker's store, logs and pid files. A second ``up`` reuses the
same ports and data.

    python -m devtools.localcluster up|down|status [--workers N]
    python -m devtools.localcluster cluster-up|cluster-down|cluster-status [--workers N]

No process runs as guest: devtools/provision.py gives the management UI an administrator,
the manager, each worker and two clients (client1, client2) users of their own with
generated passwords, kept in ``<layout>/secrets/`` (0700; files 0600) and reused; the nodes
load them as definitions, so they never have a guest, and an older node's guest is
deleted. Each process runs with ``WARREN_CONFIG=<layout>/secrets/<name>.toml``. With
``--tls`` (``make up TLS=1``) every node also listens for amqps:// with a certificate from
a throwaway local CA (``<layout>/tls/``), and every config uses it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from devtools import provision
from devtools.localnode import (
    LocalNode,
    free_port,
    port_open,
    start_cluster,
    stop_all,
    tls_config,
)
from warren.broker import Connection
from warren.config import Settings
from warren.errors import UsageError, WarrenError

DEFAULT_PORTS = (5672, 15672, 25672)
DEFAULT_TLS_PORT = 5671


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

    def make_nodes(self, free_ports: bool = False) -> list[LocalNode]:
        """The nodes from an earlier run, or new ones (default ports when they are free,
        unless ``free_ports``)."""
        existing = self.load_nodes()
        if existing:
            return existing
        nodes = []
        for i, base in enumerate(self.node_dirs()):
            ports = DEFAULT_PORTS
            if free_ports or i > 0 or any(port_open(p) for p in ports):
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

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    def tls_ports(self, nodes: list[LocalNode], free_ports: bool = False) -> list[int]:
        """Each node's amqps:// port: chosen once (5671 for a single node when it is free)."""
        path = self.tls_dir / "ports.json"
        try:
            ports: dict[str, int] = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            ports = {}
        for i, n in enumerate(nodes):
            if n.name not in ports:
                free = not free_ports and i == 0 and not port_open(DEFAULT_TLS_PORT)
                ports[n.name] = DEFAULT_TLS_PORT if free else free_port()
        path.write_text(json.dumps(ports) + "\n")
        return [ports[n.name] for n in nodes]

    def plan(
        self, nodes: list[LocalNode], workers: int, tls_ports: list[int] | None
    ) -> provision.Plan:
        """What devtools.provision writes for this layout: users, definitions, configs."""
        if tls_ports:
            # The certificate names localhost: the URLs must, for the host name check.
            endpoints = [("localhost", p) for p in tls_ports]
        else:
            endpoints = [("127.0.0.1", n.amqp_port) for n in nodes]
        secrets = self.secrets.resolve()
        return provision.Plan(
            secrets_dir=secrets,
            definitions_file=secrets / "definitions.json",
            workers=workers,
            endpoints=endpoints,
            management=("127.0.0.1", nodes[0].mgmt_port),
            tls_ca_file=str((self.tls_dir / "ca.pem").resolve()) if tls_ports else "",
            service_settings={"queue_type": self.queue_type},
        )

    def pid_of(self, name: str) -> int | None:
        try:
            pid = int((self.root / "pids" / f"{name}.pid").read_text())
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ValueError, ProcessLookupError):
            return None


SINGLE = Layout(Path(".warren"), 1)
CLUSTER = Layout(Path(".warren") / "cluster", 3)


def make_certificates(tls_dir: Path) -> None:
    """A throwaway local CA and the nodes' certificate (for localhost), made once."""
    if all((tls_dir / f).is_file() for f in ("ca.pem", "server.pem", "server.key")):
        return
    try:
        import trustme
    except ImportError:
        raise UsageError(
            "TLS needs the trustme package for its local CA: pip install trustme "
            "(make up installs it with the dev extras)."
        ) from None
    ca = trustme.CA(organization_name="warren make up")
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tls_dir / "server.key"))
    (tls_dir / "server.key").chmod(0o600)
    cert.cert_chain_pems[0].write_to_path(str(tls_dir / "server.pem"))
    ca.cert_pem.write_to_path(str(tls_dir / "ca.pem"))


def up(layout: Layout, workers: int, tls: bool = False, free_ports: bool = False) -> int:
    nodes = layout.make_nodes(free_ports)
    tls_ports = None
    if tls:
        provision.private_dir(layout.tls_dir)
        make_certificates(layout.tls_dir)
        tls_ports = layout.tls_ports(nodes, free_ports)
    plan = layout.plan(nodes, workers, tls_ports)
    for i, n in enumerate(nodes):
        n.extra_config = f"load_definitions = {plan.definitions_file}\n"
        if tls_ports:
            d = layout.tls_dir.resolve()
            n.extra_config += tls_config(
                tls_ports[i], d / "ca.pem", d / "server.pem", d / "server.key"
            )
    running = all(n.running() for n in nodes)
    if running and any((n.base / "rabbitmq.conf").read_text() != n.config_text() for n in nodes):
        stop = "make cluster-down" if layout.nodes > 1 else "make down"
        raise UsageError(
            f"RabbitMQ in {layout.root}/ is running with another configuration "
            f"(TLS switched on or off?): run {stop} first."
        )
    users = plan.write()
    admin = users[0]
    for n in nodes:
        n.admin = (admin.name, admin.password)
    if not running:
        print(
            f"starting RabbitMQ ({layout.nodes} node{'s' if layout.nodes > 1 else ''}) ...",
            flush=True,
        )
        for n in nodes:
            n.write_config()
        if layout.nodes == 1:
            nodes[0].start()
        elif (layout.root / "clustered").exists():
            start_cluster(nodes, join=False)
        else:
            start_cluster(nodes)
            (layout.root / "clustered").write_text("yes\n")
    # Users made or brought up to date through the API (a node from before still has guest).
    provision.apply(nodes[0].management_url, users)
    # Only the config file speaks: a WARREN_* variable left in this shell would override it.
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("WARREN_")}
    (layout.root / "pids").mkdir(parents=True, exist_ok=True)
    (layout.root / "logs").mkdir(parents=True, exist_ok=True)
    for name, args in layout.services(workers).items():
        if layout.pid_of(name):
            continue
        env = dict(base_env, WARREN_CONFIG=str(plan.config_file(name)))
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
    client1, client2 = (plan.config_file(c) for c in provision.CLIENTS)
    wait_for_workers(client1, workers, layout)
    for client in provision.CLIENTS:
        init_owner(plan.config_file(client), base_env)
    where = f"{'amqps' if tls else 'amqp'} on port{'s' if len(nodes) > 1 else ''} "
    ports = tls_ports or [n.amqp_port for n in nodes]
    secrets = layout.secrets
    crew = f"{workers} worker{'s' if workers > 1 else ''}"
    print(f"""
warren is up: RabbitMQ ({where}{", ".join(str(p) for p in ports)}), the manager and \
{crew}, each with a broker user of its own{"; TLS with a local CA" if tls else ""}.
  management UI  {nodes[0].management_url}  (user {admin.name}, password: cat \
{secrets / (admin.name + ".password")})
  logs           {layout.root / "logs"}/
  clients        export WARREN_CONFIG={client1}
                 (client2, whose files are its own: WARREN_CONFIG={client2})
  passwords      {secrets}/client1.owner-password (and client2's) open each owner's
                 key: lose one and that client's files cannot be read; back them up
  try it         .venv/bin/warren upload README.md --replicas 2
                 .venv/bin/warren list
                 .venv/bin/warren status
                 .venv/bin/warren          (in a terminal: the menu)
  stop           make {"cluster-down" if layout.nodes > 1 else "down"}
""")
    return 0


def init_owner(config: Path, env: dict[str, str]) -> None:
    """``python -m client init`` for a client (idempotent: its password file is kept), so
    the README's tour asks for no password."""
    done = subprocess.run(
        [sys.executable, "-m", "client", "init", "-q"],
        env=dict(env, WARREN_CONFIG=str(config)),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        said = done.stderr.strip().removeprefix("error: ") or f"exit {done.returncode}"
        raise WarrenError(f"`init` for {config.stem} failed: {said}")


def wait_for_workers(config: Path, workers: int, layout: Layout, timeout: float = 60.0) -> None:
    from client.session import Session  # the client's own code: this is what users run

    settings = Settings.load(environ={"WARREN_CONFIG": str(config)})
    settings = dataclasses.replace(settings, client_name="make-up")
    deadline = time.monotonic() + timeout
    alive = 0
    said = ""  # what the client said last, if it failed
    while time.monotonic() < deadline:
        try:
            with Session(settings, Connection) as s:
                alive = sum(w.alive for w in s.status().workers)
            said = ""
            if alive >= workers:
                return
        except WarrenError as exc:
            said = f" (client1's status: {exc})"
        time.sleep(0.5)
    raise WarrenError(
        f"only {alive} of {workers} workers came up{said}; see {layout.root / 'logs'}/"
    )


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
    client1 = layout.secrets / f"{provision.CLIENTS[0]}.toml"
    if client1.is_file():
        print(f"clients: export WARREN_CONFIG={client1.resolve()}  (users in {layout.secrets}/)")
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
    parser.add_argument(
        "--tls", action="store_true", help="amqps:// with a local CA (make up TLS=1)"
    )
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="new nodes take free ports even when the default ones are free (tests)",
    )
    args = parser.parse_args()
    layout = CLUSTER if args.action.startswith("cluster-") else SINGLE
    action = args.action.removeprefix("cluster-")
    try:
        if action == "up":
            return up(layout, args.workers, args.tls, args.free_ports)
        return down(layout) if action == "down" else status(layout)
    except WarrenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
