"""Compression on the wire and on disk, end to end: compressible, incompressible and mixed
files, a chunk that grows when compressed, packs, restores and repair copies. A file that
came compressed is kept as its frames (``zstd -dc`` gives its bytes back) and restored
from them as they are; one that did not is kept as its own bytes (``sha256sum`` checks it).

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
from tests.cluster import Cluster, stored_content
from tests.stubcluster import StubCluster, wait_for
from warren import messages as m
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


def blob(c: StubCluster, worker: str, data: bytes) -> bytes | None:
    """What the worker's blob of ``data`` holds, decoded as ``zstd -dc`` would."""
    path = c.workers[worker].blobs.find(sha(data))
    return stored_content(path) if path is not None else None


def kept_as(c: StubCluster, worker: str, data: bytes) -> str:
    path = c.workers[worker].blobs.find(sha(data))
    assert path is not None
    if path.suffix == ".zst":
        return "frames"
    assert path.read_bytes() == data  # sha256sum checks it
    return "bytes"


def chunks_sent(c: StubCluster, upload_sha: str) -> list[Message]:
    return [
        p
        for p in c.broker.published
        if p.type == m.CHUNK_TYPE and (p.headers or {}).get("sha256") == upload_sha
    ]


def restore_chunks(c: StubCluster) -> list[Message]:
    return [p for p in c.broker.published if p.type == m.RESTORE_CHUNK_TYPE]


def upload_and_restore(c: StubCluster, tmp_path: Path, data: bytes, name: str) -> list[str]:
    """Upload ``data`` with 2 replicas, check both blobs are its bytes and that it restores
    byte for byte; the chain."""
    src = tmp_path / name
    src.write_bytes(data)
    with c.session() as s:
        result = s.upload(src, name, 2)
    for worker in result.chain:
        assert blob(c, worker, data) == data, f"{worker}'s blob is not the file's bytes"
        assert c.workers[worker].blobs.check(sha(data), len(data)) is None  # scrub, verify
    with c.session() as s:
        s.download(name, tmp_path / f"{name}.back", overwrite=True)
    assert (tmp_path / f"{name}.back").read_bytes() == data
    return list(result.chain)


