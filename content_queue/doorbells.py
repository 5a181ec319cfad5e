"""How far each broker queue's doorbells have been taken (rows in ``kv_entries``).

A doorbell carries the time it was rung. A worker starting one notes that time for the
queue it came from: broker queues hand messages out first in, first out, so every doorbell
rung on that queue before it has been taken out too, by this worker or by one that died
since. The sweeper rings a delivery again only once its doorbell can no longer be waiting
in the queue (``Store.sweep(ring_cutoffs=...)``): ringing one that still waits only makes
the queue every worker drains longer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import case, select, update

from content_queue.db import KvEntry
from content_queue.store import Store, utcnow

__all__ = ["Taken", "doorbells_taken", "note_doorbell_taken"]

_KEY = "doorbell_taken:"
_FORMAT = "%Y-%m-%dT%H:%M:%S.%f"  # fixed width, UTC: compares as text in SQL


def note_doorbell_taken(
    store: Store, queue: str, rung_at: datetime, *, now: datetime | None = None
) -> None:
    """A worker took a doorbell rung at ``rung_at`` from ``queue`` just now.

    The noted ring time never moves back; the time of the note always moves on, so the
    sweeper can tell a queue that is being drained from one nobody takes from.
    """
    now = now or utcnow()
    value = rung_at.astimezone(UTC).strftime(_FORMAT)
    key = _KEY + queue
    row = {"key": key, "value": value, "expires_at": None, "updated_at": now}
    with store.session() as s:
        if s.get_bind().dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            s.execute(pg_insert(KvEntry).values(**row).on_conflict_do_nothing())
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            s.execute(sqlite_insert(KvEntry).values(**row).on_conflict_do_nothing())
        s.execute(
            update(KvEntry)
            .where(KvEntry.key == key)
            .values(
                value=case((KvEntry.value < value, value), else_=KvEntry.value),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )


@dataclass(frozen=True)
class Taken:
    rung_at: datetime
    """The latest ring time taken from the queue."""
    noted_at: datetime
    """When a worker last took a doorbell from it."""


def doorbells_taken(store: Store, queues: Iterable[str]) -> dict[str, Taken]:
    """What was taken from each queue; a queue nothing was noted for is absent."""
    keys = {_KEY + q: q for q in queues}
    if not keys:
        return {}
    with store.session(readonly=True) as s:
        rows = s.execute(
            select(KvEntry.key, KvEntry.value, KvEntry.updated_at).where(KvEntry.key.in_(keys))
        )
        return {
            keys[k]: Taken(datetime.strptime(v, _FORMAT).replace(tzinfo=UTC), at)
            for k, v, at in rows
        }
