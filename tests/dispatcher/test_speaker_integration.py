"""Loudspeakers end to end on a real mosquitto: the speaker channel, the device listener and
reference speakers, with one test clock for the dispatcher and the devices.

The in-process tests drive deliveries as the tasks do (synthesis step, then the channel),
with the channel's clock injected; the last test runs the real worker processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from channels import base
from channels.keys import Keyring
from channels.speaker import SpeakerChannel, synthesis_slots
from content_queue.loudspeakers import played_at
from content_queue.models import build_notice
from content_queue.registry import load_registry
from content_queue.settings import Settings, get_settings, reset_settings
from content_queue.store import Store
from dispatcher import service
from dispatcher.acks import DeviceListener
from dispatcher.synthesis import prepare_clips
from refdevice.device import ReferenceDevice
from tests.conftest import Mosquitto
from tests.dispatcher import test_led_integration
from tests.dispatcher.test_led_integration import Rig
from tests.dispatcher.test_worker_integration import Workers
from tests.refdevice.test_speaker import GateSink

pytestmark = [pytest.mark.slow, pytest.mark.service]

rig = test_led_integration.rig
workers = test_led_integration.workers

TZ = ZoneInfo("Asia/Shanghai")
SPEAKER = "spk-east-wang-01"
WAIT = 60.0


def day(hh: int, mm: int = 0, *, days: int = 1) -> int:
    """A time of day in the county, ``days`` after today: always in the real future, so the
    dispatcher's own clock (the listener's re-sync) sees every planned play still to come."""
    date = datetime.now(TZ).date() + timedelta(days=days)
    return int(datetime(date.year, date.month, date.day, hh, mm, tzinfo=TZ).timestamp())


class Clock:
    def __init__(self, now: int) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now

    def utc(self) -> datetime:
        return datetime.fromtimestamp(self.now, tz=UTC)


def wait_for(check: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while not (found := check()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)
    return found


@dataclass
class Line:
    """The dispatcher in this process: store, listener, speaker channel on the test clock."""

    settings: Settings
    store: Store
    clock: Clock
    home: Path
    port: int
    devices: list[ReferenceDevice] = field(default_factory=list)

    def speaker(self, **kw: Any) -> ReferenceDevice:
        device = ReferenceDevice(
            device_id=SPEAKER,
            host="127.0.0.1",
            port=self.port,
            keyring=Keyring.load(self.settings.keys_dir).public_keys(),
            state_dir=self.home / "device-state",
            keepalive=5,
            kind="speaker",
            clock=self.clock,
            play_speed=0,
            **kw,
        )
        self.devices.append(device)
        device.start()
        return device

    def notice(self, title: str, priority: str = "routine") -> int:
        """Queue a notice for the speaker's village and deliver it as the tasks would."""
        sub = service.submit_notice(
            build_notice(
                {
                    "title": title,
                    "body": "请各位村民注意。",
                    "category": "emergency" if priority == "emergency" else "village_affairs",
                    "priority": priority,
                    "targets": {"villages": ["east-wang"]},
                    "channels": ["speaker"],
                }
            ),
            store=self.store,
            registry=load_registry(self.settings.devices),
            ring=None,
        )
        ids = [d.id for d in sub.deliveries]
        prepare_clips(ids, store=self.store, settings=self.settings)  # villagecast.synthesize
        result = service.process_deliveries(
            ids, store=self.store, settings=self.settings, ring=None
        )
        # "sent" when the broker took it; "delivered" when the speaker acked before the
        # worker recorded the publish (the chunk path confirms it in the same step).
        assert list(result.values()) in (["sent"], ["delivered"]), result
        (delivery,) = ids
        return delivery

    def status(self, delivery: int) -> str:
        return self.store.deliveries(ids=[delivery])[0].status

    def details(self, delivery: int) -> dict[str, Any]:
        return self.store.deliveries(ids=[delivery])[0].details or {}

    def advance(self, device: ReferenceDevice, to: int) -> None:
        self.clock.now = float(to)
        device.wake()
        wait_for(lambda: device.player.last_step_at >= to, f"the speaker to see {to}")

    def heard(self, delivery: int, count: int) -> set[int]:
        """Wait until the listener recorded ``count`` plays of a delivery heard in full."""
        deadline = time.monotonic() + WAIT
        while len(found := played_at(self.store, delivery)) < count:
            if time.monotonic() > deadline:
                pytest.fail(f"{count} play(s) of delivery {delivery} not recorded: {found}")
            time.sleep(0.05)
        return found


