"""Placement: distinct live workers with room, most free first, spread when equal."""

from __future__ import annotations

import pytest

from manager.chains import GIB, Candidate, choose_chain
from warren.errors import Refused


def c(
    name: str,
    free_gib: float = 10,
    alive: bool = True,
    used: int = 0,
    reserved: int = 0,
    files: int = 0,
) -> Candidate:
    return Candidate(name, alive, int(free_gib * GIB), used, reserved, files)


def test_most_free_space_first() -> None:
    chain = choose_chain([c("w1", 5), c("w2", 50), c("w3", 20)], size=100, replicas=2)
    assert chain == ["w2", "w3"]


def test_never_dead_workers() -> None:
    assert choose_chain([c("w1", 50, alive=False), c("w2"), c("w3")], 1, 2) == ["w2", "w3"]


def test_never_full_workers() -> None:
    chain = choose_chain([c("w1", 0.01), c("w2", 1), c("w3", 1)], size=GIB // 2, replicas=2)
    assert chain == ["w2", "w3"]


def test_pending_uploads_count_against_free_space() -> None:
    workers = [c("w1", 2, reserved=int(1.5 * GIB)), c("w2", 1), c("w3", 1)]
    assert choose_chain(workers, size=GIB // 2, replicas=2) == ["w2", "w3"]


def test_equal_disks_spread_by_use() -> None:
    workers = [c("w1", used=900), c("w2", used=0), c("w3", used=10), c("w4", files=1)]
    assert choose_chain(workers, size=1, replicas=2) == ["w2", "w4"]


def test_one_disk_reported_either_side_of_a_gib_still_spreads_by_use() -> None:
    # Four workers on one disk; its free space crossed 10 GiB between their reports.
    workers = [
        c("w1", 10 + 1e-6, used=5000),
        c("w2", 10 + 1e-6, used=5000),
        c("w3", 10 - 1e-6),
        c("w4", 10 - 1e-6),
    ]
    assert choose_chain(workers, size=1, replicas=2) == ["w3", "w4"]


def test_chain_members_are_distinct() -> None:
    chain = choose_chain([c(f"w{i}") for i in range(1, 5)], 1, 4)
    assert sorted(chain) == ["w1", "w2", "w3", "w4"]


@pytest.mark.parametrize(
    "replicas, message",
    [
        (4, "asked for 4 replicas but only 3 workers are alive."),
        (0, "the replica count must be at least 1."),
    ],
)
def test_refusals_say_why(replicas: int, message: str) -> None:
    with pytest.raises(Refused) as err:
        choose_chain([c("w1"), c("w2"), c("w3"), c("w4", alive=False)], 1, replicas)
    assert str(err.value) == message


def test_refuses_when_too_few_have_room() -> None:
    with pytest.raises(Refused, match="only 1 live worker has room"):
        choose_chain([c("w1", 100), c("w2", 0.01)], size=GIB, replicas=2)
