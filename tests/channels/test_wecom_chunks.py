"""WeCom deliveries claimed and sent as a chunk (WecomGroupChannel.send_many) through the
dispatcher, against the stand-in, on SQLite and on PostgreSQL: robots side by side, one
robot's deliveries one after the other, every failure kept to its own delivery."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from channels.base import get_channel
from channels.wecom_group import WecomGroupChannel, _close_clients, robot_id
from content_queue.models import build_notice
from content_queue.part_ledger import parts_of
from content_queue.registry import load_registry
from content_queue.settings import Settings, get_settings, reset_settings
from content_queue.store import Store
from dispatcher import service
from tests.standins.wecom import Fault, WecomStandin, max_in_window

SENTENCE = "请各位村民于本周六上午九点到村委会参加村民代表会议，讨论今年惠农补贴的发放名单。"
ENDPOINTS = 12
ROBOTS = 6  # endpoints 2k and 2k+1 share robot k: one group, two entries in devices.yaml


def _county() -> str:
    lines = ["version: 1", "county: {code: '371521', name: 示例县}", "townships:"]
    lines += ["  - id: t", "    name: 镇", "    villages:"]
    for i in range(ENDPOINTS):
        lines += [
            f"      - id: v{i:02d}",
            f"        name: 第{i}村",
            "        endpoints:",
            f"          - {{id: v{i:02d}-wecom, kind: wecom_group, "
            f"webhook_key_env: VC_CHUNK_R{i // 2}}}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def server() -> Iterator[WecomStandin]:
    with WecomStandin() as standin:
        yield standin
    _close_clients()


class County:
    def __init__(self, server: WecomStandin, store: Store, settings: Settings) -> None:
        self.server = server
        self.store = store
        self.settings = settings
        self.keys = [server.add_key() for _ in range(ROBOTS)]

    def notice(self, title: str, *, parts: int = 1) -> list[int]:
        body = (
            SENTENCE * 2
            if parts == 1
            else "".join(f"第{i:02d}条。{SENTENCE}" for i in range(23 * parts))
        )
        draft = build_notice(
            {"title": title, "body": body, "category": "meeting", "targets": {"county": True}}
        )
        submitted = service.submit_notice(
            draft, store=self.store, registry=load_registry(self.settings.devices), ring=None
        )
        return [d.id for d in submitted.deliveries]

    def run(self, ids: list[int]) -> dict[int, str]:
        return service.process_deliveries(
            ids, store=self.store, settings=self.settings, ring=None, kind="wecom_group"
        )


@pytest.fixture
def county(
    server: WecomStandin, home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[County]:
    server.reset()
    server.rate, server.window = 20, 60.0
    devices = home.parent / "chunk-county.yaml"
    devices.write_text(_county(), encoding="utf-8")
    monkeypatch.setenv("VILLAGECAST_DEVICES", str(devices))
    monkeypatch.setenv("VILLAGECAST_DATABASE_URL", db_url)
    monkeypatch.setenv("VILLAGECAST_WECOM_BASE_URL", server.base_url)
    monkeypatch.setenv("VILLAGECAST_LEASE_SECONDS", "60")
    reset_settings()
    settings = get_settings()
    store = Store(db_url)
    c = County(server, store, settings)
    for k, key in enumerate(c.keys):
        monkeypatch.setenv(f"VC_CHUNK_R{k}", key)
    yield c
    store.engine.dispose()


def _titles(posted: list[object]) -> list[str]:
    return [p.content.splitlines()[0] for p in posted]  # type: ignore[attr-defined]


def test_a_chunk_goes_out_whole_with_each_robots_deliveries_one_after_the_other(
    county: County,
) -> None:
    assert WecomGroupChannel.claim_chunk >= ENDPOINTS
    ids = county.notice("三段通知", parts=3)
    assert county.run(ids) == dict.fromkeys(ids, "delivered")
    for key in county.keys:
        titles = _titles(county.server.posted(key))
        # Two endpoints share the robot: both deliveries arrive, never interleaved.
        assert titles == [f"### 三段通知（{i}/3）" for i in (1, 2, 3)] * 2, titles
    for d in ids:
        assert {p.status for p in parts_of(county.store, d).values()} == {"accepted"}
    assert county.run(ids) == {}  # delivered: nothing is claimed, nothing sent again
    assert len(county.server.posted()) == ENDPOINTS * 3


def test_two_workers_sending_to_the_same_robots_never_interleave_or_repeat(
    county: County,
) -> None:
    a = county.notice("甲通知", parts=2)
    b = county.notice("乙通知", parts=2)
    results: list[dict[int, str]] = []

    def work(ids: list[int]) -> None:
        results.append(county.run(ids))

    threads = [threading.Thread(target=work, args=(ids,)) for ids in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    statuses = Counter(s for r in results for s in r.values())
    # A robot busy with the other worker's delivery: that one is rescheduled, not refused.
    left = [i for i in a + b if county.store.deliveries(ids=[i])[0].status == "pending"]
    assert statuses["delivered"] + len(left) == 2 * ENDPOINTS
    deadline = 30
    while left and deadline:
        for d in county.store.deliveries(ids=left):
            assert d.error_code == "wecom_busy", d
        with county.store.session() as s:  # due now (the test does not wait for backoff)
            from sqlalchemy import update

            from content_queue.db import Delivery
            from content_queue.store import utcnow

            s.execute(update(Delivery).where(Delivery.id.in_(left)).values(due_at=utcnow()))
        county.run(left)
        left = [i for i in left if county.store.deliveries(ids=[i])[0].status != "delivered"]
        deadline -= 1
    assert not left
    for key in county.keys:
        titles = _titles(county.server.posted(key))
        assert len(titles) == 8 and len(set(titles)) == 4  # 4 deliveries x 2 parts, once each
        for i in range(0, 8, 2):  # each delivery's two parts back to back, in order
            assert titles[i].endswith("（1/2）") and titles[i + 1].endswith("（2/2）")
            assert titles[i][:-5] == titles[i + 1][:-5]


def test_failures_stay_with_their_delivery_and_a_retry_sends_only_what_is_missing(
    county: County,
) -> None:
    county.server.remove_key(county.keys[0])  # robot 0: invalid key (93000)
    county.server.fail_next(county.keys[1], Fault(errcode=-1))  # robot 1: busy once
    ids = county.notice("停水通知", parts=2)
    results = county.run(ids)
    by_endpoint = {d.endpoint_id: d for d in county.store.deliveries(ids=ids)}
    assert results[by_endpoint["v00-wecom"].id] == "failed"
    assert results[by_endpoint["v01-wecom"].id] == "failed"
    assert by_endpoint["v00-wecom"].error_code == "93000"
    # Robot 1's first delivery got -1 on its first part: retried later; the second
    # delivery to the same robot went after it.
    assert by_endpoint["v02-wecom"].error_code == "-1"
    assert results[by_endpoint["v02-wecom"].id] == "pending"
    assert Counter(results.values()) == {"delivered": ENDPOINTS - 3, "failed": 2, "pending": 1}
    first = by_endpoint["v02-wecom"].id
    with county.store.session() as s:
        from sqlalchemy import update

        from content_queue.db import Delivery
        from content_queue.store import utcnow

        s.execute(update(Delivery).where(Delivery.id == first).values(due_at=utcnow()))
    assert county.run([first]) == {first: "delivered"}
    titles = _titles(county.server.posted(county.keys[1]))
    assert sorted(titles) == sorted(["### 停水通知（1/2）", "### 停水通知（2/2）"] * 2)
    (again,) = county.store.deliveries(ids=[first])
    assert again.external_ref == f"wecom:{robot_id(county.keys[1])}"


def _one_second_window(
    county: County,
    monkeypatch: pytest.MonkeyPatch,
    *,
    rate: int,
    max_wait: float,
    max_attempts: int | None = None,
) -> None:
    """Robots limited to ``rate`` messages a second, at the stand-in and in the limiter."""
    county.server.rate, county.server.window = rate, 1.0
    monkeypatch.setenv("VILLAGECAST_WECOM_RATE_PER_MINUTE", str(rate))
    monkeypatch.setenv("VILLAGECAST_WECOM_RATE_WINDOW_SECONDS", "1")
    monkeypatch.setenv("VILLAGECAST_WECOM_MAX_WAIT_SECONDS", str(max_wait))
    if max_attempts is not None:
        monkeypatch.setenv("VILLAGECAST_MAX_ATTEMPTS", str(max_attempts))
    reset_settings()
    county.settings = get_settings()


def test_the_limiter_paces_a_chunk_and_no_robot_goes_over(
    county: County, monkeypatch: pytest.MonkeyPatch
) -> None:
    _one_second_window(county, monkeypatch, rate=3, max_wait=5)
    ids = county.notice("限速通知", parts=2)  # two robots' worth of 4 messages each
    assert county.run(ids) == dict.fromkeys(ids, "delivered")  # waited, within the budget
    assert not [r for r in county.server.records if r.errcode == 45009]
    for key in county.keys:
        posted = county.server.posted(key)
        assert len(posted) == 4
        assert max_in_window([p.at for p in posted], 1.0) <= 3


def test_a_backlog_for_one_robot_is_paced_without_using_up_the_retry_budget(
    county: County, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Far more messages for each robot than its window holds, a retry budget of 2 and no
    # waiting in the worker: every delivery is rescheduled again and again for its robot's
    # next window (or behind another notice's parts). Those waits are not attempts.
    _one_second_window(county, monkeypatch, rate=2, max_wait=0, max_attempts=2)
    ids = [d for i in range(5) for d in county.notice(f"第{i}号通知")]  # 10 per robot
    from content_queue.store import TERMINAL, utcnow

    deadline = time.monotonic() + 90
    while county.store.count_open(ids, TERMINAL) and time.monotonic() < deadline:
        now = utcnow()
        due = [d.id for d in county.store.deliveries(ids=ids) if d.due_at <= now]
        if due:
            county.run(due)
        else:
            time.sleep(0.05)
    deliveries = county.store.deliveries(ids=ids)
    assert Counter(d.status for d in deliveries) == {"delivered": len(ids)}
    assert {d.attempts for d in deliveries} == {1}
    waits = Counter((a["outcome"], a["error_code"]) for d in ids for a in county.store.attempts(d))
    assert waits[("deferred", "rate_limited")] > len(ids), waits
    assert not [r for r in county.server.records if r.errcode == 45009]
    for key in county.keys:
        posted = county.server.posted(key)
        assert len(posted) == 10
        assert max_in_window([p.at for p in posted], 1.0) <= 2


def test_a_failure_between_rounds_still_records_what_was_accepted(
    county: County, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = get_channel("wecom_group")
    assert isinstance(channel, WecomGroupChannel)
    real = channel._reserve
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the second round's transaction: the store went away
            raise RuntimeError("the database is gone")
        return real(*args, **kwargs)

    monkeypatch.setattr(channel, "_reserve", flaky)
    ids = county.notice("两段通知", parts=2)
    results = county.run(ids)
    assert set(results.values()) == {"pending"}  # an internal error: retried later
    # Round 1 sent part 1 of each robot's first delivery (the second waits its turn): it is
    # on record as accepted, so the retry will not send it again.
    first = {d.id for d in county.store.deliveries(ids=ids) if int(d.endpoint_id[1:3]) % 2 == 0}
    for d in ids:
        statuses = {k: p.status for k, p in parts_of(county.store, d).items()}
        assert statuses == ({"part:1": "accepted"} if d in first else {}), d
    assert len(county.server.posted()) == ROBOTS


def _record_threads(channel: WecomGroupChannel, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each message's request left from, in order."""
    threads: list[str] = []
    real = channel._post_current

    def post(run: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(run)

    monkeypatch.setattr(channel, "_post_current", post)
    monkeypatch.setattr(channel, "_fan_out_until", 0.0)
    return threads


def test_fast_answers_go_one_after_the_other_on_the_workers_thread(
    county: County, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = get_channel("wecom_group")
    assert isinstance(channel, WecomGroupChannel)
    monkeypatch.setattr(WecomGroupChannel, "inline_max_seconds", 60.0)
    threads = _record_threads(channel, monkeypatch)
    ids = county.notice("三段通知", parts=3)
    assert county.run(ids) == dict.fromkeys(ids, "delivered")
    assert threads == [threading.current_thread().name] * (ENDPOINTS * 3)
    for key in county.keys:
        assert (
            _titles(county.server.posted(key)) == [f"### 三段通知（{i}/3）" for i in (1, 2, 3)] * 2
        )


def test_slow_answers_send_the_rest_side_by_side_and_later_rounds_too(
    county: County, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = get_channel("wecom_group")
    assert isinstance(channel, WecomGroupChannel)
    monkeypatch.setattr(WecomGroupChannel, "inline_max_seconds", 0.3)
    threads = _record_threads(channel, monkeypatch)
    for key in county.keys[:2]:  # the first two robots of the round answer late
        county.server.fail_next(key, Fault(delay=0.8, posted=True))
    ids = county.notice("两段通知", parts=2)
    assert county.run(ids) == dict.fromkeys(ids, "delivered")
    # Requests leave in robot order within a round: the two slow robots' from the
    # worker's thread (one slow answer alone is not enough), every later one from the
    # pool, in this round and the next ones.
    me = threading.current_thread().name
    order = [r.key for r in county.server.records]
    assert order[:2] == county.keys[:2]
    assert threads[:2] == [me, me]
    assert len(threads) == ENDPOINTS * 2
    assert all(name.startswith("wecom-send") for name in threads[2:]), threads
    for key in county.keys:
        titles = _titles(county.server.posted(key))
        assert titles == ["### 两段通知（1/2）", "### 两段通知（2/2）"] * 2, titles


def test_one_slow_answer_alone_keeps_the_round_on_the_workers_thread(
    county: County, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = get_channel("wecom_group")
    assert isinstance(channel, WecomGroupChannel)
    monkeypatch.setattr(WecomGroupChannel, "inline_max_seconds", 0.3)
    threads = _record_threads(channel, monkeypatch)
    county.server.fail_next(county.keys[0], Fault(delay=0.8, posted=True))
    ids = county.notice("一段通知")
    assert county.run(ids) == dict.fromkeys(ids, "delivered")
    assert threads == [threading.current_thread().name] * ENDPOINTS
