"""The disclosure board through a real worker process: a templated subsidy list is printed,
corrected and withdrawn, and the print folder always holds what the board should show."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest

from channels.tv_feed import item_url
from content_queue.models import build_notice
from content_queue.registry import load_registry
from content_queue.settings import get_settings, reset_settings
from content_queue.store import Store
from content_queue.templates import fill_template, get_template
from dispatcher import service
from dispatcher.doorbell import ring
from tests.channels.pdfcheck import A3, page_sizes, qr_codes, texts
from tests.dispatcher import test_worker_integration as worker_it
from tests.dispatcher.test_worker_integration import Workers

workers = worker_it.workers  # the real worker processes fixture

pytestmark = pytest.mark.slow

DEVICES = """\
version: 1
county: {code: "371521", name: 示例县}
townships:
  - id: east
    name: 东城镇
    villages:
      - id: east-liu
        name: 刘庄村
        endpoints:
          - {id: east-liu-tv, kind: tv_feed}
          - {id: east-liu-board, kind: bulletin, folder: print/liu, paper: A3}
"""

SUBSIDY = """\
期间,2026年
补贴项目,耕地地力保护补贴

户主,身份证号,面积（亩）,标准（元/亩）,金额（元）
张三,371521198001010017,10.5,120,"1,260.00"
李四,11010519491231002X,6,120,720
"""


def wait_for(check: Callable[[], bool], what: str, w: Workers, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}\n{w.logs()[-4000:]}")


def statuses(store: Store, nid: int, action: str) -> dict[str, str]:
    return {d.kind: d.status for d in store.deliveries(nid) if d.action == action}


def test_board_poster_printed_corrected_and_withdrawn(
    home: Path, tmp_path: Path, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = tmp_path / "board.yaml"
    devices.write_text(DEVICES, encoding="utf-8")
    monkeypatch.setenv("VILLAGECAST_DEVICES", str(devices))
    reset_settings()
    settings = get_settings()
    store = service.open_store(settings)
    registry = load_registry(devices)
    folder = home / "print" / "liu"

    def ringer(ids: object, countdown: float | None) -> object:
        return ring(ids, settings=settings, countdown=countdown)  # type: ignore[arg-type]

    csv = tmp_path / "补贴.csv"
    csv.write_text(SUBSIDY, encoding="utf-8")
    filled = fill_template(
        get_template("farm_subsidy"),
        data_file=csv,
        place="刘庄村",
        now=datetime.now(),
    )
    draft = build_notice({**filled.notice_fields(), "targets": {"villages": ["east-liu"]}})
    workers.start()
    nid = service.submit_notice(draft, store=store, registry=registry, ring=ringer).notice.id
    wait_for(
        lambda: statuses(store, nid, "publish").get("bulletin") == "delivered",
        "the poster",
        workers,
    )
    first = folder / f"east-liu-notice-{nid:06d}-r1.pdf"
    data = first.read_bytes()
    assert page_sizes(data) == [A3]
    assert "李四" in texts(data)[0] and "110105********002X" in texts(data)[0]
    assert qr_codes(data) == [item_url(settings.resolved_feed_base_url, "east-liu", nid)]

    # A correction: the new revision is printed, the old poster becomes a withdrawal notice.
    fixed = build_notice(
        {
            **draft.model_dump(mode="json", exclude_none=True),
            "title": "刘庄村2026年耕地地力保护补贴发放公示（更正）",
            "revision": 2,
            "supersedes": nid,
        }
    )
    submitted, _ = service.correct_notice(
        fixed, store=store, registry=registry, ring=ringer, actor="会计", reason="标题漏了批次"
    )
    new_id = submitted.notice.id
    wait_for(
        lambda: (
            statuses(store, nid, "recall").get("bulletin") == "delivered"
            and statuses(store, new_id, "publish").get("bulletin") == "delivered"
        ),
        "the correction",
        workers,
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        f"east-liu-notice-{nid:06d}-r1-withdrawn.pdf",
        f"east-liu-notice-{new_id:06d}-r2.pdf",
    ]
    notice_text = texts((folder / f"east-liu-notice-{nid:06d}-r1-withdrawn.pdf").read_bytes())[0]
    assert "此通知已撤回" in notice_text and "撤回原因：标题漏了批次" in notice_text
    assert f"更正后的通知为第{new_id}号（第2版）" in notice_text

    # Withdrawing the correction too: nothing left to pin up but withdrawal notices.
    service.withdraw_notice(new_id, store=store, ring=ringer, actor="会计", reason="暂缓公示")
    wait_for(
        lambda: statuses(store, new_id, "recall").get("bulletin") == "delivered",
        "the withdrawal",
        workers,
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        f"east-liu-notice-{nid:06d}-r1-withdrawn.pdf",
        f"east-liu-notice-{new_id:06d}-r2-withdrawn.pdf",
    ]
    (recall,) = [
        d for d in store.deliveries(new_id) if d.action == "recall" and d.kind == "bulletin"
    ]
    assert recall.details and recall.details["removed"] == f"east-liu-notice-{new_id:06d}-r2.pdf"
