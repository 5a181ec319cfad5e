"""LED fan-out: one emergency notice to N simulated LED boards, beside a bare paho script.

    python bench/led.py [--quick] [--json FILE] [--setups embedded,redis] [--sizes 1000,5000]
                        [--repeat 3] [--concurrency 2] [--no-presence] [--no-limit]
                        [--timeout 300] [--keep]

For each setup (a Celery broker and an MQTT broker) and each N (1,000 and 5,000; --quick:
200 and 1,000), in a fresh data directory and with fresh brokers on loopback:

1. bench/devices_proc.py starts N boards in ONE separate process (paho clients on one
   selector loop; each verifies, drops duplicates and acks like the reference device).
2. bare A: a bare paho script in this process publishes N pre-signed ``led.show`` commands
   (same body, same boards, QoS 1) and waits for the N ``shown`` acks on the ack topics.
   Signing those N commands is timed on its own and reported beside it.
3. villagecast: the device listener (a thread here, as in `villagecast up`) and a worker
   process (dispatcher.worker, concurrency 2, no sweeper) start; a small notice warms them
   up; then the `notice add` path (dispatcher.service.submit_notice: plan, store, ring)
   sends one emergency notice to the whole county. Timed from just before submit_notice to
   the last delivery turning ``delivered`` (the listener recorded the board's ack).
4. bare B: the worker and listener are stopped and the bare script runs again. The
   baseline is the faster of A and B (the ratio is conservative).

With --repeat K, the whole set runs K rounds (setups interleaved) and a summary gives the
medians; each round's ratio is against the faster of its own two bare runs. Runs of amqtt
above 1,000 boards are skipped unless --no-limit: it does not connect them in minutes.
CPU seconds per process (this process with the listener thread, the brokers, the farm,
the worker with its pool) are printed for bare run A and for villagecast's run, with their
ratio (all processes; less sensitive to other work on the machine than the wall clock) and
the 1-minute load average as villagecast's run started.

Every step has a hard timeout (--timeout), every process started here is stopped by its
id at the end of its run, and a run that fails is reported as FAILED (its directory and
logs are kept) while the others go on.

Setups: ``embedded`` = the embedded SQLite Celery broker (kombu SQL transport, polled every
0.25 s) with the embedded amqtt MQTT broker, as `villagecast up` runs on one machine;
``embedded-mosquitto`` = the same Celery broker with mosquitto; ``redis`` = Redis with
mosquitto (production); ``redis-amqtt``. mosquitto gets the queue limits `villagecast mqtt
config` writes (max_queued_messages = max(1000, 2 x devices)), anonymous on loopback.

The embedded Celery broker's polling share is estimated from the store: the time from
ring to the first claim, plus each worker process's idle gaps between one task's last
write and the next task's claim (averaged over the processes), over the total. On Redis
the same figure is what Celery costs between tasks without polling.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run import Row, _devices  # noqa: E402

MOSQUITTO = "/usr/sbin/mosquitto"
FARM = Path(__file__).resolve().parent / "devices_proc.py"
PREFIX = "vc/v1"
WARM_VILLAGES = 50  # two doorbell batches, so both worker processes have connected
TITLE = "紧急通知：山洪预警"
BODY = (
    "气象台发布山洪橙色预警，今夜到明天白天我镇有大到暴雨，局部大暴雨。"
    "请沿河、低洼地带和山脚下的群众立即转移到村委会或学校，"
    "不要涉水过河，不要在河道停留。联系电话：12345。"
)

SETUPS: dict[str, tuple[str, str]] = {
    # name: (Celery broker, MQTT broker)
    "embedded": ("sqlite", "amqtt"),
    "embedded-mosquitto": ("sqlite", "mosquitto"),
    "redis": ("redis", "mosquitto"),
    "redis-amqtt": ("redis", "amqtt"),
}
CELERY_LABEL = {"sqlite": "Celery SQLite (embedded)", "redis": "Celery Redis"}
MQTT_LABEL = {"amqtt": "MQTT amqtt (embedded)", "mosquitto": "MQTT mosquitto"}


PIDS: dict[str, int] = {}
"""Processes whose CPU time is reported: the brokers, the board farm, the worker's group."""


