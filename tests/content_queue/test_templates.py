"""Disclosure templates: every template from CSV, XLSX and flags; totals, masking, errors."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from openpyxl import Workbook

from channels._speech_text import table_sentences
from content_queue.errors import NotFoundError, NoticeError
from content_queue.models import Category, Priority, build_notice
from content_queue.privacy import scan_notice
from content_queue.templates import (
    TEMPLATES,
    Filled,
    TemplateError,
    fill_template,
    get_template,
    mask_id,
)
from content_queue.templates._data import rows_to_data
from content_queue.templates._dates import parse_datetime, parse_period
from dispatcher.service import guard_personal_data

NOW = datetime(2026, 12, 1, 9, 0, tzinfo=ZoneInfo("Asia/Shanghai"))


def write(tmp_path: Path, text: str, name: str = "data.csv", encoding: str = "utf-8") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding=encoding)
    return path


def fill(name: str, path: Path | None = None, *fields: str, place: str = "刘庄村") -> Filled:
    return fill_template(get_template(name), data_file=path, fields=fields, place=place, now=NOW)


def problems(name: str, path: Path | None = None, *fields: str) -> list[str]:
    with pytest.raises(TemplateError) as err:
        fill(name, path, *fields)
    assert err.value.exit_code == 2
    return [d.render("zh") for d in err.value.details]


def draft_of(filled: Filled) -> object:
    return build_notice({**filled.notice_fields(), "targets": {"villages": ["east-liu"]}})


FINANCE = """\
期间,2026年11月
期初余额,"52,000.00"

日期,项目,收入,支出,备注
2026-11-03,上级转移支付,"12,000.00",,
2026-11-08,集体土地租金,345.6元,,
2026-11-12,村道路灯维修,,"3,210.00",含材料费
2026-11-20,保洁员工资,,5000,
,合计,"12,345.60","8,210.00",
"""


# -- every template ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_every_example_fills_a_valid_notice(name: str) -> None:
    template = TEMPLATES[name]
    rows = list(enumerate(csv.reader(io.StringIO(template.example_csv())), start=1))
    filled = template.fill(rows_to_data(rows, template, source="x.csv"), place="刘庄村", now=NOW)
    draft = build_notice({**filled.notice_fields(), "targets": {"villages": ["east-liu"]}})
    assert draft.category == template.category and draft.title == filled.title
    assert guard_personal_data(draft) == draft  # nothing left to refuse or mask
    if template.columns:
        assert draft.table is not None and draft.table.rows


def test_unknown_template_lists_them_and_aliases_work() -> None:
    with pytest.raises(NotFoundError) as err:
        get_template("finance2")
    assert "village_finance" in err.value.render("zh")
    assert get_template("财务").name == "village_finance"
    assert get_template("补贴").name == "farm_subsidy"


# -- village finance ----------------------------------------------------------------------


def test_finance_totals_computed_and_table_fits_the_spoken_summary(tmp_path: Path) -> None:
    filled = fill("village_finance", write(tmp_path, FINANCE))
    assert filled.title == "刘庄村2026年11月村级财务收支公开"
    assert filled.category == Category.VILLAGE_FINANCE
    assert (
        "本期收入合计 12,345.60 元，支出合计 8,210.00 元，收支相抵结余 4,135.60 元" in filled.body
    )
    assert "期初余额 52,000.00 元，期末余额 56,135.60 元" in filled.body
    assert filled.table is not None
    assert filled.table.columns == ["日期", "项目", "收入（元）", "支出（元）", "备注"]
    assert filled.table.rows[1] == ["2026-11-08", "集体土地租金", "345.60", "", ""]
    assert filled.table.rows[-1] == ["", "合计", "12,345.60", "8,210.00", ""]
    said = table_sentences(filled.table.model_dump())
    # Detected as a finance table: rows read with 收入/支出, the 合计 row not read twice.
    assert said[2] == "二零二六年十一月八日，集体土地租金，收入三百四十五元六角。"
    assert said[-1] == "收入合计一万二千三百四十五元六角，支出合计八千二百一十元。"


def test_finance_total_row_mismatch_names_the_row(tmp_path: Path) -> None:
    bad = FINANCE.replace('"12,345.60","8,210.00"', '"12,500.00","8,210.01"')
    found = problems("village_finance", write(tmp_path, bad))
    assert found == [
        "data.csv 第 9 行：“合计”写的是 12,500.00 元，但逐项相加是 12,345.60 元"
        "（相差 154.40 元），请核对",
        "data.csv 第 9 行：“合计”写的是 8,210.01 元，但逐项相加是 8,210.00 元"
        "（相差 0.01 元），请核对",
    ]


def test_finance_given_totals_and_closing_balance_are_checked(tmp_path: Path) -> None:
    text = FINANCE.replace("期初余额", "收入合计,12345.6\n支出合计,8200\n期末余额,56000\n期初余额")
    found = problems("village_finance", write(tmp_path, text))
    assert found[0].startswith("data.csv 第 3 行（支出合计）：“支出合计”写的是 8,200.00 元")
    assert found[1].startswith("data.csv 第 4 行（期末余额）：期末余额写的是 56,000.00 元")
    assert "52,000.00 + 收入 12,345.60 − 支出 8,210.00 = 56,135.60 元" in found[1]
    assert len(found) == 2  # the right income total is not reported


def test_finance_subtotals_check_the_rows_since_the_last_one(tmp_path: Path) -> None:
    text = """\
