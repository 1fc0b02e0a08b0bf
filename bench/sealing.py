"""What cutting and sealing cost the client, and opening costs a restore: CPU per byte.

    .venv/bin/python bench/sealing.py              # 1 GiB random and 1 GiB log-like text
    .venv/bin/python bench/sealing.py --size-mib 256

Prints JSON: for each kind of content, the process CPU seconds (user + system, one process,
one thread) per GB of plaintext that ``warren.chunkseal`` spends to cut, name and seal a file
(reading it included, from the page cache), and to open and check its sealed chunks again,
with the sealed bytes per plaintext byte. Wall time with ``seal_file_chunks(threads=2)`` is
given too: how fast an uploader could be fed on this machine. Each chunk is opened right
after it is sealed (timed apart), so memory stays at a few chunks whatever the size.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from warren import chunkseal as cs  # noqa: E402

MIB = 1024 * 1024
GB = 1e9
BLOCK = 16 * MIB


def text_block(n: int) -> bytes:
    """16 MiB of web-server log lines, different in every block (zstd level 1 sees little of
    one block from the next: its window is smaller)."""
    lines = []
    size = 0
    i = n * 1_000_003
    while size < BLOCK:
        line = (
            f"10.{i % 256}.{i // 7 % 256}.{i % 13} - - [07/Dec/2026:{i // 3600 % 24:02}:"
            f'{i // 60 % 60:02}:{i % 60:02} +0000] "GET /api/v2/items/{i * 7919 % 1_000_000}'
            f'?page={i % 50} HTTP/1.1" {200 if i % 17 else 404} {i * 37 % 50_000} '
            f'"-" "client/{i % 5}.{i % 3}"\n'
        ).encode()
        lines.append(line)
        size += len(line)
        i += 1
    return b"".join(lines)[:BLOCK]


def write(path: Path, kind: str, size: int) -> None:
    with open(path, "wb") as f:
        for n in range(size // BLOCK):
            f.write(os.urandom(BLOCK) if kind == "random" else text_block(n))


def measure(path: Path, size: int) -> dict[str, float]:
    seal_key, ids_key, seed = secrets.token_bytes(32), secrets.token_bytes(32), 0x1234_5678
    params = cs.params_for(4 * MIB)
    sealing = opening = 0.0
    sealed_bytes = chunks = 0
    chunks_in = cs.seal_file_chunks(path, seal_key, ids_key, seed, params)
    while True:
        start = time.process_time()
        chunk = next(chunks_in, None)
        sealing += time.process_time() - start
        if chunk is None:
            break
        start = time.process_time()
        cs.open_chunk(seal_key, ids_key, chunk.sealed, params.max_size)
        opening += time.process_time() - start
        sealed_bytes += len(chunk.sealed)
        chunks += 1
    start = time.perf_counter()
    for _ in cs.seal_file_chunks(path, seal_key, ids_key, seed, params, threads=2):
        pass
    wall = time.perf_counter() - start
    return {
        "sealing CPU seconds per GB": round(sealing / (size / GB), 3),
        "opening CPU seconds per GB": round(opening / (size / GB), 3),
        "sealed bytes per byte": round(sealed_bytes / size, 4),
        "average chunk MiB": round(size / chunks / MIB, 3),
        "sealing MB/s with 2 threads (wall)": round(size / MIB / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="each file's size")
    args = parser.parse_args()
    size = max(1, args.size_mib * MIB // BLOCK) * BLOCK
    results: dict[str, object] = {"size MiB": size // MIB, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="warren-sealing-") as tmp:
        for kind in ("random", "log-like text"):
            path = Path(tmp) / kind.replace(" ", "-")
            write(path, kind, size)
            results[kind] = measure(path, size)
            path.unlink()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
