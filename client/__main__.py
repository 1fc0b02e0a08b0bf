"""``python -m client``: a command (``client.cli``), or with none in a terminal, the menu.

Both share the logging set-up and the one-sentence error with its exit code, so they live
here, where the choice between the two is made, and neither module has to import the other.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from client.cli import App, build_parser
from warren import errors
from warren.errors import WarrenError
from warren.service import configure_logging


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
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    try:
        if interactive:
            # Only here: the commands never pay for (or need) termios, tty and readline.
            from client.menu import run_menu

            return run_menu(args)
        return App(args).run()
    except WarrenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return errors.EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
