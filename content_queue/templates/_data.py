"""Read a template's data from a CSV or XLSX file and from ``--field KEY=VALUE`` flags.

One layout for both file types, the way a secretary fills a sheet::

    期间,2026年11月          <- fields: a name and its value, one per line (optional)
    期初余额,52000.00
                             <- a blank line (optional)
    日期,项目,收入,支出,备注  <- the table: a header row, then one row per item
    2026-11-03,上级转移支付,12000,,

CSV files may be UTF-8 (with or without BOM) or GBK/GB18030, which is what Excel on a
Chinese Windows PC writes. XLSX is read from its first sheet with the values Excel last
computed (formulas are not evaluated here).
"""

from __future__ import annotations

import csv
import difflib
import io
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any

from content_queue.i18n import Text, tr
from content_queue.templates._base import (
    Row,
    Spec,
    Template,
    TemplateData,
    TemplateError,
    norm_name,
)

__all__ = ["apply_fields", "read_data", "rows_to_data"]

_IGNORED_COLUMNS = frozenset(norm_name(n) for n in ("序号", "编号", "No", "No.", "#"))
_ZERO_WIDTH = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")
MAX_ROWS = 2000


def _fail(text: Text, details: list[Text] | None = None) -> TemplateError:
    return TemplateError(text, details=details)


def _decode(path: Path, raw: bytes) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("gb18030")  # Excel's "CSV" on a Chinese Windows PC is GBK
    except UnicodeDecodeError:
        raise _fail(
            tr(
                "{p} 既不是 UTF-8 也不是 GBK 编码，请在 Excel 中另存为“CSV UTF-8”",
                "{p} is neither UTF-8 nor GBK; save it from Excel as 'CSV UTF-8'",
                p=path.name,
            )
        ) from None


