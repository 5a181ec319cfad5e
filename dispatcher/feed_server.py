"""The feed server: the cable-TV platform pulls each village's feed here (stdlib HTTP only).

``GET /feeds/<village>.atom|.rss|.json`` serves the file the TV feed channel wrote, with
ETag and Last-Modified; a 200 or 304 answer to a GET is recorded as a fetch, which turns
the deliveries that were already in that file from 'sent' into 'delivered'.
``GET /feeds/<village>/<notice>.html`` is one item's page (each item's link, and what a
printed poster's QR code opens): only for a notice that is in that village's feed.
``GET /healthz`` answers ``ok``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import threading
from collections.abc import Callable
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

__all__ = ["FeedServer", "make_server", "serve_in_thread"]

log = logging.getLogger(__name__)

# The registry's Ident pattern: a village id never contains '/' or starts with '.'.
_VILLAGE_ID = ID_PATTERN
_CLIP_NAME = re.compile(r"([0-9a-f]{64})\.(mp3|amr)")
_ITEM_PAGE = re.compile(r"/feeds/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/([1-9][0-9]{0,17})\.html")
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

    # -- responses ---------------------------------------------------------------------

    def _text(self, status: int, text: str, *, head: bool) -> None:
        body = text.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _serve(self, *, head: bool) -> None:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._text(200, "ok\n", head=head)
            return
        if path.startswith("/audio/"):
            self._audio(path.removeprefix("/audio/"), head=head)
            return
        item = _ITEM_PAGE.fullmatch(unquote(path))
        if item is not None:
            self._item_page(item.group(1), int(item.group(2)), head=head)
            return
        name = unquote(path.removeprefix("/feeds/")) if path.startswith("/feeds/") else ""
        village_id, dot, fmt = name.rpartition(".")
        if not (dot and fmt in FEED_FORMATS and _VILLAGE_ID.fullmatch(village_id)):
            self._text(404, _NOT_FOUND, head=head)
            return
        try:
            registry = self._srv.registry_loader()
            endpoint = feed_endpoint(registry, village_id)
        except NotFoundError:
            self._text(404, _NOT_FOUND, head=head)
            return
        except Exception:  # devices.yaml broken mid-edit: the platform should come back later
            log.exception("cannot load the registry for a feed request")
            self._text(503, _UNAVAILABLE, head=head)
            return
        settings = self._srv.settings
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
        headers = {"Content-Type": MEDIA_TYPES[fmt], "Cache-Control": "no-cache"}
        if mtime is not None:
            headers["ETag"] = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
            headers["Last-Modified"] = formatdate(mtime, usegmt=True)
        status = 304 if mtime is not None and self._not_modified(headers, mtime) else 200
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        if status == 200:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if status == 200 and not head:
            self.wfile.write(data)
        if head or mtime is None:
            return  # a HEAD or an empty feed showed the platform no notice
        try:
            confirmed = self._srv.store.record_feed_fetch(
                endpoint.id,
                feed_format=fmt,
                client=self.headers.get("User-Agent", ""),
                now=started,
            )
        except Exception:  # served anyway; the next fetch confirms
            log.exception("cannot record the fetch of %s.%s", endpoint.id, fmt)
            return
        log.info("%s.%s fetched (%s): %d confirmed", endpoint.id, fmt, status, confirmed)

    def _item_page(self, village_id: str, notice_id: int, *, head: bool) -> None:
        """A notice's page, only while it is in the village's feed (published there, not
        expired): a scheduled notice never shows early, whatever id is guessed."""
        store = self._srv.store
        try:
            registry = self._srv.registry_loader()
            endpoint = feed_endpoint(registry, village_id)
            notice = store.notice(notice_id)
            shown = any(
                d.endpoint_id == endpoint.id and d.action == "publish" and d.sent_at is not None
                for d in store.deliveries(notice_id)
            )
        except NotFoundError:
            self._text(404, _NOT_FOUND, head=head)
            return
        except Exception:
            log.exception("cannot serve the page of notice %s", notice_id)
            self._text(503, _UNAVAILABLE, head=head)
            return
        if not shown or notice.expired(utcnow()):
            self._text(404, _NOT_FOUND, head=head)
            return
        body = render_item_page(notice, village_name=registry.village_name(village_id))
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _audio(self, name: str, *, head: bool) -> None:
        """Synthesized clips, public, named by the SHA-256 of their content (immutable)."""
        m = _CLIP_NAME.fullmatch(name)
        if m is None:
            self._text(404, _NOT_FOUND, head=head)
            return
        path = self._srv.settings.home / "audio" / name
        try:
            data = path.read_bytes()
        except OSError:
            self._text(404, _NOT_FOUND, head=head)
            return
        etag = f'"{m.group(1)}"'
        if self.headers.get("If-None-Match") == etag:
            self.send_response(304)
            self.send_header("ETag", etag)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", _AUDIO_TYPES[m.group(2)])
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", etag)
        self.send_header("Cache-Control", "public, max-age=31536000, immutable")
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _not_modified(self, headers: dict[str, str], mtime: float) -> bool:
        if_none_match = self.headers.get("If-None-Match")
        if if_none_match is not None:
            tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
            return "*" in tags or headers["ETag"] in tags
        if_modified_since = self.headers.get("If-Modified-Since")
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