@pytest.fixture
def line(home: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> Iterator[Line]:
    from dispatcher.feed_server import serve_in_thread

    monkeypatch.setenv("VILLAGECAST_MQTT_URL", mosquitto.url)
    monkeypatch.setenv("VILLAGECAST_TTS_MODE", "offline")
    reset_settings()
    settings = get_settings()
    store = service.open_store(settings)
    server, _ = serve_in_thread(settings, store, lambda: load_registry(settings.devices))
    host, port = server.server_address[:2]
    monkeypatch.setenv("VILLAGECAST_FEED_BASE_URL", f"http://{host}:{port}")
    reset_settings()
    settings = get_settings()
    Keyring.init(settings.keys_dir)
    clock = Clock(day(6))
    monkeypatch.setitem(base._instances, "speaker", SpeakerChannel(clock=clock.utc))
    listener = DeviceListener(settings, store, client_id=f"test-listener-{id(clock)}")
    listener.start()
    assert listener.connected.wait(WAIT)
    line = Line(settings, store, clock, home, mosquitto.port)
    try:
        yield line
    finally:
        for device in line.devices:
            device.stop()
        listener.stop()
        server.shutdown()
        server.server_close()


def test_a_day_at_the_planned_times_then_a_fresh_boot_replays_nothing(line: Line) -> None:
    speaker = line.speaker()
    # 06:00 is inside the quiet hours (21:30-06:30): the "now" play moves to 06:30.
    delivery = line.notice("村民代表大会通知", priority="important")
    plan = [day(6, 30), day(7), day(12), day(18, 30)]
    plan += [day(7, days=2), day(12, days=2), day(18, 30, days=2)]
    details = line.details(delivery)
    assert [int(datetime.fromisoformat(p).timestamp()) for p in details["plays"]] == plan
    assert details["moved_out_of_quiet_hours"] == 1 and details["engine"] == "offline"
    wait_for(lambda: line.status(delivery) == "delivered", "the speaker's acceptance")
    for at in plan[:3]:
        line.advance(speaker, at - 60)  # a minute early: nothing plays
        assert len(speaker.plays) == len(played_at(line.store, delivery)) == plan.index(at)
        line.advance(speaker, at)
        line.heard(delivery, plan.index(at) + 1)
    assert [p[2] for p in speaker.plays] == plan[:3]  # at the planned seconds, not before
    assert line.heard(delivery, 3) == set(plan[:3])

    # 13:00, a power cut wipes the speaker: it comes back with no memory (fresh_boot) and
    # the listener re-sends only what is still to come and was never heard.
    line.clock.now = float(day(13))
    speaker.crash()
    for f in (line.home / "device-state").iterdir():
        f.unlink()
    reborn = line.speaker()
    assert reborn.fresh_boot is True
    sync = wait_for(lambda: list(reborn.showing.values()), "the re-sync")[0]
    assert sync.id.startswith(f"vc-{delivery}-s") and sync.delivery == delivery
    assert sync.body["plays"] == plan[3:]
    assert sync.body["clip"]["sha256"] == details["clip"]  # the same audio as before
    line.advance(reborn, day(18, 30))
    assert line.heard(delivery, 4) == set(plan[:4])
    assert [p[2] for p in reborn.plays] == [day(18, 30)]  # nothing of the morning again
    assert line.status(delivery) == "delivered"


def test_quiet_hours_hold_routine_but_not_an_emergency(line: Line) -> None:
    line.clock.now = float(day(22))
    speaker = line.speaker()
    routine = line.notice("明日停水通知")
    (moved,) = line.details(routine)["plays"]
    assert int(datetime.fromisoformat(moved).timestamp()) == day(6, 30, days=2)
    line.advance(speaker, day(23))
    emergency = line.notice("山洪紧急转移通知", priority="emergency")
    assert line.heard(emergency, 1) == {day(23)}  # at once, quiet hours or not
    line.advance(speaker, day(6, 29, days=2))
    assert [p[0] for p in speaker.plays] == [f"vc-{emergency}"]
    assert played_at(line.store, routine) == set()
    line.advance(speaker, day(6, 30, days=2))
    assert line.heard(routine, 1) == {day(6, 30, days=2)}
    assert [p[2] for p in speaker.plays] == [day(23), day(6, 30, days=2)]


def test_emergency_preempts_a_routine_play_which_is_heard_again_after(line: Line) -> None:
    line.clock.now = float(day(10))
    sink = GateSink()
    speaker = line.speaker(sink=sink)
    routine = line.notice("秋收安排通知")
    sink.wait_on_air(f"vc-{routine}")
    emergency = line.notice("暴雨红色预警", priority="emergency")
    sink.finish(f"vc-{emergency}")
    sink.finish(f"vc-{routine}")
    assert line.heard(emergency, 1) == {day(10)}
    assert line.heard(routine, 1) == {day(10)}
    assert sink.events == [
        ("start", f"vc-{routine}"),
        ("cut", f"vc-{routine}"),
        ("start", f"vc-{emergency}"),
        ("end", f"vc-{emergency}"),
        ("start", f"vc-{routine}"),
        ("end", f"vc-{routine}"),
    ]
    assert speaker.restarted == [(f"vc-{routine}", 1)]
    assert {line.status(routine), line.status(emergency)} == {"delivered"}


def test_synthesis_is_bounded_and_never_holds_up_the_led_boards(
    rig: Rig, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every synthesis slot is held by this process: the worker's synthesis waits, while
    the LED board of the same notice is served by the fan-out worker at once."""
    from contextlib import ExitStack

    from dispatcher.feed_server import serve_in_thread

    server, _ = serve_in_thread(
        rig.settings, rig.store, lambda: load_registry(rig.settings.devices)
    )
    host, port = server.server_address[:2]
    monkeypatch.setenv("VILLAGECAST_FEED_BASE_URL", f"http://{host}:{port}")
    monkeypatch.setenv("VILLAGECAST_TTS_MODE", "offline")
    monkeypatch.setenv("VILLAGECAST_SYNTHESIS_CONCURRENCY", "2")
    reset_settings()
    rig.settings = get_settings()
    board = rig.device("led-east-liu-01")
    speaker = rig.device(SPEAKER, kind="speaker")
    board.start()
    speaker.start()
    slots = synthesis_slots(rig.settings)
    try:
        with ExitStack() as held:
            for _ in range(slots.limit):
                held.enter_context(slots.hold(timeout=5))
            assert slots.busy() == 2
            workers.start()
            nid = rig.submit(
                title="寒潮蓝色预警",
                targets={"villages": ["east-liu", "east-wang"]},
                channels=["led", "speaker"],
            )
            rig.wait(lambda: rig.statuses(nid)["east-liu-led"] == "delivered", "the LED board")
            assert rig.statuses(nid)["east-wang-spk"] == "pending"  # its clip waits for a slot
            assert speaker.clips == {}
        rig.wait(lambda: rig.settled(nid), "the speaker once a slot is free")
    finally:
        server.shutdown()
        server.server_close()
    assert rig.statuses(nid) == {"east-liu-led": "delivered", "east-wang-spk": "delivered"}
    spk = next(d for d in rig.store.deliveries(nid) if d.kind == "speaker")
    # The channel never synthesizes: the synthesis worker made the clip for this notice.
    assert spk.details and (spk.details["engine"], spk.details["cache_hit"]) == ("offline", False)
    assert next(iter(speaker.clips.values()))[:3] == b"ID3"  # real MP3 bytes, hash verified
