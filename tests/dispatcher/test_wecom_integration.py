"""A county-wide notice to 400 WeCom groups from 2 real worker processes, against the stand-in.

The robots' limit is shrunk from 20 messages per 60 s to 2 per 3 s (settings
``wecom_rate_per_minute`` and ``wecom_rate_window_seconds``; the stand-in enforces the same
and answers 45009 beyond it), so the same limiter logic runs in seconds: every 3-part notice
needs a second window for its last part, so every delivery is paced (rescheduled while it
keeps its group's send lock) and none may be refused.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from content_queue.models import build_notice
from content_queue.part_ledger import parts_of
from content_queue.registry import load_registry
from content_queue.settings import get_settings, reset_settings
from content_queue.store import TERMINAL
from dispatcher import service
from dispatcher.doorbell import ring
from tests.dispatcher.test_worker_integration import Workers
from tests.standins.wecom import WecomStandin, max_in_window

pytestmark = pytest.mark.slow

GROUPS = 400
RATE, WINDOW = 2, 3.0
SENTENCE = "请各位村民于本周六上午九点到村委会参加村民代表会议，讨论今年惠农补贴的发放名单。"


def _county(n: int) -> str:
    lines = [
        "version: 1",
        "county: {code: '371521', name: 示例县}",
        "townships:",
        "  - id: big",
        "    name: 大镇",
        "    villages:",
    ]
    for i in range(n):
        lines += [
            f"      - id: v{i:04d}",
            f"        name: 第{i}村",
            "        endpoints:",
            f"          - {{id: v{i:04d}-wecom, kind: wecom_group, "
            f"webhook_key_env: VC_WECOM_V{i:04d}}}",
        ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def standin() -> Iterator[WecomStandin]:
    with WecomStandin(rate=RATE, window=WINDOW) as server:
        yield server


def test_county_wide_notice_to_400_groups_is_paced_whole_and_never_doubled(
    home: Path, standin: WecomStandin, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = home.parent / "county.yaml"
    devices.write_text(_county(GROUPS), encoding="utf-8")
    keys = {}
    for i in range(GROUPS):
        keys[f"v{i:04d}-wecom"] = key = standin.add_key()
        monkeypatch.setenv(f"VC_WECOM_V{i:04d}", key)
    monkeypatch.setenv("VILLAGECAST_DEVICES", str(devices))
    monkeypatch.setenv("VILLAGECAST_WECOM_BASE_URL", standin.base_url)
    monkeypatch.setenv("VILLAGECAST_WECOM_RATE_PER_MINUTE", str(RATE))
    monkeypatch.setenv("VILLAGECAST_WECOM_RATE_WINDOW_SECONDS", str(WINDOW))
    monkeypatch.setenv("VILLAGECAST_WECOM_MAX_WAIT_SECONDS", "0")
    monkeypatch.setenv("VILLAGECAST_LEASE_SECONDS", "20")
    monkeypatch.setenv("VILLAGECAST_RETRY_CAP_SECONDS", "5")  # honour the limiter's retry_after
    reset_settings()
    settings = get_settings()
    store = service.open_store(settings)
    home.mkdir(parents=True, exist_ok=True)
    workers = Workers(home)
    try:
        workers.start(concurrency=2)
        workers.start(concurrency=2)
        body = "".join(f"第{i:02d}条。{SENTENCE}" for i in range(70))  # three markdown parts
        submitted = service.submit_notice(
            build_notice(
                {
                    "title": "全县村民代表会议通知",
                    "body": body,
                    "category": "meeting",
                    "targets": {"county": True},
                }
            ),
            store=store,
            registry=load_registry(settings.devices),
            ring=lambda ids, countdown: ring(ids, settings=settings, countdown=countdown),
        )
        assert submitted.rung, submitted.ring_error
        nid = submitted.notice.id
        deadline = time.monotonic() + 240
        while store.count_open([nid], TERMINAL):
            if time.monotonic() > deadline:
                counts = Counter(d.status for d in store.deliveries(nid))
                pytest.fail(f"not finished: {dict(counts)}\n{workers.logs()[-4000:]}")
            time.sleep(0.5)
    finally:
        workers.stop_all()

    deliveries = store.deliveries(nid)
    assert len(deliveries) == GROUPS
    undelivered = [(d.id, d.status, d.error_code, d.error_en) for d in deliveries]
    undelivered = [(*u, parts_of(store, u[0])) for u in undelivered if u[1] != "delivered"]
    assert not undelivered, undelivered  # none skipped
    # Paced, not refused: deliveries waited for their robot's next window (rescheduled,
    # keeping their group's lock) and still all arrived.
    paced = Counter(a["error_code"] for d in deliveries for a in store.attempts(d.id))
    assert paced["rate_limited"] > 0, paced

    records = standin.records
    assert not [r for r in records if r.errcode == 45009], "a robot went over its limit"
    by_key = dict(standin.iter_posted_by_key())
    assert set(by_key) == set(keys.values())
    for key, posted in by_key.items():
        marks = [p.content.splitlines()[0] for p in posted]
        # All three parts, in order, each once.
        assert marks == [f"### 全县村民代表会议通知（{i}/3）" for i in (1, 2, 3)], key
        assert max_in_window([p.at for p in posted], WINDOW) <= RATE, key
    for d in deliveries[:: GROUPS // 20]:
        assert {p.status for p in parts_of(store, d.id).values()} == {"accepted"}
