"""LED rendering: substitutions, the encoding check, pages that fit, timing and styling."""

from __future__ import annotations

import json
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels._led_render import (
    EMERGENCY_PREFIX,
    BoardSpec,
    Encoding,
    EncodingProblem,
    Page,
    Replacement,
    display_columns,
    paginate,
    prepare_text,
    render_pages_json,
)
from content_queue.i18n import Text

NO_LINE_START = set("，。、；：？！）」』】〕〉》”’…%％,.;:!?)")
NO_LINE_END = set("（「『【〔〈《“‘([")


def spec(cols: int, lines: int, encoding: Encoding = "gb2312", **kw: object) -> BoardSpec:
    return BoardSpec(chars_per_line=cols, lines=lines, encoding=encoding, **kw)  # type: ignore[arg-type]


def body_lines(pages: list[Page]) -> list[str]:
    return [line for page in pages if page.kind == "body" for line in page.lines]


def assert_fits(pages: list[Page], board: BoardSpec) -> None:
    for page in pages:
        assert 1 <= len(page.lines) <= board.lines, page
        for line in page.lines:
            assert line.strip(), page
            assert display_columns(line) <= board.chars_per_line, (line, board)
            line.encode(board.encoding)


def assert_reconstructs(lines: list[str], prepared: str) -> None:
    """The lines are the prepared text in order, minus only whitespace at the line breaks."""
    pos = 0
    for line in lines:
        assert prepared.startswith(line, pos), (line, prepared[pos:])
        pos += len(line)
        while pos < len(prepared) and prepared[pos] in " \n":
            pos += 1
    assert pos == len(prepared)


def assert_kinsoku(lines: list[str]) -> None:
    for line in lines[1:]:
        assert line[0] not in NO_LINE_START, lines
    for line in lines[:-1]:
        assert line[-1] not in NO_LINE_END and not 0x2460 <= ord(line[-1]) <= 0x24FF, lines


def line_holding(lines: list[str], piece: str) -> str:
    found = [line for line in lines if piece in line]
    assert found, f"{piece!r} is split across lines: {lines}"
    return found[0]


# -- layout: real notices on real board sizes -------------------------------------------

