"""The reference loudspeaker against a real mosquitto: plans played at their times on a test
clock, emergency pre-emption with the interrupted play heard again from the start, play
windows (quiet hours), restarts that neither replay nor forget."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from channels.protocol import Ack, encode
from refdevice.device import ReferenceDevice
from refdevice.player import Slot
from tests.refdevice import test_device
from tests.refdevice.test_device import WAIT, Kit, _play_body

# The real mosquitto, the stand-in dispatcher and the clip server of the device tests.
broker = test_device.broker
kit = test_device.kit
clip_server = test_device.clip_server

TZ = ZoneInfo("Asia/Shanghai")


def local(hh: int, mm: int = 0, day: int = 1) -> int:
    return int(datetime(2026, 12, day, hh, mm, tzinfo=TZ).timestamp())


class _Gate:
    def __init__(self, sink: GateSink, slot: Slot, on_end: Callable[[bool], None]) -> None:
        self.sink, self.slot, self.on_end = sink, slot, on_end
        self.ended = False

    def stop(self) -> None:
        self.end(False)

    def end(self, completed: bool) -> None:
        with self.sink.cond:
            if self.ended:
                return
            self.ended = True
            self.sink.events.append(("end" if completed else "cut", self.slot.command.id))
            if self.sink.on_air is self:
                self.sink.on_air = None
            self.sink.cond.notify_all()
        self.on_end(completed)


class GateSink:
    """A sink whose plays last until the test ends them: pre-emption without timing."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.events: list[tuple[str, str]] = []
        self.on_air: _Gate | None = None

    def start(self, slot: Slot, *, seconds: float, on_end: Callable[[bool], None]) -> _Gate:
        gate = _Gate(self, slot, on_end)
        with self.cond:
            self.events.append(("start", slot.command.id))
            self.on_air = gate
            self.cond.notify_all()
        return gate

    def wait_on_air(self, command_id: str) -> _Gate:
        with self.cond:
            ok = self.cond.wait_for(
                lambda: self.on_air is not None and self.on_air.slot.command.id == command_id,
                WAIT,
            )
            assert ok, f"{command_id} never went on air; events: {self.events}"
            assert self.on_air is not None
            return self.on_air

    def finish(self, command_id: str) -> None:
        self.wait_on_air(command_id).end(True)


def wait_until(check: Callable[[], Any], what: str) -> None:
    done = threading.Event()

    def poll() -> None:
        while not done.wait(0.01):
            if check():
                done.set()

    threading.Thread(target=poll, daemon=True).start()
    assert done.wait(WAIT), f"timed out waiting for {what}"


def advance(kit: Kit, device: ReferenceDevice, to: int) -> None:
    """Move the test clock and wait until the player has looked at it."""
    kit.clock.now = float(to)
    device.wake()
    wait_until(lambda: device.player.last_step_at >= to, f"the player to see {to}")


def play_command(kit: Kit, device: str, url: str, data: bytes, plays: list[int], **kw: Any) -> Any:
    body = _play_body(url, data, plays) | kw.pop("body", {})
    kw.setdefault("expires_at", max(plays) + 3600)
    return kit.command(device, kind="speaker.play", body=body, **kw)


def heard(acks: list[Ack], command_id: str) -> list[Ack]:
    return [a for a in acks if a.command == command_id and a.play_at is not None]


def test_plan_plays_at_its_planned_times_on_a_test_clock(
    kit: Kit, clip_server: tuple[str, bytes]
) -> None:
    url, data = clip_server
    kit.clock.now = float(local(6))
    speaker = kit.device("spk-day", kind="speaker", play_speed=0)
    plan = [local(7), local(12), local(18, 30)]
    command = play_command(kit, "spk-day", url, data, plan, command_id="vc-day")
    kit.dispatcher.send("spk-day", encode(command))
    (accepted,) = kit.dispatcher.ack_for("vc-day")
    assert (accepted.detail, accepted.play_at) == ("3 play(s) planned", None)
    for number, at in enumerate(plan, start=1):
        advance(kit, speaker, at - 1)  # one second early: nothing may play yet
        assert len(speaker.plays) == number - 1
        advance(kit, speaker, at)
        acks = kit.dispatcher.ack_for("vc-day", count=1 + number)
        ack = heard(acks, "vc-day")[-1]
        # Played at the planned second, not before: the device clock was one second short
        # when the player looked the time before.
        assert (ack.play_at, ack.at, ack.detail) == (at, at, f"play {number}/3")
    assert [p[2] for p in speaker.plays] == plan


