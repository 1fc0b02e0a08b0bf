"""The forget policy (warren.retention) against fixed clocks: every --keep-* option alone,
at the calendar's boundaries, together, per group, and restic's manual's own examples.

Snapshots are built at known UTC datetimes; nothing here reads the clock."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from warren.errors import UsageError
from warren.retention import (
    UTC,
    Decision,
    Duration,
    Policy,
    Snap,
    apply,
    group,
    parse_duration,
)


def at(year: int, month: int, day: int, hour: int = 12, minute: int = 0, sec: int = 0) -> float:
    """Epoch seconds of a UTC wall-clock time."""
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC).timestamp()


def snap(
    id: str,
    time: float,
    host: str = "h",
    paths: tuple[str, ...] = ("/data",),
    tags: tuple[str, ...] = (),
) -> Snap:
    return Snap(id=id, time=time, host=host, paths=paths, tags=tags)


def kept(decisions: list[Decision]) -> list[str]:
    return [d.snap.id for d in decisions if d.keep]


def reasons(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    return {d.snap.id: d.reasons for d in decisions}


# -- one option at a time ---------------------------------------------------------------------


def test_keep_last_keeps_the_n_newest_and_answers_newest_first() -> None:
    # Given oldest first, as `snapshots` lists them: the answer still runs newest first.
    snaps = [snap(f"s{i}", at(2024, 5, i)) for i in range(1, 6)]
    decisions = apply(snaps, Policy(last=2))
    assert [d.snap.id for d in decisions] == ["s5", "s4", "s3", "s2", "s1"]
    assert kept(decisions) == ["s5", "s4"]
    assert reasons(decisions)["s5"] == ("last snapshot",)
    assert reasons(decisions)["s3"] == ()


def test_snapshots_at_the_same_time_keep_the_order_given() -> None:
    snaps = [snap("b", at(2024, 5, 1)), snap("a", at(2024, 5, 1)), snap("c", at(2024, 5, 2))]
    decisions = apply(snaps, Policy(last=2))
    assert [d.snap.id for d in decisions] == ["c", "b", "a"]
    assert kept(decisions) == ["c", "b"]


def test_keep_daily_keeps_only_the_newest_of_each_day() -> None:
    snaps = [
        snap("d3-20h", at(2024, 5, 3, 20)),
        snap("d3-12h", at(2024, 5, 3, 12)),
        snap("d3-08h", at(2024, 5, 3, 8)),
        snap("d2-23h", at(2024, 5, 2, 23, 59)),
        snap("d2-01h", at(2024, 5, 2, 1)),
        snap("d1", at(2024, 5, 1)),
    ]
    decisions = apply(snaps, Policy(daily=2))
    assert kept(decisions) == ["d3-20h", "d2-23h"]
    assert reasons(decisions)["d3-20h"] == ("daily snapshot",)


def test_keep_hourly_keeps_the_newest_of_each_hour() -> None:
    snaps = [
        snap("11:10", at(2024, 5, 1, 11, 10)),
        snap("10:55", at(2024, 5, 1, 10, 55)),
        snap("10:05", at(2024, 5, 1, 10, 5)),
        snap("09:59", at(2024, 5, 1, 9, 59)),
    ]
    decisions = apply(snaps, Policy(hourly=2))
    assert kept(decisions) == ["11:10", "10:55"]
    assert reasons(decisions)["10:55"] == ("hourly snapshot",)


def test_keep_daily_across_a_month_boundary() -> None:
    snaps = [
        snap("feb1-10h", at(2024, 2, 1, 10)),
        snap("feb1-00h", at(2024, 2, 1, 0, 30)),
        snap("jan31", at(2024, 1, 31, 23, 30)),
        snap("jan30", at(2024, 1, 30, 23)),
    ]
    assert kept(apply(snaps, Policy(daily=2))) == ["feb1-10h", "jan31"]


def test_keep_monthly_across_a_month_boundary() -> None:
    snaps = [
        snap("mar15", at(2024, 3, 15)),
        snap("mar1", at(2024, 3, 1, 0, 0)),
        snap("feb29", at(2024, 2, 29, 23, 59)),
        snap("feb1", at(2024, 2, 1)),
        snap("jan15", at(2024, 1, 15)),
    ]
    decisions = apply(snaps, Policy(monthly=2))
    assert kept(decisions) == ["mar15", "feb29"]
    assert reasons(decisions)["feb29"] == ("monthly snapshot",)


# Sunday 29 December 2024 is in ISO week 2024-52; Monday the 30th already in 2025-W01.
NEW_YEAR = [
    snap("2025-01-01", at(2025, 1, 1)),
    snap("2024-12-30", at(2024, 12, 30)),
    snap("2024-12-29", at(2024, 12, 29)),
    snap("2024-12-20", at(2024, 12, 20)),
]


def test_keep_weekly_uses_iso_weeks_across_the_new_year() -> None:
    decisions = apply(NEW_YEAR, Policy(weekly=2))
    assert kept(decisions) == ["2025-01-01", "2024-12-29"]
    assert reasons(decisions)["2024-12-29"] == ("weekly snapshot",)


def test_keep_yearly_across_the_new_year() -> None:
    decisions = apply(NEW_YEAR, Policy(yearly=2))
    assert kept(decisions) == ["2025-01-01", "2024-12-30"]
    assert reasons(decisions)["2024-12-30"] == ("yearly snapshot",)


def test_buckets_are_read_in_the_time_zone_given() -> None:
    # 23:30 and 00:30 UTC are two days in UTC but one day at UTC+2.
    snaps = [
        snap("late", at(2024, 1, 2, 0, 30)),
        snap("early", at(2024, 1, 1, 23, 30)),
        snap("older", at(2023, 12, 30)),
    ]
    assert kept(apply(snaps, Policy(daily=2))) == ["late", "early"]
    plus2 = timezone(timedelta(hours=2))
    assert kept(apply(snaps, Policy(daily=2), tz=plus2)) == ["late", "older"]


def test_the_oldest_is_kept_too_while_a_rule_has_counts_left() -> None:
    # restic: not enough days to fill --keep-daily 7, so the oldest snapshot stays as well.
    snaps = [
        snap("20h", at(2024, 5, 3, 20)),
        snap("12h", at(2024, 5, 3, 12)),
        snap("08h", at(2024, 5, 3, 8)),
    ]
    decisions = apply(snaps, Policy(daily=7))
    assert kept(decisions) == ["20h", "08h"]
    assert reasons(decisions)["08h"] == ("oldest daily snapshot",)
    # Once the count is used up, the oldest goes like any other.
    assert kept(apply(snaps, Policy(daily=1))) == ["20h"]


def test_minus_one_keeps_every_bucket() -> None:
    # Two a day for ten days: one per day, plus restic's oldest (its count never runs out).
    snaps = [snap(f"{d}-{h}", at(2024, 5, d, h)) for d in range(10, 0, -1) for h in (20, 8)]
    decisions = apply(snaps, Policy(daily=-1))
    assert kept(decisions) == [f"{d}-20" for d in range(10, 0, -1)] + ["1-8"]
    assert reasons(decisions)["1-8"] == ("oldest daily snapshot",)
    assert all(d.keep for d in apply(snaps, Policy(last=-1)))


def test_keep_within_is_measured_from_the_newest_snapshot() -> None:
    # The newest is years before the test runs: measured from now, nothing would be within.
    snaps = [
        snap("newest", at(2020, 6, 10, 12)),
        snap("inside", at(2020, 6, 3, 12, 0, 1)),
        snap("edge", at(2020, 6, 3, 12)),
        snap("old", at(2020, 5, 1)),
    ]
    decisions = apply(snaps, Policy(within=parse_duration("7d")))
    assert kept(decisions) == ["newest", "inside"]
    assert reasons(decisions)["inside"] == ("within 7d",)
    # `now` only sets aside snapshots dated after it; it does not move the reference.
    assert kept(apply(snaps, Policy(within=parse_duration("7d")), now=at(2026, 1, 1))) == [
        "newest",
        "inside",
    ]


def test_keep_within_ignores_a_snapshot_dated_after_now() -> None:
    # A host with its clock a year ahead must not make everyone else's snapshots look old.
    snaps = [
        snap("future", at(2021, 6, 10)),
        snap("newest", at(2020, 6, 10, 12)),
        snap("inside", at(2020, 6, 5)),
        snap("old", at(2020, 5, 1)),
    ]
    policy = Policy(within=parse_duration("7d"))
    assert kept(apply(snaps, policy, now=at(2020, 6, 11))) == ["future", "newest", "inside"]
    assert kept(apply(snaps, policy)) == ["future"]
    # With every snapshot after now, restic counts from year 1: all are within.
    assert all(d.keep for d in apply(snaps, policy, now=at(2019, 1, 1)))


def test_keep_within_months_roll_over_as_go_does() -> None:
    # 31 March less a month is "31 February", which Go's AddDate makes 2 March (2024: leap).
    snaps = [
        snap("newest", at(2024, 3, 31, 12)),
        snap("inside", at(2024, 3, 2, 12, 0, 1)),
        snap("edge", at(2024, 3, 2, 12)),
    ]
    decisions = apply(snaps, Policy(within=parse_duration("1m")))
    assert kept(decisions) == ["newest", "inside"]


def test_duration_before_moves_the_calendar_then_the_clock() -> None:
    assert parse_duration("1y2m3d4h").before(at(2024, 5, 10, 10)) == at(2023, 3, 7, 6)
    assert parse_duration("1y").before(at(2024, 2, 29)) == at(2023, 3, 1)
    assert parse_duration("36h").before(at(2024, 3, 1, 12)) == at(2024, 2, 29, 0)
    assert parse_duration("13m").before(at(2024, 1, 15)) == at(2022, 12, 15)
    assert parse_duration("99999y").before(at(2024, 1, 1)) == float("-inf")


def test_keep_tag_keeps_any_of_the_tag_lists() -> None:
    snaps = [
        snap("plain", at(2024, 5, 5)),
        snap("x", at(2024, 5, 4), tags=("x",)),
        snap("y", at(2024, 5, 3), tags=("y", "other")),
        snap("a-only", at(2024, 5, 2), tags=("a",)),
        snap("a-and-b", at(2024, 5, 1), tags=("b", "a")),
    ]
    decisions = apply(snaps, Policy(tags=("x", "y")))
    assert kept(decisions) == ["x", "y"]
    assert reasons(decisions)["y"] == ("has tags [y]",)
    # One --keep-tag a,b needs both tags.
    decisions = apply(snaps, Policy(tags=("a,b",)))
    assert kept(decisions) == ["a-and-b"]
    assert reasons(decisions)["a-and-b"] == ("has tags [a, b]",)
    # --keep-tag '' keeps the untagged.
    assert kept(apply(snaps, Policy(tags=("",)))) == ["plain"]


# -- together ---------------------------------------------------------------------------------


def test_a_snapshot_kept_by_several_rules_gives_each_reason_in_restics_order() -> None:
    snaps = [
        snap("newest", at(2024, 5, 3, 20), tags=("x",)),
        snap("same-day", at(2024, 5, 3, 8)),
        snap("yesterday", at(2024, 5, 2, 9)),
        snap("old", at(2024, 4, 1)),
        snap("older", at(2024, 3, 1)),
    ]
    policy = Policy(last=1, daily=2, within=parse_duration("1d"), tags=("x",))
    decisions = apply(snaps, policy)
    assert kept(decisions) == ["newest", "same-day", "yesterday"]
    why = reasons(decisions)
    assert why["newest"] == ("has tags [x]", "within 1d", "last snapshot", "daily snapshot")
    assert why["same-day"] == ("within 1d",)
    assert why["yesterday"] == ("daily snapshot",)


def test_groups_are_host_and_paths_in_any_order() -> None:
    snaps = [
        snap("h1-ab-old", at(2024, 5, 1), host="h1", paths=("/a", "/b")),
        snap("h1-ba-new", at(2024, 5, 2), host="h1", paths=("/b", "/a")),
        snap("h1-a", at(2024, 5, 1), host="h1", paths=("/a",)),
        snap("h2-ab", at(2024, 4, 1), host="h2", paths=("/a", "/b")),
    ]
    groups = group(snaps)
    assert groups == {
        ("h1", ("/a", "/b")): [snaps[1], snaps[0]],
        ("h1", ("/a",)): [snaps[2]],
        ("h2", ("/a", "/b")): [snaps[3]],
    }
    # Each group keeps its own newest, however old it is next to the others.
    assert kept(apply(snaps, Policy(last=1))) == ["h1-ba-new", "h1-a", "h2-ab"]
    # And within is measured from each group's own newest.
    assert kept(apply(snaps, Policy(within=parse_duration("1h")))) == [
        "h1-ba-new",
        "h1-a",
        "h2-ab",
    ]


# -- restic's manual: "Removing snapshots according to a policy" -------------------------------


def test_restic_manual_keep_daily_5_with_a_missed_wednesday() -> None:
    times = [
        (21, 11), (22, 11), (23, 11), (24, 11), (25, 11), (25, 23),
        (28, 11), (29, 11), (31, 11), (32, 11), (32, 23),
    ]  # fmt: skip
    # April 2025, with "32" for 2 May and "31" for 1 May, as the manual's table reads.
    snaps = [
        snap(f"{day}-{hour}", at(2025, 4, 1, hour) + (day - 1) * 86400.0) for day, hour in times
    ]
    decisions = apply(snaps, Policy(daily=5))
    assert kept(decisions) == ["32-23", "31-11", "29-11", "28-11", "25-23"]
    assert {r for d in decisions for r in d.reasons} == {"daily snapshot"}


def test_restic_manual_a_hundred_years_of_dailies() -> None:
    """--keep-daily 7 --keep-weekly 5 --keep-monthly 12 --keep-yearly 75 over a backup a day
    for 100 years: the manual counts 7 dailies, 4 more weeklies, 12 or 11 more monthlies and
    75 or 74 more yearlies. Those are the counts when the rules overlap least: the last day
    a Sunday (the dailies fill one ISO week) in mid-December (the monthlies stay in one year,
    and no weekly falls on a month's end). Any other calendar shares more."""
    last = date(2024, 12, 15)  # a Sunday
    days = [last - timedelta(days=n) for n in range(36525)]
    snaps = [snap(d.isoformat(), at(d.year, d.month, d.day)) for d in days]
    decisions = apply(snaps, Policy(daily=7, weekly=5, monthly=12, yearly=75))
    first = {d.snap.id: d.reasons[0] for d in decisions if d.keep}
    new = {r: [i for i, why in first.items() if why == r] for r in set(first.values())}
    assert {r: len(ids) for r, ids in new.items()} == {
        "daily snapshot": 7,
        "weekly snapshot": 4,
        "monthly snapshot": 11,
        "yearly snapshot": 74,
    }
    assert new["daily snapshot"] == [f"2024-12-{d:02}" for d in range(15, 8, -1)]
    # Weeklies are the newest of their ISO week: Sundays.
    assert new["weekly snapshot"] == ["2024-12-08", "2024-12-01", "2024-11-24", "2024-11-17"]
    # Monthlies the last day of the month, yearlies New Year's Eve, 75 years in all.
    assert new["monthly snapshot"] == [f"2024-{m:02}-{last_day(2024, m)}" for m in range(11, 0, -1)]
    assert new["yearly snapshot"] == [f"{y}-12-31" for y in range(2023, 1949, -1)]
    # The newest counts for every rule at once.
    assert reasons(decisions)["2024-12-15"] == (
        "daily snapshot",
        "weekly snapshot",
        "monthly snapshot",
        "yearly snapshot",
    )
    assert len(kept(decisions)) == 96


def last_day(year: int, month: int) -> int:
    return (date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)).day


