"""wechatpy's official-account client, pointed at a configured base URL, its access token
kept (sealed) in the shared database and refreshed at most once per call.

wechatpy 2.0.0a26 builds API URLs from ``API_BASE_URL`` but fetches the token from a
hard-coded ``https://api.weixin.qq.com/cgi-bin/token``, and on 40001 / 40014 / 42001 it
refetches and retries without a bound. This subclass fetches the token from the configured
base (under a lock, so several workers fetch it once), refuses any URL outside the base,
and retries a call once after a token error. The AppSecret and every token it sees are
scrubbed from this process's log records (``content_queue.redact``).
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import requests
from urllib3.exceptions import NewConnectionError
from wechatpy import WeChatClient
from wechatpy.exceptions import WeChatClientException
from wechatpy.session import SessionStorage

from channels._oa_state import kv_delete, kv_get, kv_lock, kv_set
from content_queue.errors import ConfigError
from content_queue.i18n import tr
from content_queue.redact import install, redact, remember_secret
from content_queue.store import Store

__all__ = [
    "TOKEN_ERRCODES",
    "KvSessionStorage",
    "OfficialAccountClient",
    "WeChatTransportError",
    "answer_of",
    "errcode_of",
    "maybe_sent",
    "redact",
]

T = TypeVar("T")

TOKEN_ERRCODES = frozenset({40001, 40014, 42001})
"""Token invalid (40001, 40014) or expired (42001): fetch a new one once and retry."""

_SEALED = "sealed:v1:"
"""Prefix of a session value sealed with the account's key (see :class:`KvSessionStorage`)."""


def _never_sent(exc: requests.RequestException) -> bool:
    """The connection was never made, so the request cannot have reached WeChat."""
    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError) and exc.args:
        reason = getattr(exc.args[0], "reason", None)
        return isinstance(reason, NewConnectionError)
    return False


class WeChatTransportError(Exception):
    """A network failure, described without the URL (its query carries the token)."""

    def __init__(self, exc: requests.RequestException) -> None:
        self.kind = type(exc).__name__
        self.maybe_sent = not _never_sent(exc)
        """A timeout or a broken connection: WeChat may have acted on the request."""
        super().__init__(f"{self.kind}: {redact(str(exc))}")


def errcode_of(exc: BaseException | None) -> int | None:
    """WeChat's errcode behind a failure (None for HTTP and network failures)."""
    if isinstance(exc, WeChatClientException) and exc.errcode is not None:
        return int(exc.errcode)
    return None


def maybe_sent(exc: BaseException | None) -> bool:
    """Could the failed request have reached WeChat (a timeout, a broken connection)?"""
    return isinstance(exc, WeChatTransportError) and exc.maybe_sent


def answer_of(exc: BaseException | None) -> dict[str, Any]:
    """The JSON WeChat answered with an error (45065 names the earlier send in it)."""
    response = getattr(exc, "response", None)
    try:
        body = response.json() if response is not None else {}
    except ValueError:
        body = {}
    return body if isinstance(body, dict) else {}


class KvSessionStorage(SessionStorage):  # type: ignore[misc]  # wechatpy is untyped
    """wechatpy session storage in the store's ``kv_entries`` table, shared by every worker.

    Values are sealed with AES-256-GCM under a key derived (HKDF-SHA256) from the account's
    AppSecret, the entry's name bound as associated data. A copy of the database (a backup,
    a file sent to support) then holds no access token anyone could post on the account
    with; every worker has the AppSecret, so they all share the token. A value that does
    not open (written under another AppSecret, or in plain text by an older version) reads
    as missing, so the token is fetched again and the entry rewritten.
    """

    def __init__(self, store: Store, *, app_id: str, secret: str, prefix: str = "wechat:") -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        self.store = store
        self.prefix = prefix
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"villagecast wechat session v1",
            info=app_id.encode("utf-8"),
        ).derive(secret.encode("utf-8"))
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return f"KvSessionStorage(prefix={self.prefix!r})"

    def _seal(self, name: str, value: Any) -> str:
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, json.dumps(value).encode("utf-8"), name.encode())
        return _SEALED + base64.urlsafe_b64encode(nonce + sealed).decode("ascii")

    def _open(self, name: str, raw: str) -> Any:
        from cryptography.exceptions import InvalidTag

        if not raw.startswith(_SEALED):
            return None
        try:
            blob = base64.urlsafe_b64decode(raw.removeprefix(_SEALED))
            plain = self._aead.decrypt(blob[:12], blob[12:], name.encode())
            return json.loads(plain)
        except (InvalidTag, ValueError):
            return None

    def _raw(self, key: str) -> tuple[str | None, Any]:
        name = self.prefix + key
        raw = kv_get(self.store, name)
        value = None if raw is None else self._open(name, raw)
        if isinstance(value, str) and key.endswith("access_token"):
            remember_secret(value, short_lived=True)  # another worker fetched it
        return raw, value

    def get(self, key: str, default: Any = None) -> Any:
        value = self._raw(key)[1]
        return default if value is None else value

    def set(self, key: str, value: Any, ttl: float | None = None) -> None:
        if value is None:
            return
        if isinstance(value, str) and key.endswith("access_token"):
            remember_secret(value, short_lived=True)
        name = self.prefix + key
        kv_set(self.store, name, self._seal(name, value), ttl=ttl)

    def delete(self, key: str) -> None:
        kv_delete(self.store, self.prefix + key)

    def delete_if(self, key: str, value: Any) -> bool:
        """Delete only if it still holds ``value`` (another worker may have refreshed it)."""
        raw, current = self._raw(key)
        if raw is None or (current is not None and current != value):
            return False
        # Compare-and-delete on the stored text: a refresh in between keeps its new token.
        return kv_delete(self.store, self.prefix + key, value=raw)


