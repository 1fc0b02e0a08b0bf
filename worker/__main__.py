"""``python -m worker --name NAME [--data-dir DIR]``: run one storage worker."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
from pathlib import Path

from warren.broker import Connection
from warren.config import Settings
from warren.errors import UsageError
from warren.messages import WORKER_NAME
from warren.service import main
from worker.service import Worker


def settings() -> Settings:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__)
    parser.add_argument("--name", help="this worker's name, e.g. w1 (env WARREN_NAME)")
    parser.add_argument("--data-dir", help="where chunks are stored (env WARREN_DATA_DIR)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics on this port (env WARREN_METRICS_PORT)",
    )
    args = parser.parse_args()
    s = Settings.load(
        {"name": args.name, "data_dir": args.data_dir, "metrics_port": args.metrics_port}
    )
    if not WORKER_NAME.match(s.name):
        raise UsageError("a worker needs --name: letters, digits, '.', '_' or '-' (e.g. w1).")
    if s.data_dir is None:
        s = dataclasses.replace(s, data_dir=Path(".warren") / "workers" / s.name)
    return s


def run(s: Settings, stop: threading.Event) -> None:
    Worker(s, stop, Connection).run()


def cli() -> int:
    """``warren-worker`` and ``python -m worker``: run one storage worker."""
    return main("worker", settings, run)


if __name__ == "__main__":
    sys.exit(cli())
