"""Official accounts through wechatpy, against a local stand-in of the WeChat API."""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

import channels.wechat_official_account as oa
from channels._oa_client import KvSessionStorage, OfficialAccountClient
from channels._oa_state import kv_get, kv_set, parts
from channels.base import DeliveryContext, TransientError, get_channel
from channels.wechat_official_account import (
    OfficialAccountChannel,
    poll_official_account_publishes,
)
from cli import app
from content_queue.db import Delivery
from content_queue.errors import ConfigError
from content_queue.models import build_notice
from content_queue.registry import OfficialAccountEndpoint, Registry, load_registry
from content_queue.settings import Settings, get_settings, reset_settings
from content_queue.store import DeliveryView, Store, utcnow
from dispatcher import service
from tests.conftest import REPO
from tests.standins.wechat_mp import TOKEN_PREFIX, WeChatMpStandin

CN = ZoneInfo("Asia/Shanghai")
APP_EAST, APP_NORTH, APP_SOUTH = "wx1111111111111111", "wx2222222222222222", "wx3333333333333333"
SECRETS = {
    "VC_TEST_OA_EAST": "east-app-secret-DO-NOT-SHOW",
    "VC_TEST_OA_NORTH": "north-app-secret-DO-NOT-SHOW",
    "VC_TEST_OA_SOUTH": "south-app-secret-DO-NOT-SHOW",
}

DEVICES = textwrap.dedent(
    """\
    version: 1
    county: {code: "371521", name: 示例县}
    townships:
      - id: east
        name: 东城镇
        villages:
          - {id: east-liu, name: 刘庄村, endpoints: [{id: east-liu-tv, kind: tv_feed}]}
      - id: north
        name: 北山镇
        villages:
          - {id: n1, name: 北一村, endpoints: [{id: n1-tv, kind: tv_feed}]}
          - {id: n2, name: 北二村, endpoints: [{id: n2-tv, kind: tv_feed}]}
      - id: south
        name: 南河乡
        villages:
          - {id: s1, name: 南一村, endpoints: [{id: s1-tv, kind: tv_feed}]}
          - {id: s2, name: 南二村, endpoints: [{id: s2-tv, kind: tv_feed}]}
    official_accounts:
      - id: east-oa
        name: 东城镇发布
        app_id: wx1111111111111111
        app_secret_env: VC_TEST_OA_EAST
        covers_townships: [east]
      - id: north-oa
        name: 北山镇发布
        app_id: wx2222222222222222
        app_secret_env: VC_TEST_OA_NORTH
        mode: mass_send
        account_type: subscription
        village_tags: {n1: 101, n2: 102}
        digest_time: "18:00"
        covers_townships: [north]
      - id: south-oa
        name: 南河乡发布
        app_id: wx3333333333333333
        app_secret_env: VC_TEST_OA_SOUTH
        mode: mass_send
        account_type: service
        village_tags: {s1: 201, s2: 202}
        digest_time: "18:00"
        covers_townships: [south]
    """
)


@dataclass
class Env:
    settings: Settings
    store: Store
    registry: Registry
    standin: WeChatMpStandin
    home: Path
    polls: int = 0

    def submit(self, *, now: datetime | None = None, **data: Any) -> DeliveryView:
        notice = {
            "title": "村级财务公开（第三季度）",
            "body": "本季度村集体收入 12,345.60 元，支出 8,000 元。\n请村民监督。",
            "category": "village_finance",
            "targets": {"villages": ["east-liu"]},
            "channels": ["wechat_official_account"],
            **data,
        }
        submitted = service.submit_notice(
            build_notice(notice), store=self.store, registry=self.registry, ring=None, now=now
        )
        (d,) = submitted.deliveries
        return d

    def process(self, *ids: int) -> dict[int, str]:
        return service.process_deliveries(ids, store=self.store, settings=self.settings, ring=None)

    def delivery(self, did: int) -> DeliveryView:
        return self.store.deliveries(ids=[did])[0]

    def poll(self, *, later: float | None = None) -> int:
        """One poll pass, far enough ahead that every backoff has run out."""
        self.polls += 1
        ahead = later if later is not None else 10.0 * self.polls
        return poll_official_account_publishes(
            self.store,
            self.settings,
            registry=self.registry,
            now=utcnow() + timedelta(seconds=ahead),
        )