class OfficialAccountClient(WeChatClient):  # type: ignore[misc]  # wechatpy is untyped
    """One official account, every request to ``base_url``, the token in ``storage``."""

    def __init__(
        self,
        *,
        app_id: str,
        secret: str,
        base_url: str,
        storage: KvSessionStorage,
        timeout: float,
        http: requests.Session | None = None,
    ) -> None:
        install()  # scrub the secret and the tokens from every log record of this process
        remember_secret(secret)
        # auto_retry=False: wechatpy's own retry on a token error is unbounded; call() retries.
        super().__init__(app_id, secret, session=storage, timeout=timeout, auto_retry=False)
        self.API_BASE_URL = base_url.rstrip("/") + "/cgi-bin/"
        if http is not None:
            self._http = http
        self.storage = storage

    def __repr__(self) -> str:  # never the secret
        return f"OfficialAccountClient(app_id={self.appid!r}, base={self.API_BASE_URL!r})"

    # -- every request goes to the configured base -------------------------------------

    def _request(self, method: str, url_or_endpoint: str, **kwargs: Any) -> Any:
        base = kwargs.get("api_base_url", self.API_BASE_URL)
        url = url_or_endpoint if url_or_endpoint.startswith(("http://", "https://")) else ""
        if base != self.API_BASE_URL or (url and not url.startswith(self.API_BASE_URL)):
            raise ConfigError(
                tr(
                    "公众号接口请求的地址不在配置的 wechat_base_url（{base}）下，已拒绝",
                    "refused an official-account request outside wechat_base_url ({base})",
                    base=self.API_BASE_URL,
                )
            )
        try:
            return super()._request(method, url_or_endpoint, **kwargs)
        except requests.RequestException as exc:
            raise WeChatTransportError(exc) from None  # the cause's text holds the token

    # -- the token ---------------------------------------------------------------------

    def _token_fresh(self) -> bool:
        token = self.session.get(self.access_token_key)
        expires_at = self.session.get(self.access_token_expires_at_key)
        return bool(token) and expires_at is not None and expires_at - time.time() > 60

    def fetch_access_token(self) -> dict[str, Any]:
        """Fetch a token from the configured base, once for all workers."""
        what = tr("公众号 {a} 的令牌", "the token of account {a}", a=self.appid)
        wait = 2 * (self.timeout or 10) + 5
        with kv_lock(
            self.storage.store, f"wechat-token-lock:{self.appid}", ttl=wait, wait=wait, what=what
        ):
            if self._token_fresh():  # another worker fetched it while this one waited
                return {"access_token": self.session.get(self.access_token_key)}
            try:
                res = self._http.get(
                    self.API_BASE_URL + "token",
                    params={
                        "grant_type": "client_credential",
                        "appid": self.appid,
                        "secret": self.secret,
                    },
                    timeout=self.timeout,
                )
                res.raise_for_status()
            except requests.HTTPError as exc:
                raise WeChatClientException(
                    None, None, client=self, response=exc.response
                ) from None
            except requests.RequestException as exc:
                raise WeChatTransportError(exc) from None
            try:
                result = res.json()
            except ValueError:
                raise WeChatClientException(None, "not JSON", client=self, response=res) from None
            if not isinstance(result, dict):
                raise WeChatClientException(None, "not JSON", client=self, response=res)
            if result.get("errcode", 0) != 0:
                raise WeChatClientException(
                    int(result["errcode"]), result.get("errmsg", ""), client=self, response=res
                )
            expires_in = int(result.get("expires_in", 7200))
            self.session.set(self.access_token_key, result["access_token"], expires_in)
            self.session.set(
                self.access_token_expires_at_key, int(time.time()) + expires_in, expires_in
            )
            return {"expires_in": expires_in}

    def call(self, fn: Callable[[], T]) -> T:
        """Run one API call; on a token error drop that token, fetch a new one, retry once."""
        token = self.access_token
        try:
            return fn()
        except WeChatClientException as exc:
            if exc.errcode not in TOKEN_ERRCODES:
                raise
        # Only the token that failed is dropped: another worker may have refreshed it already.
        self.storage.delete_if(self.access_token_key, token)
        self.access_token  # noqa: B018 - fetches (or picks up) a fresh token
        return fn()
