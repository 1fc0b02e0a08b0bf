"""The commands (upload, download, list, versions, delete, prune, status, config,
completion): their arguments and what each one does, and how a command reaches the broker.

Results go to stdout, progress and errors to stderr. Progress bars and colour appear only
on a terminal (rich honours NO_COLOR); ``--json`` prints nothing but JSON. How things look
lives in ``client.render``, shared with the menu; ``client.__main__`` picks between the two.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import shtab
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from client.localfiles import expand
from client.outcomes import DownloadResult, UploadResult
from client.outcomes import Progress as ProgressHooks
from client.render import (
    BatchProgress,
    RichProgress,
    dashboard,
    download_json,
    download_summary,
    file_json,
    files_table,
    human_size,
    replica_line,
    status_json,
    status_summary,
    transfer_bars,
    upload_json,
    upload_summary,
    versions_table,
    workers_table,
)
from client.restore import tree_destination, writing
from client.session import Session
from warren import errors
from warren.broker import Connection
from warren.config import CONFIG_ENV, Settings, default_config_path, redact, shown
from warren.errors import BrokerUnavailable, NotFound, UsageError, WarrenError
from warren.transport import Connect, Delivery, Transport

log = logging.getLogger("warren.client")

EXIT_CODES = f"""\
exit codes:
  {errors.EXIT_OK}    success (for upload: every replica of every file confirmed)
  {errors.EXIT_FAILURE}    other failure
  {errors.EXIT_USAGE}    usage: bad arguments, a missing or unreadable local file
  {errors.EXIT_NOT_FOUND}    not found: no stored file has that name
  {errors.EXIT_UNAVAILABLE}    unavailable: RabbitMQ, the manager or the workers did not answer
  {errors.EXIT_INTEGRITY}    integrity: bytes failed their SHA-256 check
  {errors.EXIT_REFUSED}    refused: e.g. more replicas than live workers
  {errors.EXIT_INTERRUPTED}  interrupted (Ctrl-C, SIGTERM or SIGHUP; partial downloads are removed)
"""

SETTINGS_HELP = f"""\
settings come from flags, then WARREN_* variables, then a TOML config file: the one
{CONFIG_ENV} names, or config.toml in your config folder (`warren config` says where).
Its keys are the variables' names in lower case without WARREN_, e.g.
  amqp_url = "amqp://me:secret@backup.example:5672/%2F"
Only you may be able to read it (chmod 600): it may hold a password.
"""


def version() -> str:
    try:
        return metadata.version("warren")
    except metadata.PackageNotFoundError:  # run from a source tree never installed
        return "unknown"


def default_prog() -> str:
    """``warren`` when started by that name, else ``python -m client``."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith("warren") else "python -m client"


