"""A channel may hold a delivery until a time of its own (a quota window, a digest)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from content_queue.i18n import tr
from content_queue.models import build_notice
from content_queue.store import Outcome, PlannedDelivery, Store

T0 = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)


def test_a_hold_waits_scheduled_and_does_not_use_an_attempt(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'vc.sqlite'}")
    notice = {"title": "通知", "body": "内容", "category": "meeting", "targets": {"county": True}}
    _, (d,) = store.add_notice(
        build_notice(notice), [PlannedDelivery("oa", "wechat_official_account", None, None)], now=T0
    )
    now = T0
    for _ in range(8):  # more holds than max_attempts: none of them counts
        (claim,) = store.claim([d.id], worker="w", lease_seconds=60, max_attempts=3, now=now)
        until = now + timedelta(hours=9)
        why = tr("等待汇总群发", "waiting for the digest")
        status = store.finish(
            claim, Outcome("held", why, code="held", retry_at=until), max_attempts=3, now=now
        )
        assert status == "scheduled"
        held = store.deliveries(ids=[d.id])[0]
        assert held.attempts == 0 and held.due_at == until and held.error_zh == "等待汇总群发"
        # Not claimable before its time; the sweeper releases it when the time comes.
        assert store.claim([d.id], worker="w", lease_seconds=60, max_attempts=3, now=now) == []
        assert store.sweep(max_attempts=3, redoorbell_seconds=60, now=until).released == 1
        assert store.deliveries(ids=[d.id])[0].status == "pending"
        now = until
    (claim,) = store.claim([d.id], worker="w", lease_seconds=60, max_attempts=3, now=now)
    assert claim.attempt == 1
    assert store.finish(claim, Outcome("sent"), max_attempts=3, now=now) == "sent"
    outcomes = [a["outcome"] for a in store.attempts(d.id)]
    assert outcomes == ["held"] * 8 + ["sent"]
