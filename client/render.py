"""What the client shows: sizes and ages, the transfer bars, replica lines, summaries, tables.

The commands (``client.cli``) and the interactive menu (``client.menu``) draw the same things
the same way, so both take them from here and neither has to import the other.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from rich.console import Console, Group
from rich.markup import escape
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from client.outcomes import DownloadResult, UploadResult
from client.outcomes import Progress as ProgressHooks
from warren.messages import FileEntry, StatusReply
from warren.sizes import UNITS, scaled
from warren.sizes import human_size as human_size

HOPS = ("primary", "backup")
# A speed is shown once a transfer has run this long: before that it measures how fast the
# first chunks filled a socket buffer (175.7 GB/s), not how fast the transfer goes.
SPEED_AFTER = 1.0


def role(hop: int) -> str:
    """A replica's place in the chain as the user reads it: the first hop is the primary,
    every later hop a backup."""
    return HOPS[min(hop, 1)]


def size_pair(done: float, total: float) -> str:
    """``12.5/838.9 MiB``: both in the unit of the total, as a progress bar shows them."""
    _, unit = scaled(total)
    scale = 1024 ** UNITS.index(unit)
    if unit == "B":
        return f"{done:.0f}/{total:.0f} B"
    return f"{done / scale:.1f}/{total / scale:.1f} {unit}"


class SizeColumn(ProgressColumn):
    """Bytes done of the total, in IEC units (rich's DownloadColumn counts in MB)."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text(human_size(task.completed), style="progress.download")
        return Text(size_pair(task.completed, task.total), style="progress.download")


class SpeedColumn(ProgressColumn):
    """Bytes per second in IEC units, shown only once the transfer has run SPEED_AFTER s."""

    def render(self, task: Task) -> Text:
        return Text(speed_text(task.elapsed, task.speed), style="progress.data.speed")


def speed_text(elapsed: float | None, speed: float | None) -> str:
    if elapsed is None or elapsed < SPEED_AFTER or speed is None:
        return ""
    return f"{human_size(speed)}/s"


def relative_time(then: float, now: float | None = None) -> str:
    """An age ("3 min ago") rather than a timestamp: the question is how fresh it is."""
    delta = (time.time() if now is None else now) - then
    if delta < 0:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if delta >= size:
            return f"{int(delta // size)} {unit} ago"
    return "just now"


def replica_line(worker: str, hop: int) -> str:
    """The line printed as a worker confirms its copy, e.g. ``w3 primary ✓``."""
    return f"  [bold]{worker}[/] {role(hop)} [green]✓[/]"


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


def transfer_bars(console: Console) -> Progress:
    """The bar an upload or a restore draws while it runs; it vanishes when done."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        SizeColumn(),
        SpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    )


def upload_summary(r: UploadResult) -> str:
    """The last line of an upload: where every copy is, primary first."""
    return _summary(r, escape(r.name))


def _summary(r: UploadResult, name: str) -> str:
    """``upload_summary`` with the name as given: escaped for markup, or as it is."""
    holders = ", ".join(
        f"{w} ({role(hop)})" for w, hop in sorted(r.confirmed.items(), key=lambda kv: kv[1])
    )
    if r.deduplicated:
        return f"  stored {name} ({human_size(r.size)}) on {holders}: already stored, 0 B sent"
    # Sealed, compressed, and only the chunks the cluster did not hold yet: what was sent.
    return f"  stored {name} ({human_size(r.size)}) on {holders}: {human_size(r.sent)} sent"


def upload_lines(r: UploadResult) -> Text:
    """A file of a batch, whole: its name, a line per replica, primary first, and its
    summary, as ``upload`` prints one file's lines (the same text as ``replica_line`` and
    ``upload_summary``). Built as styled text, not markup: a batch prints thousands of
    them, and one print of it costs a third of four prints of markup (5,000 small files:
    printing was half of the client's CPU)."""
    text = Text(end="")
    text.append(r.name, style="bold")
    for worker, hop in sorted(r.confirmed.items(), key=lambda kv: kv[1]):
        text.append("\n  ")
        text.append(worker, style="bold")
        text.append(f" {role(hop)} ")
        text.append("✓", style="green")
    text.append("\n" + _summary(r, r.name))
    return text


def download_summary(r: DownloadResult) -> str:
    """The last line of a restore: it names the worker and says the bytes were checked."""
    version = f" version {r.version}" if r.version > 1 else ""
    return (
        f"restored {escape(r.name)}{version} ({human_size(r.size)}) from {r.worker} "
        f"to {escape(str(r.path))}, SHA-256 verified"
    )


def files_table(files: Sequence[FileEntry]) -> Table:
    """The stored files, with missing replicas in red (``list``, and the menu's list)."""
    table = Table(title=f"{len(files)} files")
    for col in ("name", "size", "stored", "versions", "replicas", "sha256"):
        table.add_column(col, justify="right" if col in ("size", "versions") else "left")
    for f in files:
        table.add_row(
            escape(f.name),
            human_size(f.size),
            relative_time(f.created),
            str(f.versions),
            _replicas(f),
            f.sha256[:12],
        )
    return table


# Above this many files ``list`` prints a line per file instead of a table: rich lays out a
# table whole before it prints a row (17.7 s for 20,000 files), lines go out at once.
TABLE_MAX = 1000


def files_lines(files: Sequence[FileEntry]) -> Iterator[str]:
    """The stored files, one plain line each (tab-separated: name, size, versions,
    replicas, sha256 prefix), for listings too long for a table, and for pipes."""
    for f in files:
        replicas = ",".join(f.replicas) or "none"
        short = "" if len(f.replicas) >= f.wanted else f" ({len(f.replicas)}/{f.wanted})"
        yield (
            f"{f.name}\t{human_size(f.size)}\t{f.versions} versions\t{replicas}{short}"
            f"\t{f.sha256[:12]}\n"
        )


def versions_table(versions: Sequence[FileEntry]) -> Table:
    """Every kept version of one file, oldest first (``versions``)."""
    table = Table(title=f"{escape(versions[0].name)}: {len(versions)} versions")
    for col in ("version", "size", "stored", "replicas", "sha256"):
        table.add_column(col, justify="right" if col in ("version", "size") else "left")
    for f in versions:
        table.add_row(
            str(f.version),
            human_size(f.size),
            relative_time(f.created),
            _replicas(f),
            f.sha256[:12],
        )
    return table


def _replicas(f: FileEntry) -> str:
    """The workers holding a file, in red when fewer than it wants."""
    replicas = ", ".join(f.replicas) or "none"
    if len(f.replicas) < f.wanted:
        replicas = f"[red]{replicas} ({len(f.replicas)}/{f.wanted})[/]"
    return replicas


def workers_table(st: StatusReply) -> Table:
    """The workers, alive or dead, with their space (``status``, and the menu's status)."""
    table = Table(title="workers")
    cols = ["name", "state", "files", "used", "free", "last heartbeat", "scrubbed", "damaged"]
    # Commands that claimed to be the manager's and were not (forged, or a worker told the
    # wrong WARREN_MANAGER_USER): shown only when some worker refused any.
    refused = any(w.refused for w in st.workers)
    for col in [*cols, "refused"] if refused else cols:
        table.add_column(col)
    for w in st.workers:
        state = "[green]alive[/]" if w.alive else "[red]dead[/]"
        row = [
            w.name,
            state,
            str(w.files),
            human_size(w.used_bytes),
            human_size(w.free_bytes),
            relative_time(w.last_seen),
            relative_time(w.scrubbed_at) if w.scrubbed_at else "not yet",
            f"[red]{w.damaged}[/]" if w.damaged else "0",
        ]
        if refused:
            row.append(f"[red]{w.refused}[/]" if w.refused else "0")
        table.add_row(*row)
    return table


def status_summary(st: StatusReply) -> str:
    """The line under the workers table: red when some file needs repair; then the uploads
    and repair copies in flight (``status`` and ``status --watch`` alike)."""
    colour = "red" if st.under_replicated else "green"
    return (
        f"{st.files} files, [{colour}]{st.under_replicated} under-replicated[/], "
        f"{st.uploads_in_flight} {_plural(st.uploads_in_flight, 'upload')} in flight, "
        f"{st.repairs_in_flight} {_plural(st.repairs_in_flight, 'repair')} under way"
    )


def _plural(n: int, word: str) -> str:
    return word if n == 1 else word + "s"


def dashboard(st: StatusReply) -> Group:
    """What ``status --watch`` shows: the workers and the status line, and when."""
    line = f"{status_summary(st)}   [dim]updated {time.strftime('%H:%M:%S')}, Ctrl-C to stop[/]"
    return Group(workers_table(st), line)


def upload_json(r: UploadResult) -> dict[str, Any]:
    """A confirmed upload as ``upload --json`` prints it, one line per file (as restic's
    ``backup --json``); the README documents these keys, keep them."""
    return {
        "name": r.name,
        "size": r.size,
        "sha256": r.sha256,
        "replicas": [w for w, _ in sorted(r.confirmed.items(), key=lambda kv: kv[1])],
        "bytes_sent": r.sent,
        "deduplicated": r.deduplicated,
        "recorded": r.recorded,
    }


def download_json(r: DownloadResult) -> dict[str, Any]:
    """A restored file as ``download --json`` prints it, one line per file."""
    return {
        "name": r.name,
        "version": r.version,
        "size": r.size,
        "sha256": r.sha256,
        "worker": r.worker,
        "path": str(r.path),
    }


def file_json(f: FileEntry) -> dict[str, Any]:
    """A file as ``list --json`` prints it: the README documents these keys, keep them."""
    return {
        "name": f.name,
        "size": f.size,
        "sha256": f.sha256,
        "replicas": list(f.replicas),
        "wanted": f.wanted,
        "created": f.created,
        "version": f.version,
        "versions": f.versions,
        "mode": f.mode,
        "mtime": f.mtime,
    }


def status_json(st: StatusReply) -> dict[str, Any]:
    """The cluster as ``status --json`` prints it: the README documents these keys, keep them."""
    return {
        "workers": [
            {
                "name": w.name,
                "alive": w.alive,
                "free_bytes": w.free_bytes,
                "used_bytes": w.used_bytes,
                "files": w.files,
                "last_seen": w.last_seen,
                "scrubbed_at": w.scrubbed_at,
                "damaged": w.damaged,
                "refused": w.refused,
            }
            for w in st.workers
        ],
        "under_replicated": st.under_replicated,
        "files": st.files,
        "uploads_in_flight": st.uploads_in_flight,
        "repairs_in_flight": st.repairs_in_flight,
    }
