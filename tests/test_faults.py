"""Faults a real deployment meets, injected into real processes while transfers run."""

from __future__ import annotations

import contextlib
import errno
import filecmp
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localnode import LocalNode
from tests.cluster import (
    Cluster,
    MakeCluster,
    chunks_on_disk,
    stored_names,
    wait_for,
    while_running,
)
from warren import errors
from warren.chunks import sha256_file
from warren.topology import worker_chunks


def random_file(folder: Path, name: str, size: int) -> Path:
    path = folder / name
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 * 1024 * 1024)
            f.write(os.urandom(n))
            left -= n
    return path


def text_file(folder: Path, name: str, size: int) -> Path:
    """Log-like text: each MiB its own lines, each compressing about 4 times."""
    path = folder / name
    with open(path, "wb") as f:
        for n in range(0, size, 1 << 20):
            lines = b"".join(
                b"10.0.%d.%d GET /api/items/%d HTTP/1.1 200 %d\n" % (n % 251, i % 97, i, n + i)
                for i in range(20_000)
            )
            f.write(lines[: min(1 << 20, size - n)])
    return path


def upload_in_flight(
    c: Cluster,
    folder: Path,
    name: str,
    mib: int,
    workers: tuple[str, ...] = ("w1", "w2"),
    text: bool = False,
) -> tuple[Path, subprocess.Popen[bytes]]:
    """Start uploading a new random (or log-like text) file and return once its chunks are
    landing on disk."""
    src = (text_file if text else random_file)(folder, name, mib * 1024 * 1024)
    client = c.client_process("upload", str(src))
    while_running(client, lambda: chunks_on_disk(c, workers) >= 5, "chunks on disk")
    return src, client


@contextlib.contextmanager
def frozen(c: Cluster, workers: tuple[str, ...]) -> Iterator[None]:
    """The workers stopped (SIGSTOP) for the block and thawed (SIGCONT) at its end, come what
    may: what they hold stays held, so a fault injected meanwhile certainly meets it."""
    procs = [c.procs[w] for w in workers]
    for p in procs:
        p.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGCONT)


def still_in_flight(c: Cluster, client: subprocess.Popen[bytes], workers: tuple[str, ...]) -> None:
    """With ``workers`` frozen: the upload cannot be confirmed until they thaw. The client
    still waits, and a replica is still half-written on a frozen worker (a worker confirms a
    replica only once it is whole, and the client waits for every replica)."""
    assert client.poll() is None, "the upload ended before the fault"
    assert chunks_on_disk(c, workers) > 0, "every replica was whole before the fault"


def confirmed_across(
    client: subprocess.Popen[bytes], files: list[Path], timeout: float
) -> list[Path]:
    """``finish`` for an upload started during a fault: what it confirmed, at least one file,
    or the test proves nothing about work confirmed around the fault."""
    confirmed, err = finished(client, files, timeout)
    assert confirmed, f"no upload was confirmed across the fault: {err}"
    return confirmed


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
    before = {name: set(f["replicas"]) for name, f in c.files().items()}  # all live now
    c.kill(victim)

    # Then the manager marks it dead and copies its files until none is short of replicas
    def repaired() -> bool:
        st = c.status()  # one snapshot: the victim dead *and* nothing short of replicas
        victim_alive = any(w["alive"] for w in st["workers"] if w["name"] == victim)
        return not victim_alive and st["under_replicated"] == 0

    wait_for(repaired, timeout=60, what="re-replication")
    # ... by copying the bytes: each file the victim held has a new holder, never one of its
    # holders before, whose copy of its first chunk hashes right, and two live copies of
    # every chunk
    listed = c.files()
    moved = [p for p in paths if victim in before[p.name]]
    assert moved, f"{victim} held none of the files"
    for p in moved:
        sha = listed[p.name]["sha256"]
        new = set(listed[p.name]["replicas"]) - before[p.name]
        assert len(new) == 1, (p.name, before[p.name], listed[p.name]["replicas"])
        assert new <= c.holders_on_disk(sha)
        assert c.copies_on_disk(sha, leaving=frozenset({victim})) >= 2, p.name
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
    # ... and the catalog counts exactly the live workers that hold each file on disk: no
    # stale record, none twice (repairs of the second victim's files may still be landing).
    # A listing names holders of a file's first chunk, as many as its least-held chunk has
    # live copies.
    dead = frozenset({first[1]})

    def catalog_matches_disks() -> bool:
        listed = c.files()
        for p in paths:
            names, sha = listed[p.name]["replicas"], listed[p.name]["sha256"]
            if len(set(names)) != len(names) or not set(names) <= c.holders_on_disk(sha) - dead:
                return False
            if len(names) != c.copies_on_disk(sha, leaving=dead):
                return False
        return True

    wait_for(catalog_matches_disks, timeout=60, what="the catalog to match the disks")
    wait_for(lambda: c.status()["under_replicated"] == 0, timeout=60, what="repairs")


