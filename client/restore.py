"""Restores: a file streamed back from one worker, verified, and tried on another replica
when that one fails.

The bytes go to a hidden ``.NAME.*.part`` file beside the destination, written at their
offsets as chunks arrive and hashed as they come in order; only a file whose size and
SHA-256 match the catalog is moved into place. Anything else is removed.

What the catalog says and what sits in the destination folder are not trusted to aim the
write: the folder is opened once and every step after is relative to that descriptor
(created with O_EXCL | O_NOFOLLOW, renamed in it), so a link planted meanwhile is never
followed; in a tree restore no folder between ``-o DIR`` and the file may be a symbolic
link; mode and mtime are set through the open file before the rename, never by path after
it; setuid, setgid and sticky bits come back only for root who asks (``--keep-setid``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import stat
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

from client.channel import Channel
from client.outcomes import DownloadResult, Progress
from warren import compression
from warren import messages as m
from warren.chunks import READ_SIZE, Writeback
from warren.errors import (
    DecodeError,
    IntegrityError,
    NoReplica,
    Unavailable,
    UsageError,
    WarrenError,
)
from warren.transport import Delivery

# Bits a restore gives back only to root who asks (--keep-setid): anyone who can store a
# file (or plant a record) must not hand whoever restores it a setuid program.
SETID = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX


class Restorer:
    """The restores of one session."""

    def __init__(self, session: Channel) -> None:
        self.session = session

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
        exclude: list[str] = []
        last_error: WarrenError | None = None
        for _attempt in range(4):
            try:
                return self._once(name, version, dest, exclude, progress, under, keep_setid)
            except _ReplicaProblem as exc:
                exclude.append(exc.worker)
                last_error = exc.error
                progress.retrying(f"{exc.worker}: {exc.error}; trying another replica")
            except NoReplica:
                if exclude:
                    break  # every replica was tried: say why the last one failed
                raise
        assert last_error is not None
        raise last_error

    def _once(
        self,
        name: str,
        version: int,
        dest: Path,
        exclude: list[str],
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
        state = _Restore(fd, dest)
        cid = uuid.uuid4().hex
        source: list[str] = []  # the worker the manager named: the only one heard

        def from_source(d: Delivery) -> None:
            if self.session.from_worker(d, source):
                state.on_delivery(d)

        try:
            acc = self.session.request(
                m.DownloadRequest(
                    name=name,
                    exclude=tuple(exclude),
                    client=self.session.client_name,
                    version=version,
                ),
                m.DownloadAccepted,
                on_other=from_source,
                cid=cid,
                on_answer=lambda acc: source.append(acc.worker),
            )
            progress.started(acc.size)
            state.progress = progress
            try:
                self._wait(state)
            except Unavailable as exc:
                raise _ReplicaProblem(acc.worker, exc) from None
            state.finish()
            if state.failed:
                raise _ReplicaProblem(acc.worker, Unavailable(state.failed))
            with writing(dest):
                sha = state.sha256()
            if state.received != acc.size or sha != acc.sha256:
                raise _ReplicaProblem(
                    acc.worker,
                    IntegrityError(
                        f"the copy of {name!r} from {acc.worker} failed its SHA-256 check."
                    ),
                )
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
                name, acc.size, acc.sha256, acc.worker, dest, acc.version, dropped
            )
        finally:
            # The partial file goes first: whatever is slow below (a signal ends the command
            # within a bounded time), nothing is left behind.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=folder)
            os.close(folder)
            stopped = state.close()
            self.session.unroute(cid)
            if fd >= 0 and stopped:  # never close a descriptor the writer may still use
                os.close(fd)

    def _wait(self, state: _Restore) -> None:
        """Wait while chunks keep coming; give up after transfer_timeout without one."""
        timeout = self.session.settings.transfer_timeout
        while not (state.ended or state.failed or state.error):
            seen = state.received

            def moved(seen: int = seen) -> bool:
                return (
                    state.received != seen
                    or state.ended
                    or bool(state.failed)
                    or state.error is not None
                )

            self.session.wait(moved, timeout, f"no data for {timeout:.0f} s")


class _Restore:
    """A restore in progress: chunks are written at their offsets as they arrive.

    The connection's thread only takes each chunk in; a thread of its own decodes and writes
    them, in the order they came, up to ``AHEAD`` chunks behind, and hands them to a third
    that hashes them: all three release the interpreter lock, and together they were the
    thread that bounded a restore (log-like text kept as frames, 512 MiB: the writing
    thread busy 80% of the time, a third of that hashing)."""

    AHEAD = 4

    def __init__(self, fd: int, dest: Path) -> None:
        self.fd = fd
        self.dest = dest
        self.received = 0  # bytes written so far (by the writing thread)
        self.ended = False
        self.failed = ""
        self.progress = Progress()
        self._reported = 0  # of ``received``, told to ``progress`` (on the caller's thread)
        self._hasher = _Hasher(self.AHEAD)
        self._next_offset = 0
        self._in_order = True
        self._writeback = Writeback()
        self._todo: queue.Queue[tuple[m.RestoreChunk, bytes] | None] = queue.Queue(self.AHEAD)
        self.error: WarrenError | None = None  # the writing thread's: finish() raises it
        self._thread = threading.Thread(target=self._write_all, name="warren-restore", daemon=True)
        self._thread.start()

    def on_delivery(self, d: Delivery) -> None:
        d.ack()
        self._report()
        if d.type == m.RESTORE_CHUNK_TYPE:
            chunk = m.RestoreChunk.from_headers(d.headers)
            if not self.failed:
                self._todo.put((chunk, d.body))
        elif d.type == m.RestoreEnd.TYPE:
            self.ended = True
        elif d.type == m.RestoreFailed.TYPE:
            self.failed = m.RestoreFailed.decode(d.body).reason

    def _write_all(self) -> None:
        """The writing thread: each chunk decoded, written at its offset and hashed."""
        while (item := self._todo.get()) is not None:
            if self.failed or self.error is not None:
                continue  # the restore failed: what is left is only taken off the queue
            try:
                self._write(*item)
            except WarrenError as exc:
                self.error = exc
            except Exception as exc:  # noqa: BLE001 - said by finish(), on the caller's thread
                self.error = UsageError(f"cannot write {self.dest}: {exc}.")

    def _write(self, chunk: m.RestoreChunk, body: bytes) -> None:
        # A compressed chunk is no larger than a chunk can be (a bad one fails the file:
        # its size or SHA-256 cannot match, and another replica is asked).
        try:
            data = compression.decode(body, chunk.encoding, compression.MAX_CHUNK)
        except DecodeError as exc:
            self.failed = f"a chunk that does not decode ({exc})"
            return
        with writing(self.dest):
            os.pwrite(self.fd, data, chunk.offset)
        if chunk.offset == self._next_offset:
            self._hasher.add(data)
            self._next_offset += len(data)
            self._writeback.written_up_to(self.fd, self._next_offset)
        else:
            self._in_order = False
        self.received += len(data)

    def _report(self) -> None:
        done = self.received
        if done > self._reported:
            self.progress.transferred(done - self._reported)
            self._reported = done

    def finish(self) -> None:
        """Wait until every chunk taken in is written; raise what went wrong writing."""
        self.close(abandon=False, timeout=None)
        self._report()
        if self.error is not None:
            raise self.error

    def close(self, abandon: bool = True, timeout: float | None = 10.0) -> bool:
        """Stop the writing thread, then the hashing one (idempotent): at once, leaving what
        is queued unwritten (``abandon``), or once everything is written and hashed. False if
        the writing thread is still at work after ``timeout`` seconds (a disk that stalls)."""
        if self._thread.is_alive():
            if abandon:
                self.failed = self.failed or "abandoned"
            with contextlib.suppress(queue.Full):
                self._todo.put(None, timeout=timeout)
            self._thread.join(timeout)
        stopped = not self._thread.is_alive()
        if stopped:  # nothing more can be handed to the hashing thread
            self._hasher.close(timeout)
        return stopped

    def sha256(self) -> str:
        """The hash as received, or re-read from the file if chunks came out of order."""
        if self._in_order:
            return self._hasher.hexdigest()
        digest = hashlib.sha256()
        offset = 0
        while data := os.pread(self.fd, READ_SIZE, offset):
            digest.update(data)
            offset += len(data)
        return digest.hexdigest()


class _Hasher:
    """The SHA-256 of the bytes handed over, in order, on a thread of its own (hashlib
    releases the interpreter lock, so it runs beside the decoding and writing of the next
    chunk). At most ``ahead`` chunks wait for it."""

    def __init__(self, ahead: int) -> None:
        self._digest = hashlib.sha256()
        self._todo: queue.Queue[bytes | None] = queue.Queue(ahead)
        self._thread = threading.Thread(target=self._run, name="warren-restore-hash", daemon=True)
        self._thread.start()

    def add(self, data: bytes) -> None:
        self._todo.put(data)

    def _run(self) -> None:
        while (data := self._todo.get()) is not None:
            self._digest.update(data)

    def close(self, timeout: float | None) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._todo.put(None, timeout=timeout)
            self._thread.join(timeout)

    def hexdigest(self) -> str:
        """Once closed: the hash of everything added."""
        if self._thread.is_alive():
            raise RuntimeError("the hashing thread is still at work")
        return self._digest.hexdigest()


class _ReplicaProblem(Exception):
    def __init__(self, worker: str, error: WarrenError) -> None:
        super().__init__(str(error))
        self.worker = worker
        self.error = error


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
