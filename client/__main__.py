"""``warren`` (or ``python -m client``): a command (``client.cli``), or with none in a
terminal, the menu.

Both share the logging set-up, the signals, and the one-sentence error with its exit code,
so they live here, where the choice between the two is made, and neither module has to
import the other. The ``warren-manager`` and ``warren-worker`` console scripts start here
too: they run ``python -m manager`` and ``python -m worker`` as they are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from client.args import build_parser
from client.cli import App
from client.connecting import open_session
from warren import errors
from warren.errors import WarrenError
from warren.service import configure_logging

# Signals that end a command the way Ctrl-C does: a partial download is removed, the
# terminal restored, "interrupted" said, exit 130.
ENDING = (signal.SIGTERM, signal.SIGHUP)


class Ended(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where the program was, so every ``finally`` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def ending_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Ended`` once; a second one while cleaning up is ignored,
    so the clean-up finishes. A signal already ignored (``nohup warren upload ...``) stays
    ignored."""

    deadline: list[threading.Timer] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        for sig in ENDING:
            signal.signal(sig, signal.SIG_IGN)
        # The clean-up gets CLEAN_UP_SECONDS. Raised at an arbitrary point (inside pika's
        # I/O, say), closing the connection has been seen to hang once in CI: the command
        # must end all the same, as it promised, rather than linger.
        timer = threading.Timer(CLEAN_UP_SECONDS, _end_now, (signal.Signals(signum).name,))
        timer.daemon = True
        timer.start()
        deadline.append(timer)
        raise Ended(signum)

    saved = {
        sig: signal.signal(sig, on_signal)
        for sig in ENDING
        if signal.getsignal(sig) is not signal.SIG_IGN
    }
    try:
        yield
    finally:
        for timer in deadline:
            timer.cancel()
        for sig, handler in saved.items():
            signal.signal(sig, handler)


# Seconds a command ended by SIGTERM or SIGHUP has to clean up before it exits regardless.
CLEAN_UP_SECONDS = 15.0


def _end_now(name: str) -> None:
    """The clean-up after a signal did not finish in time: say so, and exit 130."""
    with contextlib.suppress(OSError):
        print(f"interrupted by {name}", file=sys.stderr, flush=True)
    os._exit(errors.EXIT_INTERRUPTED)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    interactive = args.command is None
    if interactive and not (sys.stdin.isatty() and sys.stdout.isatty()):
        parser.print_help(sys.stderr)  # a script or a pipe gets usage, never a menu it can't drive
        return errors.EXIT_USAGE
    if args.verbose:
        configure_logging("DEBUG", "client")
    else:  # quiet logs, but a broker alarm is news the user must see while they wait
        logging.basicConfig(level=logging.ERROR, format="%(message)s", stream=sys.stderr)
        logging.getLogger("warren.alarm").setLevel(logging.WARNING)
        logging.getLogger("warren.broker").setLevel(logging.WARNING)  # "waiting for RabbitMQ"
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        with ending_signals_interrupt():
            if interactive:
                # Only here: the commands never pay for (or need) the menu's imports.
                from client.menu import run_menu

                return run_menu(args, open_session)
            return App(args).run()
    except WarrenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Ended as exc:
        with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone
            print(f"interrupted by {exc}", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return errors.EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
