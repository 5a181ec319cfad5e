"""The notice as a secretary enters it: a validated pydantic model with Chinese error messages."""

from __future__ import annotations

import os
import unicodedata
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from content_queue.errors import NoticeError
from content_queue.i18n import Text, tr
from content_queue.registry import EndpointKind

__all__ = [
    "CATEGORY_LABELS",
    "MAX_BODY_CHARS",
    "MAX_TITLE_CHARS",
    "PRIORITY_LABELS",
    "Category",
    "NoticeDraft",
    "NoticeTable",
    "Priority",
    "Targets",
    "build_notice",
    "ensure_aware",
    "local_tz",
]

MAX_TITLE_CHARS = 80
MAX_BODY_CHARS = 20000
"""Hard ceiling for any notice; each channel declares its own, usually smaller, limit."""


class Category(StrEnum):
    POVERTY_MONITORING = "poverty_monitoring"
    VILLAGE_FINANCE = "village_finance"
    FARM_SUBSIDY = "farm_subsidy"
    SOCIAL_INSURANCE = "social_insurance"
    LAND_COMPENSATION = "land_compensation"
    PARTY_AFFAIRS = "party_affairs"
    VILLAGE_AFFAIRS = "village_affairs"
    MEETING = "meeting"
    EMERGENCY = "emergency"
    OTHER = "other"


CATEGORY_LABELS: dict[Category, Text] = {
    Category.POVERTY_MONITORING: tr("防返贫监测（脱贫攻坚）", "Poverty-alleviation monitoring"),
    Category.VILLAGE_FINANCE: tr("村级财务", "Village finance"),
    Category.FARM_SUBSIDY: tr("惠农补贴", "Farm subsidies"),
    Category.SOCIAL_INSURANCE: tr("社保医保", "Social and medical insurance"),
    Category.LAND_COMPENSATION: tr("征地拆迁补偿", "Land requisition compensation"),
    Category.PARTY_AFFAIRS: tr("党务公开", "Party affairs"),
    Category.VILLAGE_AFFAIRS: tr("村务公开", "Village affairs"),
    Category.MEETING: tr("会议通知", "Meetings"),
    Category.EMERGENCY: tr("应急通知", "Emergency"),
    Category.OTHER: tr("其他", "Other"),
}


class Priority(StrEnum):
    ROUTINE = "routine"
    IMPORTANT = "important"
    EMERGENCY = "emergency"


PRIORITY_LABELS: dict[Priority, Text] = {
    Priority.ROUTINE: tr("普通", "routine"),
    Priority.IMPORTANT: tr("重要", "important"),
    Priority.EMERGENCY: tr("紧急", "emergency"),
}

# Invisible characters that only hide or reorder text: zero-width ones are dropped,
# bidi overrides are refused (they can make a list read differently than it is stored).
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFC", text).translate(_ZERO_WIDTH)
    if any(ch in _BIDI for ch in text):
        raise PydanticCustomError("vc_bidi", "contains bidirectional control characters")
    bad = [ch for ch in text if unicodedata.category(ch) == "Cc" and ch not in "\n\t"]
    if bad:
        raise PydanticCustomError("vc_control", "contains control characters")
    return text.replace("\r\n", "\n").strip()


def local_tz() -> ZoneInfo:
    """The county's time zone (VILLAGECAST_TIMEZONE, default Asia/Shanghai), not the server's."""
    name = os.environ.get("VILLAGECAST_TIMEZONE", "Asia/Shanghai")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("Asia/Shanghai")


def ensure_aware(value: datetime) -> datetime:
    """Naive times are the county's local time; everything is stored in UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=local_tz())
    return value.astimezone(UTC)


class NoticeTable(BaseModel):
    """A structured table (finance income/expenditure, subsidy lists) for channels that show one."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    caption: str | None = None
    columns: list[str] = Field(min_length=1, max_length=20)
    rows: list[list[str]] = Field(default_factory=list, max_length=2000)

    @model_validator(mode="after")
    def _row_widths(self) -> NoticeTable:
        for row in self.rows:
            if len(row) != len(self.columns):
                raise PydanticCustomError(
                    "vc_table_width",
                    "a table row has {got} cells but there are {want} columns",
                    {"got": len(row), "want": len(self.columns)},
                )
        return self


