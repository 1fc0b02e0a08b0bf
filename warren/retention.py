"""Which snapshots ``forget`` keeps: restic's retention policy, as a pure function.

warren speaks restic's vocabulary so restic users feel at home, so this follows restic's
``internal/data/snapshot_policy.go`` and ``duration.go`` rule for rule, reasons included.
No I/O and no clock: the caller passes the snapshots, the time zone and, if it wants
restic's guard against snapshots dated in the future, ``now``.

The parts of restic that surprise people, kept on purpose:

- Snapshots are grouped by host and paths, and the policy is applied to each group alone,
  so one machine's backups never push out another's.
- A bucket rule (hourly ... yearly) keeps the newest snapshot of each bucket, walking from
  the newest, until it has kept N. If it still has counts left when it reaches the group's
  oldest snapshot, it keeps that one too ("oldest daily snapshot"): history stays as long
  as the policy allows.
- ``within`` is measured from the newest snapshot of the group, not from now, so a host
  that stopped backing up does not lose its last backups.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone, tzinfo

from warren.errors import UsageError

UTC = timezone.utc

_PART = re.compile(r"([0-9]+)([ymdh])")
_WHOLE = re.compile(r"(?:[0-9]+[ymdh])+")


@dataclass(frozen=True)
class Duration:
    """A --keep-within span: years and months on the calendar, like restic's Duration."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __post_init__(self) -> None:
        # restic refuses these too; a negative span would keep snapshots newer than the newest.
        if min(self.years, self.months, self.days, self.hours) < 0:
            raise UsageError(f"A --keep-within duration cannot be negative, as {self} is.")

    @property
    def zero(self) -> bool:
        """True for 0d and the like: restic treats it as no --keep-within at all."""
        return not (self.years or self.months or self.days or self.hours)

    def __str__(self) -> str:
        parts = [(self.years, "y"), (self.months, "m"), (self.days, "d"), (self.hours, "h")]
        text = "".join(f"{n}{unit}" for n, unit in parts if n)
        return text or "0h"

    def before(self, t: float, tz: tzinfo = UTC) -> float:
        """The moment this span before ``t``, as restic's ``AddDate(-y, -m, -d).Add(-h)``.

        Years, months and days move on the calendar in ``tz`` and keep the wall-clock time;
        a day that does not exist rolls over as Go does (31 March less a month is 2 or 3
        March). Hours are then taken off as fixed amounts. A span reaching before year 1
        gives -inf: everything is within it.
        """
        wall = datetime.fromtimestamp(t, tz)
        month0 = wall.year * 12 + (wall.month - 1) - self.years * 12 - self.months
        year, month = divmod(month0, 12)
        try:
            day = date(year, month + 1, 1) + timedelta(days=wall.day - 1 - self.days)
            moved = datetime.combine(day, wall.timetz()).timestamp()
        except (ValueError, OverflowError):
            return float("-inf")
        return moved - self.hours * 3600.0


def parse_duration(text: str) -> Duration:
    """Parse restic's --keep-within format: ``1y2m3d4h``, ``7d``, ``36h`` (m is months).

    Stricter than restic in two ways that only catch typos: a unit may appear once, and a
    number cannot be negative (restic parses ``-1d`` and then refuses it anyway).
    """
    stripped = text.strip()
    if not _WHOLE.fullmatch(stripped):
        raise UsageError(
            f"{text!r} is not a duration: write numbers with y, m (months), d or h, "
            "like 1y2m3d4h or 7d."
        )
    amounts: dict[str, int] = {}
    for number, unit in _PART.findall(stripped):
        if unit in amounts:
            raise UsageError(f"{text!r} gives {unit} twice: give each unit once, like 1y2m3d4h.")
        amounts[unit] = int(number)
    return Duration(
        years=amounts.get("y", 0),
        months=amounts.get("m", 0),
        days=amounts.get("d", 0),
        hours=amounts.get("h", 0),
    )


@dataclass(frozen=True)
class Snap:
    """What the policy needs to know of a snapshot; ``time`` is epoch seconds (UTC)."""

    id: str
    time: float
    host: str
    paths: tuple[str, ...]
    tags: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    """The --keep-* options. A count of -1 means every bucket ("unlimited" in restic).

    Each entry of ``tags`` is one --keep-tag value: ``a,b`` needs both tags, several
    entries need any one of them, and ``""`` matches untagged snapshots (restic's rules).
    """

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: Duration | None = None
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        for count in counts:
            if count < -1:
                raise UsageError(f"A --keep-* count must be -1 (every one) or more, not {count}.")

    @property
    def empty(self) -> bool:
        """No rule given. restic will not forget a whole group on an empty policy, and
        neither may the caller: it asks for a --keep-* option or snapshot ids instead."""
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        within = self.within is not None and not self.within.zero
        return not any(counts) and not within and not self.tags


