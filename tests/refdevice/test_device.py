"""The reference device against a real mosquitto: acks, every rejection, duplicates, presence."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from channels.keys import Keyring, SigningKey, key_id_for
from channels.protocol import (
    MAX_PAYLOAD_BYTES,
    Ack,
    Command,
    DeviceState,
    encode,
    parse_topic,
    sign_command,
    topic_cmd,
)
from refdevice.device import DeviceConnectionError, ReferenceDevice, simulate

REPO = Path(__file__).resolve().parents[2]
PREFIX = "vc/v1"
MOSQUITTO = "/usr/sbin/mosquitto"
WAIT = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """A real mosquitto 2.x on a free loopback port (anonymous: the ACL is tested elsewhere)."""
    if not os.path.exists(MOSQUITTO):
        if os.environ.get("VILLAGECAST_REQUIRE_SERVICES"):
            pytest.fail(f"{MOSQUITTO} is not installed (scripts/dev setup installs it)")
        pytest.skip(f"{MOSQUITTO} is not installed; `scripts/dev setup` installs it")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "log_dest stderr\nlog_type error\nlog_type warning\n",
        encoding="utf-8",
    )
    with (tmp_path / "mosquitto.log").open("wb") as log:
        proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        pytest.fail(
                            "mosquitto did not start: "
                            + (tmp_path / "mosquitto.log").read_text(errors="replace")
                        )
                    time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=WAIT)


@dataclass
class Dispatcher:
    """Stands in for the dispatcher: publishes commands, collects acks and states."""

    port: int
    acks: list[Ack] = field(default_factory=list)
    states: list[tuple[DeviceState | None, bool]] = field(default_factory=list)
    cond: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        self.client.connect("127.0.0.1", self.port, 10)
        self.client.loop_start()
        self.client.subscribe([(f"{PREFIX}/dev/+/ack", 1), (f"{PREFIX}/dev/+/state", 1)])
        assert subscribed.wait(WAIT)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        parsed = parse_topic(PREFIX, msg.topic)
        assert parsed is not None
        with self.cond:
            if parsed[1] == "ack":
                self.acks.append(Ack.model_validate_json(msg.payload))
            elif parsed[1] == "state":
                state = DeviceState.model_validate_json(msg.payload) if msg.payload else None
                self.states.append((state, bool(msg.retain)))
            self.cond.notify_all()

    def send(self, device_id: str, payload: bytes, *, retain: bool = False) -> None:
        info = self.client.publish(topic_cmd(PREFIX, device_id), payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT)

    def wait(self, check: Callable[[], Any], what: str) -> Any:
        with self.cond:
            if not self.cond.wait_for(check, WAIT):
                pytest.fail(f"timed out waiting for {what}; acks={self.acks} states={self.states}")
            return check()

    def ack_for(self, command_id: str, count: int = 1) -> list[Ack]:
        def enough() -> list[Ack] | None:
            found = [a for a in self.acks if a.command == command_id]
            return found if len(found) >= count else None

        acks: list[Ack] = self.wait(enough, f"{count} ack(s) for {command_id!r}")
        return acks

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_state(port: int, device_id: str) -> DeviceState:
    """What a newcomer (e.g. a restarted dispatcher) sees on the device's state topic."""
    got: list[DeviceState] = []
    event = threading.Event()

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain and msg.payload:
            got.append(DeviceState.model_validate_json(msg.payload))
            event.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.on_message = on_message
    client.connect("127.0.0.1", port, 10)
    client.loop_start()
    try:
        client.subscribe(f"{PREFIX}/dev/{device_id}/state", 1)
        assert event.wait(WAIT), f"no retained state for {device_id}"
        return got[0]
    finally:
        client.disconnect()
        client.loop_stop()


class Clock:
    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


@dataclass
class Kit:
    port: int
    key: SigningKey
    state_dir: Path
    dispatcher: Dispatcher
    clock: Clock
    devices: list[ReferenceDevice] = field(default_factory=list)

    def device(self, device_id: str, *, start: bool = True, **kw: Any) -> ReferenceDevice:
        kw.setdefault("keepalive", 5)
        device = ReferenceDevice(
            device_id=device_id,
            host="127.0.0.1",
            port=self.port,
            keyring={self.key.key_id: self.key.public},
            state_dir=self.state_dir,
            prefix=PREFIX,
            clock=self.clock,
            **kw,
        )
        self.devices.append(device)
        if start:
            device.start()
        return device

    def command(self, device_id: str, key: SigningKey | None = None, **kw: Any) -> Command:
        now = int(self.clock())
        fields: dict[str, Any] = {
            "command_id": "vc-1",
            "device": device_id,
            "notice": 1,
            "revision": 1,
            "delivery": 1,
            "kind": "led.show",
            "priority": "routine",
            "issued_at": now,
            "expires_at": now + 3600,
            "body": {"title": "停水通知", "pages": [{"lines": ["明天停水"], "ms": 4000}]},
        }
        fields.update(kw)
        return sign_command(key=key or self.key, **fields)


