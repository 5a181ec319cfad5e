"""The chaos suite: fan-outs under SIGKILLed workers, broker restarts, poison and vendor faults.

    python bench/chaos.py [--scenario NAME ...] [--full] [--broker embedded|redis|both]

Each scenario runs on loopback only (a temporary data directory, real Celery worker
processes, a real mosquitto and redis-server, reference LED boards, the WeCom stand-in),
and returns counts, not just pass/fail: deliveries expected, delivered, sent (tv feed
written, not fetched), expired, failed (by reason), lost (never settled, or confirmed
without its side effect), duplicated side effects counted where they happen (the same
notice shown twice on one board; the same message part accepted twice by one WeCom
robot; the same entry twice in a feed) and the seconds until everything was terminal.
``tests/chaos/test_chaos.py`` runs the bounded form of each and asserts the guarantees;
the figures of a run go to docs/reliability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.led import MOSQUITTO, BenchError, _free_port, _wait_port, redis_server  # noqa: E402

__all__ = ["SCENARIOS", "Result", "main", "run_scenario"]

KINDS = ("tv_feed", "led", "wecom_group")


@dataclass
class Result:
    """The counts of one scenario run."""

    scenario: str
    broker: str
    expected: int = 0
    delivered: int = 0
    sent: int = 0
    expired: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    lost: int = 0
    dup_device: int = 0
    dup_wecom: int = 0
    dup_feed: int = 0
    seconds: float = 0.0
    max_attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_total(self) -> int:
        return sum(self.failed.values())

    def row(self) -> str:
        failed = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "0"
        extra = " ".join(f"{k}={v}" for k, v in self.extra.items())
        return (
            f"| {self.scenario} | {self.broker} | {self.expected} | {self.delivered} | "
            f"{self.sent} | {self.expired} | {failed} | {self.lost} | {self.dup_device} | "
            f"{self.dup_wecom} | {self.dup_feed} | {self.max_attempts} | {self.seconds:.1f} | "
            f"{extra} |"
        )


HEADER = (
    "| scenario | broker | expected | delivered | sent | expired | failed | lost | "
    "dup shown | dup WeCom parts | dup feed entries | max attempts | seconds | notes |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


# -- the rig ------------------------------------------------------------------------------


class Mosquitto:
    """A real mosquitto on a free loopback port; persistent, so it can be restarted."""

    def __init__(self, workdir: Path) -> None:
        if not os.path.exists(MOSQUITTO):
            raise BenchError(f"{MOSQUITTO} is not installed (scripts/dev setup installs it)")
        self.workdir = workdir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(workdir, 0o777)  # mosquitto drops to its own user when started as root
        self.conf = workdir / "mosquitto.conf"
        # autosave every second: a kill loses at most a second of queued commands, which
        # the sweeper's re-send (ack_timeout_seconds) has to make good.
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence true\npersistence_location {workdir}/\nautosave_interval 1\n"
            "max_queued_messages 10000\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            encoding="utf-8",
        )
        os.chmod(self.conf, 0o644)

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        with (self.workdir / "mosquitto.log").open("ab") as log:
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=log)
        _wait_port(self.port, self.proc, "mosquitto")

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(timeout=10)


def county_yaml(endpoints: int, *, kinds: tuple[str, ...] = KINDS) -> str:
    """Villages of up to len(kinds) endpoints each: endpoint j is kinds[j % len(kinds)]."""
    lines = [
        "version: 1",
        "county: {code: '371521', name: 混沌县}",
        "townships:",
        "  - id: t",
        "    name: 混沌镇",
        "    villages:",
    ]
    per = len(kinds)
    for v in range((endpoints + per - 1) // per):
        lines += [f"      - id: v{v:04d}", f"        name: 第{v}村", "        endpoints:"]
        for j in range(v * per, min(endpoints, (v + 1) * per)):
            kind = kinds[j % per]
            ep = f"v{v:04d}-{kind}"
            if kind == "tv_feed":
                lines.append(f"          - {{id: {ep}, kind: tv_feed}}")
            elif kind == "led":
                lines.append(f"          - {{id: {ep}, kind: led, device_id: led-{v:04d}}}")
            else:
                key_env = f"VC_WECOM_V{v:04d}"
                lines.append(
                    f"          - {{id: {ep}, kind: wecom_group, webhook_key_env: {key_env}}}"
                )
    return "\n".join(lines) + "\n"


BASE_ENV = {
    "VILLAGECAST_LEASE_SECONDS": "4",
    "VILLAGECAST_REDOORBELL_SECONDS": "2",
    "VILLAGECAST_SWEEP_INTERVAL": "0.3",
    "VILLAGECAST_RETRY_BASE_SECONDS": "0.2",
    "VILLAGECAST_RETRY_CAP_SECONDS": "3",
    "VILLAGECAST_ACK_TIMEOUT_SECONDS": "3",
    "VILLAGECAST_FEED_PORT": "0",
    "VILLAGECAST_LANG": "zh",
    "VILLAGECAST_REVIEW_CATEGORIES": "[]",
    "VILLAGECAST_HTTP_TIMEOUT_SECONDS": "1",
    "VILLAGECAST_WECOM_MAX_WAIT_SECONDS": "0",
}


class Rig:
    """One scenario's world: data directory, brokers, devices, stand-in, workers."""

    def __init__(
        self,
        stack: ExitStack,
        *,
        broker: str,
        endpoints: int,
        kinds: tuple[str, ...] = KINDS,
        redis_url: str | None = None,
        env: dict[str, str] | None = None,
        wecom_rate: tuple[int, float] = (20, 2.0),
        keepalive: int = 5,
    ) -> None:
        self.stack = stack
        self.home = Path(tempfile.mkdtemp(prefix="vc-chaos-"))
        if os.environ.get("VILLAGECAST_CHAOS_KEEP"):
            print(f"  keeping the scenario's data: {self.home}", flush=True)
        else:
            stack.callback(shutil.rmtree, self.home, ignore_errors=True)
        self.data = self.home / "home"
        self.data.mkdir()
        self.broker = broker
        self.keepalive = keepalive
        devices = self.home / "devices.yaml"
        devices.write_text(county_yaml(endpoints, kinds=kinds), encoding="utf-8")
        saved = dict(os.environ)

        def restore() -> None:
            os.environ.clear()
            os.environ.update(saved)
            from content_queue.settings import reset_settings

            reset_settings()

        stack.callback(restore)
        for key in list(os.environ):
            if key.startswith("VILLAGECAST_"):
                del os.environ[key]
        os.environ.update(BASE_ENV)
        os.environ.update(
            {
                "VILLAGECAST_HOME": str(self.data),
                "VILLAGECAST_DEVICES": str(devices),
                "PYTHONPATH": str(REPO) + os.pathsep + saved.get("PYTHONPATH", ""),
            }
        )
        if broker == "redis":
            if redis_url is None:
                redis_url = stack.enter_context(redis_server(self.home))
            os.environ["VILLAGECAST_BROKER_URL"] = redis_url
        self.mosquitto: Mosquitto | None = None
        if "led" in kinds:
            self.mosquitto = Mosquitto(Path(f"/tmp/vc-chaos-mosq-{os.getpid()}-{time.time_ns()}"))
            stack.callback(shutil.rmtree, self.mosquitto.workdir, ignore_errors=True)
            self.mosquitto.start()
            stack.callback(self.mosquitto.stop)
            os.environ["VILLAGECAST_MQTT_URL"] = self.mosquitto.url
            os.environ["VILLAGECAST_MQTT_KEEPALIVE_SECONDS"] = str(max(5, keepalive))
        self.standin: Any = None
        self.wecom_keys: dict[str, str] = {}
        if "wecom_group" in kinds:
            from refdevice.wecom_standin import WecomStandin

            rate, window = wecom_rate
            self.wecom_rate = wecom_rate
            self.standin = stack.enter_context(WecomStandin(rate=rate, window=window))
            os.environ["VILLAGECAST_WECOM_BASE_URL"] = self.standin.base_url
            os.environ["VILLAGECAST_WECOM_RATE_PER_MINUTE"] = str(rate)
            os.environ["VILLAGECAST_WECOM_RATE_WINDOW_SECONDS"] = str(window)
        os.environ.update(env or {})
        from content_queue.registry import LedEndpoint, WecomGroupEndpoint, load_registry
        from content_queue.settings import get_settings, reset_settings
        from dispatcher import service

        reset_settings()
        self.registry = load_registry(devices)
        for ep in self.registry.endpoints.values():
            if isinstance(ep, WecomGroupEndpoint):
                key = self.standin.add_key()
                self.wecom_keys[ep.id] = key
                os.environ[ep.webhook_key_env] = key
        reset_settings()
        self.settings = get_settings()
        self.store = service.open_store(self.settings)
        self.led_ids = sorted(
            ep.device_id for ep in self.registry.endpoints.values() if isinstance(ep, LedEndpoint)
        )
        self.villages = sorted(self.registry.villages)
        self.boards: dict[str, Any] = {}
        self.workers: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        stack.callback(self._stop_processes)
        self.listener: Any = None
        self.listener_proc: subprocess.Popen[bytes] | None = None
        if self.mosquitto is not None:
            from channels.keys import Keyring

            self.keyring = Keyring.init(self.settings.keys_dir)
        self.feed_url: str | None = None

    # -- services -------------------------------------------------------------------------

    def start_listener(self, *, process: bool = False) -> None:
        """The device listener: a thread here, or (process=True) `villagecast listen`."""
        if process:
            self.listener_proc = self._spawn(
                [sys.executable, "-m", "cli", "listen"], "listener", group=True
            )
            return
        from dispatcher.acks import DeviceListener

        self.listener = DeviceListener(self.settings, self.store, client_id="chaos-listener")
        self.listener.start()
        self.stack.callback(self.listener.stop)

    def start_feed_server(self) -> None:
        """The feed server, polled by a thread standing for the TV platform (each fetch
        confirms what the feed already held)."""
        from dispatcher.feed_server import serve_in_thread

        server, _ = serve_in_thread(self.settings, self.store, lambda: self.registry)
        host, port = server.server_address[:2]
        self.feed_url = f"http://{host!s}:{port}"
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(1.0):
                for v in self.villages:
                    with contextlib.suppress(urllib.error.URLError, OSError):
                        urllib.request.urlopen(f"{self.feed_url}/feeds/{v}.atom", timeout=5).read()

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()

        def close() -> None:
            stop.set()
            thread.join(10)
            server.shutdown()
            server.server_close()

        self.stack.callback(close)

    def board(self, device_id: str) -> Any:
        from refdevice.device import ReferenceDevice

        assert self.mosquitto is not None
        dev = ReferenceDevice(
            device_id=device_id,
            host="127.0.0.1",
            port=self.mosquitto.port,
            keyring=self.keyring.public_keys(),
            state_dir=self.home / "device-state",
            keepalive=self.keepalive,
        )
        old = self.boards.get(device_id)
        if old is not None:  # a board coming back keeps what the old one showed
            dev.shown = old.shown
        self.boards[device_id] = dev
        self.stack.callback(dev.stop)
        return dev

    def _spawn(self, cmd: list[str], name: str, *, group: bool) -> subprocess.Popen[bytes]:
        log = (self.data / f"{name}-{len(self.logs)}.log").open("wb")
        self.logs.append(log)
        return subprocess.Popen(
            cmd, env=dict(os.environ), stdout=log, stderr=log, cwd=REPO, start_new_session=group
        )

    def start_worker(self, concurrency: int = 2) -> subprocess.Popen[bytes]:
        from dispatcher.worker import spawn_worker

        log = (self.data / f"worker-{len(self.logs)}.log").open("wb")
        self.logs.append(log)
        proc = spawn_worker(env=dict(os.environ), concurrency=concurrency, stdout=log, stderr=log)
        self.workers.append(proc)
        return proc

    @staticmethod
    def kill(proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def _stop_processes(self) -> None:
        procs = [*self.workers, *([self.listener_proc] if self.listener_proc else [])]
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill(proc)
        for log in self.logs:
            log.close()

    def log_tail(self, chars: int = 3000) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.data.glob("*.log"))[-chars:]

    # -- notices and counting -------------------------------------------------------------

    def submit(self, **data: Any) -> int:
        from content_queue.models import build_notice
        from dispatcher import service
        from dispatcher.doorbell import ring

        notice = {"body": "请各位村民相互转告。", "category": "village_affairs", **data}
        submitted = service.submit_notice(
            build_notice(notice),
            store=self.store,
            registry=self.registry,
            ring=lambda ids, countdown: ring(ids, settings=self.settings, countdown=countdown),
        )
        return int(submitted.notice.id)

    def open_count(self, nids: list[int]) -> int:
        from content_queue.store import TERMINAL

        return int(self.store.count_open(nids, TERMINAL))

    def wait_settled(self, nids: list[int], *, timeout: float, quiet: float = 30) -> float:
        """Seconds until every delivery is terminal; gives up after ``timeout`` or after
        ``quiet`` seconds without progress (what is left then is lost)."""
        t0 = time.monotonic()
        last, still = -1, t0
        while True:
            left = self.open_count(nids)
            now = time.monotonic()
            if left == 0 or now - t0 > timeout:
                return now - t0
            if left != last:
                last, still = left, now
            elif now - still > quiet:
                return now - t0
            time.sleep(0.25)

    def count(self, result: Result, nids: list[int]) -> Result:
        """Fill ``result`` from the store and the side effects seen by devices and stand-in."""
        from content_queue.store import TERMINAL

        shown: dict[str, Counter[int]] = {
            dev_id: Counter(notice for _, notice, _ in dev.shown)
            for dev_id, dev in self.boards.items()
        }
        posted: dict[str, Counter[str]] = {}
        if self.standin is not None:
            for key, records in self.standin.iter_posted_by_key():
                posted[key] = Counter(r.content.splitlines()[0] for r in records if r.content)
        titles = {n: self.store.notice(n).title for n in nids}
        for nid in nids:
            for d in self.store.deliveries(nid):
                result.expected += 1
                result.max_attempts = max(result.max_attempts, d.attempts)
                ep = self.registry.endpoints[d.endpoint_id]
                if d.status not in TERMINAL and d.status != "sent":
                    result.lost += 1
                elif d.status == "delivered":
                    result.delivered += 1
                    if d.kind == "led" and not shown.get(ep.device_id, Counter())[nid]:  # type: ignore[union-attr]
                        result.lost += 1  # confirmed but never shown
                    if d.kind == "wecom_group" and not any(
                        titles[nid] in line for line in posted.get(self.wecom_keys[ep.id], {})
                    ):
                        result.lost += 1
                elif d.status == "sent":
                    result.sent += 1
                elif d.status == "expired":
                    result.expired += 1
                    if d.kind == "led" and shown.get(ep.device_id, Counter())[nid]:  # type: ignore[union-attr]
                        result.extra["expired_but_shown"] = (
                            result.extra.get("expired_but_shown", 0) + 1
                        )
                else:
                    result.failed[f"{d.status}:{d.error_code}"] += 1
        result.dup_device = sum(c - 1 for per in shown.values() for c in per.values() if c > 1)
        result.dup_wecom = sum(c - 1 for per in posted.values() for c in per.values() if c > 1)
        for feed in (self.settings.feeds_dir).glob("*.atom"):
            ids = Counter(re.findall(r"<entry>\s*<id>([^<]+)</id>", feed.read_text("utf-8")))
            result.dup_feed += sum(c - 1 for c in ids.values() if c > 1)
        return result


