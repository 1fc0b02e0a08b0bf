"""Upload files through the real pipeline and restore them byte for byte."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client import session
from tests.cluster import Cluster, MakeCluster
from warren import chunkseal
from warren.broker import Connection
from warren.config import Settings

MIB = 1024 * 1024

# (file name, size): empty, one byte, odd sizes around chunk borders, tens of MiB.
FILES = [
    ("empty.bin", 0),
    ("one.bin", 1),
    ("odd size.dat", 1_234_567),
    ("exactly three chunks.raw", 3 * MIB),
    ("chunk plus one.raw", MIB + 1),
    ("Ünïcødé naïve résumé 日本語 файл.txt", 4097),
    ("big.bin", 24 * MIB + 13),
]


def make_file(folder: Path, name: str, size: int) -> Path:
    """Random content, so each upload is its own blob on the workers."""
    path = folder / name
    path.write_bytes(os.urandom(size))
    return path


def confirmed_workers(out: str, name: str) -> set[str]:
    """The workers the client names on its "stored NAME (...) on w1 (primary), ..." line."""
    line = next(ln for ln in out.splitlines() if ln.strip().startswith(f"stored {name} ("))
    return {part.split(" (")[0].strip() for part in line.split(" on ", 1)[1].split(", ")}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("replicas", [2, 3])
def test_round_trip_many_files(cluster: Cluster, tmp_path: Path, replicas: int) -> None:
    # Given files of awkward sizes and names
    src = tmp_path / "src"
    src.mkdir()
    paths = [make_file(src, f"r{replicas} {name}", size) for name, size in FILES]

    # When they are uploaded in one command
    res = cluster.client("upload", *map(str, paths), "--replicas", str(replicas)).ok()

    # Then every file is confirmed by `replicas` distinct workers, named in the output
    listed = cluster.files()
    for path in paths:
        entry = listed[path.name]
        assert entry["size"] == path.stat().st_size
        assert entry["sha256"] == sha(path)
        confirmed = confirmed_workers(res.out, path.name)
        assert len(confirmed) == replicas
        assert confirmed <= set(entry["replicas"])
        # ... and its first sealed chunk (where its record lives) is on exactly those
        # workers' disks, every chunk has `replicas` copies hashing to their names, and every
        # copy opens with the owner's key to the file's bytes. (An empty file has no chunks.)
        if path.stat().st_size:
            assert set(entry["replicas"]) == confirmed
            assert cluster.holders_on_disk(entry["sha256"]) == confirmed
            assert cluster.copies_on_disk(entry["sha256"]) >= replicas
        assert cluster.stored(entry["sha256"]) == path.read_bytes()

    # And every file restores byte for byte
    out = tmp_path / "out"
    out.mkdir()
    for path in paths:
        dest = out / path.name
        res = cluster.client("download", path.name, "-o", str(dest)).ok()
        assert "SHA-256 verified" in res.out
        assert dest.read_bytes() == path.read_bytes()


def test_primary_and_backup_are_distinct_and_spread(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # Given four small files uploaded one after another to four empty workers (the least
    # used go first: on the module's cluster, earlier tests' files would decide)
    fresh = make_cluster()
    fresh.start_all(4)
    chains = []
    for i in range(4):
        p = make_file(tmp_path, f"spread-{i}.txt", 1000)
        fresh.client("upload", str(p)).ok()
        # The chain the manager placed its chunk on (its log), not the catalog's replica
        # list, which could not list a worker twice
        chain = fresh.last_chain()
        chains.append(chain)
        # Then each chain names two distinct workers, and they are the ones that hold it
        assert len(chain) == 2 and chain[0] != chain[1], chain
        assert sorted(fresh.files()[p.name]["replicas"]) == sorted(chain)
        assert fresh.holders_on_disk(sha(p)) == set(chain)
    # And they are not all on the same pair
    assert len({w for c in chains for w in c}) > 2, chains


def test_status_reports_workers_and_replication(cluster: Cluster) -> None:
    st = cluster.status()
    assert {w["name"] for w in st["workers"]} == {"w1", "w2", "w3", "w4"}
    for w in st["workers"]:
        assert w["alive"] is True
        assert {"free_bytes", "used_bytes", "files"} <= set(w)
        assert w["free_bytes"] > 0
    assert st["under_replicated"] == 0


def test_same_name_again_replaces_the_listed_version(cluster: Cluster, tmp_path: Path) -> None:
    p = tmp_path / "notes.txt"
    p.write_text("first")
    cluster.client("upload", str(p)).ok()
    p.write_text("second version")
    cluster.client("upload", str(p)).ok()
    assert cluster.files()["notes.txt"]["size"] == len("second version")
    dest = tmp_path / "restored.txt"
    cluster.client("download", "notes.txt", "-o", str(dest)).ok()
    assert dest.read_text() == "second version"


def test_status_watch_streams_json_lines_until_interrupted(cluster: Cluster) -> None:
    # Given `status --watch --json` running in a pipe
    proc = cluster.client_process("status", "--watch", "--json", "--interval", "0.3")
    assert proc.stdout is not None
    # When three refreshes have come
    lines = [json.loads(proc.stdout.readline()) for _ in range(3)]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=20)
    # Then each is a whole status object, and Ctrl-C ends it cleanly
    for st in lines:
        assert {"workers", "under_replicated", "uploads_in_flight", "repairs_in_flight"} <= set(st)
        assert len(st["workers"]) == 4
    assert proc.returncode == 130
    assert "Traceback" not in err.decode()


def test_many_small_files_in_one_command(cluster: Cluster, tmp_path: Path) -> None:
    # Given 150 small files
    paths = [make_file(tmp_path, f"small {i:03}.txt", 100 + i) for i in range(150)]
    # When they are uploaded in one command (pipelined)
    res = cluster.client("upload", *map(str, paths)).ok()
    # Then every one is confirmed on two workers and, as soon as the command ends, listed
    assert res.out.count("  stored small ") == 150
    assert "not recorded" not in res.err
    listed = cluster.files()
    for p in paths:
        assert len(listed[p.name]["replicas"]) == 2
        assert listed[p.name]["sha256"] == sha(p)


REQUEST_TIMEOUT = 3


def test_files_slow_to_read_do_not_make_the_manager_look_silent(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given files of a few chunks, each taking longer to begin reading and cutting than the
    # manager is given to answer (as large files on a slow disk do), in one command. (The
    # manager is given seconds, not a fraction of one: on a busy machine an answer may well
    # take that long.)
    paths = [make_file(tmp_path, f"slow {i}.bin", 3 * MIB + i) for i in range(3)]

    def slow_cut(path: Path, params: chunkseal.ChunkParams, seed: int) -> Iterator[bytes]:
        time.sleep(REQUEST_TIMEOUT + 0.5)
        yield from chunkseal_cut(path, params, seed)

    chunkseal_cut = chunkseal.cut
    monkeypatch.setattr(chunkseal, "cut", slow_cut)
    cluster.ensure_key()  # this session is the client: its owner needs a key
    settings = Settings.load(environ=cluster.env(WARREN_REQUEST_TIMEOUT=str(REQUEST_TIMEOUT)))
    results: dict[str, object] = {}

    # When they are uploaded together
    with session.Session(settings, Connection) as s:
        s.upload_many(
            [(p, p.name) for p in paths],
            2,
            lambda _name: session.Progress(),
            results.__setitem__,
        )

    # Then every one is stored on two workers: reading never kept the answers unread
    assert {name: type(r).__name__ for name, r in results.items()} == {
        p.name: "UploadResult" for p in paths
    }
    listed = cluster.files()
    for p in paths:
        assert listed[p.name]["sha256"] == sha(p)
        assert cluster.holders_on_disk(sha(p)) == set(listed[p.name]["replicas"])
        assert cluster.copies_on_disk(sha(p)) >= 2


def test_status_watch_without_a_terminal_or_json_is_a_usage_error(cluster: Cluster) -> None:
    res = cluster.client("status", "--watch")
    assert res.code == 2
    assert "needs a terminal" in res.err
