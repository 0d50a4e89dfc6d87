"""The prune retention policy (python/mailbak/retention.py): restic's forget rules, by hand-made tables."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mailbak.retention import UNLIMITED, Duration, Policy, PolicyError, Snapshot, decide, parse_count, parse_duration


@contextmanager
def local_tz(tz: str) -> Iterator[None]:
    """Runs the body with the process's local time zone set to ``tz`` (a POSIX TZ string, so
    no zoneinfo files are needed), then restores the previous one."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = tz
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def at(text: str) -> datetime:
    """``2026-01-03 14:00`` as an aware UTC time."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def snap(text: str, status: str = "ok") -> Snapshot:
    """A snapshot started at ``text`` (UTC), named like a repository's directory."""
    start = at(text)
    return Snapshot(start.strftime("%Y-%m-%dT%H%M%SZ"), status, start)


def table(snapshots: list[Snapshot], policy: Policy, now: datetime | None = None) -> list[tuple[str, str, str, str]]:
    """decide()'s answer as rows (start, status, action, reasons) for comparing with a literal."""
    return [(d.start.strftime("%Y-%m-%d %H:%M"), d.status, d.action, ", ".join(d.reasons)) for d in decide(snapshots, policy, now)]


# 60 snapshots over 90 days (2025-10-06 .. 2026-01-03, times UTC, TZ=UTC0): every other day in
# October and November, more often in December, twice a day around the new year; failed,
# incomplete and running ones among them. Expected decisions worked out by hand:
#   within 3d12h: reference 01-03 02:00 (newest complete, before now), cutoff 12-30 14:00
#     (strictly after: 12-30 14:00 itself is out).
#   last 2: 01-03, 01-02.  hourly 3: 01-03 02h, 01-02 02h, 01-01 14h.
#   daily 7: 01-03, 01-02, 01-01 14:00, 12-31 23:30, 12-30 14:00, 12-29, 12-28 14:00.
#   weekly 4: ISO 2026-W01 (12-29 .. 01-03): 01-03; 2025-W52: 12-28 14:00; W51: 12-21; W50: 12-14.
#   monthly 6: 2026-01: 01-03; 2025-12: 12-31 23:30; 2025-11: 11-30; 2025-10: 10-31; 2 left, so
#     the oldest (10-06, same month as 10-31) is kept too: "oldest monthly 5".
#   yearly 3: 2026: 01-03; 2025: 12-31 23:30; 1 left: the oldest, "oldest yearly 3".
#   failed/incomplete: superseded when a newer ok exists; 01-03 08:00 has none. Running: kept.
POLICY_60 = Policy(keep_last=2, keep_hourly=3, keep_daily=7, keep_weekly=4, keep_monthly=6, keep_yearly=3, keep_within=Duration(days=3, hours=12))
NOW_60 = at("2026-01-03 20:00")
EXPECTED_60 = [
    ("2026-01-03 14:00", "running", "keep", "running"),
    ("2026-01-03 08:00", "incomplete", "keep", "incomplete, no newer complete"),
    ("2026-01-03 02:00", "ok", "keep", "newest complete, within 3d12h, last 1, hourly 1, daily 1, weekly 1, monthly 1, yearly 1"),
    ("2026-01-02 14:00", "failed", "remove", "failed, superseded"),
    ("2026-01-02 02:00", "ok", "keep", "within 3d12h, last 2, hourly 2, daily 2"),
    ("2026-01-01 14:00", "ok", "keep", "within 3d12h, hourly 3, daily 3"),
    ("2026-01-01 02:00", "ok", "keep", "within 3d12h"),
    ("2025-12-31 23:30", "ok", "keep", "within 3d12h, daily 4, monthly 2, yearly 2"),
    ("2025-12-31 14:00", "incomplete", "remove", "incomplete, superseded"),
    ("2025-12-31 02:00", "ok", "keep", "within 3d12h"),
    ("2025-12-30 14:00", "ok", "keep", "daily 5"),
    ("2025-12-30 02:00", "ok", "remove", "matches no rule"),
    ("2025-12-29 02:00", "ok", "keep", "daily 6"),
    ("2025-12-28 14:00", "ok", "keep", "daily 7, weekly 2"),
    ("2025-12-28 02:00", "failed", "remove", "failed, superseded"),
    ("2025-12-27 02:00", "ok", "remove", "matches no rule"),
    ("2025-12-26 02:00", "ok", "remove", "matches no rule"),
    ("2025-12-25 02:00", "failed", "remove", "failed, superseded"),
    ("2025-12-24 02:00", "ok", "remove", "matches no rule"),
    ("2025-12-22 02:00", "ok", "remove", "matches no rule"),
    ("2025-12-21 02:00", "ok", "keep", "weekly 3"),
    ("2025-12-20 02:00", "incomplete", "remove", "incomplete, superseded"),
    ("2025-12-18 02:00", "ok", "remove", "matches no rule"),
    ("2025-12-16 02:00", "ok", "remove", "matches no rule"),
    ("2025-12-15 02:00", "ok", "remove", "matches no rule"),
    ("2025-12-14 02:00", "ok", "keep", "weekly 4"),
    ("2025-12-12 02:00", "ok", "remove", "matches no rule"),
    ("2025-12-10 02:00", "ok", "remove", "matches no rule"),
    ("2025-12-08 02:00", "ok", "remove", "matches no rule"),
    ("2025-12-05 02:00", "ok", "remove", "matches no rule"),
    ("2025-12-01 02:00", "ok", "remove", "matches no rule"),
    ("2025-11-30 02:00", "ok", "keep", "monthly 3"),
    ("2025-11-28 02:00", "ok", "remove", "matches no rule"),
    ("2025-11-27 02:00", "ok", "remove", "matches no rule"),
    ("2025-11-25 02:00", "ok", "remove", "matches no rule"),
    ("2025-11-23 02:00", "ok", "remove", "matches no rule"),
    ("2025-11-21 02:00", "ok", "remove", "matches no rule"),
    ("2025-11-20 02:00", "incomplete", "remove", "incomplete, superseded"),
    ("2025-11-18 02:00", "ok", "remove", "matches no rule"),
    ("2025-11-16 02:00", "ok", "remove", "matches no rule"),
    ("2025-11-14 02:00", "ok", "remove", "matches no rule"),
    ("2025-11-12 02:00", "ok", "remove", "matches no rule"),
    ("2025-11-10 02:00", "running", "keep", "running"),
    ("2025-11-07 02:00", "ok", "remove", "matches no rule"),
    ("2025-11-04 02:00", "ok", "remove", "matches no rule"),
    ("2025-11-02 02:00", "ok", "remove", "matches no rule"),
    ("2025-10-31 02:00", "ok", "keep", "monthly 4"),
    ("2025-10-29 02:00", "ok", "remove", "matches no rule"),
    ("2025-10-27 02:00", "ok", "remove", "matches no rule"),
    ("2025-10-25 02:00", "ok", "remove", "matches no rule"),
    ("2025-10-23 02:00", "ok", "remove", "matches no rule"),
    ("2025-10-21 02:00", "ok", "remove", "matches no rule"),
    ("2025-10-19 02:00", "ok", "remove", "matches no rule"),
    ("2025-10-17 02:00", "ok", "remove", "matches no rule"),
    ("2025-10-15 02:00", "ok", "remove", "matches no rule"),
    ("2025-10-13 02:00", "ok", "remove", "matches no rule"),
    ("2025-10-12 02:00", "failed", "remove", "failed, superseded"),
    ("2025-10-10 02:00", "ok", "remove", "matches no rule"),
    ("2025-10-07 02:00", "ok", "remove", "matches no rule"),
    ("2025-10-06 02:00", "ok", "keep", "oldest monthly 5, oldest yearly 3"),
]


