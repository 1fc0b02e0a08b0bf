"""``make up`` / ``make down`` without Docker: a private broker, the manager and 4 workers.

Everything lives under ``.warren/`` in the working directory: the RabbitMQ node
(``.warren/rabbitmq``), the manager's catalog and each worker's store, logs and pid files.
A second ``up`` reuses the same ports and data.

    python -m warren.localcluster up [--workers N]
    python -m warren.localcluster down
    python -m warren.localcluster status
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
from pathlib import Path

from warren.config import Settings
from warren.errors import WarrenError
from warren.localnode import LocalNode, free_port, port_open

ROOT = Path(".warren")


def node() -> LocalNode:
    base = ROOT / "rabbitmq"
    existing = LocalNode.load(base)
    if existing is not None:
        return existing
    ports = (5672, 15672, 25672)
    if any(port_open(p) for p in ports):
        ports = (free_port(), free_port(), free_port())
    n = LocalNode(base.resolve(), *ports)
    n.write_config()
    return n


def services(workers: int) -> dict[str, list[str]]:
    procs = {"manager": ["-m", "manager", "--data-dir", str(ROOT / "manager")]}
    for i in range(1, workers + 1):
        name = f"w{i}"
        procs[name] = ["-m", "worker", "--name", name, "--data-dir", str(ROOT / "workers" / name)]
    return procs


def pid_of(name: str) -> int | None:
    try:
        pid = int((ROOT / "pids" / f"{name}.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def up(workers: int) -> int:
    n = node()
    if not n.running():
        print(f"starting RabbitMQ (logs in {n.base / 'log'}) ...", flush=True)
        n.start()
    env = dict(os.environ, WARREN_AMQP_URL=n.url)
    (ROOT / "pids").mkdir(parents=True, exist_ok=True)
    (ROOT / "logs").mkdir(parents=True, exist_ok=True)
    for name, args in services(workers).items():
        if pid_of(name):
            continue
        with open(ROOT / "logs" / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, *args],
                env=env,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        (ROOT / "pids" / f"{name}.pid").write_text(str(proc.pid))
    wait_for_workers(n.url, workers)
    default = n.amqp_port == 5672
    print(f"""
warren is up: RabbitMQ at 127.0.0.1:{n.amqp_port}, manager and {workers} workers running.
  management UI  {n.management_url}  (user guest, password guest)
  logs           {ROOT / "logs"}/
{
        ""
        if default
        else f'''  first run      export WARREN_AMQP_URL={n.url}
'''
    }  try it         .venv/bin/python -m client upload README.md --replicas 2
                 .venv/bin/python -m client list
                 .venv/bin/python -m client status
  stop           make down
""")
    return 0


def wait_for_workers(url: str, workers: int, timeout: float = 60.0) -> None:
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
    raise WarrenError(f"only {alive} of {workers} workers came up; see {ROOT / 'logs'}/")


def down() -> int:
    for name in sorted(os.listdir(ROOT / "pids")) if (ROOT / "pids").is_dir() else []:
        pid = pid_of(name.removesuffix(".pid"))
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        (ROOT / "pids" / name).unlink(missing_ok=True)
    n = LocalNode.load(ROOT / "rabbitmq")
    if n is not None and n.running():
        print("stopping RabbitMQ ...", flush=True)
        n.stop()
    print("warren is down (data kept in .warren/)")
    return 0


def status() -> int:
    n = LocalNode.load(ROOT / "rabbitmq")
    state = f"running on port {n.amqp_port}" if n and n.running() else "stopped"
    print(f"rabbitmq: {state}")
    for name in sorted(os.listdir(ROOT / "pids")) if (ROOT / "pids").is_dir() else []:
        svc = name.removesuffix(".pid")
        print(f"{svc}: {'running' if pid_of(svc) else 'stopped'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m warren.localcluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    try:
        if args.action == "up":
            return up(args.workers)
        return down() if args.action == "down" else status()
    except WarrenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