def _stack_rig(stack: ExitStack, **kwargs: Any) -> Rig:
    return Rig(stack, **kwargs)


# -- scenarios ----------------------------------------------------------------------------


def kill_workers(*, full: bool, broker: str = "embedded", redis_url: str | None = None) -> Result:
    """1. Workers SIGKILLed every few seconds during a fan-out to tv_feed, led and wecom_group."""
    notices, endpoints = (200, 150) if full else (20, 15)
    every = 4.0 if full else 3.0
    result = Result("kill_workers", broker)
    with ExitStack() as stack:
        rig = _stack_rig(
            stack,
            broker=broker,
            endpoints=endpoints,
            redis_url=redis_url,
            env={"VILLAGECAST_BATCH_SIZE": "10"},
        )
        for dev_id in rig.led_ids:
            rig.board(dev_id).start()
        rig.start_listener()
        rig.start_feed_server()
        procs = [rig.start_worker(), rig.start_worker()]
        t0 = time.monotonic()
        nids = [
            rig.submit(title=f"第{i:03d}号通知", targets={"county": True}) for i in range(notices)
        ]
        kills = 0
        # Kill one worker every few seconds (alternating) while anything is open; a fresh
        # one takes its place at once, as a supervisor would.
        while rig.open_count(nids) and time.monotonic() - t0 < (900 if full else 150):
            time.sleep(every)
            victim = kills % 2
            rig.kill(procs[victim])
            procs[victim] = rig.start_worker()
            kills += 1
        result.seconds = time.monotonic() - t0 + rig.wait_settled(nids, timeout=120)
        result.extra["kills"] = kills
        rig.count(result, nids)
    return result


