"""Folders and files only the service that owns them may read: a manager's catalog names
every user's files, a worker's data dir holds their bytes (docs/security.md)."""

from __future__ import annotations

import os
from pathlib import Path


def private_dir(path: Path) -> None:
    """Make ``path`` (and its missing parents) and give it mode 0700, also when it was
    there already with a looser one (made by an older version, or by hand)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def private_file(path: Path) -> None:
    """Create ``path`` empty if missing, and make it 0600 whatever the umask: done before a
    library (sqlite) creates it with the umask's mode."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
