"""Events WeChat pushes to an official account's server URL (服务器配置): a free publish's
result (``PUBLISHJOBFINISH``) settles its delivery at once, without waiting for the poller.

The account's server configuration names a URL (served at ``/wechat/events/<endpoint id>``
by the dashboard and the public feed listener) and a token, held in the environment
variable that devices.yaml names (``event_token_env``). WeChat signs every request:
``signature`` = SHA-1 of the token, ``timestamp`` and ``nonce`` sorted and joined. A GET with
``echostr`` verifies the URL (answered with ``echostr``); a POST carries one event as XML.
A request whose signature does not match, or whose timestamp is more than
:data:`MAX_SKEW` seconds away, is refused.

Message encryption (消息加解密方式): plaintext (明文模式) by default. An account whose
devices.yaml entry also names ``event_aes_key_env`` (the EncodingAESKey, 43 characters)
runs in safe mode (安全模式, or 兼容模式): every event must then come encrypted
(``encrypt_type=aes``), its ``msg_signature`` (SHA-1 of the token, timestamp, nonce and the
ciphertext, sorted) is checked, and the body is opened with wechatpy's ``WeChatCrypto``
(AES-256-CBC, the key's first 16 bytes as IV, the account's AppID checked inside). A
plaintext event to such an account is refused: safe mode is chosen so that nobody on the
path can read or forge the events.

The poller (:func:`channels.wechat_official_account.poll_official_account_publishes`) stays:
an event lost on the way (the server was down, WeChat gave up after its retries) is still
followed up. Settling is a compare-and-set on a ``sent`` delivery, so an event and a poll
that both arrive settle it once. Other events are acknowledged and ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any

from lxml import etree

from channels._oa_state import sent_deliveries, settle
from channels.wechat_official_account import KIND, publish_check
from content_queue.registry import OfficialAccountEndpoint
from content_queue.store import Store

__all__ = [
    "MAX_BODY",
    "MAX_SKEW",
    "EventResult",
    "EventSignatureError",
    "aes_key_ok",
    "handle_event",
    "open_encrypted",
    "signature_ok",
]

MAX_SKEW = 300
"""Seconds a signed request's timestamp may be off: an old request replayed is refused."""
MAX_BODY = 64 * 1024
"""A publish event is a few hundred bytes."""


def signature_ok(
    token: str, *, signature: str, timestamp: str, nonce: str, now: float | None = None
) -> bool:
    """WeChat's request signature, and a timestamp close to ours."""
    try:
        sent = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - sent) > MAX_SKEW:
        return False
    joined = "".join(sorted([token, timestamp, nonce])).encode()
    expected = hashlib.sha1(joined).hexdigest()  # noqa: S324 - WeChat's protocol is SHA-1
    return hmac.compare_digest(expected, signature.lower())


class EventSignatureError(Exception):
    """An encrypted event that is not from WeChat for this account (its ``msg_signature``
    or the AppID sealed inside does not match)."""


def aes_key_ok(key: str) -> bool:
    """An EncodingAESKey as WeChat issues it: 43 characters of base64 for 32 bytes."""
    if len(key) != 43:
        return False
    try:
        return len(base64.b64decode(key + "=", validate=True)) == 32
    except (binascii.Error, ValueError):
        return False


def open_encrypted(
    body: bytes,
    *,
    token: str,
    aes_key: str,
    app_id: str,
    msg_signature: str,
    timestamp: str,
    nonce: str,
) -> bytes:
    """The plaintext event inside a safe-mode request (its ``signature`` and timestamp
    already checked). EventSignatureError when it is not this account's; ValueError when
    it is not an encrypted event."""
    from wechatpy.crypto import WeChatCrypto
    from wechatpy.exceptions import InvalidAppIdException, InvalidSignatureException

    encrypt = _text(_parse(body), "Encrypt")
    if not encrypt:
        raise ValueError("not an encrypted event")
    joined = "".join(sorted([token, timestamp, nonce, encrypt])).encode()
    expected = hashlib.sha1(joined).hexdigest()  # noqa: S324 - WeChat's protocol is SHA-1
    if not hmac.compare_digest(expected, msg_signature.lower()):
        raise EventSignatureError("msg_signature")
    crypto = WeChatCrypto(token, aes_key, app_id)
    try:
        # A dict, so wechatpy does not parse the XML again (ours is the hardened parser).
        plain = crypto.decrypt_message({"Encrypt": encrypt}, expected, timestamp, nonce)
    except (InvalidSignatureException, InvalidAppIdException) as exc:
        raise EventSignatureError(type(exc).__name__) from exc
    except Exception as exc:  # bad base64, padding or length: not something WeChat sealed
        raise ValueError("the encrypted event cannot be opened") from exc
    return plain.encode("utf-8") if isinstance(plain, str) else bytes(plain)


@dataclass(frozen=True)
class EventResult:
    event: str
    publish_id: str | None = None
    delivery_id: int | None = None
    status: str | None = None
    """The delivery's new status, when this event settled it."""


def _parse(body: bytes) -> Any:
    if len(body) > MAX_BODY:
        raise ValueError("not an event")
    # As content_queue/cap.py: no entities resolved, no DTD, no network.
    parser = etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False
    )
    try:
        return etree.fromstring(body, parser)
    except etree.XMLSyntaxError as exc:
        raise ValueError("not an event") from exc


def _text(node: Any, path: str) -> str:
    found = node.find(path) if node is not None else None
    return (found.text or "").strip() if found is not None else ""


def handle_event(body: bytes, *, store: Store, endpoint: OfficialAccountEndpoint) -> EventResult:
    """Act on one event for ``endpoint`` (its signature already checked); ValueError when the
    body is not an event."""
    root = _parse(body)
    event = _text(root, "Event")
    if _text(root, "MsgType") != "event" or event.upper() != "PUBLISHJOBFINISH":
        return EventResult(event or _text(root, "MsgType"))
    info = root.find("PublishEventInfo")
    publish_id = _text(info, "publish_id")
    try:
        status = int(_text(info, "publish_status"))
    except ValueError as exc:
        raise ValueError("no publish_status") from exc
    answer: dict[str, Any] = {
        "publish_status": status,
        "article_id": _text(info, "article_id") or None,
        "article_detail": {
            "item": [
                {"article_url": _text(item, "article_url")}
                for item in (info.findall("article_detail/item") if info is not None else [])
            ]
        },
    }
    fail_idx = [
        int(n.text)
        for n in (info.findall("fail_idx") if info is not None else [])
        if n.text and n.text.strip().isdigit()
    ]
    if fail_idx:
        answer["fail_idx"] = fail_idx
    for d in sent_deliveries(store, KIND):
        ref = str((d.details or {}).get("publish_id") or d.external_ref or "")
        if d.endpoint_id != endpoint.id or ref != publish_id:
            continue
        check = publish_check(answer, endpoint_id=endpoint.id)
        if check.status == "sent":  # still publishing: the poller keeps asking
            return EventResult(event, publish_id, d.id)
        done = settle(
            store,
            d.id,
            status=check.status,
            details={**check.details, "confirmed_by": "event"},
            text=check.text,
            code=check.code,
        )
        return EventResult(event, publish_id, d.id, check.status if done else None)
    return EventResult(event, publish_id)
