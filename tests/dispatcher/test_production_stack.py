"""Production engines: PostgreSQL, Redis and mosquitto, several workers, sweepers and listeners.

Everything here runs as separate processes (as systemd would run them): worker processes
without their own sweeper, a standalone sweeper (or three), the device listener
(`villagecast listen`), against a real PostgreSQL cluster, a real Redis and a real
mosquitto. Side effects are counted where a device or platform would see them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
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
from dispatcher.worker import spawn_worker
from refdevice.device import ReferenceDevice
from tests.conftest import REPO, Mosquitto, many_villages_yaml
from tests.dispatcher.test_worker_integration import Workers
from tests.plugins import read_side_effects

pytestmark = [pytest.mark.slow, pytest.mark.service]


class Processes(Workers):
    """Workers without their own sweeper, plus standalone sweepers and listeners."""

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        return env

    def _log(self, name: str) -> Path:
        return self.home / f"worker-{len(self.procs)}-{name}.log"

    def worker(self, concurrency: int = 2) -> subprocess.Popen[bytes]:
        log = self._log("worker").open("wb")
        self.files.append(log)
        proc = spawn_worker(
            env=self.env(), concurrency=concurrency, sweeper=False, stdout=log, stderr=log
        )
        self.procs.append(proc)
        return proc

    def run(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = self._log(name).open("wb")
        self.files.append(log)
        proc = subprocess.Popen(
            [sys.executable, *args],
            env=self.env(),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def sweeper(self) -> subprocess.Popen[bytes]:
        return self.run("sweeper", "-m", "dispatcher.sweeper")

    def listener(self, instance: str) -> subprocess.Popen[bytes]:
        return self.run("listener", "-m", "cli", "listen", "--instance", instance)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=15)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        for fh in self.files:
            fh.close()


@pytest.fixture
def production(
    home: Path,
    pg_url: str,
    redis_url: str,
    mosquitto: Mosquitto,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[Settings, Store, Processes]]:
    """Settings on PostgreSQL, Redis (its own database number) and mosquitto."""
    devices = home.parent / "county.yaml"
    devices.write_text(many_villages_yaml(40, extra_kinds=True), encoding="utf-8")
    monkeypatch.setenv("VILLAGECAST_DEVICES", str(devices))
    monkeypatch.setenv("VILLAGECAST_DATABASE_URL", pg_url)
    monkeypatch.setenv("VILLAGECAST_BROKER_URL", redis_url.rsplit("/", 1)[0] + "/7")
    monkeypatch.setenv("VILLAGECAST_MQTT_URL", mosquitto.url)
    monkeypatch.setenv("VILLAGECAST_CHANNEL_TV_FEED", "tests.plugins:RecordingChannel")
    monkeypatch.setenv("VILLAGECAST_BATCH_SIZE", "4")
    monkeypatch.setenv("VC_TEST_SLEEP", "0.05")
    reset_settings()
    settings = get_settings()
    home.mkdir(parents=True, exist_ok=True)
    store = service.open_store(settings)
    procs = Processes(home)
    yield settings, store, procs
    procs.stop_all()


def _submit(settings: Settings, store: Store, title: str, channels: list[str]) -> int:
    sub = service.submit_notice(
        build_notice(
            {
                "title": title,
                "body": "今晚有大风降温，请各位村民关好门窗。",
                "category": "emergency",
                "targets": {"county": True},
                "channels": channels,
            }
        ),
        store=store,
        registry=load_registry(settings.devices),
        ring=lambda ids, countdown: ring(ids, settings=settings, countdown=countdown),
    )
    assert sub.rung, sub.ring_error
    return sub.notice.id


def _wait_settled(store: Store, ids: list[int], procs: Processes, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(d.status in TERMINAL for nid in ids for d in store.deliveries(nid)):
            return
        time.sleep(0.2)
    counts = Counter(d.status for nid in ids for d in store.deliveries(nid))
    pytest.fail(f"not settled after {timeout}s: {dict(counts)}\n{procs.logs()[-4000:]}")


def _boards(settings: Settings, home: Path, port: int) -> list[ReferenceDevice]:
    keyring = Keyring.load(settings.keys_dir)
    registry = load_registry(settings.devices)
    return [
        ReferenceDevice(
            device_id=ep.device_id,
            host="127.0.0.1",
            port=port,
            keyring=keyring.public_keys(),
            state_dir=home / "device-state",
            keepalive=5,
        )
        for ep in registry.endpoints.values()
        if isinstance(ep, LedEndpoint)
    ]


def test_county_fan_out_on_production_engines_survives_a_killed_worker(
    production: tuple[Settings, Store, Processes], home: Path, mosquitto: Mosquitto
) -> None:
    settings, store, procs = production
    Keyring.init(settings.keys_dir)
    boards = _boards(settings, home, mosquitto.port)
    for board in boards:
        board.start()
    try:
        first = procs.worker(concurrency=2)
        procs.worker(concurrency=2)
        procs.sweeper()
        procs.listener("a")
        ids = [
            _submit(settings, store, f"大风降温紧急通知{i}", ["tv_feed", "led"]) for i in range(2)
        ]
        total = sum(len(store.deliveries(n)) for n in ids)
        assert total == 160  # 2 notices x 40 villages x (TV feed + LED board)
        deadline = time.monotonic() + 60
        while len(read_side_effects(home)) < 20:
            assert time.monotonic() < deadline, procs.logs()[-3000:]
            time.sleep(0.05)
        procs.kill(first)
        assert len(read_side_effects(home)) < 80, "the fan-out finished before the kill"
        _wait_settled(store, ids, procs, timeout=150)
    finally:
        for board in boards:
            board.stop()

    deliveries = [d for nid in ids for d in store.deliveries(nid)]
    assert {d.status for d in deliveries} == {"delivered"}, Counter(d.status for d in deliveries)
    # TV feeds: every delivery written; only a send in flight in the killed worker (at most
    # one per child process) may have been written twice.
    tv = {d.id for d in deliveries if d.kind == "tv_feed"}
    effects = Counter(read_side_effects(home))
    assert set(effects) == tv
    assert sum(c - 1 for c in effects.values()) <= 2, effects.most_common(3)
    # LED boards: each shows each notice exactly once (a repeated command id is dropped).
    for board in boards:
        assert sorted(s[1] for s in board.shown) == sorted(ids), board.device_id


def test_several_sweepers_and_workers_send_each_delivery_once(
    production: tuple[Settings, Store, Processes], home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three sweepers ringing again every half second over the same store, three workers:
    plenty of duplicate doorbells, and the claims' compare-and-set turns them away."""
    monkeypatch.setenv("VILLAGECAST_REDOORBELL_SECONDS", "0.5")
    monkeypatch.setenv("VILLAGECAST_SWEEP_INTERVAL", "0.1")
    monkeypatch.setenv("VC_TEST_SLEEP", "0.02")
    reset_settings()
    settings, store, procs = production
    for _ in range(3):
        procs.sweeper()
    ids = [_submit(settings, store, f"村务公开{i}", ["tv_feed"]) for i in range(3)]
    for _ in range(3):
        procs.worker(concurrency=2)
    _wait_settled(store, ids, procs, timeout=120)
    deliveries = [d for nid in ids for d in store.deliveries(nid)]
    assert len(deliveries) == 120 and {d.status for d in deliveries} == {"delivered"}
    effects = Counter(read_side_effects(home))
    assert set(effects) == {d.id for d in deliveries}
    assert max(effects.values()) == 1, effects.most_common(3)
    attempts = [a for d in deliveries for a in store.attempts(d.id)]
    assert {a["outcome"] for a in attempts} == {"delivered"}
    assert len(attempts) == len(deliveries)  # nothing claimed twice


