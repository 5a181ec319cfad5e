"""The official accounts' server URL over real HTTP: WeChat's signed PUBLISHJOBFINISH event
settles a published article's delivery without polling (channels/_oa_events.py,
dashboard/wechat_events.py), on the dashboard's listener and on the public feed listener."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from content_queue.accounts import Accounts
from content_queue.db import Delivery
from content_queue.models import build_notice
from content_queue.registry import load_registry
from content_queue.settings import Settings
from content_queue.store import DeliveryView, Store, utcnow
from dashboard.server import DashboardServer, start_in_thread
from dispatcher.service import submit_notice
from tests.conftest import SMALL_DEVICES
from tests.dashboard.conftest import fast_hasher

TOKEN_ENV = "VC_WECHAT_EAST_EVENTS"
TOKEN = "villagecast-event-token-7f3a"
PUBLISH_ID = "2247503051"


class Account:
    def __init__(self, server: DashboardServer, store: Store, settings: Settings) -> None:
        self.server = server
        self.store = store
        self.settings = settings
        self.registry = load_registry(settings.devices)

    def sent_publish(self, publish_id: str = PUBLISH_ID) -> int:
        """A notice whose article was submitted: its delivery ``sent``, awaiting the result."""
        sub = submit_notice(
            build_notice(
                {
                    "title": "东城镇防汛通知",
                    "body": "请各村做好防汛准备。",
                    "category": "emergency",
                    "targets": {"townships": ["east"]},
                }
            ),
            store=self.store,
            registry=self.registry,
            ring=None,
        )
        (d,) = [x for x in sub.deliveries if x.endpoint_id == "east-oa"]
        now = utcnow()
        with self.store.session() as s:
            s.execute(
                update(Delivery)
                .where(Delivery.id == d.id)
                .values(
                    status="sent",
                    sent_at=now,
                    updated_at=now,
                    external_ref=publish_id,
                    details={"mode": "publish", "publish_id": publish_id},
                )
            )
        return d.id

    def delivery(self, delivery_id: int) -> DeliveryView:
        (d,) = self.store.deliveries(ids=[delivery_id])
        return d


@pytest.fixture
def account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Account]:
    for key in list(os.environ):
        if key.startswith("VILLAGECAST_") and key != "VILLAGECAST_REQUIRE_SERVICES":
            monkeypatch.delenv(key)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    devices = tmp_path / "devices.yaml"
    yaml = SMALL_DEVICES.replace(
        "    covers_townships: [east]\n",
        f"    covers_townships: [east]\n    event_token_env: {TOKEN_ENV}\n",
    )
    assert TOKEN_ENV in yaml
    devices.write_text(yaml, encoding="utf-8")
    settings = Settings(home=tmp_path / "home", devices=devices, web_port=0, feed_port=0)
    settings.ensure_home()
    store = Store(settings.resolved_database_url)
    registry = load_registry(devices)
    server = start_in_thread(
        settings,
        store,
        lambda: registry,
        ring=lambda ids, countdown: 1,
        accounts=Accounts(store, hasher=fast_hasher()),
    )
    try:
        yield Account(server, store, settings)
    finally:
        server.shutdown()
        server.server_close()
        store.engine.dispose()


def _signed(token: str = TOKEN, *, timestamp: int | None = None) -> dict[str, str]:
    ts, nonce = str(int(time.time()) if timestamp is None else timestamp), "1405652963"
    signature = hashlib.sha1("".join(sorted([token, ts, nonce])).encode()).hexdigest()
    return {"signature": signature, "timestamp": ts, "nonce": nonce}


def _event(publish_id: str, status: int, *, fail_idx: tuple[int, ...] = ()) -> bytes:
    fails = "".join(f"<fail_idx>{i}</fail_idx>" for i in fail_idx)
    return f"""<xml>
