"""A backup tool, not a file drop: folders, versions, delete that gives space back, dedup,
with the real client, manager and workers on a real broker."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import (
    Cluster,
    MakeCluster,
    bytes_on_disk,
    chunks_on_disk,
    wait_for,
    while_running,
)
from tests.test_faults import random_file

MIB = 1024 * 1024
WORKERS = ("w1", "w2", "w3", "w4")


@pytest.fixture
def quick_gc(make_cluster: MakeCluster) -> Iterator[Cluster]:
    """Four workers and a manager that deletes unused content after 1 s, not an hour."""
    c = make_cluster(WARREN_GC_DELAY="1")
    c.start_all(4)
    yield c


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def used_on_disk(c: Cluster) -> int:
    """Bytes in every worker's blob store."""
    return sum(p.stat().st_size for p in (c.base / "data").glob("w*/blobs/*/*") if p.is_file())


def test_a_folder_tree_round_trip_keeps_names_modes_and_times(
    quick_gc: Cluster, tmp_path: Path
) -> None:
    # Given a folder with Unicode names, a subfolder, an empty file, a link and modes
    tree = tmp_path / "photos"
    (tree / "2024 été").mkdir(parents=True)
    (tree / "2024 été" / "plage ☀.jpg").write_bytes(os.urandom(300_000))
    (tree / "notes.txt").write_text("hello")
    (tree / "empty").write_bytes(b"")
    os.chmod(tree / "notes.txt", 0o600)
    os.utime(tree / "notes.txt", (1_500_000_000, 1_500_000_000))
    (tree / "link").symlink_to(tree / "notes.txt")

    # When the folder is uploaded and restored elsewhere
    up = quick_gc.client("upload", str(tree))
    listed = quick_gc.client("list", "photos/", "--json").ok().json()
    down = quick_gc.client("download", "photos/", "-o", str(tmp_path / "back"))

    # Then every regular file is stored under photos/..., the link was left out (and said),
    # and the tree comes back byte for byte with its mode and modification time
    assert up.code == 0, up.err
    assert "left out 1 symbolic links" in up.err
    assert sorted(f["name"] for f in listed) == [
        "photos/2024 été/plage ☀.jpg",
        "photos/empty",
        "photos/notes.txt",
    ]
    assert down.code == 0, down.err
    for rel in ("2024 été/plage ☀.jpg", "empty", "notes.txt"):
        assert (tmp_path / "back" / rel).read_bytes() == (tree / rel).read_bytes()
    st = (tmp_path / "back" / "notes.txt").stat()
    assert (st.st_mode & 0o777, int(st.st_mtime)) == (0o600, 1_500_000_000)


def test_three_versions_restore_the_first_delete_the_middle(
    quick_gc: Cluster, tmp_path: Path
) -> None:
    src = tmp_path / "a.txt"
    contents = [b"first\n" * 1000, b"second\n" * 1000, b"third\n" * 1000]
    for data in contents:
        src.write_bytes(data)
        quick_gc.client("upload", str(src)).ok()

    [entry] = quick_gc.client("list", "--json").ok().json()
    assert (entry["version"], entry["versions"]) == (3, 3)
    quick_gc.client("download", "a.txt", "--version", "1", "-o", str(tmp_path / "v1")).ok()
    assert (tmp_path / "v1").read_bytes() == contents[0]

    quick_gc.client("delete", "a.txt", "--version", "2").ok()
    kept = quick_gc.client("versions", "a.txt", "--json").ok().json()
    assert [v["version"] for v in kept] == [1, 3]
    gone = quick_gc.client("download", "a.txt", "--version", "2", "-o", str(tmp_path / "v2"))
    assert gone.code == 3 and "version 2" in gone.err
    unknown = quick_gc.client("delete", "nope.txt")
    assert unknown.code == 3 and unknown.err.count("\n") == 1 and "Traceback" not in unknown.err


def test_delete_gives_the_space_back_and_keeps_shared_content(
    quick_gc: Cluster, tmp_path: Path
) -> None:
    # Given a 24 MiB file on two workers, and a 1 MiB file stored under two names
    big = random_file(tmp_path, "big.bin", 24 * MIB)
    shared = random_file(tmp_path, "shared.bin", MIB)
    quick_gc.client("upload", str(big)).ok()
    quick_gc.client("upload", str(shared)).ok()
    quick_gc.client("upload", str(shared), "--name", "copy.bin").ok()
    before = used_on_disk(quick_gc)
    assert quick_gc.copies_on_disk(sha(big)) == 2
    big_chunks = quick_gc.blobs_on_disk(quick_gc.chunks(sha(big)))
    big_bytes = sum(quick_gc.blob(w, b).stat().st_size for b, ws in big_chunks.items() for w in ws)

    # When the big file and one name of the shared content are deleted
    quick_gc.client("delete", "big.bin").ok()
    quick_gc.client("delete", "shared.bin").ok()

    # Then its sealed chunks (two copies of 24 MiB and a little) leave the workers' disks;
    # the shared content stays and restores
    wait_for(
        lambda: not any(quick_gc.blobs_on_disk(list(big_chunks)).values()),
        what="the big file's chunk blobs to go",
    )
    assert 48 * MIB <= big_bytes < 49 * MIB
    assert before - used_on_disk(quick_gc) == big_bytes
    assert quick_gc.copies_on_disk(sha(shared)) == 2
    quick_gc.client("download", "copy.bin", "-o", str(tmp_path / "copy")).ok()
    assert sha(tmp_path / "copy") == sha(shared)