def test_sixty_snapshots_over_ninety_days_mixed_rules():
    snapshots = [snap(start, status) for start, status, _, _ in EXPECTED_60]
    assert len(snapshots) == 60 and snapshots[0].start - snapshots[-1].start < timedelta(days=90)
    random.Random(11).shuffle(snapshots)
    with local_tz("UTC0"):
        assert table(snapshots, POLICY_60, NOW_60) == EXPECTED_60


def test_restic_documented_example():
    """The example of restic's doc/060_forget.rst: `forget --keep-daily 5` on 11 snapshots."""
    starts = ["2025-04-21 11:00", "2025-04-22 11:00", "2025-04-23 11:00", "2025-04-24 11:00", "2025-04-25 11:00", "2025-04-25 23:00", "2025-04-28 11:00", "2025-04-29 11:00", "2025-05-01 11:00", "2025-05-02 11:00", "2025-05-02 23:00"]
    with local_tz("UTC0"):
        decisions = decide([snap(s) for s in starts], Policy(keep_daily=5))
    kept = [d.start.strftime("%m-%d %H:%M") for d in decisions if d.keep]
    assert kept == ["05-02 23:00", "05-01 11:00", "04-29 11:00", "04-28 11:00", "04-25 23:00"]


def test_keep_oldest_when_count_left():
    # Three days, the oldest with two snapshots; daily 5 has count left at the oldest snapshot.
    snapshots = [snap("2026-05-03 02:00"), snap("2026-05-02 02:00"), snap("2026-05-01 14:00"), snap("2026-05-01 02:00")]
    with local_tz("UTC0"):
        assert table(snapshots, Policy(keep_daily=5)) == [
            ("2026-05-03 02:00", "ok", "keep", "newest complete, daily 1"),
            ("2026-05-02 02:00", "ok", "keep", "daily 2"),
            ("2026-05-01 14:00", "ok", "keep", "daily 3"),
            ("2026-05-01 02:00", "ok", "keep", "oldest daily 4"),
        ]
        # No count left at the oldest snapshot: it goes.
        assert [d.action for d in decide(snapshots, Policy(keep_daily=3))] == ["keep", "keep", "keep", "remove"]
        # Unlimited always has count left.
        assert decide(snapshots, Policy(keep_daily=UNLIMITED))[-1].reasons == ("oldest daily 4",)
        # The oldest failed snapshot is not "the oldest": only complete snapshots count.
        with_failed = [*snapshots, snap("2026-04-30 02:00", "failed")]
        assert table(with_failed, Policy(keep_daily=5))[-2:] == [("2026-05-01 02:00", "ok", "keep", "oldest daily 4"), ("2026-04-30 02:00", "failed", "remove", "failed, superseded")]


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        # UTC: 22:30 and 23:30 are on the 10th, 00:30 on the 11th.
        ("UTC0", ["daily 1", "daily 2", "matches no rule"]),
        # UTC+1: 23:30 is on the 10th, 00:30 and 01:30 on the 11th.
        ("CET-1", ["daily 1", "matches no rule", "daily 2"]),
        # UTC-5: all three on the 10th; daily 2 keeps the oldest (count left).
        ("EST5", ["daily 1", "matches no rule", "oldest daily 2"]),
    ],
)
def test_days_are_local_days(tz, expected):
    snapshots = [snap("2026-03-11 00:30"), snap("2026-03-10 23:30"), snap("2026-03-10 22:30")]
    with local_tz(tz):
        reasons = [d.reasons[-1] for d in decide(snapshots, Policy(keep_daily=2))]
    assert reasons == expected


