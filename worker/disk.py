"""Writing and syncing on a worker's disk: every byte written, and made durable in as few
system calls as the platform allows."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path
from typing import cast


def write_all(fd: int, data: memoryview, offset: int) -> None:
    """Write every byte of ``data`` at ``offset`` (one pwrite may write fewer)."""
    written = 0
    while written < len(data):
        written += os.pwrite(fd, data[written:], offset + written)


def _syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2): flush a whole file system in one call (None where there is none)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return cast(Callable[[int], int], libc.syncfs)
    except (OSError, AttributeError):
        return None


_SYNCFS = _syncfs()


def sync_files(paths: list[Path]) -> None:
    """Make files (or directories) durable: one syncfs for all, else an fsync each."""
    if not paths:
        return
    if _SYNCFS is not None:
        fd = os.open(paths[0], os.O_RDONLY)
        try:
            if _SYNCFS(fd) == 0:
                return
        finally:
            os.close(fd)
    for path in paths:
        fsync_path(path)


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
