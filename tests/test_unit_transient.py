"""Transient refusals on the in-memory broker: a request turned away for a moment (the
manager catching up after a restart, a request queue electing its leader) is asked again
by the client within its request timeout; only what outlasts it is exit 4."""

from __future__ import annotations

import dataclasses
import io
import os
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from client import connecting
from client.outcomes import UploadResult
from client.session import Progress
from tests.stubcluster import StubCluster
from warren import messages as m
from warren.errors import Busy, Unavailable, WarrenError
from warren.testing import Message
from warren.topology import MANAGER_EVENTS, MANAGER_REQUESTS


def hold_reports(stub: StubCluster, seconds: float | None) -> None:
    """Restart the manager with its workers' inventories held back for ``seconds`` (None:
    for good): until they come it is catching up, and turns uploads and deletes away."""
    held: list[Message] = []

    def intercept(msg: Message) -> list[Message]:
        if msg.type == m.Inventory.TYPE and stub.broker.intercept is intercept:
            held.append(msg)
            return []
        return [msg]

    def release() -> None:
        stub.broker.intercept = None
        conn = stub.broker.connect(stub.settings, "late reports")
        conn.open()
        for msg in held:
            conn.publish(MANAGER_EVENTS, msg.body, type=msg.type)
        conn.close()

    stub.kill("manager")
    stub.broker.intercept = intercept
    stub.start_manager()
    # Caught up no sooner than when every live worker has asked to report, and been held.
    deadline = time.monotonic() + 5
    while len(held) < len(stub.workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(held) == len(stub.workers), "the workers were not asked to report"
    if seconds is not None:
        threading.Timer(seconds, release).start()


def requests_of(stub: StubCluster, kind: type[m.Message]) -> int:
    return sum(p.queue == MANAGER_REQUESTS and p.type == kind.TYPE for p in stub.broker.published)


def test_an_upload_asked_while_the_manager_catches_up_succeeds_once_it_has(
    stub: StubCluster, tmp_path: Path
) -> None:
    # Given a client with its owner key, and a manager restarted whose workers' reports
    # take 1.5 s more to come
    (tmp_path / "x.bin").write_bytes(os.urandom(3000))
    with stub.session() as s:
        s.owner_keys()  # (fetched once a session: what is asked again is the pack)
        hold_reports(stub, 1.5)
        # When a file is uploaded at once (request timeout 5 s)
        waits: list[str | None] = []
        started = time.monotonic()
        s.waiting = waits.append
        result = s.upload(tmp_path / "x.bin", "x.bin", 2)
        took = time.monotonic() - started
        names = [f.name for f in s.files()]
    # Then it waited the catching up out, asked again, and is on two workers
    assert len(result.confirmed) == 2
    assert 1.0 < took < stub.settings.request_timeout, took
    assert requests_of(stub, m.PackRequest) > 1
    assert names == ["x.bin"]
    # And it said what it waited for, then that it was done waiting
    assert any(w and "catching up" in w for w in waits), waits
    assert waits[-1] is None


def test_a_delete_asked_while_the_manager_catches_up_succeeds_once_it_has(
    stub: StubCluster, tmp_path: Path
) -> None:
    # Given a file stored, and a manager restarted whose workers' reports take 1.5 s more
    (tmp_path / "x.bin").write_bytes(os.urandom(3000))
    with stub.session() as s:
        s.upload(tmp_path / "x.bin", "x.bin", 2)
    hold_reports(stub, 1.5)
    # When it is deleted at once
    waits: list[str | None] = []
    started = time.monotonic()
    with stub.session() as s:
        s.waiting = waits.append
        gone = s.delete("x.bin")
        took = time.monotonic() - started
        names = [f.name for f in s.files()]
    # Then the delete waited the catching up out, and the file is gone
    assert gone == (1,)
    assert 1.0 < took < stub.settings.request_timeout, took
    assert names == []
    assert any(w and "catching up" in w for w in waits), waits
    assert waits[-1] is None


def test_an_upload_that_outlasts_the_request_timeout_is_exit_4_in_one_sentence(
    stub: StubCluster, tmp_path: Path
) -> None:
    # Given a client with its owner key, and a manager that stays catching up (its
    # workers' reports never come)
    (tmp_path / "x.bin").write_bytes(b"x" * 3000)
    with stub.session(request_timeout=1.0) as s:
        s.owner_keys()
        hold_reports(stub, None)
        # When an upload and a delete are asked with a request timeout of 1 s
        started = time.monotonic()
        with pytest.raises(Unavailable) as upload:
            s.upload(tmp_path / "x.bin", "x.bin", 2)
        took = time.monotonic() - started
        with pytest.raises(Unavailable) as delete:
            s.delete("x.bin")
    # Then each is exit 4, after asking for about that second, said in one sentence
    assert 0.8 < took < 2.5, took
    for exc in (upload.value, delete.value):
        assert isinstance(exc, Busy)
        assert exc.exit_code == 4
        assert str(exc).startswith("after 1 s of asking, the manager is catching up")
        assert "\n" not in str(exc)
    assert requests_of(stub, m.PackRequest) > 2


def test_requests_their_queue_nacks_for_a_moment_are_asked_again(
    stub: StubCluster, tmp_path: Path
) -> None:
    # Given the manager's request queue nacking the first requests, for 1 s (a quorum queue
    # electing its leader)
    items = [(tmp_path / f"s{i}", f"s{i}") for i in range(5)]
    for path, _ in items:
        path.write_bytes(os.urandom(500))
    until = 0.0
    nacked: list[str] = []

    def refuse(msg: Message) -> bool:
        if msg.queue == MANAGER_REQUESTS and time.monotonic() < until:
            nacked.append(msg.type)
            return True
        return False

    # When a pack of small files is uploaded (by a client with its owner key), then the
    # files listed
    outcomes: dict[str, UploadResult | WarrenError] = {}
    with stub.session() as s:
        s.owner_keys()
        until = time.monotonic() + 1.0
        stub.broker.refuse = refuse
        s.upload_many(items, 2, lambda _n: Progress(), outcomes.__setitem__)
        listed = {f.name: len(f.replicas) for f in s.files()}
    # Then the pack was asked again until taken, and every file is on two workers
    assert all(not isinstance(o, WarrenError) for o in outcomes.values()), outcomes
    assert listed == {name: 2 for _, name in items}
    assert nacked.count(m.PackRequest.TYPE) > 1, nacked


def test_a_listing_its_queue_nacks_for_a_moment_is_asked_again(stub: StubCluster) -> None:
    # Given the manager's request queue nacking every request for 1 s
    until = time.monotonic() + 1.0
    nacked: list[float] = []

    def refuse(msg: Message) -> bool:
        if msg.queue == MANAGER_REQUESTS and time.monotonic() < until:
            nacked.append(time.monotonic())
            return True
        return False

    stub.broker.refuse = refuse
    # When the status is asked at once
    with stub.session() as s:
        status = s.status()
    # Then it is answered once the queue takes it, after several nacks
    assert sum(w.alive for w in status.workers) == 4
    assert len(nacked) > 1


@pytest.mark.parametrize("quiet", [False, True])
def test_a_terminal_shows_the_wait_for_a_busy_cluster_unless_quiet(
    stub: StubCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quiet: bool
) -> None:
    # Given a stored file, a manager catching up for 1 s more, and a terminal
    (tmp_path / "x.bin").write_bytes(os.urandom(3000))
    with stub.session() as s:
        s.upload(tmp_path / "x.bin", "x.bin", 2)
    hold_reports(stub, 1.0)
    monkeypatch.setattr(connecting, "Connection", stub.broker.connect)
    err = Console(file=io.StringIO(), force_terminal=True, width=200)
    # When the command deletes the file (quiet: with -q or --json)
    session = connecting.open_session(
        dataclasses.replace(stub.settings, client_name="tester"), err, quiet=quiet
    )
    try:
        assert session.delete("x.bin") == (1,)
    finally:
        session.close()
    # Then the terminal said what it waited for, unless quiet
    shown = err.file.getvalue()  # type: ignore[attr-defined]
    assert ("waiting for the cluster" in shown) is not quiet, shown