def test_hours_are_local_hours():
    # India is UTC+05:30: 10:10Z and 10:40Z are 15:40 and 16:10 there, two hours; in UTC one.
    snapshots = [snap("2026-03-10 10:40"), snap("2026-03-10 10:10"), snap("2026-03-10 09:00")]
    with local_tz("UTC0"):
        assert [d.keep for d in decide(snapshots, Policy(keep_hourly=2))] == [True, False, True]
    with local_tz("IST-5:30"):
        assert [d.keep for d in decide(snapshots, Policy(keep_hourly=2))] == [True, True, False]


def test_iso_week_at_a_year_boundary():
    # 2027-01-02 (Sat) is in ISO week 2026-W53 with 2026-12-31 (Thu); 2027-01-04 starts 2027-W01.
    # Weekly counts ISO weeks, yearly counts calendar years: they pick different snapshots.
    snapshots = [snap("2027-01-04 12:00"), snap("2027-01-02 12:00"), snap("2026-12-31 12:00"), snap("2026-12-27 12:00"), snap("2026-12-20 12:00")]
    with local_tz("UTC0"):
        assert table(snapshots, Policy(keep_weekly=3, keep_yearly=3)) == [
            ("2027-01-04 12:00", "ok", "keep", "newest complete, weekly 1, yearly 1"),
            ("2027-01-02 12:00", "ok", "keep", "weekly 2"),
            ("2026-12-31 12:00", "ok", "keep", "yearly 2"),
            ("2026-12-27 12:00", "ok", "keep", "weekly 3"),
            ("2026-12-20 12:00", "ok", "keep", "oldest yearly 3"),
        ]