期间,2026Q4
类别,项目,金额
收入,租金,100
收入,补助,200.5
收入,收入小计,300.50
支出,电费,40
支出,支出小计,41
支出,支出合计,40
"""
    found = problems("village_finance", write(tmp_path, text))
    assert found == [
        "data.csv 第 7 行：“支出小计”写的是 41.00 元，但逐项相加是 40.00 元（相差 1.00 元），请核对"
    ]
    filled = fill("village_finance", write(tmp_path, text.replace("支出,支出小计,41\n", "")))
    assert filled.title == "刘庄村2026年第四季度村级财务收支公开"
    assert filled.table is not None
    assert [r[1:] for r in filled.table.rows] == [
        ["100.00", ""],
        ["200.50", ""],
        ["", "40.00"],
        ["300.50", "40.00"],
    ]


def test_finance_rows_must_be_in_the_period_and_readable(tmp_path: Path) -> None:
    text = FINANCE.replace("2026-11-20", "2026-10-31").replace("2026-11-12", "11月31日")
    text = text.replace("345.6元", "三百元")
    found = problems("village_finance", write(tmp_path, text))
    assert "data.csv 第 6 行：收入：“三百元”不是数字" in found
    assert "data.csv 第 7 行：看不懂日期“11月31日”" in found
    assert "data.csv 第 8 行：日期 2026-10-31 不在期间“2026年11月”内" in found


def test_finance_needs_a_period_and_one_table_shape(tmp_path: Path) -> None:
    found = problems("village_finance", write(tmp_path, FINANCE.replace("期间,2026年11月\n", "")))
    assert any("缺少字段“期间”" in p for p in found)
    found = problems("village_finance", write(tmp_path, "期间,2026-11\n项目,备注\n租金,x\n"))
    assert any("二选一" in p for p in found)
    found = problems("village_finance", write(tmp_path, "期间,十一月\n项目,收入\n租金,1\n"))
    assert any("看不懂期间“十一月”" in p for p in found)


def test_finance_from_xlsx_with_numbers_and_dates(tmp_path: Path) -> None:
    wb = Workbook()
    ws = wb.active
    ws.append(["期间", "2026-11"])
    ws.append([])
    ws.append(["序号", "日期", "项目", "收入（元）", "支出（元）"])
    ws.append([1, datetime(2026, 11, 3), "上级转移支付", 12000, None])
    ws.append([2, datetime(2026, 11, 8), "集体土地租金", 345.6, None])
    ws.append([3, datetime(2026, 11, 12), "村道路灯维修", None, 1234.56])
    ws.append([None, None, "合计", 12345.6, 1234.57])
    path = tmp_path / "11月.xlsx"
    wb.save(path)
    found = problems("village_finance", path)
    assert found == [
        "11月.xlsx 第 7 行：“合计”写的是 1,234.57 元，但逐项相加是 1,234.56 元（相差 0.01 元），"
        "请核对"
    ]
    ws["E7"] = 1234.56
    wb.save(path)
    filled = fill("village_finance", path)
    assert filled.table is not None
    assert filled.table.rows[1] == ["2026-11-08", "集体土地租金", "345.60", ""]
    assert filled.table.rows[-1] == ["", "合计", "12,345.60", "1,234.56"]


def test_gbk_csv_from_excel_is_read(tmp_path: Path) -> None:
    filled = fill("village_finance", write(tmp_path, FINANCE, encoding="gbk"))
    assert filled.table is not None and filled.table.rows[0][1] == "上级转移支付"


# -- file layout problems -----------------------------------------------------------------


def test_unknown_and_missing_columns_are_named(tmp_path: Path) -> None:
    text = "期间,2026年\n户主,身份证号,金钱\n张三,,100\n"
    found = problems("farm_subsidy", write(tmp_path, text))
    assert found[0].startswith("data.csv 第 2 行：未知的列“金钱”")
    assert "（是不是“金额（元）”？）" in found[0]
    assert found[1] == "data.csv 第 2 行：表头缺少必需的列：金额（元）"


def test_field_lines_rows_and_flags(tmp_path: Path) -> None:
    found = problems("meeting", write(tmp_path, "会议名称,村民大会,多余\n会议日期,明天\n"))
    assert found[0].startswith("data.csv 第 1 行：字段“会议名称”只能有一个值")
    assert found[1].startswith("data.csv 第 2 行：未知的字段“会议日期”")
    with pytest.raises(TemplateError) as err:
        fill("meeting", None, "时间 2026-12-05")
    assert "--field 要写成 名称=值" in err.value.render("zh")
    with pytest.raises(TemplateError) as err:
        fill("farm_subsidy", None, "期间=2026年")
    assert "需要数据文件" in err.value.render("zh")
    found = problems("farm_subsidy", write(tmp_path, "期间,2026年\n户主,金额\n张三,1,2\n"))
    assert found == ["data.csv 第 3 行：这一行比表头多 1 格，请检查是否多了逗号或错列"]


def test_bidi_characters_in_cells_are_refused(tmp_path: Path) -> None:
    text = "期间,2026年\n户主,金额\n张\u202e三,100\n"
    found = problems("farm_subsidy", write(tmp_path, text))
    assert found == ["data.csv 第 3 行：含有双向文字控制符（可能让内容显示得与实际不同），请删除"]


def test_flags_override_file_fields(tmp_path: Path) -> None:
    filled = fill("village_finance", write(tmp_path, FINANCE), "期间=2026-11", "说明=已审核")
    assert "已审核" in filled.body
    filled = fill("village_finance", write(tmp_path, FINANCE), "period=2026年11月")
    assert filled.title.endswith("2026年11月村级财务收支公开")


# -- farm subsidies: IDs masked by the template ------------------------------------------

SUBSIDY = """\
期间,2026年
补贴项目,耕地地力保护补贴
监督电话,0635-6123456

