"""The shared limiter, the send locks and the part ledger under concurrent writers, on SQLite
and on PostgreSQL (content_queue.shared_limits, content_queue.part_ledger).

SQLite runs one writer at a time; on PostgreSQL the threads below really do overlap, so a
count read before another writer's insert, or two batches locking keys in different
orders, would show up here as too many events or as a deadlock error.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from content_queue.db import RateEvent
from content_queue.models import build_notice
from content_queue.part_ledger import (
    mark_accepted_many_in,
    mark_finished_in,
    mark_sending_many_in,
    parts_of,
    parts_of_many,
)
from content_queue.shared_limits import (
    LockRequest,
    RateLimiter,
    acquire_lock_in,
    acquire_locks_in,
    lock_holder_in,
    release_lock_in,
    release_locks_in,
)
from content_queue.store import PlannedDelivery, Store

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
THREADS = 6


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    yield s
    s.engine.dispose()


def _together(n: int, call: Callable[[int], Any]) -> list[Any]:
    """``call(i)`` in ``n`` threads released at the same moment; returns their results."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = call(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    if errors:
        raise errors[0]
    return results


def test_the_limiter_admits_exactly_its_limit_to_concurrent_writers(store: Store) -> None:
    limiter = RateLimiter(7, 60.0)

    def take(i: int) -> int:
        got = 0
        for n in range(5):
            with store.session() as s:
                now = T0 + timedelta(milliseconds=10 * n + i)
                got += limiter.acquire_in(s, "wecom:robot-a", now=now) == 0.0
        return got

    assert sum(_together(THREADS, take)) == 7
    with store.session(readonly=True) as s:
        count = s.scalar(select(func.count()).select_from(RateEvent))
    assert count == 7


def test_batched_acquisitions_share_the_same_budget(store: Store) -> None:
    """acquire_many_in and acquire_in from different writers count the same events."""
    limiter = RateLimiter(5, 60.0)
    keys = [f"wecom:r{k}" for k in range(4)]

    def take(i: int) -> dict[str, int]:
        got = dict.fromkeys(keys, 0)
        for n in range(4):
            now = T0 + timedelta(milliseconds=10 * n + i)
            if i % 2:
                with store.session() as s:
                    waits = limiter.acquire_many_in(s, dict.fromkeys(keys, 1), now=now)
            else:
                # One key per transaction: several single acquisitions in one transaction
                # would lock their rows out of order (see the module's docstring).
                waits = {}
                for k in reversed(keys):
                    with store.session() as s:
                        waits[k] = limiter.acquire_in(s, k, now=now)
            for k, wait in waits.items():
                got[k] += wait == 0.0
        return got

    results = _together(THREADS, take)
    assert {k: sum(r[k] for r in results) for k in keys} == dict.fromkeys(keys, 5)


def test_a_batch_needs_room_for_all_it_asks_and_waits_for_the_oldest(store: Store) -> None:
    limiter = RateLimiter(3, 10.0)
    with store.session() as s:
        assert limiter.acquire_many_in(s, {"a": 3, "b": 1}, now=T0) == {"a": 0.0, "b": 0.0}
    later = T0 + timedelta(seconds=1)
    with store.session() as s:
        limiter.acquire_many_in(s, {"a": 1}, now=later)
    with store.session() as s:
        waits = limiter.acquire_many_in(s, {"a": 2, "b": 2}, now=later + timedelta(seconds=1))
    assert waits["b"] == 0.0
    # a has two events (T0, T0+1 s): room for two more only when the first leaves.
    assert waits["a"] == pytest.approx(10 * 1.05 - 2)


def test_retimed_events_hold_the_window_from_the_answer(store: Store) -> None:
    limiter = RateLimiter(1, 10.0)
    with store.session() as s:
        assert limiter.acquire_many_in(s, {"a": 1}, now=T0) == {"a": 0.0}
    with store.session() as s:
        limiter.retime_in(s, [("a", T0, T0 + timedelta(seconds=4))])
    with store.session() as s:
        wait = limiter.acquire_in(s, "a", now=T0 + timedelta(seconds=11))
    assert wait == pytest.approx(4 + 10.5 - 11)