def poison(*, full: bool, broker: str = "embedded", redis_url: str | None = None) -> Result:
    """2. A delivery whose send kills its worker process every time, among good ones."""
    good_endpoints = 100 if full else 30
    result = Result("poison", broker)
    with ExitStack() as stack:
        rig = _stack_rig(
            stack,
            broker=broker,
            endpoints=good_endpoints,
            kinds=("tv_feed",),
            redis_url=redis_url,
            env={
                "VILLAGECAST_CHANNEL_TV_FEED": "tests.plugins:RecordingChannel",
                "VILLAGECAST_MAX_ATTEMPTS": "3",
                "VILLAGECAST_LEASE_SECONDS": "2",
                "VC_TEST_SLEEP": "0.02",
            },
        )
        rig.start_worker()
        t0 = time.monotonic()
        bad = rig.submit(title="POISON 通知", targets={"villages": [rig.villages[0]]})
        good = [rig.submit(title=f"第{i}号通知", targets={"county": True}) for i in range(2)]
        rig.wait_settled([bad, *good], timeout=180)
        result.seconds = time.monotonic() - t0
        rig.count(result, [bad, *good])
        (d,) = rig.store.deliveries(bad)
        result.extra["poison"] = f"{d.status}:{d.error_code}:{d.attempts}"
        result.extra["poison_reason"] = d.error_zh or ""
        from tests.plugins import read_side_effects

        effects = Counter(read_side_effects(rig.data))
        result.dup_device = sum(c - 1 for c in effects.values() if c > 1)
        served = {x.id for n in good for x in rig.store.deliveries(n)}
        result.lost += len(served - set(effects))
    return result


