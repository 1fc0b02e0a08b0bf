"""``make bench-restic``: warren with two copies side by side with restic with one.

Issue 25's goal is that warren, keeping every chunk on two workers, backs up and restores
no slower than restic keeping one copy in one local repository. This script measures both
on the same files in one run, on the same machine and disk, and prints a table of seven
rows (warren's time, restic's, and warren / restic):

1. a large file of random bytes, first backup (warren ``upload``, restic ``backup``);
2. a large file of log-like text, first backup (the same commands);
3. the random file again: warren ``upload`` under a fresh name (the client hashes the whole
   file, the manager finds the content stored), restic ``backup`` of the same path (restic
   finds its parent snapshot and, the file's size and mtime unchanged, does not read it);
4. 1 MiB inserted mid-file at an unaligned offset, then backed up again (warren ``upload``
   under the same name, a new version; restic ``backup``), with the bytes each sent:
   ``bytes_sent`` of ``upload --json``, ``data_added`` of ``restic backup --json``;
5. many 4 KiB files, first backup (``backup DIR`` for both);
6. the same files unchanged, backed up again (``backup DIR``: both find their parent
   snapshot and read no unchanged file);
7. restore of the grown file (warren ``download``, restic ``restore latest --target``).

Every run makes new content and a new restic repository, so that no first backup finds its
content stored by an earlier run (with content-defined chunks, bench.py's ``fresh()`` would
leave all but the first chunk stored). The best of ``--runs`` counts, row by row; each
command is timed from outside, after ``sync`` (see bench.py's ``settle()``).

Warren runs as bench.py runs it: its own private RabbitMQ node, a manager and 4 workers in a
temporary folder. restic is Debian's (``scripts/ensure-restic.sh``), with its cache in the
same temporary folder. The table is printed and appended to bench/results.md under
"Side by side with restic (DATE)".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.files import MIB, log_text_file, random_file  # noqa: E402
from devtools.localnode import LocalNode  # noqa: E402
from tests.cluster import Cluster  # noqa: E402

RESTIC_PASSWORD = "warren-bench"  # a throwaway repository's, deleted with the folder
REPLICAS = "2"


def settle() -> None:
    """Flush the dirty pages the step before left (the file just made, the last backup's
    writes), so that each command pays only for its own: as bench.py's ``settle()``."""
    os.sync()


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    """Run one command after ``sync``; its wall time and its standard output."""
    settle()
    started = time.perf_counter()
    proc = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:4])} ... failed: {proc.stderr.decode()[-2000:]}")
    return elapsed, proc.stdout.decode()


def json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _unmodified(out: str) -> int:
    """``files_unmodified`` of a ``backup --json`` summary (warren's and restic's alike)."""
    summary = [o for o in json_lines(out) if o.get("message_type") == "summary"]
    return int(str(summary[-1]["files_unmodified"])) if summary else -1


def insert_mid_file(path: Path, size: int, offset: int) -> None:
    """Insert ``size`` random bytes at ``offset`` (rewritten in place, so the path, and for
    restic the inode, stay the same; the size and mtime change)."""
    with open(path, "r+b") as f:
        f.seek(offset)
        tail = f.read()
        f.seek(offset)
        f.write(os.urandom(size))
        f.write(tail)


@dataclass
class Row:
    what: str
    warren: list[float] = field(default_factory=list)
    restic: list[float] = field(default_factory=list)
    note: Callable[[], str] = lambda: ""


class Warren:
    """The client of the bench's cluster; the commands bench.py runs, timed."""

    def __init__(self, c: Cluster) -> None:
        self.c = c

    def run(self, *args: str) -> tuple[float, str]:
        return timed([sys.executable, "-m", "client", *args], self.c.env(), self.c.base)