def test_two_listeners_record_once_and_resync_a_rebooted_board_once(
    home: Path, pg_url: str, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both listeners receive every ack and state message (plain subscriptions): recording
    is idempotent, and a fresh boot is re-synced by whichever claims it first."""
    monkeypatch.setenv("VILLAGECAST_DATABASE_URL", pg_url)
    monkeypatch.setenv("VILLAGECAST_MQTT_URL", mosquitto.url)
    reset_settings()
    settings = get_settings()
    store = service.open_store(settings)
    keyring = Keyring.init(settings.keys_dir)
    reboots_seen: set[str] = set()
    lock = threading.Lock()

    class Counting(DeviceListener):
        def handle(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
            super().handle(topic, payload, retained=retained)
            if topic.endswith("/state") and payload and json.loads(payload).get("fresh_boot"):
                with lock:
                    reboots_seen.add(self.client_id)

    listeners = [Counting(settings, store, client_id=f"test-listener-{i}") for i in range(2)]
    for listener in listeners:
        listener.start()
    for listener in listeners:
        assert listener.connected.wait(10)

    def device() -> ReferenceDevice:
        return ReferenceDevice(
            device_id="led-east-liu-01",
            host="127.0.0.1",
            port=mosquitto.port,
            keyring=keyring.public_keys(),
            state_dir=home / "device-state",
            keepalive=5,
        )

    def wait(check: object, what: str) -> None:
        deadline = time.monotonic() + 30
        while not check():  # type: ignore[operator]
            assert time.monotonic() < deadline, f"timed out: {what}"
            time.sleep(0.05)

    procs = Processes(home)
    home.mkdir(parents=True, exist_ok=True)
    board = device()
    try:
        board.start()
        procs.worker(concurrency=1)
        nid = _submit(settings, store, "村民大会", ["led"])
        wait(lambda: store.deliveries(nid)[0].status == "delivered", "the ack")
        board.stop()
        for f in (home / "device-state").iterdir():
            f.unlink()  # a power cut wiped the board
        reboots_seen.clear()
        reborn = device()
        reborn.start()
        wait(lambda: len(reborn.shown) == 1, "the re-sync")
        # Both listeners handled the fresh-boot message (and finished with it): count.
        wait(lambda: len(reboots_seen) == 2, "both listeners to handle the reboot")
        syncs = [c for c in store.commands_for(store.deliveries(nid)[0].id) if c["sync"]]
        assert len(syncs) == 1, syncs
        states = [s for s, _, _ in store.presence_history("led-east-liu-01")]
        # online, offline, online again: each transition recorded once, not once per listener.
        assert states == ["online", "offline", "online"], states
        reborn.stop()
    finally:
        for listener in listeners:
            listener.stop()
        procs.stop_all()
