"""WeCom webhook adapter vs a bare httpx POST loop of the same payloads, against the stand-in.

    python bench/wecom.py [--quick] [--groups 200] [--runs 5] [--latency MS] [--json FILE]

The stand-in (refdevice/wecom_standin.py) runs in a separate process on loopback with its
limit raised out of the way. For each run, one notice to N groups (N robots), in one SQLite
store (WAL, as a worker runs it):

- adapter: the path a worker runs for its tasks, without Celery: the notice's delivery ids
  in tasks of the channel's batch (25), each through ``service.process_deliveries`` (claim
  the chunk, render and split per village, the robots' send locks and the part ledger, the
  POSTs side by side with each errcode read, then the chunk's outcomes recorded). The
  shared limiter is off (``wecom_rate_per_minute`` 0, the goal's condition) and, in a second
  row, on (20 a minute; the notice fits every robot's window, so nothing waits).
- bare loop: one httpx.Client posting the very same JSON bodies (rendered beforehand, for
  the same villages) to the same keys, one after the other, reading each errcode. Measured
  before and after the adapter; the faster of the two is the baseline.
- bare side by side: the same payloads sent as the adapter sends them, without the store:
  a chunk of 25 groups at a time, one message per robot per round, on a pool of as many
  threads as the channel uses. The adapter's ratio to it is its own overhead.

Two notices: a short one (one markdown message) and a long one (three parts).
``--latency 30`` makes the stand-in answer each request after 30 ms, about WeCom's round
trip from a county office, where sending robots side by side is what counts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.run import Row  # noqa: E402

SENTENCE = "请各位村民于本周六上午九点到村委会参加村民代表会议，讨论今年惠农补贴的发放名单。"
NOTICES = {
    "1 part": SENTENCE * 3,
    "3 parts": "".join(f"第{i:02d}条。{SENTENCE}" for i in range(70)),
}


def _serve(keys: list[str], port_out: Any, stop: Any, latency: float) -> None:
    from refdevice.wecom_standin import WecomStandin

    with WecomStandin(rate=10**9, window=60.0, latency=latency) as standin:
        for key in keys:
            standin.add_key(key)
        port_out.put(standin.base_url)
        stop.wait()


@contextmanager
def _standin(keys: list[str], latency: float = 0.0) -> Iterator[str]:
    ctx = multiprocessing.get_context("spawn")
    port_out, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(keys, port_out, stop, latency), daemon=True)
    proc.start()
    try:
        yield str(port_out.get(timeout=60))
    finally:
        stop.set()
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()


def _county(n: int) -> str:
    lines = ["version: 1", "county: {code: '371521', name: 基准县}", "townships:"]
    lines += ["  - id: t", "    name: 基准镇", "    villages:"]
    for i in range(n):
        lines += [
            f"      - id: v{i:05d}",
            f"        name: 村{i}",
            "        endpoints:",
            f"          - {{id: v{i:05d}-wecom, kind: wecom_group, "
            f"webhook_key_env: VC_BENCH_WECOM_{i:05d}}}",
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Took:
    """Wall-clock seconds, and CPU seconds of this process (every thread): under load from
    other processes the wall clock swings, while the CPU a path spends here does not."""

    wall: float
    cpu: float

    @staticmethod
    def start() -> _Took:
        return _Took(time.perf_counter(), time.process_time())

    def stop(self) -> _Took:
        return _Took(time.perf_counter() - self.wall, time.process_time() - self.cpu)

    @staticmethod
    def best(a: _Took, b: _Took) -> _Took:
        return a if a.wall <= b.wall else b


class _Bench:
    def __init__(self, groups: int, base_url: str, keys: list[str], home: Path) -> None:
        from content_queue.registry import load_registry
        from content_queue.settings import get_settings, reset_settings
        from dispatcher import service

        self.groups = groups
        self.base_url = base_url
        self.keys = keys
        devices = home / "devices.yaml"
        devices.write_text(_county(groups), encoding="utf-8")
        os.environ["VILLAGECAST_HOME"] = str(home)
        os.environ["VILLAGECAST_DEVICES"] = str(devices)
        os.environ["VILLAGECAST_WECOM_BASE_URL"] = base_url
        for i, key in enumerate(keys):
            os.environ[f"VC_BENCH_WECOM_{i:05d}"] = key
        reset_settings()
        self.settings = get_settings()
        self.store = service.open_store(self.settings)
        self.registry = load_registry(devices)

    def contexts(self, body: str, *, limiter: bool) -> list[Any]:
        from channels.base import DeliveryContext
        from content_queue.models import build_notice
        from content_queue.settings import get_settings, reset_settings
        from content_queue.store import PlannedDelivery

        os.environ["VILLAGECAST_WECOM_RATE_PER_MINUTE"] = "20" if limiter else "0"
        reset_settings()
        if limiter:
            # Earlier runs' messages would fill the robots' windows: start each run empty.
            from sqlalchemy import delete

            from content_queue.db import RateEvent

            with self.store.session() as s:
                s.execute(delete(RateEvent))
        settings = get_settings()
        draft = build_notice(
            {
                "title": "基准测试通知",
                "body": body,
                "category": "meeting",
                "targets": {"county": True},
            }
        )
        plans = [
            PlannedDelivery(f"v{i:05d}-wecom", "wecom_group", f"v{i:05d}", "t")
            for i in range(self.groups)
        ]
        notice, deliveries = self.store.add_notice(draft, plans)
        return [
            DeliveryContext(
                delivery_id=d.id,
                attempt=1,
                notice=notice,
                endpoint=self.registry.endpoints[d.endpoint_id],
                village_id=d.village_id,
                registry=self.registry,
                settings=settings,
                store=self.store,
            )
            for d in deliveries
        ]

    def adapter(self, body: str, *, limiter: bool) -> _Took:
        from channels.base import get_channel
        from dispatcher import service
        from dispatcher.doorbell import batches

        contexts = self.contexts(body, limiter=limiter)
        ids = [c.delivery_id for c in contexts]
        settings = contexts[0].settings
        channel = get_channel("wecom_group")
        assert channel is not None
        size = settings.batch_size_for(channel.task_batch)
        t0 = _Took.start()
        for task in batches(ids, size):
            done = service.process_deliveries(
                task, store=self.store, settings=settings, ring=None, kind="wecom_group"
            )
            if set(done.values()) != {"delivered"}:
                raise RuntimeError(f"not delivered: {done}")
        return t0.stop()

    def payloads(self, body: str) -> list[list[tuple[str, bytes]]]:
        """Each group's messages as the adapter renders them (same village, same format)."""
        from channels._wecom_render import render_notice

        out = []
        for ctx, key in zip(self.contexts(body, limiter=False), self.keys, strict=True):
            village = self.registry.village_name(ctx.village_id) if ctx.village_id else None
            messages = render_notice(ctx.notice, fmt="markdown", markdown_v2=False, village=village)
            out.append(
                [(key, json.dumps(m.body(), ensure_ascii=False).encode("utf-8")) for m in messages]
            )
        return out

    def bare(self, body: str) -> _Took:
        import httpx

        groups = self.payloads(body)
        url = f"{self.base_url}/cgi-bin/webhook/send"
        headers = {"Content-Type": "application/json; charset=utf-8"}
        with httpx.Client(timeout=10) as client:
            t0 = _Took.start()
            for messages in groups:
                for key, data in messages:
                    resp = client.post(url, params={"key": key}, content=data, headers=headers)
                    if resp.json()["errcode"] != 0:
                        raise RuntimeError(resp.text)
            return t0.stop()

    def bare_side_by_side(self, body: str) -> _Took:
        from concurrent.futures import ThreadPoolExecutor

        import httpx

        from channels.wecom_group import WecomGroupChannel

        groups = self.payloads(body)
        url = f"{self.base_url}/cgi-bin/webhook/send"
        headers = {"Content-Type": "application/json; charset=utf-8"}
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=64)
        with (
            httpx.Client(timeout=10, limits=limits) as client,
            ThreadPoolExecutor(WecomGroupChannel.parallel) as pool,
        ):

            def post(message: tuple[str, bytes]) -> None:
                key, data = message
                resp = client.post(url, params={"key": key}, content=data, headers=headers)
                if resp.json()["errcode"] != 0:
                    raise RuntimeError(resp.text)

            t0 = _Took.start()
            size = WecomGroupChannel.claim_chunk
            for chunk in (groups[i : i + size] for i in range(0, len(groups), size)):
                for n in range(max(len(g) for g in chunk)):
                    list(pool.map(post, [g[n] for g in chunk if n < len(g)]))
            return t0.stop()


