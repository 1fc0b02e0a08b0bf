"""The metadata as safe as the data, with real processes on a real broker: a catalog rebuilt
from the workers, a standby manager taking over, scrub and verify finding rot."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, MakeCluster, wait_for
from tests.test_faults import random_file
from warren import errors

MIB = 1024 * 1024


@pytest.fixture
def c(make_cluster: MakeCluster) -> Iterator[Cluster]:
    cluster = make_cluster(WARREN_SCRUB_INTERVAL="2", WARREN_GC_DELAY="1")
    cluster.start_all(4)
    yield cluster


def listing(c: Cluster) -> dict[str, tuple[int, int, str]]:
    return {n: (f["version"], f["versions"], f["sha256"]) for n, f in c.files().items()}


def story(c: Cluster, tmp_path: Path) -> None:
    """Two versions of a, b deleted, a folder."""
    src = tmp_path / "a.txt"
    for text in ("one\n", "two\n"):
        src.write_text(text * 1000)
        c.client("upload", str(src)).ok()
    (tmp_path / "b.txt").write_text("bee")
    c.client("upload", str(tmp_path / "b.txt")).ok()
    c.client("delete", "b.txt").ok()
    (tmp_path / "dir").mkdir()
    for i in range(3):
        (tmp_path / "dir" / f"f{i}").write_text(f"file {i}")
    c.client("upload", str(tmp_path / "dir")).ok()


def test_a_manager_whose_data_dir_was_deleted_rebuilds_the_listing(
    c: Cluster, tmp_path: Path
) -> None:
    story(c, tmp_path)
    before = listing(c)
    assert "b.txt" not in before and before["a.txt"][:2] == (2, 2)

    c.kill("manager")
    shutil.rmtree(c.data_dir("manager"))
    c.start("manager")

    wait_for(
        lambda: c.client("list", "--json").code == 0 and listing(c) == before,
        what="the rebuilt listing",
    )
    c.client("download", "a.txt", "--version", "1", "-o", str(tmp_path / "v1")).ok()
    assert (tmp_path / "v1").read_text() == "one\n" * 1000


def test_the_standby_takes_over_when_the_active_manager_dies(c: Cluster, tmp_path: Path) -> None:
    c.start("manager2")  # a standby, with its own (empty) data dir
    wait_for(
        lambda: "standing by" in c.log_path("manager2").read_text(), what="manager2 to stand by"
    )
    story(c, tmp_path)
    before = listing(c)

    c.kill("manager")  # kill -9 the active one
    wait_for(
        lambda: "taking over" in c.log_path("manager2").read_text(), what="manager2 to take over"
    )
    wait_for(
        lambda: c.client("list", "--json").code == 0 and listing(c) == before, what="the listing"
    )
    new = random_file(tmp_path, "new.bin", MIB)
    wait_for(lambda: c.client("upload", str(new)).code == 0, what="uploads to go on")
    assert c.files()["new.bin"]["sha256"] == hashlib.sha256(new.read_bytes()).hexdigest()

    c.start("manager")  # the old one returns: as a standby
    wait_for(
        lambda: "standing by" in c.log_path("manager").read_text().split("manager: ready")[-1],
        what="the old manager to stand by",
    )
    c.client("list").ok()


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x10
    path.write_bytes(bytes(data))


def test_scrub_finds_a_flipped_byte_and_the_file_survives_its_other_holder(
    c: Cluster, tmp_path: Path
) -> None:
    src = random_file(tmp_path, "f.bin", 3 * MIB)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    c.client("upload", str(src)).ok()
    rotted, kept = sorted(c.holders_on_disk(sha))
    first = c.chunks(sha)[0]  # its sealed first chunk, where its version record lives
    flip_a_byte(c.blob(rotted, first))

    def good() -> set[str]:
        return c.intact_copies(first)

    wait_for(lambda: list((c.data_dir(rotted) / "quarantine").glob("*")), what="scrub")
    wait_for(lambda: len(good()) == 2, what="a second good copy")
    status = {w["name"]: w for w in c.status()["workers"]}
    assert status[rotted]["damaged"] == 1

    c.kill(kept)
    c.client("download", "f.bin", "-o", str(tmp_path / "back")).ok()
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


def test_verify_reports_a_copy_damaged_between_scrubs(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    c = make_cluster()  # scrub once a week: only verify can find it
    c.start_all(4)
    src = random_file(tmp_path, "f.bin", MIB)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    c.client("upload", str(src)).ok()
    # (every copy of each of its sealed chunks: two of each)
    copies = 2 * len(c.chunks(sha))
    assert f"{copies} copies checked, 0 damaged" in c.client("verify").ok().out

    damaged = sorted(c.holders_on_disk(sha))[0]
    flip_a_byte(c.blob(damaged, c.chunks(sha)[0]))
    res = c.client("verify", "f.bin")
    assert res.code == errors.EXIT_INTEGRITY
    assert f"on {damaged}: DAMAGED" in res.out and "Traceback" not in res.err
    assert c.client("verify", "nothing.bin").code == errors.EXIT_NOT_FOUND
