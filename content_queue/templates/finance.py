"""村级财务收支公开: monthly or quarterly income and expenditure, totals computed and checked.

The table it writes (项目, 收入（元）, 支出（元）, a final 合计 row) is the shape the
loudspeaker script reads as a finance table (channels/_speech_text.py: per-row lines,
then "收入合计……，支出合计……" recomputed from the rows, the 合计 row skipped).
"""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import ClassVar

from content_queue.amounts import format_amount
from content_queue.i18n import tr
from content_queue.models import Category
from content_queue.templates._base import (
    Filled,
    Problems,
    Row,
    Spec,
    Template,
    TemplateData,
    table_of,
    title_of,
)
from content_queue.templates._dates import parse_date, parse_period

__all__ = ["VillageFinance"]

_TOTAL = re.compile(r"^(?:本[月期季年]|累计)?(收入|支出)?(合计|总计|小计)$")
_INCOME_WORDS = ("收入", "收", "入")
_EXPENSE_WORDS = ("支出", "支", "出")


class VillageFinance(Template):
    name: ClassVar[str] = "village_finance"
    label = tr("村级财务收支公开（月度或季度）", "Village finance (monthly or quarterly)")
    summary = tr(
        "收入、支出逐项列出，自动计算合计，并与数据中写的合计、期末余额核对",
        "income and expenditure rows; totals are computed and checked against any given",
    )
    category = Category.VILLAGE_FINANCE

    PERIOD = Spec(
        "period",
        "期间",
        tr(
            "公开的月份或季度，如 2026年11月、2026-11、2026年第四季度、2026Q4",
            "the month or quarter, e.g. 2026-11, 2026年11月, 2026Q4",
        ),
        required=True,
        example="2026年11月",
        aliases=("所属期间", "月份", "季度"),
    )
    OPENING = Spec(
        "opening_balance",
        "期初余额",
        tr("期初余额（元，可选）", "opening balance (yuan, optional)"),
        kind="amount",
        example="52,000.00",
        aliases=("上期结余", "期初结余"),
    )
    INCOME_TOTAL = Spec(
        "income_total",
        "收入合计",
        tr("收入合计（元，可选；写了就核对）", "total income (optional; checked if given)"),
        kind="amount",
        aliases=("本期收入合计",),
    )
    EXPENSE_TOTAL = Spec(
        "expense_total",
        "支出合计",
        tr("支出合计（元，可选；写了就核对）", "total expenditure (optional; checked if given)"),
        kind="amount",
        aliases=("本期支出合计",),
    )
    CLOSING = Spec(
        "closing_balance",
        "期末余额",
        tr(
            "期末余额（元，可选；有期初余额时核对）",
            "closing balance (optional; checked against the opening balance)",
        ),
        kind="amount",
        aliases=("期末结余", "本期结余"),
    )
    NOTE = Spec(
        "note",
        "说明",
        tr("附在正文后的说明（可选）", "a note added to the body (optional)"),
        example="重大收支事项已经村民代表会议讨论通过。",
        aliases=("备注说明", "附注"),
    )
    fields = (PERIOD, OPENING, INCOME_TOTAL, EXPENSE_TOTAL, CLOSING, NOTE)

    DATE = Spec(
        "date",
        "日期",
        tr("发生日期（可选，须在期间内）", "date (optional, within the period)"),
        kind="date",
    )
    ITEM = Spec(
        "item",
        "项目",
        tr("收支项目", "what the money was for"),
        required=True,
        aliases=("摘要", "科目", "事项", "名称", "收支项目"),
    )
    TYPE = Spec(
        "type",
        "类别",
        tr("收入 或 支出（与“金额”列一起用）", "收入 (income) or 支出 (expenditure), with 金额"),
        aliases=("收支", "收支类别", "类型"),
    )
    AMOUNT = Spec(
        "amount",
        "金额",
        tr("金额（元），与“类别”列一起用", "amount (yuan), with 类别"),
        kind="amount",
        aliases=("发生额",),
    )
    INCOME = Spec(
        "income",
        "收入",
        tr("收入金额（元）", "income (yuan)"),
        kind="amount",
        aliases=("收入金额", "本期收入", "收入额"),
    )
    EXPENSE = Spec(
        "expense",
        "支出",
        tr("支出金额（元）", "expenditure (yuan)"),
        kind="amount",
        aliases=("支出金额", "本期支出", "支出额"),
    )
    VOUCHER = Spec(
        "voucher",
        "凭证号",
        tr("记账凭证号（可选）", "voucher number (optional)"),
        aliases=("凭证", "凭证编号"),
    )
    ROW_NOTE = Spec("note", "备注", tr("备注（可选）", "remark (optional)"))
    columns = (DATE, ITEM, TYPE, AMOUNT, INCOME, EXPENSE, VOUCHER, ROW_NOTE)
    example_rows = (
        {"date": "2026-11-03", "item": "上级转移支付", "income": "12,000.00"},
        {"date": "2026-11-08", "item": "集体土地租金", "income": "345.60"},
        {"date": "2026-11-12", "item": "村道路灯维修", "expense": "3,210.00", "note": "含材料费"},
        {"date": "2026-11-20", "item": "保洁员工资", "expense": "5,000.00"},
        {"item": "合计", "income": "12,345.60", "expense": "8,210.00"},
    )

    def fill(self, data: TemplateData, *, place: str, now: datetime) -> Filled:
        p = Problems(data)
        period_text = p.field(self.PERIOD)
        period = parse_period(period_text) if period_text else None
        if period_text and period is None:
            p.add(
                data.field_where("period", self.PERIOD.label),
                tr(
                    "看不懂期间“{v}”：请写成 2026年11月、2026-11 或 2026年第四季度",
                    "cannot read the period '{v}'; write 2026-11, 2026年11月 or 2026Q4",
                    v=period_text,
                ),
            )
        opening = p.field_amount(self.OPENING, allow_negative=True)
        closing = p.field_amount(self.CLOSING, allow_negative=True)
        given_income = p.field_amount(self.INCOME_TOTAL)
        given_expense = p.field_amount(self.EXPENSE_TOTAL)

        cols = set(data.columns)
        by_type = "amount" in cols
        by_side = "income" in cols or "expense" in cols
        if by_type == by_side:
            p.add(
                tr("{src} 的表头", "{src} header", src=data.source),
                tr(
                    "请用“收入”“支出”两列，或者“类别”（收入/支出）加“金额”两列，二选一",
                    "use either the columns 收入 and 支出, or 类别 (收入/支出) with 金额",
                ),
            )
            p.check(self)
        if by_type and "type" not in cols:
            p.add(
                tr("{src} 的表头", "{src} header", src=data.source),
                tr(
                    "有“金额”列时还需要“类别”列（收入或支出）",
                    "a 金额 column needs a 类别 column (收入 or 支出)",
                ),
            )
            p.check(self)

        items: list[_Line] = []
        totals = {"income": Decimal(0), "expense": Decimal(0)}
        running = {"income": Decimal(0), "expense": Decimal(0)}
        checks: list[tuple[Row, str, str, Decimal]] = []  # row, side, scope, given value
        for row in data.rows:
            item = p.cell(row, self.ITEM)
            total = _TOTAL.match(re.sub(r"\s+", "", item))
            if total:
                scope = "running" if total[2] == "小计" else "all"
                for side, stated in self._total_values(p, row, total[1], by_type):
                    if scope == "running":
                        p.total_mismatch(
                            data.where(row.line),
                            what=item,
                            given=stated,
                            computed=running[side],
                        )
                    else:
                        checks.append((row, side, item, stated))
                if scope == "running":
                    running = {"income": Decimal(0), "expense": Decimal(0)}
                continue
            day_text = row.get("date")
            if day_text and period is not None:
                day = parse_date(day_text, default_year=period.start.year)
                if day is None:
                    p.add(
                        data.where(row.line),
                        tr("看不懂日期“{v}”", "cannot read the date '{v}'", v=day_text),
                    )
                elif not period.contains(day):
                    p.add(
                        data.where(row.line),
                        tr(
                            "日期 {d} 不在期间“{period}”内",
                            "the date {d} is outside the period '{period}'",
                            d=day.isoformat(),
                            period=period.label,
                        ),
                    )
            income: Decimal | None = None
            expense: Decimal | None = None
            if by_type:
                kind = _side(p.cell(row, self.TYPE))
                value = p.amount(row, self.AMOUNT, allow_negative=True)
                if kind is None:
                    p.add(
                        data.where(row.line),
                        tr(
                            "“类别”应为 收入 或 支出，这里是“{v}”",
                            "类别 must be 收入 or 支出, not '{v}'",
                            v=row.get("type"),
                        ),
                    )
                elif value is None and row.get("amount") == "":
                    p.add(data.where(row.line), tr("“金额”不能为空", "金额 must not be empty"))
                elif kind == "income":
                    income = value
                else:
                    expense = value
            else:
                income = p.amount(row, self.INCOME, allow_negative=True)
                expense = p.amount(row, self.EXPENSE, allow_negative=True)
                if (
                    income is None
                    and expense is None
                    and not row.get("income") + row.get("expense")
                ):
                    p.add(
                        data.where(row.line),
                        tr(
                            "这一行既没有收入也没有支出金额",
                            "this row has neither income nor expenditure",
                        ),
                    )
            for side, amount in (("income", income), ("expense", expense)):
                if amount is not None:
                    totals[side] += amount
                    running[side] += amount
            items.append(_Line(row, income, expense))

        for row, side, item, value in checks:
            p.total_mismatch(data.where(row.line), what=item, given=value, computed=totals[side])
        for spec, side, given in (
            (self.INCOME_TOTAL, "income", given_income),
            (self.EXPENSE_TOTAL, "expense", given_expense),
        ):
            if given is not None:
                p.total_mismatch(
                    data.field_where(spec.key, spec.label),
                    what=spec.label,
                    given=given,
                    computed=totals[side],
                )
        if opening is not None and closing is not None:
            expected = opening + totals["income"] - totals["expense"]
            if closing != expected:
                p.add(
                    data.field_where("closing_balance", self.CLOSING.label),
                    tr(
                        "期末余额写的是 {g} 元，但期初余额 {o} + 收入 {i} − 支出 {e} = {c} 元，"
                        "请核对",
                        "the closing balance says {g} but opening {o} + income {i} - "
                        "expenditure {e} = {c}; please check",
                        g=format_amount(closing),
                        o=format_amount(opening),
                        i=format_amount(totals["income"]),
                        e=format_amount(totals["expense"]),
                        c=format_amount(expected),
                    ),
                )
        p.check(self)
        assert period is not None  # a missing or unreadable period was reported above

        if opening is not None and closing is None:
            closing = opening + totals["income"] - totals["expense"]
        net = totals["income"] - totals["expense"]
        body = [
            f"现将本村{period.label}财务收支情况公开如下：",
            f"本期收入合计 {format_amount(totals['income'])} 元，"
            f"支出合计 {format_amount(totals['expense'])} 元，"
            + (
                f"收支相抵结余 {format_amount(net)} 元。"
                if net >= 0
                else f"收支相抵超支 {format_amount(-net)} 元。"
            ),
        ]
        if opening is not None and closing is not None:
            body.append(
                f"期初余额 {format_amount(opening)} 元，期末余额 {format_amount(closing)} 元。"
            )
        note = data.fields.get("note", "").strip()
        if note:
            body.append(note)
        body.append("如对公开内容有疑问，请在公开之日起十日内向村务监督委员会反映。")

        with_date = any(line.row.get("date") for line in items)
        with_voucher = any(line.row.get("voucher") for line in items)
        with_note = any(line.row.get("note") for line in items)
        columns = (
            (["日期"] if with_date else [])
            + ["项目", "收入（元）", "支出（元）"]
            + (["凭证号"] if with_voucher else [])
            + (["备注"] if with_note else [])
        )
        rows = []
        for line in items:
            day = parse_date(line.row.get("date"), default_year=period.start.year)
            rows.append(
                ([day.isoformat() if day else line.row.get("date")] if with_date else [])
                + [
                    line.row.get("item"),
                    format_amount(line.income) if line.income is not None else "",
                    format_amount(line.expense) if line.expense is not None else "",
                ]
                + ([line.row.get("voucher")] if with_voucher else [])
                + ([line.row.get("note")] if with_note else [])
            )
        rows.append(
            ([""] if with_date else [])
            + ["合计", format_amount(totals["income"]), format_amount(totals["expense"])]
            + ([""] if with_voucher else [])
            + ([""] if with_note else [])
        )
        return Filled(
            template=self.name,
            title=title_of(place, period.label, "村级财务收支公开"),
            body="\n".join(body),
            category=self.category,
            priority=self.priority,
            table=table_of(
                caption=f"{period.label}收支明细（单位：元）", columns=columns, rows=rows
            ),
        )

    def _total_values(
        self, p: Problems, row: Row, side_word: str | None, by_type: bool
    ) -> list[tuple[str, Decimal]]:
        """The (side, given value) pairs a 合计 / 小计 row states."""
        out: list[tuple[str, Decimal]] = []
        if by_type:
            side = _side(side_word or row.get("type"))
            value = p.amount(row, self.AMOUNT, allow_negative=True)
            if side is None:
                p.add(
                    p.data.where(row.line),
                    tr(
                        "合计行请写明是收入合计还是支出合计（或在“类别”列填写）",
                        "say whether this total is income or expenditure (or fill 类别)",
                    ),
                )
            elif value is not None:
                out.append((side, value))
            return out
        for side, spec in (("income", self.INCOME), ("expense", self.EXPENSE)):
            if side_word and _side(side_word) != side:
                continue
            value = p.amount(row, spec, allow_negative=True)
            if value is not None:
                out.append((side, value))
        return out


class _Line:
    __slots__ = ("expense", "income", "row")

    def __init__(self, row: Row, income: Decimal | None, expense: Decimal | None) -> None:
        self.row, self.income, self.expense = row, income, expense


def _side(word: str | None) -> str | None:
    word = (word or "").strip()
    if word in _INCOME_WORDS:
        return "income"
    if word in _EXPENSE_WORDS:
        return "expense"
    return None