def mqtt_restart(*, full: bool, broker: str = "embedded", redis_url: str | None = None) -> Result:
    """3. mosquitto restarted, then killed, during a fan-out, with boards offline holding
    queued commands; one notice expires while they are away."""
    boards, offline = (150, 100) if full else (30, 10)
    result = Result("mqtt_restart", broker)
    with ExitStack() as stack:
        rig = _stack_rig(
            stack,
            broker=broker,
            endpoints=boards,
            kinds=("led",),
            redis_url=redis_url,
            env={"VILLAGECAST_BATCH_SIZE": "5"},
        )
        assert rig.mosquitto is not None
        devs = [rig.board(d) for d in rig.led_ids]
        for dev in devs:
            dev.start()
        away = devs[:offline]
        for dev in away:
            dev.stop()  # its persistent session stays on the broker
        rig.start_listener()
        rig.start_worker()
        t0 = time.monotonic()
        lasting = [rig.submit(title=f"停水通知{i}", targets={"county": True}) for i in range(2)]
        brief = rig.submit(
            title="临时通知",
            targets={"county": True},
            expires_at=datetime.now(UTC) + timedelta(seconds=20 if full else 12),
        )
        nids = [*lasting, brief]
        time.sleep(1.0)
        rig.mosquitto.stop()  # a clean restart: sessions and queues saved
        rig.mosquitto.start()
        time.sleep(2.0)
        rig.mosquitto.stop(kill=True)  # a crash: up to a second of queue lost
        rig.mosquitto.start()
        # The brief notice expires while the boards are away; then they come back.
        time.sleep(max(0.0, (22 if full else 14) - (time.monotonic() - t0)))
        back = [rig.board(d.device_id) for d in away]
        for dev in back:
            dev.start(timeout=30)
        rig.wait_settled(nids, timeout=240)
        result.seconds = time.monotonic() - t0
        rig.count(result, nids)
        shown_brief_after = sum(
            1 for dev in back for _, n, _ in dev.shown if n == brief and dev not in away
        )
        result.extra["offline"] = offline
        result.extra["brief_expired"] = sum(
            1 for d in rig.store.deliveries(brief) if d.status == "expired"
        )
        result.extra["shown_after_expiry"] = shown_brief_after + result.extra.get(
            "expired_but_shown", 0
        )
    return result


