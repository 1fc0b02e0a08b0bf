"""``make bench``: warren's throughput and memory, side by side with what the broker allows.

Starts its own private RabbitMQ node, manager and workers in a temporary folder, then
measures in one run:

* raw: one pika hop of the same bytes (bench/raw.py), the ceiling for a byte crossing the broker,
  and a two-hop chain through a pika relay (what a 2-replica upload's bytes cross);
* the disk: how fast it takes 1 GiB and an fsync (a 2-replica upload writes each byte 4 times);
* warren upload with 2 replicas and with 1, and restore, of one large file of random bytes
  (incompressible), and what a client command pays before its first chunk: start-up, and the
  SHA-256 pass over the file;
* the same for a large file of log-like text (a web server's access log: compressible), each
  against a raw hop of that file's own bytes;
* what finding out that a chunk does not compress costs, against the upload of those chunks;
* 5,000 files of 4 KiB in one upload command, against sequential raw request/reply round
  trips carrying 4 KiB each;
* CPU seconds per GB of each process (client, broker, manager, each worker) for each upload
  and restore;
* peak RSS of the client and of each worker at 64 MiB and at 1 GiB.

Prints a table with the ratios warren/raw and writes it to bench/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import raw  # noqa: E402
from bench.files import (  # noqa: E402
    MIB,
    detection_seconds,
    fresh,
    log_text_file,
    random_file,
    zstd_ratio,
)
from devtools.localnode import LocalNode  # noqa: E402
from tests.cluster import Cluster, bytes_on_disk  # noqa: E402
from warren.chunks import sha256_file  # noqa: E402


def settle() -> None:
    """Flush dirty pages left by the step before (the file just made, the last upload's
    replicas), so that each measure pays only for its own disk writes. The disk is a
    shared limit here: a 2-replica upload writes every byte four times (twice in the
    broker's message store, once per worker); see bench/cpu.py."""
    os.sync()


def disk_write_rate(folder: Path, size: int) -> float:
    """MB/s of writing ``size`` bytes in 1 MiB writes, then fsync: what this disk sustains."""
    path = folder / "disk-probe.bin"
    block = os.urandom(MIB)
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(size // MIB):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    path.unlink()
    return size / elapsed / 1e6


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    seconds: float
    rss_kib: int
    cpu: dict[str, float]  # CPU seconds of each process: client, broker, manager, w1..w4


def service_pids(c: Cluster) -> dict[str, int]:
    pids = {name: proc.pid for name, proc in c.procs.items()}
    pids["broker"] = int((c.node.base / "beam.pid").read_text())
    return pids


def measured(c: Cluster, *args: str) -> Run:
    """Run the client; its wall time, its peak RSS and every process's CPU seconds."""
    pids = service_pids(c)
    settle()
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    seconds, rss, usage = _run_client(c, *args)
    cpu = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    cpu["client"] = usage.ru_utime + usage.ru_stime
    return Run(seconds, rss, cpu)


def timed_client(c: Cluster, *args: str) -> tuple[float, int]:
    """Run the client; return (seconds, peak RSS in KiB) measured by the kernel."""
    settle()
    seconds, rss, _ = _run_client(c, *args)
    return seconds, rss


def _run_client(c: Cluster, *args: str) -> tuple[float, int, resource.struct_rusage]:
    err = c.base / "bench-client.err"
    with open(err, "wb") as errf:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "client", *args],
            env=c.env(),
            cwd=c.base,
            stdout=subprocess.DEVNULL,
            stderr=errf,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"client {args[0]} failed: {err.read_text()}")
    return elapsed, usage.ru_maxrss, usage


def worker_peak_kib(c: Cluster) -> dict[str, int]:
    peaks = {}
    for name, proc in c.procs.items():
        if name.startswith("w"):
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[name] = int(line.split()[1])
    return peaks


