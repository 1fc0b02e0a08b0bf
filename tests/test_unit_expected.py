"""Which uploads a worker takes chunks for, and from whom: kept across a restart, expired
with the upload, and a log that does not grow without end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from worker import expected
from worker.expected import Expected

A, B = "a" * 32, "b" * 32


def test_what_the_manager_placed_is_still_expected_after_a_restart(tmp_path: Path) -> None:
    log = tmp_path / "w1" / "expected.log"
    Expected(log, keep=3600).add([(A, "alice smith", ()), (B, "w1", ())])
    again = Expected(log, keep=3600)
    assert (again.sender(A), again.sender(B), again.sender("c" * 32)) == ("alice smith", "w1", None)


def test_entries_end_with_their_upload_and_leave_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "expected.log"
    e = Expected(log, keep=1000)
    e.add([(A, "alice", ()), (B, "bob", ())])
    e.finished(B)  # done here: kept a while for redeliveries, not for the whole expiry
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + expected.AFTER_FINISH + 1)
    assert e.sender(B) is None and e.sender(A) == "alice"
    monkeypatch.setattr(time, "time", lambda: now + 1001)
    assert Expected(log, keep=1000).sender(A) is None
    assert log.read_text() == ""  # compacted at the start


def test_the_log_is_compacted_as_uploads_come_and_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(expected, "PRUNE_EVERY", 10)
    log = tmp_path / "expected.log"
    e = Expected(log, keep=100)
    now = time.time()
    for i in range(10):
        e.add([(f"{i:032x}", "alice", ())])
    monkeypatch.setattr(time, "time", lambda: now + 200)  # all of those expired
    for i in range(10, 20):
        e.add([(f"{i:032x}", "alice", ())])
    assert len(log.read_text().splitlines()) == 10  # the expired ten are gone from it
    assert e.sender(f"{19:032x}") == "alice" and e.sender(f"{0:032x}") is None


def test_the_placed_chain_is_kept_across_a_restart_and_older_lines_still_read(
    tmp_path: Path,
) -> None:
    log = tmp_path / "expected.log"
    log.write_text(f"{B} {time.time()} bob smith\n")  # a line from before chains were kept
    Expected(log, keep=3600).add([(A, "alice", ("w1", "w2"))])
    again = Expected(log, keep=3600)
    assert (again.sender(A), again.chain(A)) == ("alice", ("w1", "w2"))
    assert (again.sender(B), again.chain(B)) == ("bob smith", ())
