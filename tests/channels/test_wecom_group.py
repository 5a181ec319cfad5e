"""WeCom group robots against the local stand-in of the webhook API (a real HTTP server)."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import multiprocessing
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from channels.base import (
    DeliveryContext,
    PermanentError,
    SendResult,
    TransientError,
    get_channel,
)
from channels.wecom_group import WecomGroupChannel, _close_clients, explain_errcode, robot_id
from cli import app
from content_queue.db import Delivery
from content_queue.errors import ConfigError
from content_queue.models import build_notice, local_tz
from content_queue.part_ledger import parts_of
from content_queue.registry import WecomGroupEndpoint, load_registry
from content_queue.settings import Settings, get_settings, reset_settings
from content_queue.shared_limits import RateLimiter
from content_queue.store import PlannedDelivery, Store, utcnow
from dispatcher import service
from tests.channels import pdfcheck
from tests.standins.wecom import Fault, WecomStandin, amr_duration, max_in_window

ENV = "VC_WECOM_EAST_LIU"
SENTENCE = "请各位村民于本周六上午九点到村委会参加村民代表会议，讨论今年惠农补贴的发放名单。"


@pytest.fixture(scope="module")
def server() -> Iterator[WecomStandin]:
    with WecomStandin() as standin:
        yield standin
    _close_clients()  # the channel's keep-alive client talked to this server


@dataclass
class Env:
    server: WecomStandin
    key: str
    store: Store
    settings: Settings

    def refresh(self) -> None:
        reset_settings()
        self.settings = get_settings()


@pytest.fixture
def wecom(server: WecomStandin, home: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    server.reset()
    server.rate, server.window = 20, 60.0
    key = server.add_key()
    monkeypatch.setenv(ENV, key)
    monkeypatch.setenv("VILLAGECAST_WECOM_BASE_URL", server.base_url)
    monkeypatch.setenv("VILLAGECAST_TTS_MODE", "offline")
    reset_settings()
    settings = get_settings()
    return Env(server, key, service.open_store(settings), settings)


def _endpoint(**over: Any) -> WecomGroupEndpoint:
    data: dict[str, Any] = {"id": "east-liu-wecom", "kind": "wecom_group", "webhook_key_env": ENV}
    data.update(over)
    return WecomGroupEndpoint(**data)


def _ctx(
    env: Env,
    *,
    body: str = SENTENCE,
    title: str = "村民代表会议通知",
    priority: str = "routine",
    category: str = "meeting",
    table: dict[str, Any] | None = None,
    endpoint: WecomGroupEndpoint | None = None,
    attempt: int = 1,
) -> DeliveryContext:
    draft = build_notice(
        {
            "title": title,
            "body": body,
            "category": category,
            "priority": priority,
            "targets": {"villages": ["east-liu"]},
            "table": table,
        }
    )
    plan = [PlannedDelivery("east-liu-wecom", "wecom_group", "east-liu", "east")]
    notice, (delivery,) = env.store.add_notice(draft, plan)
    return DeliveryContext(
        delivery_id=delivery.id,
        attempt=attempt,
        notice=notice,
        endpoint=endpoint or _endpoint(),
        village_id="east-liu",
        registry=load_registry(env.settings.devices),
        settings=env.settings,
        store=env.store,
    )


def _again(ctx: DeliveryContext, env: Env) -> DeliveryContext:
    """The same delivery's next attempt (what the dispatcher does after a TransientError)."""
    return DeliveryContext(
        delivery_id=ctx.delivery_id,
        attempt=ctx.attempt + 1,
        notice=ctx.notice,
        endpoint=ctx.endpoint,
        village_id=ctx.village_id,
        registry=ctx.registry,
        settings=env.settings,
        store=env.store,
    )


def _channel() -> WecomGroupChannel:
    return WecomGroupChannel()


def _statuses(env: Env, ctx: DeliveryContext) -> dict[str, str]:
    return {k: p.status for k, p in parts_of(env.store, ctx.delivery_id).items()}


# -- success and format ------------------------------------------------------------------


