"""``python -m manager users add|quota|remove|list``: broker users with exactly their role's
rights, and clients' quotas.

Each role (manager, worker, client) gets its own RabbitMQ user with the permissions
``warren.topology.permissions`` lists, on the virtual host of ``WARREN_AMQP_URL``, set
through the management HTTP API at ``WARREN_ADMIN_URL`` (an administrator's login, e.g.
``http://admin:PASSWORD@127.0.0.1:15672/``). Adding a user that exists updates its
password and resets its permissions to its role's, so running ``add`` again is harmless.
A client's user is also capped in connections and channels (``CLIENT_LIMITS``). The
password comes from a file or stdin, so that it is never in the process's arguments, which
every local user can read (``--password PW`` still works, for scripts that know this).
A worker's user name is its worker name: the manager checks that a worker speaks for itself.
A client's quota lives in the manager's catalog, which the manager reads at every placement
(``users quota``, or ``add --quota``): run those where the manager keeps its data.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from manager.catalog import Catalog
from warren.config import Settings, redact
from warren.errors import NotFound, Refused, Unavailable, UsageError, WarrenError
from warren.messages import WORKER_NAME
from warren.sizes import human_size, parse_size
from warren.topology import ROLES, Permissions, permissions

USAGE_EXAMPLE = """examples:
  export WARREN_ADMIN_URL=http://admin:PASSWORD@127.0.0.1:15672/
  python -m manager users add manager manager --password-file manager.password
  openssl rand -hex 16 | python -m manager users add worker w1 --password -
  python -m manager users add client alice --password-file alice.password
  python -m manager users add client bob --password-file bob.password --quota 50GiB
  python -m manager users quota alice 12MiB     # or none; in the manager's catalog
  python -m manager users list
  python -m manager users remove alice