def _proc_cpu(pid: int) -> tuple[int, float]:
    """(process group, CPU seconds) of a process, from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[2]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_snapshot() -> dict[str, float]:
    """CPU seconds so far: this process (the listener thread, the submit, the bare script),
    each broker, the farm, and the worker with its pool processes."""
    snap = {"bench": time.process_time()}
    for name, pid in PIDS.items():
        if name == "worker":
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            snap[name] = _proc_cpu(pid)[1]
    group = PIDS.get("worker")
    if group is not None:
        total = 0.0
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    pgid, cpu = _proc_cpu(int(entry))
                    if pgid == group:
                        total += cpu
        snap["worker"] = total
    return snap


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before[k], 2) for k in after if k in before}


class BenchError(RuntimeError):
    """A step failed or timed out; the run is reported as failed, the others go on."""


# -- services -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"{what} did not start on port {port}") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes], *, timeout: float = 15, group: bool = False) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        proc.wait(timeout=10)


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchError("redis-server is not installed (scripts/dev setup installs it)")
    port = _free_port()
    with (workdir / "redis.log").open("ab") as log:
        proc = subprocess.Popen(
            [
                binary,
                *("--port", str(port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(workdir)),
            ],
            stdout=log,
            stderr=log,
        )
    try:
        _wait_port(port, proc, "redis-server")
        PIDS["redis"] = proc.pid
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        PIDS.pop("redis", None)
        _stop(proc)


def _mosquitto_conf(port: int, workdir: Path, devices: int) -> str:
    # As `villagecast mqtt config` writes it, less authentication (anonymous on loopback).
    return "\n".join(
        [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {workdir}/",
            "autosave_interval 60",
            f"max_queued_messages {max(1000, 2 * devices)}",
            "max_inflight_messages 20",
            "set_tcp_nodelay true",
            "persistent_client_expiration 14d",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "",
        ]
    )


@contextmanager
def mqtt_broker(kind: str, workdir: Path, devices: int) -> Iterator[str]:
    """A fresh MQTT broker on a free loopback port; yields its mqtt:// URL."""
    port = _free_port()
    log_path = workdir / f"{kind}.log"
    if kind == "mosquitto":
        if not os.path.exists(MOSQUITTO):
            raise BenchError(f"{MOSQUITTO} is not installed (scripts/dev setup installs it)")
        mdir = workdir / "mosquitto"
        mdir.mkdir()
        os.chmod(mdir, 0o777)  # mosquitto drops to its own user when started as root
        conf = mdir / "mosquitto.conf"
        conf.write_text(_mosquitto_conf(port, mdir, devices), encoding="utf-8")
        os.chmod(conf, 0o644)
        cmd = [MOSQUITTO, "-c", str(conf)]
    else:  # amqtt, the embedded broker of `villagecast up`, in its own process
        cmd = [sys.executable, str(Path(__file__).resolve()), "--serve-amqtt", str(port)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=REPO)
    try:
        _wait_port(port, proc, kind)
        PIDS["mqtt"] = proc.pid
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        PIDS.pop("mqtt", None)
        _stop(proc)


