"""The cable-TV disclosure platform: per-village feeds it pulls, and an optional signed push.

Features
    formats       Atom 1.0 (withdrawals as RFC 6721 tombstones), RSS 2.0, JSON Feed 1.1, all
                  UTF-8, newest first, in ``<home>/feeds/<endpoint>.atom|.rss|.json``; every
                  item carries category, priority, publish, update and expiry times
                  (``vc:*`` elements in namespace ``https://villagecast.example/ns/feed/1``,
                  ``_villagecast`` in JSON); expired notices are left out
    limits        title 80 characters, body 20,000 characters; a table becomes an HTML table
    confirms      ``fetch``: 'sent' once the feed holds the item, 'delivered' when the platform
                  fetches the feed afterwards (dispatcher.feed_server) or acknowledges a push
    push          optional HTTP POST of the item (JSON) to ``ingest_url`` with headers
                  ``X-Villagecast-Timestamp: <unix seconds>``, ``X-Villagecast-Signature:
                  sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`` and
                  ``Idempotency-Key: villagecast-delivery-<id>``; any 2xx acknowledges unless
                  the JSON body says ``{"ok": false}``
    recoverable   TransientError: http_5xx, http_408, http_429 (Retry-After honoured),
                  timeout, connect, network
    config keys   devices.yaml ``kind: tv_feed``, ``ingest_url``, ``ingest_secret_env``;
                  settings ``home``, ``feed_base_url``, ``http_timeout_seconds``
"""

from __future__ import annotations

import contextlib
import email.utils
import fcntl
import hashlib
import hmac
import html
import json
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, cast
from urllib.parse import urlsplit

import httpx
from feedgen.feed import FeedGenerator
from lxml import etree

from channels.base import (
    Channel,
    ChannelLimits,
    DeliveryContext,
    PermanentError,
    SendResult,
    TransientError,
    secret_from_env,
)
from content_queue.errors import ConfigError, NotFoundError
from content_queue.i18n import tr
from content_queue.models import CATEGORY_LABELS, PRIORITY_LABELS, Category, Priority, local_tz
from content_queue.registry import EndpointKind, Registry, TvFeedEndpoint
from content_queue.settings import Settings
from content_queue.store import DeliveryView, NoticeView, Store, utcnow

__all__ = [
    "FEED_FORMATS",
    "MEDIA_TYPES",
    "TOMBSTONE_NS",
    "VC_NS",
    "FeedFormat",
    "TvFeedChannel",
    "entry_id",
    "feed_endpoint",
    "feed_file",
    "item_url",
    "publish_feed",
    "render_feed",
    "render_item_page",
    "village_feed",
]

FeedFormat = Literal["atom", "rss", "json"]
FEED_FORMATS: tuple[FeedFormat, ...] = ("atom", "rss", "json")
MEDIA_TYPES: dict[str, str] = {
    "atom": "application/atom+xml; charset=utf-8",
    "rss": "application/rss+xml; charset=utf-8",
    "json": "application/feed+json; charset=utf-8",
}
VC_NS = "https://villagecast.example/ns/feed/1"
TOMBSTONE_NS = "http://purl.org/atompub/tombstones/1.0"
_ATOM_NS = "http://www.w3.org/2005/Atom"
_CATEGORY_SCHEME = "https://villagecast.example/ns/category"
_WITHDRAWN_PREFIX = "【已撤回】"
_WITHDRAWN_TEXT = "本通知已撤回。"
_EXCERPT_CHARS = 200


def entry_id(notice_id: int) -> str:
    """The feed id of a notice: stable across re-sends, so a repeat is the same entry."""
    return f"urn:villagecast:notice:{notice_id}"


def item_url(base_url: str, village_id: str, notice_id: int) -> str:
    """The web page of one feed item (served by dispatcher.feed_server): each item's link,
    and what the QR code on a printed disclosure poster opens."""
    return f"{base_url.rstrip('/')}/feeds/{village_id}/{notice_id}.html"


