"""Snapshots over a session: ``backup``, the list of snapshots with their sealed paths
opened, one snapshot's manifest read back, and which snapshots ``forget`` removes.

A backup stores files as ``upload`` does, but makes no versions (``commit=False``): its
files' chunks are pinned on the manager while the backup runs, and the snapshot that
names them is the only record. The parent (the newest snapshot of the same host and the
same sorted paths) is found by opening each snapshot's ``meta`` with the owner's manifest
key: the manager cannot tell which snapshot backs up what. A file whose path, size, mtime,
ctime and inode match its parent entry is not opened; its chunks are named again.

``meta`` also holds the SHA-256 of the manifest's plaintext, so a manifest read back is
checked whole: the manager, which lists the manifest's chunks in the clear, cannot swap,
reorder or drop them, nor pass one snapshot's manifest for another's.

A file that fails (unreadable, vanished, a chunk no replica confirmed) is left out of the
snapshot, and the snapshot is committed without it (restic's "incomplete snapshot"): the
summary lists it and the command exits 1, so a script sees that not everything is safe.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from client.fetch import ChunkFetcher
from client.outcomes import Progress, UploadResult
from client.session import Session
from client.snapshot import Entry, Manifest, decode, encode, reuse, root_names, walk
from warren import messages as m
from warren import retention
from warren.errors import IntegrityError, NotFound, UsageError, WarrenError
from warren.ownerkey import OwnerKeys
from warren.sealing import Forged, Sealer

META_CONTEXT = b"warren snapshot meta"
MIN_PREFIX = 4  # hex digits of an id prefix, as restic


@dataclass(frozen=True)
class Listed:
    """A snapshot as listed, with its paths (empty when its meta does not open: not sealed
    with this owner's key) and its manifest's SHA-256 from the meta."""

    entry: m.SnapshotEntry
    paths: tuple[str, ...]
    manifest_sha256: str = ""

    @property
    def id(self) -> str:
        return self.entry.id

    def snap(self) -> retention.Snap:
        e = self.entry
        return retention.Snap(e.id, e.time, e.host, self.paths, e.tags)

    def json(self) -> dict[str, object]:
        e = self.entry
        return {
            "id": e.id,
            "short_id": e.id[:8],
            "time": e.time,
            "host": e.host,
            "paths": list(self.paths),
            "tags": list(e.tags),
        }


class BackupProgress:
    """Hooks a user interface overrides; the defaults do nothing."""

    def warn(self, text: str) -> None: ...
    def failed(self, path: str, error: WarrenError) -> None: ...
    def status(self, files_done: int, files_total: int, bytes_done: int, total: int) -> None: ...


@dataclass
class Summary:
    snapshot_id: str
    files_new: int
    files_changed: int
    files_unmodified: int
    dirs: int
    bytes_sent: int
    total_bytes: int
    duration: float
    failed: list[str] = field(default_factory=list)

    def json(self) -> dict[str, object]:
        return {"message_type": "summary"} | {
            k: getattr(self, k)
            for k in (
                "snapshot_id",
                "files_new",
                "files_changed",
                "files_unmodified",
                "dirs",
                "bytes_sent",
                "total_bytes",
                "duration",
                "failed",
            )
        }


# -- meta and the list ---------------------------------------------------------------------


def seal_meta(keys: OwnerKeys, paths: list[str], manifest_sha256: str) -> str:
    body = json.dumps({"paths": paths, "manifest": manifest_sha256}, sort_keys=True).encode()
    return base64.b64encode(Sealer(keys.manifest).seal(body, META_CONTEXT)).decode()


def open_meta(keys: OwnerKeys, meta: str) -> tuple[tuple[str, ...], str] | None:
    """The paths and the manifest's SHA-256 sealed in ``meta``; None if it does not open."""
    try:
        body = json.loads(Sealer(keys.manifest).open(base64.b64decode(meta), META_CONTEXT))
        return tuple(str(p) for p in body["paths"]), str(body.get("manifest", ""))
    except (Forged, ValueError, KeyError, TypeError):
        return None


def list_snapshots(session: Session, keys: OwnerKeys) -> list[Listed]:
    """The owner's snapshots, oldest first."""
    reply = session.request(m.SnapshotsRequest(), m.SnapshotsReply)
    out = []
    for e in reply.snapshots:
        opened = open_meta(keys, e.meta)
        paths, sha = opened if opened is not None else ((), "")
        out.append(Listed(e, paths, sha))
    return sorted(out, key=lambda s: s.entry.time)


def resolve(snaps: list[Listed], spec: str) -> Listed:
    """``latest``, a whole id, or a unique prefix of at least 4 hex digits (restic's)."""
    if not snaps:
        raise NotFound("there are no snapshots yet.")
    if spec == "latest":
        return snaps[-1]
    if len(spec) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in spec):
        raise UsageError(f"{spec!r} is not a snapshot id: give latest or at least 4 hex digits.")
    found = [s for s in snaps if s.id.startswith(spec)]
    if not found:
        raise NotFound(f"no snapshot has an id starting with {spec}.")
    if len(found) > 1:
        raise UsageError(f"{spec} is the start of {len(found)} snapshots' ids; give more digits.")
    return found[0]


