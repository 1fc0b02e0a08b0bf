"""Soak test: clients upload and restore while workers are killed, the broker restarts, the
active manager is killed (a standby takes over) and bytes rot in stored copies.

    make soak                      # 5 minutes, 3 clients
    .venv/bin/python bench/soak.py --minutes 2 --clients 2
    .venv/bin/python bench/soak.py --minutes 0.5 --corrupt-one   # must exit 1: proves the check

Everything runs on a private RabbitMQ node in a temporary folder. Every failure is recorded,
from whichever thread it happens in: a restore that returns other bytes (during the chaos or
at the end), a confirmed file that cannot be restored, a client that prints a traceback, and a
thread that dies of an exception. At the end every upload the client confirmed (exit 0) is
restored and compared byte for byte, and its blobs on the workers' disks are hashed. The exit
status is 0 only when nothing was lost, wrong or broken.
Not part of `make test`: it runs for minutes and its load is random.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client.session import Session  # noqa: E402
from devtools.localnode import LocalNode  # noqa: E402
from tests.cluster import Cluster, file_sha256, wait_for  # noqa: E402
from warren.broker import Connection
from warren.config import Settings  # noqa: E402
from warren.errors import WarrenError  # noqa: E402

REPLICAS = 2


@dataclass
class Tally:
    confirmed: dict[str, str] = field(default_factory=dict)  # name -> sha256
    sizes: dict[str, int] = field(default_factory=dict)  # name -> bytes
    failed_uploads: int = 0
    # Why uploads failed: each error sentence (numbers and ids blanked), and how many files.
    why_failed: collections.Counter[str] = field(default_factory=collections.Counter)
    restores: int = 0
    failed_restores: int = 0
    kills: int = 0
    restarts: int = 0
    broker_restarts: int = 0
    manager_kills: int = 0  # the active manager killed, the standby taking over
    rotted: int = 0  # bytes flipped in stored copies
    damaged_found: int = 0  # copies the final verify found damaged (scrub found the others)
    # Every failure that must make the soak exit non-zero, in words.
    wrong: list[str] = field(default_factory=list)  # a restore returned other bytes
    lost: list[str] = field(default_factory=list)  # a confirmed file did not come back
    short: list[str] = field(default_factory=list)  # fewer verified blobs on disk than wanted
    broken: list[str] = field(default_factory=list)  # tracebacks, dead threads
    corrupt_one: bool = False  # fault injection: damage the next restore before it is compared
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failures(self) -> int:
        return len(self.wrong) + len(self.lost) + len(self.short) + len(self.broken)


def log_text(rng: random.Random, size: int) -> bytes:
    """Log-like lines: compressible, so large files are kept as their frames."""
    out = bytearray()
    while len(out) < size:
        out += b"10.0.%d.%d GET /api/items/%d HTTP/1.1 200 %d\n" % (
            rng.randrange(256),
            rng.randrange(256),
            rng.randrange(100_000),
            rng.randrange(5000),
        )
    return bytes(out[:size])


def restored_sha(t: Tally, path: Path) -> str:
    """The SHA-256 of a restored file. With --corrupt-one, the first call flips one byte of
    the file first (or adds one, to an empty file): a restore gone wrong, which the soak must
    count."""
    with t.lock:
        corrupt, t.corrupt_one = t.corrupt_one, False
    if corrupt:
        data = bytearray(path.read_bytes())
        if data:
            data[len(data) // 2] ^= 0xFF
        else:
            data = bytearray(b"\x00")
        path.write_bytes(bytes(data))
        print(f"soak: --corrupt-one: flipped a byte of the restore in {path.name!r}", flush=True)
    return file_sha256(path)


def guarded(t: Tally, name: str, target: Callable[[], None]) -> threading.Thread:
    """A thread whose death by any exception is recorded, not lost with the thread."""

    def run() -> None:
        try:
            target()
        except BaseException:  # noqa: BLE001 - SystemExit too: the point is to see it
            with t.lock:
                t.broken.append(f"thread {name} died:\n{traceback.format_exc()}")

    return threading.Thread(target=run, name=name)


def client_loop(c: Cluster, n: int, folder: Path, stop: threading.Event, t: Tally) -> None:
    """Upload a file, or one time in three a batch of small files (they travel in packs),
    and now and then restore something confirmed and compare its bytes."""
    rng = random.Random(n)
    i = 0
    while not stop.is_set():
        i += 1
        if rng.random() < 1 / 3:
            sizes = [rng.choice([0, 1, 700, 4096, 65_536]) for _ in range(rng.randint(2, 40))]
        else:
            sizes = [rng.choice([0, 1, 4096, 300_000, 1_500_000, 6_000_000])]
        paths = []
        for j, size in enumerate(sizes):
            path = folder / f"client{n} file {i}.{j}.bin"
            path.write_bytes(os.urandom(size) if rng.random() < 0.5 else log_text(rng, size))
            paths.append(path)
        res = c.client(
            "upload", *map(str, paths), "--replicas", str(REPLICAS), WARREN_CLIENT_NAME=f"soak{n}"
        )
        stored = {
            ln.strip().split("stored ", 1)[1].split(" (")[0]
            for ln in res.out.splitlines()
            if ln.strip().startswith("stored ")
        }
        with t.lock:
            if "Traceback" in res.err:
                t.broken.append(f"client{n} upload printed a traceback:\n{res.err}")
            for path in paths:
                if path.name in stored:
                    t.confirmed[path.name] = file_sha256(path)
                    t.sizes[path.name] = path.stat().st_size
                else:
                    t.failed_uploads += 1
            for line in res.err.splitlines():
                if line.startswith("error: "):
                    t.why_failed[re.sub(r"'[^']*'|[0-9a-f]{32}|\d+", "…", line)] += 1
        if res.code == 0 and len(stored) != len(paths):
            with t.lock:
                t.broken.append(
                    f"client{n} upload exited 0 but confirmed {len(stored)} of "
                    f"{len(paths)} files:\n{res.out}"
                )
        for path in paths:
            path.unlink()
        with t.lock:
            pick = rng.choice(sorted(t.confirmed)) if t.confirmed and rng.random() < 0.4 else None
        if pick is None:
            continue
        dest = folder / f"restore-{n}"
        res = c.client("download", pick, "-o", str(dest), "--force")
        got = restored_sha(t, dest) if res.code == 0 else None
        with t.lock:
            t.restores += 1
            if "Traceback" in res.err:
                t.broken.append(f"client{n} download printed a traceback:\n{res.err}")
            if got is None:
                t.failed_restores += 1
            elif got != t.confirmed[pick]:
                t.wrong.append(f"{pick} (restored during the chaos)")


def chaos_loop(
    c: Cluster, node: LocalNode, workers: list[str], seconds: float, stop: threading.Event, t: Tally
) -> None:
    rng = random.Random(99)
    started = time.monotonic()
    broker_at = started + seconds / 2
    managers_at = [started + seconds / 4, started + 3 * seconds / 4]
    active, standby = "manager", "manager2"
    while not stop.wait(rng.uniform(8, 15)):
        if time.monotonic() > broker_at and not t.broker_restarts:
            node.stop()
            node.start()
            t.broker_restarts += 1
            continue
        if managers_at and time.monotonic() > managers_at[0]:
            # The active manager dies; the standby takes over; the old one comes back and
            # stands by.
            managers_at.pop(0)
            c.kill(active, signal.SIGKILL)
            t.manager_kills += 1
            stop.wait(rng.uniform(2, 6))
            c.start(active)
            active, standby = standby, active
            continue
        if rng.random() < 0.3:
            rot_a_blob(c, workers, rng, t)
        victim = rng.choice(workers)
        c.kill(victim, signal.SIGKILL)
        t.kills += 1
        stop.wait(rng.uniform(2, 6))
        c.start(victim)
        t.restarts += 1


def rot_a_blob(c: Cluster, workers: list[str], rng: random.Random, t: Tally) -> None:
    """Flip a byte in a random stored copy: scrub (or the final verify) must find it, and
    repair must make a good copy from the other holder."""
    blobs = [p for w in workers for p in (c.data_dir(w) / "blobs").glob("*/*") if p.is_file()]
    blobs = [p for p in blobs if p.stat().st_size > 0]
    if not blobs:
        return
    blob = rng.choice(blobs)
    data = bytearray(blob.read_bytes())
    data[rng.randrange(len(data))] ^= 0x01
    blob.write_bytes(bytes(data))
    t.rotted += 1


def verify_all(c: Cluster, workers: list[str], folder: Path, t: Tally) -> int:
    """Restore every confirmed file through the client's own code and compare it, then hash
    its blobs on the workers' disks. Returns how many files came back byte for byte."""
    verified = 0
    dest = folder / "final-restore"
    # One session for all of them (a process per file would spend most of the time starting
    # Python).
    settings = Settings.load(environ=c.env(WARREN_CLIENT_NAME="soak-check"))
    with Session(settings, Connection) as session:
        for name, sha in sorted(t.confirmed.items()):
            try:
                session.download(name, dest, overwrite=True)
            except WarrenError as exc:
                t.lost.append(f"{name}: {exc}")
                continue
            if restored_sha(t, dest) != sha:
                t.wrong.append(f"{name} (restored at the end)")
            else:
                verified += 1
    # sha256 -> whole copies on disk: the fewest intact copies of any of its sealed chunks
    good = {sha: c.copies_on_disk(sha) for sha in set(t.confirmed.values())}
    for name, sha in sorted(t.confirmed.items()):
        if good.get(sha, 0) < REPLICAS:
            t.short.append(f"{name}: {good.get(sha, 0)} verified blobs on disk")
    return verified


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--corrupt-one",
        action="store_true",
        help="flip a byte of one restored file before it is compared: the soak must exit 1",
    )
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="warren-soak-"))
    node = LocalNode.with_free_ports(base / "rabbitmq", name="soak")
    node.start()
    c = Cluster(
        node,
        base / "cluster",
        env_extra={"WARREN_TRANSFER_TIMEOUT": "20", "WARREN_SCRUB_INTERVAL": "60"},
    )
    t = Tally(corrupt_one=args.corrupt_one)
    try:
        c.start_all(args.workers)
        c.ensure_key()  # its clients are run here, not by the harness
        c.start("manager2")  # a standby: takes over when the active one is killed
        workers = [f"w{i}" for i in range(1, args.workers + 1)]
        stop = threading.Event()
        seconds = args.minutes * 60
        threads = [
            guarded(t, f"client{i}", functools.partial(client_loop, c, i, base, stop, t))
            for i in range(1, args.clients + 1)
        ]
        threads.append(guarded(t, "chaos", lambda: chaos_loop(c, node, workers, seconds, stop, t)))
        for th in threads:
            th.start()
        time.sleep(seconds)
        stop.set()
        for th in threads:
            th.join()

        # Every worker back, every file back to two live replicas, then restore everything.
        for w in workers:
            if w not in c.procs:
                c.start(w)
        c.wait_alive(workers, timeout=120)
        # A copy rotted since the last scrub pass: have every holder check its copies now,
        # so the damaged ones are quarantined and repaired before the count.
        checked = c.client("verify", timeout=600)
        t.damaged_found = checked.out.count("DAMAGED")
        wait_for(lambda: c.status()["under_replicated"] == 0, timeout=600, what="repair")
        verified = verify_all(c, workers, base, t)
        total = sum(t.sizes.values())
        print(f"soak: {args.minutes:g} min, {args.clients} clients, {args.workers} workers")
        print(f"  files confirmed   {len(t.confirmed)} ({total / 1e6:.1f} MB)")
        print(f"  uploads failed    {t.failed_uploads} (clear error, not confirmed)")
        for why, times in t.why_failed.most_common():
            print(f"    {times:4} x {why}")
        print(f"  restores          {t.restores} during chaos, {t.failed_restores} failed")
        print(f"  worker kills      {t.kills} (kill -9), restarts {t.restarts}")
        print(f"  broker restarts   {t.broker_restarts}")
        print(
            f"  manager kills     {t.manager_kills} (kill -9 of the active one; a standby"
            " took over)"
        )
        print(
            f"  copies rotted     {t.rotted} (a byte flipped), {t.damaged_found} of them left "
            "for the final verify to find"
        )
        print(f"  verified          {verified} of {len(t.confirmed)} files restored byte for byte")
        print(f"  wrong bytes       {len(t.wrong)} {t.wrong if t.wrong else ''}")
        print(f"  lost              {len(t.lost)} {t.lost if t.lost else ''}")
        print(f"  short on disk     {len(t.short)} {t.short if t.short else ''}")
        print(f"  broken            {len(t.broken)}")
        for problem in t.broken:
            print(problem)
        if t.failures():
            print(f"soak: FAILED, {t.failures()} problem(s)")
            return 1
        print("soak: OK, nothing confirmed was lost")
        return 0
    finally:
        c.stop_all()
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
