"""惠农补贴发放公示: household, item, amount; resident IDs always masked by the template."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from decimal import Decimal
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
from content_queue.templates._lists import (
    TOTAL_ROW,
    check_product,
    days_field,
    duplicates,
    masked_ids,
    quantity_text,
)

__all__ = ["FarmSubsidy"]


class FarmSubsidy(Template):
    name: ClassVar[str] = "farm_subsidy"
    label = tr("惠农补贴发放公示", "Farm subsidy list")
    summary = tr(
        "每户的补贴项目和金额；身份证号一律按公示惯例打码；面积×标准与金额、合计自动核对",
        "household, item and amount; IDs always masked; area x rate and totals checked",
    )
    category = Category.FARM_SUBSIDY

    PERIOD = Spec(
        "period",
        "期间",
        tr("年度或批次，如 2026年、2026年第一批", "year or batch"),
        required=True,
        example="2026年",
        aliases=("年度", "批次"),
    )
    ITEM = Spec(
        "item",
        "补贴项目",
        tr("补贴项目（各行相同时可写在这里）", "the subsidy (when every row has the same one)"),
        example="耕地地力保护补贴",
        aliases=("项目", "补贴名称"),
    )
    DAYS = Spec(
        "days",
        "公示期",
        tr("公示天数（默认 7 天）", "days on display (default 7)"),
        example="7",
        aliases=("公示天数",),
    )
    CONTACT = Spec(
        "contact",
        "监督电话",
        tr("受理异议的电话（可选）", "phone for objections (optional)"),
        example="0635-6123456",
        aliases=("举报电话", "联系电话"),
    )
    TOTAL = Spec(
        "total",
        "合计",
        tr("补贴金额合计（元，可选；写了就核对）", "total amount (optional; checked if given)"),
        kind="amount",
        aliases=("金额合计", "补贴金额合计"),
    )
    fields = (PERIOD, ITEM, DAYS, CONTACT, TOTAL)

    HOUSEHOLD = Spec(
        "household",
        "户主",
        tr("户主姓名", "head of household"),
        required=True,
        aliases=("姓名", "户主姓名", "农户", "补贴对象"),
    )
    ID = Spec(
        "id",
        "身份证号",
        tr("身份证号（发布时自动打码）", "resident ID (always masked)"),
        kind="id",
        mask=True,
        aliases=("身份证", "身份证号码", "证件号码"),
    )
    ROW_ITEM = Spec(
        "item", "补贴项目", tr("补贴项目", "subsidy"), aliases=("项目", "补贴名称", "补贴类型")
    )
    QUANTITY = Spec(
        "quantity",
        "面积（亩）",
        tr("计补面积或数量（可选）", "area or quantity (optional)"),
        kind="quantity",
        aliases=("面积", "数量", "计补面积", "补贴面积", "亩数"),
    )
    RATE = Spec(
        "rate",
        "标准（元/亩）",
        tr("补贴标准（元，可选）", "rate in yuan (optional)"),
        kind="amount",
        aliases=("标准", "补贴标准", "单价"),
    )
    AMOUNT = Spec(
        "amount",
        "金额（元）",
        tr("补贴金额（元）", "amount (yuan)"),
        required=True,
        kind="amount",
        aliases=("金额", "补贴金额", "发放金额"),
    )
    NOTE = Spec("note", "备注", tr("备注（可选）", "remark (optional)"))
    columns = (HOUSEHOLD, ID, ROW_ITEM, QUANTITY, RATE, AMOUNT, NOTE)
    example_rows = (
        {
            "household": "张三",
            "id": "371521198001010017",
            "quantity": "10.5",
            "rate": "120",
            "amount": "1,260.00",
        },
        {
            "household": "李四",
            "id": "11010519491231002X",
            "quantity": "6",
            "rate": "120",
            "amount": "720元",
        },
        {
            "household": "王五",
            "id": "371521196805150032",
            "quantity": "8.25",
            "rate": "120",
            "amount": "990",
        },
    )

    def fill(self, data: TemplateData, *, place: str, now: datetime) -> Filled:
        p = Problems(data)
        period = p.field(self.PERIOD)
        default_item = p.field(self.ITEM)
        days = days_field(p, self.DAYS, 7)
        contact = p.field(self.CONTACT)
        given_total = p.field_amount(self.TOTAL)

        ids = masked_ids(data.rows, "id")
        lines = []
        total = Decimal(0)
        by_item: Counter[str] = Counter()
        by_item_amount: dict[str, Decimal] = {}
        checks = []
        for row in data.rows:
            if TOTAL_ROW.match(row.get("household")):
                value = p.amount(row, self.AMOUNT)
                if value is not None:
                    checks.append((row, value))
                continue
            p.cell(row, self.HOUSEHOLD)
            item = row.get("item") or default_item
            if not item:
                p.add(
                    data.where(row.line),
                    tr(
                        "没有补贴项目：请在“补贴项目”列填写，或在文件开头写一行“补贴项目,耕地地力保护补贴”",
                        "no subsidy item: fill the 补贴项目 column, or add a line "
                        "'补贴项目,...' at the top of the file",
                    ),
                )
            quantity = p.quantity(row, self.QUANTITY, units=("亩", "公顷", "头", "吨"))
            rate = p.amount(row, self.RATE)
            amount = p.amount(row, self.AMOUNT)
            check_product(
                p,
                row,
                quantity=quantity,
                rate=rate,
                amount=amount,
                quantity_label="面积",
                unit="亩",
            )
            if amount is not None:
                total += amount
                by_item[item] += 1
                by_item_amount[item] = by_item_amount.get(item, Decimal(0)) + amount
            lines.append((row, item, quantity, rate, amount))
        for row, value in checks:
            p.total_mismatch(
                data.where(row.line), what=row.get("household"), given=value, computed=total
            )
        if given_total is not None:
            p.total_mismatch(
                data.field_where("total", self.TOTAL.label),
                what=self.TOTAL.label,
                given=given_total,
                computed=total,
            )
        p.check(self)

        items = list(by_item_amount)
        what = items[0] if len(items) == 1 else "惠农补贴"
        households = len({row.get("household") for row, *_ in lines})
        body = [
            f"现将{period}{what}发放情况公示如下：共 {households} 户，"
            f"补贴金额合计 {format_amount(total)} 元"
            + (
                "（"
                + "，".join(f"{k} {format_amount(v)} 元" for k, v in by_item_amount.items())
                + "）"
                if len(items) > 1
                else ""
            )
            + "。",
            f"公示期 {days} 天，自公示之日起计算。如有异议，请在公示期内向村委会"
            + (f"或拨打监督电话 {contact} " if contact else "")
            + "反映。",
        ]
        if ids:
            body.append("为保护个人信息，身份证号已隐去中间部分。")

        show_id = bool(ids)
        show_item = len(items) > 1 or "item" in data.columns
        show_qty = any(q is not None for _, _, q, _, _ in lines)
        show_rate = any(r is not None for _, _, _, r, _ in lines)
        show_note = any(row.get("note") for row, *_ in lines)
        columns = (
            ["户主"]
            + (["身份证号"] if show_id else [])
            + (["补贴项目"] if show_item else [])
            + (["面积（亩）"] if show_qty else [])
            + (["标准（元/亩）"] if show_rate else [])
            + ["金额（元）"]
            + (["备注"] if show_note else [])
        )
        rows = []
        for row, item, quantity, rate, amount in lines:
            rows.append(
                [row.get("household")]
                + ([ids.get(row.line, "")] if show_id else [])
                + ([item] if show_item else [])
                + ([quantity_text(quantity) if quantity is not None else ""] if show_qty else [])
                + ([format_amount(rate) if rate is not None else ""] if show_rate else [])
                + [format_amount(amount) if amount is not None else ""]
                + ([row.get("note")] if show_note else [])
            )
        total_qty = sum((q for _, _, q, _, _ in lines if q is not None), Decimal(0))
        rows.append(
            ["合计"]
            + ([""] if show_id else [])
            + ([""] if show_item else [])
            + ([quantity_text(total_qty)] if show_qty else [])
            + ([""] if show_rate else [])
            + [format_amount(total)]
            + ([""] if show_note else [])
        )
        return Filled(
            template=self.name,
            title=title_of(place, period, what, "发放公示"),
            body="\n".join(body),
            category=self.category,
            priority=self.priority,
            table=table_of(caption=f"{period}{what}发放明细", columns=columns, rows=rows),
            warnings=tuple(
                duplicates(
                    [row for row, *_ in lines],
                    keys=("household", "item") if "item" in data.columns else ("household",),
                    what=tr("户主", "household"),
                )
            ),
        )
