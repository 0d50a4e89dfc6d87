"""The retention policy of ``mailbak prune``: which snapshots of a repository to keep, and why.

The semantics are restic's ``forget`` (``internal/data/snapshot_policy.go``), restated for
mailbak's snapshot statuses; docs/REPOSITORY.md ("Prune rules") is the user's version. This
module only decides: it reads no directory and removes nothing.

The algorithm of ``decide``, step by step:

1. **Order.** Every snapshot is ordered newest first by (start time, name): the caller passes
   the manifest's start time, never one read from the directory name; the name only breaks
   ties, so the answer does not depend on the order of the input.
2. **Running** snapshots are kept, reason ``running``, and take no further part.
3. **Complete** snapshots (status ``ok``) are the only ones the rules see. In order, newest
   first, each snapshot is offered to every rule:

   - ``--keep-within D`` keeps it when its start is after (reference - D), where the reference
     is the newest complete snapshot that started before ``now`` (a clock that was set ahead
     must not push the window into the future); with no such snapshot every complete snapshot
     is within. D is subtracted from the reference's local wall clock like Go's
     ``time.AddDate``: years and months first, an overflowing day carried into the next month
     (31 March - 1m is 3 March), then days (a week is 7 days), then hours as elapsed time.
     Reason ``within D``.
   - ``--keep-X N`` (last, hourly, daily, weekly, monthly, yearly) keeps it when its period
     (the snapshot itself; hour, day, ISO year and week, month or year of its start in the
     local time zone, so ``TZ`` is honoured) differs from the period of the last snapshot that
     rule kept, and the rule has kept fewer than N (N = -1: unlimited). Reason ``daily 3``
     for the third snapshot the daily rule keeps. The rules are ORed and each counts on its
     own: one snapshot can be ``daily 1`` and ``weekly 1``.
   - **Oldest.** The oldest complete snapshot is kept by every rule that still has count left,
     even when its period already has a kept snapshot: an incomplete history then reaches as
     far back as it can. Reason ``oldest monthly 4``. (restic does the same and says so.)

   The newest complete snapshot is always kept, reason ``newest complete`` first: it is the
   reference of the next backup. Any other complete snapshot no rule keeps is removed, reason
   ``matches no rule``.
4. **Failed or incomplete** snapshots are removed once a complete snapshot newer than them
   exists (reason ``failed, superseded``), kept otherwise (``failed, no newer complete``), as
   they then hold the most recent copy of some data.

What it does not do: read snapshots or their manifests, take the repository lock, protect the
reference of a backup being written (the lock does that), or group snapshots (a repository is
one store's history). A wall-clock time that a daylight-saving switch skips or repeats is
taken as Python takes it (``fold=0``), as restic leaves it to Go. Of restic's options it leaves out ``--keep-tag`` and the
``--keep-within-{hourly,...}`` family; it adds the unit ``w`` (7 days) to durations.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta
from typing import NamedTuple, Protocol

from mailbak.status import Status

#: Snapshot statuses, as ``mailbak snapshots`` shows them.
STATUSES = (Status.OK, Status.FAILED, Status.INCOMPLETE, Status.RUNNING)

#: The count meaning "no limit" (restic's ``unlimited``, which it stores as -1).
UNLIMITED = -1

#: Duration units in the order they are written: years, months, weeks, days, hours.
DURATION_UNITS = "ymwdh"


class PolicyError(ValueError):
    """A policy or one of its values is unusable; the message says which (exit status 2)."""


@dataclass(frozen=True)
class Duration:
    """A calendar duration as restic writes it (``1y6m``, ``2w``, ``12h``); ``m`` is months."""

    years: int = 0
    months: int = 0
    weeks: int = 0
    days: int = 0
    hours: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            n = getattr(self, f.name)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise PolicyError(f"duration: {f.name} {n!r} is not a number >= 0")

    def __str__(self) -> str:
        text = "".join(f"{getattr(self, f.name)}{unit}" for f, unit in zip(fields(self), DURATION_UNITS, strict=True) if getattr(self, f.name))
        return text or "0d"

    def is_zero(self) -> bool:
        """True when every part is zero: such a ``--keep-within`` keeps nothing (restic: unset)."""
        return not (self.years or self.months or self.weeks or self.days or self.hours)

    def before(self, t: datetime) -> datetime | None:
        """The instant this duration before ``t``, computed on the local wall clock (see the
        module doc); None when that lies before year 1, so every time is after it."""
        wall = t.astimezone().replace(tzinfo=None)
        month0 = wall.month - 1 - self.months
        try:
            first = date(wall.year - self.years + month0 // 12, month0 % 12 + 1, 1)
            day = first + timedelta(days=wall.day - 1 - self.days - 7 * self.weeks)
            return datetime.combine(day, wall.time()).astimezone() - timedelta(hours=self.hours)
        except (OverflowError, ValueError):
            return None


_DURATION_PART = re.compile(r"([0-9]+)([a-z])", re.ASCII)


def parse_duration(text: str) -> Duration:
    """Parses ``30d``, ``2w``, ``1y6m``, ``12h``: numbers each followed by a unit of
    DURATION_UNITS, each unit at most once, no sign, no spaces inside. Raises PolicyError."""
    s = text.strip()
    parts: dict[str, int] = {}
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None:
            raise PolicyError(f"duration {text!r}: expected a number and a unit (y, m, w, d or h) at {s[pos:]!r}, e.g. 30d, 2w, 1y6m")
        unit = m.group(2)
        if unit not in DURATION_UNITS:
            raise PolicyError(f"duration {text!r}: unknown unit {unit!r} (y years, m months, w weeks, d days, h hours)")
        if unit in parts:
            raise PolicyError(f"duration {text!r}: unit {unit!r} given twice")
        parts[unit] = int(m.group(1))
        pos = m.end()
    if not parts:
        raise PolicyError("duration is empty: give e.g. 30d, 2w, 1y6m")
    return Duration(**{f.name: parts.get(unit, 0) for f, unit in zip(fields(Duration), DURATION_UNITS, strict=True)})


def parse_count(text: str) -> int:
    """Parses a ``--keep-X`` count: a number >= 0, or ``unlimited`` (UNLIMITED). Raises PolicyError."""
    if text.strip() == "unlimited":
        return UNLIMITED
    if re.fullmatch(r"[0-9]+", text.strip(), re.ASCII) is None:
        raise PolicyError(f"count {text!r}: expected a number >= 0 or 'unlimited'")
    return int(text)


class CountedRule(NamedTuple):
    """One ``--keep-X N`` rule."""

    #: The Policy field, which is also the keyword of the API and of the CLI's option
    #: (``keep_daily``: ``--keep-daily``, ``mailbak.prune(keep_daily=...)``).
    field: str
    #: The word of its reasons (``daily 3``), which names the option too.
    word: str
    #: What it keeps, for the option's help.
    keeps: str
    #: The period of a snapshot given its local start time and its rank among complete
    #: snapshots (0 = newest).
    period: Callable[[datetime, int], object]

    @property
    def option(self) -> str:
        """The command line's option: ``--keep-daily``."""
        return "--" + self.field.replace("_", "-")


