"""The owner's password, and the keys it opens (``unlock``), on the client.

The password comes from the file ``WARREN_PASSWORD_FILE`` (or ``password_file`` in the
config file) names, which only its owner may be able to read, as config files; without
one, from a terminal prompt; without a terminal, it is a usage error (exit 2), said at once.

``unlock`` is what every command that reads or writes content calls first: it fetches the
owner's wrapped keys (``key.get``) and tries the password on each, as restic tries its key
files. A wrong password, or an owner with no key yet, is one sentence and exit 2 before
anything else is sent or written.
"""

from __future__ import annotations

import base64
import getpass
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from client.session import Session
from warren import messages as m
from warren import ownerkey
from warren.config import Settings
from warren.errors import UsageError
from warren.ownerkey import OwnerKeys, WrongPassword

NO_PASSWORD = (
    "no password: set WARREN_PASSWORD_FILE to a file holding it (or password_file in the "
    "config file), or run the command in a terminal to be asked for it."
)


def read_password_file(path: Path) -> str:
    """The password in ``path`` (its first line); a file others may read is refused."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise UsageError(f"cannot read the password file {path}: {why}.") from None
    if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise UsageError(
            f"{path} can be read by others (mode {mode & 0o777:o}) and holds a password, "
            f"so it is not used: run chmod 600 {path}."
        )
    password = text.split("\n", 1)[0].rstrip("\r")
    if not password:
        raise UsageError(f"the password file {path} is empty.")
    return password


def password(settings: Settings, prompt: str = "password: ", confirm: bool = False) -> str:
    """The owner's password: from the password file, else asked (twice with ``confirm``)."""
    if settings.password_file:
        return read_password_file(Path(settings.password_file).expanduser())
    return ask(prompt, confirm)


def ask(prompt: str, confirm: bool = False) -> str:
    """A password typed on the terminal (not echoed); twice with ``confirm``."""
    if not sys.stdin.isatty():
        raise UsageError(NO_PASSWORD)
    typed = getpass.getpass(prompt)
    if not typed:
        raise UsageError("an empty password is no password.")
    if confirm and getpass.getpass("again: ") != typed:
        raise UsageError("the two passwords differ.")
    return typed


@dataclass(frozen=True)
class Opened:
    """The master key, and the wrapping of it the password opened."""

    master: bytes
    key: m.KeyEntry


def wrapped_keys(session: Session) -> list[m.KeyEntry]:
    """Every wrapped key of the session's owner (the manager knows it by its broker user)."""
    return list(session.request(m.KeyGet(), m.KeyListReply).keys)


def open_with(keys: list[m.KeyEntry], secret: str, owner: str) -> Opened:
    """The first of ``keys`` that ``secret`` opens; exit 2 if none (or there are none)."""
    if not keys:
        from client.args import default_prog  # not at the top: args imports this module

        raise UsageError(f"no key yet for {owner}: run `{default_prog()} init` first.")
    for entry in keys:
        try:
            master = ownerkey.unwrap(base64.b64decode(entry.wrapped), secret)
        except (WrongPassword, ownerkey.NotAKey):
            continue
        return Opened(master, entry)
    raise WrongPassword(f"wrong password: it opens none of {owner}'s keys.")


def open_master(session: Session, secret: str | None = None) -> Opened:
    """The owner's master key: its wrapped keys fetched, the password tried on each."""
    keys = wrapped_keys(session)
    owner = session.conn.user
    if not keys:  # said before a password is asked for: there is nothing it could open
        open_with(keys, "", owner)
    return open_with(keys, password(session.settings) if secret is None else secret, owner)


def unlock(session: Session) -> OwnerKeys:
    """The owner's keys, for the content path: ``WrongPassword`` (exit 2) or "no key yet"
    (exit 2) before anything but the key fetch is sent."""
    return ownerkey.derive(open_master(session).master)
