"""Periods, dates and times as secretaries write them (2026-11, 2026年第四季度, 11月5日 9:00)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Literal

__all__ = [
    "Period",
    "chinese_date",
    "chinese_datetime",
    "parse_date",
    "parse_datetime",
    "parse_period",
]

_CN_DIGITS = {"一": 1, "二": 2, "三": 3, "四": 4, "1": 1, "2": 2, "3": 3, "4": 4}
_QUARTER_NAMES = "一二三四"
_WEEKDAYS = "一二三四五六日"


@dataclass(frozen=True)
class Period:
    """A reporting period: [start, end) in local dates, and how it is written on a notice."""

    kind: Literal["month", "quarter", "half", "year"]
    start: date
    end: date
    label: str

    def contains(self, day: date) -> bool:
        return self.start <= day < self.end


def _month_after(year: int, month: int) -> date:
    return date(year + month // 12, month % 12 + 1, 1)


def _clean(text: str) -> str:
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def parse_period(text: str) -> Period | None:
    """``2026-11``, ``2026年11月``, ``2026年第四季度``, ``2026Q4``, ``2026年上半年``, ``2026年``."""
    s = _clean(text)
    m = re.fullmatch(r"(\d{4})(?:[-/.]|年)(\d{1,2})月?(?:份)?", s)
    if m:
        year, month = int(m[1]), int(m[2])
        if 1 <= month <= 12:
            return Period(
                "month", date(year, month, 1), _month_after(year, month), f"{year}年{month}月"
            )
        return None
    m = re.fullmatch(r"(\d{4})(?:年第?([一二三四1-4])季度?|-?[Qq]([1-4]))", s)
    if m:
        year, q = int(m[1]), _CN_DIGITS[m[2] or m[3]]
        first = 3 * (q - 1) + 1
        label = f"{year}年第{_QUARTER_NAMES[q - 1]}季度"
        return Period("quarter", date(year, first, 1), _month_after(year, first + 2), label)
    m = re.fullmatch(r"(\d{4})年([上下])半年", s)
    if m:
        year, first = int(m[1]), (1 if m[2] == "上" else 7)
        return Period("half", date(year, first, 1), _month_after(year, first + 5), s)
    m = re.fullmatch(r"(\d{4})年度?", s)
    if m:
        year = int(m[1])
        return Period("year", date(year, 1, 1), date(year + 1, 1, 1), f"{year}年度")
    return None


def parse_date(text: str, *, default_year: int | None = None) -> date | None:
    """``2026-11-05``, ``2026/11/5``, ``2026.11.5``, ``2026年11月5日``, ``11月5日``."""
    s = _clean(text)
    m = re.fullmatch(r"(\d{4})[-/.年](\d{1,2})[-/.月](\d{1,2})日?(?:00:00(?::00)?)?", s)
    if m:
        y, mo, d = int(m[1]), int(m[2]), int(m[3])
    else:
        m = re.fullmatch(r"(\d{1,2})[月/-](\d{1,2})日?", s)
        if not m or default_year is None:
            return None
        y, mo, d = default_year, int(m[1]), int(m[2])
    try:
        return date(y, mo, d)
    except ValueError:
        return None


_TIME = re.compile(r"(上午|下午|晚上|中午)?(\d{1,2})(?:[:：点时](\d{1,2})?分?)(半)?")


def parse_datetime(text: str, *, default_year: int | None = None) -> datetime | None:
    """A date and a time of day: ``2026-12-05 09:00``, ``2026年12月5日上午9点``, ``12月5日14:30``.

    Naive: the county's local time, like every time a secretary types."""
    s = _clean(text).replace("T", "")
    m = re.fullmatch(
        r"(.+?(?:日|\d))(?:[(（]?(?:星期|周)[一二三四五六日天][)）]?)?"
        r"((?:上午|下午|晚上|中午)?\d{1,2}(?:[:：]\d{2}(?::\d{2})?|[点时](?:\d{1,2}分?|半)?))",
        s,
    )
    if not m:
        return None
    day = parse_date(m[1], default_year=default_year)
    if day is None:
        return None
    t = re.fullmatch(
        r"(上午|下午|晚上|中午)?(\d{1,2})(?:[:：](\d{2})(?::\d{2})?|[点时](?:(\d{1,2})分?|(半))?)",
        m[2],
    )
    if t is None:
        return None
    hour = int(t[2])
    minute = int(t[3] or t[4] or 0) + (30 if t[5] else 0)
    if t[1] in ("下午", "晚上") and hour < 12:
        hour += 12
    if t[1] == "中午" and hour < 3:
        hour += 12
    if not (0 <= hour < 24 and 0 <= minute < 60):
        return None
    return datetime.combine(day, time(hour, minute))


def chinese_date(day: date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"


def chinese_datetime(when: datetime) -> str:
    """``2026年12月5日（星期六）上午9:00``: how a notice board writes a meeting time."""
    if when.hour < 12:
        part, hour = "上午", when.hour
    else:
        part, hour = "下午", when.hour - 12 if when.hour > 12 else 12
    return (
        f"{chinese_date(when.date())}（星期{_WEEKDAYS[when.weekday()]}）"
        f"{part}{hour}:{when.minute:02d}"
    )