def _common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The flags every command takes. The top-level parser holds their defaults; a
    command's copies default to SUPPRESS, so a flag given before the command name is not
    overwritten by the command's default: ``-q upload x`` means ``upload x -q``."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--client-name",
        default=default(None),
        help="name shown in the management UI and manager logs (env WARREN_CLIENT_NAME)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="print only errors"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="log protocol events (each message sent and received) on stderr",
    )


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Every command takes the common flags too, so they work before or after its name."""
    prog = prog or default_prog()
    parser = argparse.ArgumentParser(
        prog=prog,
        description="warren's console client: back up files to the cluster and restore them.",
        epilog=EXIT_CODES
        + "\n"
        + SETTINGS_HELP
        + "\nWith no command in a terminal, an interactive menu opens.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"warren {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog=f"example:\n  {example}\n\n{EXIT_CODES}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(cmd, suppress=True)
        return cmd

    up = command(
        "upload",
        "store files and folders on the cluster, each file on N distinct workers; storing a "
        "name again adds a version, and content the cluster already holds is not sent again",
        "warren upload ~/photos notes.txt --replicas 2   # stores photos/..., notes.txt",
    )
    paths = up.add_argument("paths", nargs="+", metavar="PATH", type=Path)
    paths.complete = shtab.FILE  # type: ignore[attr-defined]
    up.add_argument(
        "--replicas", type=int, default=2, metavar="N", help="copies to keep (default 2)"
    )
    up.add_argument("--name", help="name to store a single file under (default: its file name)")
    up.add_argument(
        "--json",
        action="store_true",
        help="print a JSON object per file as it is confirmed (name, size, sha256, replicas, "
        "bytes_sent), and no bars",
    )

    down = command(
        "download",
        "restore a stored file (or, for a NAME ending in /, every file under it), verified by "
        "SHA-256, with its mode and modification time",
        "warren download photos/ -o restored/   # or: download b.jpg --version 2",
    )
    down.add_argument("name", metavar="NAME")
    output = down.add_argument(
        "-o", "--output", type=Path, help="where to write it (default: ./NAME, or . for a tree)"
    )
    output.complete = shtab.FILE  # type: ignore[attr-defined]
    down.add_argument(
        "--version", type=int, default=0, metavar="N", help="a version (default: the latest)"
    )
    down.add_argument("--force", action="store_true", help="overwrite existing files")
    down.add_argument(
        "--json", action="store_true", help="print a JSON object per file restored, and no bars"
    )

    ls = command(
        "list",
        "list your stored files (the latest version of each) and the workers holding them",
        "warren list photos/ --json",
    )
    ls.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="names starting so")
    ls.add_argument("--json", action="store_true", help="print a JSON array")

    vs = command(
        "versions",
        "list every kept version of a file, oldest first",
        "warren versions notes.txt --json",
    )
    vs.add_argument("name", metavar="NAME")
    vs.add_argument("--json", action="store_true", help="print a JSON array")

    rm = command(
        "delete",
        "delete a file (every version, or the one named); the space comes back once no "
        "version uses its content (after WARREN_GC_DELAY seconds)",
        "warren delete notes.txt --version 1",
    )
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--version", type=int, default=0, metavar="N", help="only this version")

    pr = command(
        "prune",
        "keep only the newest N versions of each file (under PREFIX) and delete the rest",
        "warren prune --keep-last 3 logs/ --dry-run",
    )
    pr.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="names starting so")
    pr.add_argument("--keep-last", type=int, required=True, metavar="N", help="versions to keep")
    pr.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    pr.add_argument("--json", action="store_true", help="print a JSON array of the versions")

    vf = command(
        "verify",
        "have every worker holding your files (or the ones named) re-read and re-hash its "
        "copy now; a damaged copy is quarantined and a good one made elsewhere",
        "warren verify notes.txt --json   # exit 5 when a damaged copy was found",
    )
    vf.add_argument("names", nargs="*", metavar="NAME", help="files to check (default: all)")
    vf.add_argument("--json", action="store_true", help="print a JSON array, a copy each")

    st = command(
        "status",
        "show the workers, how many files need repair, and the uploads and repairs in flight",
        "warren status --json",
    )
    st.add_argument("--json", action="store_true", help="print a JSON object")
    st.add_argument(
        "--watch",
        action="store_true",
        help="refresh until Ctrl-C: a live dashboard (with --json: a line per refresh)",
    )
    st.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")

    cf = command(
        "config",
        "show the settings in effect, where each came from (default, config file, env or "
        "flag), and where the config file is; passwords are masked",
        "warren config --json",
    )
    cf.add_argument("--json", action="store_true", help="print a JSON object")

    cp = command(
        "completion",
        "print a shell completion script for bash or zsh",
        "warren completion bash > ~/.local/share/bash-completion/completions/warren",
    )
    cp.add_argument("shell", choices=("bash", "zsh"), metavar="SHELL", help="bash or zsh")
    return parser


def completion_script(shell: str) -> str:
    """bash or zsh completion, generated from the same argparse definitions (shtab)."""
    return shtab.complete(build_parser("warren"), shell=shell)


# -- reaching the broker ---------------------------------------------------------------------

MAKE_UP = "is warren running? try `make up`"


def refused_everywhere(urls: list[str], timeout: float = 1.0) -> bool:
    """True when every broker address actively refuses a TCP connection (nothing listens
    there), as opposed to one that is slow, unreachable or answers."""
    for url in urls:
        parts = urlsplit(url)
        try:
            port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        except ValueError:
            return False
        try:
            with socket.create_connection((parts.hostname or "localhost", port), timeout):
                return False
        except ConnectionRefusedError:
            continue
        except OSError:
            return False
    return True


class WaitingNote(logging.Filter):
    """Catches the broker's "waiting for RabbitMQ" log line (its first failed attempt) and
    says it in the spinner instead, with a hint when nothing listens at the address. Off a
    terminal it is dropped: a script gets the one sentence of the final error, hint and all.
    """

    def __init__(self, settings: Settings, say: Callable[[str], None] | None) -> None:
        super().__init__()
        self.settings = settings
        self.say = say

    def filter(self, record: logging.LogRecord) -> bool:
        if "waiting for RabbitMQ" not in record.getMessage():
            return True
        if self.say is not None:
            self.say(waiting_text(self.settings))
        return logging.getLogger("warren.broker").isEnabledFor(logging.DEBUG)  # -v keeps it


def waiting_text(settings: Settings) -> str:
    urls = ", ".join(redact(u) for u in settings.amqp_urls)
    hint = f" (connection refused: {MAKE_UP})" if refused_everywhere(settings.amqp_urls) else ""
    return f"waiting for RabbitMQ at {urls}{hint}, for up to {settings.connect_timeout:g} s ..."


def open_session(settings: Settings, err: Console, verbose: bool = False) -> Session:
    """A session, connected. On a terminal a spinner says at once what it waits for, and
    that nothing listens there (try `make up`) once an attempt is refused; giving up is one
    sentence with the same hint, on a terminal or not."""
    connect: Connect = traced(Connection) if verbose else Connection
    session = Session(settings, connect)
    urls = ", ".join(redact(u) for u in settings.amqp_urls)
    status = err.status(f"connecting to RabbitMQ at {urls} ...") if err.is_terminal else None
    note = WaitingNote(settings, None if status is None else status.update)
    broker_log = logging.getLogger("warren.broker")
    broker_log.addFilter(note)
    try:
        with status or contextlib.nullcontext():
            session.open()
    except BrokerUnavailable as exc:
        session.close()
        if refused_everywhere(settings.amqp_urls):
            raise BrokerUnavailable(f"{str(exc).rstrip('.')}: {MAKE_UP}.") from None
        raise
    except BaseException:
        session.close()
        raise
    finally:
        broker_log.removeFilter(note)
    return session


def traced(connect: Connect) -> Connect:
    """``-v``: the same transport, logging each message sent and received on stderr."""

    def make(settings: Settings, name: str) -> Transport:
        return Traced(connect(settings, name))

    return make


class Traced:
    """A Transport that logs the protocol: every publish (queue, type, correlation id,
    size) and every delivery, at INFO on the ``warren.client.protocol`` logger."""

    def __init__(self, inner: Transport) -> None:
        self._inner = inner
        self._log = logging.getLogger("warren.client.protocol")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @property
    def is_open(self) -> bool:
        return self._inner.is_open

    def open(self, give_up_after: float | None = None, stop: Any = None) -> None:
        urls = ", ".join(redact(u) for u in self._inner.settings.amqp_urls)
        self._log.info("connecting to %s", urls)
        started = time.monotonic()
        self._inner.open(give_up_after=give_up_after, stop=stop)
        self._log.info(
            "connected to %s as user %s in %.2f s (connection %r)",
            self._inner.url,
            getattr(self._inner, "user", "?"),
            time.monotonic() - started,
            self._inner.name,
        )

    def close(self) -> None:
        if self._inner.is_open:
            self._log.info("closing the connection")
        self._inner.close()

    def publish(self, queue: str, body: bytes, *, type: str, **kw: Any) -> None:
        self._log.info("-> %s %s%s %d B", queue, type, _cid(kw.get("correlation_id")), len(body))
        self._inner.publish(queue, body, type=type, **kw)

    def consume(
        self, queue: str, handler: Callable[[Delivery], None], prefetch: int | None = None
    ) -> str:
        def logged(d: Delivery) -> None:
            who = f" from {d.user_id}" if d.user_id else ""
            self._log.info(
                "<- %s %s%s %d B%s", d.queue, d.type, _cid(d.correlation_id), len(d.body), who
            )
            handler(d)

        self._log.info("consuming %s", queue)
        return self._inner.consume(queue, logged, prefetch)


def _cid(cid: str | None) -> str:
    return f" cid={cid[:8]}" if cid else ""


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line gives (the flags' names are the settings')."""
    return {"client_name": args.client_name}