def feed_file(settings: Settings, endpoint_id: str, fmt: str) -> Path:
    return settings.feeds_dir / f"{endpoint_id}.{_format(fmt)}"


def _format(fmt: str) -> FeedFormat:
    if fmt not in FEED_FORMATS:
        raise NotFoundError(
            tr(
                "没有 {f} 格式的订阅源（可选 atom、rss、json）",
                "there is no {f} feed (choose atom, rss or json)",
                f=fmt,
            )
        )
    return fmt


# -- rendering (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Item:
    id: str
    url: str
    notice: NoticeView
    title: str
    text: str
    html: str
    category_label: str
    priority_label: str
    published: datetime
    updated: datetime
    withdrawn: bool


def _category_label(category: str) -> str:
    # StrEnum keys hash like their values; an unknown (newer) value is shown as it is.
    label = CATEGORY_LABELS.get(cast(Category, category))
    return label.render("zh") if label else category


def _priority_label(priority: str) -> str:
    label = PRIORITY_LABELS.get(cast(Priority, priority))
    return label.render("zh") if label else priority


def _html_body(body: str, table: dict[str, Any] | None) -> str:
    esc = html.escape
    parts = [f"<p>{esc(line)}</p>" for line in body.split("\n") if line.strip()]
    if table:
        rows = ["<table>"]
        if table.get("caption"):
            rows.append(f"<caption>{esc(str(table['caption']))}</caption>")
        head = "".join(f"<th>{esc(str(c))}</th>" for c in table.get("columns", []))
        rows.append(f"<thead><tr>{head}</tr></thead><tbody>")
        for row in table.get("rows", []):
            rows.append("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>")
        rows.append("</tbody></table>")
        parts.append("".join(rows))
    return "\n".join(parts)


def _items(
    entries: Sequence[tuple[NoticeView, DeliveryView]], now: datetime, *, base: str, village_id: str
) -> list[_Item]:
    items = []
    notices = sorted((n for n, _ in entries), key=lambda n: (n.publish_at, n.id), reverse=True)
    for n in notices:
        if n.expired(now):
            continue
        withdrawn = n.state != "active"  # withdrawn, or superseded by a correction
        items.append(
            _Item(
                id=entry_id(n.id),
                url=item_url(base, village_id, n.id),
                notice=n,
                title=(_WITHDRAWN_PREFIX + n.title) if withdrawn else n.title,
                text=_WITHDRAWN_TEXT if withdrawn else n.body,
                html=f"<p>{_WITHDRAWN_TEXT}</p>" if withdrawn else _html_body(n.body, n.table),
                category_label=_category_label(n.category),
                priority_label=_priority_label(n.priority),
                published=_local(n.publish_at),
                # A notice is never edited (a correction is a new notice), so it last changed
                # when it was entered or, if published later, when it went public.
                updated=_local(max(n.publish_at, n.created_at)),
                withdrawn=withdrawn,
            )
        )
    return items


def _local(value: datetime) -> datetime:
    """County time, whole seconds: what the platform shows and what people read in the file."""
    return value.astimezone(local_tz()).replace(microsecond=0)


def _iso(value: datetime | None) -> str | None:
    return _local(value).isoformat() if value is not None else None


def render_feed(
    entries: Sequence[tuple[NoticeView, DeliveryView]],
    *,
    endpoint_id: str,
    village_id: str,
    village_name: str,
    fmt: str,
    base_url: str,
    now: datetime,
) -> bytes:
    """One village's feed in one format, newest first, from ``Store.feed_entries``.

    Expired notices are left out. A withdrawn notice stays visible as a withdrawal: an
    RFC 6721 tombstone in Atom (its time is ``now``: the store keeps no withdrawal time),
    an item titled 【已撤回】 in RSS and JSON Feed.
    """
    kind = _format(fmt)
    base = base_url.rstrip("/")
    items = _items(entries, now, base=base, village_id=village_id)
    meta = {
        "title": f"{village_name} 村务公开",
        "description": f"{village_name}村务公开通知（数字电视公开平台订阅源）",
        "home": f"{base}/",
        "self": f"{base}/feeds/{village_id}.{kind}",
        "feed_id": f"urn:villagecast:feed:{endpoint_id}",
        "author": village_name,
    }
    # Stable for unchanged content (ETags stay valid) except a tombstone's time.
    times = [i.updated for i in items if not i.withdrawn]
    if any(i.withdrawn for i in items) or not times:
        times.append(_local(now))
    updated = max(times)
    if kind == "json":
        return _render_json(items, meta, updated)
    return _render_xml(items, meta, updated, kind, _local(now))


