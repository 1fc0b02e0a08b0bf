"""Where the CPU goes: per-process CPU seconds of one upload command, on a private cluster.

    .venv/bin/python bench/cpu.py --size-mib 256      # one large file, 2 replicas
    .venv/bin/python bench/cpu.py --files 500         # 500 files of 4 KiB in one command
    .venv/bin/python bench/cpu.py --size-mib 512 --restore   # then restore it, from disk

Prints the wall time and the CPU seconds (user + system) that the broker, the manager, each
worker and the client spent on it, read from /proc and from the kernel's child accounting.
With --restore it then restores the first file and measures that too: the blob is read from
disk, as workers drop what they write from memory. Disk writes are the services' only.
On a 2-core machine, a sum near 2 x wall time means the machine is CPU-bound.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.localnode import LocalNode  # noqa: E402
from tests.cluster import Cluster  # noqa: E402


def disk_writes(pid: int) -> int:
    """Bytes the process sent towards the disk, less those deleted before they got there."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["write_bytes"]) - int(fields["cancelled_write_bytes"])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(c: Cluster, pids: dict[str, int], command: list[str]) -> None:
    """Run one client command; print its wall time and every process's CPU and disk writes."""
    os.sync()  # what came before is not this command's disk writes
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    written = {name: disk_writes(pid) for name, pid in pids.items()}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "client", *command],
        env=c.env(),
        cwd=c.base,
        capture_output=True,
        check=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    spent = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    written = {name: disk_writes(pid) - written[name] for name, pid in pids.items()}
    spent["client"] = (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    print(
        f"wall {wall:.2f} s, CPU {sum(spent.values()):.2f} s and "
        f"{sum(written.values()) / 1e6:.0f} MB written to disk by the services"
    )
    for name, seconds in sorted(spent.items(), key=lambda kv: -kv[1]):
        disk = f"{written[name] / 1e6:8.0f} MB written" if name in written else ""
        print(f"  {name:8} {seconds:6.2f} s CPU {disk}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=0, help="upload one file of this size")
    parser.add_argument("--files", type=int, default=0, help="upload this many 4 KiB files")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument(
        "--restore", action="store_true", help="then restore the first file, and measure that"
    )
    args = parser.parse_args()
    if bool(args.size_mib) == bool(args.files):
        parser.error("give exactly one of --size-mib and --files")

    base = Path(tempfile.mkdtemp(prefix="warren-cpu-"))
    node = LocalNode.with_free_ports(base / "rabbitmq", name="cpu")
    node.start()
    c = Cluster(node, base / "cluster")
    try:
        c.start_all(4)
        c.ensure_key()  # its clients are run here, not by the harness
        data = base / "data"
        data.mkdir()
        if args.size_mib:
            paths = [data / "big.bin"]
            paths[0].write_bytes(os.urandom(args.size_mib * 1024 * 1024))
        else:
            paths = [data / f"f{i:05}" for i in range(args.files)]
            for p in paths:
                p.write_bytes(os.urandom(4096))
        pids = {name: proc.pid for name, proc in c.procs.items()}
        pids["broker"] = int((node.base / "beam.pid").read_text())
        upload = ["upload", *map(str, paths), "--replicas", str(args.replicas)]
        measure(c, pids, upload)
        if args.restore:
            print("restore of the first file:")
            measure(c, pids, ["download", paths[0].name, "-o", str(data / "restored")])
    finally:
        c.stop_all()
        node.stop()
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