户主,身份证号,面积（亩）,标准（元/亩）,金额（元）,备注
张三,371521198001010017,10.5,120,"1,260.00",
李四,11010519491231002x,6,120,720元,
王五,371521196805150039,8.25,120,990,证号待核
"""


def test_subsidy_masks_every_id_even_a_mistyped_one(tmp_path: Path) -> None:
    filled = fill("farm_subsidy", write(tmp_path, SUBSIDY))
    assert filled.table is not None
    ids = [row[1] for row in filled.table.rows]
    # The last ID has a wrong check digit: no detector would find it, the column masks it.
    assert ids == ["371521********0017", "110105********002X", "371521********0039", ""]
    assert "371521196805150039" not in str(filled.notice_fields())
    assert filled.table.rows[-1] == ["合计", "", "24.75", "", "2,970.00", ""]
    assert "共 3 户，补贴金额合计 2,970.00 元" in filled.body
    # Loudspeakers read the total row as a total, not as a household named 合计.
    said = table_sentences(filled.table.model_dump())
    assert said[-1] == "合计，面积：二十四点七五亩，金额：两千九百七十元。"
    assert said[1].startswith("户主：张三，身份证号：尾号零零一七，")
    assert filled.title == "刘庄村2026年耕地地力保护补贴发放公示"
    draft = build_notice({**filled.notice_fields(), "targets": {"villages": ["east-liu"]}})
    assert draft.personal_data == "block"  # only the ID column is the template's to mask
    assert scan_notice(draft.title, draft.body, filled.table.model_dump()).findings == []


def test_subsidy_phone_in_a_remark_is_still_refused(tmp_path: Path) -> None:
    filled = fill("farm_subsidy", write(tmp_path, SUBSIDY.replace("证号待核", "13812345678")))
    draft = build_notice({**filled.notice_fields(), "targets": {"villages": ["east-liu"]}})
    with pytest.raises(NoticeError) as err:
        guard_personal_data(draft)
    assert "表格第 3 行第 6 列中有手机号（138****5678）" in err.value.render("zh")


def test_subsidy_area_times_rate_and_totals_are_checked(tmp_path: Path) -> None:
    text = SUBSIDY.replace("6,120,720元", "6,120,700元") + "合计,,,,3000,\n"
    found = problems("farm_subsidy", write(tmp_path, text))
    assert found == [
        "data.csv 第 7 行：金额 700.00 元与面积 6 亩 × 标准 120.00 元 = 720.00 元不符，请核对",
        "data.csv 第 9 行：“合计”写的是 3,000.00 元，但逐项相加是 2,950.00 元（相差 50.00 元），"
        "请核对",
    ]


def test_subsidy_items_per_row_and_duplicates_warned(tmp_path: Path) -> None:
    text = """\
