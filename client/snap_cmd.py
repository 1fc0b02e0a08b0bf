"""``backup``, ``snapshots``, ``ls``, ``diff``, ``restore`` and ``forget``: restic's
commands and output, so its users feel at home. Their arguments (``define``, called by
``client.args``) and what each prints; the work is in ``client.backup``,
``client.snapshot`` and ``client.snaprestore``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console

from client import actions
from client import backup as bk
from client.render import human_size
from client.session import Session
from client.snapshot import DIR, Manifest, diff, select
from warren import errors, retention
from warren.errors import UsageError, WarrenError

STATUS_EVERY = 0.5  # seconds between --json status lines
NAMES = ("backup", "snapshots", "ls", "diff", "restore", "forget")
KEEPS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


class Printer(Protocol):
    json: bool
    out: Console
    err: Console

    def emit(self, obj: Any) -> None: ...


def define(command: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    """The commands' arguments (called by ``client.args.build_parser``)."""
    bu = command(
        "backup",
        "take a snapshot of files and folders; files unchanged since the last snapshot of "
        "the same host and paths are not read again",
        "warren backup ~/photos ~/notes --tag daily --exclude '*.tmp'",
    )
    bu.add_argument("paths", nargs="+", metavar="PATH", type=Path)
    bu.add_argument("--replicas", type=int, default=2, metavar="N", help="copies to keep")
    bu.add_argument("--tag", action="append", default=[], metavar="TAG", help="tag it")
    bu.add_argument("--host", help="the host to record (default: this machine's name)")
    bu.add_argument(
        "--exclude", action="append", default=[], metavar="PATTERN", help="leave out matches"
    )
    bu.add_argument("--json", action="store_true", help="status lines and a summary, as JSON")

    sn = command("snapshots", "list your snapshots, oldest first", "warren snapshots --json")
    sn.add_argument("--json", action="store_true", help="print a JSON array")

    ls = command(
        "ls", "list what a snapshot holds (under PATH)", "warren ls latest photos/2024 --json"
    )
    ls.add_argument("snapshot", metavar="SNAPSHOT", help="an id, a prefix of one, or latest")
    ls.add_argument("path", nargs="?", default="", metavar="PATH")
    ls.add_argument("--json", action="store_true", help="print a JSON object a line")

    df = command("diff", "show what changed between two snapshots", "warren diff 1a2b c3d4")
    df.add_argument("first", metavar="SNAPSHOT")
    df.add_argument("second", metavar="SNAPSHOT")

    rs = command(
        "restore",
        "write a snapshot (or a path in it) back under DIR, with modes and mtimes; nothing "
        "there is overwritten",
        "warren restore latest:photos/2024 -o restored/ --include '*.jpg'",
    )
    rs.add_argument("snapshot", metavar="SNAPSHOT[:PATH]")
    rs.add_argument("-o", "--target", type=Path, required=True, metavar="DIR")
    rs.add_argument("--include", action="append", default=[], metavar="PATTERN")
    rs.add_argument("--exclude", action="append", default=[], metavar="PATTERN")

    fg = command(
        "forget",
        "forget snapshots, by id or by a policy (restic's --keep-* rules); chunks nothing "
        "else uses leave the workers after WARREN_GC_DELAY",
        "warren forget --keep-daily 7 --keep-weekly 5 --dry-run",
    )
    fg.add_argument("ids", nargs="*", metavar="ID")
    for keep in KEEPS:
        fg.add_argument(f"--keep-{keep}", type=int, metavar="N", dest=f"keep_{keep}_snapshots")
    fg.add_argument("--keep-within", metavar="DURATION", help="like 1y2m3d4h")
    fg.add_argument("--keep-tag", action="append", default=[], metavar="TAG")
    fg.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    fg.add_argument("--json", action="store_true", help="print restic's JSON")


def run(app: Printer, args: argparse.Namespace, session: Session) -> int:
    return {
        "backup": do_backup,
        "snapshots": do_snapshots,
        "ls": do_ls,
        "diff": do_diff,
        "restore": do_restore,
        "forget": do_forget,
    }[args.command](app, args, session)


class _Status(bk.BackupProgress):
    def __init__(self, app: Printer) -> None:
        self.app = app
        self.last = 0.0

    def warn(self, text: str) -> None:
        self.app.err.print(f"warning: {text}", markup=False)

    def failed(self, path: str, error: WarrenError) -> None:
        self.app.err.print(f"error: {path}: {error}", markup=False)

    def status(self, files_done: int, files_total: int, bytes_done: int, total: int) -> None:
        now = time.monotonic()
        if not self.app.json or now - self.last < STATUS_EVERY:
            return
        self.last = now
        self.app.emit(
            {
                "message_type": "status",
                "percent_done": bytes_done / total if total else 1.0,
                "total_files": files_total,
                "files_done": files_done,
                "total_bytes": total,
                "bytes_done": bytes_done,
            }
        )


