"""Amounts as written in village accounts: Decimal, never float."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from content_queue.amounts import AmountError, format_amount, parse_amount, parse_quantity


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1234.5", "1234.50"),
        ("1,234.50", "1234.50"),
        ("1234.5元", "1234.50"),
        ("￥1,234.50", "1234.50"),
        ("¥ 12", "12.00"),
        ("１２３４．５", "1234.50"),
        ("1.2万", "12000.00"),
        ("1.2万元", "12000.00"),
        ("1 234.50", "1234.50"),
        ("0.1", "0.10"),
        ("300元整", "300.00"),
    ],
)
def test_written_amounts_parse_exactly(raw: str, value: str) -> None:
    parsed = parse_amount(raw)
    assert isinstance(parsed, Decimal) and parsed == Decimal(value)
    assert str(parsed) == value


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("12.345", "两位小数"),
        ("1,23.00", "不是数字"),
        ("十二元", "不是数字"),
        ("-5", "不能为负数"),
        ("", "不是数字"),
        ("1e3", "不是数字"),
    ],
)
def test_bad_amounts_say_why(raw: str, why: str) -> None:
    with pytest.raises(AmountError) as err:
        parse_amount(raw)
    assert why in err.value.text.render("zh")


def test_negative_only_where_allowed_and_quantities_keep_precision() -> None:
    assert parse_amount("-200.00", allow_negative=True) == Decimal("-200")
    assert parse_quantity("8.125亩", unit_words=("亩",)) == Decimal("8.125")
    with pytest.raises(AmountError):
        parse_quantity("-1")


def test_format_amount_is_a_ledger_figure() -> None:
    assert format_amount(Decimal("1234567.5")) == "1,234,567.50"
    assert format_amount(Decimal("0")) == "0.00"
    assert format_amount(Decimal("-3210")) == "-3,210.00"


@given(st.decimals(min_value=0, max_value=10**12, places=2, allow_nan=False))
def test_format_then_parse_round_trips(value: Decimal) -> None:
    assert parse_amount(format_amount(value)) == value
    assert parse_amount(format_amount(value) + "元") == value
