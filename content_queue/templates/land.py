"""征地补偿公示: per household area, rate and compensation; area x rate and totals checked."""

from __future__ import annotations

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

__all__ = ["LandCompensation"]


class LandCompensation(Template):
    name: ClassVar[str] = "land_compensation"
    label = tr("征地补偿公示", "Land requisition compensation notice")
    summary = tr(
        "被征收土地每户的面积、补偿标准和补偿金额；面积×标准与金额、合计自动核对",
        "area, rate and compensation per household; area x rate and totals checked",
    )
    category = Category.LAND_COMPENSATION

    PROJECT = Spec(
        "project",
        "项目名称",
        tr("征收项目名称", "the requisition project"),
        required=True,
        example="阳谷县2026年第3批次城镇建设用地",
        aliases=("项目", "征收项目"),
    )
    APPROVAL = Spec(
        "approval",
        "批准文号",
        tr("征收批准文号（可选）", "approval document (optional)"),
        example="鲁政土字〔2026〕123号",
        aliases=("批复文号", "文号"),
    )
    STANDARD = Spec(
        "standard",
        "补偿标准",
        tr("补偿标准说明（可选）", "the compensation standard (optional)"),
        example="区片综合地价 52,000 元/亩",
        aliases=("标准说明",),
    )
    DAYS = Spec(
        "days",
        "公示期",
        tr("公示天数（默认 10 天）", "days on display (default 10)"),
        example="10",
        aliases=("公示天数",),
    )
    CONTACT = Spec(
        "contact",
        "异议受理",
        tr("受理异议的单位或电话（可选）", "where objections go (optional)"),
        example="镇自然资源所 0635-6123456",
        aliases=("监督电话", "联系电话", "受理单位"),
    )
    TOTAL = Spec(
        "total",
        "合计",
        tr(
            "补偿金额合计（元，可选；写了就核对）",
            "total compensation (optional; checked if given)",
        ),
        kind="amount",
        aliases=("补偿金额合计", "金额合计"),
    )
    fields = (PROJECT, APPROVAL, STANDARD, DAYS, CONTACT, TOTAL)

    HOUSEHOLD = Spec(
        "household",
        "户主",
        tr("被征收户（权利人）", "owner of the land right"),
        required=True,
        aliases=("权利人", "被征收人", "姓名", "户主姓名"),
    )
    ID = Spec(
        "id",
        "身份证号",
        tr("身份证号（发布时自动打码）", "resident ID (always masked)"),
        kind="id",
        mask=True,
        aliases=("身份证", "身份证号码", "证件号码"),
    )
    PLOT = Spec(
        "plot",
        "地块",
        tr("地块编号或位置（可选）", "plot number or place (optional)"),
        aliases=("地块编号", "位置", "坐落", "地块位置"),
    )
    USE = Spec(
        "use",
        "地类",
        tr("地类，如 耕地、园地（可选）", "land use (optional)"),
        aliases=("土地类型", "土地用途"),
    )
    AREA = Spec(
        "area",
        "面积（亩）",
        tr("征收面积（亩）", "area (mu)"),
        required=True,
        kind="quantity",
        aliases=("面积", "征收面积", "亩数"),
    )
    RATE = Spec(
        "rate",
        "标准（元/亩）",
        tr("补偿标准（元/亩，可选）", "rate (yuan per mu, optional)"),
        kind="amount",
        aliases=("标准", "补偿标准", "单价"),
    )
    AMOUNT = Spec(
        "amount",
        "补偿金额（元）",
        tr("补偿金额（元）", "compensation (yuan)"),
        required=True,
        kind="amount",
        aliases=("金额", "补偿金额", "补偿款"),
    )
    NOTE = Spec("note", "备注", tr("备注（可选）", "remark (optional)"))
    columns = (HOUSEHOLD, ID, PLOT, USE, AREA, RATE, AMOUNT, NOTE)
    example_rows = (
        {
            "household": "孙八",
            "id": "371521197512030023",
            "plot": "东洼 3-12",
            "use": "耕地",
            "area": "1.25",
            "rate": "52,000",
            "amount": "65,000.00",
        },
        {
            "household": "周九",
            "plot": "东洼 3-13",
            "use": "耕地",
            "area": "0.8",
            "rate": "52,000",
            "amount": "41,600.00",
        },
    )

    def fill(self, data: TemplateData, *, place: str, now: datetime) -> Filled:
        p = Problems(data)
        project = p.field(self.PROJECT)
        approval = p.field(self.APPROVAL)
        standard = p.field(self.STANDARD)
        days = days_field(p, self.DAYS, 10)
        contact = p.field(self.CONTACT)
        given_total = p.field_amount(self.TOTAL)
        ids = masked_ids(data.rows, "id")
        lines = []
        total, area_total = Decimal(0), Decimal(0)
        checks = []
        for row in data.rows:
            if TOTAL_ROW.match(row.get("household")):
                value = p.amount(row, self.AMOUNT)
                if value is not None:
                    checks.append((row, value))
                continue
            p.cell(row, self.HOUSEHOLD)
            area = p.quantity(row, self.AREA, units=("亩",))
            rate = p.amount(row, self.RATE)
            amount = p.amount(row, self.AMOUNT)
            check_product(
                p, row, quantity=area, rate=rate, amount=amount, quantity_label="面积", unit="亩"
            )
            total += amount or 0
            area_total += area or 0
            lines.append((row, area, rate, amount))
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

        households = len({row.get("household") for row, *_ in lines})
        body = [
            f"{project}" + (f"（批准文号：{approval}）" if approval else "") + "已依法批准。"
            f"现将本村被征收土地补偿情况公示如下：共涉及 {households} 户，"
            f"征收土地 {quantity_text(area_total)} 亩，补偿金额合计 {format_amount(total)} 元。",
        ]
        if standard:
            body.append(f"补偿标准：{standard}。")
        body.append(
            f"公示期 {days} 天，自公示之日起计算。被征收户对补偿情况有异议的，"
            "请在公示期内向村委会或乡镇人民政府提出"
            + (f"（异议受理：{contact}）" if contact else "")
            + "。"
        )
        if ids:
            body.append("为保护个人信息，身份证号已隐去中间部分。")
        show = {k: any(row.get(k) for row, *_ in lines) for k in ("id", "plot", "use", "note")}
        show_rate = any(r is not None for _, _, r, _ in lines)
        columns = (
            ["户主"]
            + (["身份证号"] if show["id"] else [])
            + (["地块"] if show["plot"] else [])
            + (["地类"] if show["use"] else [])
            + ["面积（亩）"]
            + (["标准（元/亩）"] if show_rate else [])
            + ["补偿金额（元）"]
            + (["备注"] if show["note"] else [])
        )
        rows = []
        for row, area, rate, amount in lines:
            rows.append(
                [row.get("household")]
                + ([ids.get(row.line, "")] if show["id"] else [])
                + ([row.get("plot")] if show["plot"] else [])
                + ([row.get("use")] if show["use"] else [])
                + [quantity_text(area) if area is not None else ""]
                + ([format_amount(rate) if rate is not None else ""] if show_rate else [])
                + [format_amount(amount) if amount is not None else ""]
                + ([row.get("note")] if show["note"] else [])
            )
        rows.append(
            ["合计"]
            + [""] * (show["id"] + show["plot"] + show["use"])
            + [quantity_text(area_total)]
            + ([""] if show_rate else [])
            + [format_amount(total)]
            + ([""] if show["note"] else [])
        )
        return Filled(
            template=self.name,
            title=title_of(place, "征地补偿公示（", project, "）"),
            body="\n".join(body),
            category=self.category,
            priority=self.priority,
            table=table_of(caption=f"{project}补偿明细", columns=columns, rows=rows),
            warnings=tuple(
                duplicates(
                    [row for row, *_ in lines],
                    keys=("household", "plot"),
                    what=tr("户主 / 地块", "household / plot"),
                )
            ),
        )
