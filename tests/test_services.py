"""The services as processes: bad input, signals, restarts, a broker that is not there yet."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.parse
import urllib.request
from pathlib import Path

from devtools.localnode import LocalNode, free_port
from tests.cluster import Cluster, MakeCluster, file_sha256, wait_for
from warren.broker import Connection
from warren.config import Settings
from warren.topology import (
    DEAD_LETTER_QUEUE,
    MANAGER_EVENTS,
    MANAGER_REQUESTS,
    manager_topology,
    worker_chunks,
)
from warren.transport import Delivery


def connect(url: str, name: str = "warren test") -> Connection:
    conn = Connection(Settings.load({"amqp_url": url}), name)
    conn.open(give_up_after=10)
    return conn


def test_invalid_messages_are_dead_lettered_and_services_carry_on(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given a running cluster, when garbage arrives on every queue a service consumes
    conn = connect(cluster.url)
    conn.declare(manager_topology())
    garbage = [
        (MANAGER_REQUESTS, b"\x00\xffnot json", "upload.request", {}),  # no reply_to either
        (MANAGER_EVENTS, b"{}", "no.such.event", {}),
        (MANAGER_EVENTS, b'{"worker": "../../x"}', "worker.heartbeat", {}),
        (worker_chunks("w1"), b"bytes", "upload.chunk", {}),  # no headers
        (
            worker_chunks("w1"),
            b"bytes",
            "upload.chunk",
            {
                "upload_id": "../../../etc/passwd",
                "seq": 0,
                "offset": 0,
                "total_size": 5,
                "chunk_count": 1,
                "sha256": "ab" * 32,
                "chain": ["w1"],
                "hop": 0,
            },
        ),
        (worker_chunks("w1"), b"bytes", "upload.pack", {}),  # no manifest
        (
            worker_chunks("w1"),
            b"bytes",
            "upload.pack",
            {
                "files": json.dumps([["../../../etc/passwd", "ab" * 32, 5]]),
                "chain": ["w1"],
                "hop": 0,
            },
        ),
        (  # well formed, but the bytes are not what the manifest says: never stored
            worker_chunks("w1"),
            b"bytes",
            "upload.pack",
            {"files": json.dumps([["ab" * 16, "ab" * 32, 5]]), "chain": ["w1"], "hop": 0},
        ),
    ]
    for queue, body, type_, headers in garbage:
        conn.publish_and_wait(queue, body, type=type_, headers=headers or None)

    # Then each lands in the dead-letter queue, once
    dead: list[Delivery] = []

    def take(d: Delivery) -> None:
        dead.append(d)
        d.ack()

    conn.consume(DEAD_LETTER_QUEUE, take)
    deadline = time.monotonic() + 20
    while len(dead) < len(garbage) and time.monotonic() < deadline:
        conn.process(0.2)
    conn.process(1.0)  # nothing more should come: no redelivery loops
    assert sorted(d.type or "" for d in dead) == sorted(t for _, _, t, _ in garbage)
    conn.close()

    # And every service is still running and still works
    assert all(p.poll() is None for p in cluster.procs.values())
    assert not list((cluster.base).glob("**/etc/passwd"))
    assert not cluster.blob("w1", "ab" * 32).exists()
    p = tmp_path / "after.txt"
    p.write_text("still fine")
    cluster.client("upload", str(p)).ok()


def test_connections_and_queues_are_named_for_the_management_ui(cluster: Cluster) -> None:
    vhost = urllib.parse.quote(cluster.vhost, safe="")
    names: set[str] = set()

    def named() -> bool:
        conns = cluster.node.api("GET", f"vhosts/{vhost}/connections")
        names.update(c.get("client_properties", {}).get("connection_name", "") for c in conns)
        return {"warren manager", "warren worker w1", "warren worker w1 serve"} <= names

    wait_for(named, what=f"connection names (have {names})")
    queues = {q["name"] for q in cluster.node.api("GET", f"queues/{vhost}")}
    assert {MANAGER_REQUESTS, MANAGER_EVENTS, DEAD_LETTER_QUEUE, worker_chunks("w4")} <= queues


def test_sigterm_stops_services_cleanly(make_cluster: MakeCluster) -> None:
    c = make_cluster()
    c.start_all(workers=2)
    for name in ("w2", "manager"):
        started = time.monotonic()
        assert c.kill(name, signal.SIGTERM) == 0
        assert time.monotonic() - started < 10
        log = c.log_path(name).read_text()
        assert "SIGTERM received, stopping" in log and "stopped" in log
        assert "Traceback" not in log


def test_manager_restart_keeps_the_catalog(make_cluster: MakeCluster, tmp_path: Path) -> None:
    # Given a stored file
    c = make_cluster()
    c.start_all(workers=2)
    p = tmp_path / "kept.bin"
    p.write_bytes(b"k" * 100_000)
    c.client("upload", str(p)).ok()

    # When the manager is killed and started again
    c.kill("manager")
    c.start("manager")

    # Then the catalog is intact, workers are known alive again, and the file restores
    c.wait_alive(["w1", "w2"])
    assert c.files()["kept.bin"]["replicas"] == ["w1", "w2"]
    dest = tmp_path / "back.bin"
    c.client("download", "kept.bin", "-o", str(dest)).ok()
    assert dest.read_bytes() == p.read_bytes()


def test_services_wait_for_a_broker_that_is_not_up_yet(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # Given a worker and a manager started while nothing listens on their broker's port
    port = free_port()
    url = f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    c = make_cluster(WARREN_AMQP_URL=url)
    c.start("manager")
    c.start("w1")

    def waiting() -> bool:
        logs = [c.log_path(name) for name in ("manager", "w1")]
        return all(p.exists() and "waiting for RabbitMQ" in p.read_text() for p in logs)

    wait_for(waiting, what="the manager and w1 to say they are waiting for RabbitMQ")
    assert all(p.poll() is None for p in c.procs.values())
    assert "guest:guest" not in c.log_path("w1").read_text()

    # When the broker comes up on that port
    node = LocalNode(tmp_path / "late-node", port, free_port(), free_port(), name="late")
    node.start()
    try:
        # Then both connect by themselves and serve
        c.wait_alive(["w1"])
        p = tmp_path / "late.txt"
        p.write_text("late but fine")
        c.client("upload", str(p), "--replicas", "1").ok()
        # And each said it was waiting once, however many times it tried meanwhile
        for name in ("manager", "w1"):
            log = c.log_path(name).read_text()
            assert log.count("waiting for RabbitMQ") == 1, log
            assert "connected to RabbitMQ" in log
    finally:
        c.stop_all()
        node.stop()


def test_metrics_count_what_the_services_do(make_cluster: MakeCluster, tmp_path: Path) -> None:
    # Given a manager and two workers exposing Prometheus metrics
    c = make_cluster()
    ports = {name: free_port() for name in ("manager", "w1", "w2")}
    for name, port in ports.items():
        c.start(name, WARREN_METRICS_PORT=str(port))
    c.wait_alive(["w1", "w2"])

    # When a 3 MiB file is stored on both (random bytes: its sealed chunks are a few bytes
    # larger, while compressible ones would be smaller)
    p = tmp_path / "m.bin"
    p.write_bytes(os.urandom(3 * 1024 * 1024))
    c.client("upload", str(p)).ok()
    sealed = sum(c.blob("w1", b).stat().st_size for b in c.chunks(file_sha256(p)))
    assert 3 * 1024 * 1024 < sealed < 3 * 1024 * 1024 + 4096

    # Then each worker counted the bytes it wrote and the replica it stored
    def scrape(name: str) -> dict[str, float]:
        url = f"http://127.0.0.1:{ports[name]}/metrics"
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                values[key] = float(value)
        return values

    # (its chunks travel in packs, each placed on w1 -> w2 or w2 -> w1: each worker wrote
    # all of them, and between them forwarded all of them once)
    for w in ("w1", "w2"):
        got = scrape(w)
        assert got["warren_bytes_in_total"] == sealed
        assert got["warren_replicas_stored_total"] == len(c.chunks(file_sha256(p)))
    forward = 'warren_bytes_out_total{kind="forward"}'
    assert sum(scrape(w).get(forward, 0) for w in ("w1", "w2")) == sealed
    primary = c.last_chain()[0]
    wait_for(lambda: scrape("manager").get("warren_files") == 1, what="manager's file gauge")
    assert scrape("manager")["warren_workers_alive"] == 2
    # and every delivery's wait in its queue was recorded where it was consumed
    lag = 'warren_queue_lag_seconds_count{queue="%s"}'
    assert scrape("manager").get(lag % "warren.manager.events", 0) >= 2  # heartbeats
    assert scrape(primary).get(lag % f"warren.worker.{primary}.chunks", 0) >= 1
