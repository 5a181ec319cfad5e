"""Personal data is found before publishing: fixed cases, generated data, false positives."""

from __future__ import annotations

import random
from datetime import date, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from content_queue.privacy import (
    find_personal_data,
    gb11643_check,
    luhn_ok,
    mask_text,
    scan_notice,
)

CASES = [
    # (text, kinds found, masked text)
    ("户主身份证号11010519491231002X", ["resident_id"], "户主身份证号110105********002X"),
    ("身份证：11010519491231002x。", ["resident_id"], "身份证：110105********002X。"),
    ("联系电话13812345678", ["mobile"], "联系电话138****5678"),
    ("手机 138 1234 5678", ["mobile"], "手机 138****5678"),
    ("手机138-1234-5678", ["mobile"], "手机138****5678"),
    ("微信同号+86 139-1234-5678", ["mobile"], "微信同号+86 139****5678"),
    ("全角１３８１２３４５６７８号码", ["mobile"], "全角138****5678号码"),
    ("卡号6222021234567890128", ["bank_card"], "卡号6222 **** **** **** 0128"),
    ("卡号 6222 0212 3456 7890 128", ["bank_card"], "卡号 6222 **** **** **** 0128"),
    ("旧证110105491231002", ["legacy_id"], "旧证110105*****1002"),
    ("电话：13812345678、13912345678", ["mobile", "mobile"], "电话：138****5678、139****5678"),
    # Not personal data: left exactly as written.
    ("2026年11月25日", [], None),
    ("2026-11-25 08:30", [], None),
    ("金额12,345.60元，合计1,234,567.89元", [], None),
    ("〔2026〕15号文件", [], None),
    ("服务热线12345，报警110", [], None),
    ("办公室电话0531-88886666", [], None),
    ("耕地面积1234.5亩，涉及356户1234人", [], None),
    ("编号12345678901（以12开头，不是手机号）", [], None),
    ("身份证号11010519491231002Y写错了", [], None),
    ("号码110105194912310021校验位不对", [], None),
    ("卡号6222021234567890129校验不过", [], None),
]


@pytest.mark.parametrize(("text", "kinds", "masked"), CASES)
def test_fixed_cases(text: str, kinds: list[str], masked: str | None) -> None:
    found = find_personal_data(text)
    assert [f.kind for f in found] == kinds
    assert mask_text(text, found) == (masked if masked is not None else text)


def test_gb11643_worked_example_and_luhn() -> None:
    assert gb11643_check("11010519491231002") == "X"  # GB 11643-1999 appendix example
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")


def test_scan_notice_names_where_each_finding_is() -> None:
    scan = scan_notice(
        "补贴名单",
        "如有疑问请联系13812345678。",
        {
            "columns": ["户主", "身份证号", "金额"],
            "rows": [["张三", "11010519491231002X", "1,200"]],
        },
    )
    assert [(f.kind, f.where) for f in scan.findings] == [
        ("mobile", "body"),
        ("resident_id", "table[1,2]"),
    ]
    assert scan.table is not None and scan.table["rows"] == [
        ["张三", "110105********002X", "1,200"]
    ]
    assert (
        scan.findings[1].describe().render("zh")
        == "表格第 1 行第 2 列中有身份证号（110105********002X）"
    )


# -- generated personal data, embedded in prose and tables -------------------------------

FULLWIDTH = str.maketrans("0123456789X", "０１２３４５６７８９Ｘ")


@st.composite
def resident_ids(draw: st.DrawFn) -> str:
    region = draw(st.integers(110000, 829999))
    born = draw(st.dates(date(1920, 1, 1), date(2025, 12, 31)))
    seq = draw(st.integers(0, 999))
    first17 = f"{region}{born:%Y%m%d}{seq:03d}"
    check = gb11643_check(first17)
    return first17 + (check.lower() if draw(st.booleans()) else check)


@st.composite
def legacy_ids(draw: st.DrawFn) -> str:
    region = draw(st.integers(110000, 829999))
    born = draw(st.dates(date(1920, 1, 1), date(1999, 12, 31)))
    return f"{region}{born:%y%m%d}{draw(st.integers(0, 999)):03d}"


@st.composite
def mobiles(draw: st.DrawFn) -> str:
    second = draw(st.sampled_from("3456789"))
    return f"1{second}{draw(st.integers(0, 999_999_999)):09d}"


