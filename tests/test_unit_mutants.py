"""What an upload says it stored, taken one message at a time: the client's states
(``client.units``: a pack of sealed chunks, the files waiting for them, a commit) fed the
deliveries a cluster would send, without a cluster.

These tests exist because ``make mutants`` (docs/mutants.md) found that the role tests,
which go through whole uploads, left these decisions unchecked: which replica counts as
confirmed, when a pack is complete, what a file's outcome says and which error (exit code)
it is. Each asserts on the outcome a user sees: the UploadResult, or the error's class and
sentence."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from client.outcomes import Progress, UploadResult
from client.session import Session
from client.units import Chunk, ChunkPack, ChunkState, Commit, FileJob, Step
from client.upload import Batch
from warren import messages as m
from warren.config import Settings
from warren.errors import IntegrityError, NotFound, Unavailable, WarrenError
from warren.ownerkey import derive
from warren.transport import Delivery

ID = "a" * 32
ID2 = "b" * 32
OTHER = "f" * 32  # another pack's upload
SHA = "c" * 64  # the file's plaintext SHA-256
C1, C2 = "1" * 64, "2" * 64  # its two sealed chunks


class Seen(Progress):
    """The replicas a progress display was told about, in order."""

    def __init__(self) -> None:
        self.replicas: list[tuple[str, int]] = []

    def replica(self, worker: str, hop: int) -> None:
        self.replicas.append((worker, hop))


def delivery(msg: m.Message) -> Delivery:
    return Delivery(msg.encode(), 1, False, msg.TYPE, None, None, ID, "q", lambda *a: None)


def pack_stored(worker: str, hop: int, *ids: str) -> Delivery:
    return delivery(m.PackStored(worker, hop, tuple(m.PackEntry(i, SHA, 1) for i in ids)))


def failed(worker: str, reason: str, code: str, upload_id: str = ID) -> Delivery:
    return delivery(m.ReplicaFailed(upload_id, worker, reason, code))


def file_of(tmp_path: Path, *chunks: Chunk, name: str = "f") -> FileJob:
    """A file cut into these chunks, all cut (waiting for them to be stored)."""
    path = tmp_path / name
    path.write_bytes(b"x")
    job = FileJob(path, name, Seen())
    for c in chunks:
        job.add(m.ChunkRef(c.digest, c.size, 1), c)
    job.size, job.sha256, job.step = len(chunks), SHA, Step.WAITING
    return job


def placed(
    chain: tuple[str, ...] = ("w1", "w2"), stored: tuple[m.StoredFile, ...] = ()
) -> tuple[ChunkPack, Chunk, Chunk]:
    """A pack of two chunks, placed on ``chain``, its new chunks sent."""
    p = ChunkPack()
    a, b = Chunk(C1, 10), Chunk(C2, 20)
    p.members = [(a, b"a" * 10), (b, b"b" * 20)]
    p.accepted = m.PackAccepted((ID, ID2), chain, stored)
    return p, a, b


def test_a_pack_is_complete_only_when_every_worker_of_its_chain_confirmed_each_chunk(
    tmp_path: Path,
) -> None:
    p, a, b = placed()
    job = file_of(tmp_path, a, b)
    assert not ChunkPack().complete  # not placed
    assert [c for c, _ in p.take_stored()] == [a, b]
    assert (a.chain, b.chain) == (("w1", "w2"), ("w1", "w2"))
    p.on_replica(pack_stored("w1", 0, ID, ID2))
    p.on_replica(pack_stored("w1", 0, ID, ID2))  # again: still one worker
    assert not p.complete
    p.on_replica(pack_stored("w2", 1, ID, OTHER))  # another pack's chunk is not ours
    assert not p.complete
    p.settle()
    assert a.state is ChunkState.STORED and b.state is ChunkState.PENDING and not job.ready
    p.on_replica(pack_stored("w2", 1, ID2))
    assert p.complete
    p.settle()
    assert b.state is ChunkState.STORED and job.ready
    out = job.outcome()
    assert out == UploadResult(
        "f", 2, SHA, ("w1", "w2"), {"w1": 0, "w2": 1}, sent=0, deduplicated=True,
        chunks=tuple(job.chunks),
    )  # fmt: skip
    assert [c.sha256 for c in out.chunks] == [a.digest, b.digest]
    assert cast(Seen, job.progress).replicas == [("w1", 0), ("w2", 1)]


def test_a_worker_outside_the_chain_confirms_nothing(tmp_path: Path) -> None:
    """Two confirmations are not enough when one is not from the chain's second worker."""
    p, a, b = placed()
    job = file_of(tmp_path, a, b)
    p.take_stored()
    p.on_replica(pack_stored("w1", 0, ID, ID2))
    p.on_replica(pack_stored("w3", 1, ID, ID2))
    assert not p.complete
    p.settle()
    assert a.state is ChunkState.PENDING and not job.ready
    p.settle(timed_out=True)
    assert str(job.outcome()) == "w2 did not confirm 'f' in time."