def test_markdown_notice_is_posted_with_title_category_priority_and_time(wecom: Env) -> None:
    ctx = _ctx(wecom, priority="important")
    result = _channel().deliver(ctx)
    assert result.status == "delivered"
    assert result.details is not None and result.details["robot"] == robot_id(wecom.key)
    (posted,) = wecom.server.posted(wecom.key)
    assert posted.msgtype == "markdown"
    content = posted.content
    assert content.startswith("### 【重要】村民代表会议通知\n")
    assert '<font color="warning">会议通知 · 重要</font>' in content
    when = ctx.notice.publish_at.astimezone(local_tz()).strftime("%Y-%m-%d %H:%M")
    assert f'<font color="comment">发布时间：{when} · 刘庄村</font>' in content
    assert content.endswith(SENTENCE)
    assert _statuses(wecom, ctx) == {"part:1": "accepted"}
    # The key never reaches what is stored about the delivery.
    assert wecom.key not in json.dumps(result.details) + (result.external_ref or "")


def test_links_in_the_body_become_markdown_links(wecom: Env) -> None:
    ctx = _ctx(wecom, body="全文见 https://example.org/notice/12 ，请查阅。")
    _channel().deliver(ctx)
    (posted,) = wecom.server.posted(wecom.key)
    assert "[https://example.org/notice/12](https://example.org/notice/12)" in posted.content


def test_text_format_and_emergency_mentions_all_once(wecom: Env) -> None:
    body = "".join(f"第{i}条：{SENTENCE}" for i in range(40))  # about 5 KB: 3 text parts
    ctx = _ctx(
        wecom,
        body=body,
        priority="emergency",
        category="emergency",
        endpoint=_endpoint(format="text"),
    )
    _channel().deliver(ctx)
    posted = wecom.server.posted(wecom.key)
    assert {p.msgtype for p in posted} == {"text"}
    assert len(posted) == 3
    mentions = [p.body["text"].get("mentioned_list") for p in posted if p.body]
    assert mentions == [["@all"], None, None]
    assert all(len(p.content.encode()) <= 2048 for p in posted)
    assert posted[0].content.startswith("【紧急】村民代表会议通知（1/3）\n应急通知 · 紧急")


def test_markdown_emergency_is_followed_by_a_text_that_mentions_all(wecom: Env) -> None:
    ctx = _ctx(wecom, priority="emergency", category="emergency", title="山洪橙色预警")
    result = _channel().deliver(ctx)
    posted = wecom.server.posted(wecom.key)
    assert [p.msgtype for p in posted] == ["markdown", "text"]
    assert posted[1].body is not None
    assert posted[1].body["text"]["mentioned_list"] == ["@all"]
    assert "山洪橙色预警" in posted[1].content
    assert result.details is not None and result.details["mention_all"] is True


# -- oversized bodies --------------------------------------------------------------------


def test_long_notice_is_split_at_sentence_ends_marked_and_in_order(wecom: Env) -> None:
    sentences = [f"第{i:02d}句。{SENTENCE}" for i in range(90)]
    body = "".join(sentences)
    assert len(body.encode()) > 3 * 4096 // 1.2
    ctx = _ctx(wecom, body=body)
    _channel().deliver(ctx)
    posted = wecom.server.posted(wecom.key)
    n = len(posted)
    assert n >= 3
    assert all(len(p.content.encode()) <= 4096 for p in posted)
    texts = []
    for i, p in enumerate(posted, 1):
        head, _, text = p.content.partition("\n\n")
        assert head.splitlines()[0] == f"### 村民代表会议通知（{i}/{n}）"
        assert text.endswith("。")  # cut at a sentence end, never mid-sentence
        texts.append(text)
    assert "".join(texts) == body
    assert "发布时间" in posted[0].content and "发布时间" not in posted[1].content
    assert list(_statuses(wecom, ctx).values()) == ["accepted"] * n


def test_a_sentence_longer_than_a_message_is_cut_at_clauses(wecom: Env) -> None:
    body = "，".join(["村里的道路维修工程已经完成验收"] * 200) + "。"
    ctx = _ctx(wecom, body=body, endpoint=_endpoint(format="text"))
    _channel().deliver(ctx)
    posted = wecom.server.posted(wecom.key)
    assert len(posted) > 1 and all(len(p.content.encode()) <= 2048 for p in posted)
    assert all(p.content.rstrip().endswith(("，", "。")) for p in posted)


