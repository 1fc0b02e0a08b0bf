"""Soak test: clients upload and restore while workers are killed and the broker restarts.

    make soak                      # 5 minutes, 3 clients
    .venv/bin/python bench/soak.py --minutes 2 --clients 2

Everything runs on a private RabbitMQ node in a temporary folder. At the end every upload
the client confirmed (exit 0) must restore byte-identical: the "lost" figure must be 0.
Not part of `make test`: it runs for minutes and its load is random.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client.session import Session  # noqa: E402
from devtools.localnode import LocalNode  # noqa: E402
from tests.cluster import Cluster, wait_for  # noqa: E402
from warren.config import Settings  # noqa: E402
from warren.errors import WarrenError  # noqa: E402


@dataclass
class Tally:
    confirmed: dict[str, str] = field(default_factory=dict)  # name -> sha256
    bytes: int = 0
    failed_uploads: int = 0
    restores: int = 0
    failed_restores: int = 0
    kills: int = 0
    restarts: int = 0
    broker_restarts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


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
            path.write_bytes(os.urandom(size))
            paths.append(path)
        res = c.client("upload", *map(str, paths), "--replicas", "2", WARREN_CLIENT_NAME=f"soak{n}")
        stored = {
            ln.strip().split("stored ", 1)[1].split(" (")[0]
            for ln in res.out.splitlines()
            if ln.strip().startswith("stored ")
        }
        with t.lock:
            for path in paths:
                if path.name in stored:
                    t.confirmed[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
                    t.bytes += path.stat().st_size
                else:
                    t.failed_uploads += 1
        for path in paths:
            path.unlink()
        if t.confirmed and rng.random() < 0.4:
            pick = rng.choice(sorted(t.confirmed))
            dest = folder / f"restore-{n}"
            res = c.client("download", pick, "-o", str(dest), "--force")
            with t.lock:
                t.restores += 1
                if res.code != 0:
                    t.failed_restores += 1
                elif hashlib.sha256(dest.read_bytes()).hexdigest() != t.confirmed[pick]:
                    raise SystemExit(f"restore of {pick} returned different bytes")


def chaos_loop(
    c: Cluster, node: LocalNode, workers: list[str], seconds: float, stop: threading.Event, t: Tally
) -> None:
    rng = random.Random(99)
    broker_at = time.monotonic() + seconds / 2
    while not stop.wait(rng.uniform(8, 15)):
        if time.monotonic() > broker_at and not t.broker_restarts:
            node.stop()
            node.start()
            t.broker_restarts += 1
            continue
        victim = rng.choice(workers)
        c.kill(victim, signal.SIGKILL)
        t.kills += 1
        stop.wait(rng.uniform(2, 6))
        c.start(victim)
        t.restarts += 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="warren-soak-"))
    node = LocalNode.with_free_ports(base / "rabbitmq", name="soak")
    node.start()
    c = Cluster(node, base / "cluster", env_extra={"WARREN_TRANSFER_TIMEOUT": "20"})
    t = Tally()
    try:
        c.start_all(args.workers)
        workers = [f"w{i}" for i in range(1, args.workers + 1)]
        stop = threading.Event()
        seconds = args.minutes * 60
        threads = [
            threading.Thread(target=client_loop, args=(c, i, base, stop, t))
            for i in range(1, args.clients + 1)
        ]
        threads.append(
            threading.Thread(target=chaos_loop, args=(c, node, workers, seconds, stop, t))
        )
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
        wait_for(lambda: c.status()["under_replicated"] == 0, timeout=600, what="repair")
        lost = []
        dest = base / "final-restore"
        # Every confirmed file, restored through the client's own code: one session for
        # all of them (a process per file would spend most of the time starting Python).
        with Session(Settings.load(environ=c.env(WARREN_CLIENT_NAME="soak-check"))) as session:
            for name, sha in sorted(t.confirmed.items()):
                try:
                    session.download(name, dest, overwrite=True)
                except WarrenError:
                    lost.append(name)
                    continue
                if hashlib.sha256(dest.read_bytes()).hexdigest() != sha:
                    lost.append(name)
        print(f"soak: {args.minutes:g} min, {args.clients} clients, {args.workers} workers")
        print(f"  files confirmed   {len(t.confirmed)} ({t.bytes / 1e6:.1f} MB)")
        print(f"  uploads failed    {t.failed_uploads} (clear error, not confirmed)")
        print(f"  restores          {t.restores} during chaos, {t.failed_restores} failed")
        print(f"  worker kills      {t.kills} (kill -9), restarts {t.restarts}")
        print(f"  broker restarts   {t.broker_restarts}")
        print(f"  lost              {len(lost)} {lost if lost else ''}")
        return 1 if lost else 0
    finally:
        c.stop_all()
        node.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