LAYOUT_CASES = [
    pytest.param(
        "本村2026年11月收入合计12,345.60元，支出合计8,200.00元，结余4,145.60元。",
        spec(8, 2),
        ("12,345.60元", "8,200.00元", "4,145.60元"),
        id="finance-amounts",
    ),
    pytest.param(
        "以下农户领取耕地地力保护补贴：张建国、李秀英、王德福、赵红梅、刘志强、陈桂兰、杨明、周玉珍。",
        spec(12, 2),
        ("张建国", "李秀英", "王德福", "赵红梅", "刘志强", "陈桂兰", "杨明", "周玉珍"),
        id="subsidy-names",
    ),
    pytest.param(
        "会议定于2026-12-01 09:30在村委会二楼召开，请准时参加。",
        spec(6, 3),
        ("2026-12-01", "09:30"),
        id="iso-date-time",
    ),
    pytest.param(
        "请于2026年12月15日前到村委会办理城乡居民医保缴费，逾期视为自动放弃。",
        spec(8, 2),
        ("2026年12月15日",),
        id="chinese-date",
    ),
    pytest.param(
        "停水通知：12月3日8时30分至17时因管网维修停水，请提前储水。",
        spec(8, 2),
        ("12月3日", "8时30分", "17时"),
        id="chinese-time",
    ),
    pytest.param(
        "详情请访问https://www.example.gov.cn/notice/2026/12/01/detail?id=12345查看。",
        spec(10, 2),
        ("2026/12/01", "example", "detail", "12345"),
        id="long-url",
    ),
    pytest.param(
        "村民大会，今晚七点举行，请各户派代表参加。",
        spec(4, 3),
        (),
        id="comma-never-starts-line",
    ),
    pytest.param(
        "村委会通知：“明天全天停电。”请相互转告。",
        spec(6, 2),
        ("电。”",),
        id="closing-quote",
    ),
    pytest.param(
        "本次补贴（每亩120元）将直接发放到社保卡账户。",
        spec(5, 2),
        ("120元",),
        id="opening-bracket",
    ),
    pytest.param(
        "防汛抗旱工作……关系到全村——每一户的安全。",
        spec(7, 2),
        ("……", "――"),
        id="ellipsis-dash",
    ),
    pytest.param(
        "Please scan the QR code at the village committee gate to register.",
        spec(10, 2, "utf-8"),
        ("Please", "village", "committee", "register."),
        id="english-words",
    ),
    pytest.param(
        "村委会新装了WiFi，名称Village-Office，密码12345678。",
        spec(8, 2),
        ("WiFi", "Village-Office", "12345678"),
        id="ascii-in-chinese",
    ),
    pytest.param(
        "咨询电话：0531-87654321，联系人手机138****1234。",
        spec(8, 2),
        ("0531-87654321", "138****1234"),
        id="phone-numbers",
    ),
    pytest.param(
        "今年粮食增产15.5%，农民人均可支配收入增长8.2%。",
        spec(6, 2),
        ("15.5%", "8.2%"),
        id="percentages",
    ),
    pytest.param(
        "请买买提·艾力于本周五到村委会领取补贴。",
        spec(5, 2),
        ("提・艾",),
        id="middle-dot-name",
    ),
    pytest.param(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEFGHIJ",
        spec(4, 3),
        (),
        id="hard-break-last-resort",
    ),
    pytest.param(
        "补贴金额：１２，３４５元，请核对。",
        spec(8, 2),
        ("１２，３４５元",),
        id="full-width-number",
    ),
    pytest.param(
        "办理时请①带好身份证；②带好户口本；③带好银行卡。",
        spec(5, 2),
        ("①带", "②带", "③带"),
        id="enumerators",
    ),
    pytest.param(
        "县气象台发布暴雨红色预警：预计未来3小时降雨量将达100毫米以上，请立即转移到安全地带！",
        spec(16, 2),
        ("3小时", "100毫米"),
        id="weather-warning",
    ),
    pytest.param(
        "收入12,345.60元",
        spec(4, 1),
        (),
        id="narrow-board-breaks-number-last",
    ),
    pytest.param(
        "第一条：每户限报一人。\n第二条：报名截止到2026年12月20日。\n第三条：咨询电话12345。",
        spec(10, 3),
        ("第一条：", "第二条：", "第三条：", "2026年12月20日"),
        id="paragraphs",
    ),
    pytest.param(
        "村集体经济收入：土地流转费56,000.00元、光伏发电收益23,450.75元、厂房租金18,000.00元。",
        spec(10, 4),
        ("56,000.00元", "23,450.75元", "18,000.00元"),
        id="collective-income",
    ),
]


@pytest.mark.parametrize(("body", "board", "whole"), LAYOUT_CASES)
def test_layout(body: str, board: BoardSpec, whole: tuple[str, ...]) -> None:
    pages = paginate("通知", body, board, priority="routine")
    assert_fits(pages, board)
    lines = body_lines(pages)
    prepared, _ = prepare_text(body, board.encoding)
    assert_reconstructs(lines, prepared)
    if board.chars_per_line >= 5:
        assert_kinsoku(lines)
    for piece in whole:
        line_holding(lines, piece)


def test_a_comma_is_pulled_back_with_its_character() -> None:
    lines = body_lines(paginate("通知", "村民大会，今晚举行。", spec(4, 3), priority="routine"))
    assert lines == ["村民大", "会，今晚", "举行。"]


def test_paragraphs_start_new_lines() -> None:
    body = "第一条：每户限报一人。\n第二条：截止日期另行通知。"
    lines = body_lines(paginate("通知", body, spec(16, 2), priority="routine"))
    assert lines == ["第一条：每户限报一人。", "第二条：截止日期另行通知。"]


def test_a_long_url_starts_its_own_line_and_breaks_after_separators() -> None:
    url = "https://www.example.gov.cn/notice/2026/12/01/detail?id=12345"
    lines = body_lines(paginate("通知", f"下载地址：{url}", spec(10, 4), priority="routine"))
    assert lines[0] == "下载地址："
    assert "".join(lines[1:]) == url
    for line in lines[1:-1]:
        assert line[-1] in "/.-_=&?#", lines


# -- prepare_text: documented substitutions ----------------------------------------------

