"""A repository no server can read, on a real RabbitMQ node with the services as processes:
no plaintext on any disk, the broker's message store included, while the chunks wait in
its queues and after they are stored."""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localnode import LocalNode
from tests.cluster import Cluster, MakeCluster, wait_for

pytestmark = pytest.mark.integration


def pieces(data: bytes) -> set[bytes]:
    """The 16-byte pieces of ``data`` at offsets divisible by 16: any 32-byte run of
    ``data`` holds one whole."""
    return {data[i : i + 16] for i in range(0, len(data) - 15, 16)}


def holds_a_run(path: Path, wanted: set[bytes]) -> bool:
    blob = path.read_bytes()
    view = memoryview(blob)
    return any(bytes(view[i : i + 16]) in wanted for i in range(len(blob) - 15))


def files_since(root: Path, since: float) -> Iterator[Path]:
    for path in root.rglob("*"):
        try:
            if path.is_file() and path.stat().st_mtime >= since:
                yield path
        except OSError:  # a file the broker removed meanwhile
            continue


def log_text(size: int) -> bytes:
    rnd = random.Random(11)
    lines: list[bytes] = []
    while sum(len(line) for line in lines) < size:
        token = rnd.getrandbits(64).to_bytes(8, "big").hex()
        lines.append(f"2026-12-07 12:00:{rnd.randrange(60):02d} GET /api/{token} 200\n".encode())
    return b"".join(lines)[:size]


def test_no_plaintext_on_the_brokers_or_any_services_disk(
    make_cluster: MakeCluster, rabbit: LocalNode, tmp_path: Path
) -> None:
    c: Cluster = make_cluster()
    c.start_all(4)
    c.wait_alive(["w1", "w2", "w3", "w4"])
    mine = tmp_path / "mine"
    mine.mkdir()
    plain = {"random.bin": os.urandom(1_500_000), "access.log": log_text(1_500_000)}
    for name, data in plain.items():
        (mine / name).write_bytes(data)
    wanted = set().union(*(pieces(d) for d in plain.values()))
    started = time.time() - 1
    # Every worker frozen while the upload runs: its packs wait in the workers' durable
    # queues, where RabbitMQ keeps them on disk.
    workers = [c.procs[w] for w in ("w1", "w2", "w3", "w4")]
    client = c.client_process("upload", str(mine), "--replicas", "2")
    try:
        time.sleep(1.0)  # placed; the first packs on their way
        for p in workers:
            p.send_signal(signal.SIGSTOP)
        time.sleep(3.0)
        in_broker = [p for p in files_since(rabbit.base, started) if holds_a_run(p, wanted)]
    finally:
        for p in workers:
            p.send_signal(signal.SIGCONT)
    out, err = client.communicate(timeout=120)
    assert client.returncode == 0, err.decode()
    assert in_broker == [], f"plaintext in RabbitMQ's files: {in_broker}"
    wait_for(lambda: len(c.files()) == 2, what="both files listed")
    servers = [p for p in c.base.iterdir() if p.is_dir() and p != mine]
    on_disk = [f for d in servers for f in files_since(d, 0) if holds_a_run(f, wanted)]
    assert on_disk == [], f"plaintext on a service's disk: {on_disk}"
    back = tmp_path / "back"
    back.mkdir()
    c.client("download", "mine/", "-o", str(back)).ok()
    for name, data in plain.items():
        assert (back / name).read_bytes() == data
