"""防返贫监测对象公示: households newly monitored (纳入监测) or whose risk is removed (风险消除)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import ClassVar

from content_queue.amounts import format_amount
from content_queue.i18n import tr
from content_queue.models import Category
from content_queue.templates._base import (
    Filled,
    Problems,
    Spec,
    Template,
    TemplateData,
    table_of,
    title_of,
)
from content_queue.templates._lists import days_field, duplicates, masked_ids

__all__ = ["PovertyMonitoring"]

# The three kinds of monitored household in the national 防止返贫动态监测 guidelines.
_TYPES = {
    "脱贫不稳定户": ("脱贫不稳定户", "不稳定户", "脱贫不稳定"),
    "边缘易致贫户": ("边缘易致贫户", "边缘户", "边缘易致贫"),
    "突发严重困难户": ("突发严重困难户", "突发困难户", "严重困难户", "突发严重困难"),
}
_TYPE_OF = {alias: name for name, aliases in _TYPES.items() for alias in aliases}
_ACTIONS = {
    "纳入监测": ("纳入", "纳入监测", "识别", "新识别"),
    "风险消除": ("消除", "风险消除", "消除风险", "退出"),
}
_ACTION_OF = {alias: name for name, aliases in _ACTIONS.items() for alias in aliases}


class PovertyMonitoring(Template):
    name: ClassVar[str] = "poverty_monitoring"
    label = tr("防返贫监测对象公示", "Poverty-alleviation monitoring notice")
    summary = tr(
        "拟纳入监测或拟消除风险的农户名单：户主、人口、监测类型、主要风险、帮扶措施",
        "households to be monitored (or whose risk is removed), with type, risk and help",
    )
    category = Category.POVERTY_MONITORING

    PERIOD = Spec(
        "period",
        "批次",
        tr("年度批次，如 2026年第三批", "batch, e.g. 2026年第三批"),
        required=True,
        example="2026年第三批",
        aliases=("期间", "年度"),
    )
    ACTION = Spec(
        "action",
        "事项",
        tr("纳入监测（默认）或 风险消除", "纳入监测 (default) or 风险消除"),
        example="纳入监测",
        aliases=("公示事项", "类型"),
    )
    DAYS = Spec(
        "days",
        "公示期",
        tr("公示天数（默认 5 天）", "days on display (default 5)"),
        example="5",
        aliases=("公示天数",),
    )
    CONTACT = Spec(
        "contact",
        "监督电话",
        tr("受理异议的电话（可选）", "phone for objections (optional)"),
        aliases=("举报电话", "联系电话"),
    )
    fields = (PERIOD, ACTION, DAYS, CONTACT)

    HOUSEHOLD = Spec(
        "household",
        "户主",
        tr("户主姓名", "head of household"),
        required=True,
        aliases=("姓名", "户主姓名"),
    )
    ID = Spec(
        "id",
        "身份证号",
        tr(
            "身份证号（发布时自动打码；一般不必公示）",
            "resident ID (always masked; usually left out)",
        ),
        kind="id",
        mask=True,
        aliases=("身份证", "身份证号码", "证件号码"),
    )
    SIZE = Spec(
        "size",
        "家庭人口",
        tr("家庭人口数", "household size"),
        aliases=("人口", "家庭人口数", "人口数"),
    )
    TYPE = Spec(
        "type",
        "监测类型",
        tr(
            "脱贫不稳定户、边缘易致贫户或突发严重困难户",
            "脱贫不稳定户, 边缘易致贫户 or 突发严重困难户",
        ),
        aliases=("监测对象类型", "对象类型"),
    )
    RISK = Spec(
        "risk",
        "主要风险",
        tr("主要返贫致贫风险，如 因病、因灾、因意外事故", "main risk, e.g. illness, disaster"),
        aliases=("风险类型", "致贫风险", "返贫致贫风险", "风险"),
    )
    INCOME = Spec(
        "income",
        "人均纯收入（元）",
        tr("家庭人均纯收入（元，可选）", "net income per person (yuan, optional)"),
        kind="amount",
        aliases=("人均纯收入", "人均收入", "家庭人均纯收入"),
    )
    HELP = Spec(
        "help",
        "帮扶措施",
        tr("帮扶措施（可选）", "assistance (optional)"),
        aliases=("帮扶", "帮扶举措"),
    )
    NOTE = Spec("note", "备注", tr("备注（可选）", "remark (optional)"))
    columns = (HOUSEHOLD, ID, SIZE, TYPE, RISK, INCOME, HELP, NOTE)
    example_rows = (
        {
            "household": "赵六",
            "size": "4",
            "type": "突发严重困难户",
            "risk": "因病",
            "income": "6,800",
            "help": "医疗救助、公益岗位",
        },
        {
            "household": "钱七",
            "size": "2",
            "type": "边缘易致贫户",
            "risk": "因残",
            "income": "7,200",
            "help": "残疾人补贴、产业帮扶",
        },
    )

    def fill(self, data: TemplateData, *, place: str, now: datetime) -> Filled:
        p = Problems(data)
        period = p.field(self.PERIOD)
        action_text = p.field(self.ACTION) or "纳入监测"
        action = _ACTION_OF.get(re.sub(r"\s+", "", action_text))
        if action is None:
            p.add(
                data.field_where("action", self.ACTION.label),
                tr(
                    "事项应为 纳入监测 或 风险消除，这里是“{v}”",
                    "事项 must be 纳入监测 or 风险消除, not '{v}'",
                    v=action_text,
                ),
            )
        days = days_field(p, self.DAYS, 5)
        contact = p.field(self.CONTACT)
        ids = masked_ids(data.rows, "id")
        lines = []
        persons = 0
        for row in data.rows:
            p.cell(row, self.HOUSEHOLD)
            kind = row.get("type")
            if kind and kind not in _TYPE_OF:
                p.add(
                    data.where(row.line),
                    tr(
                        "监测类型应为 {types}，这里是“{v}”",
                        "监测类型 must be one of {types}, not '{v}'",
                        types="、".join(_TYPES),
                        v=kind,
                    ),
                )
            elif not kind and action == "纳入监测":
                p.add(data.where(row.line), tr("“监测类型”不能为空", "监测类型 must not be empty"))
            size = row.get("size")
            if size:
                if re.fullmatch(r"\d{1,2}人?", size) and int(size.rstrip("人")) > 0:
                    persons += int(size.rstrip("人"))
                else:
                    p.add(
                        data.where(row.line),
                        tr(
                            "家庭人口“{v}”不是人数",
                            "household size '{v}' is not a number of persons",
                            v=size,
                        ),
                    )
            income = p.amount(row, self.INCOME)
            lines.append((row, _TYPE_OF.get(kind, kind), income))
        p.check(self)
        assert action is not None

        n = len(lines)
        people = f" {persons} 人" if persons else ""
        if action == "纳入监测":
            opening = (
                "根据防止返贫动态监测和帮扶工作要求，经农户自主申报、部门筛查预警和村干部走访排查，"
                f"村级民主评议，拟将以下 {n} 户{people}纳入防返贫监测对象，现予公示。"
            )
        else:
            opening = (
                "根据防止返贫动态监测和帮扶工作要求，经入户核实、村级民主评议，"
                f"以下 {n} 户{people}返贫致贫风险已稳定消除，拟标注为风险消除，现予公示。"
            )
        body = [
            opening,
            f"公示期 {days} 天，自公示之日起计算。如有异议，请在公示期内向村委会"
            + (f"或拨打监督电话 {contact} " if contact else "")
            + "反映。",
        ]
        present = set(data.columns)
        cols = [
            (key, label)
            for key, label in (
                ("household", "户主"),
                ("id", "身份证号"),
                ("size", "家庭人口"),
                ("type", "监测类型"),
                ("risk", "主要风险"),
                ("income", "人均纯收入（元）"),
                ("help", "帮扶措施"),
                ("note", "备注"),
            )
            if key in present and any(row.get(key) for row, *_ in lines)
        ]
        rows = []
        for row, kind, income in lines:
            cells = {
                "id": ids.get(row.line, ""),
                "type": kind or "",
                "income": format_amount(income) if income is not None else "",
            }
            rows.append([cells.get(key, row.get(key)) for key, _ in cols])
        suffix = "识别公示" if action == "纳入监测" else "风险消除公示"
        return Filled(
            template=self.name,
            title=title_of(place, period, "防返贫监测对象", suffix),
            body="\n".join(body),
            category=self.category,
            priority=self.priority,
            table=table_of(
                caption=f"{period}防返贫监测对象名单",
                columns=[label for _, label in cols],
                rows=rows,
            ),
            warnings=tuple(
                duplicates(data.rows, keys=("household",), what=tr("户主", "household"))
            ),
        )
