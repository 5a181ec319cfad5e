"""The README's main job, run for real: `villagecast demo` and `villagecast up` as processes."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO, _free_port

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VILLAGECAST_")}
    # Embedded defaults, except the embedded broker's port: another run on this machine
    # (a second checkout's tests, a demo) may hold 18830.
    env["VILLAGECAST_EMBEDDED_MQTT_PORT"] = str(_free_port())
    env.update(extra)
    return env


def _demo(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--home", str(home), *args],
        cwd=REPO,
        env=_env(VILLAGECAST_LANG="zh"),
        capture_output=True,
        text=True,
        timeout=240,
    )


def _official_account_deliveries(home: Path) -> list[dict[str, object]]:
    with sqlite3.connect(home / "villagecast.sqlite") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT d.endpoint_id, d.status, d.error_code, d.error_zh, d.details, n.title "
            "FROM deliveries d JOIN notices n ON n.id = d.notice_id "
            "WHERE d.kind = 'wechat_official_account' ORDER BY d.id"
        ).fetchall()
    return [{**dict(r), "details": json.loads(r["details"] or "{}")} for r in rows]


def test_demo_delivers_everything_on_embedded_defaults(tmp_path: Path) -> None:
    proc = _demo(tmp_path / "demo")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    assert "已送达" in out and "寒潮蓝色预警" in out
    assert (tmp_path / "demo" / "villagecast.sqlite").exists()
    # The official accounts are in the demo: their AppSecrets are made up for a local
    # stand-in of the WeChat API, and wechatpy really publishes and mass-sends through it.
    assert "已启动模拟微信公众号接口（2 个公众号" in out
    assert "没有配置密钥" not in out
    assert "模拟公众号共发表 3 篇文章，群发 1 次" in out
    oa = _official_account_deliveries(tmp_path / "demo")
    published = [d for d in oa if d["endpoint_id"] == "dongcheng-oa"]
    mass = [d for d in oa if d["endpoint_id"] == "qiji-oa"]
    # dongcheng-oa covers the finance notice's village, the subsidy's township and the
    # county-wide emergency; qiji-oa (mass_send) only the emergency, which takes a send.
    assert [d["title"] for d in published] == [
        "2026年10月村级财务收支公开",
        "2026年耕地地力保护补贴发放公示",
        "寒潮蓝色预警",
    ]
    assert all(d["status"] == "delivered" for d in oa), oa
    for d in published:
        details = d["details"]
        assert isinstance(details, dict)
        assert details["publish_status"] == "published" and details["article_id"]
    (emergency,) = mass
    assert emergency["title"] == "寒潮蓝色预警"
    details = emergency["details"]
    assert isinstance(details, dict)
    assert details["mode"] == "mass_send"
    assert details["mass_status"] == {"all": "SEND_SUCCESS"}


HELD_DEVICES = textwrap.dedent(
    """\
    version: 1
    county: {code: "371521", name: 阳谷县}
    townships:
      - id: dongcheng
        name: 东城镇
        villages:
          - id: dongcheng-liuzhuang
            name: 刘庄村
            endpoints: [{id: dongcheng-liuzhuang-tv, kind: tv_feed}]
    official_accounts:
      - id: dongcheng-oa
        name: 东城镇发布
        app_id: wx3f9a1c27d84e605b
        app_secret_env: VC_WECHAT_DONGCHENG_SECRET
        mode: mass_send
        account_type: subscription
        digest_time: "18:00"
        covers_townships: [dongcheng]
    """
)


def test_demo_holds_what_the_mass_send_quota_cannot_take_for_the_digest(
    tmp_path: Path,
) -> None:
    """A subscription account mass-sends once a day: the emergency takes that send, the
    routine notices wait for the 18:00 digest, and the demo says so and still succeeds."""
    devices = tmp_path / "devices.yaml"
    devices.write_text(HELD_DEVICES, encoding="utf-8")
    proc = _demo(tmp_path / "demo", "--devices", str(devices))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    oa = {d["title"]: d for d in _official_account_deliveries(tmp_path / "demo")}
    assert oa["寒潮蓝色预警"]["status"] == "delivered"
    for title in ("2026年10月村级财务收支公开", "2026年耕地地力保护补贴发放公示"):
        held = oa[title]
        assert (held["status"], held["error_code"]) == ("scheduled", "held")
        assert "18:00 的汇总群发" in str(held["error_zh"])
    lines = [line for line in out.splitlines() if "暂不群发" in line]
    assert len(lines) == 2, out[-3000:]
    assert all("dongcheng-oa" in line and "18:00 的汇总群发" in line for line in lines)
    assert "模拟公众号共发表 0 篇文章，群发 1 次" in out


def test_up_runs_worker_sweeper_and_feed_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    port = 18765 + os.getpid() % 1000
    env = _env(
        VILLAGECAST_HOME=str(home),
        VILLAGECAST_DEVICES=str(REPO / "devices.yaml"),
        VILLAGECAST_FEED_PORT=str(port),
        VILLAGECAST_WEB_PORT=str(port + 1000),
        VILLAGECAST_LANG="zh",
    )
    up = subprocess.Popen(
        [sys.executable, "-m", "cli", "up"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "feed server did not start"
            time.sleep(0.2)
        village = _first_tv_village()
        add = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "notice",
                "add",
                "--title",
                "停水通知",
                "--body",
                "明天上午8点至12点停水，请提前储水。",
                "--category",
                "village_affairs",
                "--village",
                village,
                "--channel",
                "tv_feed",
                "--wait",
                "--timeout",
                "60",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert add.returncode == 0, add.stdout + add.stderr
        feed = httpx.get(f"http://127.0.0.1:{port}/feeds/{village}.json", timeout=5).json()
        assert feed["items"][0]["title"] == "停水通知"
        # The dashboard runs too, on its own (loopback) address; the feed address serves
        # only the public paths.
        login = httpx.get(f"http://127.0.0.1:{port + 1000}/login", timeout=5)
        assert login.status_code == 200 and "登录" in login.text
        assert httpx.get(f"http://127.0.0.1:{port}/login", timeout=5).status_code == 404
    finally:
        os.killpg(up.pid, signal.SIGINT)
        out, _ = up.communicate(timeout=60)
    text = out.decode("utf-8", "replace")
    assert up.returncode == 0, text[-3000:]
    assert "villagecast 已启动" in text and "正在停止" in text
    assert f"乡镇监控页面：http://127.0.0.1:{port + 1000}/" in text


def _first_tv_village() -> str:
    from content_queue.registry import load_registry

    registry = load_registry(REPO / "devices.yaml")
    for vid, village in registry.villages.items():
        if any(
            ep.kind == "tv_feed" and not getattr(ep, "ingest_url", None) for ep in village.endpoints
        ):
            return vid
    raise AssertionError("devices.yaml has no pull-only tv_feed village")
