"""The feed server: the cable-TV platform pulls each village's feed here (stdlib HTTP only).

The answers are built by plain functions (:func:`public_reply`) that the dashboard's web
app serves too, so ``villagecast serve`` and ``up`` answer these paths the same way.

``GET /feeds/<village>.atom|.rss|.json`` serves the file the TV feed channel wrote, with
ETag and Last-Modified; a 200 or 304 answer to a GET is recorded as a fetch, which turns
the deliveries that were already in that file from 'sent' into 'delivered'.
``GET /healthz`` answers ``ok``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast
from urllib.parse import unquote, urlsplit

from channels.tv_feed import (
    FEED_FORMATS,
    MEDIA_TYPES,
    feed_endpoint,
    feed_file,
    render_feed,
    render_item_page,
)
from content_queue.errors import NotFoundError
from content_queue.registry import ID_PATTERN, Registry
from content_queue.settings import Settings
from content_queue.store import Store, utcnow

__all__ = [
    "FeedServer",
    "Reply",
    "audio_reply",
    "feed_reply",
    "is_public_path",
    "item_page_reply",
    "make_server",
    "not_found",
    "public_reply",
    "serve_in_thread",
]

log = logging.getLogger(__name__)

# The registry's Ident pattern: a village id never contains '/' or starts with '.'.
_VILLAGE_ID = ID_PATTERN
_ITEM_PAGE = re.compile(r"/feeds/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/([1-9][0-9]{0,17})\.html")
_CLIP_NAME = re.compile(r"([0-9a-f]{64})\.(mp3|amr)")
_AUDIO_TYPES = {"mp3": "audio/mpeg", "amr": "audio/amr"}
_NOT_FOUND = (
    "未找到（订阅源地址：/feeds/<村id>.atom、.rss 或 .json）\n"
    "not found (feeds are at /feeds/<village>.atom, .rss or .json)\n"
)
_UNAVAILABLE = "订阅源暂时不可用\nfeeds are unavailable for now\n"

RegistryLoader = Callable[[], Registry]


class FeedServer(ThreadingHTTPServer):
    """A threading HTTP server that knows the settings, the store and the registry."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        settings: Settings,
        store: Store,
        registry_loader: RegistryLoader,
    ) -> None:
        self.settings = settings
        self.store = store
        self.registry_loader = registry_loader
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _FeedHandler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr; keep it in the log instead.
        log.exception("feed request from %s failed", client_address)


class _FeedHandler(BaseHTTPRequestHandler):
    server_version = "villagecast-feeds"
    protocol_version = "HTTP/1.1"

    @property
    def _srv(self) -> FeedServer:
        return cast(FeedServer, self.server)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _serve(self, *, head: bool) -> None:
        srv = self._srv
        reply = public_reply(
            urlsplit(self.path).path,
            {k.lower(): v for k, v in self.headers.items()},
            settings=srv.settings,
            store=srv.store,
            registry_loader=srv.registry_loader,
            head=head,
        )
        if reply is None:
            reply = not_found()
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head and reply.body:
            self.wfile.write(reply.body)
        if reply.after is not None:
            reply.after()


@dataclass
class Reply:
    """An answer to a public request, independent of the HTTP server that sends it (the
    stdlib feed server here, the dashboard's ASGI app in ``villagecast serve``/``up``)."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    after: Callable[[], None] | None = None
    """Run once the answer has been sent (recording a feed fetch)."""


def text_reply(status: int, text: str) -> Reply:
    body = text.encode("utf-8")
    return Reply(
        status,
        {
            "Content-Type": "text/plain; charset=utf-8",
            "Content-Length": str(len(body)),
            "Cache-Control": "no-store",
        },
        body,
    )


def not_found() -> Reply:
    return text_reply(404, _NOT_FOUND)


def is_public_path(path: str) -> bool:
    """Paths anyone may fetch without signing in: feeds, clips, the health check, and the
    official accounts' event URL (signed by WeChat: dashboard/wechat_events.py)."""
    return path == "/healthz" or path.startswith(("/feeds/", "/audio/", "/wechat/events/"))


def public_reply(
    path: str,
    headers: Mapping[str, str],
    *,
    settings: Settings,
    store: Store,
    registry_loader: RegistryLoader,
    head: bool,
) -> Reply | None:
    """The answer to a public path, or None when ``path`` is not a public one.

    ``headers`` are the request's headers with lower-case names.
    """
    if path == "/healthz":
        return text_reply(200, "ok\n")
    if path.startswith("/audio/"):
        return audio_reply(path.removeprefix("/audio/"), headers, settings=settings)
    item = _ITEM_PAGE.fullmatch(unquote(path))
    if item is not None:
        return item_page_reply(
            item.group(1),
            int(item.group(2)),
            store=store,
            registry_loader=registry_loader,
        )
    if path.startswith("/feeds/"):
        return feed_reply(
            unquote(path.removeprefix("/feeds/")),
            headers,
            settings=settings,
            store=store,
            registry_loader=registry_loader,
            head=head,
        )
    return None