def test_emergency_preempts_and_the_interrupted_play_is_heard_again_from_the_start(
    kit: Kit, clip_server: tuple[str, bytes]
) -> None:
    url, data = clip_server
    sink = GateSink()
    speaker = kit.device("spk-pre", kind="speaker", sink=sink)
    now = int(kit.clock())
    routine = play_command(kit, "spk-pre", url, data, [now], command_id="vc-r", delivery=1)
    important = play_command(
        kit,
        "spk-pre",
        url,
        data,
        [now],
        command_id="vc-i",
        delivery=2,
        notice=2,
        priority="important",
    )
    emergency = play_command(
        kit,
        "spk-pre",
        url,
        data,
        [now],
        command_id="vc-e",
        delivery=3,
        notice=3,
        priority="emergency",
    )
    kit.dispatcher.send("spk-pre", encode(routine))
    sink.wait_on_air("vc-r")
    # An important notice does not interrupt: it waits for the routine one to end.
    kit.dispatcher.send("spk-pre", encode(important))
    kit.dispatcher.ack_for("vc-i")
    wait_until(lambda: [s.command.id for s in speaker.player.pending] == ["vc-i"], "queued")
    assert sink.on_air is not None and sink.on_air.slot.command.id == "vc-r"
    # An emergency does: the routine play is cut, the emergency goes on air at once.
    kit.dispatcher.send("spk-pre", encode(emergency))
    sink.finish("vc-e")
    sink.finish("vc-i")  # then the rest by priority...
    sink.finish("vc-r")  # ...and the interrupted play again, from its start
    acks = kit.dispatcher.ack_for("vc-r", count=2)
    assert sink.events == [
        ("start", "vc-r"),
        ("cut", "vc-r"),
        ("start", "vc-e"),
        ("end", "vc-e"),
        ("start", "vc-i"),
        ("end", "vc-i"),
        ("start", "vc-r"),
        ("end", "vc-r"),
    ]
    (routine_heard,) = heard(acks, "vc-r")  # one ack: the play heard in full, not the cut
    assert routine_heard.play_at == now
    assert routine_heard.detail == (
        "play 1/1, played again from the start after an emergency interrupted it"
    )
    assert heard(kit.dispatcher.ack_for("vc-e", count=2), "vc-e")[0].detail == "play 1/1"
    assert [p[0] for p in speaker.plays] == ["vc-e", "vc-i", "vc-r"]
    assert speaker.restarted == [("vc-r", 1)]


def test_a_play_pushed_past_its_window_is_dropped_not_played_in_quiet_hours(
    kit: Kit, clip_server: tuple[str, bytes]
) -> None:
    url, data = clip_server
    sink = GateSink()
    kit.clock.now = float(local(21, 20))
    speaker = kit.device("spk-win", kind="speaker", sink=sink)
    # The dispatcher planned 21:25 with five minutes to spare before the quiet hours.
    routine = play_command(
        kit, "spk-win", url, data, [local(21, 25)], command_id="vc-r", body={"window_s": 300}
    )
    emergency = play_command(
        kit,
        "spk-win",
        url,
        data,
        [local(21, 24)],
        command_id="vc-e",
        delivery=2,
        notice=2,
        priority="emergency",
    )
    kit.dispatcher.send("spk-win", encode(routine))
    kit.dispatcher.send("spk-win", encode(emergency))
    kit.dispatcher.ack_for("vc-e")
    kit.dispatcher.ack_for("vc-r")
    advance(kit, speaker, local(21, 24))
    sink.wait_on_air("vc-e")
    advance(kit, speaker, local(21, 31))  # a long emergency: the routine play missed 21:30
    sink.finish("vc-e")
    wait_until(lambda: speaker._done.get("vc-r") == [local(21, 25)], "the routine play dropped")
    advance(kit, speaker, local(21, 40))
    assert sink.events == [("start", "vc-e"), ("end", "vc-e")]
    assert [p[0] for p in speaker.plays] == ["vc-e"]
    assert heard(kit.dispatcher.acks, "vc-r") == []


