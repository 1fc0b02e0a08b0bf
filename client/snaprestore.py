"""``restore SNAPSHOT[:PATH] -o DIR``: a snapshot's tree written back under DIR.

The same care as a file's restore (``client.restore``): every folder between DIR and what
is written is looked at and opened with O_NOFOLLOW relative to the one above
(``open_folder``), so a symbolic link in DIR is never written through; a file's bytes go
to a hidden ``.part`` file made with O_EXCL | O_NOFOLLOW, are checked against the SHA-256
the (sealed) manifest holds, get their mode and mtime through the open file, and only then
are renamed into place. Symbolic links are made as links and never followed; folders get
their modes and mtimes last, deepest first, after everything in them is written (writing
into a folder changes its mtime, and a read-only folder could not be written into).

Nothing already there is overwritten: such an entry is an error, said, and the rest goes
on. One file's chunks are fetched at a time (``client.fetch`` asks for several chunks of
it at once).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from client.fetch import ChunkFetcher
from client.outcomes import Progress
from client.restore import open_folder, restored_mode, writing
from client.session import Session
from client.snapshot import DIR, FILE, Entry
from warren.errors import IntegrityError, UsageError, WarrenError

PLACEHOLDER = ".warren-folder"  # a name below a folder, so open_folder opens the folder


class TreeRestorer:
    """Writes picked entries of a manifest under ``target``."""

    def __init__(self, session: Session, target: Path) -> None:
        self.session = session
        self.keys = session.owner_keys()
        self.target = target
        self.errors: list[tuple[str, WarrenError]] = []
        self.files = 0

    def run(self, picked: list[tuple[Entry, str]]) -> None:
        """Every entry, in path order; then the folders' modes and mtimes, deepest first."""
        picked = sorted(picked, key=lambda p: p[1])
        with writing(self.target):
            self.target.mkdir(parents=True, exist_ok=True)
        folders: list[tuple[Entry, str]] = []
        for entry, rel in picked:
            try:
                if entry.type == DIR:  # made (or found) below, once its contents are in
                    folders.append((entry, rel))
                elif entry.type == FILE:
                    self._file(entry, rel)
                    self.files += 1
                else:
                    self._link(entry, rel)
            except WarrenError as exc:
                self.errors.append((rel, exc))
        for entry, rel in reversed(folders):
            try:
                fd = open_folder(self.target / rel / PLACEHOLDER, self.target)
                try:
                    with writing(self.target / rel):
                        os.fchmod(fd, restored_mode(entry.mode, False)[0])
                        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
                finally:
                    os.close(fd)
            except WarrenError as exc:
                self.errors.append((rel, exc))

    def _free(self, folder: int, dest: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.stat(dest.name, dir_fd=folder, follow_symlinks=False)
            raise UsageError(f"{dest} already exists; a restore never overwrites.")

    def _link(self, entry: Entry, rel: str) -> None:
        dest = self.target / rel
        folder = open_folder(dest, self.target)
        try:
            self._free(folder, dest)
            with writing(dest):
                os.symlink(entry.target, dest.name, dir_fd=folder)
                os.utime(
                    dest.name,
                    ns=(entry.mtime_ns, entry.mtime_ns),
                    dir_fd=folder,
                    follow_symlinks=False,
                )
        finally:
            os.close(folder)

    def _file(self, entry: Entry, rel: str) -> None:
        dest = self.target / rel
        if sum(c.plain for c in entry.chunks) != entry.size:
            raise IntegrityError(f"the snapshot's chunks of {rel!r} do not make up the file.")
        folder = open_folder(dest, self.target)
        tmp = f".{dest.name}.{uuid.uuid4().hex[:8]}.part"
        fd = -1
        try:
            self._free(folder, dest)
            with writing(dest):
                flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(tmp, flags, 0o600, dir_fd=folder)

            def write(fd: int, data: bytes, offset: int) -> None:
                with writing(dest):
                    os.pwrite(fd, data, offset)

            fetcher = ChunkFetcher(
                self.session, self.keys, fd, rel, entry.chunks, Progress(), write
            )
            if fetcher.run() != entry.sha256:
                raise IntegrityError(f"{rel!r} as restored failed its SHA-256 check.")
            with writing(dest):
                os.ftruncate(fd, entry.size)
                os.fchmod(fd, restored_mode(entry.mode, False)[0])
                os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
                os.close(fd)
                fd = -1
                os.rename(tmp, dest.name, src_dir_fd=folder, dst_dir_fd=folder)
            tmp = ""
        finally:
            if fd >= 0:
                os.close(fd)
            if tmp:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=folder)
            os.close(folder)
