"""The store's state machine: one transaction per notice, compare-and-set transitions."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from content_queue.errors import NotFoundError
from content_queue.i18n import tr
from content_queue.models import build_notice
from content_queue.store import Outcome, PlannedDelivery, Store

T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """The same state machine on SQLite and on PostgreSQL."""
    s = Store(db_url)
    yield s
    s.engine.dispose()


def _notice(**over: object) -> dict[str, object]:
    data: dict[str, object] = {
        "title": "村务公开",
        "body": "内容",
        "category": "village_affairs",
        "targets": {"county": True},
    }
    data.update(over)
    return data


PLANS = [
    PlannedDelivery("a-tv", "tv_feed", "a", "t"),
    PlannedDelivery("b-tv", "tv_feed", "b", "t"),
    PlannedDelivery("a-led", "led", "a", "t", skip_reason=tr("尚未上线", "not built yet")),
]


def test_add_notice_writes_notice_and_deliveries_together(store: Store) -> None:
    notice, deliveries = store.add_notice(build_notice(_notice()), PLANS, now=T0)
    assert [d.status for d in deliveries] == ["pending", "pending", "skipped"]
    assert deliveries[2].error_zh == "尚未上线" and deliveries[2].error_en == "not built yet"
    assert store.notice(notice.id).title == "村务公开"
    assert len(store.deliveries(notice.id)) == 3


def test_add_notice_is_atomic_when_a_delivery_row_fails(store: Store) -> None:
    duplicate = [PLANS[0], PLANS[0]]  # violates the (notice, endpoint) unique constraint
    with pytest.raises(Exception, match=r"(?i)unique"):
        store.add_notice(build_notice(_notice()), duplicate, now=T0)
    assert store.notices() == []


def test_future_publish_time_is_held_as_scheduled(store: Store) -> None:
    later = T0 + timedelta(hours=2)
    _, deliveries = store.add_notice(build_notice(_notice(publish_at=later)), PLANS[:1], now=T0)
    assert deliveries[0].status == "scheduled"
    assert store.sweep(max_attempts=3, redoorbell_seconds=60, now=T0).ring == {}
    report = store.sweep(max_attempts=3, redoorbell_seconds=60, now=later)
    assert report.released == 1
    assert report.ring == {"tv_feed": [deliveries[0].id]}


def test_claim_is_exclusive(store: Store) -> None:
    _, ds = store.add_notice(build_notice(_notice()), PLANS[:2], now=T0)
    ids = [d.id for d in ds]
    first = store.claim(ids, worker="w1", lease_seconds=30, max_attempts=3, now=T0)
    second = store.claim(ids, worker="w2", lease_seconds=30, max_attempts=3, now=T0)
    assert len(first) == 2 and second == []
    assert {c.delivery.status for c in first} == {"sending"}
    assert all(c.attempt == 1 for c in first)


def test_added_and_claimed_views_are_what_the_store_holds(store: Store) -> None:
    """add_notice and claim build their views from the values they wrote (batched Core
    statements, no ORM objects): they must equal the rows read back."""
    _, added = store.add_notice(build_notice(_notice()), PLANS, now=T0)
    assert added == store.deliveries(ids=[d.id for d in added])
    with store.session() as s:  # SQL NULL, not the JSON text 'null'
        assert s.scalar(text("SELECT count(*) FROM deliveries WHERE details IS NULL")) == 3
    claims = store.claim(
        [d.id for d in added], worker="w1", lease_seconds=5, max_attempts=3, now=T0
    )
    assert [c.delivery for c in claims] == store.deliveries(ids=[d.id for d in added[:2]])
    assert len({c.token for c in claims}) == 2 and all(c.token.startswith("w1:") for c in claims)
    for c in claims:
        (attempt,) = store.attempts(c.delivery.id)
        assert (attempt["number"], attempt["worker"]) == (1, c.token)
        assert (attempt["started_at"], attempt["finished_at"]) == (T0, None)
    # A second attempt gets a new token and ledger row; the first one's stays as it was.
    store.finish(claims[0], Outcome("retry", tr("忙", "busy")), max_attempts=3, now=T0)
    (again,) = store.claim(
        [claims[0].delivery.id], worker="w1", lease_seconds=5, max_attempts=3, now=T0
    )
    assert again.attempt == 2 and again.token != claims[0].token
    ledger = store.attempts(again.delivery.id)
    assert [(a["number"], a["worker"], a["outcome"]) for a in ledger] == [
        (1, claims[0].token, "retry"),
        (2, again.token, None),
    ]


def test_claim_ends_what_may_no_longer_go_out(store: Store) -> None:
    soon = T0 + timedelta(minutes=5)
    _, (expiring,) = store.add_notice(build_notice(_notice(expires_at=soon)), PLANS[:1], now=T0)
    _, (withdrawn,) = store.add_notice(build_notice(_notice()), PLANS[:1], now=T0)
    _, (retried, due) = store.add_notice(build_notice(_notice()), PLANS[:2], now=T0)
    (c,) = store.claim([retried.id], worker="w", lease_seconds=5, max_attempts=3, now=T0)
    store.finish(c, Outcome("retry", tr("忙", "busy")), max_attempts=3, now=T0)
    with store.session() as s:  # withdrawn under a delivery that was already rung
        s.execute(
            text("UPDATE notices SET state = 'withdrawn' WHERE id = :n"),
            {"n": withdrawn.notice_id},
        )
    ids = [expiring.id, withdrawn.id, retried.id, due.id]
    (claim,) = store.claim(ids, worker="w", lease_seconds=5, max_attempts=1, now=soon)
    assert claim.delivery.id == due.id
    rows = {d.id: d for d in store.deliveries(ids=ids)}
    ended = {
        i: (rows[i].status, rows[i].error_code, rows[i].error_en)
        for i in (expiring.id, withdrawn.id, retried.id)
    }
    assert ended == {
        expiring.id: ("expired", None, "the notice expired before it went out"),
        withdrawn.id: ("cancelled", None, "the notice was withdrawn"),
        retried.id: ("failed", "attempts_exhausted", "gave up after 1 attempts"),
    }
    assert rows[retried.id].error_zh == "已尝试 1 次仍未成功，已停止重试"
    assert all(rows[i].finished_at == soon and rows[i].updated_at == soon for i in ended)
    assert [len(store.attempts(i)) for i in ids] == [0, 0, 1, 1]


def test_outcome_from_an_expired_lease_changes_nothing(store: Store) -> None:
    _, ds = store.add_notice(build_notice(_notice()), PLANS[:1], now=T0)
    (old,) = store.claim([ds[0].id], worker="w1", lease_seconds=5, max_attempts=3, now=T0)
    later = T0 + timedelta(seconds=10)
    report = store.sweep(max_attempts=3, redoorbell_seconds=60, now=later)
    assert report.reclaimed == 1 and report.ring == {"tv_feed": [ds[0].id]}
    (new,) = store.claim([ds[0].id], worker="w2", lease_seconds=5, max_attempts=3, now=later)
    assert store.finish(old, Outcome("sent"), max_attempts=3, now=later) == "sending"
    assert store.finish(new, Outcome("sent"), max_attempts=3, now=later) == "sent"
    outcomes = [a["outcome"] for a in store.attempts(ds[0].id)]
    assert outcomes == ["stale", "sent"]


def test_retry_then_give_up_after_max_attempts(store: Store) -> None:
    _, ds = store.add_notice(build_notice(_notice()), PLANS[:1], now=T0)
    did = ds[0].id
    now = T0
    for attempt in (1, 2):
        (claim,) = store.claim([did], worker="w", lease_seconds=5, max_attempts=3, now=now)
        assert claim.attempt == attempt
        retry_at = now + timedelta(seconds=10)
        status = store.finish(
            claim,
            Outcome("retry", tr("忙", "busy"), code="-1", retry_at=retry_at),
            max_attempts=3,
            now=now,
        )
        assert status == "pending"
        assert store.claim([did], worker="w", lease_seconds=5, max_attempts=3, now=now) == []
        now = retry_at
    (claim,) = store.claim([did], worker="w", lease_seconds=5, max_attempts=3, now=now)
    status = store.finish(
        claim, Outcome("retry", tr("忙", "busy"), code="-1"), max_attempts=3, now=now
    )
    assert status == "failed"
    (d,) = store.deliveries(ids=[did])
    assert d.error_code == "-1" and "3" in (d.error_zh or "") and "busy" in (d.error_en or "")


def test_worker_dying_every_time_is_bounded(store: Store) -> None:
    _, ds = store.add_notice(build_notice(_notice()), PLANS[:1], now=T0)
    did, now = ds[0].id, T0
    for _ in range(2):
        assert store.claim([did], worker="w", lease_seconds=1, max_attempts=2, now=now)
        now += timedelta(seconds=5)
        store.sweep(max_attempts=2, redoorbell_seconds=60, now=now)
    (d,) = store.deliveries(ids=[did])
    assert d.status == "failed" and d.error_code == "worker_lost"
    assert [a["outcome"] for a in store.attempts(did)] == ["lost", "lost"]


def test_sweeper_rings_again_only_after_redoorbell_delay(store: Store) -> None:
    _, ds = store.add_notice(build_notice(_notice()), PLANS[:1], now=T0)
    store.mark_enqueued([ds[0].id], now=T0)
    assert (
        store.sweep(max_attempts=3, redoorbell_seconds=30, now=T0 + timedelta(seconds=10)).ring
        == {}
    )
    again = store.sweep(max_attempts=3, redoorbell_seconds=30, now=T0 + timedelta(seconds=31))
    assert again.ring == {"tv_feed": [ds[0].id]}


def test_ring_cutoffs_keep_doorbells_that_may_still_be_queued(store: Store) -> None:
    """A kind with a cutoff rings again only what was rung before it (its queue holds the
    rest); other kinds ring whatever is overdue."""
    plans = [*PLANS[:2], PlannedDelivery("a-wecom", "wecom_group", "a", "t")]
    _, ds = store.add_notice(build_notice(_notice()), plans, now=T0)
    store.mark_enqueued([ds[0].id, ds[2].id], now=T0)
    store.mark_enqueued([ds[1].id], now=T0 + timedelta(seconds=20))
    later = T0 + timedelta(seconds=100)
    assert store.overdue_kinds(redoorbell_seconds=30, now=later) == {"tv_feed", "wecom_group"}
    report = store.sweep(
        max_attempts=3,
        redoorbell_seconds=30,
        ring_cutoffs={"tv_feed": T0 + timedelta(seconds=10)},
        now=later,
    )
    assert report.ring == {"tv_feed": [ds[0].id], "wecom_group": [ds[2].id]}
    # The cutoff never rings what is not overdue yet.
    again = store.sweep(
        max_attempts=3,
        redoorbell_seconds=30,
        ring_cutoffs={"tv_feed": later},
        now=later + timedelta(seconds=10),
    )
    assert again.ring == {"tv_feed": [ds[1].id]}
    assert store.overdue_kinds(redoorbell_seconds=30, now=later + timedelta(seconds=10)) == set()


def test_a_cutoff_never_holds_a_delivery_that_has_no_doorbell(store: Store) -> None:
    _, ds = store.add_notice(build_notice(_notice()), PLANS[:1], now=T0)  # never rung
    assert store.overdue_kinds(redoorbell_seconds=30, now=T0) == set()
    report = store.sweep(
        max_attempts=3,
        redoorbell_seconds=30,
        ring_cutoffs={"tv_feed": T0 - timedelta(hours=1)},
        now=T0,
    )
    assert report.ring == {"tv_feed": [ds[0].id]}


def test_expiry_ends_waiting_and_sent_deliveries(store: Store) -> None:
    exp = T0 + timedelta(hours=1)
    _, ds = store.add_notice(
        build_notice(_notice(publish_at=T0, expires_at=exp)), PLANS[:2], now=T0
    )
    (claim,) = store.claim([ds[0].id], worker="w", lease_seconds=5, max_attempts=3, now=T0)
    store.finish(claim, Outcome("sent"), max_attempts=3, now=T0)
    report = store.sweep(max_attempts=3, redoorbell_seconds=60, now=exp)
    assert report.expired == 2
    assert {d.status for d in store.deliveries(ds[0].notice_id)} == {"expired"}


def test_claim_ends_withdrawn_and_expired_notices(store: Store) -> None:
    n, _ = store.add_notice(build_notice(_notice()), PLANS[:1], now=T0)
    w = store.withdraw(n.id, actor="secretary", now=T0)
    assert (w.cancelled, w.recalls) == (1, [])
    (d,) = store.deliveries(n.id)
    assert (d.status, d.error_code, d.error_zh) == ("cancelled", "withdrawn", "通知已撤回")


def _publish(store: Store, plans: list[PlannedDelivery], **over: object) -> int:
    n, ds = store.add_notice(build_notice(_notice(**over)), plans, now=T0)
    claims = store.claim([d.id for d in ds], worker="w", lease_seconds=5, max_attempts=3, now=T0)
    for c in claims:
        store.finish(c, Outcome("sent"), max_attempts=3, now=T0)
    return n.id


def test_withdraw_recalls_every_endpoint_reached_and_cancels_the_rest(store: Store) -> None:
    nid = _publish(store, PLANS[:1])
    # another notice, not yet sent, is untouched
    n2, (pending,) = store.add_notice(
        build_notice(_notice()), [PlannedDelivery("c-tv", "tv_feed", "c", "t")], now=T0
    )
    w = store.withdraw(nid, actor="secretary", reason="写错了金额", now=T0)
    assert w.cancelled == 0
    (recall,) = w.recalls
    (original,) = [d for d in store.deliveries(nid) if d.action == "publish"]
    assert (recall.action, recall.recall_of, recall.endpoint_id) == ("recall", original.id, "a-tv")
    assert recall.status == "pending" and w.recall_ids_by_kind == {"tv_feed": [recall.id]}
    assert store.notice(nid).state == "withdrawn"
    assert store.notice(n2.id).state == "active" and pending.status == "pending"
    # Counts and feeds keep to publishes; the recall is its own row.
    assert store.delivery_counts([nid]) == {nid: {"sent": 1}}
    assert store.delivery_counts([nid], action="recall") == {nid: {"pending": 1}}
    # The recall is claimed like any delivery (the notice's withdrawal does not cancel it).
    (claim,) = store.claim([recall.id], worker="w", lease_seconds=5, max_attempts=3, now=T0)
    assert claim.delivery.action == "recall" and claim.notice.state == "withdrawn"
    assert store.finish(claim, Outcome("delivered"), max_attempts=3, now=T0) == "delivered"


def test_withdrawing_twice_is_a_clear_error(store: Store) -> None:
    from content_queue.errors import StateError

    nid = _publish(store, PLANS[:1])
    store.withdraw(nid, actor="secretary", now=T0)
    with pytest.raises(StateError) as err:
        store.withdraw(nid, actor="secretary", now=T0)
    assert err.value.render("zh") == f"通知 {nid} 已撤回，不能再撤回"


def test_recall_waits_while_its_publish_is_in_flight(store: Store) -> None:
    n, (d,) = store.add_notice(build_notice(_notice()), PLANS[:1], now=T0)
    (claim,) = store.claim([d.id], worker="w", lease_seconds=5, max_attempts=3, now=T0)
    (recall,) = store.withdraw(n.id, actor="secretary", now=T0).recalls
    assert store.claim([recall.id], worker="w2", lease_seconds=5, max_attempts=3, now=T0) == []
    (r,) = store.deliveries(ids=[recall.id])
    assert r.status == "pending" and r.due_at > T0
    store.finish(claim, Outcome("sent"), max_attempts=3, now=T0)
    later = T0 + timedelta(seconds=5)
    (c,) = store.claim([recall.id], worker="w2", lease_seconds=5, max_attempts=3, now=later)
    assert c.delivery.recall_of == d.id


def test_correction_supersedes_and_recalls_in_one_transaction(store: Store) -> None:
    nid = _publish(store, PLANS[:2])
    draft = build_notice(_notice(body="更正后的内容", supersedes=nid, revision=2))
    new, rows, w = store.correct_notice(draft, PLANS[:2], actor="secretary", now=T0)
    assert (new.revision, new.supersedes_id, new.state) == (2, nid, "active")
    assert [r.status for r in rows] == ["pending", "pending"]
    assert len(w.recalls) == 2 and store.notice(nid).state == "superseded"
    with pytest.raises(Exception, match="superseded"):
        store.correct_notice(draft, PLANS[:2], actor="secretary", now=T0)
    # the failed second correction left nothing behind
    assert len(store.notices()) == 2


def test_feed_fetch_confirms_only_what_was_sent(store: Store) -> None:
    _, ds = store.add_notice(build_notice(_notice()), PLANS[:2], now=T0)
    (claim,) = store.claim([ds[0].id], worker="w", lease_seconds=5, max_attempts=3, now=T0)
    store.finish(claim, Outcome("sent"), max_attempts=3, now=T0)
    assert store.record_feed_fetch("a-tv", feed_format="atom", client="tv", now=T0) == 1
    assert store.record_feed_fetch("b-tv", feed_format="atom", client="tv", now=T0) == 0
    statuses = {d.endpoint_id: d.status for d in store.deliveries(ds[0].notice_id)}
    assert statuses == {"a-tv": "delivered", "b-tv": "pending"}


def test_times_round_trip_as_aware_utc(store: Store) -> None:
    n, _ = store.add_notice(build_notice(_notice(publish_at="2026-12-01T08:00")), [], now=T0)
    # Naive input is the county's local time (Asia/Shanghai by default).
    assert store.notice(n.id).publish_at == datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


def test_unknown_notice_is_a_clear_error(store: Store) -> None:
    with pytest.raises(NotFoundError) as err:
        store.notice(999)
    assert err.value.render("zh") == "通知 999 不存在"


def test_database_is_migrated_and_sqlite_uses_wal(store: Store) -> None:
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0006"
    again = Store(store.url)  # opening again finds the schema current and does nothing
    again.engine.dispose()


def _sent_led(store: Store) -> int:
    _, (d,) = store.add_notice(
        build_notice(_notice()), [PlannedDelivery("a-led", "led", "a", "t")], now=T0
    )
    (claim,) = store.claim([d.id], worker="w", lease_seconds=5, max_attempts=5, now=T0)
    store.record_command(
        command_id=f"vc-{d.id}",
        delivery_id=d.id,
        device_id="led-a",
        kind="led.show",
        issued_at=T0,
        expires_at=T0 + timedelta(days=1),
    )
    store.finish(claim, Outcome("sent"), max_attempts=5, now=T0)
    return d.id


def test_unacked_command_to_an_online_device_is_sent_again(store: Store) -> None:
    did = _sent_led(store)
    store.record_presence(device_id="led-a", state="online", at=T0)
    later = T0 + timedelta(seconds=10)
    assert (
        store.sweep(max_attempts=5, redoorbell_seconds=60, ack_timeout_seconds=30, now=later).resent
        == 0
    )
    report = store.sweep(max_attempts=5, redoorbell_seconds=60, ack_timeout_seconds=5, now=later)
    assert report.resent == 1 and report.ring == {"led": [did]}


def test_offline_device_keeps_its_queued_command(store: Store) -> None:
    _sent_led(store)
    store.record_presence(device_id="led-a", state="offline", at=T0)
    later = T0 + timedelta(seconds=60)
    assert (
        store.sweep(max_attempts=5, redoorbell_seconds=60, ack_timeout_seconds=5, now=later).resent
        == 0
    )


def test_ack_confirms_and_a_late_ack_is_kept_for_the_worker(store: Store) -> None:
    did = _sent_led(store)
    assert (
        store.record_ack(
            device_id="led-b", command_id=f"vc-{did}", status="shown", reason=None, detail=None
        )
        is None
    )  # another device cannot ack this command
    assert (
        store.record_ack(
            device_id="led-a", command_id=f"vc-{did}", status="shown", reason=None, detail=None
        )
        == "delivered"
    )


def test_upgrade_from_0003_keeps_deliveries_as_publishes(tmp_path: Path) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import create_engine

    import content_queue.store as store_module

    url = f"sqlite:///{tmp_path / 'old.db'}"
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(store_module.__file__).parent / "migrations"))
    engine = create_engine(url)
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        conn.execute(
            text(
                "INSERT INTO notices (id, title, body, category, priority, targets, publish_at,"
                " author, revision, state, created_at) VALUES (1, 't', 'b', 'village_affairs',"
                " 'routine', '{}', '2026-11-25 00:00:00', 'a', 1, 'active',"
                " '2026-11-25 00:00:00')"
            )
        )
        conn.execute(
            text(
                "INSERT INTO deliveries (id, notice_id, endpoint_id, kind, status, attempts,"
                " due_at, updated_at) VALUES (1, 1, 'a-led', 'led', 'sent', 1,"
                " '2026-11-25 00:00:00', '2026-11-25 00:00:00')"
            )
        )
        conn.commit()
    engine.dispose()
    store = Store(url)  # upgrades to head
    (d,) = store.deliveries(1)
    assert d.status == "sent"
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT action FROM deliveries")).scalar() == "publish"
        # A recall of the same notice to the same endpoint is now a row of its own.
        conn.execute(
            text(
                "INSERT INTO deliveries (notice_id, endpoint_id, kind, action, recall_of, status,"
                " attempts, due_at, updated_at) VALUES (1, 'a-led', 'led', 'recall', 1,"
                " 'pending', 0, '2026-11-25 00:00:00', '2026-11-25 00:00:00')"
            )
        )