def _cell_text(value: Any) -> str:
    """A spreadsheet value as the text a person sees; numbers never pass through float."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "是" if value else "否"
    if isinstance(value, datetime):
        if value.time() == time(0, 0):
            return value.date().isoformat()
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.strftime("%H:%M")
    if isinstance(value, float):
        # repr() is the shortest text that reads back as the same double: 1234.5, not
        # 1234.4999999; Excel itself keeps 15 significant digits.
        text = repr(value)
        return (
            format(Decimal(text).normalize(), "f")
            if "e" in text or "E" in text
            else text.removesuffix(".0")
        )
    return str(value)


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".xlsx", ".xlsm"):
            return _xlsx_rows(path)
        if suffix == ".xls":
            raise _fail(
                tr(
                    "{p} 是旧的 .xls 格式：请在 Excel 中另存为 .xlsx 或 CSV",
                    "{p} is an old .xls workbook; save it as .xlsx or CSV",
                    p=path.name,
                )
            )
        text = _decode(path, path.read_bytes())
    except FileNotFoundError:
        raise _fail(tr("找不到数据文件 {p}", "data file not found: {p}", p=path)) from None
    except OSError as exc:
        raise _fail(
            tr("无法读取 {p}：{e}", "cannot read {p}: {e}", p=path, e=exc.strerror or exc)
        ) from None
    reader = csv.reader(io.StringIO(text, newline=""))
    out = []
    try:
        for cells in reader:
            out.append((reader.line_num, cells))
    except csv.Error as exc:
        raise _fail(
            tr(
                "{p} 第 {n} 行不是有效的 CSV：{e}",
                "{p} line {n} is not valid CSV: {e}",
                p=path.name,
                n=reader.line_num,
                e=exc,
            )
        ) from None
    return out


def _xlsx_rows(path: Path) -> list[tuple[int, list[str]]]:
    import zipfile

    from openpyxl import load_workbook  # local: only XLSX input needs it

    try:
        wb = load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise _fail(
            tr(
                "{p} 不是有效的 .xlsx 文件（{e}）",
                "{p} is not a valid .xlsx workbook ({e})",
                p=path.name,
                e=type(exc).__name__,
            )
        ) from None
    try:
        sheet = wb.worksheets[0]
        out = []
        for number, values in enumerate(sheet.iter_rows(values_only=True), start=1):
            out.append((number, [_cell_text(v) for v in values]))
        return out
    finally:
        wb.close()


def _clean(text: str, problems: list[Text], where: Text) -> str:
    text = unicodedata.normalize("NFC", text).translate(_ZERO_WIDTH).replace("\r\n", "\n")
    if any(ch in _BIDI for ch in text):
        problems.append(
            tr(
                "{w}：含有双向文字控制符（可能让内容显示得与实际不同），请删除",
                "{w}: contains bidirectional control characters; remove them",
                w=where,
            )
        )
    if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in text):
        problems.append(
            tr("{w}：含有不可见的控制字符，请删除", "{w}: contains control characters", w=where)
        )
    return text.strip()


def _lookup(specs: Sequence[Spec]) -> dict[str, Spec]:
    return {name: s for s in specs for name in s.names()}


def _unknown(kind: Text, name: str, specs: Sequence[Spec]) -> Text:
    labels = [s.label for s in specs]
    by_name = {n: s.label for s in specs for n in s.names()}
    match = difflib.get_close_matches(norm_name(name), list(by_name), n=1, cutoff=0.5)
    close = [by_name[match[0]]] if match else []
    return tr(
        "未知的{k}“{v}”，可用的{k}：{allowed}{hint}",
        "unknown {k} '{v}'; the {k}s are: {allowed}{hint}",
        k=kind,
        v=name,
        allowed="、".join(labels),
        hint=tr("（是不是“{m}”？）", " (did you mean '{m}'?)", m=close[0]) if close else "",
    )


def rows_to_data(
    rows: Iterable[tuple[int, Sequence[str]]], template: Template, *, source: str
) -> TemplateData:
    """Split raw rows into fields and a table, matching names against the template."""
    problems: list[Text] = []
    field_specs, column_specs = _lookup(template.fields), _lookup(template.columns)
    fields: dict[str, str] = {}
    field_lines: dict[str, int] = {}
    header: list[Spec | None] | None = None
    table: list[Row] = []
    for line, raw in rows:
        where = tr("{src} 第 {n} 行", "{src} line {n}", src=source, n=line)
        cells = [_clean(c, problems, where) for c in raw]
        while cells and not cells[-1]:
            cells.pop()
        if not any(cells):
            continue
        if header is None:
            spec = field_specs.get(norm_name(cells[0])) if cells[0] else None
            if spec is not None and _is_field_line(cells, column_specs):
                values = [c for c in cells[1:] if c]
                if len(values) > 1:
                    problems.append(
                        tr(
                            "{w}：字段“{f}”只能有一个值（在第二格），这一行有 {n} 个",
                            "{w}: the field '{f}' takes one value (in the second cell); this "
                            "line has {n}",
                            w=where,
                            f=spec.label,
                            n=len(values),
                        )
                    )
                if spec.key in fields:
                    problems.append(
                        tr(
                            "{w}：字段“{f}”重复（第一次在第 {first} 行）",
                            "{w}: the field '{f}' is given twice (first on line {first})",
                            w=where,
                            f=spec.label,
                            first=field_lines[spec.key],
                        )
                    )
                fields[spec.key] = values[0] if values else ""
                field_lines[spec.key] = line
                continue
            if not template.columns:
                problems.append(
                    tr(
                        "{w}：{x}",
                        "{w}: {x}",
                        w=where,
                        x=_unknown(tr("字段", "field"), cells[0], template.fields),
                    )
                )
                continue
            header = _header(cells, column_specs, template, where, problems)
            continue
        if len(cells) > len(header):
            extra = cells[len(header) :]
            if any(extra):
                problems.append(
                    tr(
                        "{w}：这一行比表头多 {n} 格，请检查是否多了逗号或错列",
                        "{w}: this row has {n} more cell(s) than the header; check for a stray "
                        "comma or a shifted column",
                        w=where,
                        n=sum(1 for c in extra if c),
                    )
                )
        row = {s.key: cells[i] for i, s in enumerate(header) if s is not None and i < len(cells)}
        table.append(Row(line=line, cells=row))
    if template.columns:
        if header is None:
            problems.append(
                tr(
                    "{src} 里没有表格：字段之后应有一行表头（如 {cols}），再是每行一条明细",
                    "{src} has no table: after the fields, write a header row (e.g. {cols}) "
                    "and then one row per item",
                    src=source,
                    cols="、".join(c.label for c in template.columns if c.required),
                )
            )
        elif not table:
            problems.append(
                tr("{src} 的表格没有数据行", "{src}: the table has no rows", src=source)
            )
        elif len(table) > MAX_ROWS:
            problems.append(
                tr(
                    "{src} 的表格有 {n} 行，最多 {m} 行；请分成几份公示",
                    "{src}: the table has {n} rows, at most {m}; split it into several notices",
                    src=source,
                    n=len(table),
                    m=MAX_ROWS,
                )
            )
    if problems:
        raise _fail(
            tr(
                "数据文件 {src} 有 {n} 处问题，通知未保存",
                "the data file {src} has {n} problem(s); nothing was saved",
                src=source,
                n=len(problems),
            ),
            problems,
        )
    present = [s.key for s in header or [] if s is not None]
    return TemplateData(
        source=source, fields=fields, field_lines=field_lines, rows=table, columns=present
    )


def _is_field_line(cells: list[str], columns: dict[str, Spec]) -> bool:
    """A name that is both a field and a column (备注) starts the table only when the
    line reads like a header: more than two cells, or a column name in the second."""
    if norm_name(cells[0]) not in columns:
        return True
    filled = [c for c in cells if c]
    return len(filled) <= 2 and (len(cells) < 2 or norm_name(cells[1]) not in columns)


def _header(
    cells: list[str],
    specs: dict[str, Spec],
    template: Template,
    where: Text,
    problems: list[Text],
) -> list[Spec | None]:
    header: list[Spec | None] = []
    seen: set[str] = set()
    for cell in cells:
        name = norm_name(cell)
        if not name or name in _IGNORED_COLUMNS:
            header.append(None)
            continue
        spec = specs.get(name)
        if spec is None:
            problems.append(
                tr(
                    "{w}：{x}",
                    "{w}: {x}",
                    w=where,
                    x=_unknown(tr("列", "column"), cell, template.columns),
                )
            )
        elif spec.key in seen:
            problems.append(
                tr("{w}：列“{c}”出现了两次", "{w}: the column '{c}' appears twice", w=where, c=cell)
            )
            spec = None
        else:
            seen.add(spec.key)
        header.append(spec)
    missing = [s.label for s in template.columns if s.required and s.key not in seen]
    if missing:
        problems.append(
            tr(
                "{w}：表头缺少必需的列：{cols}",
                "{w}: the header lacks the required column(s): {cols}",
                w=where,
                cols="、".join(missing),
            )
        )
    return header


def read_data(path: Path, template: Template) -> TemplateData:
    """A CSV or XLSX data file for ``template``; TemplateError lists every problem."""
    return rows_to_data(_read_rows(path), template, source=path.name)


def apply_fields(
    data: TemplateData | None, pairs: Sequence[str], template: Template
) -> TemplateData:
    """Add ``--field NAME=VALUE`` flags (label or key) on top of the file's fields."""
    data = data or TemplateData(source="--field")
    specs = _lookup(template.fields)
    fields = dict(data.fields)
    lines = dict(data.field_lines)
    problems: list[Text] = []
    for pair in pairs:
        name, eq, value = pair.partition("=")
        spec = specs.get(norm_name(name)) if eq else None
        if not eq:
            problems.append(
                tr(
                    "--field 要写成 名称=值，例如 --field 期间=2026年11月（收到：{p}）",
                    "--field takes NAME=VALUE, e.g. --field period=2026-11 (got: {p})",
                    p=pair,
                )
            )
            continue
        if spec is None:
            problems.append(_unknown(tr("字段", "field"), name.strip(), template.fields))
            continue
        where = tr("--field {f}", "--field {f}", f=spec.label)
        fields[spec.key] = _clean(value, problems, where)
        lines.pop(spec.key, None)
    if problems:
        raise _fail(tr("--field 有误，通知未保存", "invalid --field; nothing was saved"), problems)
    return TemplateData(
        source=data.source,
        fields=fields,
        field_lines=lines,
        rows=data.rows,
        columns=data.columns,
    )