@pytest.fixture
def env(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    devices = home.parent / "oa-devices.yaml"
    devices.write_text(DEVICES, encoding="utf-8")
    accounts = {
        APP_EAST: SECRETS["VC_TEST_OA_EAST"],
        APP_NORTH: SECRETS["VC_TEST_OA_NORTH"],
        APP_SOUTH: SECRETS["VC_TEST_OA_SOUTH"],
    }
    with WeChatMpStandin(accounts, account_types={APP_SOUTH: "service"}) as standin:
        monkeypatch.setenv("VILLAGECAST_DEVICES", str(devices))
        monkeypatch.setenv("VILLAGECAST_WECHAT_BASE_URL", standin.url)
        monkeypatch.setenv("VILLAGECAST_HTTP_TIMEOUT_SECONDS", "1")
        for name, value in SECRETS.items():
            monkeypatch.setenv(name, value)
        reset_settings()
        settings = get_settings()
        yield Env(
            settings,
            service.open_store(settings),
            load_registry(devices),
            standin,
            home,
        )


# -- publish: success through to published ---------------------------------------------------


def test_article_is_published_and_followed_to_delivered(env: Env) -> None:
    d = env.submit()
    assert env.process(d.id) == {d.id: "sent"}
    sent = env.delivery(d.id)
    publish = env.standin.calls("freepublish/submit")
    assert len(publish) == 1
    assert sent.external_ref == sent.details["publish_id"]  # type: ignore[index]
    assert sent.details and sent.details["mode"] == "publish"
    # The article: the notice's text, its category, and a cover uploaded as permanent image.
    (draft,) = env.standin.calls("draft/add")
    (article,) = draft.body["articles"]
    assert article["title"] == "村级财务公开（第三季度）"
    assert "本季度村集体收入 12,345.60 元" in article["content"]
    assert "【村级财务】" in article["content"]
    (upload,) = env.standin.calls("material/add_material")
    assert upload.query["type"] == "image"
    cover = env.standin.materials[article["thumb_media_id"]]
    assert cover["data"].startswith(b"\xff\xd8\xff") and cover["permanent"]

    # freepublish/get says "publishing" first, then "published".
    assert env.poll() == 0
    assert env.delivery(d.id).status == "sent"
    assert env.poll() == 1
    done = env.delivery(d.id)
    assert done.status == "delivered"
    assert done.details and done.details["publish_status"] == "published"
    assert done.details["article_id"] in env.standin.articles
    assert done.details["article_url"].endswith(done.details["article_id"])
    assert env.poll() == 0  # nothing left to follow
    assert env.standin.count("freepublish/get") == 2

    # A second notice of the same category reuses the cover and the token.
    d2 = env.submit(title="村级财务公开（第四季度）")
    assert env.process(d2.id) == {d2.id: "sent"}
    assert env.standin.count("material/add_material") == 1
    assert env.standin.count("token") == 1


def test_poller_backs_off_between_questions(env: Env) -> None:
    env.standin.publish_script = [1]  # publishing, for ever
    d = env.submit()
    env.process(d.id)
    now = utcnow()
    assert (
        poll_official_account_publishes(env.store, env.settings, registry=env.registry, now=now)
        == 0
    )
    assert env.standin.count("freepublish/get") == 1
    poll = env.delivery(d.id).details["poll"]  # type: ignore[index]
    assert poll["n"] == 1
    next_at = datetime.fromisoformat(poll["next_at"])
    assert next_at > now
    # Before next_at nobody asks again; after it, one more question with a longer wait.
    poll_official_account_publishes(env.store, env.settings, registry=env.registry, now=now)
    assert env.standin.count("freepublish/get") == 1
    poll_official_account_publishes(env.store, env.settings, registry=env.registry, now=next_at)
    assert env.standin.count("freepublish/get") == 2
    again = env.delivery(d.id).details["poll"]  # type: ignore[index]
    assert datetime.fromisoformat(again["next_at"]) - next_at > next_at - now
    # Still publishing a day later: the township is told to look.
    env.poll(later=25 * 3600)
    late = env.delivery(d.id)
    assert late.status == "failed" and late.error_code == "confirm_timeout"


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (4, "publish_status_4", "平台审核不通过"),
        (2, "publish_status_2", "原创声明失败"),
        (6, "publish_status_6", "被平台封禁"),
    ],
)
def test_audit_rejection_fails_with_the_reason(
    env: Env, status: int, code: str, reason: str
) -> None:
    env.standin.publish_script = [1, status]
    d = env.submit()
    env.process(d.id)
    env.poll()
    env.poll()
    failed = env.delivery(d.id)
    assert failed.status == "failed"
    assert failed.error_code == code
    assert reason in (failed.error_zh or "")
    assert "east-oa" in (failed.error_zh or "")


# -- errors ------------------------------------------------------------------------------------