def test_within_counts_from_newest_complete_snapshot_before_now():
    now = at("2026-06-10 12:00")
    ahead = snap("2026-06-11 12:00")  # a clock that was set a day ahead
    recent = snap("2026-06-10 11:00")
    older = snap("2026-06-08 23:00")  # 1d13h before now: within 2d of `recent`, not of `ahead`
    oldest = snap("2026-06-07 12:00")
    failed = snap("2026-06-10 11:30", "failed")  # newer than `recent`, but not complete
    with local_tz("UTC0"):
        assert table([oldest, older, failed, recent, ahead], Policy(keep_within=parse_duration("2d")), now) == [
            ("2026-06-11 12:00", "ok", "keep", "newest complete, within 2d"),
            ("2026-06-10 11:30", "failed", "remove", "failed, superseded"),
            ("2026-06-10 11:00", "ok", "keep", "within 2d"),
            ("2026-06-08 23:00", "ok", "keep", "within 2d"),
            ("2026-06-07 12:00", "ok", "remove", "matches no rule"),
        ]
        # Every complete snapshot in the future: nothing to measure from, all are kept.
        assert all(d.keep for d in decide([ahead, snap("2026-06-11 13:00")], Policy(keep_within=parse_duration("1h")), now))


def test_within_is_calendar_arithmetic_on_the_local_clock():
    with local_tz("UTC0"):
        # Go's AddDate: 31 March - 1 month is "31 February", carried into March.
        assert Duration(months=1).before(at("2026-03-31 12:00")) == at("2026-03-03 12:00")
        assert Duration(months=1).before(at("2028-03-31 12:00")) == at("2028-03-02 12:00")
        assert Duration(years=1).before(at("2028-02-29 12:00")) == at("2027-03-01 12:00")
        assert Duration(years=1, months=6).before(at("2026-01-15 00:00")) == at("2024-07-15 00:00")
        assert Duration(weeks=2, days=1, hours=3).before(at("2026-01-15 00:00")) == at("2025-12-30 21:00")
        assert Duration(years=9999).before(at("2026-01-15 00:00")) is None
    with local_tz("CET-1CEST,M3.5.0,M10.5.0/3"):
        # Across the switch to summer time (29 March 2026) a day is 23 hours long.
        ref = at("2026-03-30 10:00")  # 12:00 CEST
        assert Duration(days=2).before(ref) == at("2026-03-28 11:00")  # 12:00 CET
        assert Duration(hours=48).before(ref) == at("2026-03-28 10:00")
    # Beyond year 1 every snapshot is within.
    assert all(d.keep for d in decide([snap("2026-01-01 00:00"), snap("1990-01-01 00:00")], Policy(keep_within=Duration(years=9999))))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", Duration(days=30)),
        ("2w", Duration(weeks=2)),
        ("1y6m", Duration(years=1, months=6)),
        ("12h", Duration(hours=12)),
        ("6m1y", Duration(years=1, months=6)),
        (" 1y2m3w4d5h ", Duration(1, 2, 3, 4, 5)),
        ("0d", Duration()),
        ("007d", Duration(days=7)),
    ],
)
def test_parse_duration(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["", "  ", "d", "30", "-1d", "+1d", "1x", "1M", "1D", "1d1d", "1 d", "1d 2h", "1.5d", "\u0663d", "y1"])
def test_parse_duration_refuses(text):
    with pytest.raises(PolicyError, match="duration"):
        parse_duration(text)


def test_duration_round_trips_as_restic_writes_it():
    assert [str(parse_duration(t)) for t in ("30d", "6m1y", "2w", "1y2m3w4d5h", "0h")] == ["30d", "1y6m", "2w", "1y2m3w4d5h", "0d"]


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"keep_last": 0}, {"keep_daily": 0, "keep_weekly": None}, {"keep_within": Duration()}, {"keep_within": parse_duration("0d0h")}],
)
def test_empty_policy_refused(kwargs):
    with pytest.raises(PolicyError, match="empty policy"):
        Policy(**kwargs)


@pytest.mark.parametrize("kwargs", [{"keep_daily": -2}, {"keep_last": True}, {"keep_weekly": 1.5}, {"keep_within": "30d"}])
def test_bad_policy_values_refused(kwargs):
    with pytest.raises(PolicyError):
        Policy(**kwargs)
    with pytest.raises(ValueError):  # PolicyError is a ValueError
        Policy(**kwargs)