def load_manifest(session: Session, keys: OwnerKeys, snap: Listed, pin: bool = False) -> Manifest:
    """A snapshot's manifest, fetched, opened and checked against the SHA-256 its meta
    holds. ``pin``: a backup's parent, whose chunks the manager keeps for it until its
    commit."""
    got = session.request(m.SnapshotGet(id=snap.id, pin=pin), m.SnapshotGot).snapshot
    size = sum(c.plain for c in got.manifest)
    buf = bytearray(size)

    def write(_fd: int, data: bytes, offset: int) -> None:
        buf[offset : offset + len(data)] = data

    name = f"the manifest of snapshot {snap.id[:8]}"
    sha = ChunkFetcher(session, keys, -1, name, got.manifest, Progress(), write).run()
    if not snap.manifest_sha256 or sha != snap.manifest_sha256:
        raise IntegrityError(f"{name} fails its SHA-256 check.")
    return decode(bytes(buf))


def find_parent(
    session: Session, keys: OwnerKeys, host: str, paths: list[str]
) -> tuple[str, Manifest] | None:
    """The id and manifest of the newest snapshot of this host and these (sorted) paths."""
    same = [
        s
        for s in list_snapshots(session, keys)
        if s.entry.host == host and sorted(s.paths) == sorted(paths)
    ]
    if not same:
        return None
    return same[-1].entry.id, load_manifest(session, keys, same[-1], pin=True)


# -- backup --------------------------------------------------------------------------------


def backup(
    session: Session,
    paths: list[Path],
    replicas: int,
    tags: list[str],
    host: str,
    excludes: list[str],
    progress: BackupProgress | None = None,
) -> Summary:
    """One snapshot of ``paths``; see the module docstring for what it reads and sends."""
    progress = progress or BackupProgress()
    began, clock = time.time(), time.monotonic()
    keys = session.owner_keys()  # a wrong password: exit 2 before anything is read
    given = sorted(str(a) for a, _ in root_names(paths))
    entries, local = walk(paths, excludes, progress.warn)
    found = find_parent(session, keys, host, given)
    parent_id, parent = found if found is not None else ("", None)
    entries, todo, new = reuse(entries, parent)
    total = sum(e.size for e in entries)
    results: dict[str, UploadResult | WarrenError] = {}
    counter = _Counter(progress, len(todo), sum(e.size for e in entries if e.path in todo))
    if todo:
        session.upload_many(
            [(local[p], p) for p in todo],
            replicas,
            lambda _n: counter,
            counter.done(results),
            commit=False,
        )
    kept: list[Entry] = []
    failed: list[str] = []
    for e in entries:
        outcome = results.get(e.path)
        if isinstance(outcome, WarrenError):
            failed.append(e.path)
            progress.failed(e.path, outcome)
            continue
        if outcome is not None:
            e = replace(e, chunks=outcome.chunks, sha256=outcome.sha256)
            if outcome.size != e.size:  # it changed while it was read: read it next time
                e = replace(e, size=outcome.size, ctime_ns=0)
        kept.append(e)
    manifest_refs, manifest_sha, manifest_sent = _store_manifest(
        session, replicas, Manifest(host, given, kept)
    )
    chunks = list(dict.fromkeys([c.sha256 for e in kept for c in e.chunks] + manifest_refs[1]))
    commit = m.SnapshotCommit(
        time=began,
        host=host,
        tags=tuple(tags),
        meta=seal_meta(keys, given, manifest_sha),
        manifest=manifest_refs[0],
        chunks=tuple(chunks),
        replicas=replicas,
        client=session.client_name,
        parent=parent_id,
    )
    snapshot_id = session.request(commit, m.SnapshotCommitted).id
    sent = sum(r.sent for r in results.values() if isinstance(r, UploadResult))
    stored = len(todo) - len(failed)
    files_new = len(new - set(failed))
    return Summary(
        snapshot_id=snapshot_id,
        files_new=files_new,
        files_changed=stored - files_new,
        files_unmodified=sum(1 for e in kept if e.type == "file") - stored,
        dirs=sum(1 for e in kept if e.type == "dir"),
        bytes_sent=sent + manifest_sent,
        total_bytes=total,
        duration=time.monotonic() - clock,
        failed=failed,
    )


