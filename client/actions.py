"""What the client's commands do, apart from how each front end asks and answers: the
command line (``client/cli.py``) and the menu (``client/menu.py``) both call these, over a
``Session``, with the bars and consoles they chose (``client/render.py`` draws them).

Each action is the steps of one user-visible operation (which files, the progress shown
while it runs, the sentence that says what happened); the front ends keep only their own
questions, flags and output formats.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from client.localfiles import expand
from client.outcomes import DownloadResult, UploadResult
from client.outcomes import Progress as ProgressHooks
from client.render import BatchProgress, RichProgress, status_summary, workers_table
from client.session import Session
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
