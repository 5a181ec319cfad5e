"""The store's batched paths (a claimed chunk's commands, a burst of acks) against the
one-at-a-time paths they stand in for: the same rows must come out."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from content_queue.i18n import tr
from content_queue.models import build_notice
from content_queue.store import Claim, DeviceAck, NewCommand, Outcome, PlannedDelivery, Store

T0 = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(seconds=2)
BOARDS = ["a", "b", "c", "d", "e"]


_OPEN: list[Store] = []


@pytest.fixture(autouse=True)
def _dispose_stores() -> Iterator[None]:
    """Close every engine a test opened (the suite runs paho clients, whose select() loop
    cannot take descriptors above 1024)."""
    yield
    while _OPEN:
        store = _OPEN.pop()
        store.engine.dispose()
        store.read_engine.dispose()


def _store(path: Path) -> Store:
    store = Store(f"sqlite:///{path}")
    _OPEN.append(store)
    return store


def _claimed(store: Store) -> list[Claim]:
    _, deliveries = store.add_notice(
        build_notice(
            {
                "title": "山洪预警",
                "body": "请立即转移",
                "category": "emergency",
                "targets": {"county": True},
            }
        ),
        [PlannedDelivery(f"{b}-led", "led", b, "t") for b in BOARDS],
        now=T0,
    )
    for b in BOARDS:
        store.record_presence(device_id=f"led-{b}", state="online", at=T0)
    ids = [d.id for d in deliveries]
    claims = store.claim(ids[:-1], worker="w", lease_seconds=60, max_attempts=5, now=T0)
    # The last one's lease runs out; the sweeper hands it to another worker.
    (late,) = store.claim(ids[-1:], worker="w", lease_seconds=1, max_attempts=5, now=T0)
    later = T0 + timedelta(seconds=1.5)
    assert store.sweep(max_attempts=5, redoorbell_seconds=60, now=later).reclaimed == 1
    assert store.claim(ids[-1:], worker="w2", lease_seconds=60, max_attempts=5, now=later)
    return [*claims, late]


def _command(claim: Claim, board: str) -> NewCommand:
    return NewCommand(
        command_id=f"vc-{claim.delivery.id}",
        delivery_id=claim.delivery.id,
        device_id=f"led-{board}",
        kind="led.show",
        issued_at=T0,
        expires_at=T0 + timedelta(days=1),
    )


def _dump(store: Store, *, skip: tuple[str, ...] = ()) -> dict[str, list[dict[str, Any]]]:
    """Every row the device paths touch, lease tokens normalised (they hold a random part)
    and a device's updated_at left out (presence stamps it with the clock)."""
    tables = {
        "deliveries": "id",
        "attempts": "id",
        "device_commands": "id",
        "devices": "device_id",
    }
    out: dict[str, list[dict[str, Any]]] = {}
    with store.engine.connect() as conn:
        for table, key in tables.items():
            rows = conn.execute(text(f"SELECT * FROM {table} ORDER BY {key}")).mappings()
            out[table] = [
                {
                    k: ("<token>" if k in ("leased_by", "worker") and v else v)
                    for k, v in row.items()
                    if k not in skip and (table, k) != ("devices", "updated_at")
                }
                for row in rows
            ]
    return out


def _outcomes(claims: list[Claim]) -> list[tuple[Claim, Outcome]]:
    """sent; sent after the device already acked; retry; failed; sent after the lease ran
    out and another worker claimed the delivery."""
    a, b, c, d, e = claims
    return [
        (a, Outcome("sent", external_ref=f"vc-{a.delivery.id}")),
        (b, Outcome("sent", external_ref=f"vc-{b.delivery.id}")),
        (
            c,
            Outcome(
                "retry",
                tr("MQTT 服务器没有确认", "the broker did not confirm"),
                code="mqtt_timeout",
                retry_at=T1 + timedelta(seconds=30),
                attempt_outcome="transient",
            ),
        ),
        (d, Outcome("failed", tr("字符", "character"), code="encoding")),
        (e, Outcome("sent", external_ref=f"vc-{e.delivery.id}")),  # its lease was lost
    ]


