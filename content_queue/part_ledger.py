"""The per-part ledger of multi-message sends (``send_parts``): what the far side took.

A part is written ``sending`` in the same transaction that reserves its rate slot, just
before the request leaves, and ``accepted``, ``failed`` (the far side refused, or the request
never left) or ``unknown`` (it left and no answer came) after. A retry or a sweeper reads
the ledger first: ``accepted`` parts are never sent again, and a part still ``sending`` was
cut off by a dead worker, so its outcome is unknown.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast

from sqlalchemy import Executable, Table, select
from sqlalchemy.orm import Session

from content_queue.db import SendPart
from content_queue.store import Store

__all__ = [
    "PartRecord",
    "PartStatus",
    "mark_accepted_many_in",
    "mark_finished_in",
    "mark_sending_in",
    "mark_sending_many_in",
    "parts_of",
    "parts_of_many",
]

_PARTS = cast(Table, SendPart.__table__)

PartStatus = Literal["sending", "accepted", "unknown", "failed"]


@dataclass(frozen=True)
class PartRecord:
    part_key: str
    seq: int
    status: str
    started_at: datetime
    finished_at: datetime | None
    external_ref: str | None
    error_code: str | None


def parts_of(store: Store, delivery_id: int) -> dict[str, PartRecord]:
    """Every recorded part of a delivery, by part key."""
    with store.session(readonly=True) as s:
        rows = s.scalars(
            select(SendPart).where(SendPart.delivery_id == delivery_id).order_by(SendPart.seq)
        )
        return {
            p.part_key: PartRecord(
                p.part_key,
                p.seq,
                p.status,
                p.started_at,
                p.finished_at,
                p.external_ref,
                p.error_code,
            )
            for p in rows
        }


def parts_of_many(store: Store, delivery_ids: Sequence[int]) -> dict[int, dict[str, PartRecord]]:
    """:func:`parts_of` for several deliveries, in one query (every id is in the answer)."""
    found: dict[int, dict[str, PartRecord]] = {d: {} for d in delivery_ids}
    if not delivery_ids:
        return found
    with store.session(readonly=True) as s:
        rows = s.execute(
            select(
                _PARTS.c.delivery_id,
                _PARTS.c.part_key,
                _PARTS.c.seq,
                _PARTS.c.status,
                _PARTS.c.started_at,
                _PARTS.c.finished_at,
                _PARTS.c.external_ref,
                _PARTS.c.error_code,
            )
            .where(_PARTS.c.delivery_id.in_(list(delivery_ids)))
            .order_by(_PARTS.c.delivery_id, _PARTS.c.seq)
        )
        for delivery_id, *rest in rows:
            record = PartRecord(*rest)
            found[delivery_id][record.part_key] = record
    return found


@functools.cache
def _upsert_statement(dialect: str, update: tuple[str, ...]) -> Executable:
    """``INSERT ... ON CONFLICT (delivery_id, part_key) DO UPDATE`` of the ``update``
    columns, built once per dialect (a round writes one per batch of parts)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        pg = pg_insert(_PARTS)
        return pg.on_conflict_do_update(
            index_elements=["delivery_id", "part_key"], set_={c: pg.excluded[c] for c in update}
        )
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as lite_insert

        lite = lite_insert(_PARTS)
        return lite.on_conflict_do_update(
            index_elements=["delivery_id", "part_key"], set_={c: lite.excluded[c] for c in update}
        )
    raise NotImplementedError(dialect)  # pragma: no cover - other databases are not supported


def _upsert(s: Session, rows: list[dict[str, Any]], update: tuple[str, ...]) -> None:
    """Insert ``rows`` into send_parts; a row that exists gets the ``update`` columns.
    Run on the session's connection: plain Core ``executemany``, no ORM bookkeeping."""
    conn = s.connection()
    conn.execute(_upsert_statement(conn.dialect.name, update), rows)


def mark_sending_many_in(
    s: Session, parts: Sequence[tuple[int, str, int]], *, now: datetime
) -> None:
    """:func:`mark_sending_in` for several (delivery_id, part_key, seq), in one statement."""
    if not parts:
        return
    rows = [
        {
            "delivery_id": d,
            "part_key": k,
            "seq": seq,
            "status": "sending",
            "started_at": now,
            "finished_at": None,
            "external_ref": None,
            "error_code": None,
        }
        for d, k, seq in parts
    ]
    _upsert(s, rows, ("seq", "status", "started_at", "finished_at", "error_code"))


def mark_accepted_many_in(
    s: Session, parts: Sequence[tuple[int, str, int, str | None]], *, now: datetime
) -> None:
    """Record several (delivery_id, part_key, seq, external_ref) as ``accepted``, in one
    statement (as :func:`mark_finished_in` with status ``accepted`` would, one by one)."""
    if not parts:
        return
    rows = [
        {
            "delivery_id": d,
            "part_key": k,
            "seq": seq,
            "status": "accepted",
            "started_at": now,
            "finished_at": now,
            "external_ref": ref,
            "error_code": None,
        }
        for d, k, seq, ref in parts
    ]
    _upsert(s, rows, ("status", "finished_at", "external_ref", "error_code"))


def _row(s: Session, delivery_id: int, part_key: str) -> SendPart | None:
    return s.scalars(
        select(SendPart).where(SendPart.delivery_id == delivery_id, SendPart.part_key == part_key)
    ).one_or_none()


def mark_sending_in(
    s: Session, *, delivery_id: int, part_key: str, seq: int, now: datetime
) -> None:
    """The request for this part is about to leave. Only the delivery's lease holder writes
    its parts, so there is no race on the row."""
    row = _row(s, delivery_id, part_key)
    if row is None:
        s.add(
            SendPart(
                delivery_id=delivery_id,
                part_key=part_key,
                seq=seq,
                status="sending",
                started_at=now,
            )
        )
        return
    row.status = "sending"
    row.seq = seq
    row.started_at = now
    row.finished_at = None
    row.error_code = None


def mark_finished_in(
    s: Session,
    *,
    delivery_id: int,
    part_key: str,
    status: PartStatus,
    now: datetime,
    seq: int = 0,
    external_ref: str | None = None,
    error_code: str | None = None,
) -> None:
    row = _row(s, delivery_id, part_key)
    if row is None:
        row = SendPart(delivery_id=delivery_id, part_key=part_key, seq=seq, started_at=now)
        s.add(row)
    row.status = status
    row.finished_at = now
    row.external_ref = external_ref
    row.error_code = error_code
