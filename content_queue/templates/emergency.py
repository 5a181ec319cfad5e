"""应急预警: a weather or disaster warning passed on to villages, at emergency priority.

Levels follow China's four-colour warning signals (蓝 IV, 黄 III, 橙 II, 红 I). The notice
expires with the warning (default 24 hours), so boards and loudspeakers stop repeating a
warning that has been lifted.
"""

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
from content_queue.templates._dates import chinese_datetime, parse_datetime

__all__ = ["EmergencyWarning"]

DEFAULT_VALIDITY = timedelta(hours=24)
_LEVELS = {
    "蓝色": ("蓝", "蓝色", "IV", "Ⅳ", "四级", "4级", "IV级", "Ⅳ级", "blue"),
    "黄色": ("黄", "黄色", "III", "Ⅲ", "三级", "3级", "III级", "Ⅲ级", "yellow"),
    "橙色": ("橙", "橙色", "II", "Ⅱ", "二级", "2级", "II级", "Ⅱ级", "orange"),
    "红色": ("红", "红色", "I", "Ⅰ", "一级", "1级", "I级", "Ⅰ级", "red"),
}
_LEVEL_OF = {alias.lower(): name for name, aliases in _LEVELS.items() for alias in aliases}


class EmergencyWarning(Template):
    name: ClassVar[str] = "emergency"
    label = tr("应急预警", "Emergency warning")
    summary = tr(
        "暴雨、大风、寒潮、火灾等预警：预警类型、级别、内容和防御措施，紧急优先级，到期自动失效",
        "weather and disaster warnings: type, level, description, what to do; emergency "
        "priority, expires with the warning",
    )
    category = Category.EMERGENCY
    priority = Priority.EMERGENCY

    HAZARD = Spec(
        "hazard",
        "预警类型",
        tr(
            "如 暴雨、大风、寒潮、高温、森林火险、山洪",
            "e.g. rainstorm, gale, cold wave, forest fire",
        ),
        required=True,
        example="暴雨",
        aliases=("灾种", "类型", "预警"),
    )
    LEVEL = Spec(
        "level",
        "预警级别",
        tr("蓝色、黄色、橙色或红色（可选）", "blue, yellow, orange or red"),
        example="橙色",
        aliases=("级别", "等级"),
    )
    ISSUER = Spec(
        "issuer",
        "发布单位",
        tr("发布预警的单位（默认本村或本乡镇）", "who issued the warning (default: this place)"),
        example="阳谷县气象台",
        aliases=("发布机关", "来源"),
    )
    DESCRIPTION = Spec(
        "description",
        "预警内容",
        tr("预警内容", "what is coming"),
        required=True,
        example="预计今天夜间到明天白天，我县将出现暴雨，局部大暴雨，累计降雨量 80～120 毫米。",
        aliases=("内容", "预警信息"),
    )
    INSTRUCTION = Spec(
        "instruction",
        "防御措施",
        tr("群众应当怎么做（可选）", "what people should do"),
        example="请远离河道、沟渠和低洼地带，危房住户立即转移；照看好老人和孩子。",
        aliases=("防御指南", "注意事项", "应对措施"),
    )
    UNTIL = Spec(
        "until",
        "有效期至",
        tr("预警结束时间（可选，默认 24 小时后）", "when the warning ends (default in 24 hours)"),
        kind="datetime",
        aliases=("有效期", "结束时间", "解除时间"),
    )
    fields = (HAZARD, LEVEL, ISSUER, DESCRIPTION, INSTRUCTION, UNTIL)

    def fill(self, data: TemplateData, *, place: str, now: datetime) -> Filled:
        p = Problems(data)
        hazard = p.field(self.HAZARD).removesuffix("预警")
        level_text = p.field(self.LEVEL)
        level = _LEVEL_OF.get(re.sub(r"\s+|预警$", "", level_text).lower()) if level_text else ""
        if level is None:
            p.add(
                data.field_where("level", self.LEVEL.label),
                tr(
                    "预警级别应为 蓝色、黄色、橙色 或 红色，这里是“{v}”",
                    "the level must be 蓝色, 黄色, 橙色 or 红色, not '{v}'",
                    v=level_text,
                ),
            )
        issuer = p.field(self.ISSUER) or issuer_of(place)
        description = p.field(self.DESCRIPTION)
        instruction = p.field(self.INSTRUCTION)
        local_now = now.replace(tzinfo=None)
        until = local_now + DEFAULT_VALIDITY
        raw_until = p.field(self.UNTIL)
        if raw_until:
            parsed = parse_datetime(raw_until, default_year=now.year)
            if parsed is None:
                p.add(
                    data.field_where("until", self.UNTIL.label),
                    tr(
                        "看不懂时间“{v}”：请写成 2026-12-06 20:00",
                        "cannot read the time '{v}'; write it like 2026-12-06 20:00",
                        v=raw_until,
                    ),
                )
            elif parsed <= local_now:
                p.add(
                    data.field_where("until", self.UNTIL.label),
                    tr(
                        "有效期 {t} 已经过去了",
                        "the warning ended already ({t})",
                        t=parsed.strftime("%Y-%m-%d %H:%M"),
                    ),
                )
            else:
                until = parsed
        p.check(self)

        body = [description]
        if instruction:
            body.append(f"防御措施：{instruction}")
        body.append(f"本预警有效期至{chinese_datetime(until)}。")
        body.append(f"{issuer} {chinese_datetime(local_now)}发布")
        return Filled(
            template=self.name,
            title=title_of(issuer, "发布", hazard, level or "", "预警"),
            body="\n".join(body),
            category=self.category,
            priority=self.priority,
            expires_at=until,
        )