def test_finish_chunk_writes_what_finish_many_writes(tmp_path: Path) -> None:
    one, many = _store(tmp_path / "one.db"), _store(tmp_path / "many.db")
    results: dict[str, list[str]] = {}
    for name, store in (("finish_many", one), ("finish_chunk", many)):
        claims = _claimed(store)
        commands = [_command(c, b) for c, b in zip(claims, BOARDS, strict=True)]
        store.record_commands(commands)
        # board b answers before the worker records its publish
        store.record_ack(
            device_id="led-b",
            command_id=commands[1].command_id,
            status="shown",
            reason=None,
            detail=None,
            now=T0,
        )
        if name == "finish_many":
            results[name] = store.finish_many(_outcomes(claims), max_attempts=5, now=T1)
        else:
            results[name] = store.finish_chunk(
                _outcomes(claims),
                published=[commands[0].command_id, commands[1].command_id],
                max_attempts=5,
                now=T1,
            )
    assert results["finish_many"] == results["finish_chunk"]
    assert results["finish_chunk"] == ["sent", "delivered", "pending", "failed", "sending"]
    assert _dump(one, skip=("published_at",)) == _dump(many, skip=("published_at",))
    published = {c["id"]: c["published_at"] for c in _dump(many)["device_commands"]}
    ids = sorted(published, key=lambda i: int(i.removeprefix("vc-")))
    assert [published[i] is not None for i in ids] == [True, True, False, False, False]
    outcomes = [(a["delivery_id"], a["number"], a["outcome"]) for a in _dump(many)["attempts"]]
    e = max(d for d, _, _ in outcomes)
    assert [o for d, _, o in outcomes if d != e] == ["sent", "sent", "transient", "failed"]
    assert [(n, o) for d, n, o in outcomes if d == e] == [(1, "stale"), (2, None)]


def _robots_finished(store: Store, finish: str) -> list[str]:
    """Five WeCom-like deliveries (no device acks) through a first attempt, then finished
    with outcomes that carry details: delivered with a ref, delivered with details only,
    sent with details, delivered with neither, and delivered with details on a delivery
    that already had some (from its first, retried, attempt) and a send time."""
    _, deliveries = store.add_notice(
        build_notice(
            {
                "title": "停水通知",
                "body": "明天停水",
                "category": "meeting",
                "targets": {"county": True},
            }
        ),
        [PlannedDelivery(f"{b}-wecom", "wecom_group", b, "t") for b in BOARDS],
        now=T0,
    )
    ids = [d.id for d in deliveries]
    (first,) = store.claim(ids[-1:], worker="w", lease_seconds=60, max_attempts=5, now=T0)
    retry = Outcome(
        "retry",
        tr("企业微信系统繁忙", "WeCom is busy"),
        code="-1",
        retry_at=T0,
        attempt_outcome="transient",
        details={"robot": "r5", "sent_now": 1},
    )
    store.finish_many([(first, retry)], max_attempts=5, now=T0)
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE deliveries SET sent_at = :t WHERE id = :i"), {"t": T0, "i": ids[-1]}
        )
    claims = store.claim(ids, worker="w", lease_seconds=60, max_attempts=5, now=T0)
    a, b, c, d, e = claims
    outcomes = [
        (a, Outcome("delivered", external_ref="wecom:r1", details={"robot": "r1", "parts": 2})),
        (b, Outcome("delivered", details={"robot": "r2"})),
        (c, Outcome("sent", external_ref="wecom:r3", details={"robot": "r3"})),
        (d, Outcome("delivered")),
        (e, Outcome("delivered", external_ref="wecom:r5", details={"sent_now": 2})),
    ]
    if finish == "finish_many":
        return store.finish_many(outcomes, max_attempts=5, now=T1)
    return store.finish_chunk(outcomes, max_attempts=5, now=T1)


def test_finish_chunk_writes_what_finish_many_writes_for_outcomes_with_details(
    tmp_path: Path,
) -> None:
    one, many = _store(tmp_path / "one.db"), _store(tmp_path / "many.db")
    assert _robots_finished(one, "finish_many") == _robots_finished(many, "finish_chunk")
    assert _robots_finished(_store(tmp_path / "x.db"), "finish_chunk") == [
        "delivered",
        "delivered",
        "sent",
        "delivered",
        "delivered",
    ]
    assert _dump(one) == _dump(many)
    deliveries = _dump(many)["deliveries"]
    details = [json.loads(d["details"]) if d["details"] else None for d in deliveries]
    assert details[-1] == {"robot": "r5", "sent_now": 2}  # merged into the first attempt's
    assert [d["external_ref"] for d in deliveries] == [
        "wecom:r1",
        None,
        "wecom:r3",
        None,
        "wecom:r5",
    ]
    assert [a["outcome"] for a in _dump(many)["attempts"]] == [
        "transient",
        "delivered",
        "delivered",
        "sent",
        "delivered",
        "delivered",
    ]


