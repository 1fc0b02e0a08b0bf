"""What an upload says it confirmed, taken one message at a time: the client's confirmation
state (``client.units``) fed the deliveries a cluster would send, without a cluster.

These tests exist because ``make mutants`` (docs/mutants.md) found that the role tests,
which go through whole uploads, left these decisions unchecked: which replica counts as
confirmed, when an upload is complete, what its outcome says and which error (exit code)
it is. Each asserts on the outcome a user sees: the UploadResult, or the error's class and
sentence."""

from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest

from client.outcomes import Progress, UploadResult
from client.session import Session
from client.units import Pack, Step, Upload
from client.upload import Batch
from warren import messages as m
from warren.config import Settings
from warren.errors import IntegrityError, NotFound, Unavailable, WarrenError
from warren.transport import Delivery

ID = "a" * 32
ID2 = "b" * 32
SHA = "c" * 64


class Seen(Progress):
    """The replicas a progress display was told about, in order."""

    def __init__(self) -> None:
        self.replicas: list[tuple[str, int]] = []

    def replica(self, worker: str, hop: int) -> None:
        self.replicas.append((worker, hop))


def seen(u: Upload) -> list[tuple[str, int]]:
    assert isinstance(u.progress, Seen)
    return u.progress.replicas


def delivery(msg: m.Message) -> Delivery:
    return Delivery(msg.encode(), 1, False, msg.TYPE, None, None, ID, "q", lambda *a: None)


def upload(tmp_path: Path, name: str = "f") -> Upload:
    path = tmp_path / name
    path.write_bytes(b"x")
    u = Upload(path, name, Seen())
    u.size, u.sha256, u.sent = 1, SHA, 1
    return u


def stored(worker: str, hop: int, upload_id: str = ID) -> Delivery:
    return delivery(m.ReplicaStored(upload_id, worker, SHA, 1, hop))


def failed(worker: str, reason: str, code: str, upload_id: str = ID) -> Delivery:
    return delivery(m.ReplicaFailed(upload_id, worker, reason, code))


def placed(u: Upload, chain: tuple[str, ...], **kw: bool | int) -> Upload:
    u.accepted = m.UploadAccepted(ID, chain, 1024, **kw)  # type: ignore[arg-type]
    u.upload_id = ID
    return u


def test_an_upload_is_complete_only_when_every_worker_of_its_chain_confirmed(
    tmp_path: Path,
) -> None:
    u = upload(tmp_path)
    assert not u.complete  # nothing placed yet
    placed(u, ("w1", "w2"))
    u.on_replica(stored("w1", 0))
    assert not u.complete
    u.on_replica(stored("w1", 0))  # the same worker twice is still one
    assert not u.complete
    assert u.confirmed == {"w1": 0}
    u.on_replica(stored("w2", 1))
    assert u.complete
    assert seen(u) == [("w1", 0), ("w2", 1)]
    assert u.outcome() == UploadResult("f", 1, SHA, ("w1", "w2"), {"w1": 0, "w2": 1}, False, sent=1)


def test_copies_are_complete_when_the_manager_records_them_not_before(tmp_path: Path) -> None:
    """With copies the holders confirm at once; the upload is done when it is recorded."""
    u = placed(upload(tmp_path), ("w1",), stored=True, copies=1)
    assert u.already_stored()
    assert not u.complete
    assert not u.recorded
    u.on_replica(stored("w3", 1))
    assert not u.complete  # confirmed by both, but the manager has not recorded it yet
    u.on_replica(delivery(m.UploadRecorded(ID, "f")))
    assert u.complete
    out = u.outcome()
    assert out == UploadResult("f", 1, SHA, ("w1", "w3"), {"w1": 0, "w3": 1}, True, True, 1)


def test_copies_list_the_holders_first_whatever_order_they_confirmed_in(tmp_path: Path) -> None:
    u = placed(upload(tmp_path), ("w9",), stored=True, copies=2)
    u.on_replica(stored("w5", 2))
    u.on_replica(stored("w7", 1))
    u.on_replica(delivery(m.UploadRecorded(ID, "f")))
    assert u.already_stored()
    out = u.outcome()
    assert isinstance(out, UploadResult)
    assert out.chain == ("w9", "w7", "w5")


def test_content_already_stored_counts_every_holder_as_confirmed_and_recorded(
    tmp_path: Path,
) -> None:
    u = upload(tmp_path)
    assert not u.already_stored()  # not placed
    placed(u, ("w1", "w2"))
    assert not u.already_stored()  # placed, to be sent
    assert u.confirmed == {}
    u = placed(upload(tmp_path), ("w1", "w2"), stored=True)
    u.confirmed["w2"] = 1
    assert u.already_stored()
    assert u.confirmed == {"w1": 0, "w2": 1}
    assert u.recorded
    assert u.complete
    assert seen(u) == [("w1", 0)]