#: The counted rules, in the order the options, the reasons and ``restic forget`` list them:
#: the one list the command line's options (``cli.keep_options``), the API's keywords
#: (:data:`KEEP_FIELDS`) and the off-site forget arguments (``offsite.forget_args``) come from.
COUNTED_RULES: tuple[CountedRule, ...] = (
    CountedRule("keep_last", "last", "the N newest complete snapshots", lambda t, rank: rank),
    CountedRule("keep_hourly", "hourly", "the newest snapshot of each of the last N hours that have one", lambda t, rank: (t.year, t.month, t.day, t.hour)),
    CountedRule("keep_daily", "daily", "the newest snapshot of each of the last N days that have one", lambda t, rank: (t.year, t.month, t.day)),
    CountedRule("keep_weekly", "weekly", "the newest snapshot of each of the last N ISO weeks that have one", lambda t, rank: t.isocalendar()[:2]),
    CountedRule("keep_monthly", "monthly", "the newest snapshot of each of the last N months that have one", lambda t, rank: (t.year, t.month)),
    CountedRule("keep_yearly", "yearly", "the newest snapshot of each of the last N years that have one", lambda t, rank: t.year),
)

#: The duration rule: its Policy field (and keyword) and what it keeps.
KEEP_WITHIN, KEEP_WITHIN_KEEPS = "keep_within", "every complete snapshot within DURATION of the newest (e.g. 30d, 2w, 1y6m; m is months)"

#: Every keep rule's keyword, in order: the ``keep_*`` keywords of ``mailbak.prune`` and
#: ``mailbak.api.offsite_prune``.
KEEP_FIELDS = (*(r.field for r in COUNTED_RULES), KEEP_WITHIN)

#: What the API takes for a counted rule (docs/API.md): a number >= 0, -1 or ``"unlimited"``
#: (UNLIMITED), or a number's text; None (or absent) is no rule.
KeepCount = int | str