@dataclass(frozen=True)
class Decision:
    """One snapshot's fate; ``reasons`` names every rule that keeps it (empty: forget)."""

    snap: Snap
    keep: bool
    reasons: tuple[str, ...]


GroupKey = tuple[str, tuple[str, ...]]
_Bucketer = Callable[[datetime], object]

# In restic's order; the reasons read as restic prints them.
_RULES: tuple[tuple[str, _Bucketer], ...] = (
    ("hourly", lambda d: (d.year, d.month, d.day, d.hour)),
    ("daily", lambda d: (d.year, d.month, d.day)),
    ("weekly", lambda d: d.isocalendar()[:2]),
    ("monthly", lambda d: (d.year, d.month)),
    ("yearly", lambda d: d.year),
)


_NAMES = ("last", *(name for name, _ in _RULES))


def _key(snap: Snap) -> GroupKey:
    # restic sorts the paths first, so "backup /b /a" and "backup /a /b" share a group.
    return (snap.host, tuple(sorted(snap.paths)))


def _newest_first(items: Iterable[tuple[int, Snap]]) -> list[tuple[int, Snap]]:
    # Stable, like restic's sort.Stable: equal times keep the order they came in.
    return sorted(items, key=lambda item: -item[1].time)


def group(snaps: list[Snap]) -> dict[GroupKey, list[Snap]]:
    """Snapshots by (host, sorted paths), each group newest first: the units a policy
    is applied to, as restic's default ``--group-by host,paths``."""
    groups: dict[GroupKey, list[Snap]] = {}
    for _, snap in _newest_first(enumerate(snaps)):
        groups.setdefault(_key(snap), []).append(snap)
    return groups


def _has_tags(snap: Snap, wanted: str) -> bool:
    # restic's HasTags on one --keep-tag list: all of them, and "" stands for untagged.
    for tag in wanted.split(","):
        if tag == "" and not snap.tags:
            return True
        if tag not in snap.tags:
            return False
    return True


def _latest(members: list[Snap], now: float | None) -> float:
    """The time ``within`` counts back from: the newest snapshot, ignoring any dated after
    ``now`` (restic: a wrong clock on one host must not make the rest look old). When
    none is left restic counts from year 1, so every snapshot is within."""
    times = [s.time for s in members if now is None or s.time < now]
    return max(times) if times else float("-inf")


def _apply_group(
    members: list[Snap], policy: Policy, tz: tzinfo, now: float | None
) -> list[tuple[str, ...]]:
    """Reasons for each member of one group, which must be sorted newest first."""
    cutoff: float | None = None
    if policy.within is not None and not policy.within.zero:
        latest = _latest(members, now)
        cutoff = latest if latest == float("-inf") else policy.within.before(latest, tz)
    counts = [policy.last] + [getattr(policy, name) for name, _ in _RULES]
    previous: list[object] = [None] * len(counts)
    result: list[tuple[str, ...]] = []
    for nr, snap in enumerate(members):
        reasons: list[str] = []
        for wanted in policy.tags:
            if _has_tags(snap, wanted):
                reasons.append(f"has tags [{', '.join(wanted.split(','))}]")
        if cutoff is not None and snap.time > cutoff:
            reasons.append(f"within {policy.within}")
        wall = datetime.fromtimestamp(snap.time, tz)
        oldest = nr == len(members) - 1
        # "last" is a bucket rule whose bucket is the position: each snapshot its own.
        values = [nr] + [bucket(wall) for _, bucket in _RULES]
        for i, name in enumerate(_NAMES):
            if counts[i] == 0:
                continue
            value = values[i]
            if value != previous[i]:
                reasons.append(f"{name} snapshot")
            elif oldest:
                # Counts left at the oldest: keep it, for the longest history allowed.
                reasons.append(f"oldest {name} snapshot")
            else:
                continue
            previous[i] = value
            if counts[i] > 0:
                counts[i] -= 1
        result.append(tuple(reasons))
    return result


def apply(
    snaps: list[Snap], policy: Policy, tz: tzinfo = UTC, *, now: float | None = None
) -> list[Decision]:
    """Decide, group by group, which snapshots the policy keeps.

    One decision per snapshot, newest first (ties in the order given). Buckets (hour, day,
    ISO week, month, year) are read in ``tz``, as restic reads them in the snapshot's own
    time zone. ``now``, if given, keeps snapshots dated after it out of ``within``'s
    reckoning of the newest. An empty policy keeps nothing; refusing it is the caller's job.
    """
    reasons: dict[int, tuple[str, ...]] = {}
    groups: dict[GroupKey, list[tuple[int, Snap]]] = {}
    ordered = _newest_first(enumerate(snaps))
    for index, snap in ordered:
        groups.setdefault(_key(snap), []).append((index, snap))
    for members in groups.values():
        found = _apply_group([snap for _, snap in members], policy, tz, now)
        for (index, _), why in zip(members, found, strict=True):
            reasons[index] = why
    return [Decision(snap, bool(reasons[i]), reasons[i]) for i, snap in ordered]