def test_chunks_already_stored_are_not_sent_and_take_the_chain_they_are_on(
    tmp_path: Path,
) -> None:
    p, a, b = placed(stored=(m.StoredFile(ID, ("w3", "w4")),))
    job = file_of(tmp_path, a, b)
    assert p.take_stored() == [(b, b"b" * 20)]  # only the new chunk is sent
    assert a.state is ChunkState.STORED and a.chain == ("w3", "w4")
    assert job.chain == ("w3", "w4")  # the file's chain: its first chunk's workers
    assert not job.ready and not p.complete
    assert list(p.by_id) == [ID2]  # only the sent chunk waits for confirmations


def test_a_pack_is_recorded_when_the_manager_names_each_chunk_sent_or_it_failed() -> None:
    p, _, _ = placed()
    p.take_stored()
    assert not p.all_recorded
    p.on_replica(delivery(m.PackRecorded((ID, OTHER))))
    assert not p.all_recorded
    p.on_replica(failed("w2", "bad bytes", "integrity", upload_id=ID2))
    assert p.all_recorded


def test_wrong_bytes_on_a_replica_fail_every_file_of_that_chunk_as_an_integrity_error(
    tmp_path: Path,
) -> None:
    p, a, b = placed()
    one, both = file_of(tmp_path, a, name="one"), file_of(tmp_path, a, b, name="both")
    p.take_stored()
    p.on_replica(pack_stored("w1", 0, ID, ID2))
    p.on_replica(pack_stored("w2", 1, ID))
    p.on_replica(failed("w2", "sha256 mismatch", "integrity", upload_id=ID2))
    p.on_replica(failed("w2", "not ours", "integrity", upload_id=OTHER))
    assert p.complete  # every chunk stored or failed
    p.settle()
    assert one.ready and isinstance(one.outcome(), UploadResult)
    out = both.outcome()
    assert type(out) is IntegrityError
    assert str(out) == "storing a chunk failed on w2: sha256 mismatch."
    assert not both.ready


def test_a_replica_that_could_not_write_is_the_error_its_code_names(tmp_path: Path) -> None:
    p, a, _ = placed()
    job = file_of(tmp_path, a)
    p.take_stored()
    p.on_replica(failed("w1", "no such", "not_found"))
    p.settle()
    out = job.outcome()
    assert type(out) is NotFound and str(out) == "storing a chunk failed on w1: no such."


def test_a_replica_that_did_not_confirm_in_time_is_named(tmp_path: Path) -> None:
    p, a, b = placed(("w1", "w2", "w3"))
    job = file_of(tmp_path, a, b)
    p.take_stored()
    p.on_replica(pack_stored("w2", 1, ID, ID2))
    p.settle(timed_out=True)
    out = job.outcome()
    assert type(out) is Unavailable and str(out) == "w1, w3 did not confirm 'f' in time."


def test_the_managers_refusal_of_a_pack_is_every_waiting_files_outcome(tmp_path: Path) -> None:
    p = ChunkPack()
    a = Chunk(C1, 10)
    p.members = [(a, b"a" * 10)]
    job = file_of(tmp_path, a)
    p.on_placement(delivery(m.ErrorReply("unavailable", "no workers.")))
    assert isinstance(p.error, Unavailable)
    p.fail_all(p.error)
    assert job.outcome() is p.error and a.state is ChunkState.FAILED


def test_an_answer_that_does_not_fit_the_pack_is_no_placement() -> None:
    p = ChunkPack()
    p.members = [(Chunk(C1, 10), b"a" * 10)]
    p.on_placement(delivery(m.PackAccepted((ID, ID2), ("w1",))))  # two ids for one chunk
    assert p.accepted is None and isinstance(p.error, Unavailable)


