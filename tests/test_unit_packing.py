"""How an upload command packs its sealed chunks (``client.upload.Batch``): many chunks to a
pack, up to the chunk size and the pack's chunk count, a chunk two files share sent once;
and how the cutting thread gives each file its chunks, its size and SHA-256, or the
sentence that says why not. No cluster: the requests a batch would send are recorded."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from client.outcomes import Progress
from client.session import Session
from client.units import ChunkPack, ChunkState, FileJob, Step
from client.upload import PACK_FILES, Batch, _Cutter
from warren import chunkseal
from warren import messages as m
from warren.config import Settings
from warren.errors import WarrenError
from warren.ownerkey import derive

LIMIT = 64 * 1024  # settings.chunk_size: a pack's bytes at most
KEYS = derive(b"\x07" * 32)


class Recorder:
    """What Batch asks of its session to send its packs: the requests are kept."""

    settings = Settings(chunk_size=LIMIT)
    client_name = "c1"

    def __init__(self) -> None:
        self.sent: list[m.Message] = []

    def route(self, route: str, handler: Callable[..., Any]) -> None:
        pass

    def unroute(self, route: str) -> None:
        pass

    def send_request(self, req: m.Message, route: str, refused: Callable[..., Any]) -> None:
        self.sent.append(req)


def batch() -> tuple[Batch, Recorder]:
    rec = Recorder()
    b = Batch(cast(Session, rec), KEYS, 2, lambda _n: Progress(), lambda _n, _o: None)
    return b, rec


def job(tmp_path: Path, name: str) -> FileJob:
    (tmp_path / name).write_bytes(b"")
    return FileJob(tmp_path / name, name, Progress())


def sealed(size: int, tag: int = 0) -> chunkseal.SealedChunk:
    """A sealed chunk of ``size`` bytes as stored (made up: only its size and name count)."""
    data = tag.to_bytes(4, "big") + bytes(size - 4)
    return chunkseal.SealedChunk(hashlib.sha256(data).hexdigest(), data, size - 40)


def packs(rec: Recorder) -> list[list[tuple[str, int, str]]]:
    """Each pack asked for, as its files (name, size, sha256)."""
    out = []
    for req in rec.sent:
        assert isinstance(req, m.PackRequest)
        assert req.chunks and req.replicas == 2 and req.client == "c1"
        out.append([(f.name, f.size, f.sha256) for f in req.files])
    return out


def test_chunks_fill_a_pack_up_to_the_chunk_size_then_start_another(tmp_path: Path) -> None:
    b, rec = batch()
    f = job(tmp_path, "f")
    quarter = [sealed(LIMIT // 4, i) for i in range(6)]
    for piece in quarter:
        b._add_chunk(f, piece)
    b._ask_pack()  # the open pack goes (cutting is over)
    # Four quarters fill a pack; the fifth starts the next. Chunks have no names.
    assert packs(rec) == [
        [("", len(p.sealed), p.digest) for p in quarter[:4]],
        [("", len(p.sealed), p.digest) for p in quarter[4:]],
    ]
    assert f.chunks == [m.ChunkRef(p.digest, len(p.sealed), p.plain_size) for p in quarter]
    assert f.waiting == {p.digest for p in quarter} and not f.ready


def test_a_pack_stops_at_its_chunk_count(tmp_path: Path) -> None:
    b, rec = batch()
    f = job(tmp_path, "f")
    for i in range(PACK_FILES + 5):
        b._add_chunk(f, sealed(100, i))
    assert [len(p) for p in packs(rec)] == [PACK_FILES]
    b._ask_pack()
    assert [len(p) for p in packs(rec)] == [PACK_FILES, 5]


def test_a_chunk_two_files_share_is_sent_once_and_stores_both(tmp_path: Path) -> None:
    # Given two files that cut to the same chunk, and one more of the first's own
    b, rec = batch()
    a, c = job(tmp_path, "a"), job(tmp_path, "c")
    shared, own = sealed(1000, 1), sealed(2000, 2)
    b._add_chunk(a, shared)
    b._add_chunk(a, own)
    b._add_chunk(c, shared)
    b._ask_pack()
    # Then one pack carries each chunk once, and its sent bytes count for one file only
    [pack] = packs(rec)
    assert pack == [("", 1000, shared.digest), ("", 2000, own.digest)]
    # When the manager places the pack and both workers confirm every chunk
    [unit] = b.flight
    assert isinstance(unit, ChunkPack)
    unit.accepted = m.PackAccepted(("1" * 32, "2" * 32), ("w1", "w2"))
    b._send_pack = lambda *a: None  # type: ignore[method-assign]
    for f in (a, c):
        f.step = Step.WAITING
    b._advance(unit)
    assert unit.step is Step.STORING
    assert not a.ready and not c.ready
    for worker in ("w1", "w2"):
        unit.confirmed.setdefault("1" * 32, set()).add(worker)
    unit.confirmed["2" * 32] = {"w1"}  # the second chunk: one worker of two so far
    unit.settle()
    # Then the file of the shared chunk alone is ready to commit, on its chain
    assert c.ready and c.chain == ("w1", "w2") and not a.ready
    assert b.chunks[own.digest].state is ChunkState.PENDING
    unit.confirmed["2" * 32].add("w2")
    unit.settle()
    assert a.ready and a.chain == ("w1", "w2")


def test_the_cutter_gives_each_file_its_chunks_and_hash_or_its_sentence(tmp_path: Path) -> None:
    # Given a good file, a missing one, and an empty one, in that order
    good, missing, empty = tmp_path / "good", tmp_path / "missing", tmp_path / "empty"
    data = os.urandom(300_000)
    good.write_bytes(data)
    empty.write_bytes(b"")
    jobs = [FileJob(p, p.name, Progress()) for p in (good, missing, empty)]
    params = chunkseal.params_for(LIMIT)
    cutter = _Cutter(jobs, KEYS, params, lambda: None)
    items: list[tuple[str, object]] = []
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline:
            item = cutter.take()
            if item is _Cutter.OVER:
                break
            if item is None:
                time.sleep(0.01)
                continue
            j, what = cast(tuple[FileJob, object], item)
            items.append((j.name, what))
    finally:
        cutter.stop()
    # Then the good file is several sealed chunks, in order, which open to its bytes
    pieces = [w for n, w in items if n == "good" and isinstance(w, chunkseal.SealedChunk)]
    assert len(pieces) > 2
    opened = b"".join(
        chunkseal.open_chunk(KEYS.seal, KEYS.ids, p.sealed, params.max_size)[1] for p in pieces
    )
    assert opened == data and data not in b"".join(p.sealed for p in pieces)
    assert all(chunkseal.sealed_digest(p.sealed) == p.digest for p in pieces)
    assert jobs[0].size == len(data)
    assert jobs[0].digest.hexdigest() == hashlib.sha256(data).hexdigest()
    # The missing file is its sentence, and the cutter went on; the empty one is one chunk
    [said] = [w for n, w in items if n == "missing"]
    assert isinstance(said, WarrenError) and str(said) == f"{missing}: no such file."
    assert [type(w) for n, w in items if n == "empty"] == [chunkseal.SealedChunk, type(None)]
    assert [n for n, w in items if w is None] == ["good", "empty"]
