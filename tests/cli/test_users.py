"""`villagecast users` and `serve`: accounts from the terminal, passwords never in argv."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from cli import app
from tests.conftest import REPO

runner = CliRunner()


def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_users_add_list_and_passwd(home: Path) -> None:
    code, out, err = run(
        "users", "add", "zhang", "--role", "township_officer", "--township", "east",
        "--name", "张三", "--password-stdin", stdin="long-enough-pass-1\n",
    )  # fmt: skip
    assert code == 0, out + err
    assert "已创建账号 zhang" in out
    code, out, _ = run("users", "list", "--json")
    (row,) = json.loads(out)
    assert row["username"] == "zhang" and row["role"] == "township_officer"
    assert row["township"] == "east" and row["name"] == "张三"
    assert "long-enough-pass-1" not in out
    code, out, err = run("users", "passwd", "zhang", "--password-stdin", stdin="another-pass-22\n")
    assert code == 0, out + err
    from content_queue.accounts import Accounts
    from content_queue.settings import get_settings
    from dispatcher.service import open_store

    accounts = Accounts(open_store(get_settings()))
    assert accounts.authenticate("zhang", "another-pass-22", address="t") is not None
    assert accounts.authenticate("zhang", "long-enough-pass-1", address="t") is None
    code, out, _ = run("users", "disable", "zhang")
    assert code == 0
    assert accounts.authenticate("zhang", "another-pass-22", address="t") is None


def test_users_add_refuses_a_wrong_scope_or_a_weak_password(home: Path) -> None:
    code, _, err = run(
        "users", "add", "a", "--role", "township_officer", "--township", "nowhere",
        "--password-stdin", stdin="long-enough-pass-1\n",
    )  # fmt: skip
    assert code == 2 and "未知的乡镇：nowhere" in err
    code, _, err = run(
        "users", "add", "b", "--role", "secretary", "--password-stdin",
        stdin="long-enough-pass-1\n",
    )  # fmt: skip
    assert code == 2 and "--village" in err
    code, _, err = run(
        "users", "add", "c", "--role", "county_admin", "--password-stdin", stdin="short\n"
    )
    assert code == 2 and "密码至少 10 个字符" in err
    code, _, err = run("users", "add", "d", "--role", "mayor", "--password-stdin", stdin="x\n")
    assert code == 2 and "未知的角色" in err
    # A password is never an argument (it would stay in shell history).
    code, _, err = run("users", "add", "e", "--role", "county_admin", "--password", "x" * 12)
    assert code != 0 and "--password" in err


def test_users_add_prompts_for_the_password_twice(home: Path) -> None:
    code, out, err = run(
        "users", "add", "wang", "--role", "secretary", "--village", "east-liu",
        stdin="long-enough-pass-1\nlong-enough-pass-1\n",
    )  # fmt: skip
    assert code == 0, out + err
    assert "long-enough-pass-1" not in out


def test_serve_runs_the_dashboard_and_the_feeds(home: Path, tmp_path: Path) -> None:
    env = dict(os.environ)
    web = 19780 + os.getpid() % 500
    feed = web + 1
    env.update(VILLAGECAST_WEB_PORT=str(web), VILLAGECAST_FEED_PORT=str(feed))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve"],
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
                if httpx.get(f"http://127.0.0.1:{web}/login", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)
        assert httpx.get(f"http://127.0.0.1:{feed}/feeds/east-liu.atom").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{feed}/login").status_code == 404
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    text = out.decode("utf-8", "replace")
    assert "监控页面" in text and "Traceback" not in text
