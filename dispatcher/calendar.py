"""The disclosure calendar: which villages are due or overdue with which required disclosure.

Each category with a cadence (devices.yaml ``calendar:``, on top of
``content_queue.registry.DEFAULT_CALENDAR``) opens a window at the start of certain months
(every month, each quarter, or the months listed); a notice of that category must reach
the village by ``due_day`` of the window's first month. What counts is an active notice
(not withdrawn; a correction counts from when it went out) that at least one of the
village's endpoints accepted (sent or delivered) on or after the window opened.

``disclosure_status`` is what ``villagecast calendar`` prints and what the township
dashboard shows.
"""

from __future__ import annotations

import calendar as _cal
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from content_queue.disclosures import published_disclosures
from content_queue.i18n import Text, tr
from content_queue.models import CATEGORY_LABELS, Category, local_tz
from content_queue.registry import Cadence, Registry
from content_queue.store import Store, utcnow

__all__ = ["STATE_LABELS", "CalendarStatus", "disclosure_status", "rule_text", "window_for"]

State = Literal["done", "due", "overdue"]
STATE_LABELS: dict[str, Text] = {
    "done": tr("已公开", "done"),
    "due": tr("待公开", "due"),
    "overdue": tr("逾期", "overdue"),
}
_HISTORY = timedelta(days=730)
"""How far back the last disclosure of a category is looked for."""


@dataclass(frozen=True)
class CalendarStatus:
    """One village and one required category, for the window open now."""

    village_id: str
    village_name: str
    township_id: str
    township_name: str
    category: str
    rule: Cadence
    state: State
    window_start: date
    """The county-local date the current window opened."""
    due: date
    """The last county-local day on which the disclosure is on time."""
    days: int
    """Days left (due), days late (overdue), 0 when done."""
    notice_id: int | None = None
    """The notice that met this window."""
    published_at: datetime | None = None
    last_notice_id: int | None = None
    """The latest notice of this category ever (before this window, if none in it)."""
    last_published_at: datetime | None = None

    @property
    def category_label(self) -> Text:
        label = CATEGORY_LABELS.get(Category(self.category))
        return label if label is not None else tr(self.category, self.category)

    def state_text(self) -> Text:
        if self.state == "done":
            return STATE_LABELS["done"]
        if self.state == "overdue":
            return tr("逾期 {n} 天", "{n} day(s) overdue", n=self.days)
        if self.days == 0:
            return tr("今天到期", "due today")
        return tr("待公开（还剩 {n} 天）", "due in {n} day(s)", n=self.days)

    def to_json(self) -> dict[str, Any]:
        return {
            "village": self.village_id,
            "village_name": self.village_name,
            "township": self.township_id,
            "township_name": self.township_name,
            "category": self.category,
            "rule": self.rule.model_dump(exclude_none=True),
            "rule_text": rule_text(self.rule).render(),
            "state": self.state,
            "window_start": self.window_start.isoformat(),
            "due": self.due.isoformat(),
            "days": self.days,
            "notice": self.notice_id,
            "published_at": self.published_at.isoformat() if self.published_at else None,
            "last_notice": self.last_notice_id,
            "last_published_at": (
                self.last_published_at.isoformat() if self.last_published_at else None
            ),
        }


def rule_text(rule: Cadence) -> Text:
    """A cadence in words: 每月 10 日前, 每季度首月 15 日前, 每年 3、9 月 20 日前."""
    day = (
        tr("月底", "the end of the month")
        if rule.due_day >= 31
        else tr(" {d} 日", "day {d}", d=rule.due_day)
    )
    if rule.months is not None:
        months = "、".join(str(m) for m in rule.window_months())
        return tr("每年 {m} 月{d}前", "in month(s) {m}, by {d}", m=months, d=day)
    forms = {
        "month": tr("每月{d}前", "monthly, by {d}", d=day),
        "quarter": tr("每季度首月{d}前", "quarterly (1st month), by {d}", d=day),
        "half_year": tr("每年 1、7 月{d}前", "half-yearly (Jan, Jul), by {d}", d=day),
        "year": tr("每年 1 月{d}前", "yearly (Jan), by {d}", d=day),
    }
    return forms[rule.every or "month"]


def window_for(rule: Cadence, today: date) -> tuple[date, date]:
    """(window start, due date) of the window open on ``today`` (county-local dates)."""
    months = rule.window_months()
    year, month = today.year, today.month
    for _ in range(13):  # a window opens at least once a year
        if month in months:
            break
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    start = date(year, month, 1)
    last = _cal.monthrange(year, month)[1]
    return start, date(year, month, min(rule.due_day, last))


def _utc_midnight(day: date) -> datetime:
    return datetime.combine(day, time(0, 0), tzinfo=local_tz()).astimezone(UTC)


def disclosure_status(
    store: Store,
    registry: Registry,
    now: datetime | None = None,
    *,
    villages: Iterable[str] | None = None,
) -> list[CalendarStatus]:
    """Every (village, required category) for the window open at ``now``: overdue first
    (most late first), then due (soonest first), then done."""
    now = now or utcnow()
    today = now.astimezone(local_tz()).date()
    wanted = list(villages) if villages is not None else list(registry.villages)
    rules = {vid: registry.calendar_for(vid) for vid in wanted if vid in registry.villages}
    categories = sorted({c for r in rules.values() for c in r})
    found = published_disclosures(store, categories=categories, since=now - _HISTORY)
    history: dict[tuple[str, str], list[tuple[datetime, int]]] = {}
    for d in found:
        if d.published_at <= now:
            history.setdefault((d.village_id, d.category), []).append((d.published_at, d.notice_id))
    out: list[CalendarStatus] = []
    for vid, village_rules in rules.items():
        tid = registry.village_township[vid]
        for category, rule in sorted(village_rules.items()):
            start, due = window_for(rule, today)
            opened = _utc_midnight(start)
            past = history.get((vid, category), [])
            inside = [p for p in past if p[0] >= opened]
            last = past[-1] if past else None
            if inside:
                state: State = "done"
                days = 0
            elif today > due:
                state, days = "overdue", (today - due).days
            else:
                state, days = "due", (due - today).days
            out.append(
                CalendarStatus(
                    village_id=vid,
                    village_name=registry.village_name(vid),
                    township_id=tid,
                    township_name=registry.townships[tid].name,
                    category=category,
                    rule=rule,
                    state=state,
                    window_start=start,
                    due=due,
                    days=days,
                    notice_id=inside[0][1] if inside else None,
                    published_at=inside[0][0] if inside else None,
                    last_notice_id=last[1] if last else None,
                    last_published_at=last[0] if last else None,
                )
            )
    order = {"overdue": 0, "due": 1, "done": 2}
    return sorted(
        out,
        key=lambda s: (
            order[s.state],
            -s.days if s.state == "overdue" else s.days,
            s.township_id,
            s.village_id,
            s.category,
        ),
    )
