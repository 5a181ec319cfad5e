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
    - Batches (:func:`lock_rows_in`, :func:`acquire_locks_in`,
      :meth:`RateLimiter.acquire_many_in`): a transaction that touches several keys locks
      all of them first, in one statement, in key order. Two batches then always wait for
      each other in the same order and cannot deadlock; a transaction that takes keys one
      at a time and in another order could.

Time
    Events carry wall-clock UTC, so processes on several machines need NTP. The window is
    stretched by :data:`WINDOW_MARGIN` (5%): an event is recorded just before its request
    leaves, and the far side counts it when it arrives. A caller that sends many requests
    at once (queued on a thread pool, on a busy machine) can be later than the margin, so it
    moves each event to when the answer came back (:meth:`RateLimiter.retime_in`), which is
    never before the far side counted it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Executable, Table, and_, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session

from content_queue.db import KvEntry, RateEvent

__all__ = [
    "WINDOW_MARGIN",
    "LockRequest",
    "RateLimiter",
    "acquire_lock_in",
    "acquire_locks_in",
    "lock_holder_in",
    "lock_rows_in",
    "release_lock_in",
    "release_locks_in",
]

_KV = cast(Table, KvEntry.__table__)
_EVENTS = cast(Table, RateEvent.__table__)

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


@functools.cache
def _insert_ignore_statement(dialect: str) -> Executable:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(_KV).on_conflict_do_nothing(index_elements=["key"])
    from sqlalchemy.dialects.sqlite import insert as lite_insert

    return lite_insert(_KV).on_conflict_do_nothing(index_elements=["key"])


def _insert_ignore_kv(s: Session, keys: Sequence[str], now: datetime) -> None:
    """Create the kv rows that do not exist yet (empty), in one statement."""
    rows = [{"key": k, "value": "", "expires_at": None, "updated_at": now} for k in keys]
    dialect = s.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        # Statements built once, run on the session's connection (plain Core executemany).
        s.connection().execute(_insert_ignore_statement(dialect), rows)
    else:  # pragma: no cover - other databases are not supported
        have = set(s.scalars(select(_KV.c.key).where(_KV.c.key.in_(keys))))
        missing = [r for r in rows if r["key"] not in have]
        if missing:
            s.execute(insert(_KV), missing)


_LOCK_ROWS = (
    select(_KV.c.key, _KV.c.value, _KV.c.expires_at)
    .where(_KV.c.key.in_(bindparam("keys", expanding=True)))
    .order_by(_KV.c.key)
    .with_for_update()
)
_TAKE_LOCKS = (
    update(_KV)
    .where(_KV.c.key == bindparam("k"))
    .values(value=bindparam("owner"), expires_at=bindparam("until"), updated_at=bindparam("now"))
)
_RELEASE_LOCKS = (
    update(_KV)
    .where(and_(_KV.c.key == bindparam("k"), _KV.c.value == bindparam("owner")))
    .values(value="", expires_at=None, updated_at=bindparam("now"))
)


_Row = tuple[str, datetime | None]
"""A kv row as the batch functions see it: (value, expires_at)."""


def lock_rows_in(s: Session, keys: Iterable[str], *, now: datetime) -> dict[str, _Row]:
    """Create the kv rows of ``keys`` if missing and lock them all for this transaction,
    in key order (see the module docstring); returns each row's value and expiry."""
    ordered = sorted(set(keys))
    if not ordered:
        return {}
    _insert_ignore_kv(s, ordered, now)
    found = s.connection().execute(_LOCK_ROWS, {"keys": ordered})
    return {key: (value, expires) for key, value, expires in found}


def _held_by_other(row: _Row, owner: str, now: datetime) -> float:
    value, expires = row
    if value and value != owner and expires is not None and expires > now:
        return max(0.001, (expires - now).total_seconds())
    return 0.0


@dataclass(frozen=True)
class LockRequest:
    key: str
    owner: str
    ttl: float


def acquire_locks_in(
    s: Session,
    wanted: Sequence[LockRequest],
    *,
    now: datetime,
    rows: Mapping[str, _Row] | None = None,
) -> dict[str, float]:
    """:func:`acquire_lock_in` for several locks (distinct keys) in one transaction: three
    statements however many. ``rows`` are the locked rows when the caller already read them
    (:func:`lock_rows_in`, with nothing written to them since). Returns, per key, 0.0 when
    the owner holds it afterwards, else the seconds until the current holder's lock expires.
    """
    if not wanted:
        return {}
    if rows is None or any(w.key not in rows for w in wanted):
        rows = lock_rows_in(s, [w.key for w in wanted], now=now)
    waits: dict[str, float] = {}
    take: list[dict[str, Any]] = []
    for w in wanted:
        waits[w.key] = wait = _held_by_other(rows[w.key], w.owner, now)
        if not wait:
            take.append(
                {"k": w.key, "owner": w.owner, "until": now + timedelta(seconds=w.ttl), "now": now}
            )
    if take:
        take.sort(key=lambda t: str(t["k"]))
        s.connection().execute(_TAKE_LOCKS, take)
    return waits


def release_locks_in(s: Session, held: Sequence[tuple[str, str]], *, now: datetime) -> None:
    """:func:`release_lock_in` for several (key, owner) pairs, in one statement."""
    if not held:
        return
    s.connection().execute(
        _RELEASE_LOCKS,
        # In key order, as every batch here: two releasers never wait on each other in a cycle.
        [{"k": k, "owner": o, "now": now} for k, o in sorted(held)],
    )


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

    def retime_in(self, s: Session, moves: Sequence[tuple[str, datetime, datetime]]) -> None:
        """Move events: (key, recorded at, answered at); see "Time" in the module docstring."""
        if not self.enabled or not moves:
            return
        s.execute(
            update(_EVENTS)
            .where(and_(_EVENTS.c.key == bindparam("k"), _EVENTS.c.at == bindparam("was")))
            .values(at=bindparam("moved")),
            [{"k": k, "was": was, "moved": moved} for k, was, moved in moves],
        )

    @staticmethod
    def guard_key(key: str) -> str:
        """The kv row that serialises the acquirers of ``key`` (see the module docstring)."""
        return f"rate:{key}"

    def acquire_many_in(
        self, s: Session, needs: Mapping[str, int], *, now: datetime, locked: bool = False
    ) -> dict[str, float]:
        """:meth:`acquire_in` for several keys in one transaction, in a few statements
        however many keys. ``needs`` maps each key to the events it needs room for; one
        event is recorded per key that has room. ``locked``: the caller already locked the
        keys' guard rows (:func:`lock_rows_in` with :meth:`guard_key`)."""
        if not self.enabled or not needs:
            return dict.fromkeys(needs, 0.0)
        keys = sorted(needs)
        if not locked:
            lock_rows_in(s, [self.guard_key(k) for k in keys], now=now)
        since = now - self.span
        s.execute(delete(_EVENTS).where(_EVENTS.c.key.in_(keys), _EVENTS.c.at <= since))
        times: dict[str, list[datetime]] = {k: [] for k in keys}
        for key, at in s.execute(
            select(_EVENTS.c.key, _EVENTS.c.at)
            .where(_EVENTS.c.key.in_(keys), _EVENTS.c.at > since)
            .order_by(_EVENTS.c.key, _EVENTS.c.at)
        ):
            times[key].append(at)
        waits = {k: self.wait_seconds(times[k], need=needs[k], now=now) for k in keys}
        room = [{"key": k, "at": now} for k in keys if waits[k] == 0.0]
        if room:
            s.execute(insert(_EVENTS), room)
        return waits


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
