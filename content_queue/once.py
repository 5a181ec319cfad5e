"""Do-it-once claims shared by every process on every machine (rows in ``kv_entries``).

Two instances of a service may see the same event (two ack listeners both receive a
device's fresh-boot message); the one whose claim is written first acts, the others skip.
A claim expires, so a key can be claimed again later (after ``ttl_seconds``).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update

from content_queue.db import KvEntry
from content_queue.store import Store, utcnow

__all__ = ["claim_once"]


def claim_once(
    store: Store, key: str, *, holder: str, ttl_seconds: float, now: datetime | None = None
) -> bool:
    """True for exactly one caller per ``key`` until its claim expires."""
    now = now or utcnow()
    values = {
        "key": key,
        "value": holder,
        "expires_at": now + timedelta(seconds=ttl_seconds),
        "updated_at": now,
    }
    with store.session() as s:
        # RETURNING says whether this caller wrote the row (psycopg reports no rowcount
        # for an INSERT ... ON CONFLICT DO NOTHING).
        if s.get_bind().dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            pg = pg_insert(KvEntry).values(**values).on_conflict_do_nothing()
            written = s.execute(pg.returning(KvEntry.key)).first()
        else:
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            lite = sqlite_insert(KvEntry).values(**values).on_conflict_do_nothing()
            written = s.execute(lite.returning(KvEntry.key)).first()
        if written is not None:
            return True
        # Taken: an expired claim is taken over by one caller (a conditional update).
        taken = s.execute(
            update(KvEntry)
            .where(KvEntry.key == key, KvEntry.expires_at <= now)
            .values(value=holder, expires_at=values["expires_at"], updated_at=now)
            .returning(KvEntry.key)
            .execution_options(synchronize_session=False)
        ).first()
        return taken is not None