--password PW also works, but any local user sees PW (ps, /proc) while it runs.
"""

# What one client's broker user may hold open at once (RabbitMQ user limits, >= 3.10). A
# client process uses one connection and two channels: this leaves room for many at once,
# and none can exhaust the broker's connections or channels for everyone else.
CLIENT_LIMITS = {"max-connections": 16, "max-channels": 64}


def vhost_of(amqp_url: str) -> str:
    """The virtual host an AMQP URL names (the first of a cluster's list): ``/`` if none."""
    first = amqp_url.split(",")[0].strip()
    path = urllib.parse.urlsplit(first).path
    return urllib.parse.unquote(path[1:]) if len(path) > 1 else "/"


@dataclass
class Admin:
    """The management HTTP API, logged in as an administrator."""

    base: str  # http(s)://host:port/ without credentials
    user: str
    password: str
    context: ssl.SSLContext | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Admin:
        url = settings.admin_url
        if not url:
            raise UsageError(
                "WARREN_ADMIN_URL is not set: give the management API's address with an "
                "administrator's login, e.g. http://admin:PASSWORD@127.0.0.1:15672/."
            )
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"WARREN_ADMIN_URL ({redact(url)}) is not an http:// or https:// URL.")
        if parts.username is None or parts.password is None:
            raise UsageError(
                f"WARREN_ADMIN_URL ({redact(url)}) has no user and password: "
                "write it as http://USER:PASSWORD@HOST:PORT/."
            )
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        netloc = f"{host}:{parts.port}" if parts.port else host
        path = parts.path if parts.path.endswith("/") else parts.path + "/"
        context = None
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=settings.tls_ca_file or None)
        return cls(
            f"{parts.scheme}://{netloc}{path}",
            urllib.parse.unquote(parts.username),
            urllib.parse.unquote(parts.password),
            context,
        )

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; the answer's JSON, or None. 404 is NotFound, the rest one sentence."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + "api/" + path, data=data, method=method)
        login = f"{self.user}:{self.password}".encode()
        req.add_header("Authorization", "Basic " + base64.b64encode(login).decode())
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=10, context=self.context) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = _reason(exc)
            if exc.code == 401:
                raise Refused(
                    f"the management API at {self.base} refused the login {self.user!r}: "
                    "check the user and password in WARREN_ADMIN_URL."
                ) from None
            if exc.code == 403:
                raise Refused(
                    f"the management API at {self.base} says {self.user!r} may not do this "
                    f"(it must be an administrator): {detail}."
                ) from None
            if exc.code == 404:
                raise NotFound(detail) from None
            raise WarrenError(
                f"the management API at {self.base} answered {exc.code} to {method} {path}: "
                f"{detail}."
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unavailable(
                f"cannot reach the management API at {self.base} ({reason}); "
                "is WARREN_ADMIN_URL right and the rabbitmq_management plugin on?"
            ) from None
        return json.loads(raw) if raw else None


def _reason(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read() or b"{}")
    except ValueError:
        body = {}
    return str(body.get("reason") or exc.reason or exc.code).rstrip(".")


def _q(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def check_name(role: str, name: str) -> None:
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}: the roles are manager, worker and client.")
    if not name or any(ord(c) < 32 for c in name) or len(name) > 255:
        raise UsageError(f"{name!r} is not a usable user name.")
    if role == "worker" and not WORKER_NAME.match(name):
        raise UsageError(
            f"{name!r} cannot be a worker's name (1-64 letters, digits, '.', '_' or '-'); "
            "a worker's user name is its worker name."
        )


def add(admin: Admin, vhost: str, role: str, name: str, password: str) -> None:
    """Create or update ``name`` with exactly ``role``'s permissions on ``vhost``."""
    check_name(role, name)
    if not password:
        raise UsageError(
            "the password is empty: give one with --password-file FILE or --password - (stdin)."
        )
    if name == admin.user:
        raise UsageError(
            f"{name!r} is the administrator WARREN_ADMIN_URL logs in as: "
            "give the role's user another name."
        )
    try:
        admin.call("GET", f"vhosts/{_q(vhost)}")
    except NotFound:
        raise NotFound(
            f"the broker has no virtual host {vhost!r} (from WARREN_AMQP_URL)."
        ) from None
    perms = permissions(role, name)
    admin.call("PUT", f"users/{_q(name)}", {"password": password, "tags": f"warren-{role}"})
    admin.call(
        "PUT",
        f"permissions/{_q(vhost)}/{_q(name)}",
        {"configure": perms.configure, "write": perms.write, "read": perms.read},
    )
    # Exactly: topic permissions left from another role go first.
    with contextlib.suppress(NotFound):
        admin.call("DELETE", f"topic-permissions/{_q(vhost)}/{_q(name)}")
    for exchange, (write, read) in perms.topics.items():
        admin.call(
            "PUT",
            f"topic-permissions/{_q(vhost)}/{_q(name)}",
            {"exchange": exchange, "write": write, "read": read},
        )
    # A client's connections and channels are capped; a service's are not (a user that was
    # a client before loses its caps).
    for limit in ("max-connections", "max-channels"):
        if role == "client":
            body = {"value": CLIENT_LIMITS[limit]}
            admin.call("PUT", f"user-limits/{_q(name)}/{limit}", body)
        else:
            with contextlib.suppress(NotFound):
                admin.call("DELETE", f"user-limits/{_q(name)}/{limit}")


def read_password(password: str | None, password_file: str | None, stdin: TextIO) -> str:
    """The password from ``--password`` (``-``: the first line of stdin) or
    ``--password-file`` (its first line): trailing newlines are not part of it."""
    if password_file is not None:
        try:
            with open(password_file, encoding="utf-8") as fh:
                text = fh.readline()
        except OSError as exc:
            raise UsageError(
                f"cannot read the password file {password_file}: {exc.strerror}."
            ) from None
    elif password == "-":
        text = stdin.readline()
    else:
        text = password or ""
    return text.rstrip("\r\n")


def remove(admin: Admin, name: str) -> bool:
    """Delete the user (and so its permissions); False if there was none."""
    if name == admin.user:
        raise UsageError(f"refusing to remove {name!r}: WARREN_ADMIN_URL logs in as it.")
    try:
        admin.call("DELETE", f"users/{_q(name)}")
    except NotFound:
        return False
    return True


def role_of(name: str, perm: Mapping[str, Any], topics: list[Mapping[str, Any]]) -> str:
    """Which role's permissions ``name`` has exactly, else ``other``."""
    have = {t["exchange"]: (t["write"], t["read"]) for t in topics}
    for role in ROLES:
        want: Permissions = permissions(role, name)
        if (perm["configure"], perm["write"], perm["read"]) == (
            want.configure,
            want.write,
            want.read,
        ) and have == want.topics:
            return role
    return "other"


def listing(admin: Admin, vhost: str) -> list[tuple[str, str, str]]:
    """(user, role, tags) for every user with permissions on ``vhost``."""
    try:
        perms = admin.call("GET", f"vhosts/{_q(vhost)}/permissions")
    except NotFound:
        raise NotFound(
            f"the broker has no virtual host {vhost!r} (from WARREN_AMQP_URL)."
        ) from None
    try:
        topics = admin.call("GET", f"vhosts/{_q(vhost)}/topic-permissions")
    except NotFound:
        topics = []
    users = {u["name"]: u for u in admin.call("GET", "users")}
    rows = []
    for p in sorted(perms, key=lambda p: p["user"]):
        name = p["user"]
        mine = [t for t in topics if t["user"] == name]
        tags = users.get(name, {}).get("tags", "")
        if isinstance(tags, list):
            tags = ",".join(tags)
        rows.append((name, role_of(name, p, mine), str(tags)))
    return rows


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m manager users",
        description="Broker users for warren's roles, each with exactly its role's permissions "
        "on the virtual host of WARREN_AMQP_URL (through the management API at "
        "WARREN_ADMIN_URL).",
        epilog=USAGE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add", help="create or update a user (idempotent)")
    a.add_argument("role", help="manager, worker or client")
    a.add_argument("name", help="the user name (a worker's is its worker name)")
    given = a.add_mutually_exclusive_group(required=True)
    given.add_argument(
        "--password-file", metavar="FILE", help="read the user's password from FILE's first line"
    )
    given.add_argument(
        "--password",
        metavar="PW",
        help="the user's password; - reads it from stdin (PW itself is visible to every "
        "local user in ps while this runs)",
    )
    a.add_argument(
        "--quota",
        metavar="SIZE",
        help="a client's quota (like 12MiB, 50GiB): its data on the workers, every replica "
        "counted, plus its uploads in flight (kept in the manager's catalog: see --data-dir)",
    )
    a.add_argument("--data-dir", help="the manager's data dir, for --quota (env WARREN_DATA_DIR)")
    q = sub.add_parser(
        "quota", help="set or lift a client's quota (in the manager's catalog, no broker call)"
    )
    q.add_argument("name")
    q.add_argument("size", help="like 12MiB or 50GiB, or none to lift it")
    q.add_argument("--data-dir", help="the manager's data dir (env WARREN_DATA_DIR)")
    r = sub.add_parser("remove", help="delete a user")
    r.add_argument("name")
    sub.add_parser("list", help="users with permissions on the virtual host, and their role")
    return ap


def main(
    argv: Sequence[str], environ: Mapping[str, str] | None = None, stdin: TextIO | None = None
) -> int:
    """Run one ``users`` command; a failure is one sentence on stderr and its exit code."""
    args = parser().parse_args(list(argv))
    try:
        settings = Settings.load({"data_dir": getattr(args, "data_dir", None)}, environ=environ)
        if args.command == "quota":
            set_quota(settings, args.name, None if args.size == "none" else parse_size(args.size))
            return 0
        admin = Admin.from_settings(settings)
        vhost = vhost_of(settings.amqp_url)
        if args.command == "add":
            if args.quota is not None and args.role != "client":
                raise UsageError("only a client has a quota.")
            quota = parse_size(args.quota) if args.quota is not None else None
            password = read_password(args.password, args.password_file, stdin or sys.stdin)
            add(admin, vhost, args.role, args.name, password)
            print(f"{args.role} user {args.name!r} is ready on virtual host {vhost!r}")
            if quota is not None:
                set_quota(settings, args.name, quota)
            if args.role == "manager":
                print(
                    f"clients take answers only from it: give them WARREN_MANAGER_USER={args.name}"
                )
        elif args.command == "remove":
            if remove(admin, args.name):
                print(f"removed user {args.name!r}")
            else:
                print(f"there is no user {args.name!r}; nothing to remove")
        else:
            rows = listing(admin, vhost)
            width = max([len(n) for n, _, _ in rows] + [4])
            print(f"{'user':<{width}}  {'role':<8}  tags")
            for name, role, tags in rows:
                print(f"{name:<{width}}  {role:<8}  {tags}")
    except WarrenError as exc:
        print(f"manager users: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


def set_quota(settings: Settings, owner: str, nbytes: int | None) -> None:
    """Keep ``owner``'s quota in the manager's catalog (its data dir, on this machine): the
    manager reads it at every placement, so it holds from the next upload on."""
    data_dir = Path(settings.data_dir or Path(".warren") / "manager")
    path = data_dir / "catalog.sqlite3"
    if not path.is_file():
        raise UsageError(
            f"there is no manager catalog at {path}: run this where the manager keeps its "
            "data (--data-dir or WARREN_DATA_DIR)."
        )
    catalog = Catalog(path, settings.dead_after)
    catalog.open()
    try:
        catalog.set_quota(owner, nbytes)
    finally:
        catalog.close()
    if nbytes is None:
        print(f"{owner!r} has no quota")
    else:
        print(f"{owner!r} may keep {human_size(nbytes)} on the workers, every replica counted")