def test_text_travels_compressed_is_kept_as_it_came_and_restored_from_its_frames(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = log_text(5 * CHUNK + 1234)
    chain = upload_and_restore(stub, tmp_path, data, "access.log")
    for worker in chain:
        assert kept_as(stub, worker, data) == "frames"
        path = stub.workers[worker].blobs.find(sha(data))
        assert path is not None and path.stat().st_size < len(data) / 3

    sent = chunks_sent(stub, sha(data))
    to_primary = [p for p in sent if p.queue == worker_chunks(chain[0])]
    forwarded = [p for p in sent if p.queue == worker_chunks(chain[1])]
    assert len(to_primary) == len(forwarded) == 6
    assert all((p.headers or {}).get("encoding") == "zstd" for p in sent)
    assert sum(len(p.body) for p in to_primary) < len(data) / 3
    # The primary forwards the client's bytes and headers exactly, but for the hop.
    by_seq = {(p.headers or {})["seq"]: p for p in to_primary}
    for p in forwarded:
        h = p.headers or {}
        original = by_seq[h["seq"]]
        assert p.body == original.body
        assert {**h, "hop": 0, "sent_at_ms": 0} == {**(original.headers or {}), "sent_at_ms": 0}
    # Each body is one frame of the chunk's own bytes.
    seq1 = by_seq[1]
    assert zstandard.ZstdDecompressor().decompress(seq1.body) == data[CHUNK : 2 * CHUNK]

    # The restore sends the client's own frames back: the worker compressed nothing.
    back = restore_chunks(stub)
    assert back and all((p.headers or {}).get("encoding") == "zstd" for p in back)
    assert sorted(p.body for p in back) == sorted(p.body for p in to_primary)


def test_random_bytes_travel_raw_with_no_encoding_header(stub: StubCluster, tmp_path: Path) -> None:
    data = os.urandom(3 * CHUNK + 17)
    chain = upload_and_restore(stub, tmp_path, data, "random.bin")
    assert [kept_as(stub, w, data) for w in chain] == ["bytes", "bytes"]
    sent = chunks_sent(stub, sha(data))
    assert len(sent) == 8
    assert all("encoding" not in (p.headers or {}) for p in sent)
    assert sorted(p.body for p in sent if p.headers and p.headers["hop"] == 0) == sorted(
        data[i : i + CHUNK] for i in range(0, len(data), CHUNK)
    )
    assert all("encoding" not in (p.headers or {}) for p in restore_chunks(stub))


def test_a_chunk_that_grows_when_compressed_travels_raw(stub: StubCluster, tmp_path: Path) -> None:
    # Every chunk is random: compressed whole (64 KiB is under two probes) it would grow.
    data = os.urandom(2 * CHUNK)
    assert len(zstandard.ZstdCompressor(level=1).compress(data[:CHUNK])) > CHUNK
    chain = upload_and_restore(stub, tmp_path, data, "grows.bin")
    assert [kept_as(stub, w, data) for w in chain] == ["bytes", "bytes"]
    assert all("encoding" not in (p.headers or {}) for p in chunks_sent(stub, sha(data)))


def test_a_mixed_file_sends_each_chunk_its_own_way(stub: StubCluster, tmp_path: Path) -> None:
    parts = [log_text(CHUNK, 1), os.urandom(CHUNK), log_text(CHUNK, 2), os.urandom(CHUNK // 2)]
    data = b"".join(parts)
    chain = upload_and_restore(stub, tmp_path, data, "mixed.tar")
    # Its first chunk came compressed, and the whole saves enough: kept as frames, the
    # random chunks in raw blocks (their own bytes, a few bytes of header added).
    assert [kept_as(stub, w, data) for w in chain] == ["frames", "frames"]
    hop0 = {
        (p.headers or {})["seq"]: (p.headers or {}).get("encoding", "")
        for p in chunks_sent(stub, sha(data))
        if (p.headers or {})["hop"] == 0
    }
    assert hop0 == {0: "zstd", 1: "", 2: "zstd", 3: ""}
    back = sorted(restore_chunks(stub), key=lambda p: (p.headers or {})["seq"])
    assert [(p.headers or {}).get("encoding") for p in back] == ["zstd"] * 4
    # A raw block's frame: 13 bytes of frame header and 3 a block (one: 64 KiB chunks).
    grown = [len(p.body) - len(part) for p, part in zip(back, parts, strict=True)]
    assert grown[1::2] == [16, 16]


def test_a_file_whose_first_chunk_alone_compresses_is_kept_as_its_bytes(
    stub: StubCluster, tmp_path: Path
) -> None:
    data = log_text(CHUNK) + os.urandom(40 * CHUNK)  # frames would save under 1/32
    chain = upload_and_restore(stub, tmp_path, data, "mostly-random.bin")
    assert [kept_as(stub, w, data) for w in chain] == ["bytes", "bytes"]
    assert not list(stub.workers[chain[0]].incoming.dir.glob("*.zpart"))


def test_a_pack_of_text_files_is_one_compressed_frame_stored_file_by_file(
    stub: StubCluster, tmp_path: Path
) -> None:
    texts = [log_text(3000 + i, i) for i in range(30)]
    randoms = [os.urandom(2000 + i) for i in range(30)]
    for kind, contents in (("text", texts), ("random", randoms)):
        items = []
        for i, data in enumerate(contents):
            (tmp_path / f"{kind}{i}").write_bytes(data)
            items.append((tmp_path / f"{kind}{i}", f"{kind}/{i}"))
        outcomes: dict[str, object] = {}
        with stub.session() as s:
            s.upload_many(items, 2, lambda _n: Progress(), outcomes.__setitem__)
        assert all(not isinstance(o, Exception) for o in outcomes.values()), outcomes
        for data in contents:
            holders = [w for w in stub.workers if blob(stub, w, data) is not None]
            assert len(holders) == 2 and all(blob(stub, w, data) == data for w in holders)
    packs = [p for p in stub.broker.published if p.type == m.PACK_TYPE]
    text_packs = [p for p in packs if sha(texts[0]) in str((p.headers or {})["files"])]
    random_packs = [p for p in packs if sha(randoms[0]) in str((p.headers or {})["files"])]
    assert text_packs and all((p.headers or {}).get("encoding") == "zstd" for p in text_packs)
    assert len(text_packs[0].body) < sum(map(len, texts)) / 3
    assert random_packs and all("encoding" not in (p.headers or {}) for p in random_packs)
    with stub.session() as s:
        s.download("text/7", tmp_path / "t7", overwrite=True)
    assert (tmp_path / "t7").read_bytes() == texts[7]


def test_a_repair_copy_sends_the_frames_as_they_are_kept(stub: StubCluster, tmp_path: Path) -> None:
    data = log_text(3 * CHUNK)
    chain = upload_and_restore(stub, tmp_path, data, "repaired.log")
    stub.kill(chain[0])
    wait_for(
        lambda: sum(blob(stub, w, data) == data for w in stub.workers if w != chain[0]) == 2,
        timeout=30,
        what="a repair copy",
    )
    sent = chunks_sent(stub, sha(data))
    copies = [p for p in sent if p.correlation_id != sent[0].correlation_id]  # another id
    assert copies and all((p.headers or {}).get("encoding") == "zstd" for p in copies)
    originals = {p.body for p in sent if p.correlation_id == sent[0].correlation_id}
    assert {p.body for p in copies} <= originals
    new = next(w for w in stub.workers if w not in chain and blob(stub, w, data) == data)
    assert kept_as(stub, new, data) == "frames"


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
