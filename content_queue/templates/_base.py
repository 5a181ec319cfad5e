"""What every disclosure template shares: field and column specs, the data it is filled
from, the filled notice, and a collector that gathers every problem before failing."""

from __future__ import annotations

import re
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar, Literal

from content_queue.amounts import AmountError, format_amount, parse_amount, parse_quantity
from content_queue.errors import NoticeError
from content_queue.i18n import Text, tr
from content_queue.models import MAX_TITLE_CHARS, Category, NoticeTable, Priority
from content_queue.privacy import find_personal_data, mask_text

__all__ = [
    "Filled",
    "Problems",
    "Row",
    "Spec",
    "Template",
    "TemplateData",
    "TemplateError",
    "mask_id",
    "norm_name",
]

SpecKind = Literal["text", "amount", "quantity", "date", "datetime", "id"]


class TemplateError(NoticeError):
    """The data does not fill the template; every problem is listed with its row."""


def norm_name(name: str) -> str:
    """A header or field name as matched: no spaces, no colon, no unit in brackets."""
    name = unicodedata.normalize("NFKC", name).strip().rstrip(":：").strip()
    name = re.sub(r"\s*[（(][^（）()]{1,8}[)）]\s*$", "", name)
    return re.sub(r"\s+", "", name).lower()


@dataclass(frozen=True)
class Spec:
    """One field (a single value) or one column (a value per row) of a template."""

    key: str
    label: str
    """The Chinese name used in data files, tables and `template show`."""
    help: Text
    required: bool = False
    kind: SpecKind = "text"
    example: str = ""
    aliases: tuple[str, ...] = ()
    mask: bool = False
    """Personal data in this column is always masked (resident IDs in a subsidy list)."""

    def names(self) -> frozenset[str]:
        return frozenset(norm_name(n) for n in (self.key, self.label, *self.aliases))


@dataclass(frozen=True)
class Row:
    line: int
    """Where the row is in its file (CSV line, XLSX row number), for error messages."""
    cells: Mapping[str, str]
    """Column key -> the cell's text (stripped; empty when the cell is blank)."""

    def get(self, key: str) -> str:
        return self.cells.get(key, "")


@dataclass(frozen=True)
class TemplateData:
    """What a template is filled from: single fields and table rows."""

    source: str
    """The data file's name, or '--field' when everything came from flags."""
    fields: Mapping[str, str] = field(default_factory=dict)
    field_lines: Mapping[str, int] = field(default_factory=dict)
    """Field key -> line in the file (absent when the value came from --field)."""
    rows: Sequence[Row] = ()
    columns: Sequence[str] = ()
    """Keys of the columns present in the file, in file order."""

    def where(self, line: int) -> Text:
        return tr("{src} 第 {n} 行", "{src} line {n}", src=self.source, n=line)

    def field_where(self, key: str, label: str) -> Text:
        line = self.field_lines.get(key)
        if line is None:
            return tr("字段“{f}”", "field '{f}'", f=label)
        return tr(
            "{src} 第 {n} 行（{f}）", "{src} line {n} ({f})", src=self.source, n=line, f=label
        )


@dataclass(frozen=True)
class Filled:
    """A notice as a template filled it; CLI flags may still override any part."""

    template: str
    title: str
    body: str
    category: Category
    priority: Priority = Priority.ROUTINE
    table: NoticeTable | None = None
    expires_at: datetime | None = None
    warnings: tuple[Text, ...] = ()

    def notice_fields(self) -> dict[str, Any]:
        """The parts of a NoticeDraft this fills (targets, author, ... come from elsewhere)."""
        data: dict[str, Any] = {
            "title": self.title,
            "body": self.body,
            "category": self.category.value,
            "priority": self.priority.value,
        }
        if self.table is not None:
            data["table"] = self.table.model_dump()
        if self.expires_at is not None:
            data["expires_at"] = self.expires_at
        return data


