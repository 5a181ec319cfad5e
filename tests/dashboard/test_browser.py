"""A real browser (Debian's chromium driven by Playwright) against a real dashboard and a
real Celery worker: log in, see the failed delivery, open it, retry it, see it delivered;
then switch the pages to English."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from content_queue.accounts import Accounts, Role
from content_queue.models import build_notice
from content_queue.settings import Settings, get_settings, reset_settings
from content_queue.store import Store
from dashboard.server import DashboardServer, start_in_thread
from dispatcher import service
from dispatcher.doorbell import ring
from dispatcher.worker import spawn_worker
from tests.conftest import REPO
from tests.dashboard.conftest import PASSWORD, fast_hasher

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def chromium() -> str:
    if not os.path.exists(CHROMIUM):
        if os.environ.get("VILLAGECAST_REQUIRE_SERVICES"):
            pytest.fail(f"{CHROMIUM} is not installed (scripts/dev setup installs it)")
        pytest.skip(f"{CHROMIUM} is not installed; `scripts/dev setup` installs it")
    return CHROMIUM


@pytest.fixture
def worker(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[subprocess.Popen[bytes]]:
    monkeypatch.setenv("VILLAGECAST_CHANNEL_TV_FEED", "tests.plugins:FailsOnceChannel")
    monkeypatch.setenv("VILLAGECAST_WEB_PORT", "0")
    reset_settings()
    home.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    log = (home / "worker.log").open("wb")
    proc = spawn_worker(env=env, concurrency=1, stdout=log, stderr=log)
    yield proc
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    log.close()


def _wait_status(store: Store, delivery_id: int, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        (d,) = store.deliveries(ids=[delivery_id])
        if d.status == status:
            return
        assert time.monotonic() < deadline, f"delivery {delivery_id} is {d.status}"
        time.sleep(0.2)


def test_log_in_see_the_failure_retry_it_and_see_it_delivered(
    chromium: str,
    worker: subprocess.Popen[bytes],
    home: Path,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect, sync_playwright

    settings: Settings = get_settings()
    store = service.open_store(settings)
    registry = service.registry_cache.get(settings.devices)

    def doorbell(ids: object, countdown: float | None) -> object:
        return ring(ids, settings=settings, countdown=countdown)  # type: ignore[arg-type]

    sub = service.submit_notice(
        build_notice(
            {
                "title": "刘庄村停水通知",
                "body": "明天上午8点至12点停水，请提前储水。",
                "category": "village_affairs",
                "targets": {"villages": ["east-liu"]},
                "channels": ["tv_feed"],
            }
        ),
        store=store,
        registry=registry,
        ring=doorbell,
    )
    (delivery,) = sub.deliveries
    _wait_status(store, delivery.id, "failed")  # the worker tried, the stand-in refused

    accounts = Accounts(store, hasher=fast_hasher())
    accounts.add_user(
        username="east", password=PASSWORD, role=Role.TOWNSHIP_OFFICER, township_id="east"
    )
    server: DashboardServer = start_in_thread(
        settings, store, lambda: registry, ring=doorbell, accounts=accounts
    )
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=ARGS)
            page = browser.new_page(locale="zh-CN", viewport={"width": 1280, "height": 900})
            page.goto(f"{server.web_url}/overview")
            expect(page).to_have_url(f"{server.web_url}/login?next=/overview")
            page.fill("input[name=username]", "east")
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            expect(page).to_have_url(f"{server.web_url}/overview")
            row = page.locator(f"#notices tr[data-notice='{sub.notice.id}']")
            expect(row).to_have_class("has-failed")
            expect(row.locator("td.cell.failed")).to_have_count(1)
            expect(page.locator("#failed-total")).to_have_text("1")
            page.screenshot(path=str(shots / "1-overview.png"), full_page=True)

            row.locator("a").first.click()
            expect(page).to_have_url(f"{server.web_url}/notices/{sub.notice.id}")
            line = page.locator(f"#delivery-{delivery.id}")
            expect(line.locator("[data-status]")).to_have_attribute("data-status", "failed")
            expect(line).to_contain_text("签名密钥不对")
            expect(line).to_contain_text("建议")
            page.screenshot(path=str(shots / "2-notice-failed.png"), full_page=True)

            line.locator("button.retry").click()
            expect(page.locator("#flash")).to_contain_text(f"已重新发送投递 {delivery.id}")
            # The worker delivers it this time; the page's live part refreshes by itself.
            expect(page.locator(f"#delivery-{delivery.id} [data-status]")).to_have_attribute(
                "data-status", "delivered", timeout=60_000
            )
            expect(page.locator(f"#delivery-{delivery.id} button.retry")).to_have_count(0)
            page.screenshot(path=str(shots / "3-notice-delivered.png"), full_page=True)

            page.goto(f"{server.web_url}/overview")
            expect(page.locator("#failed-total")).to_have_text("0")
            page.screenshot(path=str(shots / "4-overview-after.png"), full_page=True)

            # The switch in the header: English, remembered on the next page.
            page.locator("#lang-switch a[hreflang=en]").click()
            expect(page.locator("html")).to_have_attribute("lang", "en")
            expect(page.locator("h1")).to_have_text("Delivery overview")
            page.locator("nav a[href='/failures']").click()
            expect(page.locator("h1")).to_have_text("Problems that need a person")
            expect(page.locator("#lang-switch a[hreflang=zh-CN]")).to_have_text("中文")
            page.screenshot(path=str(shots / "5-failures-english.png"), full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
    (d,) = store.deliveries(ids=[delivery.id])
    assert d.status == "delivered" and d.attempts == 1
    assert [a["outcome"] for a in store.attempts(delivery.id)] == ["permanent", "delivered"]
    assert all((shots / f).stat().st_size > 10_000 for f in os.listdir(shots))
    keep = os.environ.get("VC_TEST_SCREENSHOTS")
    if keep:  # copy them out of pytest's temporary directory to look at them
        shutil.copytree(shots, keep, dirs_exist_ok=True)