def test_recorded_confirms_the_whole_chain_even_when_the_confirmations_went_elsewhere(
    tmp_path: Path,
) -> None:
    """After a resume the replicas' word may have gone to the client that was cut off."""
    u = placed(upload(tmp_path), ("w1", "w2", "w3"))
    u.on_replica(stored("w2", 1))
    u.on_replica(delivery(m.UploadRecorded(ID, "f")))
    assert u.confirmed == {"w2": 1, "w1": 0, "w3": 2}
    assert seen(u) == [("w2", 1), ("w1", 0), ("w3", 2)]
    assert u.recorded and u.complete
    out = u.outcome()
    assert isinstance(out, UploadResult) and out.chain == ("w1", "w2", "w3")


def test_a_record_before_the_managers_answer_confirms_no_worker(tmp_path: Path) -> None:
    """Not what a manager sends, but a stray message on the reply queue must not crash the
    client: it is taken as recorded, and nothing is confirmed."""
    u = upload(tmp_path)
    u.on_replica(delivery(m.UploadRecorded(ID, "f")))
    assert u.recorded and u.confirmed == {} and not u.complete


def test_wrong_bytes_on_a_replica_are_an_integrity_error_naming_each_failure(
    tmp_path: Path,
) -> None:
    u = placed(upload(tmp_path), ("w1", "w2"))
    u.on_replica(stored("w1", 0))
    u.on_replica(failed("w2", "queue full", "busy"))  # "busy" sorts before "integrity"
    u.on_replica(failed("w1", "sha256 mismatch", "integrity"))
    out = u.outcome()
    assert type(out) is IntegrityError
    assert str(out) == "storing 'f' failed on w2: queue full; w1: sha256 mismatch."


def test_a_replica_that_could_not_write_is_the_error_its_code_names(tmp_path: Path) -> None:
    """Without wrong bytes, the failure's wire code decides the error (and exit code); of
    several, the first by name, so that the same failures always give the same exit."""
    u = placed(upload(tmp_path), ("w1", "w2"))
    u.on_replica(failed("w2", "gone", "unavailable"))
    u.on_replica(failed("w1", "no such", "not_found"))
    out = u.outcome()
    assert type(out) is NotFound
    assert str(out) == "storing 'f' failed on w2: gone; w1: no such."


def test_the_managers_refusal_is_the_outcome_whatever_else_arrived(tmp_path: Path) -> None:
    u = placed(upload(tmp_path), ("w1",))
    u.on_replica(stored("w1", 0))
    u.error = Unavailable("no workers.")
    assert u.outcome() is u.error
    assert u.failed


def test_a_replica_that_did_not_confirm_in_time_is_named(tmp_path: Path) -> None:
    u = placed(upload(tmp_path), ("w1", "w2", "w3"))
    u.on_replica(stored("w2", 1))
    u.time_out()
    out = u.outcome()
    assert type(out) is Unavailable
    assert str(out) == "w1, w3 did not confirm 'f' in time."


def test_copies_that_did_not_finish_in_time_say_where_it_is_stored(tmp_path: Path) -> None:
    u = placed(upload(tmp_path), ("w1", "w2"), stored=True, copies=2)
    u.already_stored()
    u.time_out()
    out = u.outcome()
    assert type(out) is Unavailable
    assert str(out) == (
        "'f' is stored on w1, w2 but the copies to 2 more workers did not finish in time; "
        "the manager goes on with them (see status)."
    )


@pytest.mark.parametrize("copies", [0, 1])
def test_a_deadline_passed_after_everything_arrived_is_no_failure(
    tmp_path: Path, copies: int
) -> None:
    u = placed(upload(tmp_path), ("w1",), stored=bool(copies), copies=copies)
    u.on_replica(stored("w1", 0))
    if copies:
        u.on_replica(stored("w4", 1))
    u.on_replica(delivery(m.UploadRecorded(ID, "f")))
    u.time_out()
    assert isinstance(u.outcome(), UploadResult)


def pack(tmp_path: Path) -> tuple[Pack, Upload, Upload]:
    p = Pack()
    a, b = upload(tmp_path, "a"), upload(tmp_path, "b")
    p.members = [a, b]
    return p, a, b


def pack_stored(worker: str, hop: int, *ids: str) -> Delivery:
    files = tuple(m.PackEntry(i, SHA, 1) for i in ids)
    return delivery(m.PackStored(worker, hop, files))