def wecom_rows(
    *,
    quick: bool = False,
    groups: int | None = None,
    runs: int | None = None,
    latency_ms: float = 0.0,
) -> list[Row]:
    groups = groups or (50 if quick else 200)
    runs = runs or (3 if quick else 5)
    keys = [f"{i:05d}{'0' * 31}"[:36] for i in range(groups)]
    home = Path(tempfile.mkdtemp(prefix="vc-bench-wecom-"))
    saved = dict(os.environ)
    rows: list[Row] = []
    from channels.wecom_group import WecomGroupChannel

    try:
        with _standin(keys, latency_ms / 1000) as base_url:
            bench = _Bench(groups, base_url, keys, home)
            bench.bare(NOTICES["1 part"])  # warm the stand-in, the store and the client
            bench.bare_side_by_side(NOTICES["1 part"])
            bench.adapter(NOTICES["1 part"], limiter=False)
            for label, body in NOTICES.items():
                ours, ours_lim, bare, side = [], [], [], []
                for _ in range(runs):
                    before = bench.bare(body)
                    side_before = bench.bare_side_by_side(body)
                    ours.append(bench.adapter(body, limiter=False))
                    ours_lim.append(bench.adapter(body, limiter=True))
                    side.append(_Took.best(side_before, bench.bare_side_by_side(body)))
                    bare.append(_Took.best(before, bench.bare(body)))

                def ms(took: list[_Took], cpu: bool = False) -> float:
                    return statistics.median(t.cpu if cpu else t.wall for t in took) * 1e3 / groups

                rtt = f", answers after {latency_ms:g} ms" if latency_ms else ""
                loop = "bare httpx POST loop, same payloads"
                threads = f"bare httpx, same payloads, side by side ({WecomGroupChannel.parallel})"
                rows += [
                    Row(
                        f"WeCom adapter (worker path), {groups} groups, {label}{rtt}, "
                        "limiter off (ms/group)",
                        ms(ours),
                        "ms",
                        loop,
                        ms(bare),
                        "<= 1.3x",
                    ),
                    Row(
                        "  same, limiter on (20/min)",
                        ms(ours_lim),
                        "ms",
                        loop,
                        ms(bare),
                        "(reported)",
                    ),
                    Row(
                        "  limiter off, vs sends side by side",
                        ms(ours),
                        "ms",
                        threads,
                        ms(side),
                        "(reported)",
                    ),
                    Row(
                        "  CPU of this process, limiter off",
                        ms(ours, True),
                        "ms",
                        loop,
                        ms(bare, True),
                        "(reported)",
                    ),
                    Row(
                        "  CPU, vs sends side by side",
                        ms(ours, True),
                        "ms",
                        threads,
                        ms(side, True),
                        "(reported)",
                    ),
                ]
    finally:
        os.environ.clear()
        os.environ.update(saved)
        from content_queue.settings import reset_settings

        reset_settings()
        shutil.rmtree(home, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--groups", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument(
        "--latency", type=float, default=0.0, help="ms the stand-in waits before each answer"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = wecom_rows(quick=args.quick, groups=args.groups, runs=args.runs, latency_ms=args.latency)
    for r in rows:
        print(
            f"{r.what:<62} {r.value:8.2f} {r.unit}  {r.baseline:8.2f} {r.unit}  "
            f"{r.ratio:5.2f}x  {r.goal}"
        )
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ | {"ratio": r.ratio} for r in rows], indent=2))


if __name__ == "__main__":
    main()
