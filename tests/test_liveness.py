"""Liveness under load, on real processes and a real broker.

A worker sends heartbeats from a thread and a connection that do nothing else, so neither
a large upload (writes, fsync, the final hash) nor many clients at once can make a healthy
worker look dead. Before that, a 2 GiB upload got its primary declared dead and repaired,
twice in a row. The cluster here is strict: a worker is dead after 4 s without a heartbeat.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster, MakeCluster
from tests.test_faults import random_file

GIB = 1024 * 1024 * 1024
MIB = 1024 * 1024


class StatusWatch:
    """Polls ``status`` about once a second in the background; remembers every worker it
    ever saw reported dead, and how many polls it made."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.dead: set[str] = set()
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            res = self.c.client("status", "--json")
            if res.code == 0:
                self.polls += 1
                self.dead |= {w["name"] for w in res.json()["workers"] if not w["alive"]}

    def __enter__(self) -> StatusWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def strict(make_cluster: MakeCluster) -> Iterator[Cluster]:
    c = make_cluster()
    c.start_all(4)
    yield c


def no_false_deaths(c: Cluster, watch: StatusWatch) -> None:
    assert watch.polls >= 3, "status was hardly polled: the test saw nothing"
    assert watch.dead == set()
    log = c.log_path("manager").read_text()
    assert "marked dead" not in log
    assert "repair " not in log, "a repair started: a healthy worker was taken for dead"


def test_a_2gib_upload_never_makes_a_worker_look_dead(strict: Cluster, tmp_path: Path) -> None:
    # Given a 2 GiB file, sparse but for its first MiB: its bytes cost nothing to make, and
    # the client reads, cuts, hashes and seals all 2 GiB (its zero chunks are the same
    # chunk, sent once and kept once) while the workers beat
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.write(os.urandom(1024 * 1024))
        f.truncate(2 * GIB)

    # When it is uploaded with two replicas while status is polled every second
    with StatusWatch(strict) as watch:
        strict.client("upload", str(big), "--replicas", "2", timeout=900).ok()

    # Then it is stored, and no worker was ever reported dead, nor any repair started
    entry = strict.files()["big.bin"]
    assert entry["size"] == 2 * GIB and len(entry["replicas"]) == 2
    assert strict.copies_on_disk(entry["sha256"]) >= 2
    no_false_deaths(strict, watch)


def test_eight_clients_uploading_and_restoring_at_once(strict: Cluster, tmp_path: Path) -> None:
    # Given one stored file of 256 MiB, and four new files of 128 MiB
    stored = random_file(tmp_path, "stored.bin", 256 * MIB)
    strict.client("upload", str(stored)).ok()
    new = [random_file(tmp_path, f"new{i}.bin", 128 * MIB) for i in range(4)]

    # When four clients upload the new files and four restore the stored one, all at once
    with StatusWatch(strict) as watch:
        procs = [strict.client_process("upload", str(p)) for p in new]
        outs = [tmp_path / f"restored{i}.bin" for i in range(4)]
        procs += [strict.client_process("download", "stored.bin", "-o", str(out)) for out in outs]
        codes = [p.wait(timeout=600) for p in procs]

    # Then every command succeeded, every restore is byte for byte, every upload listed
    assert codes == [0] * 8
    want = hashlib.sha256(stored.read_bytes()).hexdigest()
    assert all(hashlib.sha256(out.read_bytes()).hexdigest() == want for out in outs)
    listed = strict.files()
    assert all(len(listed[p.name]["replicas"]) == 2 for p in new)
    no_false_deaths(strict, watch)