def test_http_200_with_errcode_is_explained(env: Env) -> None:
    env.standin.fail("draft/add", 40164)
    d = env.submit()
    assert env.process(d.id) == {d.id: "failed"}
    failed = env.delivery(d.id)
    assert failed.error_code == "40164"
    assert "请在公众号后台把服务器 IP 加入白名单" in (failed.error_zh or "")
    assert "IP whitelist" in (failed.error_en or "")
    assert env.standin.count("freepublish/submit") == 0


@pytest.mark.parametrize(
    ("errcode", "zh"),
    [
        (48001, "接口未授权"),
        (53503, "草稿未通过发布检查"),
        (40125, "VC_TEST_OA_EAST"),  # names the variable to update, never its value
    ],
)
def test_permanent_codes_fail_at_once(env: Env, errcode: int, zh: str) -> None:
    path = "token" if errcode == 40125 else "freepublish/submit"
    env.standin.fail(path, errcode)
    d = env.submit()
    assert env.process(d.id) == {d.id: "failed"}
    failed = env.delivery(d.id)
    assert failed.error_code == str(errcode)
    assert zh in (failed.error_zh or "")
    assert SECRETS["VC_TEST_OA_EAST"] not in (failed.error_zh or "") + (failed.error_en or "")


@pytest.mark.parametrize(
    ("fail", "code"),
    [
        ({"errcode": -1}, "-1"),
        ({"errcode": 45009}, "45009"),
        ({"errcode": 45011}, "45011"),
        ({"http_status": 502}, "http_502"),
        ({"http_status": 503}, "http_503"),
    ],
)
def test_busy_rate_limits_and_5xx_are_retried_without_repeating_work(
    env: Env, fail: dict[str, Any], code: str
) -> None:
    env.standin.fail("freepublish/submit", **fail)
    d = env.submit()
    assert env.process(d.id) == {d.id: "pending"}
    waiting = env.delivery(d.id)
    assert waiting.error_code == code
    assert waiting.due_at > utcnow() - timedelta(seconds=1)
    with env.store.session() as s:  # the retry is due now (tests skip the backoff wait)
        row = s.get(Delivery, d.id)
        assert row is not None
        row.due_at = utcnow() - timedelta(seconds=1)
    assert env.process(d.id) == {d.id: "sent"}
    # The draft made on the first attempt is reused; one publication in the end.
    assert env.standin.count("draft/add") == 1
    assert len(env.standin.publications) == 1


def test_rate_limit_codes_carry_a_retry_hint() -> None:
    from wechatpy.exceptions import WeChatClientException

    ep = OfficialAccountEndpoint(
        id="x-oa", app_id=APP_EAST, app_secret_env="VC_X", covers_townships=[]
    )
    err = oa._vendor_error(
        WeChatClientException(45009, "reach max api daily quota limit"), ep=ep, step=oa._S_SUBMIT
    )
    assert isinstance(err, TransientError) and err.retry_after == 300
    err = oa._vendor_error(
        WeChatClientException(45011, "api minute-quota reach limit"), ep=ep, step=oa._S_SUBMIT
    )
    assert isinstance(err, TransientError) and err.retry_after == 60


def test_timeouts_before_the_submit_are_retried(env: Env) -> None:
    env.standin.fail("token", delay=2.5)  # the client gives up after 1 s
    d = env.submit()
    assert env.process(d.id) == {d.id: "pending"}
    assert env.delivery(d.id).error_code == "timeout"
    env.standin.fail("draft/add", delay=2.5, after=True)  # the draft is made, the answer lost
    _due_now(env, d.id)
    assert env.process(d.id) == {d.id: "pending"}
    _due_now(env, d.id)
    assert env.process(d.id) == {d.id: "sent"}
    assert len(env.standin.publications) == 1


def test_a_submit_with_unknown_outcome_is_not_repeated(env: Env) -> None:
    env.standin.fail("freepublish/submit", delay=2.5, after=True)
    d = env.submit()
    assert env.process(d.id) == {d.id: "failed"}
    failed = env.delivery(d.id)
    assert failed.error_code == "outcome_unknown"
    assert "发表记录" in (failed.error_zh or "")
    assert len(env.standin.publications) == 1  # it did go out; it is not sent twice
    assert parts(env.store, d.id)["publish"].status == "unknown"


def test_an_emergency_submit_with_unknown_outcome_is_repeated(env: Env) -> None:
    env.standin.fail("freepublish/submit", delay=2.5, after=True)
    d = env.submit(title="暴雨红色预警", category="emergency", priority="emergency")
    assert env.process(d.id) == {d.id: "pending"}
    _due_now(env, d.id)
    assert env.process(d.id) == {d.id: "sent"}
    assert len(env.standin.publications) == 2  # the documented price of certainty


