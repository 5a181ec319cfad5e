"""Money as people write it in village accounts: parsed to Decimal, never float, and shown back.

Accepted: ``1234.5``, ``1,234.50``, ``1234.5元``, ``￥1,234.50``, ``1.2万`` / ``1.2万元``
(12,000.00), full-width digits (``１２３４．５``), spaces between digit groups, and a leading
minus where the caller allows it. At most two decimal places (fen) after conversion.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from content_queue.i18n import Text, tr

__all__ = ["AmountError", "format_amount", "parse_amount", "parse_quantity"]

_FULLWIDTH = str.maketrans("０１２３４５６７８９．，－＋", "0123456789.,-+")
_CENT = Decimal("0.01")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


class AmountError(ValueError):
    """A cell that is not an amount; ``text`` says why in both languages."""

    def __init__(self, text: Text) -> None:
        self.text = text
        super().__init__(text.render("en"))


def _number(raw: str, *, unit_words: tuple[str, ...]) -> tuple[Decimal, bool]:
    """The number in ``raw`` and whether it was written in 万 (ten thousands)."""
    text = raw.translate(_FULLWIDTH).strip()
    text = re.sub(r"^[￥¥]\s*|^RMB\s*", "", text, flags=re.IGNORECASE)
    wan = False
    for word in unit_words:
        if text.endswith(word):
            text = text[: -len(word)].rstrip()
            break
    if text.endswith("万"):
        text, wan = text[:-1].rstrip(), True
    text = re.sub(r"(?<=\d)[ \u00a0\u3000](?=\d{3}\b)", ",", text)  # "1 234.50"
    if not _NUMBER.fullmatch(text):
        raise AmountError(tr("“{v}”不是数字", "'{v}' is not a number", v=raw.strip()))
    try:
        value = Decimal(text.replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the pattern admits only valid decimals
        raise AmountError(tr("“{v}”不是数字", "'{v}' is not a number", v=raw.strip())) from None
    return (value * 10000 if wan else value), wan


def parse_amount(raw: str, *, allow_negative: bool = False) -> Decimal:
    """An amount in yuan with at most two decimal places, or AmountError."""
    value, _ = _number(raw, unit_words=("元整", "元", "圆"))
    if value != value.quantize(_CENT):
        raise AmountError(
            tr(
                "金额“{v}”超过两位小数（精确到分）",
                "the amount '{v}' has more than two decimal places (fen)",
                v=raw.strip(),
            )
        )
    if value < 0 and not allow_negative:
        raise AmountError(
            tr("金额“{v}”不能为负数", "the amount '{v}' must not be negative", v=raw.strip())
        )
    return value.quantize(_CENT)


def parse_quantity(raw: str, *, unit_words: tuple[str, ...] = ()) -> Decimal:
    """A non-negative quantity (area in mu, persons, tons) as written, or AmountError."""
    value, _ = _number(raw, unit_words=unit_words)
    if value < 0:
        raise AmountError(
            tr("数量“{v}”不能为负数", "the quantity '{v}' must not be negative", v=raw.strip())
        )
    return value


def format_amount(value: Decimal) -> str:
    """``1,234.50``: thousands separators and exactly two decimals, as on a ledger."""
    return f"{value.quantize(_CENT, rounding=ROUND_HALF_UP):,.2f}"
