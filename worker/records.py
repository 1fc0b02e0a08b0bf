"""The version records a worker keeps beside its blobs (``records.log``): the names of what
it holds, and the versions deleted since, so that a manager whose catalog is lost rebuilds
it from the workers (docs/operations.md, "Metadata")."""

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
    """Append to ``records.log`` (one JSON object a line) and sync it: the names of what
    this worker holds survive the loss of the manager's catalog.

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
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(version records of the blobs ``held`` here, deleted versions), from the log. A line
    cut short by a crash is skipped."""
    adds: dict[tuple[str, str, int], dict[str, Any]] = {}
    forgotten: dict[tuple[str, str, int], dict[str, Any]] = {}
    try:
        text = (root / LOG).read_text()
    except FileNotFoundError:
        return [], []
    for line in text.split("\n"):
        try:
            entry = json.loads(line)
            key = (entry["owner"], entry["name"], int(entry["version"]))
        except (ValueError, KeyError, TypeError):
            continue
        if entry.get("forget"):
            forgotten[key] = {"owner": key[0], "name": key[1], "version": key[2]}
        else:
            adds[key] = entry
    kept = [
        r
        for k, r in adds.items()
        if k not in forgotten
        and isinstance(r.get("sha256"), str)
        and HEX64.match(r["sha256"])
        and held(r["sha256"])
    ]
    return kept, list(forgotten.values())
