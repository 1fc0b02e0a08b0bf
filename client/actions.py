"""What the client's commands do, apart from how each front end asks and answers: the
command line (``client/cli.py``) and the menu (``client/menu.py``) both call these, over a
``Session``, with the bars and consoles they chose (``client/render.py`` draws them).

Each action is the steps of one user-visible operation (which files, the progress shown
while it runs, the sentence that says what happened); the front ends keep only their own
questions, flags and output formats.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, TaskID
from rich.table import Table

from client import backup as bk
from client.localfiles import expand
from client.outcomes import DownloadResult, UploadResult
from client.outcomes import Progress as ProgressHooks
from client.render import BatchProgress, RichProgress, human_size, status_summary, workers_table
from client.session import Session
from client.snaprestore import TreeRestorer
from client.snapshot import select
from warren.errors import WarrenError
from warren.messages import StatusReply

Done = Callable[[str, UploadResult | WarrenError], None]


def files_to_upload(
    paths: list[Path], note: Callable[[str], None], name: str | None = None
) -> list[tuple[Path, str]]:
    """The regular files under ``paths``, each with the name it is stored under; links and
    special files left out are said in one ``note``."""
    items, skipped = expand(paths, name)
    if skipped:
        note(f"left out {skipped} symbolic links or special files (links are not followed)")
    return items


def upload_many(
    session: Session,
    items: list[tuple[Path, str]],
    replicas: int,
    bars: Progress | None,
    done: Done,
) -> None:
    """Many files, pipelined, one bar for all of them; ``done(name, result or error)`` as
    each finishes (a failed file is said there, and the others go on)."""
    total = sum(p.stat().st_size for p, _ in items if p.is_file())
    task = bars.add_task(f"{len(items)} files", total=total) if bars else None

    def progress_for(_name: str) -> ProgressHooks:
        return BatchProgress(bars, task)

    with bars or contextlib.nullcontext():
        session.upload_many(items, replicas, progress_for, done)


def upload_one(
    session: Session,
    path: Path,
    name: str,
    replicas: int,
    chatter: Console,
    bars: Progress | None,
    header: bool = False,
) -> UploadResult:
    """One file: its bar, and a line on ``chatter`` as each replica confirms."""
    with bars or contextlib.nullcontext():
        hooks = RichProgress(chatter, name, bars, header=header)
        return session.upload(path, name, replicas, hooks)


def restore_one(
    session: Session,
    name: str,
    dest: Path,
    chatter: Console,
    bars: Progress | None,
    overwrite: bool,
    version: int,
    keep_setid: bool = False,
) -> DownloadResult:
    """One file restored, verified, with its bar and a line on ``chatter`` if it retries."""
    with bars or contextlib.nullcontext():
        hooks = RichProgress(chatter, name, bars)
        return session.download(
            name, dest, hooks, overwrite=overwrite, version=version, keep_setid=keep_setid
        )


def delete(session: Session, name: str, version: int) -> str:
    """Delete one version of ``name``, or every version (0); the sentence that says so."""
    gone = session.delete(name, version)
    which = "version " + ", ".join(map(str, gone)) if version else "every version"
    return (
        f"deleted {escape(name)} ({which}); its space comes back once no version uses the content"
    )


def show_status(out: Console, st: StatusReply) -> None:
    """The workers' table and the line under it."""
    out.print(workers_table(st))
    out.print(status_summary(st))


# -- snapshots -----------------------------------------------------------------------------


def take_snapshot(
    session: Session,
    paths: list[Path],
    replicas: int,
    progress: bk.BackupProgress,
    tags: Sequence[str] = (),
    host: str | None = None,
    excludes: Sequence[str] = (),
) -> bk.Summary:
    """One snapshot of ``paths``, recorded under this machine's name unless ``host`` is
    given: the menu and ``backup`` must name the host alike, or neither would find the
    other's snapshot as the parent and every file would be read again."""
    host = host or socket.gethostname()
    return bk.backup(session, paths, replicas, list(tags), host, list(excludes), progress)


class BackupBars(bk.BackupProgress):
    """A backup's progress on a terminal: one bar for the bytes read (when ``bars``), and
    each warning or failed file said on ``err`` as it happens, so a long backup never
    keeps a problem until its end."""

    def __init__(self, err: Console, bars: Progress | None) -> None:
        self.err = err
        self.bars = bars
        self.task: TaskID | None = None

    def __enter__(self) -> BackupBars:
        if self.bars is not None:
            self.bars.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.bars is not None:
            self.bars.stop()

    def warn(self, text: str) -> None:
        self.err.print(f"warning: {text}", style="yellow", markup=False)

    def failed(self, path: str, error: WarrenError) -> None:
        self.err.print(f"error: {path}: {error}", style="red", markup=False)

    def status(self, files_done: int, files_total: int, bytes_done: int, total: int) -> None:
        if self.bars is None:
            return
        label = f"{files_done} of {files_total} files"
        if self.task is None:
            self.task = self.bars.add_task(label, total=total)
        self.bars.update(self.task, description=label, completed=bytes_done)


def snapshot_summary(s: bk.Summary) -> str:
    """The short form of a backup's outcome: which snapshot, what was read, what was sent."""
    return (
        f"snapshot {s.snapshot_id[:8]} saved: {s.files_new} new, {s.files_changed} changed, "
        f"{s.files_unmodified} unmodified files; {human_size(s.bytes_sent)} sent"
    )


def snapshot_time(t: float) -> str:
    """A snapshot's time as restic prints it, in local time."""
    return datetime.datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def snapshot_paths(s: bk.Listed) -> list[str]:
    """Its paths; none means its meta is sealed with another owner's key, which is said."""
    return list(s.paths) or ["(sealed with another key)"]


def snapshots_table(snaps: Sequence[bk.Listed]) -> Table:
    """The snapshots as ``snapshots`` shows them, oldest first as given."""
    table = Table()
    for col in ("ID", "Time", "Host", "Tags", "Paths"):
        table.add_column(col, overflow="fold")
    for s in snaps:
        table.add_row(
            s.id[:8],
            snapshot_time(s.entry.time),
            escape(s.entry.host),
            escape(",".join(s.entry.tags)),
            escape("\n".join(snapshot_paths(s))),
        )
    return table


@dataclass
class Restored:
    """What a snapshot's restore wrote, and the entries it could not (each said apart)."""

    snapshot: bk.Listed
    target: Path
    files: int
    errors: list[tuple[str, WarrenError]] = field(default_factory=list)

    def sentence(self) -> str:
        return f"restored {self.files} files of snapshot {self.snapshot.id[:8]} to {self.target}"


def restore_snapshot(
    session: Session,
    snap: bk.Listed,
    target: Path,
    sub: str = "",
    includes: Sequence[str] = (),
    excludes: Sequence[str] = (),
) -> Restored:
    """A snapshot (or the part of it under ``sub``, matching the patterns) written under
    ``target``; nothing there is overwritten, and an entry that fails lets the rest go on."""
    manifest = bk.load_manifest(session, session.owner_keys(), snap)
    picked = select(manifest, sub, list(includes), list(excludes))
    restorer = TreeRestorer(session, target)
    restorer.run(picked)
    return Restored(snap, target, restorer.files, restorer.errors)
