"""The CLI as a secretary meets it: Chinese by default, one clear sentence on every error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from tests.conftest import REPO

runner = CliRunner()


def run(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_help_imports_no_heavy_module() -> None:
    code = (
        "import sys\n"
        "sys.argv = ['villagecast', '--help']\n"
        "import cli\n"
        "try:\n"
        "    cli.main()\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('celery', 'kombu', 'sqlalchemy', 'paho', 'edge_tts', 'feedgen',"
        " 'alembic', 'httpx') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "HEAVY []" in out
    assert "notice" in out


def test_help_is_chinese_by_default_and_english_on_request() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANG", "LC_", "VILLAGECAST_"))}
    zh = subprocess.run(
        [sys.executable, "-m", "cli", "--help"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert "通知" in zh.stdout
    en = subprocess.run(
        [sys.executable, "-m", "cli", "--help"],
        cwd=REPO,
        env={**env, "LANG": "en_US.UTF-8"},
        capture_output=True,
        text=True,
    )
    assert "enter a notice once" in en.stdout


def test_add_and_show_as_json(home: Path) -> None:
    code, out, _ = run(
        "notice",
        "add",
        "--title",
        "村务公开",
        "--body",
        "本月收支见附表。",
        "--category",
        "village_affairs",
        "--village",
        "east-liu",
        "--json",
    )
    assert code == 0, out
    added = json.loads(out)
    assert added["id"] == 1 and added["deliveries"] == 4
    code, out, _ = run("notice", "show", "1", "--json")
    shown = json.loads(out)
    assert shown["title"] == "村务公开"
    kinds = {d["endpoint"]: (d["kind"], d["status"]) for d in shown["deliveries"]}
    assert kinds["east-liu-tv"] == ("tv_feed", "pending")
    assert kinds["east-liu-led"] == ("led", "pending")
    assert kinds["east-liu-wecom"] == ("wecom_group", "pending")
    assert kinds["east-oa"] == ("wechat_official_account", "pending")
    assert {"endpoint", "kind", "status", "attempts", "error"} <= set(shown["deliveries"][0])
    code, out, _ = run("notice", "list", "--json")
    assert json.loads(out)[0]["deliveries"] == {"pending": 4}


def test_add_without_a_broker_keeps_the_notice(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A Redis URL nobody listens on: the notice must be saved and the user told.
    monkeypatch.setenv("VILLAGECAST_BROKER_URL", "redis://127.0.0.1:1/0")
    from content_queue.settings import reset_settings

    reset_settings()
    code, out, _ = run(
        "notice",
        "add",
        "--title",
        "停水通知",
        "--body",
        "明天停水。",
        "--category",
        "village_affairs",
        "--county",
    )
    assert code == 0
    assert "通知已保存，但暂时无法通知工作进程" in out
    code, out, _ = run("notice", "show", "1", "--json")
    assert json.loads(out)["title"] == "停水通知"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--title", "", "--body", "x", "--category", "meeting", "--county"], "标题不能为空"),
        (["--title", "t", "--body", "x", "--category", "cash", "--county"], "类别无效"),
        (
            ["--title", "t", "--body", "x", "--category", "meeting", "--village", "nope"],
            "未知的村：nope",
        ),
        (
            ["--title", "t", "--body", "x", "--category", "meeting", "--township", "nope"],
            "未知的乡镇：nope",
        ),
        (["--title", "t", "--category", "meeting", "--county"], "--body 或 --body-file"),
        (
            [
                "--title",
                "t",
                "--body",
                "x",
                "--category",
                "meeting",
                "--county",
                "--publish-at",
                "2026-12-02T08:00",
                "--expires-at",
                "2026-12-01T08:00",
            ],
            "失效时间必须晚于发布时间",
        ),
        (
            [
                "--title",
                "t",
                "--body",
                "x",
                "--category",
                "meeting",
                "--village",
                "west-zhao",
                "--channel",
                "led",
            ],
            "没有这些渠道的端点：led",
        ),
        (
            [
                "--title",
                "t",
                "--body",
                "x",
                "--category",
                "meeting",
                "--county",
                "--publish-at",
                "明天",
            ],
            "时间格式不对",
        ),
    ],
)
def test_invalid_notices_are_one_clear_error(home: Path, args: list[str], message: str) -> None:
    code, out, err = run("notice", "add", *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err + out
    code, out, _ = run("notice", "list", "--json")
    assert json.loads(out) == []  # nothing half-saved


def test_english_errors(home: Path) -> None:
    code, _, err = run(
        "--lang",
        "en",
        "notice",
        "add",
        "--title",
        "t",
        "--body",
        "x",
        "--category",
        "meeting",
        "--village",
        "nope",
    )
    assert code == 2 and "unknown village: nope" in err


def test_body_file_must_be_utf8(home: Path, tmp_path: Path) -> None:
    f = tmp_path / "gbk.txt"
    f.write_bytes("村务公开".encode("gbk"))
    code, _, err = run(
        "notice", "add", "--title", "t", "--body-file", str(f), "--category", "meeting", "--county"
    )
    assert code == 2 and "不是 UTF-8 编码" in err


def test_show_unknown_notice(home: Path) -> None:
    code, _, err = run("notice", "show", "42")
    assert code == 1 and "通知 42 不存在" in err


def test_status_counts(home: Path) -> None:
    run("notice", "add", "--title", "t", "--body", "x", "--category", "meeting", "--county")
    code, out, _ = run("status", "--json")
    assert code == 0
    rows = {(r["village"], r["kind"]): r["counts"] for r in json.loads(out)}
    assert rows[("west-zhao", "tv_feed")] == {"pending": 1}
    assert rows[("-", "wechat_official_account")] == {"pending": 1}


def test_devices_check_ok_and_broken(home: Path, tmp_path: Path) -> None:
    code, out, _ = run("devices", "check")
    assert code == 0 and "没有问题" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ncounty: {code: '371521', name: x}\ntownships: []\nextra: NO\n")
    code, _, err = run("devices", "check", str(bad))
    assert code == 1
    assert f"{bad}:4:" in err


def test_devices_schema_is_json_schema() -> None:
    code, out, _ = run("devices", "schema")
    schema = json.loads(out)
    assert code == 0 and "properties" in schema and "townships" in schema["properties"]


def test_feed_prints_a_village_feed(home: Path) -> None:
    code, out, _ = run("feed", "east-liu", "--format", "json")
    assert code == 0
    assert json.loads(out)["version"] == "https://jsonfeed.org/version/1.1"


def test_unexpected_error_is_logged_not_shown(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import content_queue.store as store_mod

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(store_mod.Store, "notices", boom)
    code, out, err = run("notice", "list")
    assert code == 70
    assert "内部错误（RuntimeError）" in err and "secret internals" not in err + out
    assert "secret internals" in (home / "logs" / "crash.log").read_text()


def test_usage_errors_in_chinese(home: Path) -> None:
    code, _, err = run("notice", "add", "--title", "x")
    assert code == 2 and "缺少选项 --category" in err
    code, _, err = run("--lang", "en", "notice", "add", "--title", "x")
    assert code == 2 and "Missing option '--category'" in err


def test_keys_init_export_and_refuse_overwrite(home: Path) -> None:
    code, out, _ = run("keys", "init")
    assert code == 0 and "已生成签名密钥" in out
    assert oct((home / "keys").stat().st_mode & 0o777) == "0o700"
    code, out, _ = run("keys", "export")
    exported = json.loads(out)
    assert len(exported["keys"]) == 1 and "public_key" in exported["keys"][0]
    assert "PRIVATE" not in out
    code, _, err = run("keys", "init")
    assert code != 0 and "Traceback" not in err


def test_devices_status_lists_every_board_and_speaker(home: Path) -> None:
    from content_queue.settings import get_settings
    from content_queue.store import utcnow
    from dispatcher.service import open_store

    open_store(get_settings()).record_presence(
        device_id="led-east-liu-01", state="online", at=utcnow()
    )
    code, out, _ = run("devices", "status", "--json")
    assert code == 0
    rows = {r["device"]: r for r in json.loads(out)}
    assert rows["led-east-liu-01"]["state"] == "online"
    assert [h["state"] for h in rows["led-east-liu-01"]["history"]] == ["online"]
    assert rows["spk-east-wang-01"]["state"] == "unknown"
    code, out, _ = run("devices", "status")
    assert "在线" in out and "未知" in out


def test_mqtt_config_writes_private_files(home: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "mosq"
    code, out, _ = run("mqtt", "config", "--out", str(out_dir))
    assert code == 0 and "credentials.json" in out
    creds = (out_dir / "credentials.json").read_text()
    for name in ("passwd", "credentials.json"):
        assert oct((out_dir / name).stat().st_mode & 0o777) == "0o600"
    password = json.loads(creds)["credentials"]["led-east-liu-01"]
    assert password not in out
    assert password not in (out_dir / "mosquitto.conf").read_text()
    # Running it again keeps the passwords devices were provisioned with.
    run("mqtt", "config", "--out", str(out_dir))
    assert (
        json.loads((out_dir / "credentials.json").read_text())["credentials"]["led-east-liu-01"]
        == password
    )


def test_speak_script_only_reads_numbers_as_spoken(home: Path) -> None:
    code, out, _ = run("speak", "请拨打12345热线，补贴每亩112.5元", "--script-only")
    assert code == 0
    assert "幺二三四五" in out
    assert "一百一十二点五元" in out or "一百一十二元五角" in out
    assert not any(ch.isdigit() for ch in out)


@pytest.mark.slow
def test_speak_writes_real_audio_offline(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "hear.mp3"
    code, out, err = run(
        "speak", "各位村民请注意，明天上午停水。", "--engine", "offline", "--out", str(target)
    )
    assert code == 0, err
    assert target.stat().st_size > 1000
    assert "引擎：offline" in err
    code, _, _ = run(
        "notice",
        "add",
        "--title",
        "停水",
        "--body",
        "明天停水。",
        "--category",
        "meeting",
        "--county",
    )
    code, out, _ = run("speak", "--notice", "1", "--script-only")
    assert code == 0 and "现在播送一则会议通知" in out