def expiry(*, full: bool, broker: str = "embedded", redis_url: str | None = None) -> Result:
    """4. Boards offline longer than a notice's expiry never show it; the store says expired."""
    boards = 10 if full else 3
    result = Result("expiry", broker)
    with ExitStack() as stack:
        rig = _stack_rig(
            stack, broker=broker, endpoints=boards, kinds=("led",), redis_url=redis_url
        )
        devs = [rig.board(d) for d in rig.led_ids]
        for dev in devs:
            dev.start()
            dev.stop()
        rig.start_listener()
        rig.start_worker()
        t0 = time.monotonic()
        nid = rig.submit(
            title="临时停电通知",
            targets={"county": True},
            expires_at=datetime.now(UTC) + timedelta(seconds=4),
        )
        while any(d.status not in ("sent", "expired") for d in rig.store.deliveries(nid)):
            if time.monotonic() - t0 > 60:
                break
            time.sleep(0.2)
        time.sleep(max(0.0, 6 - (time.monotonic() - t0)))
        for dev in devs:
            rig.board(dev.device_id).start()
        rig.wait_settled([nid], timeout=60)
        result.seconds = time.monotonic() - t0
        time.sleep(1.0)  # anything the broker still held has reached the boards by now
        rig.count(result, [nid])
        result.extra["shown"] = sum(len(b.shown) for b in rig.boards.values())
    return result


