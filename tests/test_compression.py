"""Compression on the wire and on disk, end to end. Since chunks are sealed (issue 24),
the client compresses each chunk before sealing it, when that saves (``warren.chunkseal``):
compressible text travels and is kept much smaller than it is, random bytes grow by at
most a seal's overhead, and packs travel raw (sealed bytes do not compress), so no frame
and no ``encoding`` header comes from a client. Workers keep each sealed chunk as it came;
a repair copy sends those bytes as they are. Workers still refuse bad frames, which a
repair copy between workers may carry.

The protocol's cases run on the in-memory broker; the last tests run the real processes on
a private RabbitMQ node.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import zstandard

from client.session import Progress
from tests.cluster import Cluster
from tests.stubcluster import StubCluster, file_chunks, wait_for
from warren import messages as m
from warren.chunkseal import SEAL_OVERHEAD
from warren.testing import Message
from warren.topology import DEAD_LETTER_QUEUE, worker_chunks

CHUNK = 64 * 1024  # the stub cluster's chunk size


def log_text(size: int, seed: int = 0) -> bytes:
    out: list[bytes] = []
    made, i = 0, seed
    while made < size:
        status = 404 if i % 9 == 0 else 200
        line = (
            f'10.1.{i % 200}.{i % 13} - - [02/Feb/2026:10:{i % 60:02}:{i % 59:02} +0000] "GET '
            f'/api/items/{i * 7919 % 100_000} HTTP/1.1" {status} {i % 4000}\n'
        ).encode()
        out.append(line)
        made += len(line)
        i += 1
    return b"".join(out)[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def packs_of(c: StubCluster, chunks: list[m.ChunkRef]) -> list[Message]:
    """The packs a client sent (hop 0) that carried any of these chunks."""
    shas = {ch.sha256 for ch in chunks}
    return [
        p
        for p in c.broker.published
        if p.type == m.PACK_TYPE
        and (h := m.PackHeaders.from_headers(p.headers or {}, len(p.body))).hop == 0
        and shas & {f.sha256 for f in h.files}
    ]


def upload_and_restore(c: StubCluster, tmp_path: Path, data: bytes, name: str) -> list[m.ChunkRef]:
    """Upload ``data`` with 2 replicas; check each of its sealed chunks is kept on two
    workers as the bytes its name hashes, that no worker holds a line of the file, and that
    it restores byte for byte. Its chunks."""
    src = tmp_path / name
    src.write_bytes(data)
    with c.session() as s:
        result = s.upload(src, name, 2)
    chunks = file_chunks(c, result.sha256)
    assert chunks and sum(ch.plain for ch in chunks) == len(data)
    for ch in chunks:
        holders = [w for w, wk in c.workers.items() if wk.blobs.find(ch.sha256) is not None]
        assert len(holders) == 2, f"chunk {ch.sha256[:12]} on {holders}"
        for w in holders:
            path = c.workers[w].blobs.find(ch.sha256)
            assert path is not None and path.suffix == ""  # kept as it came, not as frames
            assert sha(path.read_bytes()) == ch.sha256 and path.stat().st_size == ch.size
            assert c.workers[w].blobs.check(ch.sha256, ch.size) is None  # scrub, verify
    probe = data[len(data) // 2 : len(data) // 2 + 48]
    for worker in c.workers.values():
        for path in worker.blobs.dir.rglob("*"):
            assert not path.is_file() or probe not in path.read_bytes(), f"plaintext in {path}"
    with c.session() as s:
        s.download(name, tmp_path / f"{name}.back", overwrite=True)
    assert (tmp_path / f"{name}.back").read_bytes() == data
    return chunks


def test_text_is_compressed_before_it_is_sealed_and_travels_and_is_kept_small(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = log_text(5 * CHUNK + 1234)
    chunks = upload_and_restore(stub, tmp_path, data, "access.log")
    assert sum(ch.size for ch in chunks) < len(data) / 3
    packs = packs_of(stub, chunks)
    assert packs and all("encoding" not in (p.headers or {}) for p in packs)  # sent raw
    assert sum(len(p.body) for p in packs) < len(data) / 3
    # The restore sends the sealed chunks back as they are kept: the worker decodes nothing.
    back = [p for p in stub.broker.published if p.type == m.RESTORE_CHUNK_TYPE]
    assert back and all("encoding" not in (p.headers or {}) for p in back)
    assert sorted(sha(p.body) for p in back) == sorted(ch.sha256 for ch in chunks)


def test_random_bytes_grow_by_at_most_a_seals_overhead_a_chunk(
    stub: StubCluster, tmp_path: Path
) -> None:
    # Every chunk is random: compressed (as a whole chunk) it would grow, so it is sealed
    # as its own bytes.
    data = os.urandom(3 * CHUNK + 17)
    assert len(zstandard.ZstdCompressor(level=1).compress(data[:CHUNK])) > CHUNK
    chunks = upload_and_restore(stub, tmp_path, data, "random.bin")
    assert all(ch.size <= ch.plain + SEAL_OVERHEAD for ch in chunks)
    packs = packs_of(stub, chunks)
    assert packs and all("encoding" not in (p.headers or {}) for p in packs)
    assert sum(len(p.body) for p in packs) == sum(ch.size for ch in chunks)  # each once


def test_a_mixed_file_seals_each_chunk_its_own_way(stub: StubCluster, tmp_path: Path) -> None:
    parts = [log_text(2 * CHUNK, 1), os.urandom(2 * CHUNK), log_text(2 * CHUNK, 2)]
    data = b"".join(parts)
    chunks = upload_and_restore(stub, tmp_path, data, "mixed.tar")
    # Chunks of text only are much smaller sealed; chunks of random bytes barely grow.
    at, small, same = 0, 0, 0
    for ch in chunks:
        piece = data[at : at + ch.plain]
        at += ch.plain
        if piece in parts[0] or piece in parts[2]:
            small += ch.size < ch.plain / 2
        elif piece in parts[1]:
            same += ch.plain <= ch.size <= ch.plain + SEAL_OVERHEAD
    assert small >= 2 and same >= 2, (small, same, len(chunks))


def test_a_pack_of_text_files_travels_raw_each_file_sealed_small(
    stub: StubCluster, tmp_path: Path
) -> None:
    texts = [log_text(3000 + i, i) for i in range(30)]
    items = []
    for i, data in enumerate(texts):
        (tmp_path / f"text{i}").write_bytes(data)
        items.append((tmp_path / f"text{i}", f"text/{i}"))
    outcomes: dict[str, object] = {}
    with stub.session() as s:
        s.upload_many(items, 2, lambda _n: Progress(), outcomes.__setitem__)
    assert len(outcomes) == 30 and not [o for o in outcomes.values() if isinstance(o, Exception)]
    chunks = [ch for data in texts for ch in file_chunks(stub, sha(data))]
    assert len(chunks) == 30  # one chunk a small file
    packs = packs_of(stub, chunks)
    assert len(packs) < 30 and all("encoding" not in (p.headers or {}) for p in packs)
    assert sum(len(p.body) for p in packs) < sum(map(len, texts)) * 0.6
    with stub.session() as s:
        s.download("text/7", tmp_path / "t7", overwrite=True)
    assert (tmp_path / "t7").read_bytes() == texts[7]


def test_a_repair_copy_sends_the_sealed_chunks_as_they_are_kept(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = log_text(3 * CHUNK)
    chunks = upload_and_restore(stub, tmp_path, data, "repaired.log")
    first = chunks[0]
    dead = next(w for w, wk in stub.workers.items() if wk.blobs.find(first.sha256) is not None)
    kept = {ch.sha256: stub.workers[dead].blobs.find(ch.sha256) for ch in chunks}
    originals = {sha: path.read_bytes() for sha, path in kept.items() if path is not None}
    stub.kill(dead)
    live = [w for w in stub.workers if w != dead]

    def repaired() -> bool:
        return all(
            sum(stub.workers[w].blobs.find(ch.sha256) is not None for w in live) == 2
            for ch in chunks
        )

    wait_for(repaired, timeout=30, what="repair copies")
    copies = [
        p
        for p in stub.broker.published
        if p.type == m.CHUNK_TYPE and (p.headers or {}).get("sha256") in originals
    ]
    assert copies, "no repair copy of the dead worker's chunks was sent"
    assert all("encoding" not in (p.headers or {}) for p in copies)
    assert {p.body for p in copies} <= set(originals.values())  # the bytes as kept
    for w in live:
        for ch in chunks:
            path = stub.workers[w].blobs.find(ch.sha256)
            assert path is None or sha(path.read_bytes()) == ch.sha256


def test_bad_frames_are_dead_lettered_and_never_written(stub: StubCluster) -> None:
    raw = stub.broker.connect(stub.settings, "mallory")
    raw.open()
    uid, file_sha = "ab" * 16, "cd" * 32

    def chunk(body: bytes, total: int = CHUNK) -> None:
        h = m.ChunkHeaders(uid, 0, 0, total, 1, file_sha, ("w1",), 0, encoding="zstd")
        raw.publish(worker_chunks("w1"), body, type=m.CHUNK_TYPE, headers=h.to_headers())

    chunk(b"not zstd at all")
    chunk(zstandard.ZstdCompressor().compress(bytes(CHUNK + 1)))  # more than the file
    chunk(zstandard.ZstdCompressor().compress(bytes(100)) + b"kept unseen")  # after the frame
    files = (m.PackEntry(uid, file_sha, 10),)
    pack = m.PackHeaders(files, ("w1",), 0, encoding="zstd")
    body = zstandard.ZstdCompressor().compress(bytes(11))  # not the sizes' sum
    raw.publish(worker_chunks("w1"), body, type=m.PACK_TYPE, headers=pack.to_headers())
    wait_for(lambda: stub.broker.depth(DEAD_LETTER_QUEUE) == 4, what="four dead letters")
    raw.close()
    assert not list(stub.workers["w1"].incoming.dir.glob(f"{uid}*"))
    assert stub.workers["w1"].blobs.find(file_sha) is None


# -- on a real broker ---------------------------------------------------------------------------


def test_compressed_incompressible_and_mixed_files_round_trip_on_rabbitmq(
    cluster: Cluster, tmp_path: Path
) -> None:
    # Given files that compress, that do not, and both (sealed chunks are compressed inside
    # their seals when that pays, so what travels and what workers keep is what was sealed)
    mib = 1024 * 1024
    files = {
        "c access.log": log_text(3 * mib + 5),
        "c photo.jpg": os.urandom(2 * mib + 3),
        "c mixed.tar": log_text(mib, 3) + os.urandom(mib) + log_text(mib // 2, 4),
        "c small.txt": log_text(4096, 5),
        "c empty": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    res = cluster.client(
        "upload", *(str(tmp_path / n) for n in files), "--replicas", "2", "--json"
    ).ok()
    sent = {o["name"]: o["bytes_sent"] for o in map(json.loads, res.out.splitlines())}
    # Then text is sent compressed, random bytes as they are (and a little seal each)
    assert sent["c access.log"] < len(files["c access.log"]) / 4
    assert sent["c small.txt"] < len(files["c small.txt"]) / 2
    assert mib < sent["c mixed.tar"] < 2 * mib
    assert len(files["c photo.jpg"]) < sent["c photo.jpg"] < len(files["c photo.jpg"]) + 4096
    for name, data in files.items():
        # ... two copies of every chunk on disk, each hashing to its name (sha256sum checks
        # it), each opening with the owner's key to the file's bytes
        if data:
            assert cluster.copies_on_disk(sha(data)) >= 2, name
        assert cluster.stored(sha(data)) == data, name
        out = tmp_path / f"{name}.back"
        cluster.client("download", name, "-o", str(out)).ok()
        assert out.read_bytes() == data, name
    cluster.client("verify", *files).ok()