def test_the_standin_refuses_oversized_content_with_40058(wecom: Env) -> None:
    url = f"{wecom.server.base_url}/cgi-bin/webhook/send"
    body = {"msgtype": "text", "text": {"content": "很" * 683}}  # 2,049 bytes
    answer = httpx.post(url, params={"key": wecom.key}, json=body).json()
    assert answer["errcode"] == 40058 and "2048" in answer["errmsg"]


# -- errors ------------------------------------------------------------------------------


def test_http_200_with_errcode_is_transient_and_accepted_parts_are_not_resent(
    wecom: Env,
) -> None:
    body = "".join(f"第{i:02d}句。{SENTENCE}" for i in range(90))
    ctx = _ctx(wecom, body=body)
    wecom.server.fail_next(wecom.key, Fault(errcode=-1))
    channel = _channel()
    with pytest.raises(TransientError) as err:
        channel.deliver(ctx)
    assert err.value.code == "-1"
    assert "系统繁忙" in err.value.text.render("zh")
    assert _statuses(wecom, ctx) == {"part:1": "failed"}
    channel.deliver(_again(ctx, wecom))
    posted = wecom.server.posted(wecom.key)
    assert len({p.content for p in posted}) == len(posted) >= 3


def test_retry_sends_only_the_parts_that_were_not_accepted(wecom: Env) -> None:
    body = "".join(f"第{i:02d}句。{SENTENCE}" for i in range(90))
    ctx = _ctx(wecom, body=body)
    channel = _channel()
    calls = {"n": 0}
    real = channel._post_message

    def flaky(job: Any, payload: dict[str, Any]) -> str | None:
        calls["n"] += 1
        if calls["n"] == 2:  # WeCom is busy for the second part, once
            wecom.server.fail_next(wecom.key, Fault(errcode=-1))
        return real(job, payload)

    channel._post_message = flaky  # type: ignore[method-assign]
    with pytest.raises(TransientError):
        channel.deliver(ctx)
    assert _statuses(wecom, ctx) == {"part:1": "accepted", "part:2": "failed"}
    channel.deliver(_again(ctx, wecom))
    posted = wecom.server.posted(wecom.key)
    marks = [p.content.splitlines()[0] for p in posted]
    n = len(marks)
    assert marks == [f"### 村民代表会议通知（{i}/{n}）" for i in range(1, n + 1)]
    # A sweeper or a duplicate doorbell running it once more sends nothing.
    channel.deliver(_again(_again(ctx, wecom), wecom))
    assert len(wecom.server.posted(wecom.key)) == n


def test_5xx_is_transient(wecom: Env) -> None:
    wecom.server.fail_next(wecom.key, Fault(status=502))
    ctx = _ctx(wecom)
    with pytest.raises(TransientError) as err:
        _channel().deliver(ctx)
    assert err.value.code == "http_502"
    assert _statuses(wecom, ctx) == {"part:1": "failed"}
    _channel().deliver(_again(ctx, wecom))
    assert len(wecom.server.posted(wecom.key)) == 1


def test_45009_from_wecom_is_transient_with_the_window_as_retry_after(wecom: Env) -> None:
    wecom.server.fail_next(wecom.key, Fault(errcode=45009))
    with pytest.raises(TransientError) as err:
        _channel().deliver(_ctx(wecom))
    assert err.value.code == "45009"
    assert err.value.retry_after == wecom.settings.wecom_rate_window_seconds


def test_invalid_key_93000_is_permanent_and_names_the_variable_not_the_key(wecom: Env) -> None:
    wecom.server.remove_key(wecom.key)
    with pytest.raises(PermanentError) as err:
        _channel().deliver(_ctx(wecom))
    assert err.value.code == "93000"
    zh, en = err.value.text.render("zh"), err.value.text.render("en")
    assert "请群主重新添加机器人并更新密钥" in zh and ENV in zh and ENV in en
    assert wecom.key not in zh + en


