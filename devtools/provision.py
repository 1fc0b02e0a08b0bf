"""Broker users for ``make up``, ``make cluster-up`` and docker compose: made once, reused.

For a layout with N workers it makes a RabbitMQ user for each role's process, each with a
random password generated the first time and kept in a secrets folder (mode 0700, every file
0600) for later runs:

    admin            the management UI and HTTP API (tag administrator, every right on /)
    manager          the manager                   (warren.topology.permissions("manager"))
    w1 .. wN         the workers, a user each, named as the worker
    client1 client2  two clients, each the owner of the files it uploads, each with the
                     password that wraps its owner key (<name>.owner-password, made once;
                     `python -m client init` makes the key, which make up and compose run)

From the passwords it writes a RabbitMQ definitions file (salted SHA-256 hashes, no guest:
a node that loads definitions at its first boot creates no default user) and, for each
process, a config file ``<name>.toml`` with its own login in ``amqp_url`` (and the CA to
check the broker with, under TLS), so a process needs nothing but ``WARREN_CONFIG=<file>``.
``admin.toml`` holds ``admin_url`` for ``python -m manager users``.

``apply`` brings a running broker in line through its management API (a node from before,
which still has guest; workers added since): it is what ``make up`` runs after the node is up.

docker compose runs it as a one-shot service that writes into a named volume, and with
``--own`` gives each container only what it needs, in a volume of its own:

    python -m devtools.provision --out /etc/warren --hosts rabbitmq --own /own --owner 1000:1000

Each folder ``/own/<name>`` (a named volume mounted there) gets that user's ``<name>.toml``
(the manager's also ``manager.key``); ``/own/broker`` gets the definitions (hashes only)
and, with ``--erlang-cookie``, the cookie. The passwords, ``admin.toml`` and the
administrator's password stay in ``--out``, which only the provision service mounts.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import secrets
import sys
import tempfile
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from manager.users import CLIENT_LIMITS
from warren.errors import NotFound, Refused, WarrenError
from warren.sealing import load_or_create_key
from warren.topology import permissions

ADMIN = "admin"
MANAGER = "manager"
CLIENTS = ("client1", "client2")
VHOST = "/"
HASHING = "rabbit_password_hashing_sha256"


@dataclass(frozen=True)
class User:
    name: str
    role: str  # "admin", or a warren.topology role: manager, worker, client
    password: str


def worker_names(workers: int) -> list[str]:
    return [f"w{i}" for i in range(1, workers + 1)]


def password_hash(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256: base64(salt[4] + sha256(salt + password))."""
    salt = secrets.token_bytes(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` atomically, with ``mode`` from the start."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def toml(values: Mapping[str, str]) -> str:
    """Flat string settings as TOML (a JSON string is a valid TOML basic string)."""
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def amqp_url(user: str, password: str, endpoints: Sequence[tuple[str, int]], tls: bool) -> str:
    """The URL list of ``endpoints`` (host, port), logged in as ``user``, on vhost /."""
    scheme = "amqps" if tls else "amqp"
    login = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return ",".join(f"{scheme}://{login}@{host}:{port}/%2F" for host, port in endpoints)


@dataclass
class Plan:
    """What to provision for one layout, and where to write it."""

    secrets_dir: Path  # passwords and config files: 0700, files 0600
    definitions_file: Path  # the broker reads it: 0600 unless definitions_mode says otherwise
    workers: int
    endpoints: list[tuple[str, int]]  # (host, AMQP port) of each node, as the services reach it
    management: tuple[str, int]  # (host, port) of the management API, for admin.toml
    tls_ca_file: str = ""  # set: amqps:// URLs, checked against this CA
    definitions_mode: int = 0o600
    # Settings every manager and worker config gets (queue_type on a cluster).
    service_settings: dict[str, str] = field(default_factory=dict)

    def password(self, name: str) -> str:
        """The user's password: the one kept from an earlier run, or a new one."""
        path = self.secrets_dir / f"{name}.password"
        with contextlib.suppress(FileNotFoundError):
            kept = path.read_text().strip()
            if kept:
                return kept
        new = secrets.token_urlsafe(24)
        write_private(path, new + "\n")
        return new

    def roles(self) -> list[tuple[str, str]]:
        """(name, role) of every user, the administrator first."""
        return [
            (ADMIN, "admin"),
            (MANAGER, "manager"),
            *((w, "worker") for w in worker_names(self.workers)),
            *((c, "client") for c in CLIENTS),
        ]

    def users(self) -> list[User]:
        private_dir(self.secrets_dir)
        return [User(name, role, self.password(name)) for name, role in self.roles()]

    def owner_password_file(self, client: str) -> Path:
        """The password that wraps the client's owner key (``init``), made once and kept:
        lose it and that client's data cannot be read. Absolute, like the manager's key."""
        return self.secrets_dir.absolute() / f"{client}.owner-password"

    @property
    def manager_key_file(self) -> Path:
        """The manager's own key (warren.sealing), made once and kept like the passwords."""
        return self.secrets_dir.absolute() / "manager.key"

    def config_file(self, name: str) -> Path:
        return self.secrets_dir / f"{name}.toml"

    def configs(self, users: Iterable[User]) -> dict[str, dict[str, str]]:
        """Each user's config file: its settings (amqp_url with its own login)."""
        tls = bool(self.tls_ca_file)
        found: dict[str, dict[str, str]] = {}
        for u in users:
            values = {"amqp_url": amqp_url(u.name, u.password, self.endpoints, tls)}
            if u.role == "admin":
                host, port = self.management
                login = f"{urllib.parse.quote(u.name)}:{urllib.parse.quote(u.password, safe='')}"
                values["admin_url"] = f"http://{login}@{host}:{port}/"
            elif u.role == "client":
                values["client_name"] = u.name
                values["password_file"] = str(self.owner_password_file(u.name))
            else:
                values.update(self.service_settings)
            if u.role == "manager":
                # Outside the manager's data dir: a manager rebuilding on an empty one (or a
                # standby) must read the same key to open the workers' records.
                values["manager_key_file"] = str(self.manager_key_file)
            # Workers take commands, and clients answers, only from the manager's user.
            values["manager_user"] = MANAGER
            if tls:
                values["tls_ca_file"] = self.tls_ca_file
            found[u.name] = values
        return found

    def write(self) -> list[User]:
        """Passwords (kept), definitions and every config file; the users."""
        users = self.users()
        load_or_create_key(self.manager_key_file)
        for client in CLIENTS:
            path = self.owner_password_file(client)
            if not path.exists():  # kept: a new one would open no key made before
                write_private(path, secrets.token_urlsafe(24) + "\n")
        self.definitions_file.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(definitions(users), indent=2) + "\n"
        write_private(self.definitions_file, text, self.definitions_mode)
        for name, values in self.configs(users).items():
            write_private(self.config_file(name), toml(values))
        return users


def definitions(users: Iterable[User], vhost: str = VHOST) -> dict[str, Any]:
    """A RabbitMQ definitions document: the users, vhost, their permissions; no guest."""
    defs: dict[str, Any] = {
        "users": [],
        "vhosts": [{"name": vhost}],
        "permissions": [],
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": [],
        "queues": [],
        "exchanges": [],
        "bindings": [],
    }
    for u in users:
        tags = ["administrator"] if u.role == "admin" else [f"warren-{u.role}"]
        defs["users"].append(
            {
                "name": u.name,
                "password_hash": password_hash(u.password),
                "hashing_algorithm": HASHING,
                "tags": tags,
                # A client's connections and channels are capped, as ``users add`` does.
                "limits": dict(CLIENT_LIMITS) if u.role == "client" else {},
            }
        )
        if u.role == "admin":
            rights = {"configure": ".*", "write": ".*", "read": ".*"}
            defs["permissions"].append({"user": u.name, "vhost": vhost, **rights})
            continue
        perms = permissions(u.role, u.name)
        defs["permissions"].append(
            {
                "user": u.name,
                "vhost": vhost,
                "configure": perms.configure,
                "write": perms.write,
                "read": perms.read,
            }
        )
        for exchange, (write, read) in perms.topics.items():
            defs["topic_permissions"].append(
                {"user": u.name, "vhost": vhost, "exchange": exchange, "write": write, "read": read}
            )
    return defs


def apply(management_url: str, users: Sequence[User], vhost: str = VHOST) -> None:
    """Make a running broker's users these (through its management API), and delete guest.

    Logs in as the administrator; on a node from before it existed, as guest, to make it.
    Idempotent: each role user gets its password and exactly its role's permissions again.
    """
    from manager.users import Admin, add  # the operators' own tool does the work (and limits)

    admin_user = next(u for u in users if u.role == "admin")
    admin = Admin(management_url, admin_user.name, admin_user.password)
    try:
        admin.call("GET", "whoami")
    except Refused:
        guest = Admin(management_url, "guest", "guest")
        try:
            guest.call("GET", "whoami")
        except Refused:
            raise Refused(
                f"the management API at {management_url} refuses both {admin_user.name!r} "
                "(with the password kept in the secrets folder) and guest: was the secrets "
                "folder replaced? Delete the broker's data (make clean) to start afresh."
            ) from None
        quoted = urllib.parse.quote(admin_user.name, safe="")
        body = {"password": admin_user.password, "tags": "administrator"}
        guest.call("PUT", f"users/{quoted}", body)
        vq = urllib.parse.quote(vhost, safe="")
        rights = {"configure": ".*", "write": ".*", "read": ".*"}
        guest.call("PUT", f"permissions/{vq}/{quoted}", rights)
    for u in users:
        if u.role != "admin":
            add(admin, vhost, u.role, u.name, u.password)
    with contextlib.suppress(NotFound):
        admin.call("DELETE", "users/guest")


def erlang_cookie(path: Path) -> str:
    """The Erlang cookie kept in ``path``, or a new one: 40 random capital letters."""
    with contextlib.suppress(FileNotFoundError):
        kept = path.read_text().strip()
        if kept:
            return kept
    cookie = "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(40))
    write_private(path, cookie + "\n")
    return cookie


BROKER = "broker"  # the --own folder of the broker nodes


def hand_out(plan: Plan, own: Path, owner: tuple[int, int] | None) -> list[str]:
    """Copy into each folder of ``own`` what its container needs and nothing else: a user's
    config (the manager's key too), or the broker's definitions and Erlang cookie. With
    ``owner`` (provision runs as root), each folder and file is made that uid's and gid's."""
    names = {name for name, _ in plan.roles()}
    handed = []
    for folder in sorted(p for p in own.iterdir() if p.is_dir()):
        if folder.name == BROKER:
            files = [(plan.definitions_file, 0o644)]
            cookie = plan.secrets_dir / "erlang.cookie"
            if cookie.exists():
                files.append((cookie, 0o600))
            folder.chmod(0o755)  # the broker reads the definitions as a user of its own
        elif folder.name in names and folder.name != ADMIN:
            files = [(plan.config_file(folder.name), 0o600)]
            if folder.name == MANAGER:
                files.append((plan.manager_key_file, 0o600))
            if folder.name in CLIENTS:
                files.append((plan.owner_password_file(folder.name), 0o600))
            folder.chmod(0o700)
        else:
            raise WarrenError(
                f"{folder} is no user's folder: the users are "
                f"{', '.join(sorted(names - {ADMIN}))}, and {BROKER} is the broker's."
            )
        for source, mode in files:
            write_private(folder / source.name, source.read_text(), mode)
        # Files another run left, or a user's that is no longer this folder's, go.
        keep = {source.name for source, _ in files}
        for stale in folder.iterdir():
            if stale.name not in keep:
                stale.unlink()
        if owner is not None:
            for path in (folder, *folder.iterdir()):
                os.chown(path, *owner)
        handed.append(folder.name)
    return handed


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m devtools.provision",
        description="Write broker users' passwords, a definitions file and a config file per "
        "process (docker compose's provision service). Passwords already there are kept.",
    )
    ap.add_argument("--out", type=Path, required=True, help="folder to write into")
    ap.add_argument("--hosts", required=True, help="the broker nodes' host names, comma-separated")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument(
        "--erlang-cookie",
        action="store_true",
        help="also secrets/erlang.cookie, the cluster nodes' shared secret (made once)",
    )
    ap.add_argument(
        "--own",
        type=Path,
        help="a folder of per-container folders (named volumes): each gets only its own files",
    )
    ap.add_argument(
        "--owner",
        metavar="UID:GID",
        help="make everything written this user's and group's (when provision runs as root)",
    )
    args = ap.parse_args(argv)
    owner = None
    if args.owner:
        uid, _, gid = args.owner.partition(":")
        if not (uid.isdigit() and gid.isdigit()):
            ap.error(f"--owner takes UID:GID in digits, not {args.owner!r}")
        owner = (int(uid), int(gid))
    hosts = [h.strip() for h in args.hosts.split(",") if h.strip()]
    # Anyone may read the definitions (only salted hashes): the broker runs as a user of its
    # own. The passwords and configs are in secrets/, which only this user may enter.
    plan = Plan(
        secrets_dir=args.out / "secrets",
        definitions_file=args.out / "definitions.json",
        workers=args.workers,
        endpoints=[(h, 5672) for h in hosts],
        management=(hosts[0], 15672),
        definitions_mode=0o644,
    )
    try:
        users = plan.write()
        if args.erlang_cookie:
            erlang_cookie(plan.secrets_dir / "erlang.cookie")
        if owner is not None:
            for path in (args.out, plan.definitions_file, *plan.secrets_dir.rglob("*")):
                os.chown(path, *owner)
            os.chown(plan.secrets_dir, *owner)
        handed = hand_out(plan, args.own, owner) if args.own else []
    except (OSError, WarrenError) as exc:
        print(f"provision: {exc}", file=sys.stderr)
        return 1
    names = ", ".join(u.name for u in users)
    print(
        f"provision: users {names}; configs in {plan.secrets_dir}/, definitions "
        f"{plan.definitions_file}"
        + (f"; each of {', '.join(handed)} has its own in {args.own}/" if handed else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
