"""A local stand-in for the WeChat official-account API (api.weixin.qq.com/cgi-bin), for tests
and the demo.

A real HTTP server on a free loopback port implementing what villagecast calls, as the
official documentation describes it (errors are HTTP 200 with ``{"errcode", "errmsg"}``):

``GET  /cgi-bin/token``                   grant_type=client_credential, appid, secret
``POST /cgi-bin/material/add_material``   ?type=image|thumb|voice|video, multipart ``media``
``POST /cgi-bin/media/upload``            ?type=..., multipart ``media`` (temporary, 3 days)
``POST /cgi-bin/draft/add``               {"articles": [1..8 articles]}
``POST /cgi-bin/draft/delete``            {"media_id"}
``POST /cgi-bin/freepublish/submit``      {"media_id"} -> publish_id
``POST /cgi-bin/freepublish/get``         {"publish_id"} -> publish_status 0..6
``POST /cgi-bin/freepublish/delete``      {"article_id", "index"}
``POST /cgi-bin/message/mass/sendall``    {"filter", "mpnews", "msgtype", "clientmsgid"}
``POST /cgi-bin/message/mass/get``        {"msg_id"} -> msg_status
``POST /cgi-bin/message/mass/delete``     {"msg_id", "article_idx"}

It validates what it receives: the account's appid and secret; the access token (unknown
40001, expired 42001, missing 41001); JSON and required fields (47001); article sizes
(title 64 characters 45003, author 16 45110, digest 128 45004, content under 20,000
characters and 1 MB 45002, 1 to 8 articles); the permanent material a draft's
``thumb_media_id`` names and the draft a publish or mass send names (40007); image type
and size (JPEG/PNG/GIF/BMP, 10 MB: 40113 / 40009); clientmsgid length (45067) and
duplicates (45065, with the earlier msg_id); the mass-send quota (45028: subscription one
a day; service four a month per tag, counting sends to all; stricter than WeChat, which
accepts the send and skips the followers over quota).

Scripting: :meth:`WeChatMpStandin.fail` queues errors (an errcode, an HTTP status, a delay,
before or after the request took effect) for the next requests to a path;
:attr:`publish_script` is the publish_status sequence each new publication reports;
:meth:`revoke_tokens` / :meth:`expire_tokens` invalidate the tokens handed out. Every request
is recorded (:attr:`requests`) so tests count side effects.

Access tokens look like ``STANDIN-TOKEN-...`` (:data:`TOKEN_PREFIX`), so a test can search
logs, errors and database dumps for any token the stand-in ever handed out.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

__all__ = ["TOKEN_PREFIX", "Injected", "Recorded", "WeChatMpStandin"]

TOKEN_PREFIX = "STANDIN-TOKEN-"  # noqa: S105 - a marker, not a secret
"""Every access token the stand-in hands out starts with this."""

_CN = ZoneInfo("Asia/Shanghai")
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


@dataclass(frozen=True)
class Recorded:
    """One request as the stand-in saw it (the secret and the token are kept: tests only)."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    """The JSON body, or for uploads ``{"filename", "size", "content_type"}``."""
    errcode: int | None
    """What the stand-in answered (None for an HTTP error or a dropped answer)."""
    at: float


@dataclass
class Injected:
    errcode: int | None = None
    http_status: int = 200
    delay: float = 0.0
    after: bool = False
    """Take the request's effect first, then answer with the error/delay (outcome unknown)."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failing(self) -> bool:
        """An error to answer with (else only a delay)."""
        return self.errcode is not None or self.http_status != 200


@dataclass
class _Publication:
    publish_id: str
    media_id: str
    script: list[int]
    polls: int = 0
    article_id: str | None = None
    deleted: bool = False


@dataclass
class _Mass:
    msg_id: int
    media_id: str
    tag_id: int | None
    clientmsgid: str | None
    articles: int
    at: datetime
    status: str = "SEND_SUCCESS"
    deleted_idx: list[int] = field(default_factory=list)