def test_restart_with_memory_resumes_the_plan_and_plays_only_the_latest_missed_play(
    kit: Kit, clip_server: tuple[str, bytes]
) -> None:
    url, data = clip_server
    kit.clock.now = float(local(6, 50))
    speaker = kit.device("spk-mem", kind="speaker", play_speed=0)
    plan = [local(7), local(12), local(18, 30)]
    command = play_command(
        kit, "spk-mem", url, data, plan, command_id="vc-m", body={"window_s": 3600}
    )
    kit.dispatcher.send("spk-mem", encode(command))
    kit.dispatcher.ack_for("vc-m")
    advance(kit, speaker, local(7))
    kit.dispatcher.ack_for("vc-m", count=2)
    speaker.stop()  # off from 07:00 to 18:45: missed 12:00 and 18:30
    kit.clock.now = float(local(18, 45))
    speaker.start()
    assert speaker.fresh_boot is False
    acks = kit.dispatcher.ack_for("vc-m", count=3)
    assert [(a.play_at, a.at) for a in heard(acks, "vc-m")] == [
        (local(7), local(7)),
        (local(18, 30), local(18, 45)),  # the latest missed play, once, inside its window
    ]
    assert speaker._done["vc-m"] == [local(7), local(12), local(18, 30)]
    # Restarting again replays nothing.
    speaker.stop()
    speaker.start()
    advance(kit, speaker, local(19))
    assert [p[2] for p in speaker.plays] == [local(7), local(18, 45)]


def test_stop_cuts_the_play_on_air_and_drops_the_rest(
    kit: Kit, clip_server: tuple[str, bytes]
) -> None:
    url, data = clip_server
    sink = GateSink()
    speaker = kit.device("spk-stop", kind="speaker", sink=sink)
    now = int(kit.clock())
    kit.dispatcher.send(
        "spk-stop",
        encode(play_command(kit, "spk-stop", url, data, [now, now + 60], command_id="vc-s")),
    )
    sink.wait_on_air("vc-s")
    stop = kit.command("spk-stop", command_id="vc-x", kind="speaker.stop", body={"notice": 1})
    kit.dispatcher.send("spk-stop", encode(stop))
    (ack,) = kit.dispatcher.ack_for("vc-x")
    assert (ack.status, ack.detail) == ("stopped", "removed 1")
    assert sink.events == [("start", "vc-s"), ("cut", "vc-s")]
    assert speaker.player.pending == [] and speaker.showing == {}
    advance(kit, speaker, now + 120)
    assert speaker.plays == [] and heard(kit.dispatcher.acks, "vc-s") == []


@pytest.mark.parametrize(
    ("body", "why"),
    [({"window_s": -1}, "window_s"), ({"window_s": "300"}, "window_s")],
)
def test_bad_play_window_is_malformed(
    kit: Kit, clip_server: tuple[str, bytes], body: dict[str, Any], why: str
) -> None:
    url, data = clip_server
    kit.device("spk-bad", kind="speaker")
    now = int(kit.clock())
    command = play_command(kit, "spk-bad", url, data, [now], command_id="vc-b", body=body)
    kit.dispatcher.send("spk-bad", encode(command))
    (ack,) = kit.dispatcher.ack_for("vc-b")
    assert (ack.status, ack.reason) == ("rejected", "malformed") and why in (ack.detail or "")