PREPARE_CASES = [
    pytest.param(
        "全角标点，。、；：？！“”‘’（）《》【】……",
        "gb2312",
        "全角标点，。、；：？！“”‘’（）《》【】……",
        [],
        id="full-width-punctuation-kept",
    ),
    pytest.param(
        "今晚停电😀请做好准备",
        "gb2312",
        "今晚停电请做好准备",
        [Replacement("😀", "", "emoji")],
        id="emoji",
    ),
    pytest.param(
        "今晚停电😀请做好准备",
        "utf-8",
        "今晚停电请做好准备",
        [Replacement("😀", "", "emoji")],
        id="emoji-utf8",
    ),
    pytest.param(
        "暴雨⚡预警",
        "gb2312",
        "暴雨预警",
        [Replacement("⚡", "", "symbol")],
        id="symbol-gb2312",
    ),
    pytest.param("暴雨⚡预警", "utf-8", "暴雨⚡预警", [], id="symbol-kept-utf8"),
    pytest.param(
        "★重要☆通知→请看※",
        "gb2312",
        "★重要☆通知→请看※",
        [],
        id="gb2312-symbols-kept",
    ),
    pytest.param(
        "1\ufe0f\u20e3号楼",
        "gb2312",
        "1号楼",
        [Replacement("\ufe0f", "", "invisible"), Replacement("\u20e3", "", "emoji")],
        id="keycap",
    ),
    pytest.param(
        "🇨🇳国庆",
        "gbk",
        "国庆",
        [Replacement("🇨", "", "emoji"), Replacement("🇳", "", "emoji")],
        id="flag",
    ),
    pytest.param(
        "村委\u200b会\ufeff",
        "gbk",
        "村委会",
        [Replacement("\u200b", "", "invisible"), Replacement("\ufeff", "", "invisible")],
        id="zero-width",
    ),
    pytest.param(
        "防汛——人人有责",
        "gb2312",
        "防汛――人人有责",
        [Replacement("—", "―", "equivalent")],
        id="em-dash-gb2312",
    ),
    pytest.param("防汛——人人有责", "gbk", "防汛——人人有责", [], id="em-dash-gbk"),
    pytest.param(
        "买买提·艾力",
        "gb2312",
        "买买提・艾力",
        [Replacement("·", "・", "equivalent")],
        id="middle-dot-gb2312",
    ),
    pytest.param(
        "买买提・艾力",
        "gbk",
        "买买提·艾力",
        [Replacement("・", "·", "equivalent")],
        id="middle-dot-gbk",
    ),
    pytest.param(
        "每亩10–20元",
        "gb2312",
        "每亩10-20元",
        [Replacement("–", "-", "equivalent")],
        id="en-dash",
    ),
    pytest.param(
        "\u3000\u3000各位村民：\u00a0请注意",
        "gb2312",
        "各位村民： 请注意",
        [Replacement("\u3000", " ", "space"), Replacement("\u00a0", " ", "space")],
        id="spaces",
    ),
    pytest.param(
        "第一段。\r\n\r\n\r\n第二段。  多个 \t 空格  ",
        "gb2312",
        "第一段。\n第二段。 多个 空格",
        [],
        id="whitespace-collapse",
    ),
    pytest.param(
        "通知｡",
        "gb2312",
        "通知。",
        [Replacement("｡", "。", "compatibility")],
        id="half-width-stop",
    ),
    pytest.param("１２３ＡＢＣ", "gb2312", "１２３ＡＢＣ", [], id="full-width-alnum-kept"),
    pytest.param(
        "宅基地120m²",
        "gb2312",
        "宅基地120平方米",
        [Replacement("m²", "平方米", "equivalent")],
        id="square-metres-gb2312",
    ),
    pytest.param(
        "宅基地120m²",
        "gbk",
        "宅基地120㎡",
        [Replacement("m²", "㎡", "equivalent")],
        id="square-metres-gbk",
    ),
    pytest.param("已核实✔", "gb2312", "已核实√", [Replacement("✔", "√", "equivalent")], id="check"),
    pytest.param("第⑫项", "gb2312", "第⑿项", [Replacement("⑫", "⑿", "equivalent")], id="circled"),
    pytest.param(
        "lu\u0308",
        "gb2312",
        "lü",
        [Replacement("u\u0308", "ü", "canonical")],
        id="pinyin-composed",
    ),
    pytest.param("单价¥5", "gb2312", "单价￥5", [Replacement("¥", "￥", "equivalent")], id="yen"),
]