def do_backup(app: Printer, args: argparse.Namespace, session: Session) -> int:
    s = actions.take_snapshot(
        session, args.paths, args.replicas, _Status(app), args.tag, args.host, args.exclude
    )
    if app.json:
        app.emit(s.json())
    else:
        app.out.print(
            f"Files: {s.files_new} new, {s.files_changed} changed, "
            f"{s.files_unmodified} unmodified\nDirs: {s.dirs}\n"
            f"Added to the repository: {human_size(s.bytes_sent)}\n"
            f"processed {s.files_new + s.files_changed + s.files_unmodified} files, "
            f"{human_size(s.total_bytes)} in {s.duration:.1f} s\n"
            f"snapshot {s.snapshot_id[:8]} saved",
            markup=False,
            highlight=False,
        )
    if s.failed:
        app.err.print(
            f"error: snapshot {s.snapshot_id[:8]} is incomplete: {len(s.failed)} files could "
            "not be stored and are not in it.",
            markup=False,
        )
        return errors.EXIT_FAILURE
    return errors.EXIT_OK


def do_snapshots(app: Printer, args: argparse.Namespace, session: Session) -> int:
    snaps = bk.list_snapshots(session, session.owner_keys())
    if args.json:
        print(json.dumps([s.json() for s in snaps], ensure_ascii=False, indent=2))
        return errors.EXIT_OK
    app.out.print(actions.snapshots_table(snaps))
    app.out.print(f"{len(snaps)} snapshots")
    return errors.EXIT_OK


def _load(session: Session, spec: str) -> tuple[bk.Listed, Manifest]:
    keys = session.owner_keys()
    snap = bk.resolve(bk.list_snapshots(session, keys), spec)
    return snap, bk.load_manifest(session, keys, snap)


def do_ls(app: Printer, args: argparse.Namespace, session: Session) -> int:
    snap, manifest = _load(session, args.snapshot)
    picked = select(manifest, args.path, [], []) if args.path else None
    entries = [e for e, _ in picked] if picked is not None else manifest.entries
    if args.json:
        app.emit(snap.json() | {"struct_type": "snapshot"})
        for e in entries:
            node: dict[str, object] = {
                "name": e.name,
                "type": e.type,
                "path": "/" + e.path,
                "mode": e.mode,
                "mtime": e.mtime,
                "size": e.size,
                "struct_type": "node",
            }
            if e.target:
                node["target"] = e.target
            app.emit(node)
        return errors.EXIT_OK
    app.out.print(
        f"snapshot {snap.id[:8]} of {list(snap.paths)} at "
        f"{actions.snapshot_time(snap.entry.time)}:",
        markup=False,
        highlight=False,
    )
    if not app.out.quiet:
        for e in entries:
            print("/" + e.path + ("/" if e.type == DIR else ""))
    return errors.EXIT_OK


def do_diff(app: Printer, args: argparse.Namespace, session: Session) -> int:
    a, ma = _load(session, args.first)
    b, mb = _load(session, args.second)
    lines, c = diff(ma, mb)
    app.out.print(f"comparing snapshot {a.id[:8]} to {b.id[:8]}:", highlight=False)
    if not app.out.quiet:
        for sign, path in lines:
            print(f"{sign}    {path}")
    app.out.print(
        f"Files: {c['files_new']} new, {c['files_removed']} removed, "
        f"{c['files_changed']} changed\n"
        f"Dirs: {c['dirs_new']} new, {c['dirs_removed']} removed\n"
        f"Others: {c['others_new']} new, {c['others_removed']} removed",
        highlight=False,
    )
    return errors.EXIT_OK


def do_restore(app: Printer, args: argparse.Namespace, session: Session) -> int:
    spec, _, sub = args.snapshot.partition(":")
    snap = bk.resolve(bk.list_snapshots(session, session.owner_keys()), spec)
    done = actions.restore_snapshot(session, snap, args.target, sub, args.include, args.exclude)
    for rel, exc in done.errors:
        app.err.print(f"error: {rel}: {exc}", markup=False)
    app.out.print(done.sentence(), markup=False, highlight=False)
    return done.errors[0][1].exit_code if done.errors else errors.EXIT_OK


def policy_of(args: argparse.Namespace) -> retention.Policy:
    counts = {k: getattr(args, f"keep_{k}_snapshots") or 0 for k in KEEPS}
    within = retention.parse_duration(args.keep_within) if args.keep_within else None
    return retention.Policy(**counts, within=within, tags=tuple(args.keep_tag))


def do_forget(app: Printer, args: argparse.Namespace, session: Session) -> int:
    policy = policy_of(args)
    if not args.ids and policy.empty:
        raise UsageError("give snapshot ids or at least one --keep-* option.")
    snaps = bk.list_snapshots(session, session.owner_keys())
    plan = bk.plan_forget(snaps, args.ids, policy)
    if app.json:
        groups = plan.groups or [{"keep": [], "remove": plan.remove, "reasons": []}]
        print(json.dumps(groups, ensure_ascii=False))
    else:
        for g in plan.groups:
            keep, remove = g["keep"], g["remove"]
            assert isinstance(keep, list) and isinstance(remove, list)
            app.out.print(
                f"snapshots of host {g['host']}, paths {g['paths']}: keep {len(keep)}, "
                f"remove {len(remove)}",
                markup=False,
                highlight=False,
            )
    verb = "would remove" if args.dry_run else "removed"
    done = plan.remove if args.dry_run else bk.forget(session, plan.remove)
    for i in done:
        app.out.print(f"{verb} snapshot {i[:8]}", highlight=False)
    app.out.print(f"{verb} {len(done)} snapshots", highlight=False)
    return errors.EXIT_OK
