"""Play plans: daily repeats, quiet hours moved or skipped, emergencies at once."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from channels._play_plan import in_quiet_hours, plan_plays

TZ = ZoneInfo("Asia/Shanghai")
QUIET = ("21:30", "06:30")


def at(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 12, day, hh, mm, tzinfo=TZ)


def local_times(plan) -> list[str]:  # type: ignore[no-untyped-def]
    return [p.at.astimezone(TZ).strftime("%d %H:%M") for p in plan.plays]


@pytest.mark.parametrize(
    ("moment", "inside"),
    [
        (at(1, 21, 29), False),
        (at(1, 21, 30), True),
        (at(1, 23), True),
        (at(2, 3), True),
        (at(2, 6, 29), True),
        (at(2, 6, 30), False),
        (at(2, 12), False),
    ],
)
def test_quiet_hours_span_midnight(moment: datetime, inside: bool) -> None:
    assert (in_quiet_hours(moment, QUIET, TZ) is not None) is inside


def test_important_repeats_at_the_daily_times_for_two_days() -> None:
    plan = plan_plays(priority="important", now=at(1, 9), tz=TZ, quiet=QUIET)
    assert local_times(plan) == [
        "01 09:00",
        "01 12:00",
        "01 18:30",
        "02 07:00",
        "02 12:00",
        "02 18:30",
    ]


def test_routine_plays_now_and_the_rest_of_today() -> None:
    plan = plan_plays(priority="routine", now=at(1, 13), tz=TZ, quiet=QUIET)
    assert local_times(plan) == ["01 13:00", "01 18:30"]


def test_a_routine_notice_queued_at_night_waits_for_the_morning() -> None:
    plan = plan_plays(priority="routine", now=at(1, 23), tz=TZ, quiet=QUIET)
    assert local_times(plan) == ["02 06:30"]
    assert plan.plays[0].moved_from == at(1, 23)


def test_skip_policy_drops_plays_inside_quiet_hours() -> None:
    plan = plan_plays(priority="routine", now=at(1, 23), tz=TZ, quiet=QUIET, policy="skip")
    assert plan.plays == [] and plan.skipped == [at(1, 23)]


def test_emergency_ignores_quiet_hours() -> None:
    plan = plan_plays(priority="emergency", now=at(2, 2), tz=TZ, quiet=QUIET)
    assert local_times(plan) == ["02 02:00"]


def test_nothing_plays_after_expiry() -> None:
    plan = plan_plays(priority="important", now=at(1, 9), tz=TZ, quiet=QUIET, expires_at=at(1, 15))
    assert local_times(plan) == ["01 09:00", "01 12:00"]
    assert len(plan.skipped) == 4


def test_early_morning_times_inside_quiet_hours_collapse_to_one_play() -> None:
    early = (datetime.min.time().replace(hour=5), datetime.min.time().replace(hour=6))
    plan = plan_plays(priority="routine", now=at(1, 4), tz=TZ, quiet=QUIET, times=early)
    assert local_times(plan) == ["01 06:30"]


def test_no_quiet_hours_configured() -> None:
    plan = plan_plays(priority="routine", now=at(1, 23), tz=TZ, quiet=None)
    assert local_times(plan) == ["01 23:00"]
    assert plan.plays[0].at - at(1, 23) == timedelta(0)