class Problems:
    """Collects every problem in the data, so the secretary fixes the file in one go."""

    def __init__(self, data: TemplateData) -> None:
        self.data = data
        self.items: list[Text] = []

    def add(self, where: Text, what: Text) -> None:
        self.items.append(tr("{w}：{x}", "{w}: {x}", w=where, x=what))

    def check(self, template: Template) -> None:
        if self.items:
            raise TemplateError(
                tr(
                    "数据不符合模板“{t}”，有 {n} 处问题，通知未保存",
                    "the data does not fit the template '{t}': {n} problem(s); nothing was saved",
                    t=template.name,
                    n=len(self.items),
                ),
                details=self.items,
            )

    # -- fields ----------------------------------------------------------------------------

    def field(self, spec: Spec) -> str:
        value = self.data.fields.get(spec.key, "").strip()
        if not value and spec.required:
            self.items.append(
                tr(
                    "缺少字段“{f}”（{h}），请在数据文件开头加一行“{f},值”，或用 --field {f}=值",
                    "the field '{f}' ({h}) is missing; add a line '{f},value' at the top of the "
                    "data file, or use --field {f}=value",
                    f=spec.label,
                    h=spec.help,
                )
            )
        return value

    def field_amount(self, spec: Spec, *, allow_negative: bool = False) -> Decimal | None:
        raw = self.field(spec)
        if not raw:
            return None
        try:
            return parse_amount(raw, allow_negative=allow_negative)
        except AmountError as exc:
            self.add(self.data.field_where(spec.key, spec.label), exc.text)
            return None

    # -- cells -----------------------------------------------------------------------------

    def cell(self, row: Row, spec: Spec) -> str:
        value = row.get(spec.key)
        if not value and spec.required:
            self.add(
                self.data.where(row.line),
                tr("“{c}”不能为空", "'{c}' must not be empty", c=spec.label),
            )
        return value

    def amount(self, row: Row, spec: Spec, *, allow_negative: bool = False) -> Decimal | None:
        raw = self.cell(row, spec)
        if not raw:
            return None
        try:
            return parse_amount(raw, allow_negative=allow_negative)
        except AmountError as exc:
            self.add(
                self.data.where(row.line), tr("{c}：{e}", "{c}: {e}", c=spec.label, e=exc.text)
            )
            return None

    def quantity(self, row: Row, spec: Spec, *, units: tuple[str, ...] = ()) -> Decimal | None:
        raw = self.cell(row, spec)
        if not raw:
            return None
        try:
            return parse_quantity(raw, unit_words=units)
        except AmountError as exc:
            self.add(
                self.data.where(row.line), tr("{c}：{e}", "{c}: {e}", c=spec.label, e=exc.text)
            )
            return None

    def total_mismatch(
        self, where: Text, *, what: str, given: Decimal, computed: Decimal, unit: str = "元"
    ) -> None:
        """A total written in the data that is not the sum of its rows: name the row."""
        if given == computed:
            return
        self.add(
            where,
            tr(
                "“{what}”写的是 {g} {u}，但逐项相加是 {c} {u}（相差 {d} {u}），请核对",
                "'{what}' says {g} {u} but the rows add up to {c} {u} (a difference of {d} {u}); "
                "please check",
                what=what,
                g=format_amount(given) if unit == "元" else given,
                c=format_amount(computed) if unit == "元" else computed,
                d=format_amount(abs(given - computed)) if unit == "元" else abs(given - computed),
                u=unit,
            ),
        )


def mask_id(value: str) -> str:
    """A resident ID (or anything in an ID column) as published: 370781********1234.

    A number the detector recognises is masked in its style; anything else in an ID
    column (a mistyped check digit, a passport number) is masked by position, so that a
    typo never publishes a real person's number in full."""
    findings = find_personal_data(value)
    if findings:
        return mask_text(value, findings)
    compact = re.sub(r"[\s\-]", "", value)
    if len(compact) >= 15:
        return compact[:6] + "*" * (len(compact) - 10) + compact[-4:]
    if len(compact) > 4:
        return "*" * (len(compact) - 4) + compact[-4:]
    return "*" * len(compact)


class Template(ABC):
    """A disclosure template: declared fields and columns, and ``fill`` that checks the data
    and writes title, body and table."""

    name: ClassVar[str]
    label: ClassVar[Text]
    summary: ClassVar[Text]
    category: ClassVar[Category]
    priority: ClassVar[Priority] = Priority.ROUTINE
    fields: ClassVar[tuple[Spec, ...]] = ()
    columns: ClassVar[tuple[Spec, ...]] = ()
    example_rows: ClassVar[tuple[Mapping[str, str], ...]] = ()
    """Example table rows (column key -> cell) for `template show`."""

    @abstractmethod
    def fill(self, data: TemplateData, *, place: str, now: datetime) -> Filled:
        """Check the data and write the notice; raise TemplateError listing every problem.

        ``place`` is the name the notice speaks for (the village, or the township or
        county for a wider notice); ``now`` is the county's local time."""

    def spec(self, key: str) -> Spec:
        for s in (*self.fields, *self.columns):
            if s.key == key:
                return s
        raise KeyError(key)

    def example_csv(self) -> str:
        """An example data file: fields first, a blank line, then the table."""
        import csv
        import io

        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        for f in self.fields:
            if f.example:
                writer.writerow([f.label, f.example])
        if self.columns:
            if self.fields:
                writer.writerow([])
            cols = [c for c in self.columns if any(r.get(c.key) for r in self.example_rows)]
            writer.writerow([c.label for c in cols])
            for r in self.example_rows:
                writer.writerow([r.get(c.key, "") for c in cols])
        return out.getvalue()


def title_of(*parts: str) -> str:
    """A title from parts, shortened in the middle part if it would be too long."""
    title = "".join(parts)
    if len(title) <= MAX_TITLE_CHARS:
        return title
    return title[: MAX_TITLE_CHARS - 1] + "…"


def issuer_of(place: str) -> str:
    """Who signs a notice for ``place``: a village committee, or a township or county government."""
    return f"{place}村民委员会" if place.endswith("村") else f"{place}人民政府"


def table_of(
    *, caption: str | None, columns: Sequence[str], rows: Sequence[Sequence[str]]
) -> NoticeTable:
    return NoticeTable(caption=caption, columns=list(columns), rows=[list(r) for r in rows])
