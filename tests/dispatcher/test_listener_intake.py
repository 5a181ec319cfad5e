"""The device listener's MQTT intake: it keeps up while the listener's own process is busy,
hands every message over intact, and comes back if its process dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from content_queue.settings import Settings
from content_queue.store import Store
from dispatcher.acks import DeviceListener
from dispatcher.mqtt_intake import frame, frames
from tests.conftest import Mosquitto

PREFIX = "vc/v1"

# Publishes ``count`` QoS 1 messages from 20 devices in bursts of 50 every 0.1 s (500 a
# second), in a process of its own so the test's busy thread does not slow it down.
PUBLISHER = """
import sys, time
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
port, count, prefix = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
clients = []
for i in range(20):
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{i}", protocol=mqtt.MQTTv311)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    clients.append(c)
infos = []
for k in range(count):
    infos.append(clients[k % 20].publish(f"{prefix}/dev/led-{k % 20}/ack", f"n-{k}", qos=1))
    if k % 50 == 49:
        time.sleep(0.1)
for info in infos:
    info.wait_for_publish(60)
"""


class Collecting(DeviceListener):
    """Keeps what the intake handed over instead of recording it."""

    def __init__(self, settings: Settings, store: Store, client_id: str) -> None:
        super().__init__(settings, store, client_id=client_id)
        self.received: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()

    def handle_many(self, messages: Sequence[tuple[str, bytes, bool]]) -> None:
        with self.lock:
            self.received.extend(messages)

    def count(self) -> int:
        with self.lock:
            return len(self.received)


def _listener(tmp_path: Path, mosquitto: Mosquitto, request: pytest.FixtureRequest) -> Collecting:
    settings = Settings(home=tmp_path / "home", mqtt_url=mosquitto.url, mqtt_prefix=PREFIX)
    store = Store(f"sqlite:///{tmp_path / 'vc.db'}")
    request.addfinalizer(store.engine.dispose)
    request.addfinalizer(store.read_engine.dispose)
    listener = Collecting(settings, store, client_id=f"test-intake-{os.getpid()}")
    listener.start()
    request.addfinalizer(listener.stop)
    assert listener.connected.wait(15), "the listener did not connect"
    return listener


def _wait(check: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.05)


def test_a_busy_listener_process_does_not_make_mosquitto_drop_acks(
    mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # A small queue, so falling 120 messages behind means losing acks.
    mosquitto.stop()
    with mosquitto.conf.open("a", encoding="utf-8") as conf:
        conf.write("max_queued_messages 100\nmax_inflight_messages 20\nlog_type notice\n")
    mosquitto.start()
    listener = _listener(tmp_path, mosquitto, request)
    # A thread that keeps the GIL busy, as the listener's database work, the dashboard or
    # the sweeper do in `villagecast up`. With paho in this process, its eight system calls
    # per message each waited for this thread: about a hundred messages a second.
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            sum(range(10_000))

    hog = threading.Thread(target=busy, daemon=True)
    hog.start()
    request.addfinalizer(stop.set)
    count = 2000
    subprocess.run(
        [sys.executable, "-c", PUBLISHER, str(mosquitto.port), str(count), PREFIX],
        check=True,
        timeout=120,
    )
    try:
        _wait(lambda: listener.count() >= count, f"{count} acks handed over", timeout=60)
    finally:
        stop.set()
    log = (mosquitto.workdir / "mosquitto.log").read_text(errors="replace")
    assert "dropped" not in log, log
    got = {(topic, payload) for topic, payload, _ in listener.received}
    assert got == {(f"{PREFIX}/dev/led-{k % 20}/ack", f"n-{k}".encode()) for k in range(count)}


def test_the_intake_comes_back_after_its_process_dies(
    mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    listener = _listener(tmp_path, mosquitto, request)
    first = listener._proc
    assert first is not None
    os.kill(first.pid, signal.SIGKILL)
    _wait(lambda: listener._proc is not first and listener.connected.is_set(), "a new intake")
    subprocess.run(
        [sys.executable, "-c", PUBLISHER, str(mosquitto.port), "20", PREFIX],
        check=True,
        timeout=60,
    )
    _wait(lambda: listener.count() >= 20, "acks after the restart")


def test_frames_survive_any_split() -> None:
    sent = [
        (b"M", f"{PREFIX}/dev/led-1/ack", b'{"v":1}', False),
        (b"C", "", b"", False),
        (b"M", f"{PREFIX}/dev/喇叭-2/state", "在线".encode(), True),
        (b"W", "", b"listener: broker refused the connection", False),
        (b"M", f"{PREFIX}/dev/led-3/ack", b"x" * 70_000, False),
    ]
    stream = b"".join(frame(k, t, p, r) for k, t, p, r in sent)
    for step in (1, 7, 4096, len(stream)):
        buffer = bytearray()
        got = []
        for i in range(0, len(stream), step):
            buffer += stream[i : i + step]
            got += list(frames(buffer))
        assert got == sent
        assert not buffer