_PAGE_STYLE = (
    "body{font-family:sans-serif;max-width:46em;margin:1em auto;padding:0 1em;line-height:1.6}"
    "table{border-collapse:collapse;width:100%}td,th{border:1px solid #999;padding:.2em .4em}"
    ".meta{color:#555}.withdrawn{color:#b00;font-weight:bold}"
)


def render_item_page(notice: NoticeView, *, village_name: str) -> bytes:
    """One feed item as a small web page (what a poster's QR code opens on a phone).

    A withdrawn or superseded notice shows only that it was withdrawn, like the feeds."""
    esc = html.escape
    withdrawn = notice.state != "active"
    title = (_WITHDRAWN_PREFIX + notice.title) if withdrawn else notice.title
    published = _local(notice.publish_at).strftime("%Y-%m-%d %H:%M")
    meta = f"{esc(village_name)} · {esc(_category_label(notice.category))} · {published}"
    if notice.revision > 1:
        meta += f" · 第 {notice.revision} 版"
    content = (
        f'<p class="withdrawn">{_WITHDRAWN_TEXT}</p>'
        if withdrawn
        else _html_body(notice.body, notice.table)
    )
    page = (
        '<!DOCTYPE html>\n<html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{_PAGE_STYLE}</style></head>\n"
        f'<body><h1>{esc(title)}</h1><p class="meta">{meta}</p>\n{content}\n</body></html>\n'
    )
    return page.encode("utf-8")