# -- parsing and the empty policy ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1y2m3d4h", Duration(1, 2, 3, 4)),
        ("7d", Duration(days=7)),
        ("36h", Duration(hours=36)),
        ("2m", Duration(months=2)),
        (" 3d1y ", Duration(years=1, days=3)),
        ("0d", Duration()),
    ],
)
def test_parse_duration_reads_restics_format(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


def test_a_duration_reads_back_as_restic_writes_it() -> None:
    assert str(parse_duration("4h3d2m1y")) == "1y2m3d4h"
    assert str(parse_duration("7d")) == "7d"
    assert str(Duration()) == "0h"


@pytest.mark.parametrize(
    "text", ["", "7", "d", "7w", "1.5d", "-1d", "7D", "1d2d", "7 d", "\u0663d", "1y 2m"]
)
def test_parse_duration_refuses_anything_else_in_one_sentence(text: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_duration(text)
    message = str(caught.value)
    assert repr(text) in message
    assert "1y2m3d4h" in message
    assert message.count(". ") == 0 and message.endswith(".")


def test_the_empty_policy_is_empty_and_keeps_nothing() -> None:
    assert Policy().empty
    assert Policy(within=None).empty
    assert Policy(within=parse_duration("0d")).empty  # restic: a zero span is no rule
    for policy in [
        Policy(last=1),
        Policy(hourly=1),
        Policy(daily=1),
        Policy(weekly=1),
        Policy(monthly=1),
        Policy(yearly=1),
        Policy(daily=-1),
        Policy(within=parse_duration("1h")),
        Policy(tags=("x",)),
        Policy(tags=("",)),
    ]:
        assert not policy.empty, policy
    snaps = [snap("a", at(2024, 5, 2)), snap("b", at(2024, 5, 1))]
    assert kept(apply(snaps, Policy())) == []


@pytest.mark.parametrize("field", ["last", "hourly", "daily", "weekly", "monthly", "yearly"])
def test_counts_below_minus_one_are_refused_as_restic_does(field: str) -> None:
    with pytest.raises(UsageError, match="-2"):
        Policy(**count(field, -2))
    assert not Policy(**count(field, -1)).empty


def count(field: str, n: int) -> dict[str, Any]:
    """Policy keyword arguments naming one count (Any: mypy cannot follow the name)."""
    return {field: n}


def test_a_negative_duration_is_refused() -> None:
    with pytest.raises(UsageError, match="negative"):
        Duration(days=-1)
