"""The README's main job, run for real: `villagecast demo` and `villagecast up` as processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VILLAGECAST_")}
    env.update(extra)
    return env


def test_demo_delivers_everything_on_embedded_defaults(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--home", str(tmp_path / "demo")],
        cwd=REPO,
        env=_env(VILLAGECAST_LANG="zh"),
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Traceback" not in out
    assert "已送达" in out and "寒潮蓝色预警" in out
    assert (tmp_path / "demo" / "villagecast.sqlite").exists()


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
