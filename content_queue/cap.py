"""CAP 1.2 (Common Alerting Protocol) in and out: export a notice as an alert, read an
incoming alert (a county weather warning) as a notice for the villages it names.

Export
    identifier    ``villagecast-<county code>-<notice id>`` (``-cancel`` for a withdrawal)
    msgType       ``Alert``; ``Update`` for a correction, referencing the notice it
                  corrects; ``Cancel`` for a withdrawn notice, referencing its alert
    info          zh-CN; headline = title, description = body (and the table as text);
                  urgency/severity/certainty from the priority; effective = publish time
    area          the targeted villages' names, with ``GB2260`` geocodes from devices.yaml
                  (county ``code``, township ``code``, village ``code``) where known

Import
    Only ``status`` Actual is taken (exercises and tests are refused, with the reason).
    ``Alert`` becomes a new notice; ``Update`` corrects the notice imported from the
    alert it references; ``Cancel`` withdraws it. Targets come from the areas' geocodes
    (value names ``GB2260``, ``GB/T 2260``, ``ADCODE``, ``areaCode``): a county, township
    or village code of this county. Every input is validated against the CAP 1.2 schema
    first; parsing never resolves entities or reaches the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal

from lxml import etree

from content_queue.errors import NoticeError
from content_queue.i18n import Text, tr
from content_queue.models import (
    CATEGORY_LABELS,
    MAX_BODY_CHARS,
    MAX_TITLE_CHARS,
    Category,
    NoticeDraft,
    build_notice,
    local_tz,
)
from content_queue.registry import Registry
from content_queue.store import NoticeView

__all__ = [
    "CAP_NS",
    "GEOCODE_NAMES",
    "ImportedAlert",
    "alert_identifier",
    "export_alert",
    "parse_alert",
    "validate_alert",
]

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
GEOCODE_NAMES = frozenset({"GB2260", "GB/T 2260", "GB/T2260", "ADCODE", "areaCode"})
MAX_ALERT_BYTES = 1_000_000
_N = f"{{{CAP_NS}}}"

_PRIORITY_CAP = {
    "emergency": ("Immediate", "Severe", "Likely"),
    "important": ("Expected", "Moderate", "Likely"),
    "routine": ("Future", "Minor", "Observed"),
}
_CATEGORY_CAP = {
    "emergency": "Safety",
    "social_insurance": "Health",
    "land_compensation": "Infra",
}


@cache
def _schema() -> etree.XMLSchema:
    path = Path(__file__).parent / "schemas" / "CAP-v1.2.xsd"
    return etree.XMLSchema(etree.parse(str(path)))


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        dtd_validation=False,
        load_dtd=False,
        huge_tree=False,
    )


def _cap_time(value: datetime) -> str:
    # CAP wants an explicit offset and no fraction: 2026-12-01T08:00:00+08:00.
    return value.astimezone(local_tz()).replace(microsecond=0).isoformat()


def alert_identifier(registry: Registry, notice_id: int) -> str:
    return f"villagecast-{registry.doc.county.code}-{notice_id}"


def _sender(registry: Registry) -> str:
    return f"villagecast@{registry.doc.county.code}.gov.cn"


def _sub(parent: Any, name: str, text: str | None = None) -> Any:
    el = etree.SubElement(parent, _N + name)
    if text is not None:
        el.text = text
    return el


def export_alert(
    notice: NoticeView,
    *,
    registry: Registry,
    villages: list[str],
    superseded: NoticeView | None = None,
    now: datetime | None = None,
) -> bytes:
    """The notice as a CAP 1.2 alert (UTF-8 XML), validated against the schema."""
    now = now or datetime.now(UTC)
    ident = alert_identifier(registry, notice.id)
    sender = _sender(registry)
    withdrawn = notice.state != "active"
    root = etree.Element(_N + "alert", nsmap={None: CAP_NS})
    _sub(root, "identifier", ident + ("-cancel" if withdrawn else ""))
    _sub(root, "sender", sender)
    _sub(root, "sent", _cap_time(now if withdrawn else notice.created_at))
    _sub(root, "status", "Actual")
    if withdrawn:
        msg_type, ref = "Cancel", (ident, notice.created_at)
    elif superseded is not None:
        msg_type = "Update"
        ref = (alert_identifier(registry, superseded.id), superseded.created_at)
    else:
        msg_type, ref = "Alert", None
    _sub(root, "msgType", msg_type)
    _sub(root, "source", "villagecast")
    _sub(root, "scope", "Public")
    if withdrawn:
        _sub(root, "note", "此通知已撤回" if notice.state == "withdrawn" else "此通知已被更正")
    if ref is not None:
        _sub(root, "references", f"{sender},{ref[0]},{_cap_time(ref[1])}")
    info = _sub(root, "info")
    _sub(info, "language", "zh-CN")
    _sub(info, "category", _CATEGORY_CAP.get(notice.category, "Other"))
    label = CATEGORY_LABELS.get(Category(notice.category))
    _sub(info, "event", label.render("zh") if label else notice.category)
    urgency, severity, certainty = _PRIORITY_CAP.get(notice.priority, _PRIORITY_CAP["routine"])
    _sub(info, "urgency", urgency)
    _sub(info, "severity", severity)
    _sub(info, "certainty", certainty)
    code = _sub(info, "eventCode")
    _sub(code, "valueName", "villagecast:category")
    _sub(code, "value", notice.category)
    _sub(info, "effective", _cap_time(notice.publish_at))
    if notice.expires_at is not None:
        _sub(info, "expires", _cap_time(notice.expires_at))
    _sub(info, "senderName", registry.doc.county.name)
    _sub(info, "headline", notice.title)
    _sub(info, "description", _description(notice))
    area = _sub(info, "area")
    names = [registry.village_name(v) for v in villages]
    _sub(area, "areaDesc", "、".join(names) if names else registry.doc.county.name)
    for value in _geocodes(registry, notice, villages):
        geo = _sub(area, "geocode")
        _sub(geo, "valueName", "GB2260")
        _sub(geo, "value", value)
    data: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    validate_alert(data)  # our own output must be valid CAP
    return data


def _description(notice: NoticeView) -> str:
    parts = [notice.body]
    table = notice.table or {}
    if table.get("columns"):
        parts.append(" | ".join(str(c) for c in table["columns"]))
        parts += [" | ".join(str(c) for c in row) for row in table.get("rows", [])]
    return "\n".join(parts)


def _geocodes(registry: Registry, notice: NoticeView, villages: list[str]) -> list[str]:
    targets = notice.targets
    if targets.get("county"):
        return [registry.doc.county.code]
    codes: list[str] = []
    for tid in targets.get("townships") or []:
        t = registry.townships.get(tid)
        if t is not None and t.code:
            codes.append(t.code)
    for vid in villages:
        v = registry.villages.get(vid)
        if v is not None and v.code and not any(v.code.startswith(c) for c in codes):
            codes.append(v.code)
    return codes


# -- import --------------------------------------------------------------------------


def validate_alert(data: bytes) -> Any:
    """Parse and validate against CAP 1.2; a NoticeError names each problem by line."""
    if len(data) > MAX_ALERT_BYTES:
        raise NoticeError(
            tr(
                "CAP 文件超过 {n} 字节，拒绝读取",
                "the CAP file is larger than {n} bytes",
                n=MAX_ALERT_BYTES,
            )
        )
    try:
        doc = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise NoticeError(
            tr(
                "不是有效的 XML（第 {line} 行）：{e}",
                "not well-formed XML (line {line}): {e}",
                line=exc.lineno or 0,
                e=exc.msg,
            )
        ) from None
    if doc.getroottree().docinfo.doctype:
        # CAP has no DTD; a DOCTYPE can only carry entities (XXE, billion laughs).
        raise NoticeError(
            tr(
                "CAP 警报不允许包含 DOCTYPE 声明（可能是恶意文件）",
                "a CAP alert must not contain a DOCTYPE declaration",
            )
        )
    schema = _schema()
    if not schema.validate(doc):
        details = [
            tr("第 {line} 行：{e}", "line {line}: {e}", line=err.line, e=err.message)
            for err in list(schema.error_log)[:10]
        ]
        raise NoticeError(
            tr("不符合 CAP 1.2 格式：", "not a valid CAP 1.2 alert:"), details=details
        )
    return doc


@dataclass(frozen=True)
class ImportedAlert:
    identifier: str
    sender: str
    sent: str
    msg_type: Literal["Alert", "Update", "Cancel"]
    references: list[str]
    """Identifiers of the alerts this one updates or cancels."""
    draft: NoticeDraft | None
    """The notice to send (None for a Cancel)."""
    areas: list[str]


def _text(el: Any, name: str) -> str | None:
    found = el.find(_N + name)
    return found.text.strip() if found is not None and found.text else None


def parse_alert(data: bytes, *, registry: Registry, author: str = "cap") -> ImportedAlert:
    """Validate an incoming CAP alert and turn it into a notice draft for this county."""
    root = validate_alert(data)
    status = _text(root, "status")
    msg_type = _text(root, "msgType") or ""
    if status != "Actual":
        raise NoticeError(
            tr(
                "这是一条 {s} 状态的警报（演练、测试或草稿），不会发给村民",
                "this alert's status is {s} (an exercise, test or draft): not sent to villagers",
                s=status,
            )
        )
    if msg_type not in ("Alert", "Update", "Cancel"):
        raise NoticeError(
            tr(
                "消息类型 {t} 不是警报，无需导入",
                "message type {t} is not an alert; nothing to import",
                t=msg_type,
            )
        )
    refs = [
        parts[1]
        for chunk in (_text(root, "references") or "").split()
        if len(parts := chunk.split(",")) == 3
    ]
    if msg_type in ("Update", "Cancel") and not refs:
        raise NoticeError(
            tr(
                "{t} 警报没有给出 references（它更新或取消的是哪条警报）",
                "an {t} alert must name the alert it updates or cancels in <references>",
                t=msg_type,
            )
        )
    infos = root.findall(_N + "info")
    info = next(
        (i for i in infos if (_text(i, "language") or "").lower().startswith("zh")),
        infos[0] if infos else None,
    )
    identifier = _text(root, "identifier") or ""
    sender = _text(root, "sender") or ""
    sent = _text(root, "sent") or ""
    if msg_type == "Cancel":
        return ImportedAlert(identifier, sender, sent, "Cancel", refs, None, [])
    if info is None:
        raise NoticeError(tr("警报没有 <info> 内容", "the alert has no <info>"))
    villages, areas, unknown = _targets(info, registry)
    if not villages:
        raise NoticeError(
            tr(
                "警报所列地区不在本县登记中（地区编码：{codes}）；"
                "请在 devices.yaml 中为乡镇、村填写 code",
                "none of the alert's areas is in this county (codes: {codes}); give townships "
                "and villages their `code` in devices.yaml",
                codes="、".join(unknown) or "无",
            )
        )
    headline = _text(info, "headline") or _text(info, "event") or "预警信息"
    description = _text(info, "description") or headline
    instruction = _text(info, "instruction")
    body = description + (f"\n{instruction}" if instruction else "")
    severity = _text(info, "severity")
    urgency = _text(info, "urgency")
    emergency = severity in ("Extreme", "Severe") or urgency == "Immediate"
    expires = _text(info, "expires")
    draft = build_notice(
        {
            "title": _clip(headline, MAX_TITLE_CHARS),
            "body": _clip(body, MAX_BODY_CHARS),
            "category": "emergency",
            "priority": "emergency" if emergency else "important",
            "targets": {"villages": sorted(villages)},
            "expires_at": datetime.fromisoformat(expires) if expires else None,
            "author": author,
        }
    )
    kind: Literal["Alert", "Update"] = "Update" if msg_type == "Update" else "Alert"
    return ImportedAlert(identifier, sender, sent, kind, refs, draft, areas)


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _targets(info: Any, registry: Registry) -> tuple[set[str], list[str], list[str]]:
    villages: set[str] = set()
    areas: list[str] = []
    unknown: list[str] = []
    for area in info.findall(_N + "area"):
        areas.append(_text(area, "areaDesc") or "")
        for geo in area.findall(_N + "geocode"):
            if (_text(geo, "valueName") or "") not in GEOCODE_NAMES:
                continue
            code = _text(geo, "value") or ""
            covered = registry.villages_for_area_code(code)
            if covered is None:
                unknown.append(code)
            else:
                villages |= covered
    return villages, areas, unknown


def describe(alert: ImportedAlert) -> Text:
    return tr(
        "CAP 警报 {id}（{t}）",
        "CAP alert {id} ({t})",
        id=alert.identifier,
        t=alert.msg_type,
    )