class Targets(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    villages: list[str] = Field(default_factory=list)
    townships: list[str] = Field(default_factory=list)
    county: bool = False

    @model_validator(mode="after")
    def _some_target(self) -> Targets:
        if not (self.villages or self.townships or self.county):
            raise PydanticCustomError("vc_no_target", "no target")
        return self


class NoticeDraft(BaseModel):
    """A notice entered once; the planner turns it into one delivery per endpoint."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS)
    body: str = Field(min_length=1, max_length=MAX_BODY_CHARS)
    category: Category
    priority: Priority = Priority.ROUTINE
    targets: Targets
    channels: list[EndpointKind] | None = None
    """None means every endpoint of the targeted villages."""
    publish_at: datetime | None = None
    expires_at: datetime | None = None
    author: str = Field(default="", max_length=64)
    revision: int = Field(default=1, ge=1)
    supersedes: int | None = Field(default=None, ge=1)
    table: NoticeTable | None = None
    personal_data: Literal["block", "mask"] = "block"
    """What to do with personal data found before publishing (content_queue.privacy):
    refuse the notice with every finding named, or mask it in the published style."""

    @field_validator("title", "body", mode="before")
    @classmethod
    def _clean_text(cls, value: Any) -> Any:
        return _clean(value) if isinstance(value, str) else value

    @field_validator("publish_at", "expires_at", mode="after")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return ensure_aware(value) if value is not None else None

    @model_validator(mode="after")
    def _times(self) -> NoticeDraft:
        start = self.publish_at or datetime.now(UTC)
        if self.expires_at is not None and self.expires_at <= start:
            raise PydanticCustomError("vc_expiry_order", "expires_at must be after publish_at")
        if self.channels is not None and not self.channels:
            raise PydanticCustomError("vc_no_channel", "no channel")
        if "\n" in self.title:
            raise PydanticCustomError("vc_title_newline", "title has a line break")
        return self


_FIELD_LABELS: dict[str, Text] = {
    "title": tr("标题", "title"),
    "body": tr("正文", "body"),
    "category": tr("类别", "category"),
    "priority": tr("优先级", "priority"),
    "targets": tr("发送对象", "targets"),
    "channels": tr("渠道", "channels"),
    "publish_at": tr("发布时间", "publish time"),
    "expires_at": tr("失效时间", "expiry time"),
    "author": tr("发布人", "author"),
    "revision": tr("版本号", "revision"),
    "supersedes": tr("更正的通知", "superseded notice"),
    "table": tr("表格", "table"),
    "personal_data": tr("个人信息处理方式", "personal data handling"),
}


def _explain(err: Any) -> Text:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    loc = [str(p) for p in err["loc"]]
    field = _FIELD_LABELS.get(loc[0], tr(loc[0], loc[0])) if loc else tr("通知", "notice")
    f_zh, f_en = field.render("zh"), field.render("en")
    fixed: dict[str, Text] = {
        "vc_expiry_order": tr(
            "失效时间必须晚于发布时间", "the expiry time must be after the publish time"
        ),
        "vc_no_target": tr(
            "请指定发送对象：--village、--township 或 --county",
            "choose whom to send to: --village, --township or --county",
        ),
        "vc_no_channel": tr("渠道列表不能为空", "the channel list is empty"),
        "vc_bidi": tr(
            "{f}含有双向文字控制符（可能让内容显示得与实际不同），请删除后重试",
            "the {e} contains bidirectional control characters; remove them",
            f=f_zh,
            e=f_en,
        ),
        "vc_control": tr(
            "{f}含有不可见的控制字符，请删除后重试",
            "the {e} contains invisible control characters; remove them",
            f=f_zh,
            e=f_en,
        ),
        "vc_title_newline": tr("标题不能换行", "the title must be one line"),
        "vc_table_width": tr(
            "表格某一行有 {got} 格，但表头有 {want} 列",
            "a table row has {got} cells but the header has {want} columns",
            got=ctx.get("got"),
            want=ctx.get("want"),
        ),
    }
    if kind in fixed:
        return fixed[kind]
    if kind in ("string_too_short", "missing") and loc and loc[0] in ("title", "body"):
        return tr("{f}不能为空", "the {e} must not be empty", f=f_zh, e=f_en)
    if kind == "missing":
        return tr("缺少{f}", "the {e} is missing", f=f_zh, e=f_en)
    if kind == "string_too_long":
        return tr(
            "{f}太长：最多 {n} 个字",
            "the {e} is too long: at most {n} characters",
            f=f_zh,
            e=f_en,
            n=ctx.get("max_length"),
        )
    if kind in ("enum", "literal_error"):
        return tr(
            "{f}无效，可选值：{choices}",
            "invalid {e}; choose one of: {choices}",
            f=f_zh,
            e=f_en,
            choices=ctx.get("expected", ""),
        )
    if kind.startswith("datetime"):
        return tr(
            "{f}格式不对，请写成 2026-12-01T08:00 或 2026-12-01 08:00",
            "the {e} is not a valid time; write it like 2026-12-01T08:00",
            f=f_zh,
            e=f_en,
        )
    return tr("{f}无效：{m}", "invalid {e}: {m}", f=f_zh, e=f_en, m=err["msg"])


def build_notice(data: dict[str, Any]) -> NoticeDraft:
    """Validate a notice, turning pydantic's errors into one clear bilingual error."""
    try:
        return NoticeDraft.model_validate(data)
    except ValidationError as exc:
        raise NoticeError(
            tr("通知内容有误，未保存", "the notice is invalid and was not saved"),
            details=[_explain(e) for e in exc.errors()],
        ) from None