@pytest.mark.parametrize("content", ["random", "text"])
def test_worker_killed_mid_upload_then_restarted(
    make_cluster: MakeCluster, tmp_path: Path, content: str
) -> None:
    # Given an upload of a large file in flight on a cluster of exactly two workers (text:
    # chunks that compress inside their seals)
    c = make_cluster()
    c.start_all(2)
    src, client = upload_in_flight(c, tmp_path, "big.bin", 160, text=content == "text")
    primary = c.last_chain()[0]

    # When the primary is killed with chunks flowing, and restarted
    c.kill(primary)
    c.start(primary)

    # Then the upload completes: redelivered chunks are idempotent, the journal resumes
    out, err = client.communicate(timeout=180)
    assert client.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    # And the file is on both disks, the restarted primary's copy too, byte for byte
    holders = c.verify_stored([src])
    assert sorted(holders["big.bin"]) == ["w1", "w2"]
    sha = sha256_file(src)
    assert all(primary in c.intact_copies(b) for b in c.chunks(sha))
    assert c.stored(sha) == src.read_bytes()
    for w in ("w1", "w2"):
        assert not list(c.data_dir(w).glob("incoming/*"))  # nothing half-written kept


def test_worker_killed_holding_a_pack_of_small_files_then_restarted(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # Given a batch of small files (they travel in packs) on a cluster of exactly two
    # workers whose disks are slow, so the packs sit unacknowledged on the workers
    c = make_cluster(WARREN_FINALIZE_DELAY="5")
    c.start_all(2)
    paths = [random_file(tmp_path, f"small {i:03}", 500 + i) for i in range(300)]
    client = c.client_process("upload", *map(str, paths))
    chain: list[str] = []

    def placed() -> bool:
        with contextlib.suppress(AssertionError):
            chain[:] = c.last_chain()
        return bool(chain)

    wait_for(placed, what="a pack placed")
    primary = chain[0]

    def in_hand() -> bool:  # the suite's node updates these figures every 0.5 s
        vhost = urllib.parse.quote(c.vhost, safe="")
        queue = c.node.api("GET", f"queues/{vhost}/{worker_chunks(primary)}")
        return int(queue.get("messages_unacknowledged", 0)) > 0

    wait_for(in_hand, timeout=60, what=f"packs unacknowledged on {primary}", every=0.1)

    # When the primary is killed with packs in hand, and restarted (a fast disk now)
    c.kill(primary)
    c.start(primary, WARREN_FINALIZE_DELAY="0")

    # Then every file is confirmed: the redelivered packs are stored again, idempotently
    out, err = client.communicate(timeout=180)
    assert client.returncode == 0, err.decode()
    assert out.decode().count("  stored small ") == 300
    # And every one of them is on both disks and restores byte for byte
    holders = c.verify_stored(paths)
    assert all(sorted(h) == ["w1", "w2"] for h in holders.values()), holders
    for w in ("w1", "w2"):
        assert not list(c.data_dir(w).glob("incoming/*.blob"))  # nothing half-written kept


def test_restore_fails_over_when_the_serving_worker_dies(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # Given a stored file of a few dozen chunks, each on both workers (which count as alive
    # for as long as this test runs, so only the client's own timeout moves the restore on)
    c = make_cluster(WARREN_TRANSFER_TIMEOUT="3", WARREN_DEAD_AFTER="120")
    c.start_all(2)
    src = random_file(tmp_path, "movie.bin", 24 * 1024 * 1024)
    c.client("upload", str(src)).ok()
    out = tmp_path / "out"
    out.mkdir()

    # When one of them is frozen before the restore starts (the manager spreads the chunks
    # over both holders, so some are asked of it), and dies once the client has waited
    c.procs["w1"].send_signal(signal.SIGSTOP)
    client = c.client_process("download", "movie.bin", "-o", str(out / "movie.bin"))
    time.sleep(4)
    assert client.poll() is None and not (out / "movie.bin").exists()
    c.kill("w1")

    # Then the client asked again for what w1 did not send, and finished from w2, verified
    stdout, stderr = client.communicate(timeout=120)
    assert client.returncode == 0, stderr.decode()
    assert "w1: no data for 3 s; trying another copy" in stdout.decode()
    assert filecmp.cmp(out / "movie.bin", src, shallow=False)
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
    # And the confirmed file is on both disks and restores byte for byte
    assert sorted(c.verify_stored([src])["during.bin"]) == ["w1", "w2"]


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
    c.ensure_key()  # init is a publish too: before the alarm
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


def finish(client: subprocess.Popen[bytes], files: list[Path], timeout: float = 180) -> list[Path]:
    """Wait for an upload command that met a fault. It must have finished, or failed with one
    clear sentence (exit 4); return the files it confirmed, either way."""
    return finished(client, files, timeout)[0]


def finished(
    client: subprocess.Popen[bytes], files: list[Path], timeout: float
) -> tuple[list[Path], str]:
    """``finish``, and what the command said on stderr."""
    out, err = client.communicate(timeout=timeout)
    assert "Traceback" not in err.decode(), err.decode()
    stored = stored_names(out.decode())
    if client.returncode == 0:
        assert stored == {p.name for p in files}, out.decode()
    else:
        assert client.returncode == errors.EXIT_UNAVAILABLE, err.decode()
        assert err.decode().startswith("error: "), err.decode()
    return [p for p in files if p.name in stored], err.decode()


def test_broker_restart_loses_nothing_confirmed(make_cluster: MakeCluster, tmp_path: Path) -> None:
    # Given a cluster on a broker of its own, with a file stored
    node = LocalNode.with_free_ports(tmp_path / "node", name="restart")
    node.start()
    try:
        c = make_cluster(node=node)
        c.start_all(2)
        before = random_file(tmp_path, "before.bin", 5 * 1024 * 1024)
        c.client("upload", str(before)).ok()
        # ... and an upload in flight, held there: both workers frozen with its replicas
        # half-written, so it cannot be confirmed before the fault
        in_flight, client = upload_in_flight(c, tmp_path, "in flight.bin", 30)
        with frozen(c, ("w1", "w2")):
            still_in_flight(c, client, ("w1", "w2"))

            # When the broker stops in the middle of that upload, another upload (a large
            # file and a pack of small ones) is started while it is down, and the broker
            # starts again on the same data
            node.stop()
        during = [random_file(tmp_path, "during.bin", 3 * 1024 * 1024)]
        during += [random_file(tmp_path, f"during {i:02}", 700 + i) for i in range(20)]
        # (It waits out the manager catching up after the restart within its request
        # timeout: generous here, where the machine may be busy.)
        late = c.client_process(
            "upload", *map(str, during), WARREN_CONNECT_TIMEOUT="120", WARREN_REQUEST_TIMEOUT="60"
        )
        assert late.poll() is None, "the late upload ended before the broker came back"
        node.start()

        # Then each upload either finished or failed with one clear sentence; the held one
        # ended only after the broker had stopped, and the late one confirmed files on the
        # restarted broker
        confirmed = [
            before,
            *finish(client, [in_flight]),
            *confirmed_across(late, during, timeout=180),
        ]
        # And every service reconnected by itself
        c.wait_alive(["w1", "w2"], timeout=60)
        assert all(p.poll() is None for p in c.procs.values())
        for w in ("w1", "w2", "manager"):
            assert "reconnecting" in c.log_path(w).read_text()
        # And nothing confirmed, before the restart or across it, is lost: before anything
        # is uploaded again, each such file is listed, on both disks, and restores byte for
        # byte
        c.verify_stored(confirmed)
        # And a retry of what failed completes
        retry = [p for p in (in_flight, *during) if p not in confirmed]
        if retry:
            c.client("upload", *map(str, retry)).ok()
            c.verify_stored(retry)
    finally:
        node.stop()


def test_a_frozen_backup_fails_the_upload_within_the_transfer_timeout(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    # Given two workers, both frozen (SIGSTOP) until the manager has placed an upload on
    # them; then the primary thaws, takes the chunks, forwards them to the backup's queue
    # and confirms, and the backup stays frozen (workers count as alive all the while)
    c = make_cluster(WARREN_DEAD_AFTER="120")
    c.start_all(2)
    src = random_file(tmp_path, "half.bin", 3 * 1024 * 1024)
    for w in ("w1", "w2"):
        c.procs[w].send_signal(signal.SIGSTOP)
    try:
        client = c.client_process(
            "upload", str(src), "--replicas", "2", WARREN_TRANSFER_TIMEOUT="2"
        )
        chain: list[str] = []

        def placed() -> bool:
            with contextlib.suppress(AssertionError):
                chain[:] = c.last_chain()
            return bool(chain)

        wait_for(placed, timeout=30, what="the manager to place half.bin", every=0.05)
        seen = time.monotonic()
        primary, backup = chain
        c.procs[primary].send_signal(signal.SIGCONT)

        # When the client waits for the backup's confirmation
        _, err = client.communicate(timeout=60)
        took = time.monotonic() - seen
    finally:
        for w in ("w1", "w2"):
            c.procs[w].send_signal(signal.SIGCONT)

    # Then it gives up after its transfer timeout (2 s; the rest is margin for a busy
    # machine): exit 4, the frozen backup named, nothing claimed stored
    assert client.returncode == errors.EXIT_UNAVAILABLE, err.decode()
    assert f"error: {backup} did not confirm 'half.bin' in time." in err.decode()
    assert took < 2 + 8, f"the client gave up {took:.1f} s after the placement"


@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (this needs root, as in CI), unmounted at
    the end. Elsewhere the test is skipped, saying why; in CI that counts as a failure."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)]
    try:
        done = subprocess.run(mount, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        pytest.skip("no mount command here, to make a small disk")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs (root is needed): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Take all but ``leave`` bytes of the disk ``disk`` is on, in one file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                os.posix_fallocate(fd, 0, shutil.disk_usage(disk).free - leave)
                return filler
            except OSError as exc:  # the worker wrote meanwhile: take a little less
                if exc.errno != errno.ENOSPC:
                    raise
                leave += 1 << 20
    finally:
        os.close(fd)


def test_a_worker_whose_disk_fills_fails_the_upload_at_once_and_takes_the_next(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """w2's data dir is a 100 MiB tmpfs that fills (another program, say) as an upload of
    24 MiB reaches it. The upload fails (exit 4 naming w2's full disk, or 6 for want of room), long
    before the transfer timeout; w2 lives on and keeps nothing half-written (the chunks it stored
    whole wait for the upload to be run again); once the space is
    back, the same upload (which a reservation not released would have refused: 100 - 24
    - 64 MiB of headroom leaves less than 24) is stored on w2 too."""
    timeout = 8.0
    c = make_cluster(WARREN_TRANSFER_TIMEOUT=str(timeout))
    with small_disk(c.data_dir("w2"), "100m") as disk:
        try:
            c.start_all(2)
            src = random_file(tmp_path, "big.bin", 24 * 1024 * 1024)
            incoming = disk / "incoming"
            start = time.monotonic()
            client = c.client_process("upload", str(src), "--replicas", "2")
            while_running(client, lambda: chunks_on_disk(c, ("w2",)) >= 2, "w2 writing chunks")
            filler = fill(disk, leave=1 << 20)
            out, err = client.communicate(timeout=60)
            took = time.monotonic() - start
            # The upload failed at once, as unavailable, naming w2 and its full disk
            # (as unavailable, naming w2's full disk, when a pack met it; or, when w2's
            # heartbeat said so before the next pack was placed, refused for want of room)
            said = err.decode()
            if client.returncode == errors.EXIT_REFUSED:
                assert "only 1 live worker has room" in said, said
            else:
                assert client.returncode == errors.EXIT_UNAVAILABLE, (out, err)
                assert "w2" in said and "No space left on device" in said, said
            assert took < timeout, f"{took:.1f} s: the transfer timeout, not the worker"
            assert "Traceback" not in err.decode()
            # w2 lives on and keeps nothing of it
            assert c.procs["w2"].poll() is None
            wait_for(lambda: not any(incoming.iterdir()), 5, "w2's incoming/ emptied")
            # Once the space is back, the same upload goes to w2 too
            filler.unlink()
            # (the chunks w2 stored before its disk filled stay, pinned for the upload
            # run again: it does not send them twice)
            kept = sum(p.stat().st_size for p in (disk / "blobs").glob("*/*") if p.is_file())
            wait_for(
                lambda: (
                    {w["name"]: w for w in c.status()["workers"]}["w2"]["free_bytes"]
                    > 90 * 1024 * 1024 - kept
                ),
                10,
                "w2 reporting its space back",
            )
            c.client("upload", str(src), "--replicas", "2").ok()
            sha = sha256_file(src)
            assert all("w2" in c.intact_copies(b) for b in c.chunks(sha))
            assert c.stored(sha) == src.read_bytes()
            assert c.procs["w2"].poll() is None
        finally:
            if "w2" in c.procs:
                c.kill("w2")
