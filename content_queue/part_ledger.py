"""The per-part ledger of multi-message sends (``send_parts``): what the far side took.

A part is written ``sending`` in the same transaction that reserves its rate slot, just
before the request leaves, and ``accepted``, ``failed`` (the far side refused, or the request
never left) or ``unknown`` (it left and no answer came) after. A retry or a sweeper reads
the ledger first: ``accepted`` parts are never sent again, and a part still ``sending`` was
cut off by a dead worker, so its outcome is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from content_queue.db import SendPart
from content_queue.store import Store

__all__ = ["PartRecord", "PartStatus", "mark_finished_in", "mark_sending_in", "parts_of"]

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
