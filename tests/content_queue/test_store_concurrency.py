"""The store under concurrent writers, on SQLite and on PostgreSQL.

SQLite serialises every writer (BEGIN IMMEDIATE); PostgreSQL runs them side by side under
READ COMMITTED, so each compare-and-set must hold there on its own: rows are locked with
FOR UPDATE (SKIP LOCKED where another worker may take the row instead).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, inspect, text

import content_queue.store as store_module
from content_queue.db import Base
from content_queue.models import build_notice
from content_queue.store import Claim, Outcome, PlannedDelivery, Store

T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    yield s
    s.engine.dispose()


def _draft(title: str = "村务公开", **over: object) -> Any:
    data: dict[str, object] = {
        "title": title,
        "body": "内容",
        "category": "village_affairs",
        "targets": {"county": True},
    }
    data.update(over)
    return build_notice(data)


def _plans(n: int, kind: str = "tv_feed") -> list[PlannedDelivery]:
    return [PlannedDelivery(f"v{i:03d}-{kind}", kind, f"v{i:03d}", "t") for i in range(n)]


def _together(*calls: Callable[[], Any]) -> list[Any]:
    """Run the calls in threads released at the same moment; returns their results."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int, call: Callable[[], Any]) -> None:
        barrier.wait()
        try:
            results[i] = call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


def test_concurrent_claims_hand_each_delivery_out_once(store: Store) -> None:
    _, ds = store.add_notice(_draft(), _plans(60), now=T0)
    ids = [d.id for d in ds]
    claims = _together(
        *[
            (lambda w=w: store.claim(ids, worker=f"w{w}", lease_seconds=30, max_attempts=3, now=T0))
            for w in range(4)
        ]
    )
    claimed = Counter(c.delivery.id for batch in claims for c in batch)
    assert set(claimed) == set(ids)
    assert max(claimed.values()) == 1


def test_concurrent_sweeps_reclaim_each_lease_once(store: Store) -> None:
    _, ds = store.add_notice(_draft(), _plans(40), now=T0)
    ids = [d.id for d in ds]
    store.claim(ids, worker="dead", lease_seconds=5, max_attempts=3, now=T0)
    later = T0 + timedelta(seconds=10)
    reports = _together(
        *[(lambda: store.sweep(max_attempts=3, redoorbell_seconds=60, now=later)) for _ in range(4)]
    )
    assert sum(r.reclaimed for r in reports) == len(ids)
    rung = Counter(i for r in reports for batch in r.ring.values() for i in batch)
    assert set(rung) == set(ids) and max(rung.values()) == 1
    for did in ids:
        assert [a["outcome"] for a in store.attempts(did)] == ["lost"]
    assert {d.status for d in store.deliveries(ids=ids)} == {"pending"}


def test_sweeper_racing_workers_never_undoes_a_fresh_claim(store: Store) -> None:
    """A reclaim and a new worker's claim of the same rows, many times over: every row ends
    with exactly one live claim, and the attempt log agrees with the row."""
    for round_ in range(15):
        _, ds = store.add_notice(_draft(f"第{round_}轮"), _plans(10), now=T0)
        ids = [d.id for d in ds]
        store.claim(ids, worker="dead", lease_seconds=1, max_attempts=5, now=T0)
        later = T0 + timedelta(seconds=5)
        store.sweep(max_attempts=5, redoorbell_seconds=60, now=later)  # back to pending
        store.claim(ids, worker="slow", lease_seconds=1, max_attempts=5, now=later)
        much_later = later + timedelta(seconds=5)
        got: list[list[Claim]] = []

        def claim(
            ids: list[int] = ids, now: datetime = much_later, sink: list[list[Claim]] = got
        ) -> None:
            for _ in range(5):  # the rows become pending at some point during the sweep
                sink.append(
                    store.claim(ids, worker="fresh", lease_seconds=60, max_attempts=5, now=now)
                )

        def sweep(now: datetime = much_later) -> None:
            store.sweep(max_attempts=5, redoorbell_seconds=60, now=now)

        _together(sweep, sweep, claim)
        fresh = {c.delivery.id: c for batch in got for c in batch}
        for d in store.deliveries(ids=ids):
            if d.id in fresh:
                # Claimed after the reclaim: no sweeper may have put it back to pending.
                assert d.status == "sending", (round_, d.id)
                assert store.finish(fresh[d.id], Outcome("sent"), max_attempts=5) == "sent"
            else:
                assert d.status == "pending"


def test_ack_racing_the_workers_own_record_is_never_lost(store: Store) -> None:
    """The device may ack before the worker records the publish; on any interleaving the
    delivery ends delivered."""
    for i in range(20):
        _, (d,) = store.add_notice(_draft(f"屏{i}"), [PlannedDelivery("a-led", "led", "a", "t")])
        (claim,) = store.claim([d.id], worker="w", lease_seconds=30, max_attempts=3)
        store.record_command(
            command_id=f"vc-{d.id}",
            delivery_id=d.id,
            device_id="led-a",
            kind="led.show",
            issued_at=T0,
            expires_at=T0 + timedelta(days=1),
        )
        _together(
            lambda c=claim: store.finish(c, Outcome("sent"), max_attempts=3),
            lambda did=d.id: store.record_ack(
                device_id="led-a", command_id=f"vc-{did}", status="shown", reason=None, detail=None
            ),
        )
        (after,) = store.deliveries(ids=[d.id])
        assert after.status == "delivered", i