def lifecycle_rows(c: Cluster, big: Path, runs: int) -> list[tuple[str, str, str, str]]:
    """Identical content uploaded again (dedup), and an upload killed at 60% run again
    (resume), each timed against a whole upload of the same file in the same round."""
    size = big.stat().st_size
    full, again, resumed, inserted = [], [], [], []
    for n in range(runs):
        settle()
        fresh(big, f"dedup-{n}")
        full.append(timed_client(c, "upload", str(big), "--name", f"dedup-{n}")[0])
        again.append(timed_client(c, "upload", str(big), "--name", f"dedup-again-{n}")[0])
        inserted.append(insert_mid_file(c, big, f"dedup-{n}"))
        settle()
        fresh(big, f"resume-{n}")
        start = time.time() - 1
        proc = subprocess.Popen(
            [sys.executable, "-m", "client", "upload", str(big), "--name", f"resume-{n}"],
            env=c.env(),
            cwd=c.base,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 300
        # 60% of it on disk, two replicas of each chunk
        while bytes_on_disk(c, since=start) < 0.6 * 2 * size and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.kill()
        proc.wait()
        resumed.append(timed_client(c, "upload", str(big), "--name", f"resume-{n}")[0])
    whole = min(full)
    return [
        (
            "whole upload of the same file (2 replicas), for the two rows below",
            f"{whole:.2f} s",
            "1.00",
            "",
        ),
        (
            "identical content uploaded again under another name (dedup)",
            f"{min(again):.2f} s",
            f"{min(again) / whole:.2f}",
            "",
        ),
        (
            "an upload killed at 60% run again (resume)",
            f"{min(resumed):.2f} s",
            f"{min(resumed) / whole:.2f}",
            "",
        ),
        (
            "1 MiB inserted mid-file (unaligned), uploaded again as a new version: time, "
            "sealed bytes sent",
            f"{min(inserted)[0]:.2f} s, {min(inserted)[1] / MIB:.1f} MiB",
            f"{min(inserted)[0] / whole:.2f}",
            "",
        ),
    ]


def insert_mid_file(c: Cluster, big: Path, name: str) -> tuple[float, int]:
    """1 MiB of new bytes inserted at an unaligned offset in the middle of ``big`` (a copy),
    uploaded as a new version of ``name``: (seconds, bytes sent). Content-defined chunks
    send only the chunks around the insertion."""
    changed = big.with_name(big.name + ".inserted")
    at = big.stat().st_size // 2 + 12_345
    with open(big, "rb") as src, open(changed, "wb") as dst:
        dst.write(src.read(at))
        dst.write(os.urandom(MIB))
        while block := src.read(MIB):
            dst.write(block)
    settle()
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "client", "upload", str(changed), "--name", name, "--json"],
        env=c.env(),
        cwd=c.base,
        capture_output=True,
        check=True,
    ).stdout
    seconds = time.perf_counter() - started
    changed.unlink()
    return seconds, int(json.loads(out.splitlines()[-1])["bytes_sent"])


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=512, help="the large files (MiB)")
    parser.add_argument("--small-files", type=int, default=5000)
    parser.add_argument("--skip-gib", action="store_true", help="skip the 1 GiB RSS run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each measure; the best counts")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="warren-bench-"))
    node = LocalNode.with_free_ports(base / "rabbitmq", name="bench")
    node.start()
    rows: list[tuple[str, str, str, str]] = []
    cpu_rows: list[tuple[str, float, dict[str, float]]] = []  # (what, GB, CPU s per process)
    notes: list[str] = []
    try:
        url = node.url
        size: int = args.size_mib * MIB
        runs: int = args.runs
        c = Cluster(node, base / "cluster")
        c.start_all(4)
        c.ensure_key()  # its clients are run here, not by the harness
        data = base / "data"
        data.mkdir()
        big = random_file(data / "big.bin", size)
        text = log_text_file(data / "access.log", size)

        def mbs(seconds: float) -> float:
            return size / seconds / 1e6

        # What every client command pays before its first byte: starting Python, importing,
        # connecting, one request to the manager. The raw figures pay none of it.
        startup = min(timed_client(c, "status")[0] for _ in range(3))

        # The client hashes the whole file before it asks where the file goes (the manager
        # needs the hash to place it, and to skip content it already has): that pass alone.
        def hash_seconds() -> float:
            started = time.perf_counter()
            sha256_file(big)
            return time.perf_counter() - started

        hashing = min(hash_seconds() for _ in range(3))

        # Rounds of every large-file measure, raw included, so that raw and warren meet the
        # same machine: this VM's disk and CPU change speed from one minute to the next.
        raw_runs: list[float] = []
        raw_text_runs: list[float] = []
        chain_runs: list[float] = []
        disk_runs: list[float] = []
        raw_cpu: dict[str, dict[str, float]] = {}  # the fastest run's CPU: pika's, the broker's
        broker_pid = service_pids(c)["broker"]

        def raw_run(runs_: list[float], what: str, source: Path, hops: int = 1) -> None:
            settle()
            before = cpu_seconds(broker_pid)
            hop = raw.one_hop(url, size, source=source, hops=hops)
            broker = cpu_seconds(broker_pid) - before
            if not runs_ or hop.mbs > max(runs_):
                raw_cpu[what] = {"client": hop.cpu, "broker": broker}
            runs_.append(hop.mbs)

        up2: list[Run] = []
        up1: list[Run] = []
        back: list[Run] = []
        text_up2: list[Run] = []
        text_back: list[Run] = []
        for n in range(runs):
            print(
                f"round {n + 1} of {runs}: raw, disk, warren uploads and restores ...", flush=True
            )
            raw_run(raw_runs, "one hop", big)
            raw_run(chain_runs, "two-hop chain", big, hops=2)
            settle()
            disk_runs.append(disk_write_rate(base, 1024 * MIB))
            fresh(big, f"big-r2-{n}")
            up2.append(measured(c, "upload", str(big), "--name", f"big-r2-{n}", "--replicas", "2"))
            fresh(big, f"big-r1-{n}")
            up1.append(measured(c, "upload", str(big), "--name", f"big-r1-{n}", "--replicas", "1"))
            back.append(measured(c, "download", f"big-r2-{n}", "-o", str(data / "back"), "--force"))
            raw_run(raw_text_runs, "one hop of the text", text)
            fresh(text, f"log-r2-{n}")
            text_up2.append(
                measured(c, "upload", str(text), "--name", f"log-r2-{n}", "--replicas", "2")
            )
            text_back.append(
                measured(c, "download", f"log-r2-{n}", "-o", str(data / "back.log"), "--force")
            )
        raw_mbs, raw_text, disk = max(raw_runs), max(raw_text_runs), statistics.median(disk_runs)
        chain = max(chain_runs)

        def best(runs_: list[Run]) -> Run:
            return min(runs_, key=lambda r: r.seconds)

        t2, t1, tr = best(up2), best(up1), best(back)
        tt2, ttr = best(text_up2), best(text_back)
        per_round = ", ".join(
            f"{mbs(r.seconds) / w:.2f}" for r, w in zip(up2, raw_runs, strict=True)
        )
        per_round_text = ", ".join(
            f"{mbs(r.seconds) / w:.2f}" for r, w in zip(text_up2, raw_text_runs, strict=True)
        )
        per_round_sent = ", ".join(
            f"{mbs(r.seconds - startup - hashing) / w:.2f}"
            for r, w in zip(up2, raw_runs, strict=True)
        )

        def row(label: str, seconds: float, ref: float) -> tuple[str, str, str, str]:
            wall, net = mbs(seconds), mbs(seconds - startup)
            return (label, f"{wall:.0f} MB/s", f"{wall / ref:.2f}", f"{net / ref:.2f}")

        ratio = zstd_ratio(text)
        detect = detection_seconds(big)
        rows += [
            ("raw one hop (pika, window 16, prefetch 32)", f"{raw_mbs:.0f} MB/s", "1.00", "1.00"),
            ("disk: 1 GiB written, then fsync (median)", f"{disk:.0f} MB/s", "", ""),
            (
                "raw two-hop chain (pika: producer, relay, consumer)",
                f"{chain:.0f} MB/s",
                f"{chain / raw_mbs:.2f}",
                "",
            ),
            row("warren upload, 2 replicas (random bytes)", t2.seconds, raw_mbs),
            row("warren upload, 1 replica (random bytes)", t1.seconds, raw_mbs),
            row("warren restore (random bytes)", tr.seconds, raw_mbs),
            (
                f"raw one hop of the log-like text (zstd -1 shrinks it {ratio:.1f}x)",
                f"{raw_text:.0f} MB/s",
                "1.00",
                "1.00",
            ),
            row("warren upload, 2 replicas (log-like text)", tt2.seconds, raw_text),
            row("warren restore (log-like text)", ttr.seconds, raw_text),
            ("client start-up (python -m client status)", f"{startup:.2f} s", "", ""),
            ("client's SHA-256 pass over the large file", f"{hashing:.2f} s", "", ""),
        ]
        if detect is not None:
            rows.append(
                (
                    "finding out that random chunks do not compress (client CPU)",
                    f"{detect:.2f} s",
                    f"{detect / t2.seconds:.1%} of the upload",
                    "",
                )
            )
        gb = size / 1e9
        notes.append(
            "A 2-replica upload's bytes cross the broker twice, client to primary to backup, as "
            "the raw two-hop chain's do: against that chain, warren's 2-replica upload of random "
            f"bytes is {mbs(t2.seconds) / chain:.2f} ({mbs(t2.seconds - startup) / chain:.2f} "
            "less the client's start-up)."
        )
        cpu_rows += [
            (f"raw {what} (pika's processes as client)", gb, cpu) for what, cpu in raw_cpu.items()
        ]
        cpu_rows += [
            ("upload, 2 replicas (random bytes)", gb, t2.cpu),
            ("upload, 1 replica (random bytes)", gb, t1.cpu),
            ("restore (random bytes)", gb, tr.cpu),
            ("upload, 2 replicas (log-like text)", gb, tt2.cpu),
            ("restore (log-like text)", gb, ttr.cpu),
        ]

        print(f"{args.small_files} small files ...", flush=True)

        def small_files(run: int) -> Run:
            """Upload new small files in one command (stored content would be skipped)."""
            folder = data / f"small-{run}"
            folder.mkdir()
            for i in range(args.small_files):
                random_file(folder / f"s{i:05}", 4096)
            return measured(c, "upload", str(folder))

        raw_rrs: list[float] = []
        small_runs: list[Run] = []
        for n in range(runs):
            settle()
            raw_rrs.append(raw.round_trips(url, seconds=2.0, payload=4096))
            small_runs.append(small_files(n))
        raw_rr, ts = max(raw_rrs), best(small_runs)
        rate = args.small_files / ts.seconds
        rows += [
            (
                "raw request/reply round trips, 4 KiB each, one at a time",
                f"{raw_rr:.0f} /s",
                "1.00",
                "1.00",
            ),
            (
                f"warren upload of {args.small_files} x 4 KiB in one command, 2 replicas",
                f"{rate:.0f} files/s",
                f"{rate / raw_rr:.2f}",
                f"{args.small_files / (ts.seconds - startup) / raw_rr:.2f}",
            ),
        ]
        cpu_rows.append(
            (f"upload of {args.small_files} x 4 KiB", args.small_files * 4096 / 1e9, ts.cpu)
        )

        print("dedup and resume ...", flush=True)
        rows += lifecycle_rows(c, big, runs)
        notes.append(
            "The dedup and resume rows compare with a whole upload of the same file in the same "
            "round, not with raw: the time a command takes when the cluster already holds the "
            "content, or 60% of it."
        )

        print("peak RSS ...", flush=True)
        for label, mib in (("64 MiB", 64), ("1 GiB", 1024)):
            if mib == 1024 and args.skip_gib:
                continue
            for kind, make in (("random", random_file), ("log-like text", log_text_file)):
                sample = make(data / f"rss-{mib}.bin", mib * MIB)
                fresh(sample, f"rss-{mib}-{kind}")
                _, up_kib = timed_client(c, "upload", str(sample), "--name", f"rss-{mib}-{kind}")
                _, down_kib = timed_client(
                    c, "download", f"rss-{mib}-{kind}", "-o", str(data / f"rss-back-{mib}")
                )
                (data / f"rss-back-{mib}").unlink()
                peak = max(worker_peak_kib(c).values())
                rows.append(
                    (
                        f"peak RSS at {label} ({kind}): client upload / restore / worst worker",
                        f"{up_kib / 1024:.0f} / {down_kib / 1024:.0f} / {peak / 1024:.0f} MiB",
                        "",
                        "",
                    )
                )
                sample.unlink()
        notes.append(
            f"Upload with 2 replicas / raw, round by round: random {per_round}; log-like text "
            f"{per_round_text}. Random, less the client's start-up and its SHA-256 pass, i.e. "
            f"from the placement to the last confirmation: {per_round_sent}."
        )
    finally:
        c_stop = locals().get("c")
        if isinstance(c_stop, Cluster):
            c_stop.stop_all()
        node.stop()
        shutil.rmtree(base, ignore_errors=True)

    machine = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"files of {args.size_mib} MiB, 1 MiB chunks"
    )
    table = [
        "| measure | result (wall clock) | warren / raw | warren / raw, less client start-up |",
        "|---|---|---|---|",
    ]
    table += [f"| {a} | {b} | {r} | {n} |" for a, b, r, n in rows]
    procs = ["client", "broker", "manager", "w1", "w2", "w3", "w4"]
    cpu_table = [
        "| CPU seconds per GB of file | " + " | ".join(procs) + " | all |",
        "|---|" + "---|" * (len(procs) + 1),
    ]
    for what, gbytes, cpu in cpu_rows:
        cells = [f"{cpu.get(p, 0.0) / gbytes:.1f}" for p in procs]
        cpu_table.append(
            f"| {what} | " + " | ".join(cells) + f" | {sum(cpu.values()) / gbytes:.1f} |"
        )
    report = "\n".join(
        [
            f"# warren benchmark ({time.strftime('%Y-%m-%d')})",
            "",
            f"Machine: {machine}.",
            "",
            "Every warren figure is a whole client command, timed from outside. The last column "
            "subtracts the client's start-up (Python, imports, connecting, one request to the "
            "manager), which the raw figures do not pay. Each throughput is the best of "
            f"{args.runs} runs, raw and warren alike, each run after the disk has settled "
            "(`sync`), in rounds that take turns with raw: single runs vary by up to 30% "
            "here. A raw hop carries the same file's bytes, uncompressed, as pika would. "
            "A 2-replica upload writes each "
            "byte four times (twice in the broker's message store, once on each worker), so "
            "it can go no faster than a quarter of what the disk writes; this "
            "machine's disk has measured anywhere from 300 to 1,850 MB/s.",
            "",
            *table,
            "",
            *notes,
            "",
            "CPU seconds (user + system) each process spent on the fastest run of each measure, "
            "per GB of file content (for the small files, per GB of their 4 KiB each); the "
            "workers a file was not placed on spend only their heartbeats.",
            "",
            *cpu_table,
            "",
        ]
    )
    print()
    print(report)
    (ROOT / "bench" / "results.md").write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
