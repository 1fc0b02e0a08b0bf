"""A worker's content-addressed blob store: the finished replicas it holds.

Layout under the worker's data dir::

    blobs/ab/<sha256>          finished replicas, named by content hash (never by file name)
    blobs/ab/<sha256>.zst      the same for content that came compressed: its zstd frames as
                               they came (worker/frames.py), so a restore compresses nothing
    incoming/<sha256>.<r>.blob a file of a pack being written (small files come whole in
                               packs); left over from a crash, it is removed at start
    quarantine/<name>.<time>   a copy found damaged, kept for an operator to look at

Six threads use one ``BlobStore``: ingest (what is held, to skip content stored already),
the pool (a finished upload kept, a pack's files put), serve (restores, repair copies,
verify, delete), scrub (inventory, check, quarantine), heartbeat (usage) and the worker's
start (open, inventory). Every change to ``blobs/`` is one atomic rename or unlink, safe
from any thread: a blob is there whole or not at all, and a reader that finds it gone
hears FileNotFoundError. What is shared in memory is guarded by ``_lock``: the usage
counters (``_used``, ``_files``, ``damaged``) and the test-and-rename that counts a pack's
file once. ``_folders`` (folders known to exist) is only added to, and a stale answer only
costs a makedirs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from warren.messages import HEX64, BlobEntry
from worker import frames
from worker.disk import fsync_path, sync_files, write_all


class CorruptUpload(Exception):
    """The assembled bytes do not match the SHA-256 the client announced."""

    @classmethod
    def mismatch(cls, expected: str, actual: str) -> CorruptUpload:
        return cls(f"SHA-256 mismatch: expected {expected[:12]}…, got {actual[:12]}…")


class NoCopy(Exception):
    """This worker holds no copy of the content asked about (``BlobStore.check``)."""


@dataclass(frozen=True)
class Usage:
    free_bytes: int
    used_bytes: int
    files: int


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root  # the worker's data dir: its disk is the one whose room counts
        self.dir = root / "blobs"
        self.tmp = root / "incoming"  # a pack's files are written here, then renamed
        self.quarantined = root / "quarantine"
        self._lock = threading.Lock()  # guards the counters below
        self.damaged = 0  # copies found damaged and quarantined (counted at open)
        self._used = 0
        self._files = 0
        self._folders: set[str] = set()  # folders of blobs/ known to exist

    def open(self) -> None:
        """Create the folders and count what is stored (a scan, once, at start)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp.glob("*.blob"):  # a pack cut short: never acknowledged
            leftover.unlink(missing_ok=True)
        used = files = 0
        for entry in self.inventory():
            path = self.find(entry.sha256)
            used += path.stat().st_size if path is not None else 0  # the disk's bytes
            files += 1
        self._used, self._files = used, files
        q = self.quarantined
        self.damaged = len(list(q.iterdir())) if q.is_dir() else 0

    def blob_path(self, sha256: str) -> Path:
        if not HEX64.match(sha256):
            raise ValueError(f"bad sha256 {sha256!r}")
        return self.dir / sha256[:2] / sha256

    def find(self, sha256: str) -> Path | None:
        """The stored blob of this content, as its own bytes or as frames; None if none."""
        path = self.blob_path(sha256)
        if path.exists():
            return path
        framed = path.with_name(sha256 + frames.SUFFIX)
        return framed if framed.exists() else None

    def keep(self, part: Path, sha256: str, framed: bool) -> Path:
        """Move a verified, synced replica into the store, as its own bytes or as frames
        (unless this content is stored already, in either form: then ``part`` goes).
        Returns the stored blob."""
        target = self.blob_path(sha256)
        if framed:
            target = target.with_name(sha256 + frames.SUFFIX)
        target.parent.mkdir(exist_ok=True)
        existing = self.find(sha256)
        if existing is not None and existing != target:
            part.unlink()
        else:
            size = os.stat(part).st_size
            os.replace(part, target)
            if existing is None:  # counted as soon as it is there, whatever fails next
                with self._lock:
                    self._used += size
                    self._files += 1
            fsync_path(target.parent)
        return existing or target

    def put_blobs(self, blobs: list[tuple[str, memoryview]]) -> None:
        """Store small files whole (a pack): each verified, synced and renamed into place.

        The bytes are checked against their hash before anything is written. Files are
        written under temporary names, synced all at once, renamed, and the renames synced:
        two file-system syncs for the whole pack instead of two fsyncs per file. Storing
        again what is already stored is a no-op, so a redelivered pack is harmless.
        """
        for sha256, data in blobs:
            actual = hashlib.sha256(data).hexdigest()
            if actual != sha256:
                raise CorruptUpload.mismatch(sha256, actual)
        # One random part for the pack's temporary names (each also has its file's hash).
        tag = uuid.uuid4().hex[:8]
        todo: dict[str, tuple[str, str, memoryview]] = {}  # sha256 -> (target, tmp, bytes)
        for sha256, data in blobs:
            if sha256 in todo:
                continue
            target = str(self.blob_path(sha256))
            if self.find(sha256) is None:
                todo[sha256] = (target, os.path.join(self.tmp, f"{sha256}.{tag}.blob"), data)
        if not todo:
            return
        try:
            for _, tmp, data in todo.values():
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    write_all(fd, data, 0)
                finally:
                    os.close(fd)
            sync_files([Path(tmp) for _, tmp, _ in todo.values()])
            folders = sorted({os.path.dirname(target) for target, _, _ in todo.values()})
            for folder in folders:
                self._folder(folder)  # a new folder takes space too
            for target, tmp, data in todo.values():
                self._rename_blob(tmp, target, len(data))
            sync_files([Path(f) for f in folders])
        except OSError:
            for _, tmp, _ in todo.values():  # a full disk, say: leave nothing half-written
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
            raise

    def _rename_blob(self, tmp: str, target: str, size: int) -> None:
        """Move a synced, verified file of a pack into place, counted once it is there."""
        with self._lock:
            fresh = not os.path.exists(target)
            try:
                os.replace(tmp, target)
            except FileNotFoundError:  # its folder went since it was made here
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(tmp, target)
            if fresh:
                self._used += size
                self._files += 1

    def _folder(self, path: str) -> None:
        """Make a folder of ``blobs/`` once (a pack's files fall into many of the 256)."""
        if path not in self._folders:
            os.makedirs(path, exist_ok=True)
            self._folders.add(path)

    def quarantine(self, sha256: str) -> None:
        """A damaged copy leaves the store (never served, never reported as held again)
        for ``quarantine/``, where an operator can look at it."""
        path = self.find(sha256)
        if path is None:
            return
        target = self.quarantined / f"{path.name}.{int(time.time())}"
        target.parent.mkdir(exist_ok=True)
        try:
            size = path.stat().st_size
            os.replace(path, target)
        except FileNotFoundError:
            return
        with self._lock:
            self._used -= size
            self._files -= 1
            self.damaged += 1

    def check(self, sha256: str, size: int | None = None) -> str | None:
        """Re-read a stored blob now: None if it is good, else why not. Raises NoCopy
        when there is none here (or it went while being read)."""
        path = self.find(sha256)
        if path is None:
            raise NoCopy(sha256)
        digest = hashlib.sha256()
        actual_size = 0
        try:
            for data in frames.content(path):
                digest.update(data)
                actual_size += len(data)
        except FileNotFoundError:
            raise NoCopy(sha256) from None
        except frames.Damaged as exc:
            return str(exc)
        except OSError as exc:
            return f"cannot read it: {exc.strerror or exc}"
        actual = digest.hexdigest()
        if size is not None and actual_size != size:
            return f"size {actual_size}, expected {size}"
        if actual != sha256:
            return f"SHA-256 mismatch: got {actual[:12]}…"
        return None

    def delete_blob(self, sha256: str) -> int:
        """Remove a stored blob (garbage collection); return the bytes given back."""
        path = self.find(sha256)
        if path is None:
            return 0
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        fsync_path(path.parent)
        with self._lock:
            self._used -= size
            self._files -= 1
        return size

    def inventory(self) -> Iterator[BlobEntry]:
        """Every blob held and the size of its file (a compressed one's header says; one
        whose header does not read is reported as 0 bytes, for scrub to find damaged)."""
        for sub in sorted(self.dir.iterdir()) if self.dir.is_dir() else []:
            for blob in sorted(sub.iterdir()):
                if HEX64.match(blob.name):
                    yield BlobEntry(sha256=blob.name, size=blob.stat().st_size)
                elif blob.name.endswith(frames.SUFFIX) and HEX64.match(blob.stem):
                    yield BlobEntry(sha256=blob.stem, size=frames.file_size(blob))

    def usage(self) -> Usage:
        free = shutil.disk_usage(self.root).free
        with self._lock:
            return Usage(free_bytes=free, used_bytes=self._used, files=self._files)
