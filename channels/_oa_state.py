"""The official-account channel's shared state in the store: key-value entries (the access
token, locks, cached media ids), the mass-send quota ledger, per-part progress, and the
few delivery updates the publish poller makes.

Everything here is shared by every worker process on every machine through the database,
which is the only truth (kv_entries, rate_events and send_parts come from migration 0004).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from channels.base import TransientError
from content_queue.db import Delivery, KvEntry, Notice, RateEvent, SendPart
from content_queue.i18n import Text, tr
from content_queue.store import DeliveryView, NoticeView, Store, utcnow

__all__ = [
    "Check",
    "Part",
    "count_events",
    "kv_delete",
    "kv_get",
    "kv_lock",
    "kv_set",
    "merge_details",
    "parts",
    "parts_with_ref",
    "release_event",
    "reserve_event",
    "sent_deliveries",
    "set_part",
    "settle",
    "try_lock",
    "waiting_deliveries",
]

_WAITING = ("pending", "scheduled", "sending")

# -- key-value entries ----------------------------------------------------------------------


def kv_get(store: Store, key: str, *, now: datetime | None = None) -> str | None:
    """The live value of ``key`` (None when missing or expired)."""
    now = now or utcnow()
    with store.session(readonly=True) as s:
        row = s.get(KvEntry, key)
        if row is None or (row.expires_at is not None and row.expires_at <= now):
            return None
        return row.value


def kv_set(
    store: Store, key: str, value: str, *, ttl: float | None = None, now: datetime | None = None
) -> None:
    """Write ``key`` (insert or replace), expiring after ``ttl`` seconds if given."""
    now = now or utcnow()
    expires = now + timedelta(seconds=ttl) if ttl is not None else None
    for _ in range(3):  # two writers inserting the same new key: the loser updates instead
        try:
            with store.session() as s:
                row = s.get(KvEntry, key, with_for_update=True)
                if row is None:
                    s.add(KvEntry(key=key, value=value, expires_at=expires, updated_at=now))
                else:
                    row.value, row.expires_at, row.updated_at = value, expires, now
            return
        except IntegrityError:
            continue


def kv_delete(store: Store, key: str, *, value: str | None = None) -> bool:
    """Delete ``key``; with ``value``, only if it still holds that value (compare-and-delete)."""
    with store.session() as s:
        q = delete(KvEntry).where(KvEntry.key == key)
        if value is not None:
            q = q.where(KvEntry.value == value)
        res = s.execute(q.execution_options(synchronize_session=False))
        return bool(getattr(res, "rowcount", 0))


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _acquire(store: Store, key: str, owner: str, ttl: float) -> bool:
    now = utcnow()
    try:
        with store.session() as s:
            row = s.get(KvEntry, key, with_for_update=True)
            expires = now + timedelta(seconds=ttl)
            if row is None:
                s.add(KvEntry(key=key, value=owner, expires_at=expires, updated_at=now))
                return True
            if row.expires_at is not None and row.expires_at > now and row.value != owner:
                return False
            row.value, row.expires_at, row.updated_at = owner, expires, now
            return True
    except IntegrityError:
        return False


def try_lock(store: Store, key: str, *, ttl: float) -> str | None:
    """Take a lease lock if it is free; returns the owner token to release it with."""
    owner = _owner()
    return owner if _acquire(store, key, owner, ttl) else None


@contextmanager
def kv_lock(store: Store, key: str, *, ttl: float, wait: float, what: Text) -> Iterator[None]:
    """Hold a lease lock shared by every process; a holder that dies frees it after ``ttl``.

    Raises TransientError (code ``busy``) when it cannot be had within ``wait`` seconds."""
    owner = _owner()
    deadline = time.monotonic() + wait
    pause = 0.02
    while not _acquire(store, key, owner, ttl):
        if time.monotonic() > deadline:
            raise TransientError(
                tr(
                    "{what}正被另一个工作进程使用，稍后重试",
                    "{what} is busy in another worker; will retry",
                    what=what,
                ),
                code="busy",
            )
        time.sleep(pause)
        pause = min(pause * 2, 0.25)
    try:
        yield
    finally:
        kv_delete(store, key, value=owner)


# -- the mass-send quota ledger -------------------------------------------------------------


def count_events(store: Store, keys: Iterable[str], *, since: datetime) -> dict[str, int]:
    """How many ledger events each key has had since ``since``."""
    wanted = list(keys)
    out = dict.fromkeys(wanted, 0)
    if not wanted:
        return out
    with store.session(readonly=True) as s:
        q = (
            select(RateEvent.key, func.count())
            .where(RateEvent.key.in_(wanted), RateEvent.at >= since)
            .group_by(RateEvent.key)
        )
        for key, n in s.execute(q):
            out[key] = int(n)
    return out


def reserve_event(store: Store, key: str, *, now: datetime | None = None) -> int:
    """Record one use of ``key`` now; returns its id (to release it if the use failed)."""
    with store.session() as s:
        event = RateEvent(key=key, at=now or utcnow())
        s.add(event)
        s.flush()
        return int(event.id)


def release_event(store: Store, event_id: int) -> None:
    with store.session() as s:
        s.execute(delete(RateEvent).where(RateEvent.id == event_id))


# -- what WeChat says of a sent delivery ------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """Where a ``sent`` delivery stands, as WeChat answered (``sent``: not settled yet)."""

    status: Literal["sent", "delivered", "failed"]
    details: dict[str, Any]
    text: Text | None = None
    code: str | None = None


# -- parts: what of a delivery already went out ----------------------------------------------


@dataclass(frozen=True)
class Part:
    delivery_id: int
    key: str
    seq: int
    status: str
    """``sending`` (request under way or crashed), ``accepted``, ``unknown``, ``failed``."""
    external_ref: str | None
    error_code: str | None


def _part(p: SendPart) -> Part:
    return Part(p.delivery_id, p.part_key, p.seq, p.status, p.external_ref, p.error_code)


def parts(store: Store, delivery_id: int) -> dict[str, Part]:
    with store.session(readonly=True) as s:
        rows = s.scalars(select(SendPart).where(SendPart.delivery_id == delivery_id))
        return {p.part_key: _part(p) for p in rows}


def parts_with_ref(store: Store, key: str, ref: str) -> list[Part]:
    """Every delivery's part ``key`` carrying ``ref`` (the members of one digest send)."""
    with store.session(readonly=True) as s:
        rows = s.scalars(
            select(SendPart)
            .where(SendPart.part_key == key, SendPart.external_ref == ref)
            .order_by(SendPart.seq, SendPart.delivery_id)
        )
        return [_part(p) for p in rows]