def test_an_invalid_key_recorded_on_the_delivery_never_shows_the_key(
    wecom: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """93000 through the dispatcher: the delivery, its attempts, the whole database, the
    log (httpx logs every request line, key included) and the CLI name the variable only."""
    caplog.set_level(logging.DEBUG)
    wecom.server.remove_key(wecom.key)
    ctx = _ctx(wecom)
    results = service.process_deliveries(
        [ctx.delivery_id], store=wecom.store, settings=wecom.settings, ring=None
    )
    assert results == {ctx.delivery_id: "failed"}
    (failed,) = wecom.store.deliveries(ids=[ctx.delivery_id])
    assert failed.error_code == "93000"
    assert ENV in (failed.error_zh or "") and ENV in (failed.error_en or "")
    shown = CliRunner().invoke(app, ["notice", "show", str(ctx.notice.id), "--json"])
    assert shown.exit_code == 0 and "93000" in shown.output
    with sqlite3.connect(wecom.settings.home / "villagecast.sqlite") as db:
        dump = "\n".join(db.iterdump())
    assert "cgi-bin/webhook/send?key=*** " in caplog.text  # logged, masked
    recorded = [
        str(failed),
        str(wecom.store.attempts(ctx.delivery_id)),
        dump,
        caplog.text,
        shown.output,
    ]
    for text in recorded:
        assert wecom.key not in text


def test_wecoms_errmsg_is_shown_without_a_key_it_echoes() -> None:
    key = "SECRET-WECOM-4f1c2b8e-0d7a-4e59-9a51-3c1f7d2e8b60"
    echoed = f"invalid url http://proxy/cgi-bin/webhook/send?key={key}, hint: [x]"
    error = explain_errcode(60020, echoed, env=ENV)
    assert key not in error.text.render("zh") + error.text.render("en")
    assert "key=***" in error.text.render("zh")


def test_unknown_errcode_is_permanent_with_wecoms_message(wecom: Env) -> None:
    wecom.server.fail_next(wecom.key, Fault(errcode=60020))
    with pytest.raises(PermanentError) as err:
        _channel().deliver(_ctx(wecom))
    assert err.value.code == "60020" and "60020" in err.value.text.render("zh")


def test_missing_secret_is_a_config_error(wecom: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV)
    with pytest.raises(ConfigError) as err:
        _channel().deliver(_ctx(wecom))
    assert ENV in err.value.render("zh")
    assert wecom.server.records == []


def test_connection_refused_is_retried_and_never_an_unknown_outcome(
    wecom: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VILLAGECAST_WECOM_BASE_URL", "http://127.0.0.1:9")
    wecom.refresh()
    ctx = _ctx(wecom)
    with pytest.raises(TransientError) as err:
        _channel().deliver(ctx)
    assert err.value.code == "connect"
    assert "VILLAGECAST_WECOM_BASE_URL" in err.value.text.render("zh")
    assert _statuses(wecom, ctx) == {"part:1": "failed"}


# -- unknown outcome ---------------------------------------------------------------------


@pytest.fixture
def short_timeout(wecom: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    monkeypatch.setenv("VILLAGECAST_HTTP_TIMEOUT_SECONDS", "0.3")
    wecom.refresh()
    return wecom


def test_timeout_of_a_routine_notice_is_not_resent_and_fails_unknown_outcome(
    short_timeout: Env,
) -> None:
    env = short_timeout
    # WeCom posts the message but the answer never arrives in time.
    env.server.fail_next(env.key, Fault(delay=1.0, posted=True))
    ctx = _ctx(env)
    with pytest.raises(PermanentError) as err:
        _channel().deliver(ctx)
    assert err.value.code == "unknown_outcome"
    assert "无法确认群里是否已收到" in err.value.text.render("zh")
    assert _statuses(env, ctx) == {"part:1": "unknown"}
    # A sweeper that runs it again does not send it again either.
    with pytest.raises(PermanentError):
        _channel().deliver(_again(ctx, env))
    time.sleep(1.0)  # let the stand-in finish its delayed answer before counting
    assert len(env.server.posted(env.key)) == 1


def test_a_part_left_sending_by_a_dead_worker_is_an_unknown_outcome(wecom: Env) -> None:
    from content_queue.part_ledger import mark_sending_in

    ctx = _ctx(wecom)
    with wecom.store.session() as s:
        mark_sending_in(s, delivery_id=ctx.delivery_id, part_key="part:1", seq=1, now=utcnow())
    with pytest.raises(PermanentError) as err:
        _channel().deliver(ctx)
    assert err.value.code == "unknown_outcome"
    assert _statuses(wecom, ctx) == {"part:1": "unknown"}
    assert wecom.server.records == []


def test_timeout_of_an_emergency_is_sent_again(short_timeout: Env) -> None:
    env = short_timeout
    env.server.fail_next(env.key, Fault(delay=1.0, posted=True))
    ctx = _ctx(env, priority="emergency", category="emergency", endpoint=_endpoint(format="text"))
    with pytest.raises(TransientError) as err:
        _channel().deliver(ctx)
    assert err.value.code == "timeout"
    assert _statuses(env, ctx) == {"part:1": "unknown"}
    _channel().deliver(_again(ctx, env))
    time.sleep(1.0)
    # Documented: an emergency may arrive twice rather than not at all.
    assert len(env.server.posted(env.key)) == 2
    assert _statuses(env, ctx) == {"part:1": "accepted"}


# -- rate limit and ordering -------------------------------------------------------------


@pytest.fixture
def fast_window(wecom: Env, monkeypatch: pytest.MonkeyPatch) -> Env:
    """The same limiter logic with 3 messages per 1 s window, on both sides."""
    wecom.server.rate, wecom.server.window = 3, 1.0
    monkeypatch.setenv("VILLAGECAST_WECOM_RATE_PER_MINUTE", "3")
    monkeypatch.setenv("VILLAGECAST_WECOM_RATE_WINDOW_SECONDS", "1")
    monkeypatch.setenv("VILLAGECAST_WECOM_MAX_WAIT_SECONDS", "0")
    wecom.refresh()
    return wecom


def _two_part_body() -> str:
    return "".join(f"第{i:02d}句。{SENTENCE}" for i in range(45))


def test_a_full_window_reschedules_the_next_notice_instead_of_refusing_it(
    fast_window: Env,
) -> None:
    env = fast_window
    first = _ctx(env, body=_two_part_body())
    _channel().deliver(first)
    assert len(env.server.posted(env.key)) == 2
    second = _ctx(env, body=_two_part_body(), title="第二条通知")
    # One slot is left but the notice needs two: nothing of it goes out yet.
    with pytest.raises(TransientError) as err:
        _channel().deliver(second)
    assert err.value.code == "rate_limited"
    assert err.value.retry_after is not None and 0 < err.value.retry_after <= 1.05
    assert _statuses(env, second) == {}
    time.sleep(err.value.retry_after)
    _channel().deliver(_again(second, env))
    posted = env.server.posted(env.key)
    assert len(posted) == 4
    assert all(r.errcode != 45009 for r in env.server.records)
    assert max_in_window([r.at for r in posted], 1.0) <= 3


def test_a_short_wait_is_waited_out_in_the_worker(
    fast_window: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VILLAGECAST_WECOM_MAX_WAIT_SECONDS", "2")
    monkeypatch.setenv("VILLAGECAST_LEASE_SECONDS", "20")  # the wait is capped at lease / 4
    fast_window.refresh()
    env = fast_window
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        time.sleep(seconds)

    channel = WecomGroupChannel(sleep=sleep)
    channel.deliver(_ctx(env, body=_two_part_body()))
    channel.deliver(_ctx(env, body=_two_part_body(), title="第二条通知"))
    assert len(naps) == 1 and 0 < naps[0] <= 1.05
    assert len(env.server.posted(env.key)) == 4
    assert all(r.errcode != 45009 for r in env.server.records)


def test_parts_of_two_notices_never_interleave_in_one_group(fast_window: Env) -> None:
    env = fast_window
    a = _ctx(env, body=_two_part_body(), title="甲通知")
    b = _ctx(env, body=_two_part_body(), title="乙通知")
    channel = _channel()
    real = channel._post_message
    calls = {"n": 0}

    def flaky(job: Any, payload: dict[str, Any]) -> str | None:
        calls["n"] += 1
        if calls["n"] == 2:
            env.server.fail_next(env.key, Fault(errcode=-1))
        return real(job, payload)

    channel._post_message = flaky  # type: ignore[method-assign]
    with pytest.raises(TransientError):
        channel.deliver(a)  # part 1 of 甲 is in the group, part 2 must follow
    with pytest.raises(TransientError) as err:
        channel.deliver(b)
    assert err.value.code == "wecom_busy"
    channel.deliver(_again(a, env))
    time.sleep(1.1)  # the window
    channel.deliver(_again(b, env))
    titles = [p.content.splitlines()[0] for p in env.server.posted(env.key)]
    assert titles == [
        "### 甲通知（1/2）",
        "### 甲通知（2/2）",
        "### 乙通知（1/2）",
        "### 乙通知（2/2）",
    ]


def _acquire_many(url: str, key: str, n: int, out: Any) -> None:
    store = Store(url)
    limiter = RateLimiter(5, 60.0)
    got = 0
    for _ in range(n):
        with store.session() as s:
            if limiter.acquire_in(s, key, now=datetime.now(UTC)) == 0.0:
                got += 1
    out.put(got)


def test_the_limiter_holds_across_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'limits.sqlite'}"
    Store(url)  # migrate once
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_acquire_many, args=(url, "robot-x", 10, out)) for _ in range(4)]
    for p in procs:
        p.start()
    total = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert total == 5


def test_limiter_wait_is_when_the_oldest_event_leaves_the_window() -> None:
    limiter = RateLimiter(20, 60.0)
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    times = [t0 + timedelta(seconds=i) for i in range(20)]
    now = t0 + timedelta(seconds=30)
    assert limiter.wait_seconds(times, need=1, now=now) == pytest.approx(60 * 1.05 - 30)
    assert limiter.wait_seconds(times[:17], need=3, now=now) == 0.0
    assert limiter.wait_seconds(times[:17], need=5, now=now) == pytest.approx(63 + 1 - 30)


# -- tables, voice, recall ---------------------------------------------------------------

TABLE = {
    "caption": "2026年10月收支明细",
    "columns": ["日期", "摘要", "收入（元）", "支出（元）"],
    "rows": [[f"10-{d:02d}", f"道路维修第{d}期", "0", f"{d * 100}.00"] for d in range(1, 31)],
}


def test_table_as_markdown_v2_where_the_endpoint_allows_it(wecom: Env) -> None:
    ctx = _ctx(wecom, category="village_finance", table=TABLE, endpoint=_endpoint(markdown_v2=True))
    _channel().deliver(ctx)
    posted = wecom.server.posted(wecom.key)
    assert {p.msgtype for p in posted} == {"markdown_v2"}
    text = "\n".join(p.content for p in posted)
    assert "| 日期 | 摘要 | 收入（元） | 支出（元） |" in text
    assert "| 10-30 | 道路维修第30期 | 0 | 3000.00 |" in text
    assert "<font" not in text  # markdown_v2 has no colours


def test_table_as_csv_attachment_otherwise(wecom: Env) -> None:
    ctx = _ctx(wecom, category="village_finance", table=TABLE, title="十月财务公开")
    result = _channel().deliver(ctx)
    posted = wecom.server.posted(wecom.key)
    assert [p.msgtype for p in posted] == ["markdown", "file"]
    assert "十月财务公开.csv" in posted[0].content
    assert posted[1].body is not None
    media = wecom.server.media(posted[1].body["file"]["media_id"])
    assert media is not None and media.type == "file" and media.filename == "十月财务公开.csv"
    rows = list(csv.reader(io.StringIO(media.data.decode("utf-8-sig"))))
    assert rows[0] == ["2026年10月收支明细"] and rows[1] == TABLE["columns"]
    assert rows[-1] == ["10-30", "道路维修第30期", "0", "3000.00"]
    assert result.details is not None and result.details["attachment"] is True


def test_table_as_pdf_attachment_where_the_endpoint_asks(wecom: Env) -> None:
    ctx = _ctx(
        wecom,
        category="village_finance",
        table=TABLE,
        title="十月财务公开",
        endpoint=_endpoint(attachment="pdf"),
    )
    result = _channel().deliver(ctx)
    posted = wecom.server.posted(wecom.key)
    assert [p.msgtype for p in posted] == ["markdown", "file"]
    assert "（明细表见附件《十月财务公开.pdf》）" in posted[0].content
    assert posted[1].body is not None
    media = wecom.server.media(posted[1].body["file"]["media_id"])
    assert media is not None and media.type == "file" and media.filename == "十月财务公开.pdf"
    assert media.data.startswith(b"%PDF-")
    text = "".join(pdfcheck.texts(media.data))
    assert "刘庄村" in text and "十月财务公开" in text
    assert "2026年10月收支明细" in text and "道路维修第30期" in text and "3000.00" in text
    embedded = pdfcheck.fonts(media.data)
    assert embedded and all(embedded.values())  # the CJK font travels with the file
    assert result.details is not None and result.details["attachment"] is True
    assert _statuses(wecom, ctx) == {"part:1": "accepted", "file:table": "accepted"}


def test_the_standin_refuses_a_pdf_that_is_not_a_whole_pdf(wecom: Env) -> None:
    url = f"{wecom.server.base_url}/cgi-bin/webhook/upload_media"
    cut = _table_pdf_bytes(wecom)[:-2000]
    for data in (b"name,amount\r\n", cut):
        files = {"media": ("表.pdf", data, "application/octet-stream")}
        answer = httpx.post(url, params={"key": wecom.key, "type": "file"}, files=files).json()
        assert answer["errcode"] == 40004, answer
    files = {"media": ("表.pdf", _table_pdf_bytes(wecom), "application/octet-stream")}
    answer = httpx.post(url, params={"key": wecom.key, "type": "file"}, files=files).json()
    assert answer["errcode"] == 0


def _table_pdf_bytes(env: Env) -> bytes:
    from channels.wecom_group import _table_pdf

    ctx = _ctx(env, category="village_finance", table=TABLE, endpoint=_endpoint(attachment="pdf"))
    return _table_pdf(ctx, "刘庄村")


def test_voice_is_real_amr_sent_after_the_text(wecom: Env) -> None:
    ctx = _ctx(wecom, endpoint=_endpoint(voice=True))
    result = _channel().deliver(ctx)
    posted = wecom.server.posted(wecom.key)
    assert [p.msgtype for p in posted] == ["markdown", "voice"]
    uploads = [r for r in wecom.server.records if r.path == "upload_media"]
    assert len(uploads) == 1 and uploads[0].media is not None
    audio = uploads[0].media.data
    assert audio.startswith(b"#!AMR\n")
    seconds = amr_duration(audio)
    assert seconds is not None and 2 < seconds <= 60
    assert result.details is not None and result.details["engine"] == "offline"
    assert _statuses(wecom, ctx) == {"part:1": "accepted", "voice:1": "accepted"}


def test_the_standin_refuses_voice_that_is_not_amr(wecom: Env) -> None:
    url = f"{wecom.server.base_url}/cgi-bin/webhook/upload_media"
    files = {"media": ("x.mp3", b"ID3" + b"\0" * 100, "application/octet-stream")}
    answer = httpx.post(url, params={"key": wecom.key, "type": "voice"}, files=files).json()
    assert answer["errcode"] == 40004


def _recall_ctx(env: Env, original: DeliveryContext) -> DeliveryContext:
    now = utcnow()
    with env.store.session() as s:
        row = Delivery(
            notice_id=original.notice.id,
            endpoint_id="east-liu-wecom",
            kind="wecom_group",
            action="recall",
            recall_of=original.delivery_id,
            village_id="east-liu",
            township_id="east",
            status="sending",
            attempts=1,
            due_at=now,
            updated_at=now,
        )
        s.add(row)
        s.flush()
        rid = row.id
    return DeliveryContext(
        delivery_id=rid,
        attempt=1,
        notice=original.notice,
        endpoint=original.endpoint,
        village_id="east-liu",
        registry=original.registry,
        settings=env.settings,
        store=env.store,
        action="recall",
        recall_of=original.delivery_id,
    )


def test_recall_sends_a_withdrawal_message_once(wecom: Env) -> None:
    ctx = _ctx(wecom, title="停水通知")
    channel = _channel()
    channel.deliver(ctx)
    recall = _recall_ctx(wecom, ctx)
    result: SendResult = channel.take_back(recall)
    assert result.status == "delivered"
    posted = wecom.server.posted(wecom.key)
    assert len(posted) == 2
    withdrawal = posted[1].content
    assert "【撤回】停水通知" in withdrawal and "此前发布的通知已撤回" in withdrawal
    when = ctx.notice.publish_at.astimezone(local_tz()).strftime("%Y-%m-%d %H:%M")
    assert when in withdrawal
    channel.take_back(recall)  # a repeat sends nothing more
    assert len(wecom.server.posted(wecom.key)) == 2


def test_withdrawal_of_a_corrected_notice_points_to_the_correction(wecom: Env) -> None:
    ctx = _ctx(wecom, title="停水通知", endpoint=_endpoint(format="text"))
    channel = _channel()
    channel.deliver(ctx)
    recall = _recall_ctx(wecom, ctx)
    superseded = dataclasses.replace(
        recall, notice=dataclasses.replace(ctx.notice, state="superseded")
    )
    channel.take_back(superseded)
    withdrawal = wecom.server.posted(wecom.key)[-1].content
    assert withdrawal.startswith("【撤回】停水通知\n此前发布的通知已撤回。")
    assert "以更正后的通知为准" in withdrawal


def test_recall_of_a_notice_that_never_reached_the_group_sends_nothing(wecom: Env) -> None:
    ctx = _ctx(wecom)
    result = _channel().take_back(_recall_ctx(wecom, ctx))
    assert result.details == {"recall": "nothing_reached_the_group"}
    assert wecom.server.records == []


# -- through the dispatcher ------------------------------------------------------------


def test_dispatcher_delivers_with_the_builtin_channel(wecom: Env) -> None:
    assert isinstance(get_channel("wecom_group"), WecomGroupChannel)
    ctx = _ctx(wecom)
    results = service.process_deliveries(
        [ctx.delivery_id], store=wecom.store, settings=wecom.settings, ring=None
    )
    assert results == {ctx.delivery_id: "delivered"}
    assert len(wecom.server.posted(wecom.key)) == 1


def test_standin_is_quiet_when_a_client_resets_its_connection(
    server: WecomStandin, capfd: pytest.CaptureFixture[str]
) -> None:
    """A killed worker resets its kept-alive connection: no traceback from the stand-in."""
    import socket
    import struct

    host, port = server.base_url.removeprefix("http://").split(":")
    for _ in range(3):
        sock = socket.create_connection((host, int(port)))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"POST /cgi-bin/webhook/send?key=x HTTP/1.1\r\n")  # a request cut short
        sock.close()  # SO_LINGER 0: an RST, as from a SIGKILLed process
    time.sleep(0.5)
    with httpx.Client() as client:  # still serving
        assert client.post(f"{server.base_url}/cgi-bin/webhook/send?key=nokey", json={}).status_code
    assert "Traceback" not in capfd.readouterr().err


def test_standin_outage_answers_every_send_with_the_faults_in_turn_then_recovers(
    wecom: Env,
) -> None:
    url = f"{wecom.server.base_url}/cgi-bin/webhook/send"
    body = {"msgtype": "text", "text": {"content": "测试"}}
    wecom.server.outage(0.6, [Fault(errcode=45009), Fault(status=502)])
    with httpx.Client() as client:
        answers = [client.post(url, params={"key": wecom.key}, json=body) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 502, 200]
        assert [answers[0].json()["errcode"], answers[2].json()["errcode"]] == [45009, 45009]
        assert wecom.server.posted(wecom.key) == []
        assert wecom.server.outage_served == 3
        time.sleep(0.7)
        assert client.post(url, params={"key": wecom.key}, json=body).json()["errcode"] == 0
    assert len(wecom.server.posted(wecom.key)) == 1
    assert wecom.server.outage_served == 3
