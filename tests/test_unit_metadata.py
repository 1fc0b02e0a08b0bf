"""The metadata as safe as the data, on the in-memory broker: a catalog rebuilt from the
workers' records, and a standby manager that takes over with nothing missing."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.outcomes import Progress
from client.session import Session
from tests.stubcluster import FAST, StubCluster, wait_for

ALICE = "amqp://alice:secret@localhost:5672/%2F"


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[StubCluster]:
    c = StubCluster(tmp_path, FAST)
    try:
        yield c.start(4)
    finally:
        c.stop_all()


def listing(s: Session) -> dict[str, list[tuple[int, str, int]]]:
    """Every file with its versions, as a user sees them."""
    return {f.name: [(v.version, v.sha256, v.mode) for v in s.versions(f.name)] for f in s.files()}


def fill(s: Session, tmp_path: Path) -> None:
    """Three versions of a, b deleted, c's first version deleted, a small-file pack."""
    src = tmp_path / "src"
    for i in range(3):
        src.write_bytes(os.urandom(100_000 + i))
        s.upload(src, "docs/a.bin", 2)
    src.write_bytes(b"bee" * 1000)
    s.upload(src, "b.txt", 2)
    s.delete("b.txt")
    for data in (b"c1" * 500, b"c2" * 500):
        src.write_bytes(data)
        s.upload(src, "c.txt", 2)
    s.delete("c.txt", version=1)
    items = []
    for i in range(5):
        p = tmp_path / f"small{i}"
        p.write_bytes(f"small {i}".encode())
        os.chmod(p, 0o640)
        items.append((p, f"smalls/{i}"))
    s.upload_many(items, 2, lambda _n: Progress(), lambda *_: None)


def test_a_manager_started_on_an_empty_data_dir_rebuilds_the_catalog(
    stub: StubCluster, tmp_path: Path
) -> None:
    with stub.session(amqp_url=ALICE) as s:
        fill(s, tmp_path)
        before = listing(s)
    assert "b.txt" not in before and [v for v, _, _ in before["c.txt"]] == [2]

    stub.kill("manager")
    shutil.rmtree(tmp_path / "manager")
    stub.start_manager()

    with stub.session(amqp_url=ALICE) as s:
        wait_for(lambda: listing(s) == before, what="the rebuilt listing")
        s.download("docs/a.bin", tmp_path / "v1", version=1)
        # New versions go on from where they were, not from 1
        (tmp_path / "src").write_bytes(b"fourth")
        wait_for(lambda: _uploads(s, tmp_path), what="uploads to be taken again")
        assert [v.version for v in s.versions("docs/a.bin")] == [1, 2, 3, 4]


def _uploads(s: Session, tmp_path: Path) -> bool:
    try:
        s.upload(tmp_path / "src", "docs/a.bin", 2)
    except Exception:  # noqa: BLE001 - "catching up" until every worker has reported
        return False
    return True


def test_a_standby_manager_takes_over_with_nothing_missing(
    stub: StubCluster, tmp_path: Path
) -> None:
    standby = stub.start_manager("standby")
    with stub.session(amqp_url=ALICE) as s:
        fill(s, tmp_path)
        before = listing(s)
    assert standby._standing_by and standby._conn is None  # it never took a request

    stub.kill("manager")  # the active one
    with stub.session(amqp_url=ALICE) as s:
        wait_for(lambda: listing(s) == before, what="the standby's listing")
        wait_for(lambda: _uploads(s, tmp_path), what="the standby to take uploads")
        assert [v.version for v in s.versions("docs/a.bin")] == [1, 2, 3, 4]

    stub.start_manager()  # the old one comes back: it stands by
    with stub.session(amqp_url=ALICE) as s:
        s.delete("docs/a.bin", version=4)
        assert [v.version for v in s.versions("docs/a.bin")] == [1, 2, 3]
    assert stub.managers["manager"]._standing_by


def test_never_two_active_managers(tmp_path: Path) -> None:
    c = StubCluster(tmp_path, dataclasses.replace(FAST))
    try:
        c.start_manager("m1")
        c.start_manager("m2")
        c.start_manager("m3")
        wait_for(
            lambda: (
                sum(not m._standing_by and m._conn is not None for m in c.managers.values()) == 1
            ),
            what="one active manager",
        )
        active = [k for k, m in c.managers.items() if not m._standing_by][0]
        c.kill(active)
        wait_for(
            lambda: (
                sum(
                    not m._standing_by and m._conn is not None and m._conn.is_open
                    for k, m in c.managers.items()
                    if k != active
                )
                == 1
            ),
            what="exactly one of the others to take over",
        )
    finally:
        c.stop_all()
