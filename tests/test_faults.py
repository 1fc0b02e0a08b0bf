"""Faults a real deployment meets, injected into real processes while transfers run."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from devtools.localnode import LocalNode
from tests.cluster import Cluster, MakeCluster, wait_for
from warren import errors
from warren.chunks import sha256_file


def random_file(folder: Path, name: str, size: int) -> Path:
    path = folder / name
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * 1024 * 1024)
            f.write(os.urandom(n))
            left -= n
    return path


def chunks_on_disk(c: Cluster, workers: tuple[str, ...] = ("w1", "w2")) -> int:
    """How many chunks the workers have journaled for uploads in progress."""
    total = 0
    for w in workers:
        for p in c.data_dir(w).glob("incoming/*.seqs"):
            with contextlib.suppress(FileNotFoundError):  # finished meanwhile
                total += len(p.read_text().split())
    return total


def upload_in_flight(
    c: Cluster, folder: Path, name: str, mib: int, workers: tuple[str, ...] = ("w1", "w2")
) -> tuple[Path, subprocess.Popen[bytes]]:
    """Start uploading a new random file and return once its chunks are landing on disk."""
    src = random_file(folder, name, mib * 1024 * 1024)
    client = c.client_process("upload", str(src))
    wait_for(lambda: chunks_on_disk(c, workers) >= 5, what="chunks on disk")
    return src, client


def live_replicas(c: Cluster, name: str) -> list[str]:
    replicas: list[str] = c.files()[name]["replicas"]
    return replicas


def test_lost_workers_files_are_re_replicated_and_a_returning_worker_reconciled(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # Given six files, two replicas each, on four workers
    c = make_cluster()
    c.start_all(4)
    paths = [random_file(tmp_path, f"file {i}.bin", 300_000 * i + 1) for i in range(6)]
    c.client("upload", *map(str, paths)).ok()
    first = live_replicas(c, paths[0].name)

    # When one holder dies
    victim = first[0]
    c.kill(victim)

    # Then the manager marks it dead and copies its files until none is short of replicas
    def repaired() -> bool:
        st = c.status()  # one snapshot: the victim dead *and* nothing short of replicas
        victim_alive = any(w["alive"] for w in st["workers"] if w["name"] == victim)
        return not victim_alive and st["under_replicated"] == 0

    wait_for(
        repaired,
        timeout=60,
        what="re-replication",
    )
    for p in paths:
        holders = live_replicas(c, p.name)
        assert len(holders) == 2 and victim not in holders
        sha = c.files()[p.name]["sha256"]
        assert all(c.blob(w, sha).is_file() for w in holders)
    assert "repair" in c.log_path("manager").read_text()

    # And when the other original holder of the first file dies too, every file still restores
    c.kill(first[1])
    wait_for(
        lambda: not next(w["alive"] for w in c.status()["workers"] if w["name"] == first[1]),
        what=f"{first[1]} marked dead",
    )
    for p in paths:
        dest = tmp_path / f"restored {p.name}"
        c.client("download", p.name, "-o", str(dest)).ok()
        assert dest.read_bytes() == p.read_bytes()

    # When the first victim comes back with its disk, it is counted again, once
    c.start(victim)
    c.wait_alive([victim])
    wait_for(lambda: victim in live_replicas(c, paths[0].name), what="reconciled inventory")
    for p in paths:
        holders = live_replicas(c, p.name)
        assert len(holders) == len(set(holders))  # nothing double-counted
    assert c.status()["under_replicated"] == 0


def test_worker_killed_mid_upload_then_restarted(make_cluster: MakeCluster, tmp_path: Path) -> None:
    # Given an upload of a large file in flight on a cluster of exactly two workers
    c = make_cluster()
    c.start_all(2)
    src, client = upload_in_flight(c, tmp_path, "big.bin", 160)
    primary = c.chain("big.bin")[0]

    # When the primary is killed with chunks flowing, and restarted
    c.kill(primary)
    c.start(primary)

    # Then the upload completes: redelivered chunks are idempotent, the journal resumes
    out, err = client.communicate(timeout=180)
    assert client.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    entry = c.files()["big.bin"]
    assert sorted(entry["replicas"]) == ["w1", "w2"]
    dest = tmp_path / "back.bin"
    c.client("download", "big.bin", "-o", str(dest)).ok()
    assert dest.read_bytes() == src.read_bytes()
    for w in ("w1", "w2"):
        assert not list(c.data_dir(w).glob("incoming/*.part"))  # nothing half-written kept


def test_worker_killed_holding_a_pack_of_small_files_then_restarted(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # Given a batch of small files (they travel in packs) on a cluster of exactly two
    # workers whose disks are slow, so the packs sit unacknowledged on the workers
    c = make_cluster(WARREN_FINALIZE_DELAY="3")
    c.start_all(2)
    paths = [random_file(tmp_path, f"small {i:03}", 500 + i) for i in range(300)]
    client = c.client_process("upload", *map(str, paths))
    placed = c.log_path("manager")
    wait_for(lambda: "pack of " in placed.read_text(), what="a pack placed")
    line = next(ln for ln in placed.read_text().splitlines() if "pack of " in ln)
    primary = line.rsplit(", placed on ", 1)[1].split(" -> ")[0]
    time.sleep(1.0)

    # When the primary is killed with packs in hand, and restarted (a fast disk now)
    c.kill(primary)
    c.start(primary, WARREN_FINALIZE_DELAY="0")

    # Then every file is confirmed: the redelivered packs are stored again, idempotently
    out, err = client.communicate(timeout=180)
    assert client.returncode == 0, err.decode()
    assert out.decode().count("  stored small ") == 300
    listed = c.files()
    for p in paths:
        assert sorted(listed[p.name]["replicas"]) == ["w1", "w2"]
        for w in ("w1", "w2"):
            assert c.blob(w, listed[p.name]["sha256"]).read_bytes() == p.read_bytes()
    dest = tmp_path / "back"
    c.client("download", paths[7].name, "-o", str(dest)).ok()
    assert dest.read_bytes() == paths[7].read_bytes()
    for w in ("w1", "w2"):
        assert not list(c.data_dir(w).glob("incoming/*.blob"))  # nothing half-written kept


def test_restore_fails_over_when_the_serving_worker_dies(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # Given a stored file with two replicas
    c = make_cluster(WARREN_TRANSFER_TIMEOUT="3")
    c.start_all(3)
    src = random_file(tmp_path, "movie.bin", 200 * 1024 * 1024)
    c.client("upload", str(src)).ok()
    out = tmp_path / "out"
    out.mkdir()

    # When the worker serving a restore freezes mid-stream and then dies
    client = c.client_process("download", "movie.bin", "-o", str(out / "movie.bin"))

    def streaming() -> bool:
        return any(p.stat().st_size > 8 * 1024 * 1024 for p in out.glob(".movie.bin.*"))

    wait_for(streaming, timeout=60, what="restore to start")
    server = next(
        line.rsplit(" served by ", 1)[1].strip()
        for line in reversed(c.log_path("manager").read_text().splitlines())
        if " served by " in line
    )
    c.procs[server].send_signal(signal.SIGSTOP)
    time.sleep(0.5)
    c.kill(server)

    # Then the client asks again, finishes from the other replica, verified
    stdout, stderr = client.communicate(timeout=120)
    assert client.returncode == 0, stderr.decode()
    assert "trying another replica" in stdout.decode()
    assert (out / "movie.bin").read_bytes() == src.read_bytes()
    assert not list(out.glob(".movie.bin.*"))  # no temporary file left behind


def test_manager_killed_during_an_upload(make_cluster: MakeCluster, tmp_path: Path) -> None:
    # Given an upload in flight
    c = make_cluster()
    c.start_all(2)
    src, client = upload_in_flight(c, tmp_path, "during.bin", 120)

    # When the manager is killed and restarted while the chunks flow
    c.kill("manager")
    c.start("manager")

    # Then the upload finishes (workers confirm to the client directly), and once the manager
    # has caught up on the queued events the file is listed, with its catalog intact
    _, err = client.communicate(timeout=180)
    assert client.returncode == 0, err.decode()
    wait_for(lambda: "during.bin" in c.files(), what="catalog to catch up")
    entry = c.files()["during.bin"]
    assert sorted(entry["replicas"]) == ["w1", "w2"]
    assert entry["sha256"] == sha256_file(src)


def test_slow_disk_does_not_starve_amqp_heartbeats(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # Given workers whose every file takes 8 s to finish, and a 2 s AMQP heartbeat, so a
    # blocked I/O thread would make RabbitMQ drop the connection
    c = make_cluster(WARREN_AMQP_HEARTBEAT="2", WARREN_FINALIZE_DELAY="8")
    c.start_all(2)
    src = random_file(tmp_path, "slow.bin", 3 * 1024 * 1024)

    # When a file is uploaded
    c.client("upload", str(src)).ok()

    # Then no connection was lost on the way
    for w in ("w1", "w2"):
        log = c.log_path(w).read_text()
        assert "reconnecting" not in log, log
    assert sorted(c.files()["slow.bin"]["replicas"]) == ["w1", "w2"]


def test_broker_alarm_blocks_publishers_who_say_so_and_time_out(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    c = make_cluster(WARREN_BLOCKED_TIMEOUT="3")
    c.start_all(2)
    src = random_file(tmp_path, "blocked.bin", 100_000)
    # When RabbitMQ raises a disk alarm (a free-disk limit larger than any disk)
    c.node.ctl("set_disk_free_limit", "100000GB")
    try:
        wait_for(lambda: c.node.api("GET", "nodes")[0].get("disk_free_alarm"), what="disk alarm")
        res = c.client("upload", str(src))
    finally:
        c.node.ctl("set_disk_free_limit", "50MB")
    # Then the client said it was waiting, and gave up with one clear sentence
    assert res.code == errors.EXIT_UNAVAILABLE, (res.out, res.err)
    assert "blocking publishes" in res.err
    assert "error: RabbitMQ blocked publishing for too long" in res.err
    assert "Traceback" not in res.err
    # And once the alarm is gone, everything works again, the services never crashed
    wait_for(lambda: not c.node.api("GET", "nodes")[0].get("disk_free_alarm"), what="alarm cleared")
    assert all(p.poll() is None for p in c.procs.values())
    c.client("upload", str(src)).ok()


def test_broker_restart_loses_nothing_confirmed(make_cluster: MakeCluster, tmp_path: Path) -> None:
    # Given a cluster on a broker of its own, with a file stored
    node = LocalNode.with_free_ports(tmp_path / "node", name="restart")
    node.start()
    try:
        c = make_cluster(node=node)
        c.start_all(2)
        before = random_file(tmp_path, "before.bin", 5 * 1024 * 1024)
        c.client("upload", str(before)).ok()
        in_flight, client = upload_in_flight(c, tmp_path, "in flight.bin", 150)

        # When the broker stops in the middle of an upload and starts again on the same data
        node.stop()
        node.start()

        # Then the interrupted upload either finished or failed with one clear sentence
        _, err = client.communicate(timeout=180)
        assert "Traceback" not in err.decode()
        if client.returncode != 0:
            assert client.returncode == errors.EXIT_UNAVAILABLE, err.decode()
            assert err.decode().startswith("error: ")
        # And every service reconnected by itself, nothing confirmed is lost, work goes on
        c.wait_alive(["w1", "w2"], timeout=60)
        assert all(p.poll() is None for p in c.procs.values())
        for w in ("w1", "w2", "manager"):
            assert "reconnecting" in c.log_path(w).read_text()
        dest = tmp_path / "before again.bin"
        c.client("download", "before.bin", "-o", str(dest)).ok()
        assert dest.read_bytes() == before.read_bytes()
        c.client("upload", str(in_flight)).ok()  # a retry completes
        dest = tmp_path / "in flight again.bin"
        c.client("download", "in flight.bin", "-o", str(dest)).ok()
        assert dest.read_bytes() == in_flight.read_bytes()
    finally:
        node.stop()