class App:
    """One command run over one session: the parsed arguments say which, and how to print."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json = bool(getattr(args, "json", False))
        # --json: stdout is the JSON and nothing else, whatever -q says
        self.out = Console(highlight=False, quiet=bool(args.quiet) or self.json)
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)

    def bars(self) -> Progress | None:
        if not self.out.is_terminal or self.args.quiet or self.json:
            return None
        return transfer_bars(self.out)

    def emit(self, obj: Any) -> None:
        """One JSON value on stdout, on one line, at once (a script may read it live)."""
        print(json.dumps(obj, ensure_ascii=False), flush=True)

    def run(self) -> int:
        cmd = self.args.command
        if cmd == "completion":
            sys.stdout.write(completion_script(self.args.shell))
            return errors.EXIT_OK
        if cmd == "config":
            return self.config()
        self.check()
        settings = Settings.load(overrides(self.args))
        commands = {
            "upload": self.upload,
            "download": self.download,
            "list": self.list,
            "versions": self.versions,
            "delete": self.delete,
            "prune": self.prune,
            "verify": self.verify,
            "status": self.status,
        }
        if cmd not in commands:
            raise UsageError(f"unknown command {cmd!r}")
        session = open_session(settings, self.err, verbose=bool(self.args.verbose))
        try:  # opened already: a `with` would open it a second time
            return commands[cmd](session)
        finally:
            session.close()

    def check(self) -> None:
        """Numbers that cannot be right are a usage error (exit 2), said before connecting:
        not a refusal by the cluster."""
        least = {"replicas": 1, "keep_last": 1, "version": 0}
        for name, low in least.items():
            value = getattr(self.args, name, None)
            if value is not None and value < low:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be at least {low}, not {value}.")

    def upload(self, session: Session) -> int:
        paths: list[Path] = self.args.paths
        if self.args.name and (len(paths) > 1 or paths[0].is_dir()):
            raise UsageError("--name works with a single file only.")
        items, skipped = expand(paths, self.args.name)
        if skipped:
            self.err.print(
                f"note: left out {skipped} symbolic links or special files (links are not "
                "followed).",
                markup=False,
            )
        if not items:
            raise UsageError("there is no regular file to upload in the folders given.")
        if len(items) == 1 and not paths[0].is_dir():
            return self.upload_one(session, *items[0])
        return self.upload_batch(session, items)

    def upload_one(self, session: Session, path: Path, name: str) -> int:
        """One file: its bar, then a line per replica as it confirms, then the summary."""
        bars = self.bars()
        with bars or contextlib.nullcontext():
            hooks = RichProgress(self.out, name, bars, header=True)
            result = session.upload(path, name, self.args.replicas, hooks)
        self.summarize(result)
        return errors.EXIT_OK

    def upload_batch(self, session: Session, items: list[tuple[Path, str]]) -> int:
        """Many files, pipelined: one bar for all of them; each file's replica lines and
        summary are printed together when it finishes, so lines of files never interleave."""
        bars = self.bars()
        total = sum(p.stat().st_size for p, _ in items if p.is_file())
        task = bars.add_task(f"{len(items)} files", total=total) if bars else None
        hooks: dict[str, BatchProgress] = {}
        worst: list[WarrenError] = []

        def progress_for(name: str) -> ProgressHooks:
            hooks[name] = BatchProgress(bars, task)
            return hooks[name]

        def done(name: str, outcome: UploadResult | WarrenError) -> None:
            if isinstance(outcome, WarrenError):
                self.err.print(f"error: {outcome}", markup=False)
                worst.append(outcome)
                return
            if self.json:
                self.summarize(outcome)
                return
            self.out.print(f"[bold]{escape(name)}[/]", highlight=False, soft_wrap=True)
            for worker, hop in sorted(outcome.confirmed.items(), key=lambda kv: kv[1]):
                self.out.print(replica_line(worker, hop), highlight=False, soft_wrap=True)
            self.summarize(outcome)

        with bars or contextlib.nullcontext():
            session.upload_many(items, self.args.replicas, progress_for, done)
        return worst[0].exit_code if worst else errors.EXIT_OK

    def summarize(self, r: UploadResult) -> None:
        if self.json:
            self.emit(upload_json(r))
        self.out.print(upload_summary(r), highlight=False, soft_wrap=True)
        if not r.recorded:
            self.err.print(
                f"note: every replica of {r.name} is stored, but the manager has not recorded "
                "it yet; `list` shows it once the manager catches up.",
                markup=False,
            )

    def download(self, session: Session) -> int:
        name: str = self.args.name
        if name.endswith("/"):
            return self.download_tree(session, name)
        dest: Path = self.args.output or Path(Path(name).name or "download")
        bars = self.bars()
        hooks = RichProgress(self.out, name, bars)
        with bars or contextlib.nullcontext():
            result = session.download(
                name, dest, hooks, overwrite=self.args.force, version=self.args.version
            )
        self.restored(result)
        return errors.EXIT_OK

    def restored(self, result: DownloadResult) -> None:
        if self.json:
            self.emit(download_json(result))
        self.out.print(download_summary(result), highlight=False, soft_wrap=True)

    def download_tree(self, session: Session, prefix: str) -> int:
        """``download PREFIX/ -o DIR``: every file under the prefix (its latest version),
        into DIR with its subfolders. A file that fails is said and the rest go on."""
        if self.args.version:
            raise UsageError("--version names a version of one file, not of a folder.")
        folder: Path = self.args.output or Path(".")
        files = session.files(prefix)
        if not files:
            raise NotFound(f"no stored file is under {prefix!r}.")
        worst: list[WarrenError] = []
        for f in files:
            try:
                dest = tree_destination(prefix, f.name, folder)
                with writing(dest.parent):
                    dest.parent.mkdir(parents=True, exist_ok=True)
                result = session.download(f.name, dest, overwrite=self.args.force)
            except WarrenError as exc:
                self.err.print(f"error: {exc}", markup=False)
                worst.append(exc)
                continue
            self.restored(result)
        self.out.print(f"{len(files) - len(worst)} of {len(files)} files restored to {folder}")
        return worst[0].exit_code if worst else errors.EXIT_OK

    def versions(self, session: Session) -> int:
        found = session.versions(self.args.name)
        if self.args.json:
            print(json.dumps([file_json(f) for f in found], ensure_ascii=False, indent=2))
            return errors.EXIT_OK
        self.out.print(versions_table(found))
        return errors.EXIT_OK

    def delete(self, session: Session) -> int:
        gone = session.delete(self.args.name, self.args.version)
        which = "version " + ", ".join(map(str, gone)) if self.args.version else "every version"
        self.out.print(
            f"deleted {escape(self.args.name)} ({which}); its space comes back once no "
            "version uses the content",
            highlight=False,
            soft_wrap=True,
        )
        return errors.EXIT_OK

    def verify(self, session: Session) -> int:
        """One line per copy; exit 5 when any copy is damaged (repair has started), 4 when
        a file has no live copy to check."""
        checks, missing = session.verify(tuple(self.args.names))
        if self.args.json:
            rows = [dataclasses.asdict(c) for c in checks]
            print(json.dumps(rows, ensure_ascii=False, indent=2))
        else:
            for c in checks:
                state = "[green]ok[/]" if c.ok else f"[red]DAMAGED[/] ({escape(c.reason)})"
                self.out.print(
                    f"{escape(c.name)} version {c.version} on {c.worker}: {state}",
                    highlight=False,
                    soft_wrap=True,
                )
            bad = sum(not c.ok for c in checks)
            self.out.print(f"{len(checks)} copies checked, {bad} damaged")
        for name in missing:
            self.err.print(f"error: no live worker holds a copy of {name!r}.", markup=False)
        if any(not c.ok for c in checks):
            self.err.print(
                "error: damaged copies were found; they are quarantined and good copies are "
                "being made from the others.",
                markup=False,
            )
            return errors.EXIT_INTEGRITY
        return errors.EXIT_UNAVAILABLE if missing else errors.EXIT_OK

    def prune(self, session: Session) -> int:
        removed = session.prune(self.args.keep_last, self.args.prefix, self.args.dry_run)
        if self.args.json:
            print(json.dumps([file_json(f) for f in removed], ensure_ascii=False, indent=2))
            return errors.EXIT_OK
        verb = "would delete" if self.args.dry_run else "deleted"
        for f in removed:
            self.out.print(
                f"{verb} {escape(f.name)} version {f.version} ({human_size(f.size)})",
                highlight=False,
                soft_wrap=True,
            )
        self.out.print(f"{verb} {len(removed)} versions")
        return errors.EXIT_OK

    def list(self, session: Session) -> int:
        files = session.files(self.args.prefix)
        if self.args.json:
            print(json.dumps([file_json(f) for f in files], ensure_ascii=False, indent=2))
            return errors.EXIT_OK
        self.out.print(files_table(files))
        return errors.EXIT_OK

    def config(self) -> int:
        """``config``: each setting in effect and where it came from; passwords masked."""
        settings, sources = Settings.load_with_sources(overrides(self.args))
        named = os.environ.get(CONFIG_ENV, "")
        path = Path(named).expanduser() if named else default_config_path()
        values = {
            f.name: shown(f.name, getattr(settings, f.name)) for f in dataclasses.fields(settings)
        }
        if self.json:
            print(
                json.dumps(
                    {
                        "config_file": str(path),
                        "config_file_exists": path.is_file(),
                        "settings": {
                            k: {"value": v, "source": sources[k]} for k, v in values.items()
                        },
                    },
                    indent=2,
                )
            )
            return errors.EXIT_OK
        state = "read" if path.is_file() else "not there; create it to keep settings in it"
        self.out.print(f"config file: {path} ({state})", markup=False, soft_wrap=True)
        table = Table(title="settings")
        for col in ("setting", "env var", "value", "from"):
            table.add_column(col, overflow="fold")
        for k, v in values.items():
            table.add_row(k, f"WARREN_{k.upper()}", escape(v), sources[k])
        self.out.print(table)
        return errors.EXIT_OK

    def status(self, session: Session) -> int:
        if self.args.watch:
            return self.watch(session)
        st = session.status()
        if self.args.json:
            print(json.dumps(status_json(st), indent=2))
            return errors.EXIT_OK
        self.out.print(workers_table(st))
        self.out.print(status_summary(st))
        return errors.EXIT_OK

    def watch(self, session: Session) -> int:
        """``status --watch``: the dashboard redrawn every interval until Ctrl-C."""
        interval = max(0.2, self.args.interval)
        if self.args.json:
            while True:
                print(json.dumps(status_json(session.status())), flush=True)
                session.idle(interval)
        if not self.out.is_terminal:
            raise UsageError("status --watch needs a terminal; add --json for a line per refresh.")
        with Live(dashboard(session.status()), console=self.out, auto_refresh=False) as live:
            while True:
                session.idle(interval)
                live.update(dashboard(session.status()), refresh=True)