def _serve_amqtt(port: int) -> None:
    from dispatcher.embedded_mqtt import EmbeddedBroker

    broker = EmbeddedBroker(f"mqtt://127.0.0.1:{port}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    broker.start()
    stop.wait()
    broker.stop()


# -- the device farm process ----------------------------------------------------------------


class Farm:
    """bench/devices_proc.py as a child process, its stdout read line by line."""

    def __init__(
        self,
        *,
        port: int,
        count: int,
        keyring: Path,
        log: Path,
        presence: bool = True,
        connect_timeout: float = 300,
    ) -> None:
        self._log = log.open("ab")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, str(FARM), "--port", str(port), "--count", str(count)),
                *("--keyring", str(keyring), "--prefix", PREFIX),
                *("--connect-timeout", str(connect_timeout)),
                *(() if presence else ("--no-presence",)),
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO,
        )
        PIDS["farm"] = self.proc.pid
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="farm-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode("utf-8", "replace").strip())

    def expect(self, tags: tuple[str, ...], timeout: float) -> tuple[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"device farm: no {'/'.join(tags)} within {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise BenchError(f"device farm exited ({self.proc.returncode})") from None
                continue
            tag, _, rest = line.partition(" ")
            if tag in tags:
                return tag, json.loads(rest) if rest else {}

    def ready(self, timeout: float) -> float:
        tag, data = self.expect(("READY", "FAILED"), timeout)
        if tag == "FAILED":
            raise BenchError(
                f"only {data.get('subscribed')}/{data.get('devices')} boards connected and "
                f"subscribed within {data.get('seconds')} s (failures: {data.get('failures')})"
            )
        return float(data["seconds"])

    def stats(self, timeout: float = 10) -> dict[str, Any]:
        self.proc.send_signal(signal.SIGUSR1)
        return self.expect(("STATS",), timeout)[1]

    def close(self, timeout: float = 20) -> dict[str, Any] | None:
        summary: dict[str, Any] | None = None
        PIDS.pop("farm", None)
        if self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(BenchError):
                summary = self.expect(("SUMMARY",), timeout)[1]
        _stop(self.proc, timeout=timeout)
        self._log.close()
        return summary


# -- the villagecast side -------------------------------------------------------------------


@contextmanager
def led_environment(home: Path, celery_url: str | None, mqtt_url: str, n: int) -> Iterator[Path]:
    """VILLAGECAST_* for one run, signing keys created, the public keyring exported."""
    from channels.keys import Keyring
    from content_queue.settings import get_settings, reset_settings

    devices = home / "devices.yaml"
    devices.write_text(_devices(n, kind="led"), encoding="utf-8")
    saved = dict(os.environ)
    for key in [k for k in os.environ if k.startswith("VILLAGECAST_")]:
        del os.environ[key]
    os.environ.update(
        {
            "VILLAGECAST_HOME": str(home / "data"),
            "VILLAGECAST_DEVICES": str(devices),
            "VILLAGECAST_MQTT_URL": mqtt_url,
            "VILLAGECAST_MQTT_PREFIX": PREFIX,
            "PYTHONPATH": str(REPO),
        }
    )
    for key in ("BENCH_TASK_BATCH", "BENCH_CLAIM_CHUNK"):
        if key in saved:
            os.environ[key] = saved[key]
    if celery_url:
        os.environ["VILLAGECAST_BROKER_URL"] = celery_url
    reset_settings()
    try:
        settings = get_settings()
        settings.ensure_home()
        keyring = Keyring.init(settings.keys_dir)
        public = home / "public-keys.json"
        public.write_text(json.dumps(keyring.export_public()), encoding="utf-8")
        yield public
    finally:
        os.environ.clear()
        os.environ.update(saved)
        reset_settings()


@contextmanager
def worker_process(log: Path, concurrency: int = 2) -> Iterator[subprocess.Popen[bytes]]:
    """As bench/run.py's worker(), with its log kept (a failed run can be diagnosed)."""
    from dispatcher.worker import spawn_worker

    with log.open("ab") as fh:
        proc = spawn_worker(
            env=dict(os.environ), concurrency=concurrency, sweeper=False, stdout=fh, stderr=fh
        )
    PIDS["worker"] = proc.pid  # its own process group (spawn_worker starts a session)
    try:
        yield proc
    finally:
        PIDS.pop("worker", None)
        _stop(proc, timeout=20, group=True)


@contextmanager
def listener(n: int, timeout: float) -> Iterator[None]:
    """The device listener in a thread (as `villagecast up` runs it), once it has recorded
    ``n`` boards' retained ``online`` messages."""
    from content_queue.settings import get_settings
    from dispatcher import service
    from dispatcher.acks import DeviceListener

    settings = get_settings()
    store = service.open_store(settings)
    dl = DeviceListener(settings, store)
    dl.start()
    try:
        if not dl.connected.wait(15):
            raise BenchError("the device listener did not connect")
        _wait_for(lambda: _online(store) >= n, timeout, f"listener: {n} boards online")
        yield
    finally:
        dl.stop()


def _online(store: Any) -> int:
    from sqlalchemy import func, select

    from content_queue.db import Device

    with store.session(readonly=True) as s:
        q = select(func.count()).select_from(Device).where(Device.state == "online")
        return int(s.scalar(q) or 0)


def _wait_for(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s: {what}")
        time.sleep(step)


def _submit(targets: dict[str, Any]) -> int:
    from content_queue.models import build_notice
    from content_queue.settings import get_settings
    from dispatcher import service
    from dispatcher.doorbell import ring

    settings = get_settings()
    sub = service.submit_notice(
        build_notice(
            {
                "title": TITLE,
                "body": BODY,
                "category": "emergency",
                "priority": "emergency",
                "targets": targets,
            }
        ),
        store=service.open_store(settings),
        registry=service.registry_cache.get(settings.devices),
        ring=lambda ids, countdown: ring(ids, settings=settings, countdown=countdown),
    )
    if not sub.rung:
        raise BenchError(f"the doorbell did not ring: {sub.ring_error}")
    return sub.notice.id


def _open_count(nid: int) -> int:
    from content_queue.settings import get_settings
    from content_queue.store import TERMINAL
    from dispatcher import service

    return service.open_store(get_settings()).count_open([nid], TERMINAL)


@dataclass
class VcRun:
    total: float  # notice add -> last delivery `delivered`
    submit: float  # plan + store + ring
    pickup: float  # ring -> first claim
    publishing: float  # first claim -> last command published
    ack_tail: float  # last published -> last delivered
    idle: float  # mean per worker process: gaps between its tasks
    tasks: int  # Celery tasks (each claims its ids in chunks)
    processes: int
    statuses: dict[str, int]

    @property
    def polling(self) -> float:
        return self.pickup + self.idle


def villagecast_run(n: int, timeout: float) -> VcRun:
    from content_queue.settings import get_settings
    from content_queue.store import utcnow
    from dispatcher import service

    t0 = utcnow()
    c0 = time.perf_counter()
    nid = _submit({"county": True})
    rung = utcnow()
    # The total is read from the store (the last delivered_at), not from this poll, so the
    # poll can be slow enough not to compete with the listener thread for the GIL.
    _wait_for(lambda: _open_count(nid) == 0, timeout, f"{n} deliveries terminal", step=0.1)
    waited = time.perf_counter() - c0
    from dispatcher.doorbell import _batch_size

    settings = get_settings()
    per_task = _batch_size("led", settings, n)
    return _analyse(service.open_store(settings), nid, t0, rung, waited, per_task)


def _analyse(
    store: Any, nid: int, t0: datetime, rung: datetime, waited: float, per_task: int
) -> VcRun:
    from sqlalchemy import func, select

    from content_queue.db import Attempt, Delivery, DeviceCommand

    with store.session(readonly=True) as s:
        statuses = dict(
            s.execute(
                select(Delivery.status, func.count())
                .where(Delivery.notice_id == nid)
                .group_by(Delivery.status)
            ).all()
        )
        last_delivered = s.scalar(
            select(func.max(Delivery.delivered_at)).where(Delivery.notice_id == nid)
        )
        last_published = s.scalar(
            select(func.max(DeviceCommand.published_at))
            .join(Delivery, Delivery.id == DeviceCommand.delivery_id)
            .where(Delivery.notice_id == nid)
        )
        attempts = s.execute(
            select(Attempt.delivery_id, Attempt.worker, Attempt.started_at, Attempt.finished_at)
            .join(Delivery, Delivery.id == Attempt.delivery_id)
            .where(Delivery.notice_id == nid)
        ).all()
    # A claim chunk shares one started_at per process (a token is host:pid:uuid). The
    # doorbell cut the notice's ids, in order, into tasks of ``per_task``, so chunks group
    # into tasks and tasks into processes. Idle time is counted between one task's last
    # write and the same process's next task: Celery's gap, and on the embedded broker the
    # wait for the transport's next poll (gaps between chunks of one task are not idle).
    first_id = min((did for did, *_ in attempts), default=0)
    chunks: dict[tuple[str, datetime], datetime] = {}
    task_of: dict[tuple[str, datetime], int] = {}
    for did, token, started, finished in attempts:
        key = (token.rsplit(":", 1)[0], started)
        end = finished or started
        chunks[key] = max(chunks.get(key, end), end)
        task_of[key] = (did - first_id) // per_task
    tasks: dict[tuple[str, int], tuple[datetime, datetime]] = {}
    for key, finished in chunks.items():
        task = (key[0], task_of[key])
        first, last = tasks.get(task, (key[1], finished))
        tasks[task] = (min(first, key[1]), max(last, finished))
    by_process: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    for (proc, _), span in tasks.items():
        by_process[proc].append(span)
    idles = []
    for spans in by_process.values():
        spans.sort()
        idles.append(
            sum(
                max(0.0, (nxt[0] - prev[1]).total_seconds())
                for prev, nxt in itertools.pairwise(spans)
            )
        )
    first_claim = min((st for _, st in chunks), default=rung)
    end = last_delivered or (t0 + timedelta(seconds=waited))
    pub_end = last_published or first_claim
    return VcRun(
        total=(end - t0).total_seconds(),
        submit=(rung - t0).total_seconds(),
        pickup=max(0.0, (first_claim - rung).total_seconds()),
        publishing=(pub_end - first_claim).total_seconds(),
        ack_tail=max(0.0, (end - pub_end).total_seconds()),
        idle=statistics.mean(idles) if idles else 0.0,
        tasks=len(tasks),
        processes=len(by_process),
        statuses={str(k): int(v) for k, v in statuses.items()},
    )


# -- the bare paho script -------------------------------------------------------------------


def sign_payloads(tag: str, run: int) -> tuple[list[tuple[str, bytes]], set[str], float]:
    """The same ``led.show`` command villagecast sends, signed for every board with fresh
    command, notice and delivery ids (a board shows a notice once and drops repeated
    command ids); returns (topic, payload) pairs, ids, signing seconds."""
    from channels.keys import Keyring
    from channels.led import build_show_command
    from channels.protocol import encode, sign_command, topic_cmd
    from content_queue.registry import LedEndpoint
    from content_queue.settings import get_settings
    from content_queue.store import NoticeView, utcnow
    from dispatcher import service

    settings = get_settings()
    keyring = Keyring.load(settings.keys_dir)
    registry = service.registry_cache.get(settings.devices)
    boards = sorted(
        (ep for ep in registry.endpoints.values() if isinstance(ep, LedEndpoint)),
        key=lambda ep: ep.device_id,
    )
    now = utcnow()
    notice = NoticeView(
        id=900_000 + run,
        title=TITLE,
        body=BODY,
        category="emergency",
        priority="emergency",
        targets={"county": True},
        channels=None,
        table=None,
        publish_at=now,
        expires_at=None,
        author="bench",
        revision=1,
        supersedes_id=None,
        state="active",
        created_at=now,
    )
    # Rendered once (every board has the same geometry), signed per board.
    template = build_show_command(
        notice=notice,
        endpoint=boards[0],
        delivery_id=1,
        command_id=f"{tag}-0",
        keyring=keyring,
        settings=settings,
        now=now,
    )
    key = keyring.active()
    payloads: list[tuple[str, bytes]] = []
    ids: set[str] = set()
    t0 = time.perf_counter()
    for i, board in enumerate(boards):
        command = sign_command(
            key=key,
            command_id=f"{tag}-{i}",
            device=board.device_id,
            notice=notice.id,
            revision=1,
            delivery=10_000_000 * run + i,
            kind="led.show",
            priority="emergency",
            issued_at=template.issued_at,
            expires_at=template.expires_at,
            body=template.body,
        )
        payloads.append((topic_cmd(PREFIX, board.device_id), encode(command)))
        ids.add(command.id)
    return payloads, ids, time.perf_counter() - t0


def bare_script(
    url: str, payloads: list[tuple[str, bytes]], ids: set[str], timeout: float
) -> float:
    """Publish every payload at QoS 1 (paho defaults) and wait for every ``shown`` ack."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from channels._mqtt import parse_mqtt_url

    address = parse_mqtt_url(url)
    subscribed = threading.Event()
    done = threading.Event()
    seen: set[str] = set()
    finished = [0.0]

    def on_connect(client: mqtt.Client, *_: object) -> None:
        client.subscribe(f"{PREFIX}/dev/+/ack", qos=1)

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            ack = json.loads(msg.payload)
        except ValueError:
            return
        command = ack.get("command")
        if command in ids and ack.get("status") == "shown" and command not in seen:
            seen.add(command)
            if len(seen) == len(ids):
                finished[0] = time.perf_counter()
                done.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"vc-bench-bare-{os.getpid()}-{time.monotonic_ns()}",
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    client.on_connect = on_connect
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = on_message
    client.connect(address.host, address.port, 60)
    client.loop_start()
    try:
        if not subscribed.wait(15):
            raise BenchError("bare script: no SUBACK")
        t0 = time.perf_counter()
        for topic, payload in payloads:
            client.publish(topic, payload, qos=1)
        if not done.wait(timeout):
            raise BenchError(f"bare script: {len(seen)}/{len(ids)} acks within {timeout:.0f} s")
        return finished[0] - t0
    finally:
        client.disconnect()
        client.loop_stop()


# -- one run ----------------------------------------------------------------------------------


@dataclass
class Result:
    setup: str
    celery: str
    mqtt: str
    n: int
    presence: bool = True
    ok: bool = False
    error: str | None = None
    farm_ready: float = math.nan
    bare: list[float] = field(default_factory=list)
    signing: float = math.nan
    vc: VcRun | None = None
    farm: dict[str, Any] | None = None
    farm_during_vc: dict[str, Any] | None = None
    cpu_bare: dict[str, float] = field(default_factory=dict)
    """CPU seconds each process spent during bare run A (see cpu_snapshot)."""
    cpu_vc: dict[str, float] = field(default_factory=dict)
    """The same during villagecast's run (until the last delivery was seen terminal)."""
    seconds: float = math.nan
    load: float = math.nan
    """The machine's 1-minute load average as villagecast's run started (others' work)."""

    @property
    def baseline(self) -> float:
        return min(self.bare) if self.bare else math.nan

    @property
    def cpu_ratio(self) -> float:
        """CPU seconds of villagecast's run over bare run A's, all processes: what the
        fan-out costs the machine, less sensitive to other load than the wall clock."""
        bare, vc = sum(self.cpu_bare.values()), sum(self.cpu_vc.values())
        return vc / bare if bare and vc else math.nan


def run_one(
    setup: str, n: int, *, timeout: float, keep: bool, presence: bool, concurrency: int = 2
) -> Result:
    celery, mqtt_kind = SETUPS[setup]
    result = Result(setup, celery, mqtt_kind, n, presence)
    started = time.monotonic()
    home = Path(tempfile.mkdtemp(prefix=f"vc-led-{setup}-{n}-"))
    os.chmod(home, 0o755)
    farm: Farm | None = None
    try:
        with ExitStack() as stack:
            celery_url = stack.enter_context(redis_server(home)) if celery == "redis" else None
            mqtt_url = stack.enter_context(mqtt_broker(mqtt_kind, home, n))
            public = stack.enter_context(led_environment(home, celery_url, mqtt_url, n))
            port = int(mqtt_url.rsplit(":", 1)[1])
            farm = Farm(
                port=port,
                count=n,
                keyring=public,
                log=home / "farm.log",
                presence=presence,
                connect_timeout=timeout,
            )
            result.farm_ready = farm.ready(timeout + 15)
            payloads, ids, result.signing = sign_payloads("bareA", 1)
            cpu0 = cpu_snapshot()
            result.bare.append(bare_script(mqtt_url, payloads, ids, timeout))
            result.cpu_bare = cpu_delta(cpu0, cpu_snapshot())
            with (
                listener(n if presence else 0, timeout),
                worker_process(home / "worker.log", concurrency),
            ):
                warm = _submit({"villages": _villages(WARM_VILLAGES, n)})
                _wait_for(lambda: _open_count(warm) == 0, 120, "warm-up notice delivered")
                before = farm.stats()
                result.load = os.getloadavg()[0]
                cpu0 = cpu_snapshot()
                result.vc = villagecast_run(n, timeout)
                result.cpu_vc = cpu_delta(cpu0, cpu_snapshot())
                after = farm.stats()
                result.farm_during_vc = _farm_delta(before, after)
            payloads, ids, _ = sign_payloads("bareB", 2)
            result.bare.append(bare_script(mqtt_url, payloads, ids, timeout))
            result.farm = farm.close()
            farm = None
        delivered = result.vc.statuses.get("delivered", 0) if result.vc else 0
        if delivered != n:
            raise BenchError(f"only {delivered}/{n} delivered: {result.vc and result.vc.statuses}")
        shown = (result.farm or {}).get("shown")
        expected = 3 * n + min(WARM_VILLAGES, n)
        if shown != expected:
            raise BenchError(f"boards showed {shown} commands, expected {expected}")
        result.ok = True
    except Exception as exc:  # reported in the table; the other runs go on
        result.error = str(exc) if isinstance(exc, BenchError) else f"{type(exc).__name__}: {exc}"
    finally:
        if farm is not None:
            result.farm = farm.close()
        result.seconds = time.monotonic() - started
        if keep or not result.ok:
            print(f"  ({setup}, N={n}) logs kept in {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    return result


def _villages(k: int, n: int) -> list[str]:
    return [f"v{i:05d}" for i in range(min(k, n))]


def _farm_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    keys = ("commands", "shown", "duplicates", "acks", "handle_seconds", "cpu_seconds")
    return {k: round(after[k] - before[k], 3) for k in keys} | {
        "disconnects": after["disconnects"],
        "rejected": after["rejected"],
    }


# -- report -----------------------------------------------------------------------------------


def rows_for(r: Result) -> list[Row]:
    label = f"{CELERY_LABEL[r.celery]}, {MQTT_LABEL[r.mqtt]}"
    if not r.presence:
        label += ", boards without presence"
    bare_what = f"bare paho: {r.n} pre-signed QoS 1 + {r.n} acks"
    if not r.ok or r.vc is None:
        return [
            Row(
                f"LED fan-out {r.n:,} boards ({label}): FAILED (see breakdown)",
                math.nan,
                "ms",
                bare_what,
                r.baseline * 1000,
                "<= 1.5x" if r.n >= 5000 else "(reported)",
            )
        ]
    vc = r.vc
    share_what = "embedded polling share" if r.celery == "sqlite" else "Celery gaps (no polling)"
    return [
        Row(
            f"notice add -> last ack, {r.n:,} LED boards ({label})",
            vc.total * 1000,
            "ms",
            bare_what,
            r.baseline * 1000,
            "<= 1.5x" if r.n >= 5000 else "(reported)",
        ),
        Row(
            f"  signing {r.n:,} commands (bare script, not in its time)",
            r.signing * 1000,
            "ms",
            bare_what,
            r.baseline * 1000,
            "(reported)",
        ),
        Row(
            f"  {share_what}: ring->1st claim + idle between tasks",
            vc.polling * 1000,
            "ms",
            "villagecast total (ratio = share)",
            vc.total * 1000,
            "(reported)",
        ),
    ]


def compare_rows(results: list[Result]) -> list[Row]:
    """The embedded Celery broker against Redis with the same MQTT broker and N: the other
    estimate of what polling costs (the difference, over the embedded total)."""
    done = {(r.celery, r.mqtt, r.n, r.presence): r for r in results if r.ok and r.vc}
    rows = []
    for (celery, mqtt_kind, n, presence), emb in done.items():
        other = done.get(("redis", mqtt_kind, n, presence))
        if celery != "sqlite" or other is None or emb.vc is None or other.vc is None:
            continue
        rows.append(
            Row(
                f"  Celery SQLite vs Redis, {n:,} boards, both {MQTT_LABEL[mqtt_kind]}",
                emb.vc.total * 1000,
                "ms",
                "the same on Redis",
                other.vc.total * 1000,
                "(reported)",
            )
        )
    return rows


def print_rows(rows: list[Row]) -> None:
    width = max(len(r.what) for r in rows)
    print(f"{'figure':<{width}}  {'value':>10}  {'baseline':>10}  ratio   goal      baseline is")
    for r in rows:
        print(
            f"{r.what:<{width}}  {r.value:>8.1f}{r.unit:>2}  {r.baseline:>8.1f}{r.unit:>2}  "
            f"{r.ratio:5.2f}x  {r.goal:<8}  {r.baseline_what}"
        )


def print_breakdown(results: list[Result]) -> None:
    print()
    print(
        "breakdown (s): setup           N  total  submit pickup publish ack-tail idle/proc "
        "tasks  bare A  bare B  farm-cpu-in-vc  dups"
    )
    for r in results:
        if r.vc is None:
            print(f"  {r.setup:<22} {r.n:>5}  failed: {r.error}")
            continue
        vc = r.vc
        bare = [*r.bare, math.nan, math.nan][:2]
        cpu = (r.farm_during_vc or {}).get("cpu_seconds", math.nan)
        dups = (r.farm or {}).get("duplicates", "?")
        print(
            f"  {r.setup:<22} {r.n:>5} {vc.total:6.2f} {vc.submit:7.2f} {vc.pickup:6.2f} "
            f"{vc.publishing:7.2f} {vc.ack_tail:8.2f} {vc.idle:9.2f} {vc.tasks:5d} "
            f"{bare[0]:7.2f} {bare[1]:7.2f} {cpu:14.2f} {dups:>5}"
            + ("" if r.ok else f"  FAILED: {r.error}")
        )
    print()
    print("CPU seconds during the run (bench = this process: listener thread, submit, bare script)")
    for r in results:
        for what, cpu in (("bare A", r.cpu_bare), ("villagecast", r.cpu_vc)):
            if cpu:
                parts = "  ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items()))
                print(
                    f"  {r.setup:<22} {r.n:>5}  {what:<12} {parts}  total {sum(cpu.values()):.2f}"
                )


DEFAULT_SETUPS = ("embedded", "embedded-mosquitto", "redis")


AMQTT_MAX_BOARDS = 1000
"""amqtt (the embedded MQTT broker) cannot connect more boards than this in minutes (its
retained-message and subscription matching is quadratic); larger runs on it are skipped
unless asked for with --no-limit."""


def run_all(
    setups: Sequence[str],
    sizes: Sequence[int],
    *,
    timeout: float = 300,
    keep: bool = False,
    presence: bool = True,
    concurrency: int = 2,
    repeat: int = 1,
    limit: bool = True,
) -> list[Result]:
    """Every setup at every size, one after the other, ``repeat`` rounds (progress on
    stderr). Rounds interleave the setups, so a burst of other load on the machine does
    not land on one setup's runs only."""
    results: list[Result] = []
    for rnd in range(1, repeat + 1):
        for setup in setups:
            for n in sizes:
                if limit and SETUPS[setup][1] == "amqtt" and n > AMQTT_MAX_BOARDS:
                    print(
                        f"== {setup}, N={n}: skipped (amqtt cannot connect more than "
                        f"{AMQTT_MAX_BOARDS:,} boards in time; --no-limit tries anyway)",
                        file=sys.stderr,
                        flush=True,
                    )
                    continue
                print(
                    f"== round {rnd}/{repeat}: {setup} ({' + '.join(SETUPS[setup])}), N={n}",
                    file=sys.stderr,
                    flush=True,
                )
                r = run_one(
                    setup,
                    n,
                    timeout=timeout,
                    keep=keep,
                    presence=presence,
                    concurrency=concurrency,
                )
                status = (
                    f"ok: {r.vc.total if r.vc else math.nan:.2f} s against {r.baseline:.2f} s"
                    f" ({(r.vc.total if r.vc else math.nan) / r.baseline:.2f}x; CPU "
                    f"{r.cpu_ratio:.2f}x; load average {r.load:.1f})"
                    if r.ok
                    else f"FAILED: {r.error}"
                )
                print(f"   {status} (run took {r.seconds:.0f} s)", file=sys.stderr, flush=True)
                results.append(r)
    return results


def print_summary(results: list[Result]) -> None:
    """Medians over the rounds: what docs/performance.md reports."""
    groups: dict[tuple[str, int, bool], list[Result]] = defaultdict(list)
    for r in results:
        groups[(r.setup, r.n, r.presence)].append(r)
    print()
    print(
        "summary (medians over the rounds; ratio = villagecast / the faster bare run of the "
        "same round)"
    )
    print(
        "  setup                    N  runs  villagecast   bare paho   ratio (range)        "
        "polling or Celery gaps   CPU ratio  load"
    )
    for (setup, n, presence), runs in groups.items():
        ok = [r for r in runs if r.ok and r.vc is not None]
        label = setup + ("" if presence else " (no presence)")
        if not ok:
            print(f"  {label:<22} {n:>5}  0/{len(runs)}  failed: {runs[-1].error}")
            continue
        totals = [r.vc.total for r in ok if r.vc is not None]
        bases = [r.baseline for r in ok]
        ratios = sorted(t / b for t, b in zip(totals, bases, strict=True))
        shares = [r.vc.polling / r.vc.total for r in ok if r.vc is not None]
        polls = [r.vc.polling for r in ok if r.vc is not None]
        print(
            f"  {label:<22} {n:>5}  {len(ok)}/{len(runs)}  "
            f"{statistics.median(totals):9.2f} s  {statistics.median(bases):8.2f} s  "
            f"{statistics.median(ratios):5.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})  "
            f"{statistics.median(polls):5.2f} s = {statistics.median(shares):4.0%}   "
            f"{statistics.median(r.cpu_ratio for r in ok):7.2f}x  "
            f"{min(r.load for r in ok):.1f}-{max(r.load for r in ok):.1f}"
        )


def led_rows(*, quick: bool, setups: Sequence[str] = DEFAULT_SETUPS) -> list[Row]:
    """The rows bench/run.py adds to its table (N = 1,000 and 5,000; quick: 200 and 1,000)."""
    results = run_all(setups, [200, 1000] if quick else [1000, 5000])
    return [row for r in results for row in rows_for(r)] + compare_rows(results)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="N = 200 and 1,000")
    parser.add_argument("--sizes", help="comma-separated N (overrides --quick)")
    parser.add_argument(
        "--setups",
        default=",".join(DEFAULT_SETUPS),
        help=f"comma-separated, of {', '.join(SETUPS)} (default: all but redis-amqtt)",
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds per step")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--json", type=Path, help="also write rows and details as JSON")
    parser.add_argument("--keep", action="store_true", help="keep each run's directory")
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds over every setup and size (medians)"
    )
    parser.add_argument(
        "--no-limit",
        action="store_true",
        help=f"also run amqtt above {AMQTT_MAX_BOARDS:,} boards (it does not connect in time)",
    )
    parser.add_argument(
        "--no-presence",
        action="store_true",
        help="boards publish no retained online/offline state (amqtt scans every retained "
        "message on each SUBSCRIBE, so 5,000 boards with presence do not connect in time)",
    )
    parser.add_argument("--serve-amqtt", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_amqtt:
        _serve_amqtt(args.serve_amqtt)
        return 0
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([200, 1000] if args.quick else [1000, 5000])
    )
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    for setup in setups:
        if setup not in SETUPS:
            parser.error(f"unknown setup {setup!r}; choose from {', '.join(SETUPS)}")
    results = run_all(
        setups,
        sizes,
        timeout=args.timeout,
        keep=args.keep,
        presence=not args.no_presence,
        concurrency=args.concurrency,
        repeat=args.repeat,
        limit=not args.no_limit,
    )
    rows = [row for r in results for row in rows_for(r)] + compare_rows(results)
    print_rows(rows)
    print_breakdown(results)
    print_summary(results)
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": [r.__dict__ | {"ratio": r.ratio} for r in rows],
                    "runs": [_jsonable(r) for r in results],
                },
                indent=2,
                default=str,
            ),
            encoding="utf-8",
        )
    return 0 if all(r.ok for r in results) else 1


def _jsonable(r: Result) -> dict[str, Any]:
    data = dict(r.__dict__)
    if r.vc is not None:
        data["vc"] = dict(r.vc.__dict__) | {"polling": r.vc.polling}
    return data


if __name__ == "__main__":
    sys.exit(main())
