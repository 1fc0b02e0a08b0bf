"""Which workers a new file goes to (a chain, primary first): pure logic, unit-tested
without a broker. ``manager/placement.py`` records and announces what it picks."""

from __future__ import annotations

from dataclasses import dataclass

from warren.errors import Refused

GIB = 1024**3
# Keep this much free on a worker's disk beyond the file itself.
HEADROOM = 64 * 1024 * 1024


@dataclass(frozen=True)
class Candidate:
    name: str
    alive: bool
    free_bytes: int  # as last reported by the worker
    used_bytes: int  # replicas the catalog knows on it
    reserved_bytes: int = 0  # uploads placed there that have not finished yet
    files: int = 0  # replicas and pending uploads: spreads even empty files


def choose_chain(candidates: list[Candidate], size: int, replicas: int) -> list[str]:
    """Pick ``replicas`` distinct live workers with room, primary first.

    Most free space first (after what pending uploads will take), but workers within a GiB
    of the roomiest count as equally roomy, because workers sharing a disk report nearly
    the same number; among those the least used worker (bytes, then files) wins, so files
    spread over the cluster instead of piling up on the same pair. (Whole GiB buckets
    would split such workers whenever the disk's free space crossed a GiB boundary
    between their reports.)
    """
    live = [c for c in candidates if c.alive]
    if replicas < 1:
        raise Refused("the replica count must be at least 1.")
    if replicas > len(live):
        raise Refused(
            f"asked for {replicas} replicas but only {len(live)} "
            f"worker{'s are' if len(live) != 1 else ' is'} alive."
        )
    roomy = [c for c in live if c.free_bytes - c.reserved_bytes - HEADROOM >= size]
    if replicas > len(roomy):
        raise Refused(
            f"asked for {replicas} replicas but only {len(roomy)} live "
            f"worker{'s have' if len(roomy) != 1 else ' has'} room for {size} bytes."
        )
    most = max(c.free_bytes - c.reserved_bytes for c in roomy)

    def short_of_most(c: Candidate) -> int:
        behind = most - (c.free_bytes - c.reserved_bytes)
        return 0 if behind < GIB else behind

    roomy.sort(key=lambda c: (short_of_most(c), c.used_bytes + c.reserved_bytes, c.files, c.name))
    return [c.name for c in roomy[:replicas]]