<ToUserName><![CDATA[gh_4d00ed8d6399]]></ToUserName>
<FromUserName><![CDATA[oV5CrjpxgaGXNHIQigzNlgLTnwic]]></FromUserName>
<CreateTime>1481013459</CreateTime>
<MsgType><![CDATA[event]]></MsgType>
<Event><![CDATA[PUBLISHJOBFINISH]]></Event>
<PublishEventInfo>
<publish_id>{publish_id}</publish_id>
<publish_status>{status}</publish_status>
<article_id><![CDATA[b5O2OUs25HBxRceL7hfReg]]></article_id>
<article_detail><count>1</count><item><idx>1</idx>
<article_url><![CDATA[https://mp.weixin.qq.com/s/abc]]></article_url></item></article_detail>
{fails}
</PublishEventInfo>
</xml>""".encode()


def test_url_verification_answers_echostr_only_when_signed(account: Account) -> None:
    url = f"{account.server.web_url}/wechat/events/east-oa"
    ok = httpx.get(url, params={**_signed(), "echostr": "5915203461"})
    assert ok.status_code == 200 and ok.text == "5915203461"
    wrong = httpx.get(url, params={**_signed("another-token"), "echostr": "5915203461"})
    assert wrong.status_code == 403 and "5915203461" not in wrong.text
    stale = httpx.get(url, params={**_signed(timestamp=int(time.time()) - 3600), "echostr": "1"})
    assert stale.status_code == 403
    # An endpoint that is not an account with a token: nothing to verify.
    other = f"{account.server.web_url}/wechat/events/east-liu-tv"
    assert httpx.get(other, params={**_signed(), "echostr": "1"}).status_code == 404


def test_a_published_event_makes_the_delivery_delivered_on_the_public_listener(
    account: Account,
) -> None:
    did = account.sent_publish()
    url = f"{account.server.feed_url}/wechat/events/east-oa"
    resp = httpx.post(url, params=_signed(), content=_event(PUBLISH_ID, 0))
    assert resp.status_code == 200 and resp.text == "success"
    d = account.delivery(did)
    assert d.status == "delivered"
    assert d.details is not None
    assert d.details["article_url"] == "https://mp.weixin.qq.com/s/abc"
    assert d.details["publish_status"] == "published"
    assert d.details["confirmed_by"] == "event"
    # WeChat repeats an event it thinks was lost: answered, nothing changes.
    again = httpx.post(url, params=_signed(), content=_event(PUBLISH_ID, 0))
    assert again.text == "success" and account.delivery(did) == d


def test_an_audit_rejection_fails_the_delivery_with_the_reason(account: Account) -> None:
    did = account.sent_publish("2247503052")
    url = f"{account.server.web_url}/wechat/events/east-oa"
    resp = httpx.post(url, params=_signed(), content=_event("2247503052", 4, fail_idx=(1,)))
    assert resp.text == "success"
    d = account.delivery(did)
    assert d.status == "failed" and d.error_code == "publish_status_4"
    assert d.error_zh and "east-oa" in d.error_zh
    assert d.details is not None and d.details["fail_idx"] == [1]


def test_unsigned_or_unknown_events_change_nothing(account: Account) -> None:
    did = account.sent_publish()
    url = f"{account.server.web_url}/wechat/events/east-oa"
    forged = httpx.post(url, params=_signed("guess"), content=_event(PUBLISH_ID, 0))
    assert forged.status_code == 403
    other_publish = httpx.post(url, params=_signed(), content=_event("999", 0))
    assert other_publish.text == "success"
    subscribe = b"<xml><MsgType>event</MsgType><Event>subscribe</Event></xml>"
    assert httpx.post(url, params=_signed(), content=subscribe).text == "success"
    entity = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b"<xml><MsgType>&e;</MsgType></xml>"
    )
    # The entity is never resolved (no file is read): an event of no known type.
    answer = httpx.post(url, params=_signed(), content=entity)
    assert answer.status_code == 200 and "root" not in answer.text
    assert httpx.post(url, params=_signed(), content=b"not xml").status_code == 400
    assert account.delivery(did).status == "sent"