@dataclass(frozen=True)
class Policy:
    """What ``prune`` keeps. A count of None or 0 is no rule, UNLIMITED keeps one snapshot per
    period forever. Construction refuses negative counts and an empty policy (PolicyError)."""

    keep_last: int | None = None
    keep_hourly: int | None = None
    keep_daily: int | None = None
    keep_weekly: int | None = None
    keep_monthly: int | None = None
    keep_yearly: int | None = None
    keep_within: Duration | None = None

    def __post_init__(self) -> None:
        for name in (r.field for r in COUNTED_RULES):
            n = getattr(self, name)
            if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < UNLIMITED):
                raise PolicyError(f"--{name.replace('_', '-')} {n!r}: expected a number >= 0 or unlimited")
        if self.keep_within is not None and not isinstance(self.keep_within, Duration):
            raise PolicyError(f"--keep-within {self.keep_within!r}: expected a duration such as 30d")
        if not self.counts() and self.within() is None:
            raise PolicyError(
                "empty policy: prune would remove every snapshot but the newest; give at least one of --keep-last, "
                "--keep-hourly, --keep-daily, --keep-weekly, --keep-monthly, --keep-yearly (a number > 0 or unlimited) "
                "or --keep-within (a duration such as 30d)"
            )

    def counts(self) -> list[tuple[str, int]]:
        """The counted rules in force: (reason word, count), in COUNTED_RULES order."""
        return [(r.word, n) for r in COUNTED_RULES if (n := getattr(self, r.field))]

    def within(self) -> Duration | None:
        """The ``--keep-within`` duration, None when absent or zero."""
        return None if self.keep_within is None or self.keep_within.is_zero() else self.keep_within

    def __str__(self) -> str:
        parts = [f"{'all' if n == UNLIMITED else n} {word}" if word != "last" else "all" if n == UNLIMITED else f"the last {n}" for word, n in self.counts()]
        if (d := self.within()) is not None:
            parts.append(f"all within {d} of the newest complete snapshot")
        return "keep " + ", ".join(parts)


class SnapshotFacts(Protocol):
    """What ``decide`` needs of a snapshot."""

    @property
    def name(self) -> str:
        """The snapshot's directory name."""

    @property
    def status(self) -> str:
        """Its status (one of STATUSES)."""

    @property
    def start(self) -> datetime:
        """Its start time (time-zone aware)."""


@dataclass(frozen=True)
class Snapshot:
    """A snapshot as ``decide`` sees it: directory name, status (one of STATUSES), and the start
    time from its manifest (time-zone aware)."""

    name: str
    status: str
    start: datetime


@dataclass(frozen=True)
class Decision:
    """The fate of one snapshot: kept or removed, and why (never empty)."""

    name: str
    status: str
    start: datetime
    keep: bool
    reasons: tuple[str, ...]

    @property
    def action(self) -> str:
        """``keep`` or ``remove``, as the prune output and JSON name it."""
        return "keep" if self.keep else "remove"


def decide(snapshots: Iterable[SnapshotFacts], policy: Policy, now: datetime | None = None) -> list[Decision]:
    """Applies ``policy`` to ``snapshots`` (see the module doc): one Decision per snapshot,
    newest first. ``now`` (aware; default the current time) only bounds the ``--keep-within``
    reference. Raises ValueError for a naive time, an unknown status or a repeated name."""
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is None:
        raise ValueError("now: a time-zone aware time is required")
    ordered = sorted(snapshots, key=lambda s: (s.start, s.name), reverse=True)
    seen: set[str] = set()
    for s in ordered:
        if s.start.tzinfo is None:
            raise ValueError(f"snapshot {s.name}: start time {s.start} has no time zone")
        if s.status not in STATUSES:
            raise ValueError(f"snapshot {s.name}: unknown status {s.status!r} (expected one of {', '.join(STATUSES)})")
        if s.name in seen:
            raise ValueError(f"snapshot {s.name}: given twice")
        seen.add(s.name)

    complete = [s for s in ordered if s.status == Status.OK]
    reasons = dict(zip((s.name for s in complete), _complete_reasons(complete, policy, now), strict=True))
    newest = complete[0] if complete else None
    decisions = []
    for s in ordered:
        why: tuple[str, ...]
        if s.status == Status.RUNNING:
            keep, why = True, ("running",)
        elif s.status == Status.OK:
            keep, why = bool(reasons[s.name]), reasons[s.name] or ("matches no rule",)
        elif newest is not None and (newest.start, newest.name) > (s.start, s.name):
            keep, why = False, (f"{s.status}, superseded",)
        else:
            keep, why = True, (f"{s.status}, no newer complete",)
        decisions.append(Decision(s.name, s.status, s.start, keep, why))
    return decisions


def _complete_reasons(complete: list[SnapshotFacts], policy: Policy, now: datetime) -> list[tuple[str, ...]]:
    """Step 3 of the module doc over the complete snapshots, newest first: each one's reasons to
    be kept (empty: remove)."""
    cutoff: datetime | None = None
    within = policy.within()
    if within is not None:
        reference = next((s.start for s in complete if s.start < now), None)
        cutoff = None if reference is None else within.before(reference)
    rules = [(r.word, n, r.period) for r in COUNTED_RULES if (n := getattr(policy, r.field))]
    last_period: list[object] = [None] * len(rules)
    kept = [0] * len(rules)
    oldest = len(complete) - 1
    out = []
    for rank, s in enumerate(complete):
        why = ["newest complete"] if rank == 0 else []
        if within is not None and (cutoff is None or s.start > cutoff):
            why.append(f"within {within}")
        local = s.start.astimezone()
        for i, (word, n, period) in enumerate(rules):
            if n != UNLIMITED and kept[i] >= n:
                continue
            p = period(local, rank)
            if p != last_period[i] or rank == oldest:
                kept[i] += 1
                why.append(f"{'oldest ' if p == last_period[i] else ''}{word} {kept[i]}")
                last_period[i] = p
        out.append(tuple(why))
    return out