def item_page_reply(
    village_id: str, notice_id: int, *, store: Store, registry_loader: RegistryLoader
) -> Reply:
    """A notice's page (the poster's QR code opens it), only while it is in the village's
    feed (published there, not expired): a scheduled notice never shows early, whatever
    id is guessed."""
    try:
        registry = registry_loader()
        endpoint = feed_endpoint(registry, village_id)
        notice = store.notice(notice_id)
        shown = any(
            d.endpoint_id == endpoint.id and d.action == "publish" and d.sent_at is not None
            for d in store.deliveries(notice_id)
        )
    except NotFoundError:
        return not_found()
    except Exception:
        log.exception("cannot serve the page of notice %s", notice_id)
        return text_reply(503, _UNAVAILABLE)
    if not shown or notice.expired(utcnow()):
        return not_found()
    body = render_item_page(notice, village_name=registry.village_name(village_id))
    return Reply(
        200,
        {
            "Content-Type": "text/html; charset=utf-8",
            "Content-Length": str(len(body)),
            "Cache-Control": "no-cache",
        },
        body,
    )


def feed_reply(
    name: str,
    headers: Mapping[str, str],
    *,
    settings: Settings,
    store: Store,
    registry_loader: RegistryLoader,
    head: bool,
) -> Reply:
    """``<village>.atom|rss|json``: the feed file with validators; a GET that got it (200
    or 304) is recorded as a fetch once sent, confirming what the feed held."""
    village_id, dot, fmt = name.rpartition(".")
    if not (dot and fmt in FEED_FORMATS and _VILLAGE_ID.fullmatch(village_id)):
        return not_found()
    try:
        registry = registry_loader()
        endpoint = feed_endpoint(registry, village_id)
    except NotFoundError:
        return not_found()
    except Exception:  # devices.yaml broken mid-edit: the platform should come back later
        log.exception("cannot load the registry for a feed request")
        return text_reply(503, _UNAVAILABLE)
    # Taken before the file is read: only deliveries marked sent by then are surely in it.
    started = utcnow()
    mtime: float | None = None
    try:
        with feed_file(settings, endpoint.id, fmt).open("rb") as fh:
            mtime = os.fstat(fh.fileno()).st_mtime
            data = fh.read()
    except FileNotFoundError:
        # Nothing published yet: an empty feed, so the platform can subscribe already.
        data = render_feed(
            [],
            endpoint_id=endpoint.id,
            village_id=village_id,
            village_name=registry.village_name(village_id),
            fmt=fmt,
            base_url=settings.resolved_feed_base_url,
            now=started,
        )
    out = {"Content-Type": MEDIA_TYPES[fmt], "Cache-Control": "no-cache"}
    if mtime is not None:
        out["ETag"] = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        out["Last-Modified"] = formatdate(mtime, usegmt=True)
    status = 304 if mtime is not None and _not_modified(headers, out["ETag"], mtime) else 200
    if status == 200:
        out["Content-Length"] = str(len(data))
    reply = Reply(status, out, data if status == 200 else b"")
    if head or mtime is None:
        return reply  # a HEAD or an empty feed showed the platform no notice

    def record() -> None:
        try:
            confirmed = store.record_feed_fetch(
                endpoint.id, feed_format=fmt, client=headers.get("user-agent", ""), now=started
            )
        except Exception:  # served anyway; the next fetch confirms
            log.exception("cannot record the fetch of %s.%s", endpoint.id, fmt)
            return
        log.info("%s.%s fetched (%s): %d confirmed", endpoint.id, fmt, status, confirmed)

    reply.after = record
    return reply


def audio_reply(name: str, headers: Mapping[str, str], *, settings: Settings) -> Reply:
    """Synthesized clips, public, named by the SHA-256 of their content (immutable)."""
    m = _CLIP_NAME.fullmatch(name)
    if m is None:
        return not_found()
    try:
        data = (settings.home / "audio" / name).read_bytes()
    except OSError:
        return not_found()
    etag = f'"{m.group(1)}"'
    if headers.get("if-none-match") == etag:
        return Reply(304, {"ETag": etag})
    return Reply(
        200,
        {
            "Content-Type": _AUDIO_TYPES[m.group(2)],
            "Content-Length": str(len(data)),
            "ETag": etag,
            "Cache-Control": "public, max-age=31536000, immutable",
        },
        data,
    )


def _not_modified(headers: Mapping[str, str], etag: str, mtime: float) -> bool:
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return "*" in tags or etag in tags
    if_modified_since = headers.get("if-modified-since")
    if if_modified_since:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        return int(mtime) <= since.timestamp()
    return False


def make_server(
    settings: Settings, store: Store, registry_loader: RegistryLoader
) -> ThreadingHTTPServer:
    """A feed server bound to ``settings.feed_host``/``feed_port`` (port 0 picks a free one)."""
    settings.feeds_dir.mkdir(parents=True, exist_ok=True)
    return FeedServer(
        (settings.feed_host, settings.feed_port),
        settings=settings,
        store=store,
        registry_loader=registry_loader,
    )


def serve_in_thread(
    settings: Settings, store: Store, registry_loader: RegistryLoader
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start a feed server in a daemon thread; stop it with shutdown() and server_close()."""
    server = make_server(settings, store, registry_loader)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},
        name="villagecast-feed-server",
        daemon=True,
    )
    thread.start()
    host, port = server.server_address[:2]
    log.info("feed server listening on http://%s:%s/feeds/", _host(host), port)
    return server, thread


def _host(host: str | bytes | bytearray) -> str:
    text = host.decode() if isinstance(host, bytes | bytearray) else host
    return f"[{text}]" if ":" in text and not text.startswith("[") else text