def test_two_listeners_recording_the_same_messages_agree(store: Store) -> None:
    """Two ack listeners may both receive every message: recording twice changes nothing."""
    _, (d,) = store.add_notice(_draft(), [PlannedDelivery("a-led", "led", "a", "t")], now=T0)
    (claim,) = store.claim([d.id], worker="w", lease_seconds=30, max_attempts=3, now=T0)
    store.record_command(
        command_id=f"vc-{d.id}",
        delivery_id=d.id,
        device_id="led-a",
        kind="led.show",
        issued_at=T0,
        expires_at=T0 + timedelta(days=1),
    )
    store.finish(claim, Outcome("sent"), max_attempts=3, now=T0)

    def both(call: Callable[[], Any]) -> list[Any]:
        return _together(call, call)

    first = both(
        lambda: store.record_presence(
            device_id="led-a", state="online", at=T0, firmware="1.0", capabilities=["gb2312"]
        )
    )
    assert first == [None, None]
    both(
        lambda: store.record_ack(
            device_id="led-a", command_id=f"vc-{d.id}", status="shown", reason=None, detail=None
        )
    )
    (after,) = store.deliveries(ids=[d.id])
    assert after.status == "delivered"
    (dev,) = store.devices()
    assert (dev.state, dev.showing) == ("online", [f"vc-{d.id}"])
    assert store.presence_history("led-a") == [("online", T0, False)]


def test_audit_chain_holds_under_concurrent_writers(store: Store) -> None:
    def writer(w: int) -> None:
        for i in range(8):
            store.add_notice(_draft(f"写入者{w}-{i}"), _plans(1), now=T0)

    _together(*[(lambda w=w: writer(w)) for w in range(4)])
    report = store.verify_audit()
    assert report.ok, [p.render("en") for _, p in report.problems]
    assert report.count == 32


def test_source_lookup_reads_the_json_details(store: Store) -> None:
    first, _ = store.add_notice(_draft(), _plans(1), source={"cap_identifier": "urn:a"}, now=T0)
    second, _ = store.add_notice(_draft(), _plans(1), source={"cap_identifier": "urn:b"}, now=T0)
    assert store.notice_id_for_source("cap_identifier", "urn:a") == first.id
    assert store.notice_id_for_source("cap_identifier", "urn:b") == second.id
    assert store.notice_id_for_source("cap_identifier", "urn:c") is None


def test_times_come_back_as_aware_utc_with_microseconds(store: Store) -> None:
    moment = datetime(2026, 12, 1, 8, 30, 15, 123456, tzinfo=UTC)
    n, (d,) = store.add_notice(_draft(publish_at=moment), _plans(1), now=moment)
    again = store.notice(n.id)
    assert again.publish_at == moment and again.publish_at.tzinfo is not None
    assert store.deliveries(ids=[d.id])[0].due_at == moment


def _alembic(url: str) -> tuple[Config, Any]:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store_module.__file__).parent / "migrations"))
    return cfg, create_engine(url)


def test_migrations_run_up_and_down_on_an_empty_database(db_url: str) -> None:
    """0001 to head one step at a time, back to nothing, and up again: the schema at head
    is exactly the models' (no drift between the migrations and content_queue/db.py)."""
    from alembic.script import ScriptDirectory

    cfg, engine = _alembic(db_url)
    script = ScriptDirectory.from_config(cfg)
    revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert revisions[0] == "0001"
    try:
        with engine.connect() as conn:
            cfg.attributes["connection"] = conn
            for rev in revisions:
                command.upgrade(cfg, rev)
            command.downgrade(cfg, "base")
            command.upgrade(cfg, "head")
            conn.commit()
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names()) - {"alembic_version"}
            assert tables == set(Base.metadata.tables)
            for name, table in Base.metadata.tables.items():
                columns = {c["name"] for c in inspect(conn).get_columns(name)}
                assert columns == {c.name for c in table.columns}, name
            head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            assert head == revisions[-1]
    finally:
        engine.dispose()


def test_services_starting_together_migrate_once(db_url: str) -> None:
    """Workers, sweepers and listeners open the store at the same moment on a new database."""
    stores = _together(*[(lambda: Store(db_url)) for _ in range(4)])
    try:
        with stores[0].engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        for s in stores:
            s.engine.dispose()


def test_claim_once_has_one_winner_until_it_expires(store: Store) -> None:
    from content_queue.once import claim_once

    won = _together(
        *[
            (lambda h=h: claim_once(store, "fresh_boot:x", holder=h, ttl_seconds=60, now=T0))
            for h in ("a", "b", "c")
        ]
    )
    assert sorted(won) == [False, False, True]
    later = T0 + timedelta(seconds=61)
    assert claim_once(store, "fresh_boot:x", holder="d", ttl_seconds=60, now=later)
    assert not claim_once(store, "fresh_boot:x", holder="e", ttl_seconds=60, now=later)
