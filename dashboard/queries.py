"""What the dashboard shows, read from the store with aggregates and the caller's scope.

Every function takes a :class:`~dashboard.scope.Scope` and adds its predicate to each
query; the pages and the JSON API both call these, so they cannot disagree about who sees
what. Counts come from ``GROUP BY`` over the covering index ``ix_deliveries_overview``,
never from loading rows into Python.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import case, func, select

from content_queue.db import Attempt, Delivery, Device, DeviceCommand, Notice, PresenceEvent
from content_queue.i18n import Lang, Text, tr
from content_queue.models import CATEGORY_LABELS, PRIORITY_LABELS, Category, Priority
from content_queue.registry import LedEndpoint, Registry, SpeakerEndpoint
from content_queue.store import (
    ATTEMPT_OUTCOME_LABELS,
    NOTICE_STATE_LABELS,
    STATUS_LABELS,
    Store,
    utcnow,
)
from dashboard.explain import suggested_fix
from dashboard.scope import Scope

__all__ = [
    "BUCKETS",
    "DEVICE_STATE_LABELS",
    "EXPORT_COLUMNS",
    "KIND_LABELS",
    "Cell",
    "DeliveryDetail",
    "DeviceDetail",
    "DeviceRow",
    "Failures",
    "Filters",
    "NoticeDetail",
    "NoticeRow",
    "Overview",
    "VillageRow",
    "bucket_of",
    "device_detail",
    "devices",
    "export_rows",
    "failures",
    "notice_detail",
    "overview",
]

KIND_ORDER = ("wecom_group", "wechat_official_account", "led", "speaker", "tv_feed")
KIND_LABELS: dict[str, Text] = {
    "wecom_group": tr("村微信群", "WeCom group"),
    "wechat_official_account": tr("公众号", "official account"),
    "led": tr("LED 屏", "LED board"),
    "speaker": tr("广播音箱", "loudspeaker"),
    "tv_feed": tr("电视公开平台", "TV platform"),
}

DEVICE_STATE_LABELS: dict[str, Text] = {
    "online": tr("在线", "online"),
    "offline": tr("离线", "offline"),
    "unknown": tr("未知", "unknown"),
}

_OA_ONLY = tr("公众号（覆盖多个村）", "official account (several villages)")
"""The overview row of official-account deliveries, which belong to no one village."""
_OA = tr("公众号", "official account")

BUCKETS = ("delivered", "pending", "failed", "expired", "other")
"""What the overview counts: confirmed; on its way (pending, scheduled, sending, sent and
waiting for the far side's confirmation); failed; expired; cancelled or skipped."""

_BUCKET = {
    "delivered": "delivered",
    "pending": "pending",
    "scheduled": "pending",
    "sending": "pending",
    "sent": "pending",
    "failed": "failed",
    "expired": "expired",
    "cancelled": "other",
    "skipped": "other",
}


def bucket_of(status: str) -> str:
    return _BUCKET.get(status, "other")


def _label(labels: dict[str, Text], key: str, lang: Lang) -> str:
    text = labels.get(key)
    return text.render(lang) if text else key


def _status(status: str, lang: Lang) -> str:
    return _label(STATUS_LABELS, status, lang)


def _kind(kind: str, lang: Lang) -> str:
    return _label(KIND_LABELS, kind, lang)


def _category(category: str, lang: Lang) -> str:
    if category in Category._value2member_map_:
        return CATEGORY_LABELS[Category(category)].render(lang)
    return category


class Cell(BaseModel):
    """Counts of deliveries by bucket, with the colour the grid shows."""

    delivered: int = 0
    pending: int = 0
    failed: int = 0
    expired: int = 0
    other: int = 0

    def add(self, status: str, count: int) -> None:
        b = bucket_of(status)
        setattr(self, b, getattr(self, b) + count)

    @property
    def total(self) -> int:
        return self.delivered + self.pending + self.failed + self.expired + self.other

    @property
    def colour(self) -> str:
        """failed > pending > expired > delivered; empty when there is nothing."""
        if self.failed:
            return "failed"
        if self.pending:
            return "pending"
        if self.expired:
            return "expired"
        if self.delivered:
            return "delivered"
        return "empty" if not self.total else "other"


class Filters(BaseModel):
    township: str | None = None
    village: str | None = None
    category: str | None = None
    channel: str | None = None
    since: datetime
    until: datetime

    @classmethod
    def make(
        cls,
        *,
        township: str | None = None,
        village: str | None = None,
        category: str | None = None,
        channel: str | None = None,
        days: int | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        now: datetime | None = None,
    ) -> Filters:
        now = now or utcnow()
        until = until or now + timedelta(days=1)  # scheduled notices of the next day too
        since = since or now - timedelta(days=days or 7)
        return cls(
            township=township or None,
            village=village or None,
            category=category or None,
            channel=channel or None,
            since=since,
            until=until,
        )

    def deliveries(self) -> list[Any]:
        out: list[Any] = [Delivery.action == "publish"]
        if self.township:
            out.append(Delivery.township_id == self.township)
        if self.village:
            out.append(Delivery.village_id == self.village)
        if self.channel:
            out.append(Delivery.kind == self.channel)
        return out

    def notices(self) -> list[Any]:
        out: list[Any] = [Notice.publish_at >= self.since, Notice.publish_at < self.until]
        if self.category:
            out.append(Notice.category == self.category)
        return out


class NoticeRow(BaseModel):
    id: int
    title: str
    category: str
    category_zh: str
    category_en: str
    priority: str
    publish_at: datetime
    state: str
    revision: int
    cells: dict[str, Cell]
    total: Cell


class VillageRow(BaseModel):
    village_id: str | None
    """None: official-account deliveries (they serve several villages)."""
    name: str
    township: str | None
    cells: dict[str, Cell]
    total: Cell


class Overview(BaseModel):
    filters: Filters
    kinds: list[str]
    notices: list[NoticeRow]
    villages: list[VillageRow]
    villages_hidden: int = 0
    """Villages with every delivery confirmed, left out past ``village_limit``."""
    total: Cell
    devices_offline: int
    devices_known: int


def overview(
    store: Store,
    registry: Registry,
    scope: Scope,
    filters: Filters,
    *,
    notice_limit: int = 30,
    village_limit: int = 300,
    now: datetime | None = None,
    lang: Lang = "zh",
) -> Overview:
    """Recent notices x channels and villages x channels, counted by bucket (``lang``:
    the language of the one made-up name, the official accounts' row)."""
    now = now or utcnow()
    in_scope = [scope.deliveries(), *filters.deliveries()]
    buckets = _bucket_sums()
    with store.session(readonly=True) as s:
        wanted = (
            select(Notice.id, Notice.title, Notice.category, Notice.priority, Notice.publish_at)
            .add_columns(Notice.state, Notice.revision)
            .where(*filters.notices())
            .where(select(Delivery.id).where(Delivery.notice_id == Notice.id, *in_scope).exists())
            .order_by(Notice.publish_at.desc(), Notice.id.desc())
            .limit(notice_limit)
        )
        notice_rows = s.execute(wanted).all()
        ids = [r.id for r in notice_rows]
        per_notice: dict[int, dict[str, tuple[int, ...]]] = defaultdict(dict)
        if ids:
            q = (
                select(Delivery.notice_id, Delivery.kind, *buckets)
                .where(Delivery.notice_id.in_(ids), *in_scope)
                .group_by(Delivery.notice_id, Delivery.kind)
            )
            for nid, kind, *counts in s.execute(q):
                per_notice[nid][kind] = tuple(counts)
        # The whole period, grouped in SQL: one row per village and channel, each carrying
        # its five bucket counts (the covering index answers it without reading rows).
        window = select(Notice.id).where(*filters.notices())
        q2 = (
            select(Delivery.village_id, Delivery.kind, *buckets)
            .where(Delivery.notice_id.in_(window), *in_scope)
            .group_by(Delivery.village_id, Delivery.kind)
        )
        per_village: dict[str | None, dict[str, tuple[int, ...]]] = defaultdict(dict)
        for vid, kind, *counts in s.execute(q2):
            per_village[vid][kind] = tuple(counts)
    kinds_seen = {k for cells in per_village.values() for k in cells}
    kinds = [k for k in KIND_ORDER if k in kinds_seen or filters.channel == k]
    grand = [0] * len(BUCKETS)
    township_names = {t.id: t.name for t in registry.townships.values()}
    ranked: list[tuple[tuple[int, int, str], str | None, dict[str, tuple[int, ...]], list[int]]]
    ranked = []
    for vid, cells in per_village.items():
        row = _add(cells.values())
        grand = [a + b for a, b in zip(grand, row, strict=True)]
        # Problems first: failed, then waiting; then by id.
        ranked.append(((-row[2], -row[1], vid or ""), vid, cells, row))
    ranked.sort(key=lambda r: r[0])
    hidden = max(0, len(ranked) - village_limit)
    villages = []
    for _, vid, cells, row in ranked[:village_limit]:
        tid = registry.village_township.get(vid) if vid else None
        villages.append(
            VillageRow.model_construct(
                village_id=vid,
                name=registry.village_name(vid) if vid else _OA_ONLY.render(lang),
                township=township_names.get(tid or "", tid),
                cells={k: _cell(c) for k, c in cells.items()},
                total=_cell(row),
            )
        )
    offline, known = _offline_count(store, registry, scope, filters)
    return Overview(
        filters=filters,
        kinds=kinds,
        notices=[
            NoticeRow(
                id=r.id,
                title=r.title,
                category=r.category,
                category_zh=_category(r.category, "zh"),
                category_en=_category(r.category, "en"),
                priority=r.priority,
                publish_at=r.publish_at,
                state=r.state,
                revision=r.revision,
                cells={k: _cell(c) for k, c in per_notice.get(r.id, {}).items()},
                total=_cell(_add(per_notice.get(r.id, {}).values())),
            )
            for r in notice_rows
        ],
        villages=villages,
        villages_hidden=hidden,
        total=_cell(grand),
        devices_offline=offline,
        devices_known=known,
    )


_BUCKET_STATUSES: dict[str, list[str]] = {
    b: [st for st, bb in _BUCKET.items() if bb == b] for b in BUCKETS
}


def _bucket_sums() -> list[Any]:
    """SUM(CASE ...) per bucket, in BUCKETS order."""
    return [func.sum(case((Delivery.status.in_(_BUCKET_STATUSES[b]), 1), else_=0)) for b in BUCKETS]


def _add(rows: Any) -> list[int]:
    out = [0] * len(BUCKETS)
    for row in rows:
        for i, v in enumerate(row):
            out[i] += int(v or 0)
    return out


def _cell(counts: Sequence[int]) -> Cell:
    d, p, f, e, o = (int(c or 0) for c in counts)
    return Cell.model_construct(delivered=d, pending=p, failed=f, expired=e, other=o)


# -- devices -------------------------------------------------------------------------------


def _devices_in_scope(
    registry: Registry, scope: Scope, filters: Filters | None = None
) -> dict[str, tuple[str, str, str, str | None]]:
    """device_id -> (endpoint id, kind, village id, endpoint name) for boards and speakers."""
    out: dict[str, tuple[str, str, str, str | None]] = {}
    for vid, village in registry.villages.items():
        if not scope.allows_village(vid):
            continue
        if filters is not None:
            if filters.village and vid != filters.village:
                continue
            if filters.township and registry.village_township.get(vid) != filters.township:
                continue
        for ep in village.endpoints:
            if isinstance(ep, LedEndpoint | SpeakerEndpoint):
                if filters is not None and filters.channel and ep.kind != filters.channel:
                    continue
                out[ep.device_id] = (ep.id, ep.kind, vid, ep.name)
    return out


def _offline_count(
    store: Store, registry: Registry, scope: Scope, filters: Filters
) -> tuple[int, int]:
    mine = _devices_in_scope(registry, scope, filters)
    if not mine:
        return 0, 0
    with store.session(readonly=True) as s:
        rows = s.execute(select(Device.device_id, Device.state)).all()
    states = [st for did, st in rows if did in mine]
    return sum(1 for st in states if st == "offline"), len(mine)


class DeviceRow(BaseModel):
    device_id: str
    endpoint_id: str
    kind: str
    village_id: str
    village: str
    township: str | None
    name: str | None
    state: str
    last_seen: datetime | None
    offline_for_seconds: float | None
    alert: bool
    """Offline longer than the threshold (``offline_alert_minutes``)."""
    firmware: str | None
    showing: list[dict[str, Any]] = Field(default_factory=list)
    """What the board shows now: notice id and title per command."""


def devices(
    store: Store,
    registry: Registry,
    scope: Scope,
    *,
    offline_alert: timedelta,
    township: str | None = None,
    village: str | None = None,
    state: str | None = None,
    now: datetime | None = None,
) -> list[DeviceRow]:
    now = now or utcnow()
    f = Filters.make(township=township, village=village, now=now)
    mine = _devices_in_scope(registry, scope, f)
    with store.session(readonly=True) as s:
        rows = {d.device_id: d for d in s.scalars(select(Device)) if d.device_id in mine}
        command_ids = {c for d in rows.values() for c in (d.showing or [])}
        shows: dict[str, dict[str, Any]] = {}
        if command_ids:
            q = (
                select(DeviceCommand.id, Notice.id, Notice.title)
                .join(Delivery, Delivery.id == DeviceCommand.delivery_id)
                .join(Notice, Notice.id == Delivery.notice_id)
                .where(DeviceCommand.id.in_(sorted(command_ids)))
            )
            shows = {cid: {"notice": nid, "title": title} for cid, nid, title in s.execute(q)}
    township_names = {t.id: t.name for t in registry.townships.values()}
    out = []
    for device_id, (ep_id, kind, vid, name) in mine.items():
        d = rows.get(device_id)
        st = d.state if d else "unknown"
        if state and st != state:
            continue
        last = d.last_seen if d else None
        offline_for = (now - last).total_seconds() if st == "offline" and last else None
        out.append(
            DeviceRow(
                device_id=device_id,
                endpoint_id=ep_id,
                kind=kind,
                village_id=vid,
                village=registry.village_name(vid),
                township=township_names.get(registry.village_township.get(vid, "")),
                name=name,
                state=st,
                last_seen=last,
                offline_for_seconds=offline_for,
                alert=offline_for is not None and offline_for > offline_alert.total_seconds(),
                firmware=d.firmware if d else None,
                showing=[
                    {"command": c, **shows.get(c, {"notice": None, "title": None})}
                    for c in (d.showing if d else [])
                ],
            )
        )
    # The longest offline first, then unknown, then online.
    rank = {"offline": 0, "unknown": 1, "online": 2}
    out.sort(key=lambda r: (rank.get(r.state, 1), -(r.offline_for_seconds or 0), r.device_id))
    return out


class DeviceDetail(BaseModel):
    device: DeviceRow
    history: list[dict[str, Any]]
    commands: list[dict[str, Any]]


def device_detail(
    store: Store,
    registry: Registry,
    scope: Scope,
    device_id: str,
    *,
    offline_alert: timedelta,
    now: datetime | None = None,
) -> DeviceDetail | None:
    rows = [
        r
        for r in devices(store, registry, scope, offline_alert=offline_alert, now=now)
        if r.device_id == device_id
    ]
    if not rows:
        return None
    with store.session(readonly=True) as s:
        history = [
            {"state": e.state, "at": e.at, "fresh_boot": e.fresh_boot}
            for e in s.scalars(
                select(PresenceEvent)
                .where(PresenceEvent.device_id == device_id)
                .order_by(PresenceEvent.at.desc(), PresenceEvent.id.desc())
                .limit(100)
            )
        ]
        commands = [
            {
                "id": c.id,
                "kind": c.kind,
                "notice": nid,
                "title": title,
                "issued_at": c.issued_at,
                "published_at": c.published_at,
                "acked_at": c.acked_at,
                "ack_status": c.ack_status,
                "ack_reason": c.ack_reason,
            }
            for c, nid, title in s.execute(
                select(DeviceCommand, Notice.id, Notice.title)
                .join(Delivery, Delivery.id == DeviceCommand.delivery_id)
                .join(Notice, Notice.id == Delivery.notice_id)
                .where(DeviceCommand.device_id == device_id)
                .order_by(DeviceCommand.issued_at.desc())
                .limit(50)
            )
        ]
    return DeviceDetail(device=rows[0], history=history, commands=commands)


# -- one notice ----------------------------------------------------------------------------


class DeliveryDetail(BaseModel):
    id: int
    notice_id: int
    action: str
    recall_of: int | None
    endpoint_id: str
    kind: str
    kind_zh: str
    kind_en: str
    village_id: str | None
    village: str
    township_id: str | None
    status: str
    status_zh: str
    status_en: str
    bucket: str
    attempts: int
    due_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    error_code: str | None
    error_zh: str | None
    error_en: str | None
    fix_zh: str | None
    fix_en: str | None
    details: dict[str, Any] | None
    attempt_log: list[dict[str, Any]] = Field(default_factory=list)
    device_acks: list[dict[str, Any]] = Field(default_factory=list)
    recall: DeliveryDetail | None = None
    """The recall delivery taking this publish back, shown beside it."""
    notice_title: str | None = None


class Revision(BaseModel):
    id: int
    revision: int
    title: str
    state: str
    created_at: datetime
    current: bool


class NoticeDetail(BaseModel):
    id: int
    title: str
    body: str
    category: str
    category_zh: str
    category_en: str
    priority: str
    priority_zh: str
    priority_en: str
    state: str
    state_zh: str
    state_en: str
    revision: int
    supersedes_id: int | None
    author: str
    publish_at: datetime
    expires_at: datetime | None
    created_at: datetime
    table: dict[str, Any] | None
    revisions: list[Revision]
    deliveries: list[DeliveryDetail]
    """Publish deliveries in scope, each with its recall (if any) beside it."""
    counts: Cell
    recall_counts: Cell
    can_retry: bool
    can_withdraw: bool


def _delivery(
    d: Delivery, registry: Registry, title: str | None = None, *, lang: Lang = "zh"
) -> DeliveryDetail:
    needs_fix = d.status == "failed" or (d.status == "pending" and d.error_code is not None)
    fix = suggested_fix(d.error_code) if needs_fix else None
    return DeliveryDetail(
        id=d.id,
        notice_id=d.notice_id,
        action=d.action or "publish",
        recall_of=d.recall_of,
        endpoint_id=d.endpoint_id,
        kind=d.kind,
        kind_zh=_kind(d.kind, "zh"),
        kind_en=_kind(d.kind, "en"),
        village_id=d.village_id,
        village=registry.village_name(d.village_id) if d.village_id else _OA.render(lang),
        township_id=d.township_id,
        status=d.status,
        status_zh=_status(d.status, "zh"),
        status_en=_status(d.status, "en"),
        bucket=bucket_of(d.status),
        attempts=d.attempts,
        due_at=d.due_at,
        sent_at=d.sent_at,
        delivered_at=d.delivered_at,
        finished_at=d.finished_at,
        updated_at=d.updated_at,
        error_code=d.error_code,
        error_zh=d.error_zh,
        error_en=d.error_en,
        fix_zh=fix.render("zh") if fix else None,
        fix_en=fix.render("en") if fix else None,
        details=dict(d.details) if d.details else None,
        notice_title=title,
    )


def notice_detail(
    store: Store, registry: Registry, scope: Scope, notice_id: int, *, lang: Lang = "zh"
) -> NoticeDetail | None:
    """The notice with its in-scope deliveries, or None if it is not visible (or absent)."""
    from content_queue.accounts import Action

    with store.session(readonly=True) as s:
        n = s.scalar(select(Notice).where(Notice.id == notice_id, scope.notices()))
        if n is None:
            return None
        rows = list(
            s.scalars(
                select(Delivery)
                .where(Delivery.notice_id == notice_id, scope.deliveries())
                .order_by(Delivery.village_id, Delivery.kind, Delivery.endpoint_id, Delivery.id)
            )
        )
        ids = [d.id for d in rows]
        attempts: dict[int, list[dict[str, Any]]] = defaultdict(list)
        acks: dict[int, list[dict[str, Any]]] = defaultdict(list)
        if ids:
            for a in s.scalars(
                select(Attempt)
                .where(Attempt.delivery_id.in_(ids))
                .order_by(Attempt.delivery_id, Attempt.number, Attempt.id)
            ):
                attempts[a.delivery_id].append(
                    {
                        "number": a.number,
                        "worker": a.worker,
                        "started_at": a.started_at,
                        "finished_at": a.finished_at,
                        "outcome": a.outcome,
                        "outcome_zh": _label(ATTEMPT_OUTCOME_LABELS, a.outcome, "zh")
                        if a.outcome
                        else None,
                        "outcome_en": _label(ATTEMPT_OUTCOME_LABELS, a.outcome, "en")
                        if a.outcome
                        else None,
                        "error_code": a.error_code,
                        "error_zh": a.error_zh,
                        "error_en": a.error_en,
                    }
                )
            for c in s.scalars(
                select(DeviceCommand)
                .where(DeviceCommand.delivery_id.in_(ids))
                .order_by(DeviceCommand.issued_at)
            ):
                acks[c.delivery_id].append(
                    {
                        "command": c.id,
                        "device": c.device_id,
                        "kind": c.kind,
                        "sync": c.sync,
                        "published_at": c.published_at,
                        "acked_at": c.acked_at,
                        "ack_status": c.ack_status,
                        "ack_reason": c.ack_reason,
                    }
                )
        revisions = _revisions(s, n, scope)
        # Withdrawing takes the notice back everywhere, so a township may do it only when
        # every place the notice went is its own.
        outside = s.scalar(
            select(func.count()).where(
                Delivery.notice_id == notice_id,
                Delivery.action == "publish",
                ~scope.deliveries(),
            )
        )
        detail_rows = {d.id: _delivery(d, registry, lang=lang) for d in rows}
    for did, row in detail_rows.items():
        row.attempt_log = attempts.get(did, [])
        row.device_acks = acks.get(did, [])
    publishes = [r for r in detail_rows.values() if r.action == "publish"]
    recalls = [r for r in detail_rows.values() if r.action == "recall"]
    by_publish = {r.recall_of: r for r in recalls}
    for p in publishes:
        p.recall = by_publish.pop(p.id, None)
    counts, recall_counts = Cell(), Cell()
    for p in publishes:
        counts.add(p.status, 1)
    for r in recalls:
        recall_counts.add(r.status, 1)
    # A recall whose publish is out of scope cannot be here (same endpoint, same place);
    # any left over are shown on their own rather than lost.
    publishes.extend(by_publish.values())
    priority = (
        PRIORITY_LABELS[Priority(n.priority)] if n.priority in Priority._value2member_map_ else None
    )
    return NoticeDetail(
        id=n.id,
        title=n.title,
        body=n.body,
        category=n.category,
        category_zh=_category(n.category, "zh"),
        category_en=_category(n.category, "en"),
        priority=n.priority,
        priority_zh=priority.render("zh") if priority else n.priority,
        priority_en=priority.render("en") if priority else n.priority,
        state=n.state,
        state_zh=_label(NOTICE_STATE_LABELS, n.state, "zh"),
        state_en=_label(NOTICE_STATE_LABELS, n.state, "en"),
        revision=n.revision,
        supersedes_id=n.supersedes_id,
        author=n.author,
        publish_at=n.publish_at,
        expires_at=n.expires_at,
        created_at=n.created_at,
        table=dict(n.table) if n.table else None,
        revisions=revisions,
        deliveries=publishes,
        counts=counts,
        recall_counts=recall_counts,
        can_retry=scope.principal.can(Action.RETRY),
        can_withdraw=(scope.principal.can(Action.WITHDRAW) and n.state == "active" and not outside),
    )


def _revisions(s: Any, n: Notice, scope: Scope) -> list[Revision]:
    """Every revision of this notice (older ones it corrects, newer ones correcting it)."""
    chain: dict[int, Notice] = {n.id: n}
    older = n
    while older.supersedes_id is not None and older.supersedes_id not in chain:
        prev = s.get(Notice, older.supersedes_id)
        if prev is None:
            break
        chain[prev.id] = older = prev
    frontier = [n.id]
    while frontier:
        newer = list(s.scalars(select(Notice).where(Notice.supersedes_id.in_(frontier))))
        frontier = [x.id for x in newer if x.id not in chain]
        chain.update({x.id: x for x in newer})
    visible = set(s.scalars(select(Notice.id).where(Notice.id.in_(list(chain)), scope.notices())))
    return [
        Revision(
            id=x.id,
            revision=x.revision,
            title=x.title,
            state=x.state,
            created_at=x.created_at,
            current=x.id == n.id,
        )
        for x in sorted(chain.values(), key=lambda x: (x.revision, x.id))
        if x.id in visible
    ]


def delivery_in_scope(store: Store, scope: Scope, delivery_id: int) -> Delivery | None:
    with store.session(readonly=True) as s:
        return s.scalar(select(Delivery).where(Delivery.id == delivery_id, scope.deliveries()))


# -- failures ------------------------------------------------------------------------------


class Failures(BaseModel):
    failed: list[DeliveryDetail]
    """Failed deliveries, oldest first: each needs a person."""
    retrying: list[DeliveryDetail]
    """Still pending after transient errors: worth watching."""
    offline_devices: list[DeviceRow]
    """Boards and loudspeakers offline longer than the threshold."""


def failures(
    store: Store,
    registry: Registry,
    scope: Scope,
    *,
    offline_alert: timedelta,
    limit: int = 500,
    now: datetime | None = None,
    lang: Lang = "zh",
) -> Failures:
    with store.session(readonly=True) as s:
        base = (
            select(Delivery, Notice.title)
            .join(Notice, Notice.id == Delivery.notice_id)
            .where(scope.deliveries())
        )
        failed = [
            _delivery(d, registry, title, lang=lang)
            for d, title in s.execute(
                base.where(Delivery.status == "failed")
                .order_by(func.coalesce(Delivery.finished_at, Delivery.updated_at), Delivery.id)
                .limit(limit)
            )
        ]
        retrying = [
            _delivery(d, registry, title, lang=lang)
            for d, title in s.execute(
                base.where(
                    Delivery.status == "pending",
                    Delivery.attempts > 0,
                    Delivery.error_code.is_not(None),
                )
                .order_by(Delivery.updated_at, Delivery.id)
                .limit(limit)
            )
        ]
    offline = [
        d for d in devices(store, registry, scope, offline_alert=offline_alert, now=now) if d.alert
    ]
    return Failures(failed=failed, retrying=retrying, offline_devices=offline)


# -- export --------------------------------------------------------------------------------

EXPORT_COLUMNS: tuple[tuple[str, Text], ...] = (
    ("notice_id", tr("通知编号", "Notice")),
    ("title", tr("标题", "Title")),
    ("category", tr("类别", "Category")),
    ("publish_at", tr("发布时间", "Published at")),
    ("township", tr("乡镇", "Township")),
    ("village", tr("村", "Village")),
    ("channel", tr("渠道", "Channel")),
    ("endpoint", tr("端点", "Endpoint")),
    ("action", tr("动作", "Action")),
    ("status", tr("状态", "Status")),
    ("attempts", tr("尝试次数", "Attempts")),
    ("sent_at", tr("发出时间", "Sent at")),
    ("delivered_at", tr("送达时间", "Delivered at")),
    ("error_code", tr("错误代码", "Error code")),
    ("error", tr("错误说明", "Error")),
    ("delivery_id", tr("投递编号", "Delivery")),
)
_ACTIONS = {"publish": tr("发布", "publish"), "recall": tr("撤回", "recall")}


def export_rows(
    store: Store,
    registry: Registry,
    scope: Scope,
    *,
    since: datetime,
    until: datetime,
    batch: int = 2000,
    lang: Lang = "zh",
) -> Iterator[list[Any]]:
    """Deliveries of the notices published in [since, until), in scope, as table rows,
    labelled in ``lang`` (the error in ``lang`` when the channel wrote one)."""
    oa = _OA.render(lang)
    township_names = {t.id: t.name for t in registry.townships.values()}
    q = (
        select(
            Delivery.notice_id,
            Notice.title,
            Notice.category,
            Notice.publish_at,
            Delivery.township_id,
            Delivery.village_id,
            Delivery.kind,
            Delivery.endpoint_id,
            Delivery.action,
            Delivery.status,
            Delivery.attempts,
            Delivery.sent_at,
            Delivery.delivered_at,
            Delivery.error_code,
            Delivery.error_zh,
            Delivery.id,
            Delivery.error_en,
        )
        .join(Notice, Notice.id == Delivery.notice_id)
        .where(Notice.publish_at >= since, Notice.publish_at < until, scope.deliveries())
        .order_by(Notice.publish_at, Delivery.notice_id, Delivery.id)
    )
    with store.session(readonly=True) as s:
        result = s.execute(q.execution_options(yield_per=batch))
        for r in result:
            yield [
                r[0],
                r[1],
                _category(r[2], lang),
                r[3],
                township_names.get(r[4] or "", r[4] or ""),
                registry.village_name(r[5]) if r[5] else oa,
                _kind(r[6], lang),
                r[7],
                _label(_ACTIONS, r[8] or "publish", lang),
                _status(r[9], lang),
                r[10],
                r[11],
                r[12],
                r[13] or "",
                (r[16] if lang == "en" and r[16] else r[14]) or "",
                r[15],
            ]


def scoped_notice_ids(store: Store, scope: Scope, ids: Sequence[int]) -> set[int]:
    with store.session(readonly=True) as s:
        return set(s.scalars(select(Notice.id).where(Notice.id.in_(list(ids)), scope.notices())))