def test_a_pack_is_complete_when_each_member_is_confirmed_by_every_worker_or_failed(
    tmp_path: Path,
) -> None:
    p, a, b = pack(tmp_path)
    assert not p.complete  # not placed
    p.accepted = m.PackAccepted((ID, ID2), ("w1", "w2"))
    assert p.take_stored() == [a, b]
    for u in (a, b):  # as Batch._send does
        u.accepted = m.UploadAccepted(u.upload_id, ("w1", "w2"), 1024)
    p.on_replica(pack_stored("w1", 0, ID, ID2))
    p.on_replica(pack_stored("w1", 0, ID))  # again: still one
    assert not p.complete
    assert a.confirmed == {"w1": 0} and b.confirmed == {"w1": 0}
    assert seen(a) == [("w1", 0)]
    p.on_replica(pack_stored("w2", 1, ID, "f" * 32))  # another pack's file is not ours
    assert a.complete and not b.complete and not p.complete
    p.on_replica(failed("w2", "bad bytes", "integrity", upload_id=ID2))
    p.on_replica(failed("w2", "not ours", "integrity", upload_id="f" * 32))
    assert p.complete
    assert b.failures == ["w2: bad bytes"] and a.failures == []
    assert not p.recorded
    p.on_replica(delivery(m.PackRecorded((ID, "f" * 32))))
    assert a.recorded and not b.recorded and p.recorded
    outcomes = dict(p.outcomes())
    assert outcomes["a"] == UploadResult("a", 1, SHA, ("w1", "w2"), {"w1": 0, "w2": 1}, sent=1)
    assert isinstance(outcomes["b"], IntegrityError)


def test_a_pack_refused_is_the_error_of_every_member(tmp_path: Path) -> None:
    p, a, b = pack(tmp_path)
    p.error = WarrenError("no.")
    assert p.outcomes() == [("a", p.error), ("b", p.error)]


class Silent:
    """What Batch asks of its session to judge a deadline."""

    settings = Settings(request_timeout=3.0)

    def silent(self) -> str:
        return "the manager did not answer within 3 s; is it running?"


def test_only_a_manager_that_said_nothing_by_the_deadline_ends_the_batch(tmp_path: Path) -> None:
    """Batch._judge: an ask past its deadline with no answer is a silent manager (the whole
    command fails, exit 4); an answer or a refusal that came in time is taken in next, and
    a deadline is not passed until the clock is beyond it."""
    batch = Batch(cast(Session, Silent()), 2, lambda name: Progress(), lambda name, out: None)
    u = upload(tmp_path)
    u.step, u.deadline = Step.ASKING, 10.0
    batch._judge(u, 10.0)  # not passed yet
    with pytest.raises(Unavailable, match="did not answer within 3 s"):
        batch._judge(u, 10.5)
    u.error = Unavailable("no workers.")
    batch._judge(u, 10.5)  # refused in time: that is the outcome, not a silent manager
    u.error = None
    placed(u, ("w1",))
    batch._judge(u, 10.5)
    assert u.step is Step.ASKING


def test_each_later_step_past_its_deadline_ends_as_its_own_outcome(tmp_path: Path) -> None:
    """Resuming: a primary that did not say what it has fails that file alone, naming it.
    Storing: a file every replica confirmed (or one that failed) is not timed out; one
    still waiting is, and is done. Recording: done all the same, only the catalog lags."""
    batch = Batch(cast(Session, Silent()), 2, lambda name: Progress(), lambda name, out: None)
    u = upload(tmp_path)
    u.step, u.deadline = Step.RESUMING, 1.0
    batch._judge(u, 2.0)
    assert u.step is Step.DONE
    assert type(u.error) is Unavailable
    said = "did not say which chunks of 'f' it has; run the upload again."
    assert str(u.error) == f"the primary {said}"
    u = placed(upload(tmp_path), ("w2", "w1"), resumed=True)
    u.step, u.deadline = Step.RESUMING, 1.0
    batch._judge(u, 2.0)
    assert str(u.error) == f"w2 {said}"
    u = placed(upload(tmp_path), ("w2", "w1"), resumed=True)
    u.step, u.deadline = Step.RESUMING, 1.0
    u.have = m.UploadHave(ID, (0,))
    batch._judge(u, 2.0)
    assert u.step is Step.RESUMING and u.error is None
    u = placed(upload(tmp_path), ("w1",))
    u.step, u.deadline = Step.STORING, 1.0
    u.on_replica(stored("w1", 0))
    batch._judge(u, 2.0)
    assert u.step is Step.STORING and not u.timed_out
    u = placed(upload(tmp_path), ("w1",))
    u.step, u.deadline = Step.STORING, 1.0
    u.on_replica(failed("w1", "bad", "integrity"))
    batch._judge(u, 2.0)
    assert u.step is Step.STORING and not u.timed_out
    u = placed(upload(tmp_path), ("w1", "w2"))
    u.step, u.deadline = Step.STORING, 1.0
    u.on_replica(stored("w1", 0))
    batch._judge(u, 2.0)
    assert u.step is Step.DONE and u.timed_out
    assert str(u.outcome()) == "w2 did not confirm 'f' in time."
    u = placed(upload(tmp_path), ("w1",))
    u.step, u.deadline = Step.RECORDING, 1.0
    batch._judge(u, 2.0)
    assert u.step is Step.DONE and u.error is None
