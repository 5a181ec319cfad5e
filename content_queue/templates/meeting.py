"""会议通知: who meets when and where, about what; it expires when the meeting is over."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import ClassVar

from content_queue.i18n import tr
from content_queue.models import Category, Priority
from content_queue.templates._base import (
    Filled,
    Problems,
    Spec,
    Template,
    TemplateData,
    issuer_of,
    title_of,
)
from content_queue.templates._dates import chinese_date, chinese_datetime, parse_datetime

__all__ = ["Meeting"]

_NUMERALS = "一二三四五六七八九十"
DEFAULT_LENGTH = timedelta(hours=3)
"""A meeting without an end time is taken to last three hours (then boards drop it)."""


class Meeting(Template):
    name: ClassVar[str] = "meeting"
    label = tr("会议通知", "Meeting notice")
    summary = tr(
        "会议名称、时间、地点、参会人员和议题；会议结束后自动失效，不再在屏上显示",
        "name, time, place, who attends and the agenda; expires when the meeting ends",
    )
    category = Category.MEETING
    priority = Priority.IMPORTANT

    NAME = Spec(
        "name",
        "会议名称",
        tr("会议名称", "meeting name"),
        required=True,
        example="村民代表会议",
        aliases=("会议", "名称"),
    )
    WHEN = Spec(
        "when",
        "时间",
        tr("开始时间，如 2026-12-05 09:00 或 12月5日上午9点", "start, e.g. 2026-12-05 09:00"),
        required=True,
        kind="datetime",
        example="2026-12-05 09:00",
        aliases=("会议时间", "开始时间"),
    )
    END = Spec(
        "end",
        "结束时间",
        tr(
            "结束时间（可选，默认开始后 3 小时）", "end (optional; default 3 hours after the start)"
        ),
        kind="datetime",
        aliases=("散会时间",),
    )
    WHERE = Spec(
        "where",
        "地点",
        tr("会议地点", "place"),
        required=True,
        example="村委会会议室",
        aliases=("会议地点",),
    )
    WHO = Spec(
        "who",
        "参会人员",
        tr("参会人员", "who attends"),
        required=True,
        example="全体村民代表、村“两委”成员",
        aliases=("参加人员", "出席人员", "参会对象"),
    )
    AGENDA = Spec(
        "agenda",
        "议题",
        tr("议题，多个用；或换行分开", "agenda items, separated by ；"),
        example="审议2027年村级财务预算；讨论村道硬化项目",
        aliases=("会议议题", "议程"),
    )
    CONVENER = Spec(
        "convener",
        "召集单位",
        tr("落款（默认本村村民委员会）", "signed by (default the village committee)"),
        aliases=("召集人", "落款", "发文单位"),
    )
    NOTES = Spec(
        "notes",
        "注意事项",
        tr("注意事项（可选）", "notes (optional)"),
        example="因故不能参加的，请提前向村委会请假。",
        aliases=("要求", "其他"),
    )
    fields = (NAME, WHEN, END, WHERE, WHO, AGENDA, CONVENER, NOTES)

    def fill(self, data: TemplateData, *, place: str, now: datetime) -> Filled:
        p = Problems(data)
        name = p.field(self.NAME)
        where = p.field(self.WHERE)
        who = p.field(self.WHO)
        start = self._time(p, self.WHEN, now)
        end = self._time(p, self.END, now) if data.fields.get("end") else None
        if start is not None and start <= now.replace(tzinfo=None):
            p.add(
                data.field_where("when", self.WHEN.label),
                tr(
                    "会议时间 {t} 已经过去了",
                    "the meeting time {t} has passed",
                    t=start.strftime("%Y-%m-%d %H:%M"),
                ),
            )
        if start is not None and end is not None and end <= start:
            p.add(
                data.field_where("end", self.END.label),
                tr("结束时间必须晚于开始时间", "the end must be after the start"),
            )
        p.check(self)
        assert start is not None

        agenda = [
            a.strip() for a in re.split(r"[；;\n]+", data.fields.get("agenda", "")) if a.strip()
        ]
        convener = data.fields.get("convener", "").strip() or issuer_of(place)
        body = [f"{who}：", f"定于{chinese_datetime(start)}在{where}召开{name}，请准时参加。"]
        if agenda:
            body.append("会议议题：")
            body += [
                f"{_NUMERALS[i] if i < len(_NUMERALS) else i + 1}、{item.rstrip('。；;')}。"
                for i, item in enumerate(agenda)
            ]
        notes = data.fields.get("notes", "").strip()
        if notes:
            body.append(notes)
        body += [convener, chinese_date(now.date())]
        return Filled(
            template=self.name,
            title=title_of("关于召开", name, "的通知"),
            body="\n".join(body),
            category=self.category,
            priority=self.priority,
            expires_at=end or start + DEFAULT_LENGTH,
        )

    def _time(self, p: Problems, spec: Spec, now: datetime) -> datetime | None:
        raw = p.field(spec)
        if not raw:
            return None
        when = parse_datetime(raw, default_year=now.year)
        if when is None:
            p.add(
                p.data.field_where(spec.key, spec.label),
                tr(
                    "看不懂时间“{v}”：请写成 2026-12-05 09:00 或 2026年12月5日上午9点",
                    "cannot read the time '{v}'; write it like 2026-12-05 09:00",
                    v=raw,
                ),
            )
        return when
