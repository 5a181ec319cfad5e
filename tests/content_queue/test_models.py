"""The notice model: clean input accepted, every mistake explained in Chinese and English."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from content_queue.errors import NoticeError
from content_queue.models import CATEGORY_LABELS, Category, build_notice


def _data(**over: object) -> dict[str, object]:
    data: dict[str, object] = {
        "title": "2026年10月村级财务公开",
        "body": "本月收入合计12,345.60元。",
        "category": "village_finance",
        "targets": {"villages": ["east-liu"]},
    }
    data.update(over)
    return data


def _error(**over: object) -> NoticeError:
    with pytest.raises(NoticeError) as err:
        build_notice(_data(**over))
    return err.value


def test_valid_notice_gets_defaults() -> None:
    n = build_notice(_data())
    assert n.priority == "routine" and n.channels is None and n.revision == 1


def test_every_category_has_a_chinese_label() -> None:
    assert set(CATEGORY_LABELS) == set(Category)
    assert CATEGORY_LABELS[Category.POVERTY_MONITORING].render("zh").startswith("防返贫监测")
    assert CATEGORY_LABELS[Category.VILLAGE_FINANCE].render("zh") == "村级财务"


@pytest.mark.parametrize("title", ["", "   ", "\u200b"])
def test_empty_title(title: str) -> None:
    err = _error(title=title)
    assert "标题不能为空" in err.render("zh")
    assert "title must not be empty" in err.render("en")


def test_expiry_before_publish() -> None:
    err = _error(publish_at="2026-12-02T08:00", expires_at="2026-12-01T08:00")
    assert "失效时间必须晚于发布时间" in err.render("zh")


def test_no_target() -> None:
    err = _error(targets={})
    assert "--village" in err.render("zh")


def test_unknown_category_lists_choices() -> None:
    err = _error(category="finance")
    assert "类别无效" in err.render("zh") and "village_finance" in err.render("zh")


def test_bidi_controls_refused_and_zero_width_dropped() -> None:
    assert "双向文字控制符" in _error(body="收入\u202e合计").render("zh")
    assert build_notice(_data(body="收\u200b入")).body == "收入"


def test_title_too_long() -> None:
    assert "最多 80 个字" in _error(title="通" * 81).render("zh")


def test_table_rows_must_match_columns() -> None:
    err = _error(table={"columns": ["项目", "金额"], "rows": [["租金"]]})
    assert "表格某一行有 1 格，但表头有 2 列" in err.render("zh")


def test_naive_times_are_county_local_time() -> None:
    n = build_notice(_data(publish_at="2026-12-01 08:00"))
    assert n.publish_at == datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


def test_rejection_is_one_error_listing_every_problem() -> None:
    err = _error(title="", category="x", targets={})
    assert len(err.details) == 3
    assert err.render("zh").startswith("通知内容有误，未保存")
