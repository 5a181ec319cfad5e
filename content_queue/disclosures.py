"""Read-only questions about disclosures the store can answer: what went out to which
village and when (for the disclosure calendar), and how a notice was withdrawn."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from content_queue.db import Delivery, Notice
from content_queue.store import NoticeView, Store

__all__ = ["Disclosure", "WithdrawalFacts", "published_disclosures", "withdrawal_of"]


@dataclass(frozen=True)
class Disclosure:
    """An active notice of a category that went out to a village."""

    notice_id: int
    category: str
    village_id: str
    published_at: datetime
    """When it first reached one of the village's endpoints (sent or delivered)."""
    title: str


def published_disclosures(
    store: Store, *, categories: Iterable[str], since: datetime | None = None
) -> list[Disclosure]:
    """Active notices of these categories that reached a village (any of its endpoints
    accepted the publish), one row per (notice, village), oldest first.

    Withdrawn notices do not count; a superseded one is replaced by its correction, which
    is active and counts from when the correction went out."""
    cats = list(categories)
    if not cats:
        return []
    with store.session(readonly=True) as s:
        q = (
            select(Notice.id, Notice.category, Notice.title, Delivery.village_id, Delivery.sent_at)
            .join(Delivery, Delivery.notice_id == Notice.id)
            .where(
                Notice.state == "active",
                Notice.category.in_(cats),
                Delivery.action == "publish",
                Delivery.village_id.is_not(None),
                Delivery.sent_at.is_not(None),
            )
        )
        if since is not None:
            q = q.where(Delivery.sent_at >= since)
        first: dict[tuple[int, str], Any] = {}
        for notice_id, category, title, village_id, sent_at in s.execute(q):
            key = (notice_id, str(village_id))
            if key not in first or sent_at < first[key][2]:
                first[key] = (category, title, sent_at)
        out = [
            Disclosure(
                notice_id=nid,
                category=category,
                village_id=vid,
                published_at=sent_at,
                title=title,
            )
            for (nid, vid), (category, title, sent_at) in first.items()
        ]
    return sorted(out, key=lambda d: (d.published_at, d.notice_id))


@dataclass(frozen=True)
class WithdrawalFacts:
    at: datetime
    actor: str
    reason: str
    superseded_by: NoticeView | None


def withdrawal_of(store: Store, notice_id: int) -> WithdrawalFacts | None:
    """When, by whom and why a notice was withdrawn (from the audit log), and the
    correction that replaced it; None while it is active."""
    entries = [
        e
        for e in store.audit_entries(notice_id=notice_id, limit=None)
        if e["action"] in ("notice.withdraw", "notice.supersede")
    ]
    if not entries:
        return None
    last = entries[-1]
    details = last["details"]
    replacement = None
    new_id = details.get("superseded_by")
    if isinstance(new_id, int):
        replacement = store.notice(new_id)
    else:
        with store.session(readonly=True) as s:
            row = s.scalars(select(Notice).where(Notice.supersedes_id == notice_id)).first()
            replacement = NoticeView.of(row) if row is not None else None
    return WithdrawalFacts(
        at=last["at"],
        actor=str(last["actor"]),
        reason=str(details.get("reason") or ""),
        superseded_by=replacement,
    )
