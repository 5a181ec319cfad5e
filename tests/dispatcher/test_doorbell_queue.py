"""Re-rings and the broker's queue: a doorbell still queued is not rung again yet.

Real brokers (the embedded SQLite one and Redis), no worker: the doorbells stay queued
until the test takes them out, as a killed worker would.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from content_queue.doorbells import note_doorbell_taken
from content_queue.models import build_notice
from content_queue.registry import load_registry
from content_queue.settings import Settings, get_settings, reset_settings
from content_queue.store import Store, utcnow
from dispatcher import service
from dispatcher.celery_app import SYNTHESIS_QUEUE, app_for, queue_for
from dispatcher.doorbell import queued, queues_of, ring

BROKERS = ["embedded", pytest.param("redis", marks=pytest.mark.service)]


@pytest.fixture(params=BROKERS)
def settings(
    request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    if request.param == "redis":
        monkeypatch.setenv("VILLAGECAST_BROKER_URL", request.getfixturevalue("redis_url"))
    reset_settings()
    s = get_settings()
    s.ensure_home()
    _purge(s, [queue_for("tv_feed"), queue_for("speaker"), SYNTHESIS_QUEUE])
    return s


def _purge(settings: Settings, names: list[str]) -> None:
    """Take every waiting message out, as a worker killed after fetching them would."""
    with app_for(settings).pool.acquire(block=True) as conn:
        for name in names:
            conn.default_channel.queue_declare(queue=name)
            conn.default_channel.queue_purge(queue=name)


def _ringer(settings: Settings) -> service.Ringer:
    return lambda ids, countdown: ring(ids, settings=settings, countdown=countdown)


def _queued(settings: Settings) -> service.QueueCounter:
    return lambda queues: queued(queues, settings=settings)


def _submit(settings: Settings, store: Store, title: str) -> list[int]:
    submitted = service.submit_notice(
        build_notice(
            {
                "title": title,
                "body": "请各位村民相互转告。",
                "category": "village_affairs",
                "targets": {"county": True},
                "channels": ["tv_feed"],
            }
        ),
        store=store,
        registry=load_registry(settings.devices),
        ring=_ringer(settings),
    )
    assert submitted.rung
    return sorted(d.id for d in submitted.deliveries if d.status == "pending")


def _take(settings: Settings, queue: str) -> dict[str, Any]:
    """Take the next doorbell out of ``queue``: its kwargs."""
    with app_for(settings).pool.acquire(block=True) as conn:
        message = conn.default_channel.basic_get(queue=queue, no_ack=True)
    assert message is not None
    _args, kwargs, _embed = message.decode()
    return dict(kwargs)


def test_queued_counts_the_messages_in_each_queue(settings: Settings) -> None:
    names = {queue_for("tv_feed"), queue_for("speaker"), SYNTHESIS_QUEUE}
    assert queued(names, settings=settings) == dict.fromkeys(names, 0)
    before = time.time()
    ring({"tv_feed": [1, 2], "speaker": [3]}, settings=settings)
    assert queued(names, settings=settings) == {
        queue_for("tv_feed"): 1,
        SYNTHESIS_QUEUE: 1,  # a loudspeaker doorbell goes to synthesis first
        queue_for("speaker"): 0,
    }
    assert queues_of("speaker") == [SYNTHESIS_QUEUE, queue_for("speaker")]
    stamped = _take(settings, SYNTHESIS_QUEUE)["rung_at"]
    assert before <= stamped <= time.time()


def test_sweeper_rings_again_only_what_can_no_longer_be_queued(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "_noted", {})
    store = service.open_store(settings)
    queue = queue_for("tv_feed")
    a = _submit(settings, store, "第一号通知")
    time.sleep(1.2)
    b = _submit(settings, store, "第二号通知")
    time.sleep(1.2)
    c = _submit(settings, store, "第三号通知")
    assert queued({queue}, settings=settings) == {queue: 3}

    time.sleep(settings.redoorbell_seconds + 0.2)  # a and b are overdue, all still queued
    sweep = lambda: service.sweep_once(  # noqa: E731
        store=store, settings=settings, ring=_ringer(settings), queued=_queued(settings)
    )
    assert sweep().rung == 0
    assert queued({queue}, settings=settings) == {queue: 3}

    # A worker takes a's doorbell and dies; another takes b's and notes it.
    _take(settings, queue)
    service.note_doorbell_taken(store, queue, _take(settings, queue)["rung_at"])
    report = sweep()
    assert report.ring == {"tv_feed": a}  # b's and c's may still be waiting: not rung again
    assert queued({queue}, settings=settings) == {queue: 2}  # c's and a's new one

    _purge(settings, [queue])  # lost with killed workers: the queue is empty
    time.sleep(settings.redoorbell_seconds + 0.2)
    assert sorted(sweep().ring["tv_feed"]) == sorted(a + b + c)

    # Without the queue lengths (`villagecast sweep`) an overdue doorbell is rung at once.
    time.sleep(settings.redoorbell_seconds + 0.2)
    report = service.sweep_once(store=store, settings=settings, ring=_ringer(settings))
    assert sorted(report.ring["tv_feed"]) == sorted(a + b + c)


def test_sweeper_rings_when_the_broker_cannot_say(settings: Settings) -> None:
    store = service.open_store(settings)
    ids = _submit(settings, store, "村民代表会议")
    time.sleep(settings.redoorbell_seconds + 0.2)

    def broken(queues: set[str]) -> dict[str, int]:
        raise ConnectionError("broker gone")

    report = service.sweep_once(
        store=store, settings=settings, ring=_ringer(settings), queued=broken
    )
    assert sorted(report.ring["tv_feed"]) == ids


def test_embedded_broker_keeps_no_taken_messages(home: Path) -> None:
    reset_settings()
    settings = get_settings()
    settings.ensure_home()
    broker_db = settings.home / "broker.sqlite"
    # A row an older version left behind as taken is cleared when a process opens the broker.
    ring({"tv_feed": [1]}, settings=settings)
    with sqlite3.connect(broker_db) as db:
        db.execute("UPDATE kombu_message SET visible = 0")
    from dispatcher import _sqla_transport

    _sqla_transport.Channel._engines.pop(settings.resolved_broker_url.removeprefix("sqla+"))
    with app_for(settings).connection_for_write() as fresh:  # as a new process would
        fresh.default_channel.queue_declare(queue=queue_for("tv_feed"), passive=True)
    ring({"tv_feed": [2, 3]}, settings=settings)
    with sqlite3.connect(broker_db) as db:
        assert db.execute("SELECT count(*), sum(visible) FROM kombu_message").fetchone() == (1, 1)

    with app_for(settings).pool.acquire(block=True) as conn:
        message = conn.default_channel.basic_get(queue=queue_for("tv_feed"), no_ack=True)
    assert message is not None and message.payload  # the doorbell itself
    with sqlite3.connect(broker_db) as db:
        assert db.execute("SELECT count(*) FROM kombu_message").fetchone() == (0,)


def test_a_queue_nobody_takes_from_counts_as_stuck(settings: Settings) -> None:
    """Messages waiting and no doorbell taken for STUCK_FACTOR x redoorbell_seconds: the
    old doorbells are rung again (workers gone, or every one of them busy for that long)."""
    store = service.open_store(settings)
    queue = queue_for("tv_feed")
    long = timedelta(seconds=service.STUCK_FACTOR * settings.redoorbell_seconds)
    now = utcnow()

    def holding(queues: set[str]) -> dict[str, int]:
        return dict.fromkeys(queues, 5)

    # Nothing ever noted: only what is older than the stuck period may be rung again.
    (cut,) = service.ring_cutoffs(store, {"tv_feed"}, holding, settings).values()
    assert now - long <= cut <= utcnow() - long
    # A worker took a doorbell rung 10 minutes ago, just now: the queue is being drained.
    note_doorbell_taken(store, queue, now - timedelta(minutes=10))
    (cut,) = service.ring_cutoffs(store, {"tv_feed"}, holding, settings).values()
    assert cut == now - timedelta(minutes=10, seconds=1)
    # The same note made long ago: stuck.
    note_doorbell_taken(store, queue, now - timedelta(minutes=10), now=now - 2 * long)
    (cut,) = service.ring_cutoffs(store, {"tv_feed"}, holding, settings).values()
    assert cut >= now - long
    # Empty queues hold nothing back.
    assert service.ring_cutoffs(store, {"tv_feed"}, lambda q: dict.fromkeys(q, 0), settings) == {}