def test_token_expiry_mid_run_refreshes_once(env: Env) -> None:
    first = env.submit()
    env.process(first.id)
    assert env.standin.count("token") == 1
    env.standin.revoke_tokens()  # e.g. someone fetched a token elsewhere
    second = env.submit(title="第二条通知")
    assert env.process(second.id) == {second.id: "sent"}
    assert env.standin.count("token") == 2
    answers = [r.errcode for r in env.standin.calls("draft/add")]
    assert answers == [0, 40001, 0]

    env.standin.expire_tokens()
    third = env.submit(title="第三条通知")
    assert env.process(third.id) == {third.id: "sent"}
    assert env.standin.count("token") == 3
    assert [r.errcode for r in env.standin.calls("draft/add")][-2:] == [42001, 0]


def test_a_token_error_is_retried_once_only(env: Env) -> None:
    d = env.submit()
    env.standin.fail("draft/add", 40001, times=5)
    assert env.process(d.id) == {d.id: "pending"}
    assert env.delivery(d.id).error_code == "40001"
    assert env.standin.count("draft/add") == 2  # the call and one retry, not a loop
    assert env.standin.count("token") == 2


def test_a_token_failure_recorded_on_the_delivery_shows_no_secret_or_token(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    """40001 through the dispatcher: the delivery, its attempts, the whole database, the
    log (urllib3 logs request lines, token included, at DEBUG) and the CLI."""
    caplog.set_level(logging.DEBUG)
    d = env.submit()
    env.standin.fail("draft/add", 40001, times=5)
    assert env.process(d.id) == {d.id: "pending"}
    recorded = env.delivery(d.id)
    assert recorded.error_code == "40001"
    assert "access_token 无效" in (recorded.error_zh or "")
    tokens = {r.query.get("access_token") for r in env.standin.requests} - {None}
    assert len(tokens) == 2  # the first one, and the one fetched after the 40001
    assert all(t and t.startswith(TOKEN_PREFIX) for t in tokens)
    shown = CliRunner().invoke(app, ["notice", "show", str(recorded.notice_id), "--json"])
    assert shown.exit_code == 0 and "40001" in shown.output
    assert "access_token=***" in caplog.text  # logged, masked
    texts = [
        str(recorded),
        str(env.store.attempts(d.id)),
        _dump(env),
        caplog.text,
        shown.output,
    ]
    for text in texts:
        for secret in [SECRETS["VC_TEST_OA_EAST"], TOKEN_PREFIX, *tokens]:
            assert secret not in text


def test_the_cached_token_is_sealed_with_the_app_secret(env: Env) -> None:
    """kv_entries shares the token between workers, sealed under a key derived from the
    AppSecret: a copy of the database holds no usable token."""
    d = env.submit()
    env.process(d.id)
    name = f"{APP_EAST}_access_token"
    raw = kv_get(env.store, f"wechat:{name}")
    assert raw is not None and raw.startswith("sealed:v1:")
    (token,) = {r.query["access_token"] for r in env.standin.calls("draft/add")}
    assert token not in _dump(env)
    secret = SECRETS["VC_TEST_OA_EAST"]
    assert KvSessionStorage(env.store, app_id=APP_EAST, secret=secret).get(name) == token
    # Another AppSecret (rotated in the console) or another account cannot open it: the
    # token reads as missing and is fetched again.
    other = KvSessionStorage(env.store, app_id=APP_EAST, secret="rotated-" + secret)
    assert other.get(name) is None
    assert KvSessionStorage(env.store, app_id=APP_NORTH, secret=secret).get(name) is None
    # A token an older version cached in plain text is not used, and is replaced.
    kv_set(env.store, f"wechat:{name}", json.dumps(token))
    second = env.submit(title="第二条通知")
    assert env.process(second.id) == {second.id: "sent"}
    assert env.standin.count("token") == 2
    assert str(kv_get(env.store, f"wechat:{name}")).startswith("sealed:v1:")


def test_token_is_shared_by_channel_instances(env: Env) -> None:
    ep = env.registry.endpoint("east-oa")
    assert isinstance(ep, OfficialAccountEndpoint)
    one = OfficialAccountChannel().client(ep, settings=env.settings, store=env.store)
    two = OfficialAccountChannel().client(ep, settings=env.settings, store=env.store)
    assert one is not two
    assert one.access_token == two.access_token
    assert env.standin.count("token") == 1


def test_token_is_fetched_once_by_two_processes(env: Env) -> None:
    a, b = env.submit(title="甲"), env.submit(title="乙")
    env.standin.fail("token", delay=0.6)  # slow enough that both want it at once
    go = env.home.parent / "go"
    script = textwrap.dedent(
        f"""
        import sys, time, pathlib
        from content_queue.settings import get_settings
        from dispatcher import service
        while not pathlib.Path({str(go)!r}).exists():
            time.sleep(0.01)
        settings = get_settings()
        store = service.open_store(settings)
        print(service.process_deliveries([int(sys.argv[1])], store=store, settings=settings,
                                         ring=None))
        """
    )
    environ = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(did)],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for did in (a.id, b.id)
    ]
    time.sleep(0.5)  # let both import and wait at the start line
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert {env.delivery(a.id).status, env.delivery(b.id).status} == {"sent"}, outs
    assert env.standin.count("token") == 1