@pytest.mark.parametrize(("text", "encoding", "expected", "replacements"), PREPARE_CASES)
def test_prepare_text(
    text: str, encoding: Encoding, expected: str, replacements: list[Replacement]
) -> None:
    assert prepare_text(text, encoding) == (expected, replacements)
    assert prepare_text(expected, encoding) == (expected, [])


REFUSED = [
    pytest.param("张𠮷明", "gb2312", [("𠮷", 1)], id="rare-name-gb2312"),
    pytest.param("张𠮷明", "gbk", [("𠮷", 1)], id="rare-name-gbk"),
    pytest.param("吕镕", "gb2312", [("镕", 1)], id="gbk-only-gb2312"),
    pytest.param("𠮷野家、朱镕基", "gb2312", [("𠮷", 0), ("镕", 5)], id="two-characters"),
    pytest.param("票价€20", "gbk", [("€", 2)], id="euro-gbk"),
    pytest.param("自造字\ue000", "gbk", [("\ue000", 3)], id="private-use"),
]


@pytest.mark.parametrize(("text", "encoding", "chars"), REFUSED)
def test_refused(text: str, encoding: Encoding, chars: list[tuple[str, int]]) -> None:
    with pytest.raises(EncodingProblem) as caught:
        prepare_text(text, encoding)
    assert caught.value.chars == chars
    zh, en = caught.value.text.render("zh"), caught.value.text.render("en")
    for ch, _ in chars:
        code = f"U+{ord(ch):04X}"
        assert f"“{ch}”({code}" in zh
        assert f'"{ch}" ({code}' in en
    assert encoding.upper() in zh
    assert encoding.upper() in en


def test_rare_name_message_in_both_languages() -> None:
    with pytest.raises(EncodingProblem) as caught:
        prepare_text("张𠮷", "gb2312")
    assert isinstance(caught.value.text, Text)
    assert caught.value.text.render("zh") == (
        "LED 屏（GB2312 编码）无法显示“𠮷”(U+20BB7，第 2 字)，请改用同音常用字或拼音后重新发送"
    )
    assert caught.value.text.render("en") == (
        'the LED board (GB2312 encoding) cannot show "𠮷" (U+20BB7, character 2); replace it '
        "with a common character of the same sound or with pinyin, then send again"
    )


def test_non_ideograph_gets_other_advice() -> None:
    with pytest.raises(EncodingProblem) as caught:
        prepare_text("票价€20", "gbk")
    assert "删除或改用文字说明" in caught.value.text.render("zh")


@pytest.mark.parametrize(
    ("text", "encoding"),
    [("张𠮷明", "utf-8"), ("吕镕", "gbk"), ("朱镕基", "utf-8"), ("票价€20", "utf-8")],
)
def test_accepted(text: str, encoding: Encoding) -> None:
    assert prepare_text(text, encoding) == (text, [])


def test_paginate_reports_every_part_at_once() -> None:
    with pytest.raises(EncodingProblem) as caught:
        paginate(
            "张𠮷获奖",
            "朱镕基",
            spec(8, 2),
            priority="routine",
            table=[["€", "1元"]],
            columns=["项目", "金额₩"],
        )
    problem = caught.value
    assert problem.chars == [("𠮷", 1), ("镕", 1), ("€", 0), ("₩", 1)]
    assert problem.parts == ["title", "body", "table", "header"]
    zh = problem.text.render("zh")
    assert "“𠮷”(U+20BB7，标题第 2 字)" in zh
    assert "“镕”(U+9555，正文第 2 字)" in zh
    assert "“€”(U+20AC，表格第 1 行)" in zh
    assert "“₩”(U+20A9，表头第 2 列)" in zh


def test_unsupported_encoding_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="big5"):
        prepare_text("通知", "big5")


# -- pages: styling, timing, tables, JSON -------------------------------------------------


def test_emergency_styling() -> None:
    board = spec(16, 2)
    pages = paginate("暴雨红色预警", "请立即转移到安全地带。", board, priority="emergency")
    title, body = pages
    assert title.kind == "title" and body.kind == "body"
    assert title.lines[0].strip() == EMERGENCY_PREFIX + "暴雨红色预警"
    assert (title.colour, title.flash) == ("red", True)
    assert (body.colour, body.flash) == ("red", False)