@pytest.fixture
def kit(broker: int, tmp_path: Path) -> Iterator[Kit]:
    private = Ed25519PrivateKey.generate()
    dispatcher = Dispatcher(broker)
    kit = Kit(
        port=broker,
        key=SigningKey(key_id_for(private.public_key()), private),
        state_dir=tmp_path / "devices",
        dispatcher=dispatcher,
        clock=Clock(),
    )
    yield kit
    for device in kit.devices:
        device.stop()
    dispatcher.close()


# -- acting and acking ------------------------------------------------------------------


def test_shows_and_acks(kit: Kit) -> None:
    device = kit.device("led-a")
    command = kit.command("led-a", command_id="vc-7", delivery=7, notice=3)
    kit.dispatcher.send("led-a", encode(command))
    (ack,) = kit.dispatcher.ack_for("vc-7")
    assert (ack.status, ack.reason, ack.delivery, ack.device) == ("shown", None, 7, "led-a")
    assert ack.at == int(kit.clock())
    assert device.shown == [("vc-7", 3, 7)]
    assert list(device.showing) == ["vc-7"]
    assert device.rejections == []


def tamper(payload: bytes) -> bytes:
    at = payload.index("明天".encode())
    return payload[:at] + bytes([payload[at] ^ 0x01]) + payload[at + 1 :]


