"""Operator commands: db current/upgrade on both engines, worker queue selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from content_queue.errors import ConfigError
from content_queue.settings import reset_settings
from dispatcher.worker import parse_queues, worker_argv


def test_db_upgrade_is_idempotent_and_current_tells(
    home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VILLAGECAST_DATABASE_URL", db_url)
    reset_settings()
    runner = CliRunner()
    before = runner.invoke(app, ["db", "current", "--json"])
    assert before.exit_code == 1
    status = json.loads(before.output)
    assert status["current"] == [] and status["up_to_date"] is False

    first = runner.invoke(app, ["db", "upgrade"])
    assert first.exit_code == 0, first.output
    assert "已升级" in first.output
    second = runner.invoke(app, ["db", "upgrade"])
    assert second.exit_code == 0 and "无需升级" in second.output

    after = runner.invoke(app, ["db", "current"])
    assert after.exit_code == 0, after.output
    head = json.loads(runner.invoke(app, ["db", "current", "--json"]).output)["head"]
    assert head[0] in after.output


def test_db_current_hides_the_password(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VILLAGECAST_DATABASE_URL", "postgresql+psycopg://vc:hunter2@127.0.0.1:1/vc")
    reset_settings()
    result = CliRunner().invoke(app, ["db", "current"])
    assert result.exit_code != 0
    assert "hunter2" not in result.output and "***" in result.output


def test_worker_queues_select_channel_kinds(home: Path) -> None:
    assert parse_queues("vc.led, speaker,vc.led") == ["led", "speaker"]
    with pytest.raises(ConfigError) as err:
        parse_queues("vc.sms")
    assert "vc.sms" in err.value.render("zh") and "vc.led" in err.value.render("zh")
    from content_queue.settings import get_settings

    argv = worker_argv(get_settings(), kinds=["speaker"], concurrency=1)
    assert argv[argv.index("--queues") + 1] == "vc.speaker"
    assert argv[argv.index("--concurrency") + 1] == "1"


def test_worker_command_refuses_an_unknown_queue(home: Path) -> None:
    result = CliRunner().invoke(app, ["worker", "-Q", "vc.fax"])
    assert result.exit_code != 0 and "vc.fax" in result.output