def test_emergency_prefix_is_not_doubled() -> None:
    pages = paginate("【紧急】山洪预警", "立即撤离。", spec(16, 2), priority="emergency")
    assert pages[0].lines[0].strip() == "【紧急】山洪预警"


@pytest.mark.parametrize(
    ("priority", "colours", "expected"),
    [
        ("routine", ("red", "green", "yellow"), "green"),
        ("important", ("red", "green", "yellow"), "yellow"),
        ("emergency", ("red", "green", "yellow"), "red"),
        ("routine", ("red",), "red"),
        ("emergency", ("white", "blue"), "white"),
    ],
)
def test_colours(priority: str, colours: tuple[str, ...], expected: str) -> None:
    pages = paginate("通知", "正文", spec(8, 2, colours=colours), priority=priority)  # type: ignore[arg-type]
    assert {page.colour for page in pages} == {expected}
    assert pages[0].flash is (priority == "emergency")


def test_title_is_centred_and_balanced() -> None:
    board = spec(16, 2)
    title = paginate("停电通知", "明天停电。", board, priority="routine")[0]
    assert title.lines == (" " * 12 + "停电通知",)  # 12 half-width spaces: 6 columns each side
    long_title = "关于2026年度城乡居民基本医疗保险集中缴费工作的通知"
    title_pages = paginate(long_title, "", board, priority="routine")
    assert all(p.kind == "title" for p in title_pages)
    assert_fits(title_pages, board)
    widths = [display_columns(line.strip()) for p in title_pages for line in p.lines]
    assert max(widths) - min(widths) <= 3, widths


def test_balancing_a_title_never_breaks_a_date() -> None:
    board = spec(8, 2)
    pages = paginate("关于2026年12月1日全村停水的通知", "", board, priority="routine")
    lines = [line.strip() for page in pages for line in page.lines]
    line_holding(lines, "2026年12月1日")
    assert_fits(pages, board)


def test_display_time_is_clamped() -> None:
    board = spec(20, 4)
    short, *_ = paginate("", "停电。", board, priority="routine")
    assert short.seconds == 4.0
    long_body = "各位村民请注意" * 20
    assert max(p.seconds for p in paginate("", long_body, board, priority="routine")) == 20.0
    middle = paginate("", "明天上午八点到下午五点停电请做好准备", spec(20, 1), priority="routine")
    assert middle[0].seconds == pytest.approx(18 * 0.35)


def test_only_a_title_page_when_the_body_is_empty() -> None:
    pages = paginate("通知", "😀", spec(8, 2), priority="routine")
    assert [p.kind for p in pages] == ["title"]


def test_table_rows_follow_the_body() -> None:
    rows = [["办公费", "1,200.00元"], ["道路维修", "10,000.00元"], ["", ""]]
    pages = paginate("财务公开", "本月支出如下：", spec(12, 2), priority="routine", table=rows)
    assert body_lines(pages) == ["本月支出如下：", "办公费：1,200.00元", "道路维修：10,000.00元"]


def test_table_with_columns_labels_wide_rows() -> None:
    rows = [["办公用品", "0.00", "320.00"]]
    pages = paginate(
        "财务公开", "明细：", spec(16, 2), priority="routine", table=rows,
        columns=["项目", "收入", "支出"],
    )  # fmt: skip
    assert body_lines(pages)[-1] == "办公用品：收入 0.00，支出 320.00"


def test_a_table_label_stays_with_its_value() -> None:
    rows = [["张建国", "8.5亩", "1,024.25元"], ["李秀英", "12亩", "1,446.00元"]]
    board = spec(12, 2)
    pages = paginate(
        "补贴公示", "", board, priority="routine", table=rows, columns=["户主", "面积", "金额"]
    )
    assert_fits(pages, board)
    assert body_lines(pages) == [
        "张建国：面积 8.5亩，",
        "金额 1,024.25元",
        "李秀英：面积 12亩，",
        "金额 1,446.00元",
    ]


