"""``python -m manager [--data-dir DIR]``: run the manager (placement, catalog, liveness).

``python -m manager users add|remove|list ...`` manages the broker users instead
(``manager/users.py``) and exits.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
from pathlib import Path

from manager.service import Manager
from warren.broker import Connection
from warren.config import Settings
from warren.service import main


def settings() -> Settings:
    parser = argparse.ArgumentParser(prog="python -m manager", description=__doc__)
    parser.add_argument("--data-dir", help="where the catalog lives (env WARREN_DATA_DIR)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics on this port (env WARREN_METRICS_PORT)",
    )
    args = parser.parse_args()
    s = Settings.load({"data_dir": args.data_dir, "metrics_port": args.metrics_port})
    if s.data_dir is None:
        s = dataclasses.replace(s, data_dir=Path(".warren") / "manager")
    return s


def run(s: Settings, stop: threading.Event) -> None:
    Manager(s, stop, Connection).run()


def cli() -> int:
    """``warren-manager`` and ``python -m manager``: run the manager, or ``users ...``."""
    if sys.argv[1:2] == ["users"]:
        from manager import users

        return users.main(sys.argv[2:])
    return main("manager", settings, run)


if __name__ == "__main__":
    sys.exit(cli())
