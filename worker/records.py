"""The records a worker keeps beside its blobs (``records.log``): the version records of
what it holds and the deletions since, so that a manager whose catalog is lost rebuilds it
from the workers (docs/operations.md, "Metadata").

Each is sealed with the manager's key (``manager/records.py``): this worker keeps them and
hands them back, and can neither read nor forge them. A version record comes with the
SHA-256 of the content it names, in the clear, so the worker returns only the records of
blobs it still holds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from warren.messages import HEX64
from worker.disk import write_all

LOG = "records.log"


def append_records(root: Path, lines: list[dict[str, Any]]) -> None:
    """Append to ``records.log`` (one JSON object a line: ``{sha256, sealed}`` for a
    version, ``{forget}`` for a deletion) and sync it: the names of what this worker holds
    survive the loss of the manager's catalog.

    An append the disk refuses (full) is cut off again before the error goes up: a line
    half written would join the next one and lose it too."""
    if not lines:
        return
    text = "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)
    fd = os.open(root / LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        end = os.fstat(fd).st_size
        try:
            write_all(fd, memoryview(text.encode()), end)
            os.fsync(fd)
        except OSError:
            os.ftruncate(fd, end)
            raise
    finally:
        os.close(fd)


def read_records(
    root: Path, held: Callable[[str], bool]
) -> tuple[list[tuple[str, str]], list[str]]:
    """((sha256, sealed record) of the blobs ``held`` here, sealed deletions), from the log,
    each once. A line cut short by a crash, or of a format this version does not write, is
    skipped."""
    adds: dict[tuple[str, str], None] = {}
    forgotten: dict[str, None] = {}
    try:
        text = (root / LOG).read_text()
    except FileNotFoundError:
        return [], []
    for line in text.split("\n"):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        sha256, sealed, forget = entry.get("sha256"), entry.get("sealed"), entry.get("forget")
        if isinstance(forget, str):
            forgotten[forget] = None
        elif isinstance(sealed, str) and isinstance(sha256, str) and HEX64.match(sha256):
            adds[(sha256, sealed)] = None
    return [a for a in adds if held(a[0])], list(forgotten)
