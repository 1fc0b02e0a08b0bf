"""The interactive menu: ``python -m client`` with no arguments, in a terminal.

It is for someone meeting warren for the first time, so everything is one key away: numbers
pick an entry (several digits when the list is long), the arrow keys (or j/k) move and Enter
chooses, ``q`` takes the last entry (quit, or back), Esc goes back from a submenu; any other
key says what the keys are. Ctrl-C leaves at once (exit 130), Ctrl-D or quit leaves cleanly
(exit 0). A yes/no question takes a line (Enter alone is no), so a habitual Enter never
picks a menu entry by accident. The header above the main menu (workers alive, files
stored) is asked for again after every action, so it never goes stale.

It draws exactly what the commands draw (``client.render``'s bars, replica lines, tables),
over one ``Session`` kept open from start to quit. Keys are read in cbreak mode, entered and
left around each question so the terminal is always restored, even on Ctrl-C. Typed paths
go through ``readline`` when it exists, for line editing, history and Tab completion.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape

from client import actions
from client import backup as bk
from client.keys import (
    CSI,
    Keyboard,
    enable_path_completion,
    number_typed,
    wrong_key,
)
from client.menu_view import Entry, menu_view
from client.outcomes import UploadResult
from client.render import (
    download_summary,
    files_table,
    human_size,
    relative_time,
    transfer_bars,
    upload_summary,
    versions_table,
)
from client.session import Session
from warren import errors
from warren.config import Settings
from warren.errors import WarrenError
from warren.messages import FileEntry, StatusReply

log = logging.getLogger("warren.client")

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMOS = (("notes.txt", "text"), ("picture.png", "image"), ("chime.wav", "sound"))
REPLICAS = 2  # the same default as `upload`


class Menu:
    """The menu's loop and its actions, over one open session."""

    def __init__(
        self,
        session: Session,
        out: Console,
        err: Console,
        quiet: bool = False,
        readline: bool = False,
    ) -> None:
        self.session = session
        self.out = out
        self.err = err
        # --quiet: no bars, no replica or retry lines; menus, tables, results and errors stay.
        self.quiet = quiet
        self.chatter = Console(quiet=True) if quiet else out
        self.readline = readline
        self.keys = Keyboard(sys.stdin.fileno(), idle=self.keep_alive)
        self.last_status = StatusReply(workers=(), under_replicated=0, files=0)  # set by run

    # -- the loop --------------------------------------------------------------------------

    def run(self, status: StatusReply) -> int:
        self.last_status = status
        self.banner()
        actions: list[tuple[Entry, Callable[[], None] | None]] = [
            (Entry("upload a demo file", "a text, an image or a sound"), self.upload_demo),
            (Entry("upload a file or folder", "any path on this computer"), self.upload_path),
            (Entry("download a file", "restore a stored file, verified"), self.download),
            (Entry("list stored files", "and the workers holding them"), self.list),
            (Entry("versions of a file", "list them, restore an older one"), self.versions),
            (Entry("delete a file", "one version or all of them"), self.delete),
            (Entry("back up a folder", "a snapshot of it, unchanged files not sent"), self.backup),
            (Entry("snapshots", "the list, oldest first"), self.snapshots),
            (Entry("restore a snapshot", "the whole of it, into a folder"), self.restore_snapshot),
            (Entry("cluster status", "workers, free space, repairs"), self.status),
            (Entry("quit"), None),
        ]
        cursor = 0
        try:
            while True:
                entries = [entry for entry, _ in actions]
                cursor = self.choose(
                    "What would you like to do?",
                    entries,
                    cursor,
                    submenu=False,
                    header=self.header(),
                )
                action = actions[cursor][1]
                if action is None:
                    return errors.EXIT_OK
                try:
                    self.ensure_connected()
                    action()
                except WarrenError as exc:
                    self.err.print(f"error: {exc}", style="red", markup=False)
                except OSError as exc:  # a local file the session did not vet (a folder, ...)
                    where = f": {exc.filename}" if exc.filename else ""
                    self.err.print(
                        f"error: {exc.strerror or exc}{where}", style="red", markup=False
                    )
                self.out.print()
                self.refresh_status()
        except EOFError:  # Ctrl-D
            self.out.print()
            return errors.EXIT_OK

    def banner(self) -> None:
        """Who we are and where we are connected (the cluster's state is in the header)."""
        self.out.print(
            f"[bold]warren[/] · client [bold]{escape(self.session.client_name)}[/] on "
            f"{escape(self.session.conn.url)}\n",
            soft_wrap=True,
        )

    def header(self) -> str:
        """Above the main menu: whether the cluster can take a backup, and what it holds."""
        st = self.last_status
        alive = sum(1 for w in st.workers if w.alive)
        colour = "green" if alive >= REPLICAS else "red"
        busy = ""
        if st.uploads_in_flight or st.repairs_in_flight:
            busy = f" · {st.uploads_in_flight} uploads, {st.repairs_in_flight} repairs in flight"
        return (
            f"[{colour}]{alive} of {len(st.workers)} workers alive[/] · "
            f"{st.files} files stored{busy}"
        )

    def refresh_status(self) -> None:
        """Ask again after each action, so the header says what is true now; if the
        cluster does not answer, the last header stays (the action has said why)."""
        try:
            self.ensure_connected()
            self.last_status = self.session.status()
        except WarrenError as exc:
            log.info("status after the action failed: %s", exc)

    def choose(
        self,
        title: str,
        entries: Sequence[Entry],
        cursor: int = 0,
        submenu: bool = True,
        header: str = "",
    ) -> int:
        """Let the user pick an entry; ``q`` picks the last one (back, or quit).

        Esc goes back from a submenu but does nothing in the main menu: an arrow key's
        sequence split by a slow link must not read as Esc and end the program. A key
        with no use here says which keys there are.
        """
        typed = ""
        note = ""
        rows = max(3, self.out.size.height - 6 - (1 if header else 0))
        picked: int | None = None
        with (
            self.keys.cbreak(),
            Live(
                menu_view(title, entries, cursor, typed, rows, header=header),
                console=self.out,
                auto_refresh=False,
                transient=True,
            ) as live,
        ):
            while picked is None:
                key = self.keys.read()
                note = ""
                if key in ("up", "down", "pageup", "pagedown"):
                    step = {"up": -1, "down": 1, "pageup": -rows, "pagedown": rows}[key]
                    if key in ("up", "down"):
                        cursor = (cursor + step) % len(entries)
                    else:
                        cursor = min(max(0, cursor + step), len(entries) - 1)
                    typed = ""
                elif key in ("home", "end"):
                    cursor, typed = (0 if key == "home" else len(entries) - 1), ""
                elif key == "enter":
                    picked = cursor
                elif key == "q" or (key == "escape" and submenu):
                    picked = len(entries) - 1
                elif key == "backspace":
                    typed = typed[:-1]
                    cursor = int(typed) - 1 if typed else cursor
                elif len(key) == 1 and key.isascii() and key.isdigit():
                    if not any(d[0] != "0" and int(d) <= len(entries) for d in (typed + key, key)):
                        note = f"there is no entry {key}: the entries are 1–{len(entries)}"
                    typed, cursor, picked = number_typed(typed, key, cursor, len(entries))
                elif key != "escape":
                    note = wrong_key(key, len(entries))
                if picked is None:
                    view = menu_view(title, entries, cursor, typed, rows, note, header)
                    live.update(view, refresh=True)
        self.out.print(f"[cyan]›[/] {escape(entries[picked].label)}", soft_wrap=True)
        return picked

    def ask(self, prompt: str) -> str:
        """A line of text; readline (if any) needs the prompt's colour codes marked as such."""
        with self.out.capture() as captured:
            self.out.print(prompt, end="", soft_wrap=True)
        shown = captured.get()
        if self.readline:
            shown = CSI.sub(lambda m: f"\001{m.group(0)}\002", shown)
        return input(shown)

    def confirm(self, question: str) -> bool:
        """A yes/no question answered with a line: y or yes, n or no, Enter alone is no.
        Anything else is asked again, so a stray key never decides."""
        while True:
            answer = self.ask(f"{question} [dim](y/N)[/] ").strip().lower()
            if answer in ("y", "yes"):
                return True
            if answer in ("", "n", "no"):
                return False
            self.out.print("[yellow]Please answer y or n.[/]")

    # -- the connection --------------------------------------------------------------------

    def keep_alive(self) -> None:
        """Let pika answer heartbeats and settle late replies while the menu waits."""
        conn = self.session.conn
        if conn.is_open:
            with contextlib.suppress(WarrenError):
                conn.process(0)

    def ensure_connected(self) -> None:
        """Reconnect if the broker dropped us while someone was typing a path.

        A readline prompt cannot call pika, so a long pause there may cost the connection
        its heartbeats. A new connection is cheap; it gets a fresh reply queue because the
        old, exclusive one may outlive its connection for a moment on the broker.
        """
        conn = self.session.conn
        if conn.is_open:
            try:
                conn.process(0)
                return
            except WarrenError as exc:
                log.info("%s; opening a new connection", exc)
        with self.out.status("reconnecting to RabbitMQ ..."):
            self.session.reconnect()

    # -- actions ---------------------------------------------------------------------------

    def upload_demo(self) -> None:
        entries = []
        for name, kind in DEMOS:
            path = DEMO_DIR / name
            size = human_size(path.stat().st_size) if path.is_file() else "missing"
            entries.append(Entry(name, f"{kind}, {size}"))
        picked = self.choose("Which demo file?", [*entries, Entry("back")])
        if picked < len(DEMOS):
            self.upload(DEMO_DIR / DEMOS[picked][0])

    def ask_path(self, what: str) -> Path | None:
        """A path typed (Tab completes it where readline exists), or None for back."""
        hint = ", Tab completes" if self.readline else ""
        text = self.ask(f"{what} [dim](empty goes back{hint})[/]: ").strip()
        if len(text) > 1 and text[0] == text[-1] and text[0] in "'\"":
            text = text[1:-1]  # pasted with the quotes a shell would need
        return Path(text).expanduser() if text else None

    def upload_path(self) -> None:
        path = self.ask_path("file or folder to upload")
        if path is None:
            return
        if path.is_dir() and not path.is_symlink():
            self.upload_folder(path)
        else:
            self.upload(path)

    def upload_folder(self, folder: Path) -> None:
        """Every regular file under it, stored as ``folder/...``, one bar for them all; a
        file that fails is said and the rest go on."""
        items = actions.files_to_upload([folder], lambda note: self.out.print(f"[dim]{note}[/]"))
        if not items:
            self.out.print(f"[yellow]{escape(str(folder))} holds no regular file.[/]")
            return
        self.ensure_connected()
        bars = None if self.quiet else transfer_bars(self.out)
        failed: list[str] = []

        def done(name: str, outcome: UploadResult | WarrenError) -> None:
            if isinstance(outcome, WarrenError):
                self.err.print(f"error: {outcome}", style="red", markup=False)
                failed.append(name)
            else:
                self.chatter.print(upload_summary(outcome), soft_wrap=True)

        actions.upload_many(self.session, items, REPLICAS, bars, done)
        stored = len(items) - len(failed)
        colour = "green" if not failed else "red"
        self.out.print(
            f"[{colour}]{stored} of {len(items)} files of {escape(folder.name)} stored[/]"
        )

    def upload(self, path: Path) -> None:
        self.ensure_connected()
        bars = None if self.quiet else transfer_bars(self.out)
        # The menu's › line names the file: no header line.
        result = actions.upload_one(self.session, path, path.name, REPLICAS, self.chatter, bars)
        self.out.print(upload_summary(result), soft_wrap=True)

    def pick_file(self, title: str = "Which file?") -> FileEntry | None:
        """A stored file chosen from the list, or None (nothing stored, or back)."""
        files = self.session.files()
        if not files:
            self.out.print("[yellow]Nothing is stored yet: upload a file first.[/]")
            return None
        entries = [
            Entry(
                f.name,
                f"{human_size(f.size)}, {relative_time(f.created)}, "
                + (f"{f.versions} versions, " if f.versions > 1 else "")
                + f"on {', '.join(f.replicas) or 'no live worker'}",
            )
            for f in files
        ]
        picked = self.choose(title, [*entries, Entry("back")])
        return None if picked == len(files) else files[picked]

    def download(self) -> None:
        picked = self.pick_file()
        if picked is not None:
            self.restore(picked.name)

    def versions(self) -> None:
        """A file's versions as a table, then one of them to restore (or back)."""
        picked = self.pick_file("Versions of which file?")
        if picked is None:
            return
        found = self.session.versions(picked.name)
        self.out.print(versions_table(found))
        entries = [
            Entry(
                f"version {f.version}",
                f"{human_size(f.size)}, {relative_time(f.created)}, {f.sha256[:12]}",
            )
            for f in found
        ]
        chosen = self.choose("Restore which version?", [*entries, Entry("back")], len(found) - 1)
        if chosen < len(found):
            latest = chosen == len(found) - 1
            self.restore(picked.name, 0 if latest else found[chosen].version)

    def delete(self) -> None:
        """Every version of a file, or one, after a yes."""
        picked = self.pick_file("Delete which file?")
        if picked is None:
            return
        version = 0
        if picked.versions > 1:
            found = self.session.versions(picked.name)
            entries = [Entry("every version", f"all {len(found)} of them")] + [
                Entry(f"version {f.version}", f"{human_size(f.size)}, {relative_time(f.created)}")
                for f in found
            ]
            chosen = self.choose("Delete which version?", [*entries, Entry("back")])
            if chosen == len(entries):
                return
            version = found[chosen - 1].version if chosen else 0
        which = f"version {version} of " if version else ""
        if not self.confirm(f"Delete {which}{escape(picked.name)}?"):
            self.out.print("Nothing was deleted.")
            return
        self.ensure_connected()
        self.out.print(actions.delete(self.session, picked.name, version), soft_wrap=True)

    def restore(self, name: str, version: int = 0) -> None:
        """Ask where to, then restore ``name`` (a version, or the latest) there."""
        default = Path(Path(name).name or "download")
        text = self.ask(f"save to [dim]\\[{escape(str(default))}][/]: ").strip()
        dest = Path(text).expanduser() if text else default
        if dest.is_dir():
            dest = dest / default
        overwrite = dest.exists()
        if overwrite and not self.confirm(f"{escape(str(dest))} already exists. Overwrite it?"):
            self.out.print(f"Kept {escape(str(dest))}; nothing was downloaded.")
            return
        self.ensure_connected()
        bars = None if self.quiet else transfer_bars(self.out)
        result = actions.restore_one(
            self.session, name, dest, self.chatter, bars, overwrite=overwrite, version=version
        )
        self.out.print(download_summary(result), soft_wrap=True)

    def backup(self) -> None:
        """A snapshot of one folder, as ``backup FOLDER`` takes it (same host, so the
        command's snapshots are its parents and the other way round)."""
        folder = self.ask_path("folder to back up")
        if folder is None:
            return
        if not folder.is_dir():
            raise errors.UsageError(f"{folder} is not a folder.")
        self.ensure_connected()
        progress = actions.BackupBars(self.err, None if self.quiet else transfer_bars(self.out))
        with progress:
            summary = actions.take_snapshot(self.session, [folder], REPLICAS, progress)
        self.out.print(escape(actions.snapshot_summary(summary)), soft_wrap=True)
        if summary.failed:
            self.err.print(
                f"error: the snapshot is incomplete: {len(summary.failed)} files could not "
                "be stored and are not in it.",
                style="red",
                markup=False,
            )

    def snapshots(self) -> None:
        snaps = bk.list_snapshots(self.session, self.session.owner_keys())
        self.out.print(actions.snapshots_table(snaps))
        self.out.print(f"{len(snaps)} snapshots")

    def restore_snapshot(self) -> None:
        """One snapshot, picked from the list, restored whole into a folder (which must
        not already hold what it restores: a restore never overwrites)."""
        snaps = bk.list_snapshots(self.session, self.session.owner_keys())
        if not snaps:
            self.out.print("[yellow]There are no snapshots yet: back up a folder first.[/]")
            return
        entries = [
            Entry(
                s.id[:8],
                f"{actions.snapshot_time(s.entry.time)}, {s.entry.host}, "
                + ", ".join(actions.snapshot_paths(s)),
            )
            for s in snaps
        ]
        picked = self.choose("Restore which snapshot?", [*entries, Entry("back")], len(snaps) - 1)
        if picked == len(snaps):
            return
        target = self.ask_path("restore into folder")
        if target is None:
            return
        self.ensure_connected()
        with self.out.status("restoring ..."):
            done = actions.restore_snapshot(self.session, snaps[picked], target)
        for rel, exc in done.errors:
            self.err.print(f"error: {rel}: {exc}", style="red", markup=False)
        colour = "red" if done.errors else "green"
        self.out.print(f"[{colour}]{escape(done.sentence())}[/]", soft_wrap=True)

    def list(self) -> None:
        self.out.print(files_table(self.session.files()))

    def status(self) -> None:
        actions.show_status(self.out, self.session.status())


# Opens a connected session: (settings, console for what it waits for, verbose).
OpenSession = Callable[[Settings, Console, bool], Session]


def run_menu(args: argparse.Namespace, open_session: OpenSession) -> int:
    """Open a session and run the menu until quit.

    A cluster that cannot be reached at start ends the program (``client.__main__`` prints
    the sentence and exits with its code): there is nothing to offer without one. Later
    failures only cost the action that met them.
    """
    settings = Settings.load({"client_name": args.client_name})
    out = Console(highlight=False)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    completion = enable_path_completion()
    session = open_session(settings, err, bool(args.verbose))  # says what it waits for
    try:
        with out.status("asking the manager ..."):
            status = session.status()  # proves the manager is there, and fills the header
        menu = Menu(session, out, err, quiet=bool(args.quiet), readline=completion)
        return menu.run(status)
    finally:
        session.close()
