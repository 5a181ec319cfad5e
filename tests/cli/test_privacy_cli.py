"""The CLI refuses a notice with personal data, naming each finding, or masks it on request."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from typer.testing import CliRunner

from cli import app
from content_queue.settings import get_settings
from content_queue.store import Store

runner = CliRunner()


def _add(*extra: str) -> tuple[int, str]:
    result = runner.invoke(
        app,
        [
            "notice",
            "add",
            "--title",
            "2026年耕地地力保护补贴公示",
            "--category",
            "farm_subsidy",
            "--village",
            "east-liu",
            "--channel",
            "tv_feed",
            *extra,
        ],
    )
    return result.exit_code, result.output


def test_personal_data_is_refused_with_every_finding_named(home: Path, tmp_path: Path) -> None:
    table = tmp_path / "名单.csv"
    with table.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(
            [["户主", "身份证号", "金额"], ["张三", "11010519491231002X", "1,200.00"]]
        )
    code, out = _add("--body", "如有异议请联系 138 1234 5678。", "--table-file", str(table))
    assert code == 2
    assert "通知含有 2 处个人信息" in out
    assert "正文中有手机号（138****5678）" in out
    assert "表格第 1 行第 2 列中有身份证号（110105********002X）" in out
    # The error never repeats the number itself, and nothing was saved.
    assert "1234 5678" not in out and "19491231" not in out
    assert Store(get_settings().resolved_database_url).notices() == []


def test_mask_personal_data_publishes_the_masked_text(home: Path) -> None:
    code, out = _add("--body", "联系人王主任13912345678。", "--mask-personal-data", "--json")
    assert code == 0, out
    stored = Store(get_settings().resolved_database_url).notice(json.loads(out)["id"])
    assert stored.body == "联系人王主任139****5678。"


def test_english_refusal(home: Path) -> None:
    result = runner.invoke(
        app,
        [
            "--lang",
            "en",
            "notice",
            "add",
            "--title",
            "t",
            "--body",
            "card 6222021234567890128",
            "--category",
            "other",
            "--village",
            "east-liu",
        ],
    )
    assert result.exit_code == 2
    assert "bank card number in the body (6222 **** **** **** 0128)" in result.output
