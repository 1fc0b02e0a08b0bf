"""The terminal under the menu: keys read one at a time from a raw terminal (arrows, digits,
Tab, Ctrl-C, Ctrl-D, escape sequences), and file-name completion for path prompts."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import termios
import tty
from collections.abc import Callable, Iterator

log = logging.getLogger("warren.client")

# Escape sequences of the keys the menu knows (after ESC), as xterm and most others send them.
SEQUENCES = {
    "[A": "up", "OA": "up", "[B": "down", "OB": "down",
    "[H": "home", "OH": "home", "[1~": "home", "[7~": "home",
    "[F": "end", "OF": "end", "[4~": "end", "[8~": "end",
    "[5~": "pageup", "[6~": "pagedown",
}  # fmt: skip
NAMED = {
    "\r": "enter",
    "\n": "enter",
    "\x7f": "backspace",
    "\x08": "backspace",
    "k": "up",
    "j": "down",
}
CSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


class Keyboard:
    """Single keys from the terminal, arrow keys included.

    While it waits it calls ``idle`` a few times a second: the menu uses that to keep its
    AMQP connection alive, since pika answers the broker's heartbeats only when called.
    """

    def __init__(self, fd: int, idle: Callable[[], None] = lambda: None) -> None:
        self.fd = fd
        self.idle = idle

    @contextlib.contextmanager
    def cbreak(self) -> Iterator[None]:
        """Keys arrive one by one, unechoed, and Ctrl-C still raises KeyboardInterrupt.

        TCSADRAIN rather than tty's default TCSAFLUSH, so keys typed ahead are kept.
        """
        saved = termios.tcgetattr(self.fd)
        try:
            tty.setcbreak(self.fd, termios.TCSADRAIN)
            yield
        finally:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, saved)

    def read(self) -> str:
        """The next key: a character, or a name ("up", "enter", "escape", ...)."""
        ch = self._byte(None)
        if ch == "\x03":  # in case the terminal sends it as a byte rather than a signal
            raise KeyboardInterrupt
        if ch == "\x04":
            raise EOFError
        if ch == "\x1b":
            return self._sequence()
        return NAMED.get(ch, ch)

    def _sequence(self) -> str:
        intro = self._byte(0.05)
        if intro not in ("[", "O"):
            return "escape"  # Esc alone (or Alt with a key, which the menu has no use for)
        body = ""
        while True:
            b = self._byte(0.05)
            body += b
            if not b or "@" <= b <= "~":
                return SEQUENCES.get(intro + body, "unknown")

    def _byte(self, wait: float | None) -> str:
        """One byte, waiting ``wait`` seconds ("" after that) or for ever when None."""
        while True:
            ready, _, _ = select.select([self.fd], [], [], 0.25 if wait is None else wait)
            if ready:
                data = os.read(self.fd, 1)
                if not data:
                    raise EOFError  # the terminal went away
                return data.decode("latin-1")
            if wait is not None:
                return ""
            self.idle()


def wrong_key(key: str, count: int) -> str:
    """What a key the menu has no use for gets: the keys it does have."""
    what = "that key" if key == "unknown" else repr(key)
    return f"{what} is not a choice here: use ↑↓ and enter, a number 1–{count}, or q"


def path_matches(text: str) -> list[str]:
    """Completions of a partly typed path, kept as typed (``~`` stays), folders with a ``/``."""
    slash = text.rfind("/")
    prefix, start = text[: slash + 1], text[slash + 1 :]
    folder = os.path.expanduser(prefix) if prefix else "."
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    found = []
    for name in names:
        if name.startswith(start) and (start.startswith(".") or not name.startswith(".")):
            is_dir = os.path.isdir(os.path.join(folder, name))
            found.append(prefix + name + ("/" if is_dir else ""))
    return found


class PathCompleter:
    """readline's completer protocol: called with state 0, 1, 2, ... until it returns None."""

    def __init__(self) -> None:
        self.matches: list[str] = []

    def __call__(self, text: str, state: int) -> str | None:
        if state == 0:
            self.matches = path_matches(text)
        return self.matches[state] if state < len(self.matches) else None


def enable_path_completion() -> bool:
    """Tab completes paths in the menu's prompts; False where Python has no readline."""
    try:
        import readline
    except ImportError:
        return False
    readline.set_completer_delims("\t\n")  # the whole line is one path, spaces and all
    readline.set_completer(PathCompleter())
    if "libedit" in (readline.__doc__ or ""):
        readline.parse_and_bind("bind ^I rl_complete")
    else:
        readline.parse_and_bind("tab: complete")
    return True


def number_typed(typed: str, key: str, cursor: int, count: int) -> tuple[str, int, int | None]:
    """A digit typed in a menu of ``count`` entries: (digits so far, cursor, pick or None).

    The pick is made as soon as no longer number could follow: "3" picks at once among
    12 entries, "1" waits for a second digit or Enter.
    """
    for digits in (typed + key, key):
        n = int(digits)
        if digits[0] != "0" and 1 <= n <= count:
            return digits, n - 1, (n - 1 if n * 10 > count else None)
    return typed, cursor, None