@st.composite
def bank_cards(draw: st.DrawFn) -> str:
    n = draw(st.integers(16, 19))
    body = str(draw(st.integers(1, 9))) + "".join(
        str(draw(st.integers(0, 9))) for _ in range(n - 2)
    )
    for check in "0123456789":
        if luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable")


@st.composite
def formatted(draw: st.DrawFn, number: st.SearchStrategy[str]) -> tuple[str, str]:
    """(digits, how they are written): plain, full-width, or split by spaces or hyphens."""
    digits = draw(number)
    style = draw(st.sampled_from(["plain", "fullwidth", "spaces", "hyphens"]))
    if style == "fullwidth":
        return digits, digits.upper().translate(FULLWIDTH)
    if style in ("spaces", "hyphens"):
        sep = " " if style == "spaces" else "-"
        cuts = [3, 7] if len(digits) == 11 else [6, 14] if len(digits) == 18 else [4, 8, 12]
        parts = [digits[a:b] for a, b in zip([0, *cuts], [*cuts, len(digits)], strict=True)]
        return digits, sep.join(p for p in parts if p)
    return digits, digits


PROSE = st.sampled_from(
    [
        "经村民代表会议讨论，",
        "现将名单公示如下：",
        "户主张三，",
        "如有异议请联系村委会，",
        "联系人：",
    ]
)
ANY_NUMBER = st.one_of(resident_ids(), legacy_ids(), mobiles(), bank_cards())


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(before=PROSE, after=PROSE, item=formatted(ANY_NUMBER))
def test_generated_personal_data_in_prose_is_always_found(
    before: str, after: str, item: tuple[str, str]
) -> None:
    digits, written = item
    text = f"{before}{written}，{after}"
    (found,) = find_personal_data(text)
    assert found.digits == digits.upper()
    masked = mask_text(text, [found])
    assert digits.upper() not in masked.upper().replace(" ", "").replace("-", "")


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(mobiles(), resident_ids(), bank_cards()), min_size=1, max_size=5))
def test_generated_tables_are_all_found_and_masked(rows: list[tuple[str, str, str]]) -> None:
    table = {"columns": ["电话", "身份证", "卡号"], "rows": [list(r) for r in rows]}
    scan = scan_notice("名单", "见附表", table)
    assert len(scan.findings) == 3 * len(rows)
    flat = " ".join(c for r in scan.table["rows"] for c in r) if scan.table else ""
    for r in rows:
        for number in r:
            assert number.upper() not in flat.upper()


def _ordinary(rng: random.Random) -> str:
    """Numbers a notice is full of that are not personal data."""
    kind = rng.randrange(6)
    if kind == 0:
        d = date(2020, 1, 1) + timedelta(days=rng.randrange(3000))
        return rng.choice([f"{d:%Y年%m月%d日}", f"{d:%Y-%m-%d}", f"{d:%Y%m%d}"])
    if kind == 1:
        return f"{rng.randrange(1, 10_000_000):,}.{rng.randrange(100):02d}元"
    if kind == 2:
        return f"〔{rng.randrange(2000, 2030)}〕{rng.randrange(1, 300)}号"
    if kind == 3:  # phone-like but not a mobile: 11 digits starting 10/11/12, landlines
        return rng.choice(
            [
                f"1{rng.randrange(3)}{rng.randrange(10**9):09d}",
                f"0{rng.randrange(10, 999)}-{rng.randrange(10**7, 10**8)}",
                f"{rng.randrange(10**4, 10**6)}",
            ]
        )
    if kind == 4:
        return f"{rng.randrange(1, 5000)}亩{rng.randrange(1, 999)}户"
    return f"{rng.randrange(10**11, 10**12)}"  # a 12-digit account or order number


def test_false_positive_rate_on_ordinary_numbers_is_under_one_percent() -> None:
    rng = random.Random(20261126)
    samples = [f"经核实，{_ordinary(rng)}，特此公示。" for _ in range(5000)]
    flagged = sum(1 for s in samples if find_personal_data(s))
    rate = flagged / len(samples)
    print(f"false-positive rate: {rate:.2%} ({flagged}/{len(samples)})")
    assert rate < 0.01


def test_a_long_run_of_numbers_is_scanned_in_bounded_time() -> None:
    text = " ".join(str(i % 97) for i in range(20000))  # a table pasted as text
    assert find_personal_data(text) == []