REJECTIONS: dict[str, Callable[[Kit], bytes]] = {
    "bad_signature": lambda k: tamper(encode(k.command("led-r"))),
    "bad_signature:other key": lambda k: encode(
        k.command("led-r", key=SigningKey(k.key.key_id, Ed25519PrivateKey.generate()))
    ),
    "unknown_key": lambda k: encode(
        k.command("led-r", key=Keyring.init(k.state_dir.parent / "other").active())
    ),
    "wrong_device": lambda k: encode(k.command("led-other")),
    "expired": lambda k: encode(
        k.command("led-r", issued_at=int(k.clock()) - 120, expires_at=int(k.clock()))
    ),
    "clock_skew": lambda k: encode(
        k.command("led-r", issued_at=int(k.clock()) + 3600, expires_at=int(k.clock()) + 7200)
    ),
    "malformed": lambda k: b'{"v": 1, "id": "vc-1", "kind": "led.show", "body": 1.5}',
    "malformed:oversized": lambda k: encode(k.command("led-r")) + b" " * MAX_PAYLOAD_BYTES,
    "unsupported": lambda k: encode(k.command("led-r", kind="speaker.play")),
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_rejections_end_to_end(kit: Kit, case: str) -> None:
    device = kit.device("led-r")
    kit.dispatcher.send("led-r", REJECTIONS[case](kit))
    command_id = "" if case == "malformed:oversized" else "vc-1"  # too big to even parse
    (ack,) = kit.dispatcher.ack_for(command_id)
    reason = case.split(":")[0]
    assert (ack.status, ack.reason) == ("rejected", reason), ack
    assert device.rejections == [(command_id, reason)]
    assert device.shown == [] and device.showing == {}
    # Only a verified command's delivery is echoed back.
    verified = reason in ("wrong_device", "expired", "clock_skew", "unsupported")
    assert (ack.delivery is not None) == verified


def test_unparseable_payload_is_acked_with_an_empty_id(kit: Kit) -> None:
    device = kit.device("led-r")
    kit.dispatcher.send("led-r", b"\x00not json")
    (ack,) = kit.dispatcher.ack_for("")
    assert (ack.status, ack.reason) == ("rejected", "malformed")
    assert device.rejections == [("", "malformed")]


def test_retained_command_is_refused(kit: Kit) -> None:
    kit.dispatcher.send("led-ret", encode(kit.command("led-ret")), retain=True)
    device = kit.device("led-ret")  # subscribes after: gets it with the retain flag
    (ack,) = kit.dispatcher.ack_for("vc-1")
    assert (ack.status, ack.reason) == ("rejected", "unsupported")
    assert device.shown == []


def test_duplicate_is_shown_once_and_acked_twice(kit: Kit) -> None:
    device = kit.device("led-d")
    payload = encode(kit.command("led-d"))
    kit.dispatcher.send("led-d", payload)
    kit.dispatcher.ack_for("vc-1")
    kit.clock.now += 30
    resent = encode(kit.command("led-d"))  # the outbox re-signs a re-send under the same id
    kit.dispatcher.send("led-d", resent)
    first, second = kit.dispatcher.ack_for("vc-1", 2)
    assert first.status == second.status == "shown"
    assert second.reason is None and "duplicate" in (second.detail or "")
    assert device.shown == [("vc-1", 1, 1)]
    assert device.rejections == [("vc-1", "replayed")]


def test_state_survives_a_restart_without_replay(kit: Kit) -> None:
    device = kit.device("led-p")
    payload = encode(kit.command("led-p", priority="important"))
    kit.dispatcher.send("led-p", payload)
    kit.dispatcher.ack_for("vc-1")
    device.stop()
    assert (kit.state_dir / "led-p.json").exists()
    device.start()
    assert device.fresh_boot is False
    assert retained_state(kit.port, "led-p").showing == ["vc-1"]
    kit.dispatcher.send("led-p", payload)
    kit.dispatcher.ack_for("vc-1", 2)
    assert device.shown == [("vc-1", 1, 1)]
    assert list(device.showing) == ["vc-1"]
    again = kit.device("led-p", start=False)  # a new process reading the same state dir
    again._load()
    assert list(again.showing) == ["vc-1"]


def test_offline_device_gets_queued_commands_or_expired(kit: Kit) -> None:
    device = kit.device("led-o")
    device.stop()  # the persistent session keeps its subscription
    soon = kit.command("led-o", command_id="vc-soon", delivery=2, expires_at=int(kit.clock()) + 60)
    later = kit.command("led-o", command_id="vc-later", delivery=3)
    kit.dispatcher.send("led-o", encode(soon))
    kit.dispatcher.send("led-o", encode(later))
    kit.clock.now += 600  # back ten minutes later: one expired, the other still valid
    device.start()
    (ack_soon,) = kit.dispatcher.ack_for("vc-soon")
    (ack_later,) = kit.dispatcher.ack_for("vc-later")
    assert (ack_soon.status, ack_soon.reason) == ("rejected", "expired")
    assert (ack_later.status, ack_later.reason) == ("shown", None)
    assert device.shown == [("vc-later", 1, 3)]


# -- what the board shows ---------------------------------------------------------------


def test_emergency_first_clear_and_expiry(kit: Kit) -> None:
    device = kit.device("led-s")
    now = int(kit.clock())
    routine = kit.command("led-s", command_id="vc-r", notice=1, delivery=1)
    emergency = kit.command(
        "led-s", command_id="vc-e", notice=2, delivery=2, priority="emergency", expires_at=now + 60
    )
    kit.dispatcher.send("led-s", encode(routine))
    kit.dispatcher.send("led-s", encode(emergency))
    kit.dispatcher.ack_for("vc-e")
    kit.dispatcher.ack_for("vc-r")
    assert list(device.showing) == ["vc-e", "vc-r"]
    kit.clock.now += 60  # the emergency expires: back to routine content
    assert list(device.showing) == ["vc-r"]
    clear = kit.command(
        "led-s", command_id="vc-c", kind="led.clear", notice=1, delivery=1, body={"notice": 1}
    )
    kit.dispatcher.send("led-s", encode(clear))
    (ack,) = kit.dispatcher.ack_for("vc-c")
    assert (ack.status, ack.detail) == ("cleared", "removed 1")
    assert device.showing == {}
    bad = kit.command("led-s", command_id="vc-bad", kind="led.clear", body={"all": True})
    kit.dispatcher.send("led-s", encode(bad))
    (ack,) = kit.dispatcher.ack_for("vc-bad")
    assert (ack.status, ack.reason) == ("rejected", "malformed")


def test_fresh_boot_sync_shows_again_but_never_twice(kit: Kit) -> None:
    device = kit.device("led-f")
    assert retained_state(kit.port, "led-f").fresh_boot is True
    kit.dispatcher.send("led-f", encode(kit.command("led-f", delivery=9)))
    kit.dispatcher.ack_for("vc-1")
    # A sync for a delivery already on show (new id) is acked, not shown a second time.
    kit.dispatcher.send("led-f", encode(kit.command("led-f", command_id="vc-1-s1", delivery=9)))
    (ack,) = kit.dispatcher.ack_for("vc-1-s1")
    assert ack.status == "shown" and "already showing" in (ack.detail or "")
    assert len(device.shown) == 1 and list(device.showing) == ["vc-1-s1"]
    # Power loss on a board without storage: the memory is gone, the board says so.
    device.crash()
    (kit.state_dir / "led-f.json").unlink()
    device.start()
    assert device.fresh_boot is True
    births = kit.dispatcher.wait(
        lambda: [s for s, _ in kit.dispatcher.states if s and s.state == "online"][1:] or None,
        "the second birth",
    )
    assert births[-1].fresh_boot is True and births[-1].showing == []
    kit.dispatcher.send("led-f", encode(kit.command("led-f", command_id="vc-1-s2", delivery=9)))
    kit.dispatcher.ack_for("vc-1-s2")
    assert [entry[0] for entry in device.shown] == ["vc-1", "vc-1-s2"]


def test_newer_revision_replaces_older_and_late_old_one_is_not_shown(kit: Kit) -> None:
    device = kit.device("led-v")
    v2 = kit.command("led-v", command_id="vc-2", notice=5, revision=2, delivery=2)
    v1 = kit.command("led-v", command_id="vc-1", notice=5, revision=1, delivery=1)
    v3 = kit.command("led-v", command_id="vc-3", notice=5, revision=3, delivery=3)
    for command in (v2, v1, v3):
        kit.dispatcher.send("led-v", encode(command))
        kit.dispatcher.ack_for(command.id)
    assert [entry[0] for entry in device.shown] == ["vc-2", "vc-3"]
    assert list(device.showing) == ["vc-3"]


@pytest.fixture
def clip_server() -> Iterator[tuple[str, bytes]]:
    """Serves one clip at /audio/<sha>.mp3, like the dispatcher's clip service."""
    import hashlib
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    data = b"ID3" + bytes(range(256)) * 8
    digest = hashlib.sha256(data).hexdigest()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            ok = self.path == f"/audio/{digest}.mp3"
            self.send_response(200 if ok else 404)
            self.send_header("Content-Length", str(len(data) if ok else 0))
            self.end_headers()
            if ok:
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/audio/{digest}.mp3", data
    server.shutdown()
    server.server_close()


def _play_body(url: str, data: bytes, plays: list[int]) -> dict[str, Any]:
    import hashlib

    return {
        "clip": {"url": url, "sha256": hashlib.sha256(data).hexdigest(), "format": "mp3"},
        "repeat": 2,
        "plays": plays,
    }


def test_speaker_plays_once_per_delivery_and_refuses_led_commands(
    kit: Kit, clip_server: tuple[str, bytes]
) -> None:
    url, data = clip_server
    speaker = kit.device("spk-1", kind="speaker")
    now = int(kit.clock())
    body = _play_body(url, data, [now])
    play = kit.command("spk-1", command_id="vc-p", kind="speaker.play", body=body)
    kit.dispatcher.send("spk-1", encode(play))
    acks = kit.dispatcher.ack_for("vc-p", count=2)  # the command accepted, its play heard
    accepted, heard = sorted(acks, key=lambda a: a.play_at or 0)
    assert (accepted.status, accepted.play_at, accepted.detail) == (
        "played",
        None,
        "1 play(s) planned",
    )
    assert (heard.status, heard.play_at, heard.detail) == ("played", now, "play 1/1")
    assert speaker.clips["vc-p"] == data
    sync = kit.command("spk-1", command_id="vc-p-s1", kind="speaker.play", body=body)
    kit.dispatcher.send("spk-1", encode(sync))
    (ack,) = kit.dispatcher.ack_for("vc-p-s1")
    assert ack.status == "played" and "already played" in (ack.detail or "")
    assert speaker.shown == [("vc-p", 1, 1)]
    stop = kit.command("spk-1", command_id="vc-x", kind="speaker.stop", body={"command": "vc-p"})
    kit.dispatcher.send("spk-1", encode(stop))
    assert kit.dispatcher.ack_for("vc-x")[0].status == "stopped"
    assert speaker.showing == {}
    kit.dispatcher.send("spk-1", encode(kit.command("spk-1", command_id="vc-led")))
    (ack,) = kit.dispatcher.ack_for("vc-led")
    assert (ack.status, ack.reason) == ("rejected", "unsupported")


def test_speaker_refuses_a_clip_whose_hash_does_not_match(
    kit: Kit, clip_server: tuple[str, bytes]
) -> None:
    url, data = clip_server
    speaker = kit.device("spk-2", kind="speaker")
    body = _play_body(url, data + b"tampered", [int(kit.clock())])
    kit.dispatcher.send(
        "spk-2", encode(kit.command("spk-2", command_id="vc-h", kind="speaker.play", body=body))
    )
    (ack,) = kit.dispatcher.ack_for("vc-h")
    assert (ack.status, ack.reason) == ("rejected", "bad_clip")
    assert speaker.shown == []


def test_speaker_plays_later_slots_of_its_plan(kit: Kit, clip_server: tuple[str, bytes]) -> None:
    url, data = clip_server
    speaker = kit.device("spk-3", kind="speaker")
    now = int(kit.clock())
    body = _play_body(url, data, [now, now + 2])
    kit.dispatcher.send(
        "spk-3", encode(kit.command("spk-3", command_id="vc-2x", kind="speaker.play", body=body))
    )
    kit.dispatcher.ack_for("vc-2x", count=2)  # accepted, and the first play heard
    kit.clock.now += 2
    speaker.wake()
    acks = sorted(kit.dispatcher.ack_for("vc-2x", count=3), key=lambda a: a.play_at or 0)
    assert [a.status for a in acks] == ["played"] * 3
    assert [(a.detail, a.play_at) for a in acks] == [
        ("2 play(s) planned", None),
        ("play 1/2", now),
        ("play 2/2", now + 2),
    ]
    assert [p[1] for p in speaker.plays] == [1, 2]


# -- presence ---------------------------------------------------------------------------


def test_presence_online_offline_and_will(kit: Kit) -> None:
    device = kit.device("led-w", firmware="fw/9")
    online = retained_state(kit.port, "led-w")
    assert (online.state, online.fresh_boot, online.firmware) == ("online", True, "fw/9")
    assert online.capabilities == ["led.show", "led.clear"]
    device.stop()
    offline = retained_state(kit.port, "led-w")
    assert (offline.state, offline.fresh_boot) == ("offline", False)
    device.start()
    assert retained_state(kit.port, "led-w").state == "online"
    device.crash()  # no DISCONNECT: mosquitto publishes the will
    will = kit.dispatcher.wait(
        lambda: [s for s, _ in kit.dispatcher.states if s and s.state == "offline"][1:] or None,
        "the Last Will",
    )[-1]
    assert retained_state(kit.port, "led-w").state == "offline"
    births = [s for s, _ in kit.dispatcher.states if s and s.state == "online"]
    assert will.at >= births[-1].at  # never older than the birth it follows


def test_start_fails_clearly_without_a_broker(tmp_path: Path) -> None:
    device = ReferenceDevice(
        device_id="led-x",
        host="127.0.0.1",
        port=_free_port(),
        keyring={},
        state_dir=tmp_path,
    )
    with pytest.raises(DeviceConnectionError) as info:
        device.start(timeout=2)
    assert "led-x" in info.value.render("en") and "led-x" in info.value.render("zh")


# -- simulate() and the command line ----------------------------------------------------


def test_simulate_starts_and_stops_many(kit: Kit) -> None:
    devices = [kit.device(f"sim-{i}", start=False) for i in range(3)]
    until = threading.Event()
    runner = threading.Thread(target=simulate, args=(devices,), kwargs={"until": until})
    runner.start()
    try:
        kit.dispatcher.wait(
            lambda: (
                {s.device for s, _ in kit.dispatcher.states if s and s.state == "online"}
                >= {"sim-0", "sim-1", "sim-2"}
                or None
            ),
            "three births",
        )
    finally:
        until.set()
        runner.join(WAIT)
    assert not runner.is_alive()
    for i in range(3):
        assert retained_state(kit.port, f"sim-{i}").state == "offline"


def test_command_line_device(kit: Kit, tmp_path: Path) -> None:
    keys = Keyring.init(tmp_path / "keys")
    kit.key = keys.active()
    (tmp_path / "public.json").write_text(json.dumps(keys.export_public()), encoding="utf-8")
    env = {**os.environ, "VC_TEST_DEVICE_PASSWORD": "unused-anonymous-broker"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "refdevice.device",
            *("--device", "led-cli", "--host", "127.0.0.1", "--port", str(kit.port)),
            *("--keyring", str(tmp_path / "public.json"), "--state-dir", str(tmp_path / "st")),
            *("--username", "led-cli", "--password-env", "VC_TEST_DEVICE_PASSWORD"),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        kit.dispatcher.wait(
            lambda: any(s and s.device == "led-cli" for s, _ in kit.dispatcher.states) or None,
            "the command-line device's birth",
        )
        kit.clock.now = float(int(time.time()))
        kit.dispatcher.send("led-cli", encode(kit.command("led-cli")))
        (ack,) = kit.dispatcher.ack_for("vc-1")
        assert ack.status == "shown"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, out.decode()
    log = out.decode()
    assert "led-cli shows notice 1 rev 1" in log and "停水通知" in log
    assert "unused-anonymous-broker" not in log
    assert retained_state(kit.port, "led-cli").state == "offline"
    assert (tmp_path / "st" / "led-cli.json").exists()
