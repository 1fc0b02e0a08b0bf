"""The console client: argument parsing and everything the user sees.

Results go to stdout, progress and errors to stderr. Progress bars and colour appear only
on a terminal (rich honours NO_COLOR); ``--json`` prints nothing but JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from client.session import DownloadResult, Session, UploadResult
from client.session import Progress as ProgressHooks
from warren import errors
from warren.config import Settings
from warren.errors import UsageError, WarrenError
from warren.messages import FileEntry, StatusReply
from warren.service import configure_logging

EXIT_CODES = f"""\
exit codes:
  {errors.EXIT_OK}    success (for upload: every replica of every file confirmed)
  {errors.EXIT_FAILURE}    other failure
  {errors.EXIT_USAGE}    usage: bad arguments, a missing or unreadable local file
  {errors.EXIT_NOT_FOUND}    not found: no stored file has that name
  {errors.EXIT_UNAVAILABLE}    unavailable: RabbitMQ, the manager or the workers did not answer
  {errors.EXIT_INTEGRITY}    integrity: bytes failed their SHA-256 check
  {errors.EXIT_REFUSED}    refused: e.g. more replicas than live workers
  {errors.EXIT_INTERRUPTED}  interrupted (Ctrl-C)
"""

HOPS = ("primary", "backup")


def role(hop: int) -> str:
    return HOPS[min(hop, 1)]


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def relative_time(then: float, now: float | None = None) -> str:
    delta = (time.time() if now is None else now) - then
    if delta < 0:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if delta >= size:
            return f"{int(delta // size)} {unit} ago"
    return "just now"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--client-name",
        help="name shown in the management UI and manager logs (env WARREN_CLIENT_NAME)",
    )
    common.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    common.add_argument("-v", "--verbose", action="store_true", help="log protocol events")

    parser = argparse.ArgumentParser(
        prog="python -m client",
        parents=[common],
        description="warren's console client: back up files to the cluster and restore them.",
        epilog=EXIT_CODES + "\nWith no command in a terminal, an interactive menu opens.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            parents=[common],
            help=help,
            description=help,
            epilog=f"example:\n  {example}\n\n{EXIT_CODES}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    up = command(
        "upload",
        "store files on the cluster, each on N distinct workers",
        "python -m client upload a.txt b.jpg --replicas 2",
    )
    up.add_argument("paths", nargs="+", metavar="PATH", type=Path)
    up.add_argument("--replicas", type=int, default=2, help="copies to keep (default 2)")
    up.add_argument("--name", help="name to store a single file under (default: its file name)")

    down = command(
        "download",
        "restore a stored file, verified by SHA-256",
        "python -m client download b.jpg -o restored.jpg",
    )
    down.add_argument("name", metavar="NAME")
    down.add_argument("-o", "--output", type=Path, help="where to write it (default: ./NAME)")
    down.add_argument("--force", action="store_true", help="overwrite an existing file")

    ls = command(
        "list", "list stored files and the workers holding them", "python -m client list --json"
    )
    ls.add_argument("--json", action="store_true", help="print a JSON array")

    st = command(
        "status",
        "show the workers and how many files need repair",
        "python -m client status --json",
    )
    st.add_argument("--json", action="store_true", help="print a JSON object")
    st.add_argument(
        "--watch",
        action="store_true",
        help="refresh until Ctrl-C: a live dashboard (with --json: a line per refresh)",
    )
    st.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    return parser


class RichProgress(ProgressHooks):
    """Progress hooks drawn with rich: a bar per transfer, a line per replica."""

    def __init__(
        self, console: Console, label: str, bars: Progress | None, header: bool = False
    ) -> None:
        self.console = console
        self.label = label
        self.bars = bars
        self.header = header
        self.task: TaskID | None = None

    def hashing(self, done: int, total: int) -> None:
        """From the hashing thread (rich's Progress takes a lock of its own)."""
        if self.bars is None:
            return
        if self.task is None:
            self.task = self.bars.add_task(f"hashing {self.label}", total=total)
            self.bars.refresh()  # show it at once, however soon the transfer follows
        self.bars.update(self.task, completed=done)

    def started(self, total: int) -> None:
        if self.header:  # once the manager has accepted: failures before it need no header
            self.header = False
            self.console.print(f"[bold]{escape(self.label)}[/]", highlight=False, soft_wrap=True)
        if self.bars is not None:
            if self.task is not None:
                self.bars.remove_task(self.task)
            self.task = self.bars.add_task(self.label, total=total)

    def transferred(self, nbytes: int) -> None:
        if self.bars is not None and self.task is not None:
            self.bars.advance(self.task, nbytes)

    def replica(self, worker: str, hop: int) -> None:
        self.console.print(replica_line(worker, hop), highlight=False, soft_wrap=True)

    def retrying(self, reason: str) -> None:
        self.console.print(f"  [yellow]{reason}[/]", highlight=False, soft_wrap=True)


class BatchProgress(ProgressHooks):
    """One file of a batch: its bytes advance the batch's shared bar."""

    def __init__(self, bars: Progress | None, task: TaskID | None) -> None:
        self.bars = bars
        self.task = task

    def transferred(self, nbytes: int) -> None:
        if self.bars is not None and self.task is not None:
            self.bars.advance(self.task, nbytes)


def replica_line(worker: str, hop: int) -> str:
    return f"  [bold]{worker}[/] {role(hop)} [green]✓[/]"


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Console(highlight=False, quiet=bool(getattr(args, "quiet", False)))
        self.err = Console(stderr=True, highlight=False, soft_wrap=True)
        self.settings = Settings.load({"client_name": args.client_name})

    def bars(self) -> Progress | None:
        if not self.out.is_terminal or self.args.quiet:
            return None
        return transfer_bars(self.out)

    def run(self) -> int:
        cmd = self.args.command
        with Session(self.settings) as session:
            if cmd == "upload":
                return self.upload(session)
            if cmd == "download":
                return self.download(session)
            if cmd == "list":
                return self.list(session)
            if cmd == "status":
                return self.status(session)
        raise UsageError(f"unknown command {cmd!r}")

    def upload(self, session: Session) -> int:
        paths: list[Path] = self.args.paths
        if self.args.name and len(paths) > 1:
            raise UsageError("--name works with a single file only.")
        items = [(p, self.args.name or p.name) for p in paths]
        if len(items) == 1:
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
            self.out.print(f"[bold]{escape(name)}[/]", highlight=False, soft_wrap=True)
            for worker, hop in sorted(outcome.confirmed.items(), key=lambda kv: kv[1]):
                self.out.print(replica_line(worker, hop), highlight=False, soft_wrap=True)
            self.summarize(outcome)

        with bars or contextlib.nullcontext():
            session.upload_many(items, self.args.replicas, progress_for, done)
        return worst[0].exit_code if worst else errors.EXIT_OK

    def summarize(self, r: UploadResult) -> None:
        self.out.print(self.upload_summary(r), highlight=False, soft_wrap=True)
        if not r.recorded:
            self.err.print(
                f"note: every replica of {r.name} is stored, but the manager has not recorded "
                "it yet; `list` shows it once the manager catches up.",
                markup=False,
            )

    @staticmethod
    def upload_summary(r: UploadResult) -> str:
        holders = ", ".join(
            f"{w} ({role(hop)})" for w, hop in sorted(r.confirmed.items(), key=lambda kv: kv[1])
        )
        return f"  stored {escape(r.name)} ({human_size(r.size)}) on {holders}"

    def download(self, session: Session) -> int:
        name: str = self.args.name
        dest: Path = self.args.output or Path(Path(name).name or "download")
        bars = self.bars()
        hooks = RichProgress(self.out, name, bars)
        with bars or contextlib.nullcontext():
            result = session.download(name, dest, hooks, overwrite=self.args.force)
        self.out.print(download_summary(result), highlight=False, soft_wrap=True)
        return errors.EXIT_OK

    def list(self, session: Session) -> int:
        files = session.files()
        if self.args.json:
            print(json.dumps([file_json(f) for f in files], ensure_ascii=False, indent=2))
            return errors.EXIT_OK
        self.out.print(files_table(files))
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


def transfer_bars(console: Console) -> Progress:
    """The bar an upload or a restore draws while it runs; it vanishes when done."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def download_summary(r: DownloadResult) -> str:
    return (
        f"restored {escape(r.name)} ({human_size(r.size)}) from {r.worker} "
        f"to {escape(str(r.path))}, SHA-256 verified"
    )


def files_table(files: Sequence[FileEntry]) -> Table:
    """The stored files, with missing replicas in red (``list``, and the menu's list)."""
    table = Table(title=f"{len(files)} files")
    for col in ("name", "size", "stored", "replicas", "sha256"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for f in files:
        replicas = ", ".join(f.replicas) or "none"
        if len(f.replicas) < f.wanted:
            replicas = f"[red]{replicas} ({len(f.replicas)}/{f.wanted})[/]"
        table.add_row(
            escape(f.name),
            human_size(f.size),
            relative_time(f.created),
            replicas,
            f.sha256[:12],
        )
    return table


def workers_table(st: StatusReply) -> Table:
    """The workers, alive or dead, with their space (``status``, and the menu's status)."""
    table = Table(title="workers")
    for col in ("name", "state", "files", "used", "free", "last heartbeat"):
        table.add_column(col)
    for w in st.workers:
        state = "[green]alive[/]" if w.alive else "[red]dead[/]"
        table.add_row(
            w.name,
            state,
            str(w.files),
            human_size(w.used_bytes),
            human_size(w.free_bytes),
            relative_time(w.last_seen),
        )
    return table


def dashboard(st: StatusReply) -> Group:
    """What ``status --watch`` shows: workers, then transfers and the repair backlog."""
    line = (
        f"{status_summary(st)}   uploads in flight: {st.uploads_in_flight}   "
        f"repairs under way: {st.repairs_in_flight}   "
        f"[dim]updated {time.strftime('%H:%M:%S')}, Ctrl-C to stop[/]"
    )
    return Group(workers_table(st), line)


def status_summary(st: StatusReply) -> str:
    """The line under the workers table: red when some file needs repair."""
    colour = "red" if st.under_replicated else "green"
    return f"{st.files} files, [{colour}]{st.under_replicated} under-replicated[/]"


def file_json(f: FileEntry) -> dict[str, Any]:
    return {
        "name": f.name,
        "size": f.size,
        "sha256": f.sha256,
        "replicas": list(f.replicas),
        "wanted": f.wanted,
        "created": f.created,
    }


def status_json(st: StatusReply) -> dict[str, Any]:
    return {
        "workers": [
            {
                "name": w.name,
                "alive": w.alive,
                "free_bytes": w.free_bytes,
                "used_bytes": w.used_bytes,
                "files": w.files,
                "last_seen": w.last_seen,
            }
            for w in st.workers
        ],
        "under_replicated": st.under_replicated,
        "files": st.files,
        "uploads_in_flight": st.uploads_in_flight,
        "repairs_in_flight": st.repairs_in_flight,
    }


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
            from client.menu import run_menu  # imports this module: import it only when needed

            return run_menu(args)
        return App(args).run()
    except WarrenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