def _render_json(items: list[_Item], meta: dict[str, str], updated: datetime) -> bytes:
    doc: dict[str, Any] = {
        "version": "https://jsonfeed.org/version/1.1",
        "title": meta["title"],
        "home_page_url": meta["home"],
        "feed_url": meta["self"],
        "description": meta["description"],
        "language": "zh-CN",
        "authors": [{"name": meta["author"]}],
        "_villagecast": {"feed_id": meta["feed_id"], "updated": updated.isoformat()},
        "items": [
            {
                "id": i.id,
                "url": i.url,
                "title": i.title,
                "content_text": i.text,
                "content_html": i.html,
                "date_published": i.published.isoformat(),
                "date_modified": i.updated.isoformat(),
                "tags": [i.category_label, i.priority_label],
                "_villagecast": {
                    "notice_id": i.notice.id,
                    "revision": i.notice.revision,
                    "supersedes": (
                        entry_id(i.notice.supersedes_id) if i.notice.supersedes_id else None
                    ),
                    "category": i.notice.category,
                    "category_label": i.category_label,
                    "priority": i.notice.priority,
                    "expires_at": _iso(i.notice.expires_at),
                    "status": "withdrawn" if i.withdrawn else "active",
                },
            }
            for i in items
        ],
    }
    return (json.dumps(doc, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _render_xml(
    items: list[_Item], meta: dict[str, str], updated: datetime, kind: FeedFormat, now: datetime
) -> bytes:
    fg = FeedGenerator()
    fg.id(meta["feed_id"])
    fg.title(meta["title"])
    fg.subtitle(meta["description"])
    fg.author({"name": meta["author"]})
    fg.language("zh-CN")
    fg.generator("villagecast")
    fg.updated(updated)
    fg.link(href=meta["self"], rel="self", type=MEDIA_TYPES[kind].split(";")[0])
    fg.link(href=meta["home"], rel="alternate")  # the last link is RSS's <link>
    for i in items:
        if i.withdrawn and kind == "atom":
            continue  # a tombstone, added below
        fe = fg.add_entry(order="append")
        fe.id(i.id)
        fe.title(i.title)
        fe.link(href=i.url, rel="alternate", type="text/html")
        fe.summary(i.text)
        fe.content(i.html, type="html")
        fe.category(term=i.notice.category, label=i.category_label, scheme=_CATEGORY_SCHEME)
        if i.withdrawn:
            fe.category(term="withdrawn", label="withdrawn")
        fe.published(i.published)
        fe.updated(i.updated)
    raw = fg.atom_str() if kind == "atom" else fg.rss_str()
    root = etree.fromstring(raw, etree.XMLParser(resolve_entities=False, no_network=True))
    by_id = {i.id: i for i in items}
    if kind == "atom":
        for entry in root.iterfind(f"{{{_ATOM_NS}}}entry"):
            _vc(entry, by_id[entry.findtext(f"{{{_ATOM_NS}}}id")])
        for i in items:
            if i.withdrawn:
                gone = etree.SubElement(
                    root, f"{{{TOMBSTONE_NS}}}deleted-entry", ref=i.id, when=now.isoformat()
                )
                etree.SubElement(gone, f"{{{TOMBSTONE_NS}}}comment").text = "已撤回"
    else:
        for item in root.iterfind("channel/item"):
            _vc(item, by_id[item.findtext("guid")])
    etree.cleanup_namespaces(root, top_nsmap={"vc": VC_NS, "at": TOMBSTONE_NS})
    if kind == "rss":
        etree.cleanup_namespaces(root)  # RSS has no tombstones: drop the unused prefix
    return cast(
        bytes, etree.tostring(root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    )


def _vc(parent: Any, item: _Item) -> None:
    """The villagecast extension elements every live item carries."""

    def add(name: str, text: str, **attrs: str) -> None:
        etree.SubElement(parent, f"{{{VC_NS}}}{name}", **attrs).text = text

    n = item.notice
    add("category", n.category, label=item.category_label)
    add("priority", n.priority, label=item.priority_label)
    add("expires", _iso(n.expires_at) or "")  # empty: the notice does not expire
    add("revision", str(n.revision))
    add("status", "withdrawn" if item.withdrawn else "active")
    if n.supersedes_id:
        add("supersedes", entry_id(n.supersedes_id))


# -- files --------------------------------------------------------------------------------


@contextlib.contextmanager
def _feed_lock(settings: Settings, endpoint_id: str) -> Iterator[None]:
    settings.feeds_dir.mkdir(parents=True, exist_ok=True)
    with (settings.feeds_dir / f"{endpoint_id}.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # 'sent' must survive a power cut
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def publish_feed(
    store: Store,
    settings: Settings,
    *,
    endpoint_id: str,
    village_id: str,
    village_name: str,
    now: datetime | None = None,
) -> list[Path]:
    """Rewrite an endpoint's three feed files from the store; returns their paths.

    Read and write happen under one lock per endpoint, so two workers publishing to the
    same village cannot overwrite each other's item. Call it after a withdrawal too, so
    the tombstone reaches the platform without waiting for the next notice.
    """
    with _feed_lock(settings, endpoint_id):
        entries = store.feed_entries(endpoint_id)
        now = now or utcnow()
        paths = []
        for fmt in FEED_FORMATS:
            data = render_feed(
                entries,
                endpoint_id=endpoint_id,
                village_id=village_id,
                village_name=village_name,
                fmt=fmt,
                base_url=settings.resolved_feed_base_url,
                now=now,
            )
            path = feed_file(settings, endpoint_id, fmt)
            _write_atomic(path, data)
            paths.append(path)
        return paths


def feed_endpoint(registry: Registry, village_id: str) -> TvFeedEndpoint:
    """The village's (first enabled) TV feed endpoint, or NotFoundError."""
    village = registry.villages.get(village_id)
    if village is None:
        raise NotFoundError(
            tr(
                "未知的村：{v}（请检查 devices.yaml 中的村 id）",
                "unknown village: {v} (check the village ids in devices.yaml)",
                v=village_id,
            )
        )
    for ep in village.endpoints:
        if isinstance(ep, TvFeedEndpoint) and ep.enabled:
            return ep
    raise NotFoundError(
        tr(
            "{v}（{name}）没有启用的电视公开平台端点（kind: tv_feed）",
            "village {v} ({name}) has no enabled TV platform endpoint (kind: tv_feed)",
            v=village_id,
            name=village.name,
        )
    )


def village_feed(
    store: Store,
    registry: Registry,
    settings: Settings,
    village_id: str,
    fmt: str,
    *,
    now: datetime | None = None,
) -> bytes:
    """A village's feed rendered now from the store (``villagecast feed``)."""
    endpoint = feed_endpoint(registry, village_id)
    return render_feed(
        store.feed_entries(endpoint.id),
        endpoint_id=endpoint.id,
        village_id=village_id,
        village_name=registry.village_name(village_id),
        fmt=fmt,
        base_url=settings.resolved_feed_base_url,
        now=now or utcnow(),
    )


# -- the channel --------------------------------------------------------------------------


class TvFeedChannel(Channel):
    """Publishes a notice in its village's feeds and, if configured, pushes it to the platform."""

    kind: ClassVar[EndpointKind] = "tv_feed"
    limits: ClassVar[ChannelLimits] = ChannelLimits(
        max_title_chars=80,
        max_body_chars=20000,
        supports_table=True,
        confirms="fetch",
        formats=FEED_FORMATS,
    )

    def __init__(self, client: httpx.Client | None = None) -> None:
        self._client = client

    def send(self, ctx: DeliveryContext) -> SendResult:
        endpoint = ctx.endpoint
        if not isinstance(endpoint, TvFeedEndpoint):
            raise ConfigError(
                tr("端点 {ep} 不是 tv_feed", "endpoint {ep} is not a tv_feed", ep=endpoint.id)
            )
        secret = None
        if endpoint.ingest_url:
            # Checked before anything is published: a configuration error has no side effects.
            secret = secret_from_env(endpoint.ingest_secret_env or "", endpoint_id=endpoint.id)
        village_id = ctx.village_id or ctx.registry.endpoint_village.get(endpoint.id) or ""
        publish_feed(
            ctx.store,
            ctx.settings,
            endpoint_id=endpoint.id,
            village_id=village_id,
            village_name=ctx.registry.village_name(village_id),
        )
        ref = entry_id(ctx.notice.id)
        if not endpoint.ingest_url or secret is None:
            return SendResult("sent", external_ref=ref)
        ack = self._push(ctx, endpoint, endpoint.ingest_url, secret, village_id)
        return SendResult("delivered", external_ref=ack or ref)

    def recall(self, ctx: DeliveryContext) -> SendResult:
        """The feed is rewritten with the notice as a withdrawal (an Atom tombstone, a
        ``withdrawn`` status in RSS and JSON) and, where the platform takes pushes, the
        withdrawal is pushed too; confirmed like a publish (fetch or push ack)."""
        return self.send(ctx)

    # -- push --------------------------------------------------------------------------

    def _push(
        self,
        ctx: DeliveryContext,
        endpoint: TvFeedEndpoint,
        url: str,
        secret: str,
        village_id: str,
    ) -> str | None:
        """POST the item, signed; returns the platform's id for it (if it gave one)."""
        n = ctx.notice
        payload = {
            "id": entry_id(n.id),
            "notice_id": n.id,
            "revision": n.revision,
            "supersedes": entry_id(n.supersedes_id) if n.supersedes_id else None,
            "village_id": village_id,
            "title": n.title,
            "body": n.body,
            "category": n.category,
            "category_label": _category_label(n.category),
            "priority": n.priority,
            "publish_at": _iso(n.publish_at),
            "expires_at": _iso(n.expires_at),
            "withdrawn": n.state != "active",
            "table": n.table,
        }
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        timestamp = str(int(time.time()))
        digest = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256)
        signature = "sha256=" + digest.hexdigest()
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "X-Villagecast-Timestamp": timestamp,
            "X-Villagecast-Signature": signature,
            "Idempotency-Key": f"villagecast-delivery-{ctx.delivery_id}",
        }
        where = _where(url)
        timeout = ctx.settings.http_timeout_seconds
        try:
            if self._client is not None:
                resp = self._client.post(url, content=body, headers=headers, timeout=timeout)
            else:
                with httpx.Client(timeout=timeout) as client:
                    resp = client.post(url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientError(
                tr(
                    "电视平台 {w} 在 {s} 秒内没有响应",
                    "the TV platform at {w} did not answer within {s} s",
                    w=where,
                    s=timeout,
                ),
                code="timeout",
            ) from exc
        except httpx.ConnectError as exc:
            raise TransientError(
                tr(
                    "无法连接电视平台 {w}",
                    "cannot connect to the TV platform at {w}",
                    w=where,
                ),
                code="connect",
            ) from exc
        except httpx.TransportError as exc:
            raise TransientError(
                tr(
                    "与电视平台 {w} 通信中断（{e}）",
                    "the connection to the TV platform at {w} broke ({e})",
                    w=where,
                    e=type(exc).__name__,
                ),
                code="network",
            ) from exc
        return _check_response(
            resp,
            where=where,
            secret_env=endpoint.ingest_secret_env or "",
            scrub=(secret, signature),
        )


def _where(url: str) -> str:
    """Host and port only: a URL's path or query may carry a token."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def _excerpt(text: str, scrub: Sequence[str]) -> str:
    for s in scrub:
        if s:
            text = text.replace(s, "***")  # a platform may echo what it received
    text = " ".join(text.split())
    return text if len(text) <= _EXCERPT_CHARS else text[: _EXCERPT_CHARS - 1] + "…"


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either a number or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _check_response(
    resp: httpx.Response, *, where: str, secret_env: str, scrub: Sequence[str]
) -> str | None:
    status = resp.status_code
    code = f"http_{status}"
    if 200 <= status < 300:
        try:
            data = resp.json()
        except ValueError:
            return None  # an empty or non-JSON 2xx is still an acknowledgement
        if not isinstance(data, dict):
            return None
        if data.get("ok") is False:
            reason = data.get("message") or data.get("error") or resp.text
            raise PermanentError(
                tr(
                    "电视平台 {w} 拒收了这条通知：{r}",
                    "the TV platform at {w} refused this notice: {r}",
                    w=where,
                    r=_excerpt(str(reason), scrub),
                ),
                code=str(data.get("code") or data.get("error") or "rejected")[:64],
            )
        ref = data.get("id")
        return ref if isinstance(ref, str) and ref else None
    if status >= 500 or status in (408, 429):
        raise TransientError(
            tr(
                "电视平台 {w} 暂时不可用（HTTP {s}），稍后重试",
                "the TV platform at {w} is unavailable for now (HTTP {s}); will retry",
                w=where,
                s=status,
            ),
            code=code,
            retry_after=_retry_after(resp.headers.get("Retry-After")),
        )
    if status in (401, 403):
        raise PermanentError(
            tr(
                "电视平台 {w} 拒绝了签名（HTTP {s}）：请检查环境变量 {var} 中的密钥是否与平台一致",
                "the TV platform at {w} rejected the signature (HTTP {s}): check that the "
                "secret in environment variable {var} matches the platform's",
                w=where,
                s=status,
                var=secret_env,
            ),
            code=code,
        )
    raise PermanentError(
        tr(
            "电视平台 {w} 拒收了这条通知（HTTP {s}）：{r}",
            "the TV platform at {w} refused this notice (HTTP {s}): {r}",
            w=where,
            s=status,
            r=_excerpt(resp.text, scrub) or "-",
        ),
        code=code,
    )
