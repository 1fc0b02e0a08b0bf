"""``init`` and ``key add|list|remove|passwd``: the passwords that wrap the owner's key.

``init`` makes the owner's master key on this machine, wraps it with the password
(``warren.ownerkey``) and hands only the wrapping to the manager. ``key add`` wraps the same
key with one more password (another machine's, say), ``key passwd`` swaps the password this
one opens, ``key remove`` forgets a wrapping (never the last: the data would go with it).
Every one that needs the key opens it with the current password first, so a wrong one is
exit 2 before anything changes. (``client/keys.py`` is the menu's keyboard, not this.)
"""

from __future__ import annotations

import argparse
import base64
import datetime
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from client.owner import ask, open_master, open_with, password, read_password_file, wrapped_keys
from client.session import Session
from warren import errors, ownerkey
from warren import messages as m
from warren.errors import Refused, UsageError
from warren.ownerkey import WrongPassword

LOSE_IT = "keep the password safe: without it, nothing you store can be read back"


class Printer(Protocol):
    json: bool
    out: Console

    def emit(self, obj: Any) -> None: ...


def define(
    command: Callable[[str, str, str], argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser, bool], None],
) -> None:
    """The commands' arguments (called by ``client.args.build_parser``)."""
    command(
        "init",
        "create your key, wrapped with your password (WARREN_PASSWORD_FILE or asked); once "
        "per owner: run again, it says the key is there",
        "WARREN_PASSWORD_FILE=~/.warren-password warren init",
    )
    key = command(
        "key",
        "manage the passwords that open your key: add one, list them, remove one, change "
        "this one (the current password is asked first)",
        "warren key add --new-password-file ~/.laptop-password",
    )
    sub = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        common(p, True)
        return p

    for name, help in (
        ("add", "wrap your key with one more password"),
        ("passwd", "change the password: wrap with a new one, drop the one you gave"),
    ):
        p = action(name, help)
        p.add_argument(
            "--new-password-file",
            type=Path,
            metavar="FILE",
            help="the new password, from this file (chmod 600); default: asked twice",
        )
    ls = action("list", "list your keys: id, when and from which host each was added")
    ls.add_argument("--json", action="store_true", help="print a JSON array")
    rm = action("remove", "forget one of your keys (never the last one)")
    rm.add_argument("id", metavar="ID", help="the key's id, as `key list` shows it")


def run(app: Printer, args: argparse.Namespace, session: Session) -> int:
    if args.command == "init":
        return init(app, session)
    actions: dict[str, Callable[[Printer, argparse.Namespace, Session], int]] = {
        "add": add,
        "list": list_keys,
        "remove": remove,
        "passwd": passwd,
    }
    return actions[args.key_command](app, args, session)


def host_label(_session: Session) -> str:
    """The machine a wrapping is made on, as `key list` shows it (restic keeps the same)."""
    return os.uname().nodename


def init(app: Printer, session: Session) -> int:
    keys = wrapped_keys(session)
    owner = session.conn.user
    if keys:
        return _init_done(app, keys, password(session.settings), owner)
    secret = password(session.settings, "new password: ", confirm=True)
    master = ownerkey.new_master()
    wrapped = ownerkey.wrap(master, secret, n=session.settings.scrypt_n)
    try:
        added = _add(session, wrapped, first=True)
    except Refused:  # another init of this owner won the race: its key it is
        return _init_done(app, wrapped_keys(session), secret, owner)
    app.out.print(f"created the key of {owner} (key {added.id}); {LOSE_IT}.", markup=False)
    return errors.EXIT_OK


def _init_done(app: Printer, keys: list[m.KeyEntry], secret: str, owner: str) -> int:
    try:
        opened = open_with(keys, secret, owner)
    except WrongPassword:
        raise WrongPassword(
            f"wrong password: {owner} has a key already, and this password opens none of its "
            "wrappings."
        ) from None
    app.out.print(
        f"{owner} has a key already (key {opened.key.id}), and this password opens it: "
        "nothing to do.",
        markup=False,
    )
    return errors.EXIT_OK


def _add(session: Session, wrapped: bytes, first: bool = False) -> m.KeyAdded:
    req = m.KeyAdd(
        wrapped=base64.b64encode(wrapped).decode(), host=host_label(session), first=first
    )
    return session.request(req, m.KeyAdded)


def new_password(args: argparse.Namespace) -> str:
    path: Path | None = args.new_password_file
    if path is not None:
        return read_password_file(path.expanduser())
    try:
        return ask("new password: ", confirm=True)
    except UsageError as exc:
        if "no password" in str(exc):
            raise UsageError(
                "no new password: give --new-password-file FILE, or run the command in a "
                "terminal to be asked for it."
            ) from None
        raise


def add(app: Printer, args: argparse.Namespace, session: Session) -> int:
    opened = open_master(session)
    secret = new_password(args)
    added = _add(session, ownerkey.wrap(opened.master, secret, n=session.settings.scrypt_n))
    app.out.print(f"added key {added.id}: the new password opens your key too.", markup=False)
    return errors.EXIT_OK


def passwd(app: Printer, args: argparse.Namespace, session: Session) -> int:
    opened = open_master(session)
    secret = new_password(args)
    added = _add(session, ownerkey.wrap(opened.master, secret, n=session.settings.scrypt_n))
    if added.id != opened.key.id:
        session.request(m.KeyRemove(id=opened.key.id), m.KeyRemoved)
    app.out.print(
        f"password changed: key {added.id} replaces key {opened.key.id}; {LOSE_IT}.",
        markup=False,
    )
    return errors.EXIT_OK


def list_keys(app: Printer, args: argparse.Namespace, session: Session) -> int:
    keys = session.request(m.KeyList(), m.KeyListReply).keys
    if app.json:
        app.emit([{"id": k.id, "created": k.created, "host": k.host} for k in keys])
        return errors.EXIT_OK
    if not keys:
        app.out.print("no key yet: run `init` first.", markup=False)
    for k in keys:
        when = datetime.datetime.fromtimestamp(k.created).strftime("%Y-%m-%d %H:%M:%S")
        app.out.print(f"{k.id}  {when}  {k.host}", markup=False)
    return errors.EXIT_OK


def remove(app: Printer, args: argparse.Namespace, session: Session) -> int:
    session.request(m.KeyRemove(id=args.id), m.KeyRemoved)
    app.out.print(f"removed key {args.id}.", markup=False)
    return errors.EXIT_OK