def test_identical_content_is_not_sent_again(cluster: Cluster, tmp_path: Path) -> None:
    # Given a file stored once
    data = random_file(tmp_path, "first.bin", 16 * MIB)
    cluster.client("upload", str(data)).ok()
    packs, blobs = pack_lines(cluster), chunks_on_disk(cluster, WORKERS)

    # When the same content is uploaded under another name
    again = cluster.client("upload", str(data), "--name", "second.bin", "--json").ok()

    # Then it is recorded, on the same workers, and not one chunk went to any worker
    # (make bench times it against the first upload)
    [line] = [json.loads(x) for x in again.out.splitlines()]
    assert line["bytes_sent"] == 0 and line["deduplicated"], line
    assert (pack_lines(cluster), chunks_on_disk(cluster, WORKERS)) == (packs, blobs)
    listed = cluster.files()
    assert listed["second.bin"]["sha256"] == listed["first.bin"]["sha256"]
    assert listed["second.bin"]["replicas"] == listed["first.bin"]["replicas"]


def test_content_held_too_few_times_is_stored_again_and_small_files_are_not_resent(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given a file stored on one worker only, and a folder of small files stored once
    data = random_file(tmp_path, "one.bin", 4 * MIB)
    cluster.client("upload", str(data), "--replicas", "1").ok()
    small = tmp_path / "small"
    small.mkdir()
    for i in range(40):
        (small / f"{i}.txt").write_bytes(os.urandom(2_000))
    cluster.client("upload", str(small)).ok()

    # When the same content is uploaded under other names, the big one with 3 replicas
    big = cluster.client("upload", str(data), "--name", "three.bin", "--replicas", "3", "--json")
    packs_before = pack_lines(cluster)
    again = cluster.client("upload", str(small), "--json").ok()  # new versions, same bytes
    few = [json.loads(line) for line in again.out.splitlines()]

    # Then the big one's chunks, held too few times, are sent to a chain of three (sealed
    # chunks held too few times are placed anew, not copied worker to worker) and the
    # upload ends once all three copies are on disk; no small file travels again
    assert big.code == 0, big.err
    result = json.loads(big.out)
    assert result["bytes_sent"] > 4 * MIB and not result["deduplicated"]
    assert len(result["replicas"]) == 3
    # (three copies of every chunk, the first on the workers named, each opening to it)
    assert set(result["replicas"]) <= cluster.holders_on_disk(sha(data))
    assert cluster.copies_on_disk(sha(data)) >= 3
    assert cluster.stored(sha(data)) == data.read_bytes()
    assert len(few) == 40 and all(f["deduplicated"] and f["bytes_sent"] == 0 for f in few)
    assert pack_lines(cluster) == packs_before
    cluster.client("download", "three.bin", "-o", str(tmp_path / "back")).ok()
    assert sha(tmp_path / "back") == sha(data)


def pack_lines(c: Cluster) -> int:
    """Packs the workers have stored so far, by their logs."""
    return sum(p.read_text().count("files stored on") for p in (c.base / "logs").glob("w*.log"))


def test_an_upload_killed_at_60_percent_sends_only_the_rest_when_run_again(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given a 128 MiB upload (two replicas) whose client is killed once 60% of it is on disk
    src = random_file(tmp_path, "big.bin", 128 * MIB)
    start = time.time() - 1  # mtimes may be a little behind the clock
    client = cluster.client_process("upload", str(src))
    while_running(
        client,
        lambda: bytes_on_disk(cluster, since=start) >= 0.6 * 2 * 128 * MIB,
        "60% on the workers' disks",
    )
    client.kill()
    client.wait(timeout=30)

    # When the same upload is run again
    res = cluster.client("upload", str(src), "--json").ok()

    # Then it sends only what the primary did not have, and the file restores byte for byte
    [line] = [json.loads(x) for x in res.out.splitlines()]
    assert line["bytes_sent"] <= 0.45 * 128 * MIB, line
    cluster.client("download", "big.bin", "-o", str(tmp_path / "back")).ok()
    assert sha(tmp_path / "back") == sha(src)


def test_an_abandoned_upload_leaves_no_partial_bytes(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # Given a cluster that abandons uploads unfinished after 3 s, and an upload cut off
    c = make_cluster(WARREN_UPLOAD_EXPIRY="3")
    c.start_all(4)
    src = random_file(tmp_path, "big.bin", 256 * MIB)  # killed long before it is all sent
    client = c.client_process("upload", str(src))
    wait_for(lambda: chunks_on_disk(c, ("w1", "w2", "w3", "w4")) >= 8, what="chunks on disk")
    client.kill()
    client.wait(timeout=30)

    # Then within the expiry it is no longer in flight, nothing half-written is left on any
    # worker, and no version of it is listed. (Its chunks stored whole stay pinned for a
    # run of the same upload to find, RESERVE_FOR seconds, then go as garbage.)
    def incoming() -> list[Path]:
        return [p for p in (c.base / "data").glob("w*/incoming/*") if p.is_file()]

    wait_for(lambda: c.status()["uploads_in_flight"] == 0, timeout=60, what="the upload abandoned")
    wait_for(lambda: not incoming(), timeout=30, what="the partial data to go")
    assert "big.bin" not in c.files()
