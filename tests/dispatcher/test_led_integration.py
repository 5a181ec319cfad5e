"""LED boards end to end: a real worker, real mosquitto, the listener and reference devices."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from channels.keys import Keyring
from content_queue.models import build_notice
from content_queue.registry import LedEndpoint, load_registry
from content_queue.settings import Settings, get_settings, reset_settings
from content_queue.store import TERMINAL, Store
from dispatcher import service
from dispatcher.acks import DeviceListener
from dispatcher.doorbell import ring
from refdevice.device import ReferenceDevice
from tests.conftest import Mosquitto, many_villages_yaml
from tests.dispatcher.test_worker_integration import Workers

pytestmark = [pytest.mark.slow, pytest.mark.service]


class Rig:
    def __init__(self, settings: Settings, store: Store, broker: Mosquitto, home: Path) -> None:
        self.settings, self.store, self.broker, self.home = settings, store, broker, home
        self.keyring = Keyring.init(settings.keys_dir)
        self.devices: dict[str, ReferenceDevice] = {}
        self.listener = DeviceListener(settings, store, client_id=f"test-listener-{id(self)}")

    def device(
        self, device_id: str, *, keyring: Keyring | None = None, kind: str = "led"
    ) -> ReferenceDevice:
        dev = ReferenceDevice(
            device_id=device_id,
            host="127.0.0.1",
            port=self.broker.port,
            keyring=(keyring or self.keyring).public_keys(),
            state_dir=self.home / "device-state",
            keepalive=5,
            kind="speaker" if kind == "speaker" else "led",
        )
        self.devices[device_id] = dev
        return dev

    def submit(self, **data: object) -> int:
        notice = {"body": "请各位村民注意防寒保暖。", "category": "emergency", **data}
        sub = service.submit_notice(
            build_notice(notice),
            store=self.store,
            registry=load_registry(self.settings.devices),
            ring=lambda ids, countdown: ring(ids, settings=self.settings, countdown=countdown),
        )
        return sub.notice.id

    def wait(self, check: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                rows = [
                    (d.endpoint_id, d.status, d.attempts, d.error_code)
                    for n in self.store.notices()
                    for d in self.store.deliveries(n.id)
                    if d.status not in TERMINAL
                ]
                pytest.fail(f"timed out waiting for {what}; unsettled: {rows[:10]}")
            time.sleep(0.1)

    def statuses(self, nid: int) -> dict[str, str]:
        return {d.endpoint_id: d.status for d in self.store.deliveries(nid)}

    def settled(self, *nids: int) -> bool:
        return all(d.status in TERMINAL for n in nids for d in self.store.deliveries(n))


@pytest.fixture
def rig(
    home: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch, workers: Workers
) -> Iterator[Rig]:
    monkeypatch.setenv("VILLAGECAST_MQTT_URL", mosquitto.url)
    reset_settings()
    settings = get_settings()
    r = Rig(settings, service.open_store(settings), mosquitto, home)
    r.listener.start()
    yield r
    for dev in r.devices.values():
        dev.stop()  # a no-op for a device already stopped
    r.listener.stop()


@pytest.fixture
def workers(home: Path) -> Iterator[Workers]:
    home.mkdir(parents=True, exist_ok=True)
    w = Workers(home)
    yield w
    w.stop_all()


def test_board_shows_the_notice_and_acks(rig: Rig, workers: Workers) -> None:
    board = rig.device("led-east-liu-01")
    board.start()
    workers.start()
    nid = rig.submit(title="寒潮蓝色预警", targets={"villages": ["east-liu"]}, channels=["led"])
    rig.wait(lambda: rig.settled(nid), "the LED delivery")
    assert rig.statuses(nid) == {"east-liu-led": "delivered"}
    assert [s[1] for s in board.shown] == [nid]
    (cmd,) = rig.store.commands_for(rig.store.deliveries(nid)[0].id)
    assert cmd["ack_status"] == "shown" and cmd["device"] == "led-east-liu-01"
    devices = {d.device_id: d for d in rig.store.devices()}
    assert devices["led-east-liu-01"].state == "online"
    assert devices["led-east-liu-01"].showing == [cmd["id"]]


def test_offline_board_gets_what_is_still_valid(rig: Rig, workers: Workers) -> None:
    board = rig.device("led-east-liu-01")
    board.start()
    board.stop()  # its persistent session stays on the broker
    rig.wait(lambda: any(d.state == "offline" for d in rig.store.devices()), "offline presence")
    workers.start()
    lasting = rig.submit(title="停水通知", targets={"villages": ["east-liu"]}, channels=["led"])
    brief = rig.submit(
        title="临时通知",
        targets={"villages": ["east-liu"]},
        channels=["led"],
        expires_at=datetime.now(UTC) + timedelta(seconds=3),
    )
    rig.wait(lambda: rig.statuses(lasting) == {"east-liu-led": "sent"}, "broker acceptance")
    time.sleep(4)  # the brief notice expires while the board is away
    again = rig.device("led-east-liu-01")
    again.start()
    rig.wait(lambda: rig.settled(lasting, brief), "both notices to settle")
    assert rig.statuses(lasting) == {"east-liu-led": "delivered"}
    assert rig.statuses(brief) == {"east-liu-led": "expired"}
    assert [s[1] for s in again.shown] == [lasting]  # the expired one was never shown


def test_board_that_lost_its_memory_is_resynced(rig: Rig, workers: Workers) -> None:
    board = rig.device("led-east-liu-01")
    board.start()
    workers.start()
    nid = rig.submit(title="村民大会", targets={"villages": ["east-liu"]}, channels=["led"])
    rig.wait(lambda: rig.settled(nid), "the first showing")
    board.stop()
    for f in (rig.home / "device-state").iterdir():
        f.unlink()  # a power loss that wiped the board
    reborn = rig.device("led-east-liu-01")
    reborn.start()
    rig.wait(lambda: len(reborn.shown) == 1, "the re-sync after a fresh boot")
    command_id, notice, _ = reborn.shown[0]
    assert notice == nid and "-s" in command_id  # a new command id for the same delivery
    assert rig.statuses(nid) == {"east-liu-led": "delivered"}


def test_refused_command_is_recorded_with_the_reason(rig: Rig, workers: Workers) -> None:
    stranger = Keyring.init(rig.home / "other-keys")
    board = rig.device("led-east-liu-01", keyring=stranger)
    board.start()
    workers.start()
    nid = rig.submit(title="通知", targets={"villages": ["east-liu"]}, channels=["led"])
    rig.wait(lambda: rig.settled(nid), "the rejection")
    (d,) = rig.store.deliveries(nid)
    assert d.status == "failed" and d.error_code == "device_unknown_key"
    assert "设备不认识签名密钥" in (d.error_zh or "")
    assert board.shown == []


def test_fan_out_survives_broker_restart_and_worker_kill(
    rig: Rig, workers: Workers, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices_file = home.parent / "many.yaml"
    devices_file.write_text(many_villages_yaml(40, extra_kinds=True), encoding="utf-8")
    monkeypatch.setenv("VILLAGECAST_DEVICES", str(devices_file))
    monkeypatch.setenv("VILLAGECAST_BATCH_SIZE", "2")
    reset_settings()
    rig.settings = get_settings()
    registry = load_registry(devices_file)
    boards = [
        rig.device(ep.device_id)
        for ep in registry.endpoints.values()
        if isinstance(ep, LedEndpoint)
    ]
    for b in boards:
        b.start()
    first = workers.start()
    nid = rig.submit(title="防汛紧急通知", targets={"county": True}, channels=["led"])
    rig.wait(lambda: sum(bool(b.shown) for b in boards) >= 5, "the fan-out to start")
    rig.broker.stop(kill=True)
    workers.kill(first)
    rig.broker.start()
    workers.start()
    rig.wait(lambda: rig.settled(nid), "every board after the restarts", timeout=120)
    assert set(rig.statuses(nid).values()) == {"delivered"}
    for b in boards:
        assert [s[1] for s in b.shown] == [nid], b.device_id  # shown exactly once


def test_loudspeaker_speaks_the_notice_synthesized_once(
    rig: Rig, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatcher.feed_server import serve_in_thread

    server, _ = serve_in_thread(
        rig.settings, rig.store, lambda: load_registry(rig.settings.devices)
    )
    host, port = server.server_address[:2]
    monkeypatch.setenv("VILLAGECAST_FEED_BASE_URL", f"http://{host}:{port}")
    monkeypatch.setenv("VILLAGECAST_TTS_MODE", "offline")
    reset_settings()
    speaker = rig.device("spk-east-wang-01", kind="speaker")
    speaker.start()
    workers.start()
    try:
        first = rig.submit(
            title="寒潮预警",
            priority="emergency",
            targets={"villages": ["east-wang"]},
            channels=["speaker"],
        )
        again = rig.submit(
            title="寒潮预警",
            priority="emergency",
            targets={"villages": ["east-wang"]},
            channels=["speaker"],
        )
        rig.wait(lambda: rig.settled(first, again), "both plays")
    finally:
        server.shutdown()
        server.server_close()
    d1, d2 = rig.store.deliveries(first)[0], rig.store.deliveries(again)[0]
    assert (d1.status, d2.status) == ("delivered", "delivered")
    assert d1.details and d2.details
    assert {d1.details["engine"], d2.details["engine"]} == {"offline"}
    # Same script: synthesized once (either worker may get there first), the other a hit.
    assert sorted([d1.details["cache_hit"], d2.details["cache_hit"]]) == [False, True]
    assert d1.details["clip"] == d2.details["clip"]
    clip = speaker.clips[f"vc-{d1.id}"]
    assert clip[:3] == b"ID3" or clip[:2] == b"\xff\xfb"  # real MP3 bytes, hash verified
