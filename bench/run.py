"""villagecast benchmarks: each figure beside a baseline measured in the same run.

    scripts/dev bench            # or: python bench/run.py [--quick] [--json FILE]
                                 #   [--no-devices] [--no-dashboard] [--no-speakers]

Everything runs on loopback: a temporary data directory, the embedded SQLite broker,
and a redis-server started here when the binary is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@dataclass
class Row:
    what: str
    value: float
    unit: str
    baseline_what: str
    baseline: float
    goal: str

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("nan")


def _median_runtime(cmd: list[str], runs: int, env: dict[str, str] | None = None) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env, cwd=REPO)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


PROJECT_CODE = ("cli.py", "content_queue", "channels", "dispatcher", "dashboard", "refdevice")


def compile_project() -> None:
    """Byte-compile the project's code, as installing a package does (pip compiles what
    it installs, as it did typer's). Without it, under ``PYTHONDONTWRITEBYTECODE`` (set on
    some machines, and on ours) every ``villagecast`` start compiles cli.py (2,900 lines,
    20-30 ms) while the baseline's typer starts from bytecode. ``scripts/dev setup`` does
    the same."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", *PROJECT_CODE],
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=REPO,
    )


def bench_help(runs: int) -> Row:
    exe = shutil.which("villagecast")
    cmd = [exe, "--help"] if exe else [sys.executable, "-m", "cli", "--help"]
    compile_project()
    ours = _median_runtime(cmd, runs)
    base = _median_runtime([sys.executable, "-c", "import typer"], runs)
    return Row(
        "villagecast --help", ours * 1000, "ms", "python -c 'import typer'", base * 1000, "<= 1.5x"
    )


def _devices(n: int, *, kind: str = "tv_feed") -> str:
    """A one-township county of n villages, each with one endpoint of ``kind``."""
    lines = [
        "version: 1",
        "county: {code: '371521', name: 基准县}",
        "townships:",
        "  - id: t",
        "    name: 基准镇",
        "    villages:",
    ]
    for i in range(n):
        lines += [
            f"      - id: v{i:05d}",
            f"        name: 村{i}",
            "        endpoints:",
            f"          - {{id: v{i:05d}-{kind}, kind: {kind}}}"
            if kind == "tv_feed"
            else f"          - {{id: v{i:05d}-{kind}, kind: {kind}, device_id: {kind}-{i:05d}}}",
        ]
    return "\n".join(lines) + "\n"


