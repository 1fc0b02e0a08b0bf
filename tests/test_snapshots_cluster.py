"""Snapshots on a real RabbitMQ node with the services as processes: a changing tree backed
up twice restores exactly each time, an unchanged tree backed up again reads nothing, forget
gives the space back, and no file name of the tree reaches any server's disk."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from devtools.localnode import LocalNode
from tests.cluster import Cluster, MakeCluster, wait_for

pytestmark = pytest.mark.integration

FILES = 300


def summary(out: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]
    last: dict[str, Any] = lines[-1]
    assert last.get("message_type") == "summary", last
    return last


def tree_state(root: Path) -> dict[str, tuple[str, int, int, bytes]]:
    """Every path under ``root``: its kind, mode, mtime (whole seconds) and bytes."""
    state = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if path.is_symlink():
            state[rel] = ("link", 0, 0, os.readlink(path).encode())
        elif path.is_dir():
            state[rel] = ("dir", st.st_mode & 0o7777, 0, b"")
        else:
            state[rel] = ("file", st.st_mode & 0o7777, int(st.st_mtime), path.read_bytes())
    return state


def blob_bytes(c: Cluster) -> int:
    return sum(
        p.stat().st_size
        for w in ("w1", "w2", "w3", "w4")
        for p in c.data_dir(w).glob("blobs/*/*")
        if p.is_file()
    )


def test_snapshots_of_a_changing_tree_restore_exactly_and_forget_gives_space_back(
    make_cluster: MakeCluster, rabbit: LocalNode, tmp_path: Path
) -> None:
    c = make_cluster(WARREN_GC_DELAY="1")
    c.start_all(4)
    c.wait_alive(["w1", "w2", "w3", "w4"])
    started = time.time() - 1
    home = tmp_path / "home"
    src = home / "project-nebula"
    (src / "empty-folder").mkdir(parents=True)
    for i in range(FILES):
        d = src / f"dir-{i % 20:02d}"
        d.mkdir(exist_ok=True)
        (d / f"quarterly-report-{i:04d}.txt").write_bytes(os.urandom(2000 + i))
    big = src / "archive.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    os.symlink("archive.bin", src / "latest")
    first = tree_state(src)
    one = summary(c.client("backup", str(src), "--json").ok().out)
    assert one["files_new"] == FILES + 1

    # Changed, added, deleted, chmod-ed.
    (src / "dir-00" / "quarterly-report-0000.txt").write_bytes(b"changed")
    (src / "dir-01" / "new-file.txt").write_bytes(b"added")
    (src / "dir-02" / "quarterly-report-0002.txt").unlink()
    os.chmod(src / "dir-03" / "quarterly-report-0003.txt", 0o600)
    second = tree_state(src)
    two = summary(c.client("backup", str(src), "--json").ok().out)
    assert (two["files_new"], two["files_changed"]) == (1, 2), two
    assert two["bytes_sent"] < 100_000, two

    # The same tree again: nothing read, next to nothing sent, a fraction of the time.
    t0 = time.monotonic()
    three = summary(c.client("backup", str(src), "--json").ok().out)
    assert three["files_unmodified"] == FILES + 1 and three["files_new"] == 0, three
    assert three["bytes_sent"] == 0, three
    assert time.monotonic() - t0 < 30

    ids = [s["id"] for s in c.client("snapshots", "--json").ok().json()]
    assert len(ids) == 3
    for sid, want in ((ids[0], first), (ids[1], second)):
        out = tmp_path / f"out-{sid}"
        c.client("restore", sid, "-o", str(out)).ok()
        assert tree_state(out / "project-nebula") == want

    # No name of the tree on any service's disk, nor in RabbitMQ's files.
    names = [b"quarterly-report-", b"project-nebula", b"new-file.txt"]
    servers = [p for p in c.base.iterdir() if p.is_dir()]
    for root in [*servers, rabbit.base]:
        for f in root.rglob("*"):
            if f.is_file() and (root != rabbit.base or f.stat().st_mtime >= started):
                data = f.read_bytes()
                assert not any(n in data for n in names), f"a file name in {f}"

    before = blob_bytes(c)
    c.client("forget", "--keep-last", "1", "--dry-run").ok()
    assert len(c.client("snapshots", "--json").ok().json()) == 3
    c.client("forget", "--keep-last", "1").ok()
    assert [s["id"] for s in c.client("snapshots", "--json").ok().json()] == ids[2:]
    # The first snapshot's changed and deleted files are used by no snapshot now.
    wait_for(lambda: blob_bytes(c) < before, timeout=60, what="space given back")
    out = tmp_path / "out-last"
    c.client("restore", "latest", "-o", str(out)).ok()
    assert tree_state(out / "project-nebula") == second
