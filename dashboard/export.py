"""Deliveries of a period as CSV (UTF-8 with BOM, for Excel) or XLSX, for reporting upwards."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from content_queue.i18n import Lang, tr
from content_queue.models import local_tz
from dashboard.queries import EXPORT_COLUMNS

__all__ = ["csv_chunks", "header", "safe_cell", "xlsx_bytes"]

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """Cells a spreadsheet would run as a formula (a title typed as ``=HYPERLINK(...)``)
    are prefixed with an apostrophe; times are shown in the county's time zone."""
    if isinstance(value, datetime):
        return value.astimezone(local_tz()).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return "" if value is None else value


def header(lang: Lang) -> list[str]:
    return [label.render(lang) for _, label in EXPORT_COLUMNS]


def csv_chunks(
    rows: Iterable[list[Any]], *, lang: Lang = "zh", every: int = 500
) -> Iterator[bytes]:
    """The CSV, streamed: a BOM so Excel reads UTF-8, then the header (in ``lang``) and
    the rows."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    buf.write("\ufeff")
    writer.writerow(header(lang))
    for i, row in enumerate(rows, start=1):
        writer.writerow([safe_cell(v) for v in row])
        if i % every == 0:
            yield buf.getvalue().encode("utf-8")
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue().encode("utf-8")


def xlsx_bytes(rows: Iterable[list[Any]], *, lang: Lang = "zh") -> bytes:
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet(title=tr("投递记录", "Deliveries").render(lang)[:31])
    ws.append(header(lang))
    for row in rows:
        ws.append([safe_cell(v) for v in row])
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()