def dispatcher_restart(
    *, full: bool, broker: str = "embedded", redis_url: str | None = None
) -> Result:
    """5. The dispatcher (worker and device listener processes) SIGKILLed and restarted
    twice with publishes and acks in flight."""
    notices, endpoints = (50, 50) if full else (10, 12)
    result = Result("dispatcher_restart", broker)
    with ExitStack() as stack:
        rig = _stack_rig(
            stack,
            broker=broker,
            endpoints=endpoints,
            kinds=("led", "wecom_group"),
            redis_url=redis_url,
            env={"VILLAGECAST_BATCH_SIZE": "5"},
        )
        for dev_id in rig.led_ids:
            rig.board(dev_id).start()
        rig.start_listener(process=True)
        worker = rig.start_worker()
        t0 = time.monotonic()
        nids = [
            rig.submit(title=f"第{i:03d}号通知", targets={"county": True}) for i in range(notices)
        ]
        restarts = 0
        for _ in range(2):
            time.sleep(3.0)
            if not rig.open_count(nids):
                break
            rig.kill(worker)
            assert rig.listener_proc is not None
            rig.kill(rig.listener_proc)
            rig.start_listener(process=True)
            worker = rig.start_worker()
            restarts += 1
        rig.wait_settled(nids, timeout=240)
        result.seconds = time.monotonic() - t0
        result.extra["restarts"] = restarts
        rig.count(result, nids)
    return result


def wecom_faults(*, full: bool, broker: str = "embedded", redis_url: str | None = None) -> Result:
    """6. The WeCom stand-in answers 45009, 5xx and timeouts for a while, robots limited to
    3 messages per 2 s window: everything gets through, no robot above its limit.

    Bounded: each robot's next five requests fail (one of each fault). Full: for a whole
    minute every message to any robot gets the faults in turn (WeCom's bad minute)."""
    from refdevice.wecom_standin import Fault

    robots, notices, rounds = (10, 20, 0) if full else (4, 6, 1)
    outage = 60.0 if full else 0.0
    rate, window = 3, 2.0
    result = Result("wecom_faults", broker)
    with ExitStack() as stack:
        rig = _stack_rig(
            stack,
            broker=broker,
            endpoints=robots,
            kinds=("wecom_group",),
            redis_url=redis_url,
            wecom_rate=(rate, window),
            env={"VILLAGECAST_LEASE_SECONDS": "20", "VILLAGECAST_MAX_ATTEMPTS": "30"},
        )
        script = [
            Fault(errcode=45009),
            Fault(status=502),
            Fault(errcode=-1),
            Fault(status=500),
            Fault(delay=2.5),  # the request hangs past the 1 s client timeout, not posted
        ]
        scripted = 0
        for key in rig.wecom_keys.values():
            for _ in range(rounds):
                for fault in script:
                    rig.standin.fail_next(key, fault)
                    scripted += 1
        if outage:
            rig.standin.outage(outage, script)
        rig.start_worker()
        t0 = time.monotonic()
        # Emergencies: under the unknown-outcome policy only they are sent again after a
        # timeout (other notices fail `unknown_outcome`, see docs/wechat.md).
        nids = [
            rig.submit(title=f"第{i:02d}号紧急通知", priority="emergency", targets={"county": True})
            for i in range(notices)
        ]
        # Nothing can settle during the outage: wait past it before calling a pause a stall.
        rig.wait_settled(nids, timeout=600 if full else 240, quiet=30 + outage)
        result.seconds = time.monotonic() - t0
        rig.count(result, nids)
        from tests.standins.wecom import max_in_window

        result.extra["faults"] = scripted + rig.standin.outage_served
        if outage:
            result.extra["outage_s"] = outage
        result.extra["max_per_window"] = max(
            (
                max_in_window([r.at for r in recs], window)
                for _, recs in rig.standin.iter_posted_by_key()
            ),
            default=0,
        )
        result.extra["limit"] = rate
    return result