def test_missing_secret_is_a_config_error(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VC_TEST_OA_EAST")
    d = env.submit()
    assert env.process(d.id) == {d.id: "failed"}
    failed = env.delivery(d.id)
    assert failed.error_code == "config"
    assert "VC_TEST_OA_EAST" in (failed.error_zh or "")
    assert env.standin.requests == []


def test_an_article_too_long_for_wechat_is_refused(env: Env) -> None:
    rows = [[f"户主{i}", "370781********1234", "1,200.00"] for i in range(600)]
    d = env.submit(
        title="惠农补贴名单",
        category="farm_subsidy",
        table={"columns": ["户主", "身份证号", "金额（元）"], "rows": rows},
    )
    assert env.process(d.id) == {d.id: "failed"}
    failed = env.delivery(d.id)
    assert failed.error_code == "content_too_long"
    assert "2 万字符" in (failed.error_zh or "")
    assert env.standin.count("draft/add") == 0


def test_secrets_and_tokens_never_reach_logs_or_errors(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    env.standin.fail("freepublish/submit", http_status=500)
    d = env.submit()
    env.process(d.id)
    _due_now(env, d.id)
    env.process(d.id)
    env.poll()
    tokens = {r.query.get("access_token") for r in env.standin.requests} - {None}
    assert tokens
    text = caplog.text + str(env.store.attempts(d.id)) + str(env.delivery(d.id))
    assert "access_token=***" in caplog.text  # urllib3's request lines, redacted
    for secret in [SECRETS["VC_TEST_OA_EAST"], *tokens]:
        assert secret not in text
    ep = env.registry.endpoint("east-oa")
    assert isinstance(ep, OfficialAccountEndpoint)
    client = OfficialAccountChannel().client(ep, settings=env.settings, store=env.store)
    assert SECRETS["VC_TEST_OA_EAST"] not in repr(client)


def test_every_request_goes_to_the_configured_base(env: Env) -> None:
    d = env.submit()
    env.process(d.id)
    assert env.standin.count("token") == 1  # the token too: wechatpy hard-codes its host
    ep = env.registry.endpoint("east-oa")
    assert isinstance(ep, OfficialAccountEndpoint)
    client = OfficialAccountChannel().client(ep, settings=env.settings, store=env.store)
    assert isinstance(client, OfficialAccountClient)
    with pytest.raises(ConfigError):
        client.get("https://api.weixin.qq.com/cgi-bin/user/get")
    with pytest.raises(ConfigError):
        client.get("media/get", api_base_url="https://api.weixin.qq.com/cgi-bin/")


# -- mass send: quota, digest, emergencies -----------------------------------------------------


class Clock:
    """The channel's (and the stand-in's) idea of now, moved by the test."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(env: Env, monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock(datetime(2031, 3, 10, 9, 0, tzinfo=CN).astimezone(UTC))
    monkeypatch.setattr(oa, "utcnow", c)
    env.standin.clock = c
    return c


def run_at(env: Env, when: datetime, *ids: int) -> dict[int, str]:
    """Release, claim, send and record at a chosen time, through the dispatcher's own code."""
    env.store.sweep(max_attempts=6, redoorbell_seconds=60, now=when)
    claims = env.store.claim(ids, worker="test", lease_seconds=60, max_attempts=6, now=when)
    outcomes = [
        (c, service._attempt(c, store=env.store, registry=env.registry, settings=env.settings))
        for c in claims
    ]
    statuses = env.store.finish_many(outcomes, max_attempts=6, now=when)
    return {c.delivery.id: s for (c, _), s in zip(outcomes, statuses, strict=True)}


def _at(clock: Clock, day: int, hh: int, mm: int, ss: int = 0) -> datetime:
    clock.now = datetime(2031, 3, day, hh, mm, ss, tzinfo=CN).astimezone(UTC)
    return clock.now


def test_subscription_quota_exhausted_goes_to_the_digest(env: Env, clock: Clock) -> None:
    north = {"channels": ["wechat_official_account"]}
    a = env.submit(now=clock.now, title="北一村低保公示", targets={"villages": ["n1"]}, **north)
    # One send a day and none to spare: a routine notice waits for the 18:00 digest.
    assert run_at(env, clock.now, a.id) == {a.id: "scheduled"}
    held = env.delivery(a.id)
    assert held.due_at == datetime(2031, 3, 10, 18, 0, tzinfo=CN)
    assert "汇总群发" in (held.error_zh or "")
    assert held.attempts == 0  # a hold is not an attempt
    assert [x["outcome"] for x in env.store.attempts(a.id)] == ["held"]
    assert env.standin.count("message/mass/sendall") == 0

    b = env.submit(
        now=_at(clock, 10, 9, 5), title="北二村会议通知", targets={"villages": ["n2"]}, **north
    )
    assert run_at(env, clock.now, b.id) == {b.id: "scheduled"}

    # An emergency takes a send of its own, at once, to its village's tag.
    c = env.submit(
        now=_at(clock, 10, 10, 0),
        title="山洪预警",
        category="emergency",
        priority="emergency",
        targets={"villages": ["n1"]},
        **north,
    )
    assert run_at(env, clock.now, c.id) == {c.id: "sent"}
    (send,) = env.standin.calls("message/mass/sendall")
    assert send.body["filter"] == {"tag_id": 101, "is_to_all": False}
    assert send.body["clientmsgid"].startswith("vc-")

    # 18:00: the day's send is gone, so the digest waits for tomorrow.
    when = _at(clock, 10, 18, 0, 30)
    assert run_at(env, when, a.id, b.id) == {a.id: "scheduled", b.id: "scheduled"}
    assert env.delivery(a.id).due_at == datetime(2031, 3, 11, 18, 0, tzinfo=CN)
    assert env.standin.count("message/mass/sendall") == 1

    # Next day at 18:00: one send carries both notices, to all followers (two villages).
    when = _at(clock, 11, 18, 0, 30)
    assert run_at(env, when, a.id, b.id) == {a.id: "sent", b.id: "sent"}
    sends = env.standin.calls("message/mass/sendall")
    assert len(sends) == 2
    digest = sends[-1].body
    assert digest["filter"]["is_to_all"] is True
    draft = env.standin.drafts[digest["mpnews"]["media_id"]]
    assert [x["title"] for x in draft["articles"]] == ["北一村低保公示", "北二村会议通知"]
    da, db = env.delivery(a.id), env.delivery(b.id)
    assert da.details and db.details
    assert da.details["mass"]["mass"]["article_idx"] == 1
    assert db.details["mass"]["mass"]["article_idx"] == 2
    assert da.details["mass"]["mass"]["msg_id"] == db.details["mass"]["mass"]["msg_id"]
    assert da.details["oa_hold"] is None
    assert da.attempts == db.attempts == 1
    # The stand-in refuses a second send in a day (45028): none was refused.
    assert all(r.errcode == 0 for r in sends)

    # SEND_SUCCESS makes them delivered.
    assert env.poll() == 3
    assert {env.delivery(i).status for i in (a.id, b.id, c.id)} == {"delivered"}


def test_service_account_counts_four_a_month_per_village_tag(env: Env, clock: Clock) -> None:
    south = {"channels": ["wechat_official_account"]}
    ids = []
    for i in range(3):
        d = env.submit(now=clock.now, title=f"南一村通知{i}", targets={"villages": ["s1"]}, **south)
        assert run_at(env, clock.now, d.id) == {d.id: "sent"}
        ids.append(d.id)
    # The fourth send of the month to s1's followers is kept for the digest...
    fourth = env.submit(now=clock.now, title="南一村通知3", targets={"villages": ["s1"]}, **south)
    assert run_at(env, clock.now, fourth.id) == {fourth.id: "scheduled"}
    # ... while s2's followers have their own four.
    other = env.submit(now=clock.now, title="南二村通知", targets={"villages": ["s2"]}, **south)
    assert run_at(env, clock.now, other.id) == {other.id: "sent"}
    when = _at(clock, 10, 18, 1)
    assert run_at(env, when, fourth.id) == {fourth.id: "sent"}
    # The month is used up for s1: a fifth waits, day after day, and an emergency fails.
    fifth = env.submit(now=when, title="南一村通知4", targets={"villages": ["s1"]}, **south)
    assert run_at(env, when, fifth.id) == {fifth.id: "scheduled"}
    assert run_at(env, _at(clock, 11, 18, 1), fifth.id) == {fifth.id: "scheduled"}
    alarm = env.submit(
        now=clock.now,
        title="火情通报",
        category="emergency",
        priority="emergency",
        targets={"villages": ["s1"]},
        **south,
    )
    assert run_at(env, clock.now, alarm.id) == {alarm.id: "failed"}
    failed = env.delivery(alarm.id)
    assert failed.error_code == "quota_exhausted"
    assert "其他渠道" in (failed.error_zh or "")
    tags = [r.body["filter"]["tag_id"] for r in env.standin.calls("message/mass/sendall")]
    assert tags.count(201) == 4 and tags.count(202) == 1
    assert all(r.errcode == 0 for r in env.standin.calls("message/mass/sendall"))
    # April: a new month, a new quota.
    assert run_at(env, _at_month(clock, 4, 1, 18, 1), fifth.id) == {fifth.id: "sent"}


def _at_month(clock: Clock, month: int, day: int, hh: int, mm: int) -> datetime:
    clock.now = datetime(2031, month, day, hh, mm, tzinfo=CN).astimezone(UTC)
    return clock.now


def test_clientmsgid_makes_a_repeated_mass_send_harmless(env: Env, clock: Clock) -> None:
    env.standin.fail("message/mass/sendall", delay=2.5, after=True)
    d = env.submit(
        now=clock.now,
        title="防汛紧急通知",
        category="emergency",
        priority="emergency",
        targets={"villages": ["n1"]},
        channels=["wechat_official_account"],
    )
    assert run_at(env, clock.now, d.id) == {d.id: "pending"}
    assert parts(env.store, d.id)["mass:mass"].status == "unknown"
    assert run_at(env, clock.now + timedelta(seconds=5), d.id) == {d.id: "sent"}
    sends = env.standin.calls("message/mass/sendall")
    assert [r.errcode for r in sends] == [None, 45065]
    assert sends[0].body["clientmsgid"] == sends[1].body["clientmsgid"]
    assert len(env.standin.mass) == 1  # one message reached the followers
    (msg_id,) = env.standin.mass
    assert env.delivery(d.id).external_ref == str(msg_id)


def test_a_refused_mass_send_gives_its_quota_back(env: Env, clock: Clock) -> None:
    env.standin.fail("message/mass/sendall", -1)
    d = env.submit(
        now=clock.now,
        title="停水通知",
        category="emergency",
        priority="emergency",
        targets={"villages": ["n2"]},
        channels=["wechat_official_account"],
    )
    assert run_at(env, clock.now, d.id) == {d.id: "pending"}
    assert run_at(env, clock.now + timedelta(seconds=5), d.id) == {d.id: "sent"}
    assert len(env.standin.mass) == 1


# -- recall ---------------------------------------------------------------------------------


def _recall_ctx(env: Env, original: DeliveryView) -> DeliveryContext:
    """The context of the recall delivery the dispatcher makes for ``original``."""
    with env.store.session() as s:
        row = s.scalars(
            select(Delivery).where(Delivery.action == "recall", Delivery.recall_of == original.id)
        ).first()
        if row is None:
            row = Delivery(
                notice_id=original.notice_id,
                endpoint_id=original.endpoint_id,
                kind=original.kind,
                action="recall",
                recall_of=original.id,
                status="sending",
                attempts=1,
                due_at=utcnow(),
                updated_at=utcnow(),
            )
            s.add(row)
            s.flush()
        rid = row.id
    endpoint = env.registry.endpoint(original.endpoint_id)
    assert endpoint is not None
    return DeliveryContext(
        delivery_id=rid,
        attempt=1,
        notice=env.store.notice(original.notice_id),
        endpoint=endpoint,
        village_id=None,
        registry=env.registry,
        settings=env.settings,
        store=env.store,
        action="recall",
        recall_of=original.id,
    )


def _channel() -> OfficialAccountChannel:
    channel = get_channel("wechat_official_account")
    assert isinstance(channel, OfficialAccountChannel)
    return channel


def _withdraw(env: Env, d: DeliveryView, *, now: datetime | None = None) -> int:
    """Withdraw the notice the dispatcher's way; returns the recall delivery's id."""
    withdrawal = env.store.withdraw(d.notice_id, actor="test", now=now)
    (recall,) = [r for r in withdrawal.recalls if r.recall_of == d.id]
    return recall.id


def test_withdrawal_deletes_the_published_article(env: Env) -> None:
    d = env.submit()
    env.process(d.id)
    env.poll()
    env.poll()
    published = env.delivery(d.id)
    assert published.status == "delivered" and published.details
    article_id = published.details["article_id"]
    recall = _withdraw(env, published)
    assert env.process(recall) == {recall: "delivered"}
    assert env.delivery(recall).details == {
        "recall": {"action": "freepublish/delete", "article_id": article_id, "already_gone": False}
    }
    (delete,) = env.standin.calls("freepublish/delete")
    assert delete.body == {"article_id": article_id, "index": 0}
    assert env.standin.articles[article_id].deleted
    # Taking it back twice is fine: it is already gone.
    again = _channel().take_back(_recall_ctx(env, published))
    assert again.details and again.details["recall"]["already_gone"] is True


def test_withdrawal_of_an_article_still_publishing_waits_for_it(env: Env) -> None:
    env.standin.publish_script = [1, 0]
    d = env.submit()
    env.process(d.id)
    recall = _withdraw(env, env.delivery(d.id))
    assert env.process(recall) == {recall: "pending"}
    assert env.delivery(recall).error_code == "publishing"
    _due_now(env, recall)
    assert env.process(recall) == {recall: "delivered"}
    recorded = env.delivery(recall).details
    assert recorded and recorded["recall"]["action"] == "freepublish/delete"


def test_recall_deletes_a_draft_never_published(env: Env) -> None:
    env.standin.fail("freepublish/submit", 53503)
    d = env.submit()
    assert env.process(d.id) == {d.id: "failed"}
    (draft_id,) = env.standin.drafts
    result = _channel().take_back(_recall_ctx(env, env.delivery(d.id)))
    assert result.details == {
        "recall": {"action": "draft/delete", "media_id": draft_id, "already_gone": False}
    }
    assert env.standin.drafts == {}


def test_withdrawal_deletes_only_this_notice_from_a_digest(env: Env, clock: Clock) -> None:
    north = {"channels": ["wechat_official_account"]}
    a = env.submit(now=clock.now, title="甲通知", targets={"villages": ["n1"]}, **north)
    b = env.submit(now=clock.now, title="乙通知", targets={"villages": ["n1"]}, **north)
    run_at(env, clock.now, a.id, b.id)
    when = _at(clock, 10, 18, 0, 5)
    assert run_at(env, when, a.id, b.id) == {a.id: "sent", b.id: "sent"}
    (send,) = env.standin.calls("message/mass/sendall")
    assert send.body["filter"] == {"tag_id": 101, "is_to_all": False}  # both for n1
    recall = _withdraw(env, env.delivery(b.id), now=when)
    assert run_at(env, when, recall) == {recall: "delivered"}
    (delete,) = env.standin.calls("message/mass/delete")
    (msg_id,) = env.standin.mass
    assert delete.body == {"msg_id": msg_id, "article_idx": 2}
    recorded = env.delivery(recall).details
    assert recorded and recorded["recall"]["action"] == "message/mass/delete"
    assert env.standin.mass[msg_id].deleted_idx == [2]


def test_withdrawing_a_held_notice_sends_nothing(env: Env, clock: Clock) -> None:
    a = env.submit(
        now=clock.now,
        title="待汇总的通知",
        targets={"villages": ["n1"]},
        channels=["wechat_official_account"],
    )
    assert run_at(env, clock.now, a.id) == {a.id: "scheduled"}
    withdrawal = env.store.withdraw(a.notice_id, actor="test", now=clock.now)
    assert withdrawal.cancelled == 1 and withdrawal.recalls == []
    when = _at(clock, 10, 18, 0, 5)
    assert run_at(env, when, a.id) == {}
    assert env.delivery(a.id).status == "cancelled"
    assert env.standin.count("message/mass/sendall") == 0


# -- end to end ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_real_worker_publishes_and_its_sweeper_confirms(env: Env) -> None:
    from dispatcher.doorbell import ring
    from dispatcher.worker import spawn_worker

    settings = env.settings
    environ = dict(os.environ, PYTHONPATH=str(REPO))
    log = (env.home / "worker.log").open("wb")
    proc = spawn_worker(env=environ, concurrency=1, stdout=log, stderr=log)
    try:
        submitted = service.submit_notice(
            build_notice(
                {
                    "title": "村民代表会议通知",
                    "body": "定于本周五召开村民代表会议。",
                    "category": "meeting",
                    "targets": {"villages": ["east-liu"]},
                }
            ),
            store=env.store,
            registry=env.registry,
            ring=lambda ids, countdown: ring(ids, settings=settings, countdown=countdown),
        )
        (d,) = [x for x in submitted.deliveries if x.kind == "wechat_official_account"]
        deadline = time.monotonic() + 60
        while env.delivery(d.id).status != "delivered":
            assert time.monotonic() < deadline, (env.home / "worker.log").read_text()[-3000:]
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert len(env.standin.publications) == 1
    assert env.standin.count("token") == 1


def _dump(env: Env) -> str:
    """Every table of the store, as ``sqlite3`` dumps it."""
    with sqlite3.connect(env.settings.home / "villagecast.sqlite") as db:
        return "\n".join(db.iterdump())


def _due_now(env: Env, did: int) -> None:
    with env.store.session() as s:
        row = s.get(Delivery, did)
        assert row is not None
        row.due_at = utcnow() - timedelta(seconds=1)
