"""Disclosure templates: the common notices, filled from a CSV/XLSX file or ``--field`` flags.

Each template declares its fields (single values) and columns (a table), checks the data
(totals, area x rate, dates inside the period, resident IDs masked) and writes the title,
body and a structured table that every channel can render: TV feeds as an HTML table,
WeCom as a markdown table, LED boards as pages, loudspeakers as a spoken summary.

    template = get_template("village_finance")
    filled = fill_template(template, data_file=Path("11月.xlsx"), place="刘庄村", now=now)
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from content_queue.errors import NotFoundError
from content_queue.i18n import tr
from content_queue.templates._base import (
    Filled,
    Row,
    Spec,
    Template,
    TemplateData,
    TemplateError,
    mask_id,
)
from content_queue.templates._data import apply_fields, read_data
from content_queue.templates.emergency import EmergencyWarning
from content_queue.templates.finance import VillageFinance
from content_queue.templates.land import LandCompensation
from content_queue.templates.meeting import Meeting
from content_queue.templates.poverty import PovertyMonitoring
from content_queue.templates.subsidy import FarmSubsidy

__all__ = [
    "TEMPLATES",
    "Filled",
    "Row",
    "Spec",
    "Template",
    "TemplateData",
    "TemplateError",
    "fill_template",
    "get_template",
    "load_template_data",
    "mask_id",
]

TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        VillageFinance(),
        FarmSubsidy(),
        PovertyMonitoring(),
        LandCompensation(),
        Meeting(),
        EmergencyWarning(),
    )
}
_ALIASES = {
    "finance": "village_finance",
    "财务": "village_finance",
    "subsidy": "farm_subsidy",
    "补贴": "farm_subsidy",
    "poverty": "poverty_monitoring",
    "防返贫": "poverty_monitoring",
    "land": "land_compensation",
    "征地": "land_compensation",
    "会议": "meeting",
    "预警": "emergency",
    "warning": "emergency",
}


def get_template(name: str) -> Template:
    """A template by name (or a short alias such as 财务), or NotFoundError listing them."""
    key = name.strip()
    template = TEMPLATES.get(_ALIASES.get(key, key))
    if template is None:
        raise NotFoundError(
            tr(
                "没有模板“{n}”；可用的模板：{names}（villagecast template list 查看说明）",
                "no template '{n}'; the templates are: {names} (see villagecast template list)",
                n=name,
                names=", ".join(TEMPLATES),
            )
        )
    return template


def load_template_data(
    template: Template, *, data_file: Path | None, fields: Sequence[str] = ()
) -> TemplateData:
    """The data from a file (CSV or XLSX), with ``--field NAME=VALUE`` flags on top."""
    data = read_data(data_file, template) if data_file is not None else None
    if data is None and template.columns:
        raise TemplateError(
            tr(
                "模板“{t}”需要数据文件：--data 文件.csv 或 .xlsx（villagecast template show {t} "
                "有示例）",
                "the template '{t}' needs a data file: --data FILE.csv or .xlsx (see "
                "villagecast template show {t} for an example)",
                t=template.name,
            )
        )
    return apply_fields(data, fields, template)


def fill_template(
    template: Template,
    *,
    data_file: Path | None = None,
    fields: Sequence[str] = (),
    place: str,
    now: datetime,
) -> Filled:
    """Read the data and fill the template; TemplateError lists every problem with its row."""
    data = load_template_data(template, data_file=data_file, fields=fields)
    return template.fill(data, place=place, now=now)