def set_part(
    store: Store,
    delivery_ids: Sequence[int] | int,
    key: str,
    *,
    status: str,
    ref: str | None = None,
    seqs: Sequence[int] | None = None,
    error_code: str | None = None,
) -> None:
    """Insert or move the part ``key`` of each delivery (one transaction for all of them)."""
    ids = [delivery_ids] if isinstance(delivery_ids, int) else list(delivery_ids)
    now = utcnow()
    with store.session() as s:
        existing = {
            p.delivery_id: p
            for p in s.scalars(
                select(SendPart).where(SendPart.delivery_id.in_(ids), SendPart.part_key == key)
            )
        }
        for i, did in enumerate(ids):
            seq = seqs[i] if seqs is not None else 0
            row = existing.get(did)
            if row is None:
                row = SendPart(delivery_id=did, part_key=key, seq=seq, started_at=now)
                s.add(row)
            elif status == "sending":
                row.started_at = now
            row.status = status
            row.seq = seq
            if ref is not None:
                row.external_ref = ref
            row.error_code = error_code
            row.finished_at = None if status == "sending" else now


# -- deliveries --------------------------------------------------------------------------------


def waiting_deliveries(
    store: Store, endpoint_id: str, *, now: datetime | None = None
) -> list[tuple[DeliveryView, NoticeView]]:
    """Publish deliveries to this endpoint not yet out, of notices still live."""
    now = now or utcnow()
    with store.session(readonly=True) as s:
        q = (
            select(Delivery, Notice)
            .join(Notice, Notice.id == Delivery.notice_id)
            .where(
                Delivery.endpoint_id == endpoint_id,
                Delivery.action == "publish",
                Delivery.status.in_(_WAITING),
                Notice.state == "active",
            )
            .order_by(Delivery.id)
        )
        out = []
        for d, n in s.execute(q):
            notice = NoticeView.of(n)
            if not notice.expired(now):
                out.append((DeliveryView.of(d), notice))
        return out


def sent_deliveries(store: Store, kind: str) -> list[DeliveryView]:
    """Publish deliveries of this kind that the far side took but has not confirmed."""
    with store.session(readonly=True) as s:
        q = (
            select(Delivery)
            .where(Delivery.kind == kind, Delivery.status == "sent", Delivery.action == "publish")
            .order_by(Delivery.id)
        )
        return [DeliveryView.of(d) for d in s.scalars(q)]


def merge_details(store: Store, delivery_id: int, details: dict[str, Any]) -> None:
    """Add facts to a delivery that is still ``sent`` (poll bookkeeping)."""
    with store.session() as s:
        d = s.get(Delivery, delivery_id)
        if d is not None and d.status == "sent":
            d.details = {**(d.details or {}), **details}


def settle(
    store: Store,
    delivery_id: int,
    *,
    status: str,
    details: dict[str, Any] | None = None,
    text: Text | None = None,
    code: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Move a ``sent`` delivery to ``delivered`` or ``failed`` (compare-and-set)."""
    now = now or utcnow()
    with store.session() as s:
        d = s.get(Delivery, delivery_id)
        if d is None or d.status != "sent":
            return False
        values: dict[str, Any] = {
            "status": status,
            "finished_at": now,
            "updated_at": now,
            "details": {**(d.details or {}), **(details or {})},
            "error_code": code,
            "error_zh": text.render("zh") if text else None,
            "error_en": text.render("en") if text else None,
        }
        if status == "delivered":
            values["delivered_at"] = now
        res = s.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.status == "sent")
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(res, "rowcount", 0))