def offline_detection(
    *, full: bool, broker: str = "embedded", redis_url: str | None = None
) -> Result:
    """7. A board's network goes silent (no FIN, no DISCONNECT): seconds until the store
    records it `offline`, against 1.5 x keepalive."""
    boards, keepalive = (10, 10) if full else (3, 8)
    result = Result("offline_detection", broker)
    with ExitStack() as stack:
        rig = _stack_rig(
            stack,
            broker=broker,
            endpoints=boards,
            kinds=("led",),
            redis_url=redis_url,
            keepalive=keepalive,
        )
        rig.start_listener()
        devs = [rig.board(d) for d in rig.led_ids]
        for dev in devs:
            dev.start()
        deadline = time.monotonic() + 30
        while sum(d.state == "online" for d in rig.store.devices()) < boards:
            if time.monotonic() > deadline:
                raise BenchError("boards did not come online")
            time.sleep(0.1)
        frozen: list[Any] = []
        for dev in devs:
            client = dev._client  # the network vanishes: no more packets either way
            frozen.append(client)
            client.loop_stop()
            dev._client = None
        t0 = time.monotonic()
        seen: dict[str, float] = {}
        while len(seen) < boards and time.monotonic() - t0 < 10 * keepalive:
            for d in rig.store.devices():
                if d.state == "offline" and d.device_id not in seen:
                    seen[d.device_id] = time.monotonic() - t0
            time.sleep(0.05)
        for client in frozen:
            sock = client.socket()
            if isinstance(sock, socket.socket):
                sock.close()
        result.expected = boards
        result.delivered = len(seen)  # boards seen offline
        result.lost = boards - len(seen)
        result.seconds = max(seen.values(), default=float("nan"))
        result.extra["keepalive"] = keepalive
        result.extra["bound"] = 1.5 * keepalive
        result.extra["detect_max_s"] = round(result.seconds, 2)
        result.extra["detect_min_s"] = round(min(seen.values(), default=float("nan")), 2)
    return result


Scenario = Callable[..., Result]
SCENARIOS: dict[str, Scenario] = {
    "kill_workers": kill_workers,
    "poison": poison,
    "mqtt_restart": mqtt_restart,
    "expiry": expiry,
    "dispatcher_restart": dispatcher_restart,
    "wecom_faults": wecom_faults,
    "offline_detection": offline_detection,
}
BOTH_BROKERS = {"kill_workers", "poison"}


def run_scenario(
    name: str, *, full: bool = False, broker: str = "embedded", redis_url: str | None = None
) -> Result:
    return SCENARIOS[name](full=full, broker=broker, redis_url=redis_url)


@contextmanager
def _maybe_redis(needed: bool) -> Iterator[str | None]:
    if not needed:
        yield None
        return
    workdir = Path(tempfile.mkdtemp(prefix="vc-chaos-redis-"))
    try:
        with redis_server(workdir) as url:
            yield url
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--full", action="store_true", help="the full sizes, not the CI ones")
    parser.add_argument("--broker", choices=["embedded", "redis", "both"], default="both")
    parser.add_argument(
        "--keep", action="store_true", help="keep each scenario's data directory to inspect"
    )
    args = parser.parse_args(argv)
    if args.keep:
        os.environ["VILLAGECAST_CHAOS_KEEP"] = "1"
    names = args.scenario or list(SCENARIOS)
    brokers = ["embedded", "redis"] if args.broker == "both" else [args.broker]
    print(f"chaos suite, {'full' if args.full else 'bounded'} sizes", flush=True)
    print(HEADER, flush=True)
    with _maybe_redis("redis" in brokers) as url:
        for name in names:
            for broker in brokers if name in BOTH_BROKERS else brokers[:1]:
                result = run_scenario(name, full=args.full, broker=broker, redis_url=url)
                print(result.row(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
