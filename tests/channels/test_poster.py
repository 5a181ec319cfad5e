"""The disclosure-board poster: a real PDF, CJK font embedded, tables paged, QR code readable."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from channels._poster import PosterContent, Withdrawal, find_font, qr_matrix, render_poster
from content_queue.errors import ConfigError
from content_queue.store import NoticeView
from tests.channels.pdfcheck import A3, A4, fonts, page_sizes, qr_codes, texts

URL = "http://tv.example:8765/feeds/east-liu/12.html"
PUBLISHED = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # 09:00 in the county


def notice(**over: Any) -> NoticeView:
    fields: dict[str, Any] = {
        "id": 12,
        "title": "刘庄村2026年11月村级财务收支公开",
        "body": "现将本村2026年11月财务收支情况公开如下：\n如有疑问，请向村务监督委员会反映。",
        "category": "village_finance",
        "priority": "routine",
        "targets": {"villages": ["east-liu"]},
        "channels": None,
        "table": {
            "caption": "2026年11月收支明细（单位：元）",
            "columns": ["项目", "收入（元）", "支出（元）"],
            "rows": [
                ["上级转移支付", "12,000.00", ""],
                ["村道路灯维修", "", "3,210.00"],
                ["合计", "12,000.00", "3,210.00"],
            ],
        },
        "publish_at": PUBLISHED,
        "expires_at": None,
        "author": "会计",
        "revision": 1,
        "supersedes_id": None,
        "state": "active",
        "created_at": PUBLISHED,
    }
    fields.update(over)
    return NoticeView(**fields)


def content(**over: Any) -> PosterContent:
    base = PosterContent(notice=notice(), place="刘庄村", region="示例县东城镇", qr_url=URL)
    return replace(base, **over)


def test_a4_poster_is_a_real_pdf_with_the_cjk_font_embedded() -> None:
    poster = render_poster(content())
    assert poster.data.startswith(b"%PDF-") and poster.pages == 1
    assert page_sizes(poster.data) == [A4]
    used = fonts(poster.data)
    assert used and all(used.values()), used  # every font embedded, no Helvetica fallback
    assert all("WenQuanYi" in name or "CJK" in name or "+" in name for name in used)
    (text,) = texts(poster.data)
    for expected in (
        "刘庄村三务公开栏",
        "【村级财务】",
        "刘庄村2026年11月村级财务收支公开",
        "公开日期：2026年12月1日",
        "上级转移支付",
        "12,000.00",
        "刘庄村村民委员会",
        "第1页/共1页",
        "示例县东城镇",
    ):
        assert expected in text, expected


def test_the_qr_code_opens_the_feed_item() -> None:
    poster = render_poster(content())
    assert qr_codes(poster.data) == [URL]
    # The library's own matrix agrees with what a decoder read (error correction M).
    assert len(qr_matrix(URL)) in (29, 33, 37)


def test_a3_and_a_long_table_pages_with_the_header_repeated() -> None:
    rows = [[f"第{i}户", f"{i},000.00", ""] for i in range(1, 181)]
    table = {"caption": "明细", "columns": ["项目", "收入（元）", "支出（元）"], "rows": rows}
    poster = render_poster(content(notice=notice(table=table), paper="A3"))
    assert poster.pages >= 3
    assert page_sizes(poster.data) == [A3] * poster.pages
    pages = texts(poster.data)
    assert all("收入（元）" in p for p in pages)  # the header on every page
    assert all(f"共{poster.pages}页" in p for p in pages)
    assert "第180户" in pages[-1] and "刘庄村村民委员会" in pages[-1]
    assert qr_codes(poster.data) == [URL]  # on the first page
    a4 = render_poster(content(notice=notice(table=table)))
    assert a4.pages > poster.pages  # the same table takes more A4 pages


def test_no_qr_without_a_feed_and_the_same_notice_renders_the_same_bytes() -> None:
    plain = render_poster(content(qr_url=None))
    assert qr_codes(plain.data) == []
    assert "扫码查看原文" not in texts(plain.data)[0]
    assert render_poster(content()).data == render_poster(content()).data


def test_withdrawal_poster_says_so_and_names_the_correction() -> None:
    fixed = notice(id=13, revision=2, title="刘庄村2026年11月村级财务收支公开（更正）")
    poster = render_poster(
        content(
            notice=notice(state="superseded"),
            withdrawal=Withdrawal(at=PUBLISHED, reason="支出金额有误", superseded_by=fixed),
        )
    )
    (text,) = texts(poster.data)
    assert "此通知已撤回" in text and "撤回原因：支出金额有误" in text
    assert "更正后的通知为第13号（第2版）" in text
    assert "上级转移支付" not in text  # the withdrawn table is not reprinted


def test_odd_text_is_escaped_not_interpreted() -> None:
    poster = render_poster(content(notice=notice(body="a < b & <b>粗体</b>", table=None)))
    assert "a<b&<b>粗体</b>" in texts(poster.data)[0]


def test_missing_or_unusable_font_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as missing:
        find_font(tmp_path / "nope.ttf")
    assert "VILLAGECAST_POSTER_FONT" in missing.value.render("zh")
    cff = Path("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc")
    if not cff.exists():
        pytest.skip("fonts-noto-cjk is not installed (only used to show a CFF font is refused)")
    with pytest.raises(ConfigError) as refused:
        render_poster(content(), font=(str(cff), 0))
    assert "TrueType" in refused.value.render("zh")
