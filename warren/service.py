"""What every long-running warren process shares: logging, signals, the reconnect loop."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable

from warren.config import Settings
from warren.errors import BrokerRefused, BrokerUnavailable, Locked, Undeliverable, WarrenError
from warren.transport import Connect, Transport

log = logging.getLogger("warren.service")


def run_connection(
    connect: Connect,
    settings: Settings,
    name: str,
    setup: Callable[[Transport], None],
    stop: threading.Event,
) -> None:
    """Connect, run ``setup`` (declare, consume), then process events until ``stop``.

    When the connection is lost, reconnect with capped back-off and run ``setup`` again,
    so topology is redeclared and consumers resume. So too when ``setup`` could not deliver
    a message to a queue it has just declared: on a RabbitMQ cluster that happens while a
    quorum queue elects a new leader after a node died. Refusals propagate: retrying a
    wrong password forever helps nobody.
    """
    while not stop.is_set():
        conn = connect(settings, name)
        try:
            conn.open(stop=stop)
            if stop.is_set():
                return
            setup(conn)
            while not stop.is_set():
                conn.process(0.5)
        except BrokerRefused:
            raise
        except Locked:
            # Someone else holds what setup needs exclusively (another manager is active):
            # wait quietly as a standby and try again; setup said so once.
            time.sleep(1.0)
        except (BrokerUnavailable, Undeliverable) as exc:
            if stop.is_set():
                return
            log.warning("%s: %s; reconnecting", name, exc)
            time.sleep(0.5)
        finally:
            conn.close()


def configure_logging(level: str, who: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format=f"%(asctime)s %(levelname)s {who} %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("pika").setLevel(logging.CRITICAL)


def main(
    who: str,
    settings_factory: Callable[[], Settings],
    run: Callable[[Settings, threading.Event], None],
) -> int:
    """Run a service until SIGTERM/SIGINT; expected failures end in one sentence, no traceback."""
    if "--version" in sys.argv[1:]:
        print(f"warren-{who} {version()}")
        return 0
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("%s: %s received, stopping", who, signal.Signals(signum).name)
        stop.set()

    try:
        settings = settings_factory()
    except WarrenError as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        return exc.exit_code
    configure_logging(settings.log_level, who)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        run(settings, stop)
    except WarrenError as exc:
        log.error("%s: %s", who, exc)
        return exc.exit_code
    return 0


def version() -> str:
    """warren's version, as installed (``--version`` of every command)."""
    from importlib import metadata  # 20 ms to import: only for --version

    try:
        return metadata.version("warren")
    except metadata.PackageNotFoundError:  # run from a source tree never installed
        return "unknown"
