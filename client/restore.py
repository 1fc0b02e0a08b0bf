"""Restores: a file's sealed chunks fetched from their holders, opened with the owner's
key, and checked whole (``client.fetch``; a bad copy of a chunk is read from another holder).

The bytes go to a hidden ``.NAME.*.part`` file beside the destination, written at their
offsets as chunks arrive and hashed in order; only a file whose size and SHA-256 match the
catalog is moved into place. Anything else is removed.

What the catalog says and what sits in the destination folder are not trusted to aim the
write: the folder is opened once and every step after is relative to that descriptor
(created with O_EXCL | O_NOFOLLOW, renamed in it), so a link planted meanwhile is never
followed; in a tree restore no folder between ``-o DIR`` and the file may be a symbolic
link; mode and mtime are set through the open file before the rename, never by path after
it; setuid, setgid and sticky bits come back only for root who asks (``--keep-setid``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from client.channel import Channel
from client.fetch import ChunkFetcher
from client.outcomes import DownloadResult, Progress
from warren import messages as m
from warren.chunks import Writeback
from warren.errors import IntegrityError, UsageError
from warren.ownerkey import OwnerKeys

# Bits a restore gives back only to root who asks (--keep-setid): anyone who can store a
# file (or plant a record) must not hand whoever restores it a setuid program.
SETID = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


class Restorer:
    """The restores of one session."""

    def __init__(self, session: Channel, keys: OwnerKeys) -> None:
        self.session = session
        self.keys = keys

    def download(
        self,
        name: str,
        dest: Path,
        progress: Progress | None = None,
        overwrite: bool = False,
        version: int = 0,
        under: Path | None = None,
        keep_setid: bool = False,
    ) -> DownloadResult:
        """Restore ``name`` (its latest version, or ``version``) to ``dest``, verified,
        with its mode and modification time; ask again (another replica) on failure.

        ``under``: the folder of a tree restore; the folders between it and ``dest`` are
        made as needed and none may be a symbolic link. ``keep_setid``: setuid, setgid and
        sticky bits come back when running as root; otherwise they are dropped (the result
        says which)."""
        progress = progress or Progress()
        if "\x00" in str(dest):
            raise UsageError(
                f"{name!r} holds a NUL character, which no file name may; give -o PATH."
            )
        if under is None and dest.is_dir():  # -o DIR: the user's folder (a link followed)
            dest = dest / Path(name).name
        if dest.is_symlink() and not overwrite:
            raise UsageError(
                f"{dest} is a symbolic link; pass --force to replace the link itself (what it "
                "points to is left alone)."
            )
        if os.path.lexists(dest) and not overwrite:
            raise UsageError(f"{dest} already exists; pass --force to overwrite it.")
        if under is None and not dest.parent.is_dir():
            raise UsageError(f"{dest.parent} is not a directory.")
        return self._once(name, version, dest, progress, under, keep_setid)

    def _once(
        self,
        name: str,
        version: int,
        dest: Path,
        progress: Progress,
        under: Path | None,
        keep_setid: bool,
    ) -> DownloadResult:
        folder = open_folder(dest, under)
        tmp = f".{dest.name}.{uuid.uuid4().hex[:8]}.part"
        try:
            with writing(dest):
                fd = os.open(
                    tmp,
                    os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                    0o600,
                    dir_fd=folder,
                )
        except BaseException:
            os.close(folder)
            raise
        used: set[str] = set()
        try:
            acc = self.session.request(
                m.DownloadRequest(name=name, client=self.session.client_name, version=version),
                m.DownloadAccepted,
            )
            progress.started(acc.size)
            if sum(c.plain for c in acc.chunks) != acc.size:
                raise IntegrityError(f"the catalog's chunks of {name!r} do not make up the file.")
            fetcher = ChunkFetcher(
                self.session, self.keys, fd, name, acc.chunks, progress, self._writer(dest)
            )
            sha = fetcher.run()
            used = fetcher.workers
            if sha != acc.sha256:
                raise IntegrityError(f"{name!r} as restored failed its SHA-256 check.")
            mode, dropped = restored_mode(acc.mode, keep_setid)
            with writing(dest):
                # Through the open file, before the rename: a path swapped for a link once
                # the file is in place is never chmod-ed or touched.
                if mode:
                    os.fchmod(fd, mode)
                if acc.mtime:
                    os.utime(fd, (acc.mtime, acc.mtime))
                os.fsync(fd)
            os.close(fd)
            fd = -1
            with writing(dest):
                # rename(2) replaces a link at dest; it never follows one
                os.replace(tmp, dest.name, src_dir_fd=folder, dst_dir_fd=folder)
            return DownloadResult(
                name, acc.size, acc.sha256, ", ".join(sorted(used)), dest, acc.version, dropped
            )
        finally:
            # The partial file goes first: nothing is left behind.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=folder)
            os.close(folder)
            if fd >= 0:
                os.close(fd)

    @staticmethod
    def _writer(dest: Path) -> Callable[[int, bytes, int], None]:
        writeback = Writeback()

        def write(fd: int, data: bytes, offset: int) -> None:
            with writing(dest):
                os.pwrite(fd, data, offset)
            writeback.written_up_to(fd, offset + len(data))

        return write


@contextlib.contextmanager
def writing(dest: Path) -> Iterator[None]:
    """A destination that cannot be written is one sentence, never a traceback."""
    try:
        yield
    except OSError as exc:
        raise UsageError(f"cannot write {dest}: {exc.strerror or exc}.") from None


def tree_destination(prefix: str, name: str, folder: Path) -> Path:
    """Where ``download PREFIX/ -o FOLDER`` puts the stored file ``name``: its path below
    the prefix, under the folder. A name that would climb out of the folder, or that no
    path can hold (a NUL), is refused: that file is skipped."""
    parts = name[len(prefix) :].split("/")
    if not name.startswith(prefix) or "\x00" in name or any(p in ("", ".", "..") for p in parts):
        raise UsageError(
            f"skipped {name!r}: a name with a NUL, or an empty, '.' or '..' part, cannot be "
            f"a path under {folder}."
        )
    return folder.joinpath(*parts)


def restored_mode(mode: int, keep_setid: bool) -> tuple[int, int]:
    """The permission bits to give a restored file, and the ones left off: setuid, setgid
    and sticky only for root who asked."""
    mode &= 0o7777
    if keep_setid and os.geteuid() == 0:
        return mode, 0
    return mode & ~SETID, mode & SETID


def open_folder(dest: Path, under: Path | None) -> int:
    """A descriptor of ``dest``'s folder, to create and rename the file in.

    ``under`` (a tree restore): the folders from it down to ``dest``'s are looked at with
    lstat right before the file is made, made with mkdir where missing, and opened one by
    one with O_NOFOLLOW, each relative to the one before; a symbolic link among them is
    refused (one sentence), so the file cannot land outside ``under``."""
    with writing(dest.parent):
        if under is None:
            return os.open(dest.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        under.mkdir(parents=True, exist_ok=True)  # -o DIR: the user's path, as given
        fd = os.open(under, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    path = under
    try:
        for part in dest.parent.relative_to(under).parts:
            path = path / part
            with writing(path):
                try:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    os.mkdir(part, 0o777, dir_fd=fd)  # never follows a link
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                raise _through_link(dest, path)
            if not stat.S_ISDIR(st.st_mode):
                raise UsageError(f"cannot write {dest}: {path} is not a folder.")
            try:
                inner = os.open(
                    part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                )
            except OSError as exc:  # swapped for a link since the lstat: ELOOP or ENOTDIR
                raise _through_link(dest, path) from exc
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def _through_link(dest: Path, link: Path) -> UsageError:
    return UsageError(
        f"refusing to write {dest}: {link} is a symbolic link, and a restore under a folder "
        "never writes through one."
    )
