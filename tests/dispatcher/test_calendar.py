"""The disclosure calendar: windows, due and overdue villages, what counts as disclosed."""

from __future__ import annotations

import textwrap
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from content_queue.models import build_notice
from content_queue.registry import Cadence, Registry, load_registry
from content_queue.store import Outcome, PlannedDelivery, Store
from dispatcher.calendar import disclosure_status, rule_text, window_for

DEVICES = textwrap.dedent(
    """\
    version: 1
    county: {code: "371521", name: 示例县}
    calendar:
      farm_subsidy: {months: [3, 9], due_day: 20}
    townships:
      - id: east
        name: 东城镇
        villages:
          - id: east-liu
            name: 刘庄村
            endpoints:
              - {id: east-liu-tv, kind: tv_feed}
          - id: east-wang
            name: 王庄村
            calendar:
              village_finance: {every: quarter, due_day: 15}
              party_affairs: {enabled: false}
            endpoints:
              - {id: east-wang-tv, kind: tv_feed}
    """
)


def local(y: int, m: int, d: int, h: int = 12) -> datetime:
    """A county-local time (Asia/Shanghai) as UTC."""
    return datetime(y, m, d, h, tzinfo=UTC) - timedelta(hours=8)


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    path = tmp_path / "devices.yaml"
    path.write_text(DEVICES, encoding="utf-8")
    return load_registry(path)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'vc.sqlite'}")


def disclose(
    store: Store, category: str, village: str, at: datetime, *, outcome: str = "sent", **kw: Any
) -> int:
    """A notice of ``category`` that went out to ``village`` at ``at``."""
    draft = build_notice(
        {
            "title": f"{category} 公开",
            "body": "见附表。",
            "category": category,
            "targets": {"villages": [village]},
            "publish_at": at,
            **kw,
        }
    )
    notice, (delivery,) = store.add_notice(
        draft, [PlannedDelivery(f"{village}-tv", "tv_feed", village, "east")], now=at
    )
    (claim,) = store.claim([delivery.id], worker="t", lease_seconds=60, max_attempts=3, now=at)
    if outcome == "sent":
        store.finish(claim, Outcome("sent"), max_attempts=3, now=at)
    else:
        store.finish(claim, Outcome("failed", code="x"), max_attempts=3, now=at)
    return notice.id


def states(rows: list[Any]) -> dict[tuple[str, str], tuple[str, int]]:
    return {(r.village_id, r.category): (r.state, r.days) for r in rows}


def test_windows_open_at_the_configured_months() -> None:
    monthly = Cadence(every="month", due_day=10)
    assert window_for(monthly, date(2026, 11, 26)) == (date(2026, 11, 1), date(2026, 11, 10))
    quarterly = Cadence(every="quarter", due_day=15)
    assert window_for(quarterly, date(2026, 12, 31)) == (date(2026, 10, 1), date(2026, 10, 15))
    spring_autumn = Cadence(months=[9, 3], due_day=31)
    assert window_for(spring_autumn, date(2026, 2, 1)) == (date(2025, 9, 1), date(2025, 9, 30))
    assert window_for(spring_autumn, date(2026, 3, 2)) == (date(2026, 3, 1), date(2026, 3, 31))
    assert window_for(Cadence(every="half_year"), date(2026, 6, 30))[0] == date(2026, 1, 1)
    assert window_for(Cadence(every="year", due_day=31), date(2027, 2, 1)) == (
        date(2027, 1, 1),
        date(2027, 1, 31),
    )
    assert rule_text(monthly).render("zh") == "每月 10 日前"
    assert rule_text(spring_autumn).render("zh") == "每年 3、9 月月底前"
    assert rule_text(monthly).render("en") == "monthly, by day 10"


def test_defaults_county_and_village_rules_merge(registry: Registry) -> None:
    liu, wang = registry.calendar_for("east-liu"), registry.calendar_for("east-wang")
    assert set(liu) == {"village_finance", "party_affairs", "village_affairs", "farm_subsidy"}
    assert liu["village_finance"] == Cadence(every="month", due_day=10)
    assert wang["village_finance"] == Cadence(every="quarter", due_day=15)
    assert "party_affairs" not in wang  # turned off for this village only


