"""Every template's notice renders on every channel: LED pages, TV HTML table, spoken script."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from channels._led_render import BoardSpec, paginate
from channels._speech_text import spoken_script
from channels.tv_feed import _html_body
from content_queue.templates import TEMPLATES, Filled
from content_queue.templates._data import rows_to_data

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))


def example(name: str) -> Filled:
    template = TEMPLATES[name]
    rows = list(enumerate(csv.reader(io.StringIO(template.example_csv())), start=1))
    return template.fill(rows_to_data(rows, template, source="x.csv"), place="刘庄村", now=NOW)


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_led_board_shows_every_template_in_gb2312_pages(name: str) -> None:
    filled = example(name)
    table = filled.table
    spec = BoardSpec(chars_per_line=16, lines=2, encoding="gb2312")
    pages = paginate(
        filled.title,
        filled.body,
        spec,
        priority=filled.priority.value,  # type: ignore[arg-type]
        table=table.rows if table else None,
        columns=table.columns if table else None,
    )
    shown = "".join("".join(p.lines) for p in pages).replace(" ", "")
    assert pages[0].kind == "title"
    assert all(len(p.lines) <= 2 for p in pages)
    if table:
        # Every row reaches the board (its first cell at least), including the total.
        for row in table.rows:
            assert row[0].replace(" ", "") in shown or row[1].replace(" ", "") in shown


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_tv_feed_html_and_the_spoken_script(name: str) -> None:
    filled = example(name)
    table = filled.table.model_dump() if filled.table else None
    html = _html_body(filled.body, table)
    if table:
        assert html.count("<th>") == len(table["columns"]) and "<table>" in html
        assert html.count("<tr>") == len(table["rows"]) + 1
    script = spoken_script(
        title=filled.title,
        body=filled.body,
        category=filled.category.value,
        priority=filled.priority.value,
        table=table,
    )
    assert "刘庄村" in script or filled.title in script or "预警" in script
    assert not any(ch.isdigit() for ch in script)  # numbers, money and dates spoken in words
    if name == "village_finance":
        assert script.count("收入合计一万二千三百四十五元六角") == 2  # body and table summary
    if name == "emergency":
        assert script.startswith("紧急通知！紧急通知！")
