"""LED fan-outs in few tasks, and the listener recording acks in order, in batches."""

from __future__ import annotations

from pathlib import Path

import pytest

from channels.protocol import Ack, DeviceState, encode
from content_queue.models import build_notice
from content_queue.registry import Registry, RegistryFile
from content_queue.settings import Settings
from content_queue.store import NewCommand, Outcome, PlannedDelivery, Store, utcnow
from dispatcher.acks import DeviceListener
from dispatcher.doorbell import _batch_size
from dispatcher.embedded_mqtt import EMBEDDED_DEVICE_LIMIT, scale_warning

PREFIX = "vc/v1"


def test_led_tasks_carry_more_unless_the_batch_size_is_set(tmp_path: Path) -> None:
    redis = Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/0")
    assert _batch_size("led", redis, 5000) == 500
    assert _batch_size("tv_feed", redis, 5000) == 25 == redis.batch_size
    chosen = Settings(home=tmp_path, broker_url="redis://127.0.0.1:6379/0", batch_size=7)
    assert _batch_size("led", chosen, 5000) == 7 and _batch_size("tv_feed", chosen, 5000) == 7


def test_on_the_embedded_broker_a_fan_out_is_split_over_the_worker_processes(
    tmp_path: Path,
) -> None:
    embedded = Settings(home=tmp_path, worker_concurrency=2)
    assert embedded.broker_is_embedded
    assert _batch_size("led", embedded, 5000) == 2500  # two tasks: no poll between tasks
    assert _batch_size("led", embedded, 300) == 500
    assert _batch_size("tv_feed", embedded, 5000) == 25
    assert _batch_size("led", Settings(home=tmp_path, batch_size=50), 5000) == 50


def _ack(device: str, command: str, status: str = "shown", reason: str | None = None) -> bytes:
    now = int(utcnow().timestamp())
    return encode(
        Ack(v=1, command=command, device=device, status=status, reason=reason, at=now)  # type: ignore[arg-type]
    )


def _state(device: str, state: str) -> bytes:
    return encode(
        DeviceState(
            v=1,
            device=device,
            state=state,  # type: ignore[arg-type]
            at=int(utcnow().timestamp()),
            capabilities=["led.show"],
            fresh_boot=False,
            showing=[],
        )
    )


def _sent(
    tmp_path: Path, request: pytest.FixtureRequest, boards: list[str]
) -> tuple[Store, list[str]]:
    """A store with one emergency sent to each of ``boards`` (a board may appear more than
    once: one command each), awaiting acks; returns the store and the command ids."""
    store = Store(f"sqlite:///{tmp_path / 'vc.db'}")
    request.addfinalizer(store.engine.dispose)
    request.addfinalizer(store.read_engine.dispose)
    _, deliveries = store.add_notice(
        build_notice(
            {
                "title": "停电通知",
                "body": "明天停电。",
                "category": "emergency",
                "targets": {"county": True},
            }
        ),
        [PlannedDelivery(f"e{i}-led", "led", "v", "t") for i in range(len(boards))],
    )
    claims = store.claim([d.id for d in deliveries], worker="w", lease_seconds=60, max_attempts=3)
    now = utcnow()
    store.record_commands(
        [
            NewCommand(f"vc-{c.delivery.id}", c.delivery.id, board, "led.show", now, now)
            for c, board in zip(claims, boards, strict=True)
        ]
    )
    store.finish_chunk([(c, Outcome("sent")) for c in claims], max_attempts=3)
    return store, [f"vc-{d.id}" for d in deliveries]


def _statuses(store: Store, command_ids: list[str]) -> list[str]:
    ids = [int(c.removeprefix("vc-")) for c in command_ids]
    return [d.status for d in store.deliveries(ids=ids)]