def test_render_pages_json_is_integer_only() -> None:
    pages = paginate("暴雨预警", "请立即转移。", spec(8, 2), priority="emergency")
    payload = render_pages_json(pages)
    assert payload[0] == {
        "lines": list(pages[0].lines),
        "ms": 4000,
        "colour": "red",
        "flash": True,
        "kind": "title",
    }
    text = json.dumps(payload, ensure_ascii=False)
    assert "." not in re.sub(r'"[^"]*"', "", text)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"chars_per_line": 0, "lines": 2},
        {"chars_per_line": 8, "lines": 0},
        {"chars_per_line": 8, "lines": 2, "colours": ()},
        {"chars_per_line": 8, "lines": 2, "min_page_seconds": 30.0},
        {"chars_per_line": 8, "lines": 2, "seconds_per_char": 0.0},
    ],
)
def test_board_spec_rejects_nonsense(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        BoardSpec(encoding="gb2312", **kwargs)  # type: ignore[arg-type]


def test_display_columns() -> None:
    assert display_columns("通知") == 2
    assert display_columns("12,345.60元") == 5.5
    assert display_columns("“”") == 2  # GB2312 boards draw them double-byte


# -- properties -------------------------------------------------------------------------

HANZI = "村民委会通知补贴财务公开张李王赵刘陈杨周吴徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭"
PUNCT = "，。、；：？！（）“”《》【】…—·"
ASCII = "abcXYZ0123456789.,:/-%?=&"

any_text = st.text(
    alphabet=st.sampled_from(list(HANZI + PUNCT + ASCII + " \n\u3000😀")), max_size=200
)


@settings(max_examples=300, deadline=None)
@given(
    text=any_text,
    cols=st.integers(1, 20),
    rows=st.integers(1, 4),
    encoding=st.sampled_from(["gb2312", "gbk", "utf-8"]),
)
def test_every_page_fits_and_loses_nothing(text: str, cols: int, rows: int, encoding: str) -> None:
    board = spec(cols, rows, encoding)  # type: ignore[arg-type]
    pages = paginate("标题", text, board, priority="routine")
    assert_fits(pages, board)
    prepared, _ = prepare_text(text, board.encoding)
    assert_reconstructs(body_lines(pages), prepared)
    for page in pages:
        assert board.min_page_seconds <= page.seconds <= board.max_page_seconds


numbers = st.one_of(
    st.from_regex(r"[1-9][0-9]{0,2}(,[0-9]{3}){0,2}\.[0-9]{2}元", fullmatch=True),
    st.from_regex(r"20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])", fullmatch=True),
    st.from_regex(r"([01][0-9]|2[0-3]):[0-5][0-9]", fullmatch=True),
)
words = st.text(alphabet=st.sampled_from(list(HANZI)), min_size=1, max_size=6)
latin = st.text(alphabet=st.sampled_from(list("abcdefgXYZ")), min_size=1, max_size=8)
marks = st.sampled_from(list("，。、；：？！"))


@settings(max_examples=200, deadline=None)
@given(
    parts=st.lists(st.tuples(st.one_of(words, numbers, latin), marks), min_size=1, max_size=25),
    cols=st.integers(10, 20),  # the widest glued piece, "999,999,999.99元，", is 9 columns
    rows=st.integers(1, 4),
)
def test_sentences_keep_numbers_words_and_kinsoku(
    parts: list[tuple[str, str]], cols: int, rows: int
) -> None:
    text = "".join(piece + mark for piece, mark in parts)
    board = spec(cols, rows)
    lines = body_lines(paginate("通知", text, board, priority="routine"))
    assert_kinsoku(lines)
    for piece, _ in parts:
        if piece.isascii() or piece[0].isdigit():
            line_holding(lines, piece)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=80), encoding=st.sampled_from(["gb2312", "gbk", "utf-8"]))
def test_prepare_text_is_idempotent_or_names_the_problem(text: str, encoding: str) -> None:
    problem: EncodingProblem | None = None
    try:
        prepared, _ = prepare_text(text, encoding)
    except EncodingProblem as exc:
        problem = exc
    if problem is not None:
        assert problem.chars
        for ch, index in problem.chars:
            assert ch in unicodedata.normalize("NFC", text[index:])
        return
    assert prepare_text(prepared, encoding) == (prepared, [])
    prepared.encode(encoding)
