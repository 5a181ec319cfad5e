"""County load cases: a burst of emergencies, broker writes per device message, worker
memory, and a soak.

One rig per Celery broker, built from bench/led.py's parts: a fresh Celery broker (Redis, or
the embedded SQLite broker), mosquitto with its ``$SYS`` tree on (``sys_interval 1``, the
queue limits `villagecast mqtt config` writes), N LED boards in ONE farm process
(bench/devices_proc.py), the device listener (a thread here, as `villagecast up` runs it)
and a villagecast worker (concurrency 2, the ``vc.led`` queue, no sweeper, no synthesis
child). On Redis:

- **burst**: per repetition, one emergency to every board (``single``), then
  ``burst_notices`` emergencies submitted back to back (``burst``), each timed from just
  before the first submit to the last delivery's ``delivered_at`` in the store. Goal: burst
  <= 1.1 x (burst_notices x single). mosquitto's ``$SYS/broker/publish/messages/dropped``
  is read before and after each burst and must not move.
- **broker writes per delivered device message**: around every single and burst, the writes
  to the Celery broker (Redis ``INFO commandstats``: the calls of every command Redis flags
  ``write``, plus PUBLISH; so LPUSH of a task, the BRPOP that takes it, the unacked
  bookkeeping and the ack, and the idle BRPOPs that time out) plus the MQTT publishes
  (the commands the boards received, duplicates included), over the deliveries that became
  ``delivered``. Goal <= 3; the floor is 1 (one MQTT publish per device). The same on the
  embedded broker (rows inserted into and deleted from ``kombu_message``, and inserted
  into ``kombu_queue``: a message is inserted when sent and deleted when taken), on a rig
  of up to 1,000 boards.
- **memory**: RSS (and PSS) of the worker's process tree (the worker and its pool),
  sampled every 0.25 s; the peak during each single 5,000-board fan-out against a bare Celery
  worker (bench/bare_worker.py: same pool, same concurrency, its own Redis so its polls do
  not count as ours) idling, and running as many no-op tasks as there are boards.
- **soak**: one notice a second to the first ``soak_devices`` boards for ``soak_minutes``;
  per notice, the time from its submit to its last board's delivery. Goal: the p99 over the
  notices of the last minute <= 1.2 x the p99 of the first minute, and the worker tree's
  RSS in the last minute <= 1.05 x the first minute's (medians of the samples). When the
  soak is shorter than three minutes the windows are its first and last thirds.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # python bench/county.py: the repository on the path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import led
from bench.suite import Case, Config, failed, percentile, progress

__all__ = ["county_cases"]

REPO = Path(__file__).resolve().parent.parent
DROPPED = "$SYS/broker/publish/messages/dropped"
EMBEDDED_MAX_BOARDS = 1000


# -- services ---------------------------------------------------------------------------------


@contextmanager
def mosquitto_with_sys(workdir: Path, devices: int) -> Iterator[str]:
    """mosquitto as bench/led.py starts it, with the $SYS tree published every second."""
    port = led._free_port()
    mdir = workdir / "mosquitto"
    mdir.mkdir()
    os.chmod(mdir, 0o777)  # mosquitto drops to its own user when started as root
    conf = mdir / "mosquitto.conf"
    # notice: mosquitto names each client whose queue overflows ("Outgoing messages are
    # being dropped for client ...").
    extra = "sys_interval 1\nlog_type notice\n"
    conf.write_text(led._mosquitto_conf(port, mdir, devices) + extra, "utf-8")
    os.chmod(conf, 0o644)
    with (workdir / "mosquitto.log").open("ab") as log:
        proc = subprocess.Popen([led.MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
    try:
        led._wait_port(port, proc, "mosquitto")
        led.PIDS["mqtt"] = proc.pid
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        led.PIDS.pop("mqtt", None)
        led._stop(proc)


class SysWatch:
    """One MQTT client for the rig's lifetime, subscribed to mosquitto's dropped-message
    counter (retained, republished every ``sys_interval`` when it changes)."""

    def __init__(self, url: str, topic: str = DROPPED) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from channels._mqtt import parse_mqtt_url

        address = parse_mqtt_url(url)
        self.topic = topic
        self.values: list[tuple[float, int]] = []
        self.seen = threading.Event()

        def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            with contextlib.suppress(ValueError):
                self.values.append((time.monotonic(), int(msg.payload)))
                self.seen.set()

        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"vc-bench-sys-{os.getpid()}-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=0)
        self.client.on_message = on_message
        self.client.connect(address.host, address.port, 30)
        self.client.loop_start()

    def now(self, timeout: float = 30) -> int:
        """The counter as of now: waits one $SYS interval, so it counts up to this moment."""
        time.sleep(1.2)
        if not self.seen.wait(timeout):
            raise led.BenchError(f"mosquitto published no {self.topic} within {timeout:.0f} s")
        return self.values[-1][1]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@contextmanager
def led_worker(log: Path, concurrency: int = 2) -> Iterator[subprocess.Popen[bytes]]:
    """The villagecast worker on vc.led only (no sweeper, no synthesis child)."""
    from dispatcher.worker import spawn_worker

    with log.open("ab") as fh:
        proc = spawn_worker(
            env=dict(os.environ),
            concurrency=concurrency,
            sweeper=False,
            synthesis=False,
            kinds=["led"],
            stdout=fh,
            stderr=fh,
        )
    led.PIDS["worker"] = proc.pid
    try:
        yield proc
    finally:
        led.PIDS.pop("worker", None)
        led._stop(proc, timeout=20, group=True)


@contextmanager
def bare_worker(broker_url: str, home: Path, concurrency: int = 2) -> Iterator[Any]:
    """bench/bare_worker.py in its own process group; yields a function running ``count``
    no-op tasks through it (returns when all ran)."""
    from bench.bare_worker import QUEUE, app

    marker = home / "bare-marker"
    env = dict(os.environ) | {
        "BENCH_BARE_BROKER": broker_url,
        "BENCH_BARE_MARKER": str(marker),
        "PYTHONPATH": str(REPO),
    }
    cmd = [sys.executable, "-m", "celery", "-A", "bench.bare_worker", "worker"]
    cmd += ["--pool", "prefork", "--concurrency", str(concurrency), "--queues", QUEUE]
    cmd += ["--without-gossip", "--without-mingle", "--loglevel", "WARNING"]
    cmd += ["--hostname", f"bare-{os.getpid()}@%h"]
    with (home / "bare-worker.log").open("ab") as log:
        proc = subprocess.Popen(
            cmd, env=env, cwd=REPO, start_new_session=True, stdout=log, stderr=log
        )
    app.conf.broker_url = broker_url

    def run(count: int, timeout: float = 300) -> None:
        marker.unlink(missing_ok=True)
        with app.producer_or_acquire() as producer:
            for _ in range(count):
                app.send_task("bare.noop", args=(True,), queue=QUEUE, producer=producer)
        led._wait_for(
            lambda: marker.exists() and marker.stat().st_size >= 2 * count,
            timeout,
            f"{count} bare no-op tasks",
            step=0.05,
        )

    try:
        run(10, timeout=120)  # it is up, its pool processes have started
        yield proc, run
    finally:
        led._stop(proc, timeout=20, group=True)


# -- memory -----------------------------------------------------------------------------------


def _pgid(pid: int) -> int:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[2])


def tree_memory(pgid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB summed over the processes of a process group. RSS counts the pages
    the prefork children share with their parent once per process; PSS divides them."""
    rss = pss = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            if _pgid(int(entry)) != pgid:
                continue
            with open(f"/proc/{entry}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
            with open(f"/proc/{entry}/smaps_rollup", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
    return rss, pss


class Sampler:
    """Samples a process group's memory every ``interval`` seconds in a thread."""

    def __init__(self, pgid: int, interval: float = 0.25) -> None:
        self.pgid = pgid
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (monotonic, rss kB, pss kB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            rss, pss = tree_memory(self.pgid)
            if rss:
                self.samples.append((time.monotonic(), rss, pss))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def window(self, t0: float, t1: float) -> list[tuple[float, int, int]]:
        return [s for s in self.samples if t0 <= s[0] <= t1]

    def peak_mb(self, t0: float, t1: float) -> tuple[float, float]:
        w = self.window(t0, t1) or self.samples[-1:]
        return max(s[1] for s in w) / 1024, max(s[2] for s in w) / 1024


# -- broker writes ----------------------------------------------------------------------------


class RedisWrites:
    """Write commands executed by a Redis server, from INFO commandstats."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        info = self.client.command()
        self.writes = {n for n, c in info.items() if "write" in c["flags"]} | {"publish"}

    def snapshot(self) -> Counter[str]:
        stats = self.client.info("commandstats")
        out: Counter[str] = Counter()
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_").split("|", 1)[0]
            if name in self.writes:
                out[name] += int(value["calls"])
        return out


class KombuWrites:
    """Rows inserted into and deleted from the embedded broker's tables: a message is
    inserted when sent and deleted when a worker takes it (dispatcher/_sqla_transport.py);
    ``sqlite_sequence`` keeps the number ever inserted (the table is AUTOINCREMENT)."""

    def __init__(self, url: str) -> None:
        self.path = url.removeprefix("sqla+").removeprefix("sqlite:///")

    def snapshot(self) -> Counter[str]:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        try:
            seq = db.execute(
                "SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'kombu_message'"
            ).fetchone()[0]
            waiting = db.execute("SELECT count(*) FROM kombu_message").fetchone()[0]
            queues = db.execute("SELECT count(*) FROM kombu_queue").fetchone()[0]
        except sqlite3.OperationalError:  # the tables appear with the first message
            return Counter()
        finally:
            db.close()
        return Counter(
            {"kombu_message insert": seq, "kombu_message delete": seq - waiting,
             "kombu_queue insert": queues}
        )  # fmt: skip


@dataclass
class Window:
    """What one fan-out (a single notice or a burst) cost."""

    kind: str
    seconds: float
    delivered: int
    celery_writes: dict[str, int]
    mqtt_publishes: int
    peak_rss_mb: float = math.nan
    peak_pss_mb: float = math.nan

    @property
    def per_message(self) -> float:
        total = sum(self.celery_writes.values()) + self.mqtt_publishes
        return total / self.delivered if self.delivered else math.nan


# -- the rig ----------------------------------------------------------------------------------


@dataclass
class Rig:
    home: Path
    n: int
    celery: str
    mqtt_url: str
    celery_url: str | None
    farm: led.Farm
    worker: subprocess.Popen[bytes]
    sampler: Sampler
    writes: RedisWrites | KombuWrites
    timeout: float
    dropped: SysWatch
    log: list[str] = field(default_factory=list)


@contextmanager
def county_rig(n: int, celery: str, timeout: float) -> Iterator[Rig]:
    from content_queue.settings import get_settings

    home = Path(tempfile.mkdtemp(prefix=f"vc-county-{celery}-{n}-"))
    os.chmod(home, 0o755)
    ok = False
    try:
        with ExitStack() as stack:
            celery_url = stack.enter_context(led.redis_server(home)) if celery == "redis" else None
            mqtt_url = stack.enter_context(mosquitto_with_sys(home, n))
            public = stack.enter_context(led.led_environment(home, celery_url, mqtt_url, n))
            port = int(mqtt_url.rsplit(":", 1)[1])
            progress(f"county/{celery}: {n} boards connecting")
            farm = led.Farm(
                port=port,
                count=n,
                keyring=public,
                log=home / "farm.log",
                presence=True,
                connect_timeout=timeout,
            )
            stack.callback(farm.close)
            farm.ready(timeout + 15)
            stack.enter_context(led.listener(n, timeout))
            worker = stack.enter_context(led_worker(home / "worker.log"))
            sampler = Sampler(worker.pid)
            stack.callback(sampler.stop)
            writes: RedisWrites | KombuWrites = (
                RedisWrites(celery_url)
                if celery_url
                else KombuWrites(get_settings().resolved_broker_url)
            )
            dropped = SysWatch(mqtt_url)
            stack.callback(dropped.close)
            rig = Rig(home, n, celery, mqtt_url, celery_url, farm, worker, sampler, writes,
                      timeout, dropped)  # fmt: skip
            warm = led._submit({"villages": led._villages(led.WARM_VILLAGES, n)})
            led._wait_for(lambda: led._open_count(warm) == 0, 120, "warm-up notice delivered")
            yield rig
        ok = True
    finally:
        if ok:
            shutil.rmtree(home, ignore_errors=True)
        else:
            progress(f"county/{celery}: logs kept in {home}")


def _still_open(nids: list[int]) -> list[int]:
    """Those of these notices with a publish delivery not yet terminal."""
    from sqlalchemy import select

    from content_queue.db import Delivery
    from content_queue.settings import get_settings
    from content_queue.store import TERMINAL
    from dispatcher import service

    store = service.open_store(get_settings())
    with store.session(readonly=True) as s:
        found = s.scalars(
            select(Delivery.notice_id)
            .where(
                Delivery.notice_id.in_(nids),
                Delivery.action == "publish",
                Delivery.status.not_in(list(TERMINAL)),
            )
            .distinct()
        ).all()
    return sorted(int(n) for n in found)


STALL_SECONDS = 120.0
"""No delivery of the awaited notices settling for this long ends the wait (the rig runs
no sweeper, so an ack that never came is never asked for again)."""


def _open_statuses(nids: list[int]) -> dict[str, int]:
    from sqlalchemy import func, select

    from content_queue.db import Delivery
    from content_queue.settings import get_settings
    from content_queue.store import TERMINAL
    from dispatcher import service

    store = service.open_store(get_settings())
    with store.session(readonly=True) as s:
        rows = s.execute(
            select(Delivery.status, func.count())
            .where(
                Delivery.notice_id.in_(nids),
                Delivery.action == "publish",
                Delivery.status.not_in(list(TERMINAL)),
            )
            .group_by(Delivery.status)
        ).all()
    return {str(status): int(n) for status, n in rows}


def _wait_all(nids: list[int], timeout: float, what: str, step: float) -> None:
    """Until every notice's deliveries are terminal; polls only the notices still open (a
    soak leaves a million rows behind, most of them long finished). Gives up after
    ``timeout``, or after :data:`STALL_SECONDS` in which no open delivery settled, naming
    what is left (on 2026-11-26 one full run waited on 5,827 'sent' deliveries whose acks
    were never recorded, and would have waited 50 minutes)."""
    pending = list(nids)
    start = time.monotonic()
    left, since, checked = -1, start, start
    while True:
        pending = _still_open(pending)
        if not pending:
            return
        now = time.monotonic()
        if now - checked >= 5.0 or now - start > timeout:  # counting is dearer than polling
            checked = now
            statuses = _open_statuses(pending)
            count = sum(statuses.values())
            if count != left:
                left, since = count, now
            stalled = now - since > STALL_SECONDS
            if stalled or now - start > timeout:
                why = f"no progress for {now - since:.0f} s" if stalled else "timed out"
                raise led.BenchError(f"{what}: {why}; still open: {statuses} in notices {pending}")
        time.sleep(step)


def _delivered(nids: list[int]) -> tuple[int, datetime | None]:
    from sqlalchemy import func, select

    from content_queue.db import Delivery
    from content_queue.settings import get_settings
    from dispatcher import service

    store = service.open_store(get_settings())
    with store.session(readonly=True) as s:
        count, last = s.execute(
            select(func.count(Delivery.id), func.max(Delivery.delivered_at)).where(
                Delivery.notice_id.in_(nids), Delivery.status == "delivered"
            )
        ).one()
    return int(count), last


def fan_out(rig: Rig, notices: int, *, kind: str) -> Window:
    """``notices`` emergencies to every board, submitted back to back; timed from just
    before the first submit to the last delivery's delivered_at."""
    from content_queue.store import utcnow

    writes0 = rig.writes.snapshot()
    commands0 = rig.farm.stats()["commands"]
    m0 = time.monotonic()
    t0 = utcnow()
    nids = [led._submit({"county": True}) for _ in range(notices)]
    _wait_all(
        nids, rig.timeout * max(1, notices // 4), f"{notices} x {rig.n} deliveries terminal", 0.2
    )
    m1 = time.monotonic()
    time.sleep(0.5)  # the tasks' own acks to the broker come after their last write
    delivered, last = _delivered(nids)
    writes1 = rig.writes.snapshot()
    commands1 = rig.farm.stats()["commands"]
    rss, pss = rig.sampler.peak_mb(m0, m1)
    if delivered != notices * rig.n:
        raise led.BenchError(f"{kind}: only {delivered} of {notices * rig.n} delivered")
    return Window(
        kind=kind,
        seconds=((last or t0) - t0).total_seconds(),
        delivered=delivered,
        celery_writes=dict(writes1 - writes0),
        mqtt_publishes=int(commands1 - commands0),
        peak_rss_mb=rss,
        peak_pss_mb=pss,
    )


# -- soak -------------------------------------------------------------------------------------


@dataclass
class Soak:
    notices: int = 0
    window_s: float = 0.0
    first: list[float] = field(default_factory=list)  # per notice: submit -> last delivered
    last: list[float] = field(default_factory=list)
    first_delivery_p99: float = math.nan  # per delivery, over the window's notices
    last_delivery_p99: float = math.nan
    rss_first: list[float] = field(default_factory=list)  # MB
    rss_last: list[float] = field(default_factory=list)
    pss_first_median: float = math.nan
    pss_last_median: float = math.nan
    undelivered: int = 0
    late_submits: int = 0  # a submit that started more than 0.5 s after its second
    dropped_before: int = 0
    dropped_after: int = 0
    drain_s: float = 0.0


def soak(rig: Rig, *, devices: int, minutes: float) -> Soak:
    from sqlalchemy import select

    from content_queue.db import Delivery
    from content_queue.settings import get_settings
    from content_queue.store import utcnow
    from dispatcher import service

    villages = led._villages(devices, rig.n)
    duration = minutes * 60
    count = max(3, round(duration))
    out = Soak(notices=count, window_s=min(60.0, duration / 3))
    out.dropped_before = rig.dropped.now()
    submits: list[tuple[int, datetime, float]] = []
    start = time.monotonic()
    for i in range(count):
        delay = start + i - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -0.5:
            out.late_submits += 1
        at = utcnow()
        submits.append((led._submit({"villages": villages}), at, time.monotonic() - start))
        if i % 60 == 59:
            progress(f"county/soak: {i + 1}/{count} notices submitted")
    end = time.monotonic()
    nids = [nid for nid, _, _ in submits]
    drain_timeout = max(120.0, duration / 2)  # what is left then counts as undelivered
    with contextlib.suppress(led.BenchError):  # what is still open counts as undelivered
        _wait_all(nids, drain_timeout, "soak drained", 1.0)
    out.drain_s = time.monotonic() - end
    now = utcnow()
    out.dropped_after = rig.dropped.now()
    store = service.open_store(get_settings())
    w = out.window_s

    def latencies(chosen: list[tuple[int, datetime, float]]) -> tuple[list[float], float]:
        at = {nid: t for nid, t, _ in chosen}
        per_notice: dict[int, float] = {}
        per_delivery: list[float] = []
        with store.session(readonly=True) as s:
            rows = s.execute(
                select(Delivery.notice_id, Delivery.delivered_at).where(
                    Delivery.notice_id.in_(list(at))
                )
            ).all()
        for nid, delivered_at in rows:
            if delivered_at is None:
                out.undelivered += 1
            lat = ((delivered_at or now) - at[nid]).total_seconds()
            per_delivery.append(lat)
            per_notice[nid] = max(per_notice.get(nid, 0.0), lat)
        return list(per_notice.values()), percentile(per_delivery, 99)

    out.first, out.first_delivery_p99 = latencies([s for s in submits if s[2] < w])
    # The last window ends at the last submit: when submitting falls behind (each one takes
    # longer than a second), the soak runs past ``duration``.
    tail = submits[-1][2] - w
    out.last, out.last_delivery_p99 = latencies([s for s in submits if s[2] >= tail])
    first_mem = rig.sampler.window(start, start + w)
    last_mem = rig.sampler.window(end - w, end)
    out.rss_first = [s[1] / 1024 for s in first_mem]
    out.rss_last = [s[1] / 1024 for s in last_mem]
    if first_mem and last_mem:
        out.pss_first_median = statistics.median(s[2] for s in first_mem) / 1024
        out.pss_last_median = statistics.median(s[2] for s in last_mem) / 1024
    return out


# -- the cases --------------------------------------------------------------------------------


def _redis_rig_cases(cfg: Config) -> list[Case]:
    n = max(cfg.burst_devices, cfg.soak_devices)
    k = cfg.burst_notices
    singles: list[Window] = []
    bursts: list[Window] = []
    dropped: list[tuple[int, int]] = []
    bare_busy: list[tuple[float, float]] = []
    bare_idle: list[tuple[float, float]] = []
    out: list[Case] = []
    with county_rig(n, "redis", cfg.timeout) as rig:
        (rig.home / "bare").mkdir()
        with (
            led.redis_server(rig.home / "bare") as bare_url,
            bare_worker(bare_url, rig.home) as (
                bare_proc,
                run_noops,
            ),
        ):
            bare_sampler = Sampler(bare_proc.pid)
            try:
                progress(f"county: warm-up, one emergency to {n} boards, then two at once")
                fan_out(rig, 1, kind="single")
                fan_out(rig, 2, kind="burst")  # two notices at once warm the same paths
                for i in range(cfg.rounds):
                    progress(f"county: repetition {i + 1}/{cfg.rounds}: single, burst of {k}")
                    singles.append(fan_out(rig, 1, kind="single"))
                    before = rig.dropped.now()
                    bursts.append(fan_out(rig, k, kind="burst"))
                    dropped.append((before, rig.dropped.now()))
                    m0 = time.monotonic()
                    time.sleep(1.0)
                    bare_idle.append(bare_sampler.peak_mb(m0, time.monotonic()))
                    m0 = time.monotonic()
                    run_noops(n)
                    bare_busy.append(bare_sampler.peak_mb(m0, time.monotonic()))
            finally:
                bare_sampler.stop()
        label = f"{n:,} LED boards (Celery Redis, mosquitto)"
        unchanged = all(a == b for a, b in dropped)
        out.append(
            Case(
                id="county.burst",
                group="county",
                what=f"burst: {k} emergencies at once to {label}",
                unit="s",
                samples=[w.seconds for w in bursts],
                baseline_what=f"{k} x one emergency to the same boards",
                baseline=[k * w.seconds for w in singles],
                goal="<= 1.1x",
                checks={"mosquitto dropped counter unchanged": unchanged},
                details={
                    "single_s": [w.seconds for w in singles],
                    "dropped_before_after": dropped,
                    "burst_peak_rss_mb": [w.peak_rss_mb for w in bursts],
                },
            )
        )
        windows = singles + bursts
        out.append(
            Case(
                id="county.writes.redis",
                group="county",
                what=f"broker writes per delivered device message, {label}",
                unit="writes",
                samples=[w.per_message for w in windows],
                baseline_what="the floor: one MQTT publish per device message",
                baseline=[1.0 for _ in windows],
                goal="<= 3",
                details={
                    "windows": [w.__dict__ | {"per_message": w.per_message} for w in windows],
                },
            )
        )
        vc_peak = [w.peak_rss_mb for w in singles]
        out.append(
            Case(
                id="county.memory.busy",
                group="county",
                what=f"worker RSS (worker + 2 prefork processes) at the peak of {n:,} boards",
                unit="MB",
                samples=vc_peak,
                baseline_what=f"bare Celery worker (prefork, 2) running {n:,} no-op tasks",
                baseline=[b[0] for b in bare_busy],
                details={
                    "pss_mb": [w.peak_pss_mb for w in singles],
                    "bare_pss_mb": [b[1] for b in bare_busy],
                },
            )
        )
        out.append(
            Case(
                id="county.memory.idle",
                group="county",
                what="  same, against the bare worker idling",
                unit="MB",
                samples=vc_peak,
                baseline_what="bare Celery worker (prefork, 2), idle",
                baseline=[b[0] for b in bare_idle],
                details={"bare_pss_mb": [b[1] for b in bare_idle]},
            )
        )
        d = cfg.soak_devices
        progress(f"county: soak, one notice a second to {d} boards for {cfg.soak_minutes} min")
        s = soak(rig, devices=d, minutes=cfg.soak_minutes)
        wlabel = "last minute" if s.window_s >= 60 else f"last {s.window_s:.0f} s"
        flabel = "first minute" if s.window_s >= 60 else f"first {s.window_s:.0f} s"
        lists = ("first", "last", "rss_first", "rss_last")
        soak_details = {key: v for key, v in s.__dict__.items() if key not in lists}
        out.append(
            Case(
                id="county.soak.latency",
                group="county",
                what=f"soak: 1 notice/s to {d:,} boards, {cfg.soak_minutes:g} min: "
                f"submit -> last board, {wlabel}",
                unit="s",
                samples=s.last,
                baseline_what=f"the same, {flabel}",
                baseline=s.first,
                goal="<= 1.2x",
                ratio_of="p99",
                checks={
                    "every delivery delivered": s.undelivered == 0,
                    "mosquitto dropped counter unchanged": s.dropped_before == s.dropped_after,
                },
                details=soak_details,
            )
        )
        out.append(
            Case(
                id="county.soak.memory",
                group="county",
                what=f"  soak: worker RSS, {wlabel}",
                unit="MB",
                samples=s.rss_last,
                baseline_what=f"worker RSS, {flabel}",
                baseline=s.rss_first,
                goal="<= 1.05x",
            )
        )
    return out


def _embedded_writes_case(cfg: Config) -> Case:
    n = min(cfg.burst_devices, EMBEDDED_MAX_BOARDS)
    windows: list[Window] = []
    with county_rig(n, "sqlite", cfg.timeout) as rig:
        fan_out(rig, 1, kind="single")  # warm-up
        for i in range(cfg.rounds):
            progress(f"county/embedded: repetition {i + 1}/{cfg.rounds}, {n} boards")
            windows.append(fan_out(rig, 1, kind="single"))
    return Case(
        id="county.writes.embedded",
        group="county",
        what=f"broker writes per delivered device message, {n:,} LED boards "
        "(Celery SQLite embedded, mosquitto)",
        unit="writes",
        samples=[w.per_message for w in windows],
        baseline_what="the floor: one MQTT publish per device message",
        baseline=[1.0 for _ in windows],
        goal="<= 3",
        details={"windows": [w.__dict__ | {"per_message": w.per_message} for w in windows]},
    )


def county_cases(cfg: Config) -> list[Case]:
    out: list[Case] = []
    try:
        out += _redis_rig_cases(cfg)
    except Exception as exc:
        out.append(failed("county", "county.redis", "county rig (Redis): did not finish", exc))
    try:
        out.append(_embedded_writes_case(cfg))
    except Exception as exc:
        out.append(failed("county", "county.writes.embedded", "broker writes (embedded)", exc))
    return out


def main(argv: list[str] | None = None) -> int:
    """The soak alone, at any size: ``python bench/county.py --devices 1000 --minutes 10``."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python bench/county.py", description=main.__doc__)
    parser.add_argument("--devices", type=int, default=2000, help="boards in the soak")
    parser.add_argument("--boards", type=int, help="boards in the rig (default: --devices)")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak duration")
    args = parser.parse_args(argv)
    with county_rig(args.boards or args.devices, "redis", 300) as rig:
        s = soak(rig, devices=args.devices, minutes=args.minutes)
        mosquitto_log = (rig.home / "mosquitto.log").read_text("utf-8", errors="replace")
    lists = ("first", "last", "rss_first", "rss_last")
    out = {k: v for k, v in s.__dict__.items() if k not in lists}
    out |= {
        "first_notice_p99_s": percentile(s.first, 99),
        "last_notice_p99_s": percentile(s.last, 99),
        "p99_ratio": percentile(s.last, 99) / percentile(s.first, 99),
        "rss_ratio": statistics.median(s.rss_last) / statistics.median(s.rss_first),
        "mosquitto_dropping": [ln for ln in mosquitto_log.splitlines() if "dropped" in ln],
    }
    print(json.dumps(out, indent=1))
    return 0 if s.undelivered == 0 and s.dropped_before == s.dropped_after else 1


if __name__ == "__main__":
    sys.exit(main())