@contextmanager
def environment(broker: str | None, villages: int) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="vc-bench-"))
    devices = home / "devices.yaml"
    devices.write_text(_devices(villages), encoding="utf-8")
    saved = dict(os.environ)
    os.environ.update(
        {
            "VILLAGECAST_HOME": str(home),
            "VILLAGECAST_DEVICES": str(devices),
            "VILLAGECAST_CHANNEL_TV_FEED": "tests.plugins:NoopChannel",
            "VILLAGECAST_SWEEP_INTERVAL": "1",
            "PYTHONPATH": str(REPO),
        }
    )
    if broker:
        os.environ["VILLAGECAST_BROKER_URL"] = broker
    else:
        os.environ.pop("VILLAGECAST_BROKER_URL", None)
    from content_queue.settings import reset_settings

    reset_settings()
    try:
        yield home
    finally:
        os.environ.clear()
        os.environ.update(saved)
        reset_settings()
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def worker(concurrency: int = 2) -> Iterator[None]:
    from dispatcher.worker import spawn_worker

    proc = spawn_worker(
        env=dict(os.environ),
        concurrency=concurrency,
        sweeper=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _wait_for(pred: Callable[[], bool], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish")
        time.sleep(0.01)


def _warm(home: Path) -> None:
    from content_queue.settings import get_settings
    from dispatcher import service
    from dispatcher.celery_app import app_for

    service.registry_cache.get(get_settings().devices)  # a running CLI/worker has it loaded
    app = app_for(get_settings())
    app.send_task("villagecast.ping", args=("warm",), queue="vc.tv_feed")
    _wait_for(lambda: (home / "warm").exists(), 60)


def bench_pings(home: Path, n: int) -> float:
    """Bare Celery: n no-op tasks through the same broker and worker; tasks per second."""
    from content_queue.settings import get_settings
    from dispatcher.celery_app import app_for

    app = app_for(get_settings())
    marker = home / "pings"
    marker.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            app.send_task(
                "villagecast.ping", args=("pings",), queue="vc.tv_feed", producer=producer
            )
    _wait_for(lambda: marker.exists() and marker.stat().st_size >= 2 * n)
    return n / (time.perf_counter() - t0)


def _submit(villages: dict[str, object] | None = None) -> int:
    from content_queue.models import build_notice
    from content_queue.settings import get_settings
    from dispatcher import service
    from dispatcher.doorbell import ring

    settings = get_settings()
    store = service.open_store(settings)
    registry = service.registry_cache.get(settings.devices)
    sub = service.submit_notice(
        build_notice(
            {
                "title": "基准测试",
                "body": "内容",
                "category": "other",
                "targets": villages or {"county": True},
            }
        ),
        store=store,
        registry=registry,
        ring=lambda ids, countdown: ring(ids, settings=settings, countdown=countdown),
    )
    return sub.notice.id


def _done(nid: int) -> bool:
    from content_queue.settings import get_settings
    from content_queue.store import TERMINAL
    from dispatcher import service

    store = service.open_store(get_settings())
    return store.count_open([nid], TERMINAL) == 0


def bench_fanout(n: int, *, batch_size: int | None = None) -> float:
    """Deliveries per second through the no-op channel: submit to every delivery terminal."""
    from content_queue.settings import reset_settings

    if batch_size is not None:  # the doorbell (in this process) decides the batching
        os.environ["VILLAGECAST_BATCH_SIZE"] = str(batch_size)
        reset_settings()
    try:
        t0 = time.perf_counter()
        nid = _submit()
        _wait_for(lambda: _done(nid))
        return n / (time.perf_counter() - t0)
    finally:
        os.environ.pop("VILLAGECAST_BATCH_SIZE", None)
        reset_settings()


def time_latency() -> float:
    """One notice to one endpoint: seconds from submit to its delivery terminal."""
    t0 = time.perf_counter()
    nid = _submit({"villages": ["v00000"]})
    _wait_for(lambda: _done(nid), 60)
    return time.perf_counter() - t0


def bench_latency(samples: int) -> float:
    """Enqueue-to-delivered for one notice to one endpoint (median seconds)."""
    return statistics.median(time_latency() for _ in range(samples))


def time_add() -> float:
    """The `notice add` path once (validate, plan, store, ring) to one endpoint: seconds."""
    t0 = time.perf_counter()
    _submit({"villages": ["v00000"]})
    return time.perf_counter() - t0


@contextmanager
def bare_add(home: Path) -> Iterator[Callable[[], float]]:
    """Yields a function timing the bare equivalent of `notice add`: one SQLite commit
    (WAL, BEGIN IMMEDIATE) and one ``send_task`` to the same broker."""
    import sqlite3

    from content_queue.settings import get_settings
    from dispatcher.celery_app import app_for

    app = app_for(get_settings())
    db = sqlite3.connect(home / "bare.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body TEXT)")

    def once() -> float:
        t0 = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT INTO t (body) VALUES ('x')")
        db.execute("COMMIT")
        app.send_task("villagecast.ping", queue="vc.tv_feed")
        return time.perf_counter() - t0

    try:
        yield once
    finally:
        db.close()


def bench_add(samples: int, home: Path) -> tuple[float, float]:
    """`notice add` path (validate, plan, store, ring) vs bare apply_async + one SQLite commit."""
    ours = [time_add() for _ in range(samples)]
    with bare_add(home) as bare_once:
        bare = [bare_once() for _ in range(samples)]
    return statistics.median(ours), statistics.median(bare)


def _redis() -> tuple[subprocess.Popen[bytes] | None, str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        return None, None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples (for CI smoke runs)")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument(
        "--no-devices", action="store_true", help="skip the LED fan-out (about 8 minutes)"
    )
    parser.add_argument(
        "--no-dashboard", action="store_true", help="skip the dashboard overview load"
    )
    parser.add_argument(
        "--no-speakers",
        action="store_true",
        help="skip the loudspeaker figures (synthesis, cache, 500 speakers: about 4 minutes)",
    )
    args = parser.parse_args()
    n = 200 if args.quick else 1000
    runs = 3 if args.quick else 9
    rows = [bench_help(runs)]
    redis_proc, redis_url = _redis()
    try:
        for name, url in (("embedded", None), ("redis", redis_url)):
            if name == "redis" and url is None:
                print("redis-server not installed: Redis rows skipped", file=sys.stderr)
                continue
            with environment(url, n) as home, worker():
                _warm(home)
                tasks_s = bench_pings(home, n)
                deliveries_s = bench_fanout(n)
                rows.append(
                    Row(
                        f"deliveries/s, no-op channel, {n} endpoints ({name})",
                        deliveries_s,
                        "/s",
                        "bare Celery no-op tasks/s",
                        tasks_s,
                        ">= 0.7x",
                    )
                )
                # The same fan-out with one delivery per task: why tasks carry batches.
                single_s = bench_fanout(n, batch_size=1)
                rows.append(
                    Row(
                        f"  same, one delivery per task ({name})",
                        single_s,
                        "/s",
                        "bare Celery no-op tasks/s",
                        tasks_s,
                        "(reported)",
                    )
                )
                add, bare = bench_add(10 if args.quick else 30, home)
                rows.append(
                    Row(
                        f"notice add, 1 endpoint ({name})",
                        add * 1000,
                        "ms",
                        "apply_async + 1 SQLite commit",
                        bare * 1000,
                        "(reported)",
                    )
                )
                lat = bench_latency(5 if args.quick else 20)
                rows.append(
                    Row(
                        f"enqueue-to-delivered, 1 endpoint ({name})",
                        lat * 1000,
                        "ms",
                        "bare apply_async (send only)",
                        bare * 1000,
                        "(reported)",
                    )
                )
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait()
    from bench.wecom import wecom_rows  # imports Row from this module

    rows += wecom_rows(quick=args.quick)
    if not args.no_devices:
        from bench.led import led_rows  # imports Row from this module

        rows += led_rows(quick=args.quick)
    if not args.no_dashboard:
        from bench.dashboard import dashboard_rows

        rows += dashboard_rows(quick=args.quick)
    if not args.no_speakers:
        from bench.speaker import speaker_rows

        rows += speaker_rows(quick=args.quick)
    width = max(len(r.what) for r in rows)
    print(f"{'figure':<{width}}  {'value':>10}  {'baseline':>10}  ratio   goal      baseline is")
    for r in rows:
        print(
            f"{r.what:<{width}}  {r.value:>8.1f}{r.unit:>2}  {r.baseline:>8.1f}{r.unit:>2}  "
            f"{r.ratio:5.2f}x  {r.goal:<8}  {r.baseline_what}"
        )
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ | {"ratio": r.ratio} for r in rows], indent=2))


if __name__ == "__main__":
    main()
