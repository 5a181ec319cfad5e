"""Withdrawal and correction end to end: real worker, real mosquitto, reference devices."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from content_queue.models import build_notice
from content_queue.registry import load_registry
from content_queue.settings import reset_settings
from content_queue.store import SETTLED, TERMINAL
from dispatcher import service
from dispatcher.doorbell import ring
from tests.dispatcher import test_led_integration as led_it
from tests.dispatcher.test_led_integration import Rig
from tests.dispatcher.test_worker_integration import Workers

rig = led_it.rig  # the same rig and workers fixtures as the LED tests
workers = led_it.workers

pytestmark = [pytest.mark.slow, pytest.mark.service]


def _recalls(rig: Rig, nid: int) -> dict[str, str]:
    return {d.endpoint_id: d.status for d in rig.store.deliveries(nid) if d.action == "recall"}


def _publishes(rig: Rig, nid: int) -> dict[str, str]:
    return {d.endpoint_id: d.status for d in rig.store.deliveries(nid) if d.action == "publish"}


def test_withdraw_clears_the_board_and_tombstones_the_feed(rig: Rig, workers: Workers) -> None:
    board = rig.device("led-east-liu-01")
    board.start()
    workers.start()
    nid = rig.submit(
        title="停水通知", targets={"villages": ["east-liu"]}, channels=["led", "tv_feed"]
    )
    rig.wait(lambda: _publishes(rig, nid).get("east-liu-led") == "delivered", "the board")
    assert nid in {c.notice for c in board.showing.values()}

    result = CliRunner().invoke(
        app, ["notice", "withdraw", str(nid), "--reason", "时间写错", "--wait", "--timeout", "60"]
    )
    assert result.exit_code == 0, result.output
    assert f"已撤回通知 #{nid}" in result.output and "正在撤下" in result.output
    # --wait returns once every recall left the dispatcher's hands (sent); the board's
    # ack of the clear comes a moment later.
    rig.wait(lambda: _recalls(rig, nid).get("east-liu-led") == "delivered", "the clear's ack")
    recalls = _recalls(rig, nid)
    # The board acked the clear; the feed holds the withdrawal until the platform fetches it.
    assert recalls == {"east-liu-led": "delivered", "east-liu-tv": "sent"}
    assert nid not in {c.notice for c in board.showing.values()}
    # What was delivered stays delivered: the recall is a delivery of its own.
    assert _publishes(rig, nid) == {"east-liu-led": "delivered", "east-liu-tv": "sent"}
    (recall,) = [d for d in rig.store.deliveries(nid) if d.kind == "led" and d.action == "recall"]
    (cmd,) = rig.store.commands_for(recall.id)
    assert (cmd["kind"], cmd["ack_status"]) == ("led.clear", "cleared")
    rig.wait(
        lambda: {d.device_id: d.showing for d in rig.store.devices()}["led-east-liu-01"] == [],
        "devices status to show an empty board",
    )
    atom = (rig.home / "feeds" / "east-liu-tv.atom").read_text(encoding="utf-8")
    assert "deleted-entry" in atom  # an RFC 6721 tombstone
    assert rig.store.notice(nid).state == "withdrawn"

    again = CliRunner().invoke(app, ["notice", "withdraw", str(nid)])
    assert again.exit_code == 2
    assert "已撤回，不能再撤回" in again.output and "Traceback" not in again.output


def test_board_offline_during_withdrawal_never_shows_it_again(rig: Rig, workers: Workers) -> None:
    board = rig.device("led-east-liu-01")
    board.start()
    workers.start()
    nid = rig.submit(title="临时停电", targets={"villages": ["east-liu"]}, channels=["led"])
    rig.wait(lambda: _publishes(rig, nid) == {"east-liu-led": "delivered"}, "the board")
    board.stop()  # the persistent session keeps its subscription on the broker
    rig.wait(
        lambda: {d.device_id: d.state for d in rig.store.devices()}["led-east-liu-01"] == "offline",
        "offline presence",
    )
    service.withdraw_notice(
        nid,
        store=rig.store,
        ring=lambda ids, countdown: ring(ids, settings=rig.settings, countdown=countdown),
        actor="secretary",
    )
    rig.wait(lambda: _recalls(rig, nid) == {"east-liu-led": "sent"}, "the clear to be queued")
    back = rig.device("led-east-liu-01")
    back.start()
    rig.wait(lambda: _recalls(rig, nid) == {"east-liu-led": "delivered"}, "the clear on return")
    assert nid not in {c.notice for c in back.showing.values()}


def test_correction_replaces_the_old_revision_on_the_board(rig: Rig, workers: Workers) -> None:
    board = rig.device("led-east-liu-01")
    board.start()
    workers.start()
    old = rig.submit(
        title="缴费通知",
        body="12月5日前缴纳医保。",
        targets={"villages": ["east-liu"]},
        channels=["led"],
    )
    rig.wait(lambda: _publishes(rig, old) == {"east-liu-led": "delivered"}, "the first revision")
    result = CliRunner().invoke(
        app,
        ["notice", "correct", str(old), "--body", "12月15日前缴纳医保。", "--wait", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    new = data["id"]
    assert (data["revision"], data["supersedes"]) == (2, old)
    assert [d["status"] for d in data["deliveries"]] == ["delivered"]
    assert [(d["action"], d["status"]) for d in data["recalls"]] == [("recall", "delivered")]
    showing = {c.notice: c for c in board.showing.values()}
    assert set(showing) == {new}
    pages = json.dumps(showing[new].body, ensure_ascii=False)
    assert "12月15日" in pages
    assert rig.store.notice(old).state == "superseded"


def test_withdraw_stops_the_loudspeaker_and_its_remaining_plan(
    rig: Rig, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dispatcher.feed_server import serve_in_thread

    server, _ = serve_in_thread(
        rig.settings, rig.store, lambda: load_registry(rig.settings.devices)
    )
    host, port = server.server_address[:2]
    monkeypatch.setenv("VILLAGECAST_FEED_BASE_URL", f"http://{host}:{port}")
    monkeypatch.setenv("VILLAGECAST_TTS_MODE", "offline")
    reset_settings()
    speaker = rig.device("spk-east-wang-01", kind="speaker")
    speaker.start()
    workers.start()
    try:
        # Routine: played now (or after quiet hours) and again at the day's times.
        sub = service.submit_notice(
            build_notice(
                {
                    "title": "医保缴费提醒",
                    "body": "请于本月底前缴纳城乡居民医保。",
                    "category": "social_insurance",
                    "targets": {"villages": ["east-wang"]},
                    "channels": ["speaker"],
                }
            ),
            store=rig.store,
            registry=load_registry(rig.settings.devices),
            ring=lambda ids, countdown: ring(ids, settings=rig.settings, countdown=countdown),
        )
        nid = sub.notice.id
        rig.wait(lambda: set(_publishes(rig, nid).values()) <= SETTLED, "the play command")
        rig.wait(lambda: nid in {c.notice for c in speaker.showing.values()}, "a planned play")
        service.withdraw_notice(
            nid,
            store=rig.store,
            ring=lambda ids, countdown: ring(ids, settings=rig.settings, countdown=countdown),
            actor="secretary",
            reason="政策有变",
        )
        rig.wait(
            lambda: set(_recalls(rig, nid).values()) <= TERMINAL and _recalls(rig, nid) != {},
            "the stop",
        )
    finally:
        server.shutdown()
        server.server_close()
    assert _recalls(rig, nid) == {"east-wang-spk": "delivered"}
    (recall,) = [d for d in rig.store.deliveries(nid) if d.action == "recall"]
    (cmd,) = rig.store.commands_for(recall.id)
    assert (cmd["kind"], cmd["ack_status"]) == ("speaker.stop", "stopped")
    # Nothing of the notice is left to play: its remaining plan is cancelled.
    assert nid not in {c.notice for c in speaker.showing.values()}
    time.sleep(0.2)
    assert nid not in {c.notice for c in speaker.showing.values()}


def test_withdrawing_a_notice_that_never_went_out_cancels_it(home: Path) -> None:
    runner = CliRunner()
    added = runner.invoke(
        app,
        [
            "notice",
            "add",
            "--title",
            "会议通知",
            "--body",
            "周五开会。",
            "--category",
            "meeting",
            "--village",
            "east-liu",
            "--channel",
            "led",
            "--publish-at",
            "2099-01-01T08:00",
            "--json",
        ],
    )
    assert added.exit_code == 0, added.output
    nid = json.loads(added.output)["id"]
    out = runner.invoke(app, ["notice", "withdraw", str(nid), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert (data["state"], data["cancelled"], data["recalls"]) == ("withdrawn", 1, [])