def test_a_commit_takes_only_a_reply_with_a_version_for_each_file(tmp_path: Path) -> None:
    files = [file_of(tmp_path, Chunk(C1, 10), name=n) for n in ("a", "b")]
    short = Commit(files)
    short.on_answer(delivery(m.CommitReply((3,))))
    assert short.reply is None and isinstance(short.error, Unavailable)
    refused = Commit(files)
    refused.on_answer(delivery(m.ErrorReply("not_found", "no such chunk.")))
    assert type(refused.error) is NotFound and str(refused.error) == "no such chunk."
    ok = Commit(files)
    ok.on_answer(delivery(m.CommitReply((3, 1))))
    ok.on_answer(delivery(m.ErrorReply("busy", "late")))  # after the answer: ignored
    assert ok.reply == m.CommitReply((3, 1)) and ok.error is None


class Silent:
    """What Batch asks of its session to judge a deadline."""

    settings = Settings(request_timeout=3.0)

    def silent(self) -> str:
        return "the manager did not answer within 3 s; is it running?"


def batch() -> Batch:
    keys = derive(b"\x01" * 32)
    return Batch(cast(Session, Silent()), keys, 2, lambda name: Progress(), lambda n, o: None)


def test_only_a_manager_that_said_nothing_by_the_deadline_ends_the_batch() -> None:
    """Batch._judge: an ask past its deadline with no answer is a silent manager (the whole
    command fails, exit 4); an answer or a refusal that came in time is taken in next, and
    a deadline is not passed until the clock is beyond it."""
    b = batch()
    for unit in (ChunkPack(), Commit([])):
        unit.step, unit.deadline = Step.ASKING, 10.0
        b._judge(unit, 10.0)  # not passed yet
        with pytest.raises(Unavailable, match="did not answer within 3 s"):
            b._judge(unit, 10.5)
        unit.error = Unavailable("no workers.")
        b._judge(unit, 10.5)  # refused in time: that is the outcome, not a silent manager
        assert unit.step is Step.ASKING
    p, _, _ = placed()
    p.step, p.deadline = Step.ASKING, 10.0
    b._judge(p, 10.5)  # placed in time
    assert p.step is Step.ASKING


def test_each_later_step_past_its_deadline_ends_as_its_own_outcome(tmp_path: Path) -> None:
    """Storing: a pack every replica confirmed (or failed) is not timed out; one still
    waiting is, and is done, naming the silent worker. Recording: done all the same, its
    chunks stored (only the catalog lags: the commit finds out)."""
    b = batch()
    p, a, _ = placed()
    p.take_stored()
    p.step, p.deadline = Step.STORING, 1.0
    p.on_replica(pack_stored("w1", 0, ID, ID2))
    p.on_replica(pack_stored("w2", 1, ID))
    p.on_replica(failed("w2", "bad", "integrity", upload_id=ID2))
    b._judge(p, 2.0)
    assert p.step is Step.STORING and a.state is ChunkState.PENDING
    p, a, b2 = placed()
    job = file_of(tmp_path, a, b2)
    p.take_stored()
    p.step, p.deadline = Step.STORING, 1.0
    p.on_replica(pack_stored("w1", 0, ID, ID2))
    p.on_replica(pack_stored("w2", 1, ID))
    b._judge(p, 2.0)
    assert p.step is Step.DONE and a.state is ChunkState.STORED
    assert str(job.outcome()) == "w2 did not confirm 'f' in time."
    p, a, b2 = placed()
    job = file_of(tmp_path, a, b2)
    p.take_stored()
    p.on_replica(pack_stored("w1", 0, ID, ID2))
    p.on_replica(pack_stored("w2", 1, ID, ID2))
    p.step, p.deadline = Step.RECORDING, 1.0
    b._judge(p, 2.0)
    assert p.step is Step.DONE and job.ready and isinstance(job.outcome(), UploadResult)


def test_a_file_that_failed_is_its_first_error_whatever_came_after(tmp_path: Path) -> None:
    a = Chunk(C1, 10, state=ChunkState.FAILED, error=WarrenError("first."))
    job = file_of(tmp_path, a)
    job.fail(Unavailable("second."))
    assert str(job.outcome()) == "first." and not job.ready
