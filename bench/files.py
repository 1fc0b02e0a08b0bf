"""The files ``make bench`` uploads, and what it measures of them before: random bytes
(incompressible), log-like text (compressible), how much zstd shrinks one, and what
finding out that a chunk does not compress costs the client."""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from pathlib import Path

MIB = 1024 * 1024


def random_file(path: Path, size: int) -> Path:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MIB)
            f.write(os.urandom(n))
            left -= n
    return path


LOG_PATHS = (
    "/",
    "/index.html",
    "/api/v1/items",
    "/api/v1/items/{}",
    "/static/app.{}.js",
    "/login",
    "/search?q={}",
    "/img/{}.png",
    "/api/v1/users/{}/orders",
)
LOG_AGENTS = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "curl/8.4.0",
    "Googlebot/2.1 (+http://www.google.com/bot.html)",
    "python-requests/2.31",
)


def log_text_file(path: Path, size: int, seed: int = 15) -> Path:
    """A web server's access log: 32 MiB of lines (client address, time, request, status,
    bytes, user agent, response time, a random request id), repeated up to ``size``. Each
    1 MiB chunk is compressed on its own, so the repetition does not help compression.

    Made in a child process: the kernel counts a process's peak RSS before ``exec`` in the
    peak of what it runs, so a large bench process would inflate every client's figure.

    Another ``seed`` makes other lines: a run that must not find the last run's content
    stored (bench/restic.py's first backups) asks for a seed of its own."""
    child = multiprocessing.get_context("fork").Process(target=_write_log, args=(path, size, seed))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"could not write {path}")
    return path


def _write_log(path: Path, size: int, seed: int) -> None:
    rnd = random.Random(seed)
    lines, made, ts = [], 0, 1_700_000_000
    while made < min(size, 32 * MIB):
        ts += rnd.randrange(3)
        ip = ".".join(str(rnd.randrange(1, 255)) for _ in range(4))
        when = time.strftime("%d/%b/%Y:%H:%M:%S", time.gmtime(ts))
        method = rnd.choice(("GET",) * 8 + ("POST", "PUT", "DELETE"))
        req = rnd.choice(LOG_PATHS).format(rnd.randrange(100_000))
        status = rnd.choice((200,) * 20 + (201, 301, 304, 404, 500))
        line = (
            f'{ip} - - [{when} +0000] "{method} {req} HTTP/1.1" {status} '
            f'{rnd.randrange(200, 60_000)} "-" "{rnd.choice(LOG_AGENTS)}" '
            f"rt={rnd.random():.3f} id={rnd.getrandbits(128):032x}\n"
        )
        lines.append(line)
        made += len(line)
    block = "".join(lines).encode()
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def zstd_ratio(path: Path, chunk: int = MIB) -> float:
    """How much zstd level 1 shrinks the file's first 32 chunks, each on its own."""
    import zstandard

    raw = packed = 0
    with open(path, "rb") as f:
        for _ in range(32):
            data = f.read(chunk)
            if not data:
                break
            raw += len(data)
            packed += len(zstandard.ZstdCompressor(level=1).compress(data))
    return raw / packed


def detection_seconds(path: Path, chunk: int = MIB) -> float | None:
    """CPU seconds warren's client spends finding out that each chunk of the file does not
    compress (None before warren compressed anything)."""
    try:
        from warren import compression
    except ImportError:
        return None
    spent = 0.0
    with open(path, "rb") as f:
        while data := f.read(chunk):
            started = time.process_time()
            compression.encode(data)
            spent += time.process_time() - started
    return spent


# Bytes between the tags ``fresh`` writes: less than the smallest chunk warren cuts (a
# quarter of a quarter of WARREN_CHUNK_SIZE), so every chunk of the file is new content.
FRESH_EVERY = 16 * 1024


def fresh(path: Path, tag: str) -> None:
    """Make the file's content new, every chunk of it (``tag`` written every
    ``FRESH_EVERY`` bytes): chunks the cluster already holds would not be sent again, and
    files are cut by content, so changing the first bytes would renew only the first."""
    mark = f"{tag}\n".encode()
    size = path.stat().st_size
    with open(path, "r+b") as f:
        for at in range(0, max(size - len(mark), 1), FRESH_EVERY):
            f.seek(at)
            f.write(mark)
