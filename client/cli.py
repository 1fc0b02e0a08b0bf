"""The commands (upload, download, list, versions, delete, prune, status, config,
completion): their arguments and what each one does, and how a command reaches the broker.

Results go to stdout, progress and errors to stderr. Progress bars and colour appear only
on a terminal (rich honours NO_COLOR); ``--json`` prints nothing but JSON. How things look
lives in ``client.render``, shared with the menu; ``client.__main__`` picks between the two.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import textwrap
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress import Progress
from rich.table import Table

from client import actions, keys_cmd, snap_cmd
from client.args import completion_script, overrides
from client.connecting import open_session
from client.outcomes import DownloadResult, UploadResult
from client.render import (
    TABLE_MAX,
    dashboard,
    download_json,
    download_summary,
    file_json,
    files_lines,
    files_table,
    human_size,
    status_json,
    transfer_bars,
    upload_json,
    upload_lines,
    upload_summary,
    versions_table,
)
from client.restore import tree_destination
from client.session import Session
from warren import errors
from warren.config import CONFIG_ENV, Settings, default_config_path, shown
from warren.errors import NotFound, UsageError, WarrenError


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

    def busy_above(self, bars: Progress | None, session: Session) -> None:
        """While bars are drawn, a wait for a busy cluster is a line above them, once: a
        second live display (the spinner) on the same terminal would garble both."""
        if bars is None:
            return
        said: set[str] = set()

        def say(text: str | None) -> None:
            if text is not None and text not in said:
                said.add(text)
                bars.console.print(f"  [yellow]{escape(text)}[/]", highlight=False)

        session.waiting = say

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
            "init": self.keys,
            "key": self.keys,
        } | dict.fromkeys(snap_cmd.NAMES, self.snapshots)
        if cmd not in commands:
            raise UsageError(f"unknown command {cmd!r}")
        quiet = bool(self.args.quiet) or self.json
        session = open_session(settings, self.err, bool(self.args.verbose), quiet)
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

    def keys(self, session: Session) -> int:
        """init and key ...: client/keys_cmd.py."""
        return keys_cmd.run(self, self.args, session)

    def snapshots(self, session: Session) -> int:
        """backup, snapshots, ls, diff, restore, forget: client/snap_cmd.py."""
        return snap_cmd.run(self, self.args, session)

    def upload(self, session: Session) -> int:
        paths: list[Path] = self.args.paths
        if self.args.name and (len(paths) > 1 or paths[0].is_dir()):
            raise UsageError("--name works with a single file only.")
        items = actions.files_to_upload(
            paths, lambda note: self.err.print(f"note: {note}.", markup=False), self.args.name
        )
        if not items:
            raise UsageError("there is no regular file to upload in the folders given.")
        if len(items) == 1 and not paths[0].is_dir():
            return self.upload_one(session, *items[0])
        return self.upload_batch(session, items)

    def upload_one(self, session: Session, path: Path, name: str) -> int:
        """One file: its bar, then a line per replica as it confirms, then the summary."""
        bars = self.bars()
        self.busy_above(bars, session)
        result = actions.upload_one(
            session, path, name, self.args.replicas, self.out, bars, header=True
        )
        self.summarize(result)
        return errors.EXIT_OK

    def upload_batch(self, session: Session, items: list[tuple[Path, str]]) -> int:
        """Many files, pipelined: one bar for all of them; each file's replica lines and
        summary are printed together when it finishes, so lines of files never interleave."""
        bars = self.bars()
        self.busy_above(bars, session)
        worst: list[WarrenError] = []

        # Output that is not a terminal gets no styles: the text is written as it is.
        plain = not (self.out.is_terminal or self.out.color_system)

        def done(name: str, outcome: UploadResult | WarrenError) -> None:
            if isinstance(outcome, WarrenError):
                self.err.print(f"error: {outcome}", markup=False)
                worst.append(outcome)
                return
            if self.json:
                self.summarize(outcome)
                return
            if self.out.quiet:
                self.not_recorded(outcome)
                return
            lines = upload_lines(outcome)
            if plain and "\t" not in lines.plain:
                # What rich would write here, without its rendering (0.1 ms a file).
                self.out.file.write(lines.plain + "\n")
                self.out.file.flush()
            else:
                self.out.print(lines, highlight=False, soft_wrap=True)
            self.not_recorded(outcome)

        actions.upload_many(session, items, self.args.replicas, bars, done)
        return worst[0].exit_code if worst else errors.EXIT_OK

    def summarize(self, r: UploadResult) -> None:
        if self.json:
            self.emit(upload_json(r))
        self.out.print(upload_summary(r), highlight=False, soft_wrap=True)
        self.not_recorded(r)

    def not_recorded(self, r: UploadResult) -> None:
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
        result = actions.restore_one(
            session,
            name,
            dest,
            self.out,
            bars,
            overwrite=self.args.force,
            version=self.args.version,
            keep_setid=self.args.keep_setid,
        )
        self.restored(result)
        return errors.EXIT_OK

    def restored(self, result: DownloadResult) -> None:
        if self.json:
            self.emit(download_json(result))
        self.out.print(download_summary(result), highlight=False, soft_wrap=True)
        if result.dropped:
            bits = [
                what
                for bit, what in ((0o4000, "setuid"), (0o2000, "setgid"), (0o1000, "sticky"))
                if result.dropped & bit
            ]
            why = "--keep-setid works only as root" if self.args.keep_setid else "see --keep-setid"
            plural = "s" if len(bits) > 1 else ""
            self.err.print(
                f"note: {result.name} was stored with the {' and '.join(bits)} bit{plural}; "
                f"{result.path} is restored without ({why}).",
                markup=False,
            )

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
                result = session.download(
                    f.name,
                    dest,
                    overwrite=self.args.force,
                    under=folder,
                    keep_setid=self.args.keep_setid,
                )
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
        said = actions.delete(session, self.args.name, self.args.version)
        self.out.print(said, highlight=False, soft_wrap=True)
        return errors.EXIT_OK

    def verify(self, session: Session) -> int:
        """One line per copy; exit 5 when any copy is damaged (repair has started), 4 when
        a file has no live copy to check."""
        checks, missing = session.verify(tuple(self.args.names))
        subset = self.args.read_data_subset
        reads = (
            session.read_data(tuple(self.args.names), subset or 100.0)
            if self.args.read_data or subset
            else []
        )
        if self.args.json:
            rows = [dataclasses.asdict(c) for c in checks]
            if reads:
                print(
                    json.dumps(
                        {"copies": rows, "read": [dataclasses.asdict(r) for r in reads]},
                        ensure_ascii=False,
                        indent=2,
                    )
                )
            else:
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
            for r in reads:
                state = "[green]ok[/]" if r.ok else f"[red]FAILED[/] ({escape(r.reason)})"
                self.out.print(
                    f"{escape(r.name)} version {r.version}: {r.chunks} chunks read back and "
                    f"opened: {state}",
                    highlight=False,
                    soft_wrap=True,
                )
                for copy in r.bad:
                    self.out.print(f"  [red]bad copy[/] {escape(copy)}", highlight=False)
        for r in reads:
            if not r.ok and not r.damaged:
                self.err.print(f"error: {r.reason}", markup=False)
        unreadable = [r for r in reads if not r.ok and r.damaged]
        if any(r.bad for r in reads) or unreadable:
            self.err.print(
                "error: chunks that fail their check were read back"
                + (
                    "; some files have no good copy left."
                    if unreadable
                    else "; good copies "
                    "were read from other workers, and repair replaces the bad ones."
                ),
                markup=False,
            )
            return errors.EXIT_INTEGRITY
        for name in missing:
            self.err.print(f"error: no live worker holds a copy of {name!r}.", markup=False)
        if any(not c.ok for c in checks):
            self.err.print(
                "error: damaged copies were found; they are quarantined and good copies are "
                "being made from the others.",
                markup=False,
            )
            return errors.EXIT_INTEGRITY
        unreached = any(not r.ok and not r.damaged for r in reads)
        return errors.EXIT_UNAVAILABLE if missing or unreached else errors.EXIT_OK

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
        """The manager sends the listing in pages: one page is a table (or one JSON
        array); a big backup's pages are printed as they come, a line (or an element of the
        JSON array) per file, so the first names show at once."""
        pages = session.pages(self.args.prefix)
        files = next(pages)
        if (more := next(pages, None)) is not None:
            files += more  # a second page: a big listing after all
        if self.args.json:
            print("[" if files else "[]", end="")
            count = 0
            for page in itertools.chain([files], pages):
                for f in page:
                    element = json.dumps(file_json(f), ensure_ascii=False, indent=2)
                    print(
                        "," if count else "", "\n", textwrap.indent(element, "  "), sep="", end=""
                    )
                    count += 1
            print("\n]" if count else "")
            return errors.EXIT_OK
        if len(files) > TABLE_MAX:  # a big backup: lines at once, not a table laid out whole
            count = 0
            for page in itertools.chain([files], pages):
                count += len(page)
                if not self.args.quiet:
                    sys.stdout.writelines(files_lines(page))
                    sys.stdout.flush()
            if not self.args.quiet:
                print(f"{count} files")
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
        actions.show_status(self.out, st)
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
