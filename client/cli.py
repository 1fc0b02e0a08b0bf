"""The commands (upload, download, list, versions, delete, prune, status): their arguments
and what each one does.

Results go to stdout, progress and errors to stderr. Progress bars and colour appear only
on a terminal (rich honours NO_COLOR); ``--json`` prints nothing but JSON. How things look
lives in ``client.render``, shared with the menu; ``client.__main__`` picks between the two.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import Progress

from client.localfiles import expand
from client.outcomes import Progress as ProgressHooks
from client.outcomes import UploadResult
from client.render import (
    BatchProgress,
    RichProgress,
    dashboard,
    download_summary,
    file_json,
    files_table,
    human_size,
    replica_line,
    status_json,
    status_summary,
    transfer_bars,
    upload_summary,
    versions_table,
    workers_table,
)
from client.restore import tree_destination, writing
from client.session import Session
from warren import errors
from warren.config import Settings
from warren.errors import NotFound, UsageError, WarrenError

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


def build_parser() -> argparse.ArgumentParser:
    """Every command takes the common flags too, so they work before or after its name."""
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
        "store files and folders on the cluster, each file on N distinct workers; storing a "
        "name again adds a version, and content the cluster already holds is not sent again",
        "python -m client upload ~/photos notes.txt --replicas 2   # stores photos/..., notes.txt",
    )
    up.add_argument("paths", nargs="+", metavar="PATH", type=Path)
    up.add_argument("--replicas", type=int, default=2, help="copies to keep (default 2)")
    up.add_argument("--name", help="name to store a single file under (default: its file name)")

    down = command(
        "download",
        "restore a stored file (or, for a NAME ending in /, every file under it), verified by "
        "SHA-256, with its mode and modification time",
        "python -m client download photos/ -o restored/   # or: download b.jpg --version 2",
    )
    down.add_argument("name", metavar="NAME")
    down.add_argument(
        "-o", "--output", type=Path, help="where to write it (default: ./NAME, or . for a tree)"
    )
    down.add_argument("--version", type=int, default=0, help="a version (default: the latest)")
    down.add_argument("--force", action="store_true", help="overwrite existing files")

    ls = command(
        "list",
        "list your stored files (the latest version of each) and the workers holding them",
        "python -m client list photos/ --json",
    )
    ls.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="names starting so")
    ls.add_argument("--json", action="store_true", help="print a JSON array")

    vs = command(
        "versions",
        "list every kept version of a file, oldest first",
        "python -m client versions notes.txt --json",
    )
    vs.add_argument("name", metavar="NAME")
    vs.add_argument("--json", action="store_true", help="print a JSON array")

    rm = command(
        "delete",
        "delete a file (every version, or the one named); the space comes back once no "
        "version uses its content (after WARREN_GC_DELAY seconds)",
        "python -m client delete notes.txt --version 1",
    )
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--version", type=int, default=0, help="only this version")

    pr = command(
        "prune",
        "keep only the newest N versions of each file (under PREFIX) and delete the rest",
        "python -m client prune --keep-last 3 logs/ --dry-run",
    )
    pr.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="names starting so")
    pr.add_argument("--keep-last", type=int, required=True, metavar="N", help="versions to keep")
    pr.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    pr.add_argument("--json", action="store_true", help="print a JSON array of the versions")

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


class App:
    """One command run over one session: the parsed arguments say which, and how to print."""

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
            if cmd == "versions":
                return self.versions(session)
            if cmd == "delete":
                return self.delete(session)
            if cmd == "prune":
                return self.prune(session)
            if cmd == "status":
                return self.status(session)
        raise UsageError(f"unknown command {cmd!r}")

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
            self.out.print(f"[bold]{escape(name)}[/]", highlight=False, soft_wrap=True)
            for worker, hop in sorted(outcome.confirmed.items(), key=lambda kv: kv[1]):
                self.out.print(replica_line(worker, hop), highlight=False, soft_wrap=True)
            self.summarize(outcome)

        with bars or contextlib.nullcontext():
            session.upload_many(items, self.args.replicas, progress_for, done)
        return worst[0].exit_code if worst else errors.EXIT_OK

    def summarize(self, r: UploadResult) -> None:
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
        self.out.print(download_summary(result), highlight=False, soft_wrap=True)
        return errors.EXIT_OK

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
            self.out.print(download_summary(result), highlight=False, soft_wrap=True)
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

    def prune(self, session: Session) -> int:
        if self.args.keep_last < 1:
            raise UsageError("--keep-last must be at least 1.")
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