期间,2026年第一批
户主,补贴项目,金额
张三,耕地地力保护补贴,100
张三,农机购置补贴,"2,000"
李四,耕地地力保护补贴,80
张三,耕地地力保护补贴,100
"""
    filled = fill("farm_subsidy", write(tmp_path, text))
    assert filled.title == "刘庄村2026年第一批惠农补贴发放公示"
    assert "（耕地地力保护补贴 280.00 元，农机购置补贴 2,000.00 元）" in filled.body
    assert filled.table is not None and filled.table.columns == ["户主", "补贴项目", "金额（元）"]
    assert [w.render("zh") for w in filled.warnings] == [
        "户主“张三 / 耕地地力保护补贴”出现了 2 次（第 3、6 行），请确认不是重复登记"
    ]
    found = problems("farm_subsidy", write(tmp_path, "期间,2026年\n户主,金额\n张三,100\n"))
    assert found[0].startswith("data.csv 第 3 行：没有补贴项目")


def test_mask_id_by_position_for_anything_in_an_id_column() -> None:
    assert mask_id("11010519491231002X") == "110105********002X"
    assert mask_id("371521 19680515 0039") == "371521********0039"
    assert mask_id("E12345678") == "*****5678"
    assert mask_id("123") == "***"


# -- poverty monitoring, land, meetings, warnings -----------------------------------------


def test_poverty_monitoring_types_and_risk_removal(tmp_path: Path) -> None:
    text = "批次,2026年第三批\n户主,家庭人口,监测类型\n赵六,4,边缘户\n钱七,2人,贫困户\n"
    found = problems("poverty_monitoring", write(tmp_path, text))
    assert found == [
        "data.csv 第 4 行：监测类型应为 脱贫不稳定户、边缘易致贫户、突发严重困难户，这里是“贫困户”"
    ]
    filled = fill("poverty_monitoring", write(tmp_path, text.replace("贫困户", "不稳定户")))
    assert filled.table is not None
    assert filled.table.rows == [["赵六", "4", "边缘易致贫户"], ["钱七", "2人", "脱贫不稳定户"]]
    assert "拟将以下 2 户 6 人纳入防返贫监测对象" in filled.body
    removal = fill(
        "poverty_monitoring", write(tmp_path, "批次,2026年\n事项,风险消除\n户主\n赵六\n")
    )
    assert removal.title == "刘庄村2026年防返贫监测对象风险消除公示"
    assert "风险已稳定消除" in removal.body
    # The household income column is not read as the village's income by loudspeakers.
    said = table_sentences(
        {"columns": ["户主", "人均纯收入（元）"], "rows": [["赵六", "6,800.00"]]}
    )
    assert said == ["户主：赵六，人均纯收入：六千八百元。"]


def test_land_compensation_checks_area_times_rate(tmp_path: Path) -> None:
    text = """\