def test_record_commands_is_idempotent(tmp_path: Path) -> None:
    store = _store(tmp_path / "vc.db")
    claims = _claimed(store)
    first = _command(claims[0], "a")
    store.record_commands([first, first, _command(claims[1], "b")])
    store.record_commands([dataclasses.replace(first, device_id="led-z")])
    rows = _dump(store)["device_commands"]
    assert [(r["id"], r["device_id"]) for r in rows] == [
        (first.command_id, "led-a"),
        (f"vc-{claims[1].delivery.id}", "led-b"),
    ]


def _acks(claims: list[Claim]) -> list[DeviceAck]:
    """A burst as the listener sees it: duplicates, a rejection in the middle, an ack for
    another device's command, one for an unknown command, an ack that beats the worker."""
    cid = [f"vc-{c.delivery.id}" for c in claims]
    return [
        DeviceAck("led-a", cid[0], "shown"),
        DeviceAck("led-b", cid[1], "shown"),
        DeviceAck("led-a", cid[0], "shown"),  # a duplicate re-acked
        DeviceAck("led-c", cid[2], "rejected", "bad_signature", "the signature does not verify"),
        DeviceAck("led-a", cid[3], "shown"),  # board a cannot ack board d's command
        DeviceAck("led-d", "vc-999999", "shown"),
        DeviceAck("led-d", cid[3], "played", detail="x" * 300),
        DeviceAck("led-e", cid[4], "shown"),  # its delivery is still 'sending'
        DeviceAck("led-b", cid[1], "rejected", "replayed"),
    ]


def test_record_acks_writes_what_record_ack_writes(tmp_path: Path) -> None:
    one, many = _store(tmp_path / "one.db"), _store(tmp_path / "many.db")
    statuses: dict[str, list[str | None]] = {}
    for name, store in (("record_ack", one), ("record_acks", many)):
        claims = _claimed(store)
        store.record_commands([_command(c, b) for c, b in zip(claims, BOARDS, strict=True)])
        sent = [(c, Outcome("sent", external_ref=f"vc-{c.delivery.id}")) for c in claims[:4]]
        store.finish_chunk(sent, max_attempts=5, now=T0)
        acks = _acks(claims)
        if name == "record_ack":
            statuses[name] = [
                store.record_ack(
                    device_id=a.device_id,
                    command_id=a.command_id,
                    status=a.status,
                    reason=a.reason,
                    detail=a.detail,
                    now=T1,
                )
                for a in acks
            ]
        else:
            statuses[name] = store.record_acks(acks, now=T1)
    assert statuses["record_ack"] == statuses["record_acks"]
    assert statuses["record_acks"] == [
        "delivered",
        "delivered",
        "delivered",
        "failed",
        None,
        None,
        "delivered",
        "sending",
        "delivered",
    ]
    assert _dump(one) == _dump(many)
    showing = {d["device_id"]: json.loads(d["showing"]) for d in _dump(many)["devices"]}
    assert showing["led-a"] == [f"vc-{claims[0].delivery.id}"]  # once, though acked twice
    assert showing["led-c"] == [] and showing["led-d"] == []  # refused; played is not shown


@pytest.mark.parametrize("size", [1, 3])
def test_record_acks_in_runs_keeps_the_order(tmp_path: Path, size: int) -> None:
    """A rejection between two acks of the same command is applied in its place."""
    store = _store(tmp_path / "vc.db")
    claims = _claimed(store)
    store.record_commands([_command(c, b) for c, b in zip(claims, BOARDS, strict=True)])
    store.finish_chunk([(c, Outcome("sent")) for c in claims], max_attempts=5, now=T0)
    cid = f"vc-{claims[2].delivery.id}"
    acks = [
        DeviceAck("led-c", cid, "rejected", "expired"),
        DeviceAck("led-c", cid, "shown"),
    ]
    got: list[str | None] = []
    for i in range(0, len(acks), size):
        got += store.record_acks(acks[i : i + size], now=T1)
    assert got == ["expired", "expired"]  # a late success does not revive an ended delivery


def test_writers_take_turns_and_a_thread_may_nest(tmp_path: Path) -> None:
    """Writers queue on a file lock beside the database; a thread that already holds the
    turn (a write session inside another) is not made to wait for itself."""
    store = _store(tmp_path / "vc.db")
    order: list[str] = []

    def nested() -> None:
        with store.session(), store.session():
            order.append("nested")

    def second() -> None:
        with store.session():
            order.append("second")

    with store.session():
        assert (tmp_path / "vc.db.writer.lock").exists()
        other = threading.Thread(target=second)
        other.start()
        other.join(0.3)
        assert other.is_alive()  # waiting for this thread's turn to end
        order.append("first")
    other.join(10)
    inner = threading.Thread(target=nested)
    inner.start()
    inner.join(10)
    assert not inner.is_alive()
    assert order == ["first", "second", "nested"]
