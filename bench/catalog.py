"""How the manager copes with a large catalog: idle CPU, memory, list, placement, rebuild.

    .venv/bin/python bench/catalog.py --files 1000000

Fills a catalog with synthetic versions (one sealed chunk each, a blob on two of four
workers: ``--files 1000000`` is a million chunks), starts
the real ``Manager`` on the in-memory broker with four stand-in workers that send
heartbeats, an inventory each, and then the version records of a rebuild, and prints:
the time each step took, the manager's CPU over an idle minute's worth of ticks, its peak
RSS, and how long ``list PREFIX`` and a placement take.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import logging
import resource
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client.session import Session  # noqa: E402
from manager.catalog import Catalog  # noqa: E402
from manager.records import RecordSeal  # noqa: E402
from manager.service import Manager  # noqa: E402
from tests.stubcluster import FAST, wait_for  # noqa: E402
from warren import messages as m  # noqa: E402
from warren.errors import Unavailable  # noqa: E402
from warren.sealing import Sealer, load_or_create_key  # noqa: E402
from warren.testing import StubBroker  # noqa: E402
from warren.topology import MANAGER_EVENTS, MANAGER_REQUESTS, worker_topology  # noqa: E402

WORKERS = ("w1", "w2", "w3", "w4")
OWNER = "guest"


def sha(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def fill(path: Path, files: int) -> float:
    """Synthetic versions straight into SQLite: file i is ``dir{i%1000}/file{i}``."""
    started = time.monotonic()
    c = Catalog(path, 10)
    c.open()
    c.close()
    db = sqlite3.connect(path)
    now = time.time()
    db.executemany(
        "INSERT INTO versions VALUES (?,?,?,?,?,?,?,?,?,?)",
        (
            (OWNER, f"dir{i % 1000}/file{i}", 1, sha(-i), 1000, 2, now, 0o644, now, "0" * 32)
            for i in range(files)
        ),
    )
    db.executemany(
        "INSERT INTO version_chunks VALUES (?,?,?,?,?,?,?)",
        ((OWNER, f"dir{i % 1000}/file{i}", 1, 0, sha(i), 1000, 1000) for i in range(files)),
    )
    db.executemany(
        "INSERT INTO chunks VALUES (?,?,?,?,?)",
        ((OWNER, sha(i), 1000, 2, 0.0) for i in range(files)),
    )
    db.executemany(
        "INSERT INTO replicas VALUES (?,?,?)",
        ((sha(i), WORKERS[(i + k) % 4], 1000) for i in range(files) for k in (0, 1)),
    )
    db.commit()
    db.close()
    return time.monotonic() - started


def blobs_of(worker: str, files: int) -> tuple[m.BlobEntry, ...]:
    n = WORKERS.index(worker)
    return tuple(m.BlobEntry(sha(i), 1000) for i in range(files) if (i - n) % 4 in (0, 3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle to measure")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    base = Path(tempfile.mkdtemp(prefix="warren-catalog-bench-"))
    print(f"filling a catalog of {args.files:,} files ...", flush=True)
    print(f"  fill: {fill(base / 'manager' / 'catalog.sqlite3', args.files):.1f} s")

    broker = StubBroker()
    key = base / "manager.key"  # the stand-in workers hand back records sealed with it
    settings = dataclasses.replace(
        FAST, data_dir=base / "manager", dead_after=5.0, manager_key_file=str(key)
    )
    seal = RecordSeal(Sealer(load_or_create_key(key)))
    stop = threading.Event()
    manager = Manager(settings, stop, broker.connect)
    thread = threading.Thread(target=manager.run, daemon=True)
    cpu0 = time.process_time()
    thread.start()
    wait_for(lambda: MANAGER_REQUESTS in broker.queues, what="the manager")

    fake = broker.connect(settings, "stand-in workers")
    fake.open()
    for w in WORKERS:
        fake.declare(worker_topology(w))

    def beat() -> None:
        for w in WORKERS:
            fake.publish(
                MANAGER_EVENTS, m.Heartbeat(w, 10**12, 0, 0).encode(), type="worker.heartbeat"
            )

    beat()
    started = time.monotonic()
    for w in WORKERS:  # what a worker sends on (re)connect, and what a rebuild reads
        inv = m.Inventory(worker=w, blobs=blobs_of(w, args.files))
        fake.publish(MANAGER_EVENTS, inv.encode(), type=inv.TYPE)
    wait_for(lambda: broker.depth(MANAGER_EVENTS) == 0, timeout=3600, what="inventories")
    print(f"  4 inventories reconciled: {time.monotonic() - started:.1f} s")

    records = [
        m.VersionRecord(
            OWNER, f"rebuilt{i}", 1, sha(-i), 1000, time.time(), 2, 0, 0.0, "1" * 32,
            (m.ChunkRef(sha(i), 1000, 1000),),
        )
        for i in range(args.files)
    ]  # fmt: skip
    started = time.monotonic()
    sealed = seal.seal(records)
    inv = m.Inventory(worker="w1", blobs=blobs_of("w1", args.files), records=sealed)
    fake.publish(MANAGER_EVENTS, inv.encode(), type=inv.TYPE)
    wait_for(lambda: broker.depth(MANAGER_EVENTS) == 0, timeout=3600, what="the records")
    print(
        f"  {args.files:,} version records merged (a rebuild): {time.monotonic() - started:.1f} s"
    )
    # What the stand-ins sent stays referenced by the in-memory broker's log: let it go, so
    # the idle figure is the manager's, not Python's collector walking the bench's objects.
    del records, sealed, inv
    broker.published.clear()
    gc.collect()

    with Session(dataclasses.replace(settings, client_name="bench"), broker.connect) as s:
        started = time.monotonic()

        def counted() -> bool:  # the manager's first pass over the catalog is done
            beat()
            try:
                return bool(s.status().files >= args.files)
            except Unavailable:  # busy with it for longer than a request waits
                return False

        wait_for(counted, timeout=3600, what="the catalog counted")
        # The first check of every blob's copies runs on the manager's thread: a status
        # answered within a second again means it is over.
        while True:
            beat()
            asked = time.monotonic()
            try:
                s.status()
            except Unavailable:
                continue
            if time.monotonic() - asked < 1.0:
                break
            time.sleep(1.0)
        print(f"  the first check of every blob: {time.monotonic() - started:.1f} s")
    for _ in range(5):  # and a few quiet seconds more before measuring
        time.sleep(1.0)
        beat()
    cpu = time.process_time()
    for _ in range(int(args.idle)):
        time.sleep(1.0)
        beat()
    idle = (time.process_time() - cpu) / args.idle
    print(f"  idle: {idle * 100:.1f}% of a core (heartbeats from 4 workers, {args.idle:.0f} s)")

    with Session(dataclasses.replace(settings, client_name="bench"), broker.connect) as s:
        started = time.monotonic()
        listed = s.files("dir7/")
        print(f"  list dir7/ ({len(listed):,} files): {time.monotonic() - started:.2f} s")
        started = time.monotonic()
        pages = s.pages()
        first = next(pages)
        at_first = time.monotonic() - started
        count = len(first) + sum(len(p) for p in pages)
        print(
            f"  list of all {count:,} files: first page of {len(first):,} in {at_first:.2f} s, "
            f"all in {time.monotonic() - started:.1f} s"
        )
        beat()
        started = time.monotonic()
        new = m.PackFile("", 10, sha(-1))
        s.request(m.PackRequest(files=(new,), replicas=2, chunks=True), m.PackAccepted)
        print(f"  a placement (a pack of one new chunk): {time.monotonic() - started:.3f} s")
        started = time.monotonic()
        held = tuple(m.PackFile("", 1000, sha(i)) for i in range(0, args.files, args.files // 256))
        s.request(m.PackRequest(files=held[:256], replicas=2, chunks=True), m.PackAccepted)
        print(
            f"  a pack of {len(held[:256])} chunks already held: {time.monotonic() - started:.3f} s"
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS (manager, stand-ins and bench in one process): {rss:.0f} MiB")
    print(f"  CPU in all: {time.process_time() - cpu0:.1f} s")
    stop.set()
    thread.join(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
