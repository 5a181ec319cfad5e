"""The official accounts' server URL over real HTTP: WeChat's signed PUBLISHJOBFINISH event
settles a published article's delivery without polling (channels/_oa_events.py,
dashboard/wechat_events.py), on the dashboard's listener and on the public feed listener."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
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
AES_ENV = "VC_WECHAT_EAST_AES"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # WeChat's documented sample format
APP_ID = "wx0123456789abcdef"  # east-oa's app_id in SMALL_DEVICES


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
    yield from _account(tmp_path, monkeypatch)


@pytest.fixture
def safe_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Account]:
    """The account's server configuration in safe mode (安全模式)."""
    monkeypatch.setenv(AES_ENV, AES_KEY)
    yield from _account(tmp_path, monkeypatch, f"    event_aes_key_env: {AES_ENV}\n")


def _account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str = "") -> Iterator[Account]:
    for key in list(os.environ):
        if key.startswith("VILLAGECAST_") and key != "VILLAGECAST_REQUIRE_SERVICES":
            monkeypatch.delenv(key)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    devices = tmp_path / "devices.yaml"
    yaml = SMALL_DEVICES.replace(
        "    covers_townships: [east]\n",
        f"    covers_townships: [east]\n    event_token_env: {TOKEN_ENV}\n{extra}",
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


def _seal(xml: bytes, *, key: str = AES_KEY, app_id: str = APP_ID) -> str:
    """WeChat's message encryption, written from its documentation (not with wechatpy):
    AES-256-CBC, IV the key's first 16 bytes, over 16 random bytes + the length (4 bytes,
    network order) + the XML + the AppID, PKCS#7-padded to 32 bytes; base64."""
    raw = base64.b64decode(key + "=")
    plain = os.urandom(16) + struct.pack(">I", len(xml)) + xml + app_id.encode()
    pad = 32 - len(plain) % 32
    plain += bytes([pad]) * pad
    enc = Cipher(algorithms.AES(raw), modes.CBC(raw[:16])).encryptor()
    return base64.b64encode(enc.update(plain) + enc.finalize()).decode()


def _encrypted(
    xml: bytes, *, token: str = TOKEN, key: str = AES_KEY, app_id: str = APP_ID
) -> tuple[dict[str, str], bytes]:
    """The query and body of a safe-mode push."""
    params = _signed(token)
    encrypt = _seal(xml, key=key, app_id=app_id)
    joined = "".join(sorted([token, params["timestamp"], params["nonce"], encrypt]))
    params |= {
        "encrypt_type": "aes",
        "msg_signature": hashlib.sha1(joined.encode()).hexdigest(),
        "openid": "oV5CrjpxgaGXNHIQigzNlgLTnwic",
    }
    body = (
        "<xml><ToUserName><![CDATA[gh_4d00ed8d6399]]></ToUserName>"
        f"<Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    )
    return params, body.encode()


def test_safe_mode_an_encrypted_event_settles_the_delivery(safe_account: Account) -> None:
    did = safe_account.sent_publish()
    url = f"{safe_account.server.web_url}/wechat/events/east-oa"
    params, body = _encrypted(_event(PUBLISH_ID, 0))
    resp = httpx.post(url, params=params, content=body)
    assert resp.status_code == 200 and resp.text == "success"
    d = safe_account.delivery(did)
    assert d.status == "delivered"
    assert d.details is not None and d.details["confirmed_by"] == "event"
    assert d.details["article_url"] == "https://mp.weixin.qq.com/s/abc"
    # URL verification is the same as in plaintext mode.
    ok = httpx.get(url, params={**_signed(), "echostr": "5915203461"})
    assert ok.text == "5915203461"


def test_safe_mode_refuses_plaintext_forged_and_foreign_events(safe_account: Account) -> None:
    did = safe_account.sent_publish()
    url = f"{safe_account.server.feed_url}/wechat/events/east-oa"
    # Plaintext, correctly signed with the token: safe mode takes none.
    plain = httpx.post(url, params=_signed(), content=_event(PUBLISH_ID, 0))
    assert plain.status_code == 403
    # Encrypted, but the ciphertext's signature does not match (tampered on the way).
    params, body = _encrypted(_event(PUBLISH_ID, 0))
    tampered = httpx.post(url, params={**params, "msg_signature": "0" * 40}, content=body)
    assert tampered.status_code == 403
    # Sealed with the right key for another account (its AppID inside).
    params, body = _encrypted(_event(PUBLISH_ID, 0), app_id="wx00000000000000ff")
    assert httpx.post(url, params=params, content=body).status_code == 403
    # Sealed with another key: the signature matches (it covers the ciphertext only),
    # the content cannot be opened.
    other_key = base64.b64encode(b"k" * 32).decode().rstrip("=")
    params, body = _encrypted(_event(PUBLISH_ID, 0), key=other_key)
    assert httpx.post(url, params=params, content=body).status_code in (400, 403)
    # Not an encrypted event at all.
    params, _ = _encrypted(_event(PUBLISH_ID, 0))
    assert httpx.post(url, params=params, content=b"<xml/>").status_code == 400
    assert safe_account.delivery(did).status == "sent"


def test_safe_mode_with_the_key_unset_refuses_events_and_never_logs_the_key(
    safe_account: Account, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    url = f"{safe_account.server.web_url}/wechat/events/east-oa"
    params, body = _encrypted(_event(PUBLISH_ID, 0))
    monkeypatch.setenv(AES_ENV, AES_KEY[:-1])  # one character short
    with caplog.at_level("WARNING"):
        assert httpx.post(url, params=params, content=body).status_code == 404
    assert AES_ENV in caplog.text and "EncodingAESKey" in caplog.text
    assert AES_KEY[:-1] not in caplog.text


def test_an_aes_key_without_a_token_is_a_clear_devices_yaml_error(tmp_path: Path) -> None:
    from content_queue.errors import RegistryError

    devices = tmp_path / "devices.yaml"
    devices.write_text(
        SMALL_DEVICES.replace(
            "    covers_townships: [east]\n",
            f"    covers_townships: [east]\n    event_aes_key_env: {AES_ENV}\n",
        ),
        encoding="utf-8",
    )
    with pytest.raises(RegistryError) as err:
        load_registry(devices)
    zh, en = err.value.render("zh"), err.value.render("en")
    assert "event_aes_key_env" in zh and "服务器配置里的令牌" in zh, zh
    assert "needs event_token_env" in en, en