class WeChatMpStandin:
    """The official-account API for one or more accounts ({appid: secret})."""

    def __init__(
        self,
        accounts: dict[str, str],
        *,
        account_types: dict[str, str] | None = None,
        token_ttl: int = 7200,
    ) -> None:
        self.accounts = dict(accounts)
        self.account_types = dict(account_types or {})
        self.token_ttl = token_ttl
        self.publish_script: list[int] = [1, 0]
        """publish_status reported by successive freepublish/get calls (the last repeats)."""
        self.mass_status = "SEND_SUCCESS"
        self.ip_whitelist: list[str] | None = None
        self.clock: Callable[[], datetime] = lambda: datetime.now(UTC)
        """The stand-in's idea of now, for the mass-send quota (tests move it forward)."""
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}
        self._injected: dict[str, deque[Injected]] = {}
        self._ids = itertools.count(1000)
        self.materials: dict[str, dict[str, Any]] = {}
        self.drafts: dict[str, dict[str, Any]] = {}
        self.publications: dict[str, _Publication] = {}
        self.articles: dict[str, _Publication] = {}
        self.mass: dict[int, _Mass] = {}
        self._clientmsgids: dict[tuple[str, str], int] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The base URL to give wechatpy (``VILLAGECAST_WECHAT_BASE_URL``)."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    base_url = url

    def start(self) -> WeChatMpStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WeChatMpStandin:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- scripting -----------------------------------------------------------------------

    def fail(
        self,
        path: str,
        errcode: int | None = None,
        *,
        times: int = 1,
        http_status: int = 200,
        delay: float = 0.0,
        after: bool = False,
        **extra: Any,
    ) -> None:
        """The next ``times`` requests to ``path`` (e.g. ``"draft/add"``) fail like this."""
        with self.lock:
            queue = self._injected.setdefault(path.strip("/"), deque())
            for _ in range(times):
                queue.append(Injected(errcode, http_status, delay, after, dict(extra)))

    def revoke_tokens(self) -> None:
        """Every token handed out becomes invalid (40001), as after a fetch elsewhere."""
        with self.lock:
            self._tokens.clear()

    def expire_tokens(self) -> None:
        """Every token handed out expires (42001)."""
        with self.lock:
            self._tokens = {t: (a, 0.0) for t, (a, _) in self._tokens.items()}

    def calls(self, path: str) -> list[Recorded]:
        """Recorded requests to ``path`` (e.g. ``"token"``, ``"freepublish/submit"``)."""
        want = "/cgi-bin/" + path.strip("/")
        with self.lock:
            return [r for r in self.requests if r.path == want]

    def count(self, path: str, *, ok: bool = False) -> int:
        return sum(1 for r in self.calls(path) if not ok or r.errcode == 0)

    # -- the protocol --------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                standin._serve(self, "GET")

            def do_POST(self) -> None:
                standin._serve(self, "POST")

        return Handler

    def _serve(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        route = parts.path.removeprefix("/cgi-bin/")
        with self.lock:
            queue = self._injected.get(route)
            injected = queue.popleft() if queue else None
        body: Any = raw
        if injected is not None and not injected.after:
            if injected.delay:
                time.sleep(injected.delay)
            if injected.failing:
                self._record(method, parts.path, query, raw, h, injected.errcode)
                return self._answer_injected(h, injected)
            injected = None  # only slow: carry on
        try:
            body, answer = self._dispatch(method, route, query, raw, h)
        except _Err as err:
            answer = {"errcode": err.code, "errmsg": err.msg, **err.extra}
        except Exception as exc:  # a stand-in bug: answer 500 and keep it visible
            self._record(method, parts.path, query, raw, h, None)
            return self._send(h, 500, {"error": repr(exc)})
        errcode = int(answer.get("errcode", 0))
        if injected is not None:  # after: the effect happened, then the answer is slow or wrong
            # Recorded at once (errcode None: the client never saw the real answer).
            self._record(method, parts.path, query, body, h, injected.errcode)
            if injected.delay:
                time.sleep(injected.delay)
            if injected.failing:
                return self._answer_injected(h, injected)
            return self._send(h, 200, answer)
        self._record(method, parts.path, query, body, h, errcode)
        self._send(h, 200, answer)

    def _record(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: Any,
        h: BaseHTTPRequestHandler,
        errcode: int | None,
    ) -> None:
        if isinstance(body, bytes):
            try:
                body = json.loads(body) if body else None
            except ValueError:
                body = {"raw_size": len(body)}
        with self.lock:
            self.requests.append(Recorded(method, path, query, body, errcode, time.time()))

    def _answer_injected(self, h: BaseHTTPRequestHandler, injected: Injected) -> None:
        if injected.http_status != 200:
            return self._send(h, injected.http_status, {"error": "injected"})
        code = injected.errcode if injected.errcode is not None else 0
        self._send(h, 200, {"errcode": code, "errmsg": f"injected {code}", **injected.extra})

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json; encoding=utf-8")
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def _dispatch(
        self,
        method: str,
        route: str,
        query: dict[str, str],
        raw: bytes,
        h: BaseHTTPRequestHandler,
    ) -> tuple[Any, dict[str, Any]]:
        if route == "token":
            return None, self._token(query, h)
        appid = self._check_token(query)
        if route in ("material/add_material", "media/upload"):
            upload = self._upload(raw, h)
            return upload, self._material(appid, route, query, upload)
        if method != "POST":
            raise _Err(43002, "require POST method")
        try:
            data = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, ValueError):
            raise _Err(47001, "data format error") from None
        if not isinstance(data, dict):
            raise _Err(44002, "empty post data")
        handler = {
            "draft/add": self._draft_add,
            "draft/delete": self._draft_delete,
            "freepublish/submit": self._submit,
            "freepublish/get": self._publish_get,
            "freepublish/delete": self._publish_delete,
            "message/mass/sendall": self._sendall,
            "message/mass/get": self._mass_get,
            "message/mass/delete": self._mass_delete,
        }.get(route)
        if handler is None:
            raise _Err(48001, f"api unauthorized (the stand-in has no {route})")
        with self.lock:
            return data, handler(appid, data)

    # -- token -------------------------------------------------------------------------

    def _token(self, query: dict[str, str], h: BaseHTTPRequestHandler) -> dict[str, Any]:
        if query.get("grant_type") != "client_credential":
            raise _Err(40002, "invalid grant_type")
        appid, secret = query.get("appid", ""), query.get("secret", "")
        if appid not in self.accounts:
            raise _Err(40013, "invalid appid")
        if secret != self.accounts[appid]:
            raise _Err(40125, "invalid appsecret")
        if self.ip_whitelist is not None and h.client_address[0] not in self.ip_whitelist:
            raise _Err(40164, f"invalid ip {h.client_address[0]}, not in whitelist")
        # Real tokens are long random strings; the prefix lets tests find any that leaked.
        token = f"{TOKEN_PREFIX}{next(self._ids)}-{secrets.token_urlsafe(24)}"
        with self.lock:
            self._tokens[token] = (appid, time.monotonic() + self.token_ttl)
        return {"access_token": token, "expires_in": self.token_ttl}

    def _check_token(self, query: dict[str, str]) -> str:
        token = query.get("access_token")
        if not token:
            raise _Err(41001, "access_token missing")
        with self.lock:
            found = self._tokens.get(token)
        if found is None:
            raise _Err(40001, "invalid credential, access_token is invalid or not latest")
        appid, expires = found
        if expires <= time.monotonic():
            raise _Err(42001, "access_token expired")
        return appid

    # -- uploads -------------------------------------------------------------------------

    @staticmethod
    def _upload(raw: bytes, h: BaseHTTPRequestHandler) -> dict[str, Any]:
        ctype = h.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/form-data"):
            raise _Err(41005, "media data missing")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw
        )
        for part in message.iter_parts():
            disposition = part.get("Content-Disposition", "")
            if 'name="media"' in disposition:
                data = part.get_payload(decode=True) or b""
                return {
                    "filename": part.get_filename(),
                    "size": len(data),
                    "content_type": part.get_content_type(),
                    "data": data,
                }
        raise _Err(41005, "media data missing")

    def _material(
        self, appid: str, route: str, query: dict[str, str], upload: dict[str, Any]
    ) -> dict[str, Any]:
        kind = query.get("type")
        if kind not in ("image", "thumb", "voice", "video"):
            raise _Err(40004, "invalid media type")
        data: bytes = upload.pop("data")
        if kind in ("image", "thumb"):
            if not data.startswith(_IMAGE_MAGIC):
                raise _Err(40113, "unsupported file type")
            limit = 10 * 1024 * 1024 if kind == "image" else 64 * 1024
            if len(data) > limit:
                raise _Err(40009, "invalid image size")
        media_id = f"MEDIA-{next(self._ids)}"
        with self.lock:
            self.materials[media_id] = {
                "appid": appid,
                "type": kind,
                "size": len(data),
                "data": data,
                "permanent": route.startswith("material/"),
            }
        answer: dict[str, Any] = {"media_id": media_id}
        if route.startswith("material/") and kind == "image":
            answer["url"] = f"{self.url}/mmbiz/{media_id}.jpg"
        if route == "media/upload":
            answer |= {"type": kind, "created_at": int(time.time())}
        return answer

    # -- drafts and free publish ------------------------------------------------------------

    def _draft_add(self, appid: str, data: dict[str, Any]) -> dict[str, Any]:
        articles = data.get("articles")
        if not isinstance(articles, list) or not 1 <= len(articles) <= 8:
            raise _Err(47001, "data format error: articles must hold 1 to 8 articles")
        for a in articles:
            if not isinstance(a, dict):
                raise _Err(47001, "data format error")
            for name in ("title", "content", "thumb_media_id"):
                if not a.get(name):
                    raise _Err(47001, f"data format error: {name} missing")
            if len(a["title"]) > 64:
                raise _Err(45003, "title size out of limit")
            if len(a.get("author") or "") > 16:
                raise _Err(45110, "author size out of limit")
            if len(a.get("digest") or "") > 128:
                raise _Err(45004, "description size out of limit")
            content = a["content"]
            if len(content) >= 20000 or len(content.encode("utf-8")) >= 1024 * 1024:
                raise _Err(45002, "content size out of limit")
            material = self.materials.get(a["thumb_media_id"])
            if material is None or material["appid"] != appid or not material["permanent"]:
                raise _Err(40007, "invalid media_id")
        media_id = f"DRAFT-{next(self._ids)}"
        self.drafts[media_id] = {"appid": appid, "articles": articles}
        return {"media_id": media_id}

    def _draft(self, appid: str, data: dict[str, Any]) -> dict[str, Any]:
        draft = self.drafts.get(str(data.get("media_id")))
        if draft is None or draft["appid"] != appid:
            raise _Err(40007, "invalid media_id")
        return draft

    def _draft_delete(self, appid: str, data: dict[str, Any]) -> dict[str, Any]:
        self._draft(appid, data)
        del self.drafts[str(data["media_id"])]
        return {"errcode": 0, "errmsg": "ok"}

    def _submit(self, appid: str, data: dict[str, Any]) -> dict[str, Any]:
        self._draft(appid, data)
        publish_id = str(next(self._ids))
        self.publications[publish_id] = _Publication(
            publish_id, str(data["media_id"]), list(self.publish_script)
        )
        return {"errcode": 0, "errmsg": "ok", "publish_id": publish_id}

    def _publish_get(self, appid: str, data: dict[str, Any]) -> dict[str, Any]:
        pub = self.publications.get(str(data.get("publish_id")))
        if pub is None:
            raise _Err(40007, "invalid publish_id")  # 40007-like: not found
        status = pub.script[min(pub.polls, len(pub.script) - 1)]
        pub.polls += 1
        if pub.deleted:
            status = 5
        answer: dict[str, Any] = {"publish_id": pub.publish_id, "publish_status": status}
        if status == 0:
            if pub.article_id is None:
                pub.article_id = f"ARTICLE-{next(self._ids)}"
                self.articles[pub.article_id] = pub
            answer["article_id"] = pub.article_id
            answer["article_detail"] = {
                "count": 1,
                "item": [{"idx": 1, "article_url": f"{self.url}/s/{pub.article_id}"}],
            }
        if status in (2, 4):
            answer["fail_idx"] = [1]
        return answer

    def _publish_delete(self, appid: str, data: dict[str, Any]) -> dict[str, Any]:
        pub = self.articles.get(str(data.get("article_id")))
        if pub is None or pub.deleted:
            raise _Err(53600, "Article ID 无效")
        pub.deleted = True
        return {"errcode": 0, "errmsg": "ok"}

    # -- mass send ------------------------------------------------------------------------

    def _sendall(self, appid: str, data: dict[str, Any]) -> dict[str, Any]:
        flt = data.get("filter")
        if not isinstance(flt, dict) or data.get("msgtype") != "mpnews":
            raise _Err(47001, "data format error")
        to_all = bool(flt.get("is_to_all"))
        tag = flt.get("tag_id")
        if not to_all and not isinstance(tag, int):
            raise _Err(40050, "invalid tag id")
        msgid = data.get("clientmsgid")
        if msgid is not None and len(str(msgid).encode()) > 64:
            raise _Err(45067, "clientmsgid size out of limit")
        if msgid is not None and (appid, str(msgid)) in self._clientmsgids:
            earlier = self._clientmsgids[(appid, str(msgid))]
            raise _Err(45065, "clientmsgid exist", msg_id=earlier)
        media_id = str((data.get("mpnews") or {}).get("media_id"))
        draft = self._draft(appid, {"media_id": media_id})
        now = self.clock()
        if self._over_quota(appid, None if to_all else tag, now):
            raise _Err(45028, "has no masssend quota")
        msg_id = next(self._ids) * 1000 + 7
        self.mass[msg_id] = _Mass(
            msg_id,
            media_id,
            None if to_all else tag,
            msgid,
            len(draft["articles"]),
            now,
            self.mass_status,
        )
        if msgid is not None:
            self._clientmsgids[(appid, str(msgid))] = msg_id
        return {
            "errcode": 0,
            "errmsg": "send job submission success",
            "msg_id": msg_id,
            "msg_data_id": msg_id + 1,
        }

    def _over_quota(self, appid: str, tag: int | None, now: datetime) -> bool:
        local = now.astimezone(_CN)
        if self.account_types.get(appid, "subscription") == "subscription":
            today = [m for m in self.mass.values() if m.at.astimezone(_CN).date() == local.date()]
            return len(today) >= 1
        month = [
            m
            for m in self.mass.values()
            if (m.at.astimezone(_CN).year, m.at.astimezone(_CN).month) == (local.year, local.month)
        ]
        if tag is None:
            per_tag: dict[int | None, int] = {}
            for m in month:
                per_tag[m.tag_id] = per_tag.get(m.tag_id, 0) + 1
            to_all = per_tag.pop(None, 0)
            return to_all + max(per_tag.values(), default=0) >= 4
        return sum(1 for m in month if m.tag_id in (None, tag)) >= 4

    def _mass_get(self, appid: str, data: dict[str, Any]) -> dict[str, Any]:
        mass = self.mass.get(int(data.get("msg_id") or 0))
        if mass is None:
            raise _Err(40007, "invalid msg_id")
        return {"msg_id": mass.msg_id, "msg_status": mass.status}

    def _mass_delete(self, appid: str, data: dict[str, Any]) -> dict[str, Any]:
        mass = self.mass.get(int(data.get("msg_id") or 0))
        if mass is None:
            raise _Err(40007, "invalid msg_id")
        idx = int(data.get("article_idx") or 0)
        if idx < 0 or idx > mass.articles:
            raise _Err(47001, "invalid article_idx")
        mass.deleted_idx.append(idx)
        if idx == 0:
            mass.status = "DELETE"
        return {"errcode": 0, "errmsg": "ok"}


class _Err(Exception):
    def __init__(self, code: int, msg: str, **extra: Any) -> None:
        self.code, self.msg, self.extra = code, msg, extra
        super().__init__(f"{code} {msg}")
