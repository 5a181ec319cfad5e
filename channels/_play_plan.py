"""When a loudspeaker plays a notice: repeats over days, quiet hours, emergencies first.

Rules
    emergency   once, now, ignoring quiet hours (it pre-empts whatever is playing)
    important   now, then at the village's daily times (default 07:00, 12:00, 18:30)
                for ``days`` days (default 2)
    routine     now, then at the daily times of the first day only
    quiet hours routine and important plays never fall inside them (default 21:30-06:30):
                a play inside is moved to the end of the quiet hours ("move") or dropped
                ("skip"); plays that collapse onto one time are played once
    expiry      no play at or after the notice's expiry
All times are computed in the county's time zone and sent as UTC seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Literal

__all__ = [
    "DEFAULT_TIMES",
    "PlannedPlay",
    "PlayPlan",
    "in_quiet_hours",
    "plan_plays",
    "seconds_until_quiet",
]

Priority = Literal["routine", "important", "emergency"]
QuietPolicy = Literal["move", "skip"]

DEFAULT_TIMES = (time(7, 0), time(12, 0), time(18, 30))
"""When villages usually broadcast: morning, noon and evening, when people are home."""


@dataclass(frozen=True)
class PlannedPlay:
    at: datetime
    moved_from: datetime | None = None
    """Set when quiet hours pushed this play later."""


@dataclass
class PlayPlan:
    plays: list[PlannedPlay] = field(default_factory=list)
    skipped: list[datetime] = field(default_factory=list)
    """Plays dropped because they fell in quiet hours (policy "skip") or after expiry."""

    def notes(self) -> list[str]:
        moved = [p for p in self.plays if p.moved_from is not None]
        out = []
        if moved:
            out.append(f"{len(moved)} play(s) moved out of quiet hours")
        if self.skipped:
            out.append(f"{len(self.skipped)} play(s) skipped")
        return out


def _parse(hhmm: str) -> time:
    hours, minutes = hhmm.split(":")
    return time(int(hours), int(minutes))


def in_quiet_hours(moment: datetime, quiet: tuple[str, str] | None, tz: tzinfo) -> datetime | None:
    """If ``moment`` is inside the quiet hours, the end of them; else None."""
    if quiet is None:
        return None
    start, end = _parse(quiet[0]), _parse(quiet[1])
    local = moment.astimezone(tz)
    t = local.time()
    if start <= end:
        inside = start <= t < end
        end_day = local.date()
    else:  # spans midnight, e.g. 21:30-06:30
        inside = t >= start or t < end
        end_day = local.date() + timedelta(days=1) if t >= start else local.date()
    if not inside:
        return None
    return datetime.combine(end_day, end, tzinfo=tz)


def seconds_until_quiet(
    moment: datetime, quiet: tuple[str, str] | None, tz: tzinfo
) -> float | None:
    """Seconds from ``moment`` to the next start of the quiet hours (None without any)."""
    if quiet is None:
        return None
    start = _parse(quiet[0])
    local = moment.astimezone(tz)
    begin = datetime.combine(local.date(), start, tzinfo=tz)
    if begin <= local:
        begin = datetime.combine(local.date() + timedelta(days=1), start, tzinfo=tz)
    return (begin - local).total_seconds()


def plan_plays(
    *,
    priority: Priority,
    now: datetime,
    tz: tzinfo,
    quiet: tuple[str, str] | None,
    expires_at: datetime | None = None,
    times: tuple[time, ...] = DEFAULT_TIMES,
    days: int = 2,
    policy: QuietPolicy = "move",
) -> PlayPlan:
    plan = PlayPlan()
    if priority == "emergency":
        plan.plays.append(PlannedPlay(now))
        return plan
    local_now = now.astimezone(tz)
    wanted: list[datetime] = [now]
    span = days if priority == "important" else 1
    for offset in range(span):
        day: date = local_now.date() + timedelta(days=offset)
        for t in times:
            moment = datetime.combine(day, t, tzinfo=tz)
            if moment > local_now:
                wanted.append(moment)
    seen: set[datetime] = set()
    for moment in sorted(wanted):
        if expires_at is not None and moment >= expires_at:
            plan.skipped.append(moment)
            continue
        quiet_end = in_quiet_hours(moment, quiet, tz)
        play = PlannedPlay(moment)
        if quiet_end is not None:
            if policy == "skip" or (expires_at is not None and quiet_end >= expires_at):
                plan.skipped.append(moment)
                continue
            play = PlannedPlay(quiet_end, moved_from=moment)
        key = play.at.replace(second=0, microsecond=0)
        if key in seen:
            continue  # e.g. "now" at 23:00 and 07:00 tomorrow... both land on 06:30
        seen.add(key)
        plan.plays.append(play)
    plan.plays.sort(key=lambda p: p.at)
    return plan