def test_due_overdue_and_done(registry: Registry, store: Store) -> None:
    now = local(2026, 11, 26)
    disclose(store, "village_finance", "east-liu", local(2026, 11, 5))  # this month: done
    disclose(store, "village_finance", "east-wang", local(2026, 10, 12))  # in the quarter
    disclose(store, "village_affairs", "east-liu", local(2026, 9, 30))  # last quarter: late
    rows = disclosure_status(store, registry, now)
    got = states(rows)
    assert got[("east-liu", "village_finance")] == ("done", 0)
    assert got[("east-wang", "village_finance")] == ("done", 0)
    assert got[("east-liu", "party_affairs")] == ("overdue", 42)  # due 10-15, now 11-26
    assert got[("east-liu", "village_affairs")] == ("overdue", 42)
    assert got[("east-liu", "farm_subsidy")] == ("overdue", 67)  # due 09-20
    affairs = next(r for r in rows if (r.village_id, r.category) == ("east-liu", "village_affairs"))
    assert affairs.last_published_at == local(2026, 9, 30) and affairs.notice_id is None
    assert [r.state for r in rows] == sorted(
        (r.state for r in rows), key=["overdue", "due", "done"].index
    )
    assert rows[0].days == max(r.days for r in rows if r.state == "overdue")

    early = disclosure_status(store, registry, local(2026, 12, 3))
    december = states(early)
    assert december[("east-liu", "village_finance")] == ("due", 7)  # due 12-10
    assert december[("east-wang", "village_finance")] == ("done", 0)  # quarter since 10-01
    assert early[0].to_json()["rule_text"]


def test_only_active_notices_that_went_out_count(registry: Registry, store: Store) -> None:
    now = local(2026, 11, 26)
    failed = disclose(store, "village_finance", "east-liu", local(2026, 11, 3), outcome="failed")
    assert states(disclosure_status(store, registry, now))[("east-liu", "village_finance")][0] == (
        "overdue"
    )
    nid = disclose(store, "village_finance", "east-liu", local(2026, 11, 4))
    store.withdraw(nid, actor="会计", reason="金额有误", now=local(2026, 11, 6))
    assert states(disclosure_status(store, registry, now))[("east-liu", "village_finance")] == (
        "overdue",
        16,
    )
    # A correction counts from when it went out.
    fixed = disclose(store, "village_finance", "east-liu", local(2026, 11, 12))
    row = next(
        r
        for r in disclosure_status(store, registry, now)
        if (r.village_id, r.category) == ("east-liu", "village_finance")
    )
    assert (row.state, row.notice_id) == ("done", fixed)
    assert failed != fixed
    # Queued but not gone out yet (a worker is down) does not count either.
    store.add_notice(
        build_notice(
            {
                "title": "十二月财务",
                "body": "见附表。",
                "category": "village_finance",
                "targets": {"villages": ["east-liu"]},
            }
        ),
        [PlannedDelivery("east-liu-tv", "tv_feed", "east-liu", "east")],
        now=local(2026, 12, 2),
    )
    later = disclosure_status(store, registry, local(2026, 12, 20), villages=["east-liu"])
    assert {r.village_id for r in later} == {"east-liu"}
    assert states(later)[("east-liu", "village_finance")] == ("overdue", 10)


def test_a_notice_to_the_township_counts_for_each_village(registry: Registry, store: Store) -> None:
    at = local(2026, 10, 2)
    draft = build_notice(
        {
            "title": "党务公开",
            "body": "三季度党费收缴情况。",
            "category": "party_affairs",
            "targets": {"townships": ["east"]},
            "publish_at": at,
        }
    )
    _, rows = store.add_notice(
        draft,
        [
            PlannedDelivery("east-liu-tv", "tv_feed", "east-liu", "east"),
            PlannedDelivery("east-wang-tv", "tv_feed", "east-wang", "east"),
        ],
        now=at,
    )
    for claim in store.claim(
        [r.id for r in rows], worker="t", lease_seconds=9, max_attempts=3, now=at
    ):
        store.finish(claim, Outcome("sent"), max_attempts=3, now=at)
    got = states(disclosure_status(store, registry, local(2026, 11, 26)))
    assert got[("east-liu", "party_affairs")] == ("done", 0)
    assert ("east-wang", "party_affairs") not in got  # not required there
