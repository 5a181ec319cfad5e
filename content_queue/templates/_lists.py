"""Helpers shared by the household lists (subsidies, land compensation, monitoring)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal

from content_queue.amounts import format_amount
from content_queue.i18n import Text, tr
from content_queue.templates._base import Problems, Row, Spec, mask_id

__all__ = ["TOTAL_ROW", "check_product", "days_field", "duplicates", "masked_ids", "quantity_text"]

TOTAL_ROW = re.compile(r"^\s*(?:本[月期季年]|累计)?(?:合计|总计)\s*$")
_CENT = Decimal("0.01")


def check_product(
    p: Problems,
    row: Row,
    *,
    quantity: Decimal | None,
    rate: Decimal | None,
    amount: Decimal | None,
    quantity_label: str,
    unit: str,
) -> None:
    """Quantity x rate must be the amount (to the fen) when all three are given."""
    if quantity is None or rate is None or amount is None:
        return
    expected = (quantity * rate).quantize(_CENT, rounding=ROUND_HALF_UP)
    if expected != amount:
        p.add(
            p.data.where(row.line),
            tr(
                "金额 {a} 元与{q} {n} {u} × 标准 {r} 元 = {e} 元不符，请核对",
                "the amount {a} does not match {q} {n} {u} x rate {r} = {e}; please check",
                a=format_amount(amount),
                q=quantity_label,
                n=quantity_text(quantity),
                u=unit,
                r=format_amount(rate),
                e=format_amount(expected),
            ),
        )


def quantity_text(value: Decimal) -> str:
    """10.50 -> 10.5, 12.00 -> 12: a quantity as it reads on a list."""
    text = format(value.normalize(), "f")
    return text


def days_field(p: Problems, spec: Spec, default: int) -> int:
    raw = p.field(spec)
    if not raw:
        return default
    m = re.fullmatch(r"\s*(\d{1,3})\s*(?:天|日|个工作日)?\s*", raw)
    if not m or not 1 <= int(m[1]) <= 365:
        p.add(
            p.data.field_where(spec.key, spec.label),
            tr(
                "“{v}”不是天数，请写 7 或 7天",
                "'{v}' is not a number of days; write 7",
                v=raw,
            ),
        )
        return default
    return int(m[1])


def masked_ids(rows: Sequence[Row], key: str) -> dict[int, str]:
    """Row line -> the masked ID (the template masks the whole column, whatever it holds)."""
    return {r.line: mask_id(r.get(key)) for r in rows if r.get(key)}


def duplicates(rows: Sequence[Row], *, keys: Sequence[str], what: Text) -> list[Text]:
    """Warnings for rows that repeat the same household (and item): a double payment?"""
    seen: dict[tuple[str, ...], list[int]] = {}
    for r in rows:
        ident = tuple(r.get(k) for k in keys)
        if all(ident):
            seen.setdefault(ident, []).append(r.line)
    return [
        tr(
            "{what}“{v}”出现了 {n} 次（第 {lines} 行），请确认不是重复登记",
            "{what} '{v}' appears {n} times (lines {lines}); make sure it is not a duplicate",
            what=what,
            v=" / ".join(ident),
            n=len(lines),
            lines="、".join(map(str, lines)),
        )
        for ident, lines in seen.items()
        if len(lines) > 1
    ]
