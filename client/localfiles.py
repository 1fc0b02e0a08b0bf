"""The local files of an upload: what they hold, hashed on a thread of their own, and a
sentence for what is wrong with them.

Every OSError about a file the user named becomes a ``UsageError`` whose one sentence says
which file and why, so a batch can fail that file alone and go on with the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from warren.chunks import sha256_file
from warren.errors import UsageError, WarrenError

log = logging.getLogger("warren.client")

# Files up to this size travel in packs: many files to a request and to a message.
PACK_FILE_MAX = 256 * 1024


def hash_file(path: Path, progress: Callable[[int, int], None]) -> tuple[int, str]:
    """A file's size and SHA-256, or the sentence that says why it cannot be uploaded."""
    with local_file(path):
        size = path.stat().st_size
        if path.is_dir():
            raise UsageError(f"{path} is a directory, not a file.")
        if not path.is_file():
            raise UsageError(f"{path} is not a regular file.")
        done = 0

        def step(nbytes: int) -> None:
            nonlocal done
            done += nbytes
            progress(done, size)

        return size, sha256_file(path, step)


def expand(paths: list[Path], name: str | None = None) -> tuple[list[tuple[Path, str]], int]:
    """The files an upload command stores, with the names they are stored under, and how
    many symbolic links (or other non-regular files) under its folders were left out.

    A file is stored under its own name (or ``name``); a folder stands for every regular
    file under it, each stored under its path relative to the folder's parent, with ``/``
    separators (``photos`` gives ``photos/2024/a.jpg``). Links are not followed.
    """
    items: list[tuple[Path, str]] = []
    skipped = 0
    for path in paths:
        if not path.is_dir() or path.is_symlink():
            items.append((path, name or path.name))
            continue
        base = path.resolve().parent
        for folder, dirs, files in os.walk(path.resolve(), followlinks=False):
            dirs.sort()
            for entry in sorted(files):
                full = Path(folder) / entry
                if full.is_symlink() or not full.is_file():
                    skipped += 1
                    continue
                items.append((full, full.relative_to(base).as_posix()))
            skipped += sum(1 for d in dirs if (Path(folder) / d).is_symlink())
    return items, skipped


def file_mode_and_mtime(path: Path) -> tuple[int, float]:
    """The permission bits and modification time to restore the file with (0, 0.0 when
    they cannot be read: the hash will say why)."""
    try:
        st = path.stat()
    except OSError:
        return 0, 0.0
    return stat.S_IMODE(st.st_mode), st.st_mtime


def small_size(path: Path) -> int | None:
    """The size of a regular file small enough for a pack, else None."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) and st.st_size <= PACK_FILE_MAX else None


def is_small(path: Path) -> bool:
    return small_size(path) is not None


@contextlib.contextmanager
def local_file(path: Path) -> Iterator[None]:
    """The sentence for what goes wrong with a file to upload, rather than an OSError."""
    try:
        yield
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file.") from None
    except PermissionError:
        raise UsageError(f"{path}: permission denied.") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a file.") from None
    except OSError as exc:
        raise UsageError(f"{path}: cannot read it ({exc.strerror or exc}).") from None


def read_small(path: Path) -> bytes:
    """A small file's bytes, or the sentence that says why they cannot be read."""
    with local_file(path), open(path, "rb") as f:
        data = f.read(PACK_FILE_MAX + 1)
    if len(data) > PACK_FILE_MAX:
        raise UsageError(f"{path} changed size while it was being read.")
    return data


class _Stopped(Exception):
    pass


class ToHash(Protocol):
    """A file to hash (an upload): its path, where the size and hash go, and its hooks."""

    path: Path
    size: int
    sha256: str
    error: WarrenError | None
    hashed: threading.Event

    @property
    def progress(self) -> HashProgress: ...


class HashProgress(Protocol):
    def hashing(self, done: int, total: int) -> None: ...


class Hasher:
    """Hashes the files of an upload command on a thread of its own, in order.

    A large file takes seconds to hash. On the connection's thread that would leave the
    broker's confirmations and the manager's answers unread meanwhile, for as long as the
    hashing of every file in flight took: long enough, with a batch of large files, to take
    a silent manager for a dead one. ``wake`` is called after each file, so the connection's
    thread picks it up at once. The thread starts with the first file and ends with ``stop``.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._todo: queue.SimpleQueue[ToHash | None] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, up: ToHash) -> None:
        if up.hashed.is_set():  # a small file read whole: nothing to do
            self._wake()
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="warren-hash", daemon=True)
            self._thread.start()
        self._todo.put(up)

    def stop(self) -> None:
        """Give up on the files not hashed yet (the command is over)."""
        self._stopped.set()
        self._todo.put(None)

    def _run(self) -> None:
        while (up := self._todo.get()) is not None:
            try:
                up.size, up.sha256 = hash_file(up.path, self._progress(up))
            except WarrenError as exc:
                up.error = exc
            except _Stopped:
                return
            except Exception as exc:  # a bug (in a progress hook, say): fail this file only
                log.debug("hashing %s failed", up.path, exc_info=True)
                up.error = WarrenError(f"{up.path}: hashing it failed ({exc}).")
            finally:
                up.hashed.set()
            with contextlib.suppress(Exception):
                self._wake()

    def _progress(self, up: ToHash) -> Callable[[int, int], None]:
        def progress(done: int, total: int) -> None:
            if self._stopped.is_set():
                raise _Stopped
            up.progress.hashing(done, total)

        return progress
