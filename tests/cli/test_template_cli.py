"""template list|show, notice add --template, notice print and calendar, as secretaries use them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from channels.tv_feed import item_url
from cli import app
from content_queue.settings import get_settings
from content_queue.store import Outcome
from dispatcher.service import open_store
from tests.channels.pdfcheck import A3, A4, page_sizes, qr_codes, texts
from tests.conftest import REPO

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_template_list_and_show(home: Path) -> None:
    code, out, _ = run("template", "list")
    assert code == 0
    for name in (
        "village_finance",
        "farm_subsidy",
        "poverty_monitoring",
        "land_compensation",
        "meeting",
        "emergency",
    ):
        assert name in out
    code, out, _ = run("template", "list", "--json")
    assert [t["name"] for t in json.loads(out)][:2] == ["village_finance", "farm_subsidy"]
    code, out, _ = run("template", "show", "village_finance")
    assert code == 0
    assert "期间" in out and "收入合计" in out  # fields
    assert "期间,2026年11月" in out  # the example data file
    assert "示例村2026年11月村级财务收支公开" in out  # the preview
    assert "收入合计一万二千三百四十五元六角，支出合计八千二百一十元" in out  # spoken
    code, out, _ = run("template", "show", "farm_subsidy", "--json", "--village", "east-liu")
    shown = json.loads(out)
    assert shown["preview"]["title"].startswith("刘庄村")
    assert [c["name"] for c in shown["columns"] if c["masked"]] == ["身份证号"]
    code, _, err = run("template", "show", "nope")
    assert code == 1 and "没有模板“nope”" in err


def test_notice_add_from_a_csv_template(home: Path, tmp_path: Path) -> None:
    code, example, _ = run("template", "show", "farm_subsidy", "--example")
    data = tmp_path / "补贴.csv"
    data.write_text(example, encoding="utf-8")
    code, out, err = run(
        "notice",
        "add",
        "--template",
        "farm_subsidy",
        "--data",
        str(data),
        "--village",
        "east-liu",
        "--priority",
        "important",
        "--json",
    )
    assert code == 0, err
    notice = json.loads(out)
    assert notice["title"] == "刘庄村2026年耕地地力保护补贴发放公示"
    assert (notice["category"], notice["priority"]) == ("farm_subsidy", "important")
    assert notice["table"]["rows"][0][1] == "371521********0017"
    assert notice["template"] == "farm_subsidy"
    # Flags complete or override what the template wrote.
    code, out, err = run(
        "notice",
        "add",
        "--template",
        "补贴",
        "--data",
        str(data),
        "--village",
        "east-liu",
        "--title",
        "2026年耕地地力保护补贴（第一批）公示",
        "--body",
        "详见附表。",
        "--json",
    )
    assert code == 0, err
    again = json.loads(out)
    assert (
        again["title"] == "2026年耕地地力保护补贴（第一批）公示" and again["body"] == "详见附表。"
    )
    assert again["table"] == notice["table"]


def test_notice_add_from_xlsx_and_from_fields(home: Path, tmp_path: Path) -> None:
    book = tmp_path / "财务.xlsx"
    code, out, _ = run("template", "show", "village_finance", "--write-example", str(book))
    assert code == 0 and book.exists()
    code, out, err = run(
        "notice",
        "add",
        "--template",
        "village_finance",
        "--data",
        str(book),
        "--field",
        "期间=2026-11",
        "--village",
        "east-wang",
    )
    assert code == 0, err
    assert "已保存通知 #1「王庄村2026年11月村级财务收支公开」" in out
    code, out, err = run(
        "notice",
        "add",
        "--template",
        "meeting",
        "--village",
        "east-liu",
        "--field",
        "会议名称=村民代表会议",
        "--field",
        "时间=2099-12-05 09:00",
        "--field",
        "地点=村委会",
        "--field",
        "参会人员=全体村民代表",
        "--json",
    )
    assert code == 0, err
    meeting = json.loads(out)
    assert meeting["title"] == "关于召开村民代表会议的通知"
    assert meeting["expires_at"].startswith("2099-12-05T04:00")  # 12:00 in the county, in UTC


def test_template_errors_name_the_row_and_save_nothing(home: Path, tmp_path: Path) -> None:
    data = tmp_path / "财务.csv"
    data.write_text(
        "期间,2026年11月\n项目,收入,支出\n租金,100,\n电费,,40\n合计,100,50\n", encoding="utf-8"
    )
    code, out, err = run(
        "notice", "add", "--template", "village_finance", "--data", str(data), "--county"
    )
    assert code == 2
    assert "财务.csv 第 5 行：“合计”写的是 50.00 元，但逐项相加是 40.00 元" in err
    assert "Traceback" not in err + out
    code, out, _ = run("notice", "list", "--json")
    assert json.loads(out) == []
    code, _, err = run("notice", "add", "--data", str(data), "--county", "--title", "x")
    assert code == 2 and "--data 和 --field 要和 --template 一起用" in err
    code, _, err = run("notice", "add", "--template", "meeting", "--county")
    assert code == 2 and "缺少字段“会议名称”" in err


def test_notice_print_poster(home: Path, tmp_path: Path) -> None:
    code, example, _ = run("template", "show", "village_finance", "--example")
    data = tmp_path / "财务.csv"
    data.write_text(example, encoding="utf-8")
    code, out, err = run(
        "notice",
        "add",
        "--template",
        "village_finance",
        "--data",
        str(data),
        "--township",
        "east",
        "--json",
    )
    assert code == 0, err
    nid = json.loads(out)["id"]
    code, _, err = run("notice", "print", str(nid))
    assert code == 2 and "请用 --village 选一个：east-liu, east-wang" in err
    poster = tmp_path / "poster.pdf"
    code, out, err = run(
        "notice", "print", str(nid), "--village", "east-liu", "--size", "a3", "--out", str(poster)
    )
    assert code == 0, err
    assert f"已生成海报 {poster}（A3，1 页）" in out
    data_pdf = poster.read_bytes()
    assert page_sizes(data_pdf) == [A3]
    assert "东城镇发布" not in texts(data_pdf)[0] and "刘庄村三务公开栏" in texts(data_pdf)[0]
    base = get_settings().resolved_feed_base_url
    assert qr_codes(data_pdf) == [item_url(base, "east-liu", nid)]
    result = runner.invoke(
        app, ["notice", "print", str(nid), "--village", "east-wang", "--out", "-"]
    )
    assert result.exit_code == 0 and page_sizes(result.stdout_bytes) == [A4]
    code, _, err = run("notice", "print", str(nid), "--village", "west-zhao")
    assert code == 2 and "没有发往 west-zhao" in err
    code, _, err = run("notice", "print", str(nid), "--village", "east-liu", "--size", "B5")
    assert code == 2


def test_calendar_shows_due_and_overdue_villages(home: Path, tmp_path: Path) -> None:
    code, out, err = run("calendar", "--json", "--all")
    assert code == 0, err
    rows = json.loads(out)
    assert {r["village"] for r in rows} == {"east-liu", "east-wang", "west-zhao"}
    assert {r["category"] for r in rows} == {"village_finance", "party_affairs", "village_affairs"}
    assert all(r["state"] in ("due", "overdue") for r in rows)
    code, out, _ = run("calendar", "--village", "east-liu")
    assert code == 0 and "王庄村" not in out
    assert "东城镇 刘庄村  村级财务  每月 10 日前，截止" in out and "从未公开" in out
    # A finance notice that went out to east-liu this month makes it done there.
    code, out, err = run(
        "notice",
        "add",
        "--title",
        "财务公开",
        "--body",
        "见附表。",
        "--category",
        "village_finance",
        "--village",
        "east-liu",
        "--channel",
        "tv_feed",
        "--json",
    )
    nid = json.loads(out)["id"]
    store = open_store(get_settings())
    ids = [d.id for d in store.deliveries(nid)]
    for claim in store.claim(ids, worker="t", lease_seconds=60, max_attempts=3):
        store.finish(claim, Outcome("sent"), max_attempts=3)
    code, out, _ = run("calendar", "--json", "--village", "east-liu")
    assert "village_finance" not in {r["category"] for r in json.loads(out)}
    code, out, _ = run("calendar", "--json", "--village", "east-liu", "--all")
    (finance,) = [r for r in json.loads(out) if r["category"] == "village_finance"]
    assert (finance["state"], finance["notice"]) == ("done", nid)
    code, _, err = run("calendar", "--village", "nowhere")
    assert code == 2 and "未知的村：nowhere" in err


def test_new_commands_keep_help_light() -> None:
    code = (
        "import sys\n"
        "import cli\n"
        "for argv in (['template', '--help'], ['calendar', '--help'],\n"
        "             ['notice', 'print', '--help']):\n"
        "    sys.argv = ['villagecast', *argv]\n"
        "    try:\n"
        "        cli.main()\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('reportlab', 'openpyxl', 'segno', 'sqlalchemy', 'celery')"
        " if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "HEAVY []" in out and "--size" in out