class Restic:
    """One local repository, made anew each run."""

    def __init__(self, repo: Path, cache: Path) -> None:
        self.repo = repo
        self.env = os.environ | {
            "RESTIC_PASSWORD": RESTIC_PASSWORD,
            "RESTIC_REPOSITORY": str(repo),
            "RESTIC_CACHE_DIR": str(cache),
        }
        subprocess.run(
            ["restic", "init", "--repo", str(repo)], env=self.env, check=True, capture_output=True
        )

    def run(self, *args: str) -> tuple[float, str]:
        return timed(["restic", "--repo", str(self.repo), *args], self.env, self.repo.parent)


def one_run(
    n: int,
    w: Warren,
    base: Path,
    size: int,
    small_files: int,
    rows: list[Row],
    sent: list[str],
    unmodified: list[str],
) -> None:
    """Every row once, on new content: warren's command, then restic's on the same files."""
    data = base / f"run-{n}"
    data.mkdir()
    r = Restic(base / f"restic-repo-{n}", base / "restic-cache")
    big = random_file(data / "big.bin", size)
    text = log_text_file(data / "access.log", size, seed=1000 + n)

    def both(row: Row, warren: list[str], restic: list[str]) -> tuple[str, str]:
        tw, out_w = w.run(*warren)
        tr, out_r = r.run(*restic)
        row.warren.append(tw)
        row.restic.append(tr)
        return out_w, out_r

    print(f"run {n + 1}: first backups ...", flush=True)
    both(
        rows[0],
        ["upload", str(big), "--name", f"big-{n}", "--replicas", REPLICAS],
        ["backup", str(big)],
    )
    both(
        rows[1],
        ["upload", str(text), "--name", f"log-{n}", "--replicas", REPLICAS],
        ["backup", str(text)],
    )
    print(f"run {n + 1}: the same again, 1 MiB inserted ...", flush=True)
    both(
        rows[2],
        ["upload", str(big), "--name", f"big-again-{n}", "--replicas", REPLICAS],
        ["backup", str(big)],
    )
    insert_mid_file(big, MIB, size // 2 + 12_345)
    out_w, out_r = both(
        rows[3],
        ["upload", str(big), "--name", f"big-{n}", "--replicas", REPLICAS, "--json"],
        ["backup", "--json", str(big)],
    )
    w_sent = sum(int(str(o.get("bytes_sent", 0))) for o in json_lines(out_w))
    summary = [o for o in json_lines(out_r) if o.get("message_type") == "summary"]
    r_added = int(str(summary[-1]["data_added"])) if summary else -1
    sent.append(f"{w_sent / MIB:.2f} MiB / {r_added / MIB:.2f} MiB")

    print(f"run {n + 1}: restore ...", flush=True)
    both(
        rows[6],
        ["download", f"big-{n}", "-o", str(data / "big-back.bin"), "--force"],
        ["restore", "latest", "--path", str(big), "--target", str(data / "restic-back")],
    )
    (data / "big-back.bin").unlink()
    back = data / "restic-back" / big.relative_to("/")
    if back.stat().st_size != big.stat().st_size:
        raise SystemExit(f"restic restored {back.stat().st_size} bytes, not {big.stat().st_size}")
    shutil.rmtree(data / "restic-back")

    print(f"run {n + 1}: {small_files} small files ...", flush=True)
    small = data / "small"
    small.mkdir()
    for i in range(small_files):
        random_file(small / f"s{i:05}", 4096)
    backup = ["backup", str(small), "--replicas", REPLICAS]
    both(rows[4], backup, ["backup", str(small)])
    out_w, out_r = both(rows[5], [*backup, "--json"], ["backup", "--json", str(small)])
    unmodified.append(f"{_unmodified(out_w)} / {_unmodified(out_r)}")

    shutil.rmtree(data)
    shutil.rmtree(r.repo)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=256, help="the large files (MiB)")
    parser.add_argument("--small-files", type=int, default=5000, help="how many 4 KiB files")
    parser.add_argument("--runs", type=int, default=3, help="runs of each row; the best counts")
    args = parser.parse_args()
    if shutil.which("restic") is None:
        raise SystemExit("restic is missing: sh scripts/ensure-restic.sh installs it")
    size: int = args.size_mib * MIB
    big, grown = f"{args.size_mib} MiB", f"{args.size_mib + 1} MiB"
    k = args.small_files
    rows = [
        Row(f"{big} random, first backup (upload / backup)"),
        Row(f"{big} log-like text, first backup (upload / backup)"),
        Row(f"{big} random again (upload under a new name / backup of the same path)"),
        Row("1 MiB inserted mid-file, backed up again (upload, a new version / backup)"),
        Row(f"{k:,} x 4 KiB files, first backup (backup DIR / backup DIR)"),
        Row(f"the same {k:,} files unchanged, again (backup DIR / backup DIR)"),
        Row(f"restore of the {grown} file (download / restore latest --target)"),
    ]
    sent: list[str] = []
    unmodified: list[str] = []  # row 6: files each found unchanged (not read again)
    restic_version = subprocess.run(
        ["restic", "version"], capture_output=True, text=True, check=True
    ).stdout.strip()

    base = Path(tempfile.mkdtemp(prefix="warren-restic-"))
    node = LocalNode.with_free_ports(base / "rabbitmq", name="bench-restic")
    node.start()
    c: Cluster | None = None
    try:
        # The client seals every chunk with the owner's key: made once, as `warren init` is.
        password = base / "warren-password"
        password.write_text("warren-bench\n")
        password.chmod(0o600)
        c = Cluster(node, base / "cluster", env_extra={"WARREN_PASSWORD_FILE": str(password)})
        c.start_all(4)
        Warren(c).run("init")
        for n in range(args.runs):
            one_run(n, Warren(c), base, size, args.small_files, rows, sent, unmodified)
    finally:
        if c is not None:
            c.stop_all()
        node.stop()
        shutil.rmtree(base, ignore_errors=True)

    table = [
        "| row | warren, 2 copies | restic, 1 copy | warren / restic |",
        "|---|---|---|---|",
    ]
    for i, row in enumerate(rows, 1):
        tw, tr = min(row.warren), min(row.restic)
        table.append(f"| {i}. {row.what} | {tw:.2f} s | {tr:.2f} s | {tw / tr:.2f} |")
    report = "\n".join(
        [
            f"## Side by side with restic ({time.strftime('%Y-%m-%d')})",
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, {restic_version}. `bench/restic.py --size-mib "
            f"{args.size_mib} --small-files {k} --runs {args.runs}`: each time is a whole "
            f"command timed from outside after `sync`, the best of {args.runs} run(s); every "
            "run makes new files and a new restic repository. warren keeps 2 copies (4 "
            "workers, its own RabbitMQ node), restic 1 (one local repository). In each row's "
            "label, warren's command / restic's. The log-like text repeats a 32 MiB block, "
            "which both find the same chunks of when the file is larger.",
            "",
            *table,
            "",
            "Row 4, sent by warren (`bytes_sent` of `upload --json`, sealed, once: the primary "
            "forwards to the second copy) / added by restic (`data_added` of `backup --json`), "
            f"run by run: {'; '.join(sent)}.",
            "",
            "Row 6, files found unmodified (not read again) by warren / by restic "
            f"(`files_unmodified` of `backup --json`), run by run: {'; '.join(unmodified)}.",
            "",
            "Row 3 is not the same work on both sides: warren's `upload` under a new name reads "
            "and hashes the whole file before the manager finds it stored; restic's second "
            "`backup` of the same path finds its parent snapshot and does not read the file.",
            "",
        ]
    )
    print()
    print(report)
    results = ROOT / "bench" / "results.md"
    previous = results.read_text() if results.exists() else ""
    results.write_text(previous.rstrip("\n") + "\n\n" + report if previous else report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