def test_counts_and_unlimited():
    assert [parse_count(t) for t in ("0", "7", " 12 ", "unlimited")] == [0, 7, 12, UNLIMITED]
    for bad in ("-1", "x", "", "1.0", "Unlimited"):
        with pytest.raises(PolicyError):
            parse_count(bad)
    assert str(Policy(keep_last=2, keep_daily=UNLIMITED, keep_within=parse_duration("1y6m"))) == "keep the last 2, all daily, all within 1y6m of the newest complete snapshot"
    snapshots = [snap(f"2026-01-{d:02} 02:00") for d in range(1, 29)]
    assert all(d.keep for d in decide(snapshots, Policy(keep_last=UNLIMITED)))


def test_no_complete_snapshot_keeps_failed_and_incomplete():
    snapshots = [snap("2026-01-02 02:00", "failed"), snap("2026-01-01 02:00", "incomplete"), snap("2026-01-03 02:00", "running")]
    assert table(snapshots, Policy(keep_last=1)) == [
        ("2026-01-03 02:00", "running", "keep", "running"),
        ("2026-01-02 02:00", "failed", "keep", "failed, no newer complete"),
        ("2026-01-01 02:00", "incomplete", "keep", "incomplete, no newer complete"),
    ]
    assert decide([], Policy(keep_last=1)) == []


def test_bad_snapshots_refused():
    ok = snap("2026-01-01 00:00")
    with pytest.raises(ValueError, match="no time zone"):
        decide([Snapshot("x", "ok", datetime(2026, 1, 1))], Policy(keep_last=1))
    with pytest.raises(ValueError, match="unknown status"):
        decide([Snapshot("x", "done", ok.start)], Policy(keep_last=1))
    with pytest.raises(ValueError, match="given twice"):
        decide([ok, Snapshot(ok.name, "failed", ok.start + timedelta(hours=1))], Policy(keep_last=1))
    with pytest.raises(ValueError, match="now"):
        decide([ok], Policy(keep_last=1), now=datetime(2026, 1, 1))


# Snapshots for the properties: up to 40, starts spread over three years at random offsets (so
# periods and ties happen), in all four statuses.
_STARTS = st.datetimes(min_value=datetime(2024, 1, 1), max_value=datetime(2026, 12, 31), timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]))
_SNAPSHOT_LISTS = st.lists(st.tuples(_STARTS, st.sampled_from(["ok", "ok", "ok", "failed", "incomplete", "running"])), max_size=40).map(lambda rows: [Snapshot(f"s{i:02}", status, start) for i, (start, status) in enumerate(rows)])
_COUNTS = st.one_of(st.none(), st.integers(min_value=0, max_value=6), st.just(UNLIMITED))
_WITHIN = st.one_of(st.none(), st.builds(Duration, years=st.integers(0, 1), months=st.integers(0, 13), weeks=st.integers(0, 3), days=st.integers(0, 40), hours=st.integers(0, 30)))


@st.composite
def _policies(draw: st.DrawFn) -> Policy:
    kwargs = {name: draw(_COUNTS) for name in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")}
    kwargs["keep_within"] = draw(_WITHIN)
    try:
        return Policy(**kwargs)
    except PolicyError:
        return Policy(**{**kwargs, "keep_daily": draw(st.integers(min_value=1, max_value=6))})


@settings(max_examples=300, deadline=None)
@given(snapshots=_SNAPSHOT_LISTS, policy=_policies(), seed=st.randoms(use_true_random=False))
def test_properties(snapshots, policy, seed):
    now = datetime(2026, 6, 1, tzinfo=UTC)
    decisions = decide(snapshots, policy, now)
    assert sorted(d.name for d in decisions) == sorted(s.name for s in snapshots)
    complete = [d for d in decisions if d.status == "ok"]
    if complete:
        newest = max(complete, key=lambda d: (d.start, d.name))
        assert newest.keep and newest.reasons[0] == "newest complete"
    for d in decisions:
        assert d.reasons
        if d.status == "running":
            assert d.keep and d.reasons == ("running",)
        if d.status in ("failed", "incomplete"):
            assert d.keep == (not any((c.start, c.name) > (d.start, d.name) for c in complete))
    shuffled = list(snapshots)
    seed.shuffle(shuffled)
    assert decide(shuffled, policy, now) == decisions
