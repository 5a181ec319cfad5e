"""Dashboard load: the overview of a large county, rendered server-side, beside a bare query.

    python bench/dashboard.py [--villages 1000] [--days 30] [--runs 9]

Seeds a county of 1,000 villages (20 townships of 50) with 5 endpoints each and 30 days of
notices directly into the store (each day 40 notices, each to one township: 250 deliveries
a notice, 300,000 in all, mostly delivered, some pending, failed and expired), 5,000 device
rows (a tenth offline), then times ``GET /overview?days=30`` over HTTP against the real
dashboard (uvicorn on loopback, signed in) as the county administrator and as a township
officer. The baseline, measured in the same run on the same database, is the bare
aggregate a hand-written report would run:

    SELECT village_id, kind, status, count(*) FROM deliveries
    WHERE action = 'publish' AND notice_id IN (SELECT id FROM notices WHERE publish_at >= ?)
    GROUP BY village_id, kind, status

The goal is under 300 ms for the page.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run import Row  # noqa: E402

TOWNSHIPS = 20
KINDS = ("tv_feed", "led", "speaker", "wecom_group", "speaker")
PASSWORD = "bench-password-1"


def devices_yaml(villages: int) -> str:
    per = max(1, villages // TOWNSHIPS)
    lines = ["version: 1", "county: {code: '371521', name: 基准县}", "townships:"]
    for t in range(TOWNSHIPS):
        lines += [f"  - id: t{t:02d}", f"    name: 第{t}镇", "    villages:"]
        for i in range(t * per, (t + 1) * per):
            v = f"v{i:04d}"
            lines += [
                f"      - id: {v}",
                f"        name: 村{i}",
                "        endpoints:",
                f"          - {{id: {v}-tv, kind: tv_feed}}",
                f"          - {{id: {v}-led, kind: led, device_id: led-{i:04d}}}",
                f"          - {{id: {v}-spk1, kind: speaker, device_id: spk1-{i:04d}}}",
                f"          - {{id: {v}-wecom, kind: wecom_group, webhook_key_env: VC_W{i:04d}}}",
                f"          - {{id: {v}-spk2, kind: speaker, device_id: spk2-{i:04d}}}",
            ]
    return "\n".join(lines) + "\n"


def seed(url: str, *, villages: int, days: int, per_day: int, now: datetime) -> int:
    """Write notices, deliveries and devices straight into the store; returns deliveries."""
    from sqlalchemy import insert

    from content_queue.db import Delivery, Device, Notice
    from content_queue.store import Store

    store = Store(url)
    rng = random.Random(6)
    per = villages // TOWNSHIPS
    endpoint_suffix = ("tv", "led", "spk1", "wecom", "spk2")
    statuses = ["delivered"] * 90 + ["sent"] * 4 + ["pending"] * 2 + ["failed"] * 2
    statuses += ["expired"] * 2
    total = 0
    nid = 0
    with store.session() as s:
        for day in range(days):
            for k in range(per_day):
                nid += 1
                t = k % TOWNSHIPS
                published = now - timedelta(days=day, minutes=k * 7)
                s.execute(
                    insert(Notice),
                    [
                        {
                            "id": nid,
                            "title": f"第{nid}号通知",
                            "body": "基准测试内容",
                            "category": rng.choice(["meeting", "village_affairs", "emergency"]),
                            "priority": "routine",
                            "targets": {"townships": [f"t{t:02d}"]},
                            "publish_at": published,
                            "author": "bench",
                            "revision": 1,
                            "state": "active",
                            "created_at": published,
                        }
                    ],
                )
                rows = []
                for i in range(t * per, (t + 1) * per):
                    for kind, suffix in zip(KINDS, endpoint_suffix, strict=True):
                        status = rng.choice(statuses)
                        rows.append(
                            {
                                "notice_id": nid,
                                "endpoint_id": f"v{i:04d}-{suffix}",
                                "kind": kind,
                                "action": "publish",
                                "village_id": f"v{i:04d}",
                                "township_id": f"t{t:02d}",
                                "status": status,
                                "attempts": 1,
                                "due_at": published,
                                "updated_at": published,
                                "error_code": "device_unknown_key" if status == "failed" else None,
                            }
                        )
                s.execute(insert(Delivery), rows)
                total += len(rows)
        s.execute(
            insert(Device),
            [
                {
                    "device_id": f"{prefix}-{i:04d}",
                    "state": "offline" if rng.random() < 0.1 else "online",
                    "last_seen": now - timedelta(minutes=rng.randint(1, 600)),
                    "capabilities": [],
                    "showing": [],
                    "updated_at": now,
                }
                for i in range(villages)
                for prefix in ("led", "spk1", "spk2")
            ],
        )
    store.engine.dispose()
    store.read_engine.dispose()
    return total


def _timed_ms(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def measure(
    *,
    villages: int,
    days: int,
    per_day: int,
    runs: int,
    samples: dict[str, list[float]] | None = None,
) -> dict[str, float]:
    """Medians (ms) of each page and bare query, interleaved ``runs`` times after a warm-up;
    every sample is also put in ``samples`` when given."""
    samples = {} if samples is None else samples
    import httpx
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    from content_queue.accounts import Accounts, Role
    from content_queue.registry import load_registry
    from content_queue.settings import Settings
    from content_queue.store import Store
    from dashboard.server import start_in_thread

    home = Path(tempfile.mkdtemp(prefix="vc-bench-dash-"))
    try:
        devices = home / "devices.yaml"
        devices.write_text(devices_yaml(villages), encoding="utf-8")
        settings = Settings(home=home, devices=devices, web_port=0, feed_port=0)
        url = settings.resolved_database_url
        now = datetime.now(UTC)
        t0 = time.perf_counter()
        rows = seed(url, villages=villages, days=days, per_day=per_day, now=now)
        seeded = time.perf_counter() - t0
        registry = load_registry(devices)
        store = Store(url)
        accounts = Accounts(
            store, hasher=PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024),))
        )
        accounts.add_user(username="county", password=PASSWORD, role=Role.COUNTY_ADMIN)
        accounts.add_user(
            username="t05", password=PASSWORD, role=Role.TOWNSHIP_OFFICER, township_id="t05"
        )
        server = start_in_thread(settings, store, lambda: registry, accounts=accounts)
        out: dict[str, float] = {"rows": float(rows), "seed_s": seeded}
        db = sqlite3.connect(str(home / "villagecast.sqlite"))
        clients: dict[str, httpx.Client] = {}
        try:
            for who in ("county", "t05"):
                c = httpx.Client(base_url=server.web_url, timeout=60)
                login = c.post("/api/v1/login", json={"username": who, "password": PASSWORD})
                login.raise_for_status()
                clients[who] = c

            def page(who: str, window: int = days) -> None:
                r = clients[who].get("/overview", params={"days": window})
                r.raise_for_status()
                assert "各村情况" in r.text

            def bare(window: int = days) -> None:
                since = (now - timedelta(days=window)).replace(tzinfo=None).isoformat(sep=" ")
                db.execute(
                    "SELECT village_id, kind, status, count(*) FROM deliveries "
                    "WHERE action = 'publish' AND notice_id IN "
                    "(SELECT id FROM notices WHERE publish_at >= ?) "
                    "GROUP BY village_id, kind, status",
                    (since,),
                ).fetchall()

            steps: dict[str, Callable[[], None]] = {
                "page_county_ms": lambda: page("county"),
                "bare_ms": bare,
                "page_county_7d_ms": lambda: page("county", 7),  # the default view
                "bare_7d_ms": lambda: bare(7),
                "page_t05_ms": lambda: page("t05"),
            }
            for step in steps.values():  # warm: templates compiled, caches filled
                step()
            # Page and bare query interleaved, run after run: the machine's load moves both.
            for key in steps:
                samples[key] = []
            for _ in range(runs):
                for key, step in steps.items():
                    samples[key].append(_timed_ms(step))
            for key, xs in samples.items():
                out[key] = statistics.median(xs)
        finally:
            db.close()
            for c in clients.values():
                c.close()
            server.shutdown()
            server.server_close()
        return out
    finally:
        shutil.rmtree(home, ignore_errors=True)


def dashboard_rows(*, quick: bool) -> list[Row]:
    """The rows bench/run.py adds: the overview page against the bare aggregate."""
    villages = 200 if quick else 1000
    r = measure(villages=villages, days=30, per_day=40, runs=3 if quick else 9)
    n = int(r["rows"])
    base = r["bare_ms"]
    return [
        Row(
            f"dashboard overview, {villages} villages x 5, 30 days ({n:,} deliveries), county",
            r["page_county_ms"],
            "ms",
            "bare SELECT count(*) GROUP BY",
            base,
            "< 300 ms",
        ),
        Row(
            "  same, default view (last 7 days), county",
            r["page_county_7d_ms"],
            "ms",
            "bare SELECT count(*) GROUP BY, 7 days",
            r["bare_7d_ms"],
            "< 300 ms",
        ),
        Row(
            "  same (30 days), one township officer (scoped)",
            r["page_t05_ms"],
            "ms",
            "bare SELECT count(*) GROUP BY",
            base,
            "< 300 ms",
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--villages", type=int, default=1000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--per-day", type=int, default=40, help="notices a day (one township)")
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args(argv)
    r = measure(villages=args.villages, days=args.days, per_day=args.per_day, runs=args.runs)
    print(f"seeded {int(r['rows']):,} deliveries in {r['seed_s']:.1f} s")
    for key, base in (
        ("page_county_ms", "bare_ms"),
        ("page_county_7d_ms", "bare_7d_ms"),
        ("page_t05_ms", "bare_ms"),
    ):
        print(f"{key:18} {r[key]:8.1f} ms   bare {r[base]:.1f} ms   ratio {r[key] / r[base]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
