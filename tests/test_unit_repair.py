"""Repair planning: pure logic, no broker."""

from __future__ import annotations

from manager.chains import GIB, Candidate
from manager.holdings import Shortfall
from manager.repair import Repairs

A, B, C = "a" * 64, "b" * 64, "c" * 64


def workers(*names: str, dead: tuple[str, ...] = ()) -> list[Candidate]:
    return [Candidate(n, n not in dead, 10 * GIB, 0) for n in names]


def test_copies_go_from_a_live_holder_to_a_worker_without_the_file() -> None:
    r = Repairs(limit=2)
    [copy] = r.plan([Shortfall(A, 100, 2, ("w2",))], workers("w1", "w2", "w3", dead=("w1",)), 0)
    assert copy.source == "w2"
    assert copy.target == "w3"


def test_at_most_limit_copies_run_at_once() -> None:
    r = Repairs(limit=2)
    short = [Shortfall(s, 1, 2, ("w1",)) for s in (A, B, C)]
    assert len(r.plan(short, workers("w1", "w2", "w3"), 0)) == 2
    assert r.plan(short, workers("w1", "w2", "w3"), 1) == []  # both still in flight
    assert r.stored(A, r.in_flight[A].target) is not None
    [third] = r.plan(short[2:], workers("w1", "w2", "w3"), 2)
    assert third.sha256 == C


def test_a_copy_that_times_out_is_planned_again() -> None:
    r = Repairs(limit=1)
    short = [Shortfall(A, 1, 2, ("w1",))]
    [first] = r.plan(short, workers("w1", "w2", "w3"), 0)
    [again] = r.plan(short, workers("w1", "w2", "w3"), first.deadline + 1)
    assert again.upload_id != first.upload_id


def test_nothing_to_copy_from_or_nowhere_to_copy_to() -> None:
    r = Repairs(limit=2)
    assert r.plan([Shortfall(A, 1, 2, ())], workers("w1", "w2"), 0) == []
    assert r.plan([Shortfall(A, 1, 3, ("w1", "w2"))], workers("w1", "w2"), 0) == []


def test_a_replica_from_elsewhere_does_not_end_the_copy() -> None:
    r = Repairs(limit=1)
    [copy] = r.plan([Shortfall(A, 1, 2, ("w1",))], workers("w1", "w2", "w3"), 0)
    other = "w3" if copy.target == "w2" else "w2"
    assert r.stored(A, other) is None
    assert A in r.in_flight


def test_no_copy_goes_to_a_worker_still_deleting_an_old_copy_of_it() -> None:
    # w3 was told to delete this content (garbage) and has not confirmed: a copy landing
    # there could be deleted after it lands, so only w4 may get it
    r = Repairs(limit=4)
    short = Shortfall(A, 1, 2, ("w1",), avoid=("w3",))
    [copy] = r.plan([short], workers("w1", "w2", "w3", "w4", dead=("w2",)), 0)
    assert copy.target == "w4"
    assert Repairs(limit=4).plan([short], workers("w1", "w3"), 0) == []
