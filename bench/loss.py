"""How much the embedded broker loses when a worker is killed, with and without the sweeper.

    python bench/loss.py [--deliveries 300] [--broker embedded|redis]

A fan-out goes to a recording channel; the worker is killed with SIGKILL a quarter of the
way through and started again. Without the sweeper, whatever the broker had handed to
the dead worker is never delivered; with it, everything is.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run import _redis, environment  # noqa: E402


def _open(nid: int) -> int:
    from content_queue.settings import get_settings
    from content_queue.store import TERMINAL
    from dispatcher import service

    return service.open_store(get_settings()).count_open([nid], TERMINAL)


def run(deliveries: int, sweeper: bool, broker: str | None) -> tuple[int, int, float]:
    """Returns (deliveries not terminal once things settle, side effects counted, seconds)."""
    from bench.run import _submit
    from dispatcher.worker import spawn_worker
    from tests.plugins import read_side_effects

    with environment(broker, deliveries) as home:
        os.environ["VILLAGECAST_CHANNEL_TV_FEED"] = "tests.plugins:RecordingChannel"
        os.environ["VC_TEST_SLEEP"] = "0.01"
        os.environ["VILLAGECAST_BATCH_SIZE"] = "10"
        os.environ["VILLAGECAST_LEASE_SECONDS"] = "3"
        os.environ["VILLAGECAST_REDOORBELL_SECONDS"] = "3"
        os.environ["VILLAGECAST_SWEEP_INTERVAL"] = "0.5"
        from content_queue.settings import reset_settings

        reset_settings()
        env = dict(os.environ)
        proc = spawn_worker(
            env=env,
            concurrency=2,
            sweeper=sweeper,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        t0 = time.perf_counter()
        nid = _submit()
        while len(read_side_effects(home)) < deliveries // 4:
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc = spawn_worker(
            env=env,
            concurrency=2,
            sweeper=sweeper,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        last, still = -1, time.monotonic()
        while True:
            left = _open(nid)
            if left == 0:
                break
            if left != last:
                last, still = left, time.monotonic()
            elif time.monotonic() - still > 10:
                break  # no progress for 10 s: what is left is lost
            time.sleep(0.2)
        elapsed = time.perf_counter() - t0
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        return left, len(read_side_effects(home)), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--deliveries", type=int, default=300)
    parser.add_argument("--broker", choices=["embedded", "redis"], default="embedded")
    args = parser.parse_args()
    redis_proc, url = (None, None)
    if args.broker == "redis":
        redis_proc, url = _redis()
    try:
        print(f"{'sweeper':<8} {'deliveries':>10} {'lost':>6} {'sends':>6} {'seconds':>8}")
        for sweeper in (False, True):
            lost, sends, secs = run(args.deliveries, sweeper, url)
            state = "on" if sweeper else "off"
            row = f"{state:<8} {args.deliveries:>10} {lost:>6} {sends:>6} {secs:>8.1f}"
            print(row)
    finally:
        if redis_proc is not None:
            redis_proc.terminate()


if __name__ == "__main__":
    main()