def test_listener_records_a_burst_in_order(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    settings = Settings(home=tmp_path / "home", mqtt_prefix=PREFIX)
    store, (a, b, c) = _sent(tmp_path, request, ["led-a", "led-b", "led-c"])
    listener = DeviceListener(settings, store, client_id="test")
    listener.handle_many(
        [
            (f"{PREFIX}/dev/led-a/state", _state("led-a", "online"), False),
            (f"{PREFIX}/dev/led-a/ack", _ack("led-a", a), False),
            (f"{PREFIX}/dev/led-b/ack", b"{not json", False),  # dropped, the rest goes on
            (f"{PREFIX}/dev/led-b/ack", _ack("led-b", b), False),
            (f"{PREFIX}/dev/led-c/ack", _ack("led-c", c, "rejected", "unknown_key"), False),
            (f"{PREFIX}/dev/led-c/ack", _ack("led-b", b), False),  # not in its own name
            # board a restarts (without losing its memory) and now reports showing nothing
            (f"{PREFIX}/dev/led-a/state", _state("led-a", "online"), False),
        ]
    )
    assert _statuses(store, [a, b, c]) == ["delivered", "delivered", "failed"]
    (failed,) = store.deliveries(ids=[int(c.removeprefix("vc-"))])
    assert failed.error_code == "device_unknown_key"
    # handled in arrival order: the later presence replaced what the ack had recorded
    (board_a,) = [d for d in store.devices() if d.device_id == "led-a"]
    assert board_a.state == "online" and board_a.showing == []
    (board_b,) = [d for d in store.devices() if d.device_id == "led-b"] or [None]
    assert board_b is None  # never announced itself: no device row to update
    assert store.commands_for(int(a.removeprefix("vc-")))[0]["ack_status"] == "shown"


def _county(n: int) -> Registry:
    villages = [
        {
            "id": f"v{i}",
            "name": f"村{i}",
            "endpoints": [{"id": f"v{i}-led", "kind": "led", "device_id": f"led-{i}"}],
        }
        for i in range(n)
    ]
    return Registry(
        RegistryFile.model_validate(
            {
                "version": 1,
                "county": {"code": "371521", "name": "示例县"},
                "townships": [{"id": "t", "name": "镇", "villages": villages}],
            }
        )
    )


def test_a_county_on_the_embedded_broker_is_told_to_use_mosquitto(tmp_path: Path) -> None:
    embedded = Settings(home=tmp_path)
    assert scale_warning(_county(EMBEDDED_DEVICE_LIMIT), embedded) is None
    warning = scale_warning(_county(EMBEDDED_DEVICE_LIMIT + 1), embedded)
    assert warning is not None
    assert "301" in warning.render("zh") and "mosquitto" in warning.render("en")
    assert "VILLAGECAST_MQTT_URL" in warning.render("en")
    mosquitto = Settings(home=tmp_path, mqtt_url="mqtt://127.0.0.1:1883")
    assert scale_warning(_county(EMBEDDED_DEVICE_LIMIT + 1), mosquitto) is None


def test_listener_waits_out_a_database_that_is_briefly_unreachable(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker has the acks PUBACKed already: dropping them would leave the deliveries
    `sent` until the sweeper asks the boards again, minutes later."""
    import dispatcher.acks as acks_module
    from content_queue.errors import StoreError
    from content_queue.i18n import tr

    settings = Settings(home=tmp_path / "home", mqtt_prefix=PREFIX)
    store, (a, b) = _sent(tmp_path, request, ["led-a", "led-b"])
    real = store.record_acks
    failures = {"left": 2}

    def flaky(acks: object) -> object:
        if failures["left"]:
            failures["left"] -= 1
            raise StoreError(tr("数据库被锁定", "database is locked"))
        return real(acks)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "record_acks", flaky)
    monkeypatch.setattr(acks_module, "STORE_RETRY_DELAYS", (0.01, 0.01, 0.01))
    listener = DeviceListener(settings, store, client_id="test")
    listener.handle_many(
        [
            (f"{PREFIX}/dev/led-a/ack", _ack("led-a", a), False),
            (f"{PREFIX}/dev/led-b/ack", _ack("led-b", b), False),
        ]
    )
    assert failures["left"] == 0
    assert _statuses(store, [a, b]) == ["delivered", "delivered"]
    # An outage longer than the retries: logged, left to the sweeper, the listener goes on.
    failures["left"] = 10
    listener.handle_many([(f"{PREFIX}/dev/led-a/ack", _ack("led-a", a), False)])
    assert failures["left"] == 10 - 4


def test_what_a_board_shows_is_kept_to_the_newest_commands(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Every ``shown`` ack rewrites the board's list: were it to keep every command it was
    ever sent, each ack would cost more than the last (the soak's slowing ack path)."""
    from content_queue.store import SHOWING_KEPT

    settings = Settings(home=tmp_path / "home", mqtt_prefix=PREFIX)
    store, ids = _sent(tmp_path, request, ["led-a"] * (SHOWING_KEPT + 15))
    listener = DeviceListener(settings, store, client_id="test")
    listener.handle_many([(f"{PREFIX}/dev/led-a/state", _state("led-a", "online"), False)])
    # A batch of acks (the path of a fan-out), then one more on its own (a rejection or a
    # clear in between sends the rest through record_ack one by one).
    listener.handle_many([(f"{PREFIX}/dev/led-a/ack", _ack("led-a", c), False) for c in ids[:-1]])
    store.record_ack(
        device_id="led-a", command_id=ids[-1], status="shown", reason=None, detail=None
    )
    (board,) = store.devices()
    assert board.showing == ids[-SHOWING_KEPT:]
    assert set(_statuses(store, ids)) == {"delivered"}
    # A board reporting a longer list when it comes online is kept to the newest too.
    store.record_presence(device_id="led-a", state="online", at=utcnow(), showing=ids)
    (board,) = store.devices()
    assert board.showing == ids[-SHOWING_KEPT:]
