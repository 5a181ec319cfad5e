"""Limits shared by every worker process on every machine: a sliding-window rate limiter over
``rate_events`` and expiring locks over ``kv_entries``.

Celery's ``rate_limit`` counts per worker process; a robot's 20 messages a minute is one
budget for the whole county, so the count lives in the store every worker already shares.

Correctness under concurrency
    Every check-then-write here happens inside one write transaction (``Store.session()``)
    after taking a row lock on a guard row in ``kv_entries``:

    - SQLite: every write transaction already starts with ``BEGIN IMMEDIATE``, so writers run
      one at a time and a count cannot go stale before the insert that follows it.
    - PostgreSQL (READ COMMITTED): two transactions could both count 19 events and both
      insert a 20th. So the guard row is created if missing (``INSERT ... ON CONFLICT DO
      NOTHING``) and locked (``SELECT ... FOR UPDATE``) first: acquirers of one key queue on
      that row, and the count read after the lock is granted sees every event committed
      before (READ COMMITTED takes a fresh snapshot per statement). Different keys never
      wait for each other.

Time
    Events carry wall-clock UTC, so processes on several machines need NTP. The window is
    stretched by :data:`WINDOW_MARGIN` (5%): an event is recorded just before its request
    leaves, and the far side counts it when it arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from content_queue.db import KvEntry, RateEvent

__all__ = [
    "WINDOW_MARGIN",
    "RateLimiter",
    "acquire_lock_in",
    "lock_holder_in",
    "release_lock_in",
]

WINDOW_MARGIN = 0.05
"""Fraction added to a window: covers the time between recording an event and its arrival."""


def _ensure_row(s: Session, key: str, now: datetime) -> KvEntry:
    """The kv row for ``key``, created empty if missing, locked for this transaction."""
    values = {"key": key, "value": "", "expires_at": None, "updated_at": now}
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        s.execute(
            pg_insert(KvEntry).values(**values).on_conflict_do_nothing(index_elements=["key"])
        )
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as lite_insert

        s.execute(
            lite_insert(KvEntry).values(**values).on_conflict_do_nothing(index_elements=["key"])
        )
    elif s.get(KvEntry, key) is None:  # pragma: no cover - other databases are not supported
        s.execute(insert(KvEntry).values(**values))
    row = s.scalars(
        select(KvEntry)
        .where(KvEntry.key == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    return row


@dataclass(frozen=True)
class RateLimiter:
    """At most ``limit`` events per ``window`` seconds for each key; ``limit`` 0 is off."""

    limit: int
    window: float

    @property
    def span(self) -> timedelta:
        """The window as counted here: a little longer than the far side's."""
        return timedelta(seconds=self.window * (1 + WINDOW_MARGIN))

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def wait_seconds(self, times: Sequence[datetime], *, need: int, now: datetime) -> float:
        """Seconds until ``need`` more events fit beside ``times`` (sorted, inside the window).

        ``need`` above the limit is capped: a delivery of 25 messages needs room for 20 to
        start, then waits for room message by message.
        """
        need = max(1, min(need, self.limit))
        over = len(times) + need - self.limit
        if over <= 0:
            return 0.0
        leaves = times[over - 1] + self.span
        return max(0.001, (leaves - now).total_seconds())

    def acquire_in(self, s: Session, key: str, *, now: datetime, need: int = 1) -> float:
        """Record one event for ``key`` if ``need`` events fit now; else record nothing.

        Returns 0.0 when the event was recorded, otherwise the seconds to wait before asking
        again. Call it inside a write transaction (see the module docstring)."""
        if not self.enabled:
            return 0.0
        _ensure_row(s, f"rate:{key}", now)
        since = now - self.span
        s.execute(
            delete(RateEvent)
            .where(RateEvent.key == key, RateEvent.at <= since)
            .execution_options(synchronize_session=False)
        )
        times = list(
            s.scalars(
                select(RateEvent.at)
                .where(RateEvent.key == key, RateEvent.at > since)
                .order_by(RateEvent.at)
            )
        )
        wait = self.wait_seconds(times, need=need, now=now)
        if wait == 0.0:
            s.execute(insert(RateEvent).values(key=key, at=now))
        return wait


def acquire_lock_in(s: Session, key: str, *, owner: str, ttl: float, now: datetime) -> float:
    """Take (or extend, if ``owner`` already holds it) the lock ``key`` for ``ttl`` seconds.

    Returns 0.0 when held by ``owner`` afterwards, else the seconds until the current
    holder's lock expires. An expired lock is free: a holder that died gives it up by time.
    """
    row = _ensure_row(s, key, now)
    held = row.value and row.value != owner and row.expires_at is not None and row.expires_at > now
    if held:
        assert row.expires_at is not None
        return max(0.001, (row.expires_at - now).total_seconds())
    row.value = owner
    row.expires_at = now + timedelta(seconds=ttl)
    row.updated_at = now
    return 0.0


def release_lock_in(s: Session, key: str, *, owner: str, now: datetime) -> bool:
    """Give the lock up if ``owner`` holds it; returns whether it did."""
    res = s.execute(
        update(KvEntry)
        .where(KvEntry.key == key, KvEntry.value == owner)
        .values(value="", expires_at=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(res, "rowcount", 0))


def lock_holder_in(s: Session, key: str, *, now: datetime) -> str | None:
    """Who holds the lock now (None when free or expired)."""
    row = s.get(KvEntry, key)
    if row is None or not row.value or row.expires_at is None or row.expires_at <= now:
        return None
    return row.value