def _store_manifest(
    session: Session, replicas: int, manifest: Manifest
) -> tuple[tuple[tuple[m.ChunkRef, ...], list[str]], str, int]:
    """The manifest stored as sealed chunks (through a temp file only its owner can read,
    removed after): its chunks, their digests, its SHA-256 and the bytes sent."""
    fd, name = tempfile.mkstemp(prefix="warren-manifest-")  # mode 600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(encode(manifest))
        outcome: list[UploadResult | WarrenError] = []
        session.upload_many(
            [(Path(name), "")],
            replicas,
            lambda _n: Progress(),
            lambda _n, r: outcome.append(r),
            commit=False,
        )
    finally:
        os.unlink(name)
    result = outcome[0]
    if isinstance(result, WarrenError):
        raise result
    return (result.chunks, [c.sha256 for c in result.chunks]), result.sha256, result.sent


class _Counter(Progress):
    """The upload's progress, as a backup's status: files done and bytes read."""

    def __init__(self, progress: BackupProgress, files: int, size: int) -> None:
        self.progress = progress
        self.files, self.size = files, size
        self.files_done = self.bytes_done = 0

    def transferred(self, nbytes: int) -> None:
        self.bytes_done += nbytes
        self.progress.status(self.files_done, self.files, self.bytes_done, self.size)

    def done(
        self, results: dict[str, UploadResult | WarrenError]
    ) -> Callable[[str, UploadResult | WarrenError], None]:
        def record(name: str, outcome: UploadResult | WarrenError) -> None:
            results[name] = outcome
            self.files_done += 1
            self.progress.status(self.files_done, self.files, self.bytes_done, self.size)

        return record


# -- forget --------------------------------------------------------------------------------


@dataclass
class ForgetPlan:
    """What ``forget`` removes: the ids given, and per group what the policy decided."""

    remove: list[str]
    groups: list[dict[str, object]]


def plan_forget(snaps: list[Listed], ids: list[str], policy: retention.Policy) -> ForgetPlan:
    """The snapshots named (resolved as ``resolve`` does) and, with a policy, those it
    does not keep, group by group (restic's ``--group-by host,paths``)."""
    remove = [resolve(snaps, spec).id for spec in ids]
    groups: list[dict[str, object]] = []
    if not policy.empty:
        by_id = {s.id: s for s in snaps}
        decisions = retention.apply([s.snap() for s in snaps], policy)
        for (host, paths), members in retention.group([s.snap() for s in snaps]).items():
            ids_in = {s.id for s in members}
            mine = [d for d in decisions if d.snap.id in ids_in]
            groups.append(
                {
                    "host": host,
                    "paths": list(paths),
                    "keep": [by_id[d.snap.id].json() for d in mine if d.keep],
                    "remove": [by_id[d.snap.id].json() for d in mine if not d.keep],
                    "reasons": [
                        {"snapshot": by_id[d.snap.id].json(), "matches": list(d.reasons)}
                        for d in mine
                        if d.keep
                    ],
                }
            )
            remove += [d.snap.id for d in mine if not d.keep]
    return ForgetPlan(list(dict.fromkeys(remove)), groups)


def forget(session: Session, ids: list[str]) -> list[str]:
    if not ids:
        return []
    return list(session.request(m.ForgetRequest(ids=tuple(ids)), m.Forgotten).ids)