项目名称,2026年第3批次城镇建设用地
户主,地块,面积（亩）,标准（元/亩）,补偿金额（元）
孙八,东洼 3-12,1.25,"52,000","65,000.00"
周九,东洼 3-13,0.8,"52,000","41,000.00"
"""
    found = problems("land_compensation", write(tmp_path, text))
    assert found == [
        "data.csv 第 4 行：金额 41,000.00 元与面积 0.8 亩 × 标准 52,000.00 元 = 41,600.00 元不符，"
        "请核对"
    ]
    filled = fill("land_compensation", write(tmp_path, text.replace("41,000.00", "41600")))
    assert filled.table is not None and filled.table.rows[-1] == [
        "合计",
        "",
        "2.05",
        "",
        "106,600.00",
    ]
    assert "征收土地 2.05 亩，补偿金额合计 106,600.00 元" in filled.body


def test_meeting_from_flags_expires_after_the_meeting() -> None:
    filled = fill(
        "meeting",
        None,
        "会议名称=村民代表会议",
        "时间=12月5日下午2点半",
        "地点=村委会会议室",
        "参会人员=全体村民代表",
        "议题=审议预算；讨论修路\n选举监委会成员",
    )
    assert filled.title == "关于召开村民代表会议的通知"
    assert filled.priority == Priority.IMPORTANT
    assert "定于2026年12月5日（星期六）下午2:30在村委会会议室召开村民代表会议" in filled.body
    assert "一、审议预算。\n二、讨论修路。\n三、选举监委会成员。" in filled.body
    assert filled.body.endswith("刘庄村村民委员会\n2026年12月1日")
    assert filled.expires_at == datetime(2026, 12, 5, 17, 30)
    found = problems(
        "meeting", None, "会议名称=会", "时间=2026-11-30 09:00", "地点=x", "参会人员=y"
    )
    assert found == ["字段“时间”：会议时间 2026-11-30 09:00 已经过去了"]


def test_emergency_warning_levels_and_expiry() -> None:
    filled = fill(
        "emergency",
        None,
        "预警类型=暴雨预警",
        "预警级别=II级",
        "发布单位=阳谷县气象台",
        "预警内容=预计今晚有暴雨。",
        "防御措施=远离河道。",
    )
    assert filled.title == "阳谷县气象台发布暴雨橙色预警"
    assert (filled.category, filled.priority) == (Category.EMERGENCY, Priority.EMERGENCY)
    assert filled.expires_at == NOW.replace(tzinfo=None) + timedelta(hours=24)
    assert "防御措施：远离河道。" in filled.body
    found = problems("emergency", None, "预警类型=大风", "预警级别=紫色", "预警内容=x")
    assert found == ["字段“预警级别”：预警级别应为 蓝色、黄色、橙色 或 红色，这里是“紫色”"]
    plain = fill("emergency", None, "预警类型=森林火险", "预警内容=x", "有效期至=12月3日18:00")
    assert plain.title == "刘庄村村民委员会发布森林火险预警"
    assert plain.expires_at == datetime(2026, 12, 3, 18, 0)


# -- periods and times --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "label", "days"),
    [
        ("2026-11", "2026年11月", 30),
        ("2026年2月", "2026年2月", 28),
        ("2026年第四季度", "2026年第四季度", 92),
        ("2026Q1", "2026年第一季度", 90),
        ("2026年上半年", "2026年上半年", 181),
        ("2026年", "2026年度", 365),
    ],
)
def test_periods(text: str, label: str, days: int) -> None:
    period = parse_period(text)
    assert period is not None and period.label == label
    assert (period.end - period.start).days == days


def test_times_as_secretaries_write_them() -> None:
    assert parse_datetime("2026-12-05 09:00") == datetime(2026, 12, 5, 9, 0)
    assert parse_datetime("2026年12月5日上午9点") == datetime(2026, 12, 5, 9, 0)
    assert parse_datetime("12月5日（星期六）晚上8点", default_year=2026) == datetime(
        2026, 12, 5, 20, 0
    )
    assert parse_datetime("2026/12/5 14:30") == datetime(2026, 12, 5, 14, 30)
    assert parse_datetime("明天上午") is None
    assert parse_datetime("2026-02-30 09:00") is None