def test_one_owner_gets_a_lock_that_many_want_at_once(store: Store) -> None:
    def take(i: int) -> bool:
        with store.session() as s:
            return acquire_lock_in(s, "wecom:lock:r", owner=f"d{i}", ttl=30, now=T0) == 0.0

    winners = [i for i, won in enumerate(_together(THREADS, take)) if won]
    assert len(winners) == 1
    with store.session(readonly=True) as s:
        assert lock_holder_in(s, "wecom:lock:r", now=T0) == f"d{winners[0]}"
    with store.session() as s:
        assert not release_lock_in(s, "wecom:lock:r", owner="someone-else", now=T0)
        assert release_lock_in(s, "wecom:lock:r", owner=f"d{winners[0]}", now=T0)


def test_batched_locks_in_any_order_never_deadlock_and_never_share(store: Store) -> None:
    """Writers asking for overlapping sets of locks in shuffled orders: on PostgreSQL,
    taking them in the order asked would deadlock; each key must have one holder."""
    keys = [f"wecom:lock:r{k:02d}" for k in range(12)]
    holders: dict[str, set[str]] = {k: set() for k in keys}
    guard = threading.Lock()

    def take(i: int) -> int:
        rng = random.Random(i)
        won = 0
        for n in range(15):
            mine = rng.sample(keys, 6)
            owner = f"w{i}-{n}"
            now = T0 + timedelta(seconds=n)
            with store.session() as s:
                waits = acquire_locks_in(s, [LockRequest(k, owner, 0.5) for k in mine], now=now)
            got = [k for k in mine if waits[k] == 0.0]
            with guard:
                for k in got:
                    holders[k].add(owner)
            won += len(got)
            with store.session() as s:
                release_locks_in(s, [(k, owner) for k in got], now=now)
        return won

    assert sum(_together(4, take)) > 0
    # Released each time: afterwards every key is free again.
    with store.session(readonly=True) as s:
        assert [lock_holder_in(s, k, now=T0) for k in keys] == [None] * len(keys)


def test_a_held_lock_makes_a_batch_wait_until_it_expires(store: Store) -> None:
    with store.session() as s:
        acquire_lock_in(s, "k1", owner="a", ttl=20, now=T0)
    with store.session() as s:
        waits = acquire_locks_in(
            s,
            [LockRequest("k1", "b", 20), LockRequest("k2", "b", 20)],
            now=T0 + timedelta(seconds=5),
        )
    assert waits == {"k1": pytest.approx(15.0), "k2": 0.0}
    with store.session() as s:  # expired: free for the next owner
        waits = acquire_locks_in(s, [LockRequest("k1", "b", 20)], now=T0 + timedelta(seconds=21))
    assert waits == {"k1": 0.0}


def test_part_ledger_batches_on_both_engines(store: Store) -> None:
    draft = build_notice(
        {"title": "停水", "body": "明天停水。", "category": "meeting", "targets": {"county": True}}
    )
    plans = [PlannedDelivery(f"v{i}-wecom", "wecom_group", f"v{i}", "t") for i in range(3)]
    _, deliveries = store.add_notice(draft, plans)
    a, b, c = (d.id for d in deliveries)
    with store.session() as s:
        mark_sending_many_in(s, [(a, "part:1", 1), (b, "part:1", 1)], now=T0)
    with store.session() as s:
        mark_accepted_many_in(s, [(a, "part:1", 1, "msg-1")], now=T0)
        mark_finished_in(
            s, delivery_id=b, part_key="part:1", status="unknown", now=T0, error_code="timeout"
        )
        mark_sending_many_in(s, [(a, "part:2", 2)], now=T0)
    # A retry of b marks the part sending again (same row, the error cleared).
    with store.session() as s:
        mark_sending_many_in(s, [(b, "part:1", 1)], now=T0 + timedelta(seconds=1))
    found = parts_of_many(store, [a, b, c])
    assert {k: p.status for k, p in found[a].items()} == {
        "part:1": "accepted",
        "part:2": "sending",
    }
    assert found[a]["part:1"].external_ref == "msg-1"
    assert found[b]["part:1"].status == "sending" and found[b]["part:1"].error_code is None
    assert found[c] == {}
    assert found[a] == parts_of(store, a)
