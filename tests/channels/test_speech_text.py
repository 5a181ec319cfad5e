"""What the loudspeakers say: the text normaliser, table sentences and the spoken script."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels._speech_text import (
    CLOSING,
    EMERGENCY_CLOSING,
    EMERGENCY_OPENING,
    normalise,
    script_sentences,
    spoken_script,
    table_sentences,
)

# (written, said): phrasing taken from real village notices (公示, 通知, 预警).
CASES: list[tuple[str, str]] = [
    # money
    ("本月支出12,345.60元", "本月支出一万二千三百四十五元六角"),
    ("每户补贴100元", "每户补贴一百元"),
    ("项目总投资3.5万元", "项目总投资三点五万元"),
    ("奖励资金￥1,200.00", "奖励资金一千二百元"),
    ("合计¥3.5万", "合计三点五万元"),
    ("玉米收购价1.01元", "玉米收购价一元零一分"),
    ("每斤0.05元", "每斤五分"),
    ("工时费5.5块", "工时费五块五角"),
    ("每人缴纳10元", "每人缴纳十元"),
    ("补助2元", "补助两元"),
    ("奖补资金2000元", "奖补资金两千元"),
    ("耕地地力保护补贴120.5元/亩", "耕地地力保护补贴一百二十元五角每亩"),
    ("上级拨款1,200万元", "上级拨款一千二百万元"),
    ("冲减-500元", "冲减负五百元"),
    ("每人补助100-200元", "每人补助一百到二百元"),
    # plain numbers, decimals, negatives, ordinals
    ("全村共有农户1,286户", "全村共有农户一千二百八十六户"),
    ("种植面积3.50亩", "种植面积三点五亩"),
    ("2026年第3季度", "二零二六年第三季度"),
    ("第12号文件", "第十二号文件"),
    ("No.12公告", "第十二号公告"),
    ("农户2户", "农户两户"),
    ("每周2次", "每周两次"),
    ("第2周", "第二周"),
    ("007号档案", "零零七号档案"),
    ("QQ群：123456789", "QQ群：幺二三四五六七八九"),
    # percentages, fractions, ratios
    ("参保率达98.6%", "参保率达百分之九十八点六"),
    ("同比增长12.5%", "同比增长百分之十二点五"),
    ("补贴比例10%-20%", "补贴比例百分之十到百分之二十"),
    ("降幅10-20%", "降幅百分之十到百分之二十"),
    ("出生率3‰", "出生率千分之三"),
    ("三分之一以上", "三分之一以上"),
    ("超过1/3的村民代表同意", "超过三分之一的村民代表同意"),
    ("按3:7比例分配收益", "按三比七比例分配收益"),
    ("规格3×4米", "规格三乘四米"),
    # ranges
    ("3-5天内办结", "三到五天内办结"),
    ("3~5个工作日", "三到五个工作日"),
    ("2026-2027年度", "二零二六到二零二七年度"),
    ("每周1-2次", "每周一到两次"),
    # dates, weekdays, times
    ("2026年12月1日（周二）上午8:30", "二零二六年十二月一日，周二，上午八点三十分"),
    ("公示期：2026-12-01至2026-12-07", "公示期：二零二六年十二月一日至二零二六年十二月七日"),
    ("请于12/1前到村委会登记", "请于十二月一日前到村委会登记"),
    ("12/25（周五）", "十二月二十五日，周五"),
    ("截至2026.12", "截至二零二六年十二月"),
    ("12月01日", "十二月一日"),
    ("本月1号起", "本月一号起"),
    ("星期1上午", "星期一上午"),
    ("周1至周5", "周一至周五"),
    ("周一-周五", "周一到周五"),
    ("早上08:05集合", "早上八点零五分集合"),
    ("12:00前交齐", "十二点前交齐"),
    ("下午2:00开会", "下午两点开会"),
    ("办公时间8:30-11:30", "办公时间八点三十分到十一点三十分"),
    ("下午2点", "下午两点"),
    ("上午8时30分", "上午八时三十分"),
    ("12月1日-5日", "十二月一日到五日"),
    # temperatures and units
    ("最低气温零下6℃", "最低气温零下六摄氏度"),
    ("最低气温-6℃", "最低气温零下六摄氏度"),
    ("气温-6~3℃", "气温零下六到三摄氏度"),
    ("最高气温38°C", "最高气温三十八摄氏度"),
    ("气温-3度", "气温零下三度"),
    ("新建仓库120㎡", "新建仓库一百二十平方米"),
    ("硬化面积20m²", "硬化面积二十平方米"),
    ("蓄水池300立方米", "蓄水池三百立方米"),
    ("修路5km", "修路五公里"),
    ("化肥100kg", "化肥一百千克"),
    ("种子2.5公斤", "种子二点五公斤"),
    ("降雨量50~80毫米，局部100mm以上", "降雨量五十到八十毫米，局部一百毫米以上"),
    # phones and hotlines
    ("拨打12345热线", "拨打幺二三四五热线"),
    ("12345政务服务便民热线", "幺二三四五政务服务便民热线"),
    ("扶贫监督举报电话12317", "扶贫监督举报电话幺二三幺七"),
    ("如遇火情请拨打119", "如遇火情请拨打幺幺九"),
    ("报警110，急救120", "报警幺幺零，急救幺二零"),
    ("全村共110户", "全村共一百一十户"),
    ("联系电话：0635-1234567", "联系电话：零六三五，幺二三四五六七"),
    ("咨询电话（0635）8123456", "咨询电话零六三五，八幺二三四五六"),
    ("联系人：王主任 13812345678", "联系人：王主任，幺三八，幺二三四，五六七八"),
    ("手机+86 13912345678", "手机幺三九，幺二三四，五六七八"),
    ("客服400-123-4567", "客服四零零，幺二三，四五六七"),
    ("0635-1234567转8001", "零六三五，幺二三四五六七转八零零幺"),
    # personal numbers: never in full
    ("138****1234", "尾号幺二三四的手机号"),
    ("身份证号：370781********1234", "身份证号：尾号一二三四"),
    ("张三 370781********002X", "张三，尾号零零二叉的身份证号"),
    ("户主37078119900101107X已登记", "户主尾号一零七叉的身份证号已登记"),
    ("旧证号370781900101123", "旧证号尾号一一二三的身份证号"),
    ("银行卡号6217 0012 3456 7890 123", "银行卡号尾号零一二三"),
    ("账户6222021234567890128", "账户尾号零一二八"),
    ("存折6222021234567890129", "存折尾号零一二九的号码"),
    ("王某 138xxxx5678", "王某，尾号五六七八的手机号"),
    # list markers, bullets, decoration, links
    (
        "所需材料：\n1. 身份证\n2、户口本\n（3）申请表",
        "所需材料：第一，身份证。第二，户口本。第三，申请表",
    ),
    ("①备好手电筒；②远离河道", "第一，备好手电筒；第二，远离河道"),
    ("1️⃣报名 2️⃣审核", "第一，报名，第二，审核"),
    ("• 低保户\n- 五保户\n* 脱贫户", "低保户。五保户。脱贫户"),
    ("★★★重要通知★★★", "重要通知"),
    ("【紧急】防汛通知", "紧急，防汛通知"),
    ("通知\n======\n明天停水", "通知。明天停水"),
    ("报名→审核→公示", "报名，审核，公示"),
    ("😀今晚开会🎉🎉", "今晚开会"),
    ("详见https://www.gov.cn/zhengce/a.html", "网址见通知原文"),
    ("网址：www.example.gov.cn", "网址见通知原文"),
    ("邮箱：cunwei@163.com", "电子邮箱见通知原文"),
    # width, punctuation, whitespace
    ("补贴１２３４５元", "补贴一万二千三百四十五元"),
    ("ＡＢＣ组", "ABC组"),
    ("请注意!!!明天停电...", "请注意！明天停电。"),
    ("身份证/户口本", "身份证或户口本"),
    ("村委会   二楼", "村委会二楼"),
    ("Wi Fi 密码", "Wi Fi密码"),
]


@pytest.mark.parametrize(("written", "said"), CASES, ids=[c[0][:24] for c in CASES])
def test_normalise_cases(written: str, said: str) -> None:
    assert normalise(written) == said


def test_case_table_is_large() -> None:
    assert len(CASES) >= 60
    assert len({w for w, _ in CASES}) == len(CASES)


@pytest.mark.parametrize(("written", "said"), CASES, ids=[c[0][:24] for c in CASES])
def test_normalise_is_idempotent_on_cases(written: str, said: str) -> None:
    assert normalise(said) == said


# --- personal numbers ---------------------------------------------------------------------

_SPOKEN = str.maketrans("0123456789", "零一二三四五六七八九")


def _gb11643(body17: str) -> str:
    weights = [pow(2, 17 - i, 11) for i in range(17)]
    check = (12 - sum(int(d) * w for d, w in zip(body17, weights, strict=True)) % 11) % 11
    return body17 + ("X" if check == 10 else str(check))


def test_check_digit_helper_matches_a_published_example() -> None:
    # The worked example of GB 11643-1999 appendix: 11010519491231002X.
    assert _gb11643("11010519491231002") == "11010519491231002X"


resident_ids = st.builds(
    lambda area, year, month, day, seq: _gb11643(f"{area}{year}{month:02d}{day:02d}{seq:03d}"),
    st.integers(110000, 659999).map(str),
    st.integers(1930, 2025),
    st.integers(1, 12),
    st.integers(1, 28),
    st.integers(0, 999),
)
mobiles = st.builds(
    lambda second, rest: f"1{second}{rest:09d}",
    st.sampled_from("3456789"),
    st.integers(0, 10**9 - 1),
)
chinese = st.text(
    alphabet="村民户主张王李身份证号码手机联系电话低保补贴发放公示请于前到村委会：，。", max_size=12
)
separators = st.text(alphabet="村民户主低保补贴：，。 ", min_size=1, max_size=6)


def _spoken_windows(number: str, width: int = 7) -> set[str]:
    said = number.upper().replace("X", "叉").translate(_SPOKEN)
    windows = {said[i : i + width] for i in range(len(said) - width + 1)}
    return windows | {w.replace("一", "幺") for w in windows}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resident_ids, mobiles, chinese, separators, chinese)
def test_resident_ids_are_never_read_out(
    resident_id: str, mobile: str, a: str, b: str, c: str
) -> None:
    said = normalise(f"{a}{resident_id}{b}{mobile}{c}")
    assert not re.search(r"\d", said)
    for window in _spoken_windows(resident_id):
        assert window not in said
    assert "尾号" + resident_id[-4:].upper().replace("X", "叉").translate(_SPOKEN)[:3] in said
    # The mobile number is a contact number: it is read out, 1 as 幺.
    assert mobile[:3].translate(_SPOKEN).replace("一", "幺") in said


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(resident_ids, st.sampled_from([" ", "", "：", "，"]), chinese)
def test_ids_in_table_cells_and_old_ids(resident_id: str, sep: str, text: str) -> None:
    old = resident_id[:6] + resident_id[8:17]  # the 15-digit form: 2-digit year, no check digit
    said = normalise(f"{text}{sep}{old}{sep}{resident_id.lower()}")
    assert not re.search(r"\d", said)
    for number in (old, resident_id):
        for window in _spoken_windows(number):
            assert window not in said


bodies = st.one_of(
    st.text(),
    st.text(
        alphabet="0123456789０１,.-:/~%℃°C元万年月日号￥*xX \n（）①电话拨打热线亩kgm²周第零下",
        max_size=40,
    ),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_no_digits_survive_and_normalise_is_idempotent(text: str) -> None:
    said = normalise(text)
    assert not re.search(r"\d", said)
    assert normalise(said) == said


# --- tables -------------------------------------------------------------------------------

FINANCE = {
    "caption": "2026年第三季度村级财务收支明细",
    "columns": ["日期", "项目", "收入（元）", "支出（元）", "备注"],
    "rows": [
        ["2026-07-05", "上级转移支付", "12,000.00", "", ""],
        ["2026-07-18", "村道路灯维修", "", "3,210.00", "发票3张"],
        ["2026-08-02", "集体土地租金", "345.60", "", ""],
        ["2026-09-10", "办公用品", "", "5,000", ""],
        ["", "合计", "99,999.00", "1.00", "抄错的合计行"],
    ],
}


def test_finance_table_reads_rows_and_computes_totals() -> None:
    assert table_sentences(FINANCE) == [
        "二零二六年第三季度村级财务收支明细。",
        "二零二六年七月五日，上级转移支付，收入一万二千元。",
        "二零二六年七月十八日，村道路灯维修，支出三千二百一十元。",
        "二零二六年八月二日，集体土地租金，收入三百四十五元六角。",
        "二零二六年九月十日，办公用品，支出五千元。",
        # Computed from the rows; the table's own (wrong) total row is not read.
        "收入合计一万二千三百四十五元六角，支出合计八千二百一十元。",
    ]


def test_finance_table_without_dates_and_in_ten_thousands() -> None:
    table = {
        "columns": ["项目", "收入（万元）", "支出（万元）"],
        "rows": [["道路硬化", "", "12.5"], ["光伏收益", "3.5", ""], ["小计", "3.5", "12.5"]],
    }
    assert table_sentences(table) == [
        "道路硬化，支出十二点五万元。",
        "光伏收益，收入三点五万元。",
        "收入合计三点五万元，支出合计十二点五万元。",
    ]


def test_household_income_column_is_not_a_finance_table() -> None:
    table = {
        "columns": ["户主", "人均纯收入（元）", "监测类型"],
        "rows": [["张三", "6800", "脱贫不稳定户"]],
    }
    assert table_sentences(table) == [
        "户主：张三，人均纯收入：六千八百元，监测类型：脱贫不稳定户。"
    ]


def test_subsidy_list_masks_ids_and_adds_header_units() -> None:
    table = {
        "caption": "耕地地力保护补贴发放名单",
        "columns": ["户主", "身份证号", "面积（亩）", "补贴金额（元）", "联系电话"],
        "rows": [
            ["张三", "370781********1234", "3.5", "421.75", "138****5678"],
            ["李四", "370781199001011237", "12", "1,446", ""],
        ],
    }
    said = table_sentences(table)
    assert said == [
        "耕地地力保护补贴发放名单。",
        "户主：张三，身份证号：尾号一二三四，面积：三点五亩，补贴金额：四百二十一元七角五分，"
        "联系电话：尾号五六七八。",
        "户主：李四，身份证号：尾号一二三七，面积：十二亩，补贴金额：一千四百四十六元。",
    ]


def test_long_tables_are_capped() -> None:
    rows = [[f"{i}号户", "100"] for i in range(1, 61)]
    said = table_sentences({"columns": ["户名", "补贴（元）"], "rows": rows}, max_rows=50)
    assert len(said) == 51
    assert said[0] == "户名：一号户，补贴：一百元。"
    assert said[-1] == "其余十项见通知原文。"
    finance = {"columns": ["项目", "支出"], "rows": [[f"第{i}笔", "10"] for i in range(1, 61)]}
    said = table_sentences(finance)
    assert said[-2:] == ["其余十项见通知原文。", "支出合计六百元。"]


def test_empty_table_parts() -> None:
    assert table_sentences({"columns": [], "rows": []}) == []
    assert table_sentences({"caption": "说明", "columns": ["a"], "rows": [[""]]}) == ["说明。"]
    finance = {"columns": ["项目", "收入", "支出"], "rows": [["", "", ""], ["★", "-", "—"]]}
    assert table_sentences(finance) == ["收入合计零元，支出合计零元。"]
    short_row = {
        "columns": ["月份", "摘要", "支出"],
        "rows": [["本月合计", "", "9"], ["3月", "电费"]],
    }
    assert table_sentences(short_row) == ["三月，电费。", "支出合计零元。"]


# --- the script ---------------------------------------------------------------------------


def test_script_structure() -> None:
    script = spoken_script(
        title="关于召开2026年村民代表大会的通知",
        body="定于12月5日（周五）下午2:30在村委会召开，请准时参加",
        category="meeting",
        priority="routine",
    )
    assert script == (
        "各位村民请注意，现在播送一则会议通知。"
        "关于召开二零二六年村民代表大会的通知。"
        "定于十二月五日，周五，下午两点三十分在村委会召开，请准时参加。" + CLOSING
    )
    assert script_sentences(script) == [
        "各位村民请注意，现在播送一则会议通知。",
        "关于召开二零二六年村民代表大会的通知。",
        "定于十二月五日，周五，下午两点三十分在村委会召开，请准时参加。",
        "以上通知，请相互转告。",
    ]


@pytest.mark.parametrize(
    ("category", "priority", "intro"),
    [
        ("village_finance", "routine", "各位村民请注意，现在公开本村财务收支情况。"),
        ("farm_subsidy", "routine", "各位村民请注意，现在播送一则惠农补贴公示。"),
        ("poverty_monitoring", "routine", "各位村民请注意，现在播送一则防返贫监测公示。"),
        ("social_insurance", "important", "各位村民请注意，现在播送一则社保医保通知。"),
        ("other", "routine", "各位村民请注意，现在播送一则通知。"),
        ("other", "important", "各位村民请注意，现在播送一则重要通知。"),
    ],
)
def test_category_intros(category: str, priority: str, intro: str) -> None:
    script = spoken_script(title="通知", body="内容", category=category, priority=priority)
    assert script == f"{intro}通知。内容。{CLOSING}"


@pytest.mark.parametrize(
    ("category", "priority"), [("emergency", "emergency"), ("other", "emergency")]
)
def test_emergency_script(category: str, priority: str) -> None:
    script = spoken_script(
        title="暴雨红色预警",
        body="预计今晚20:00起有特大暴雨，请沿河群众立即转移！值班电话：13912345678",
        category=category,
        priority=priority,
    )
    assert script.startswith("紧急通知！紧急通知！各位村民请注意：暴雨红色预警。")
    assert EMERGENCY_OPENING == "紧急通知！紧急通知！各位村民请注意："
    assert "今晚二十点起" in script
    assert "值班电话：幺三九，幺二三四，五六七八。" in script
    assert script.endswith(EMERGENCY_CLOSING)
    assert script_sentences(script)[:2] == ["紧急通知！", "紧急通知！"]


def test_finance_script_has_table_totals_and_repeat_hint() -> None:
    script = spoken_script(
        title="2026年第三季度财务公开",
        body="现将收支情况公开如下：",
        category="village_finance",
        priority="routine",
        table=FINANCE,
        repeat_hint=True,
    )
    assert "现将收支情况公开如下。二零二六年第三季度村级财务收支明细。" in script
    assert script.endswith(
        "收入合计一万二千三百四十五元六角，支出合计八千二百一十元。"
        "以上通知，请相互转告。下面再播送一遍。"
    )
    assert not re.search(r"\d", script)
    assert normalise(script) == script


def test_script_sentences_splits_long_sentences_at_commas() -> None:
    clause = "请各户按时缴纳医保费用，"
    script = "各位村民请注意。" + clause * 20 + "逾期不候。好。"
    pieces = script_sentences(script, max_chars=60)
    assert "".join(pieces) == script
    assert all(len(p) <= 60 for p in pieces)
    assert pieces[0] == "各位村民请注意。"
    assert all(p.endswith(("，", "。")) for p in pieces)
    assert script_sentences("一" * 250, max_chars=100) == ["一" * 100, "一" * 100, "一" * 50]
    assert script_sentences("") == []
