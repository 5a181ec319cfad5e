"""The TV feed channel: feed files in three formats, and the signed push to a stand-in platform."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import feedparser
import httpx
import pytest

from channels.base import (
    ContentError,
    DeliveryContext,
    PermanentError,
    SendResult,
    TransientError,
)
from channels.tv_feed import (
    TOMBSTONE_NS,
    VC_NS,
    TvFeedChannel,
    entry_id,
    feed_file,
    publish_feed,
    render_feed,
    village_feed,
)
from content_queue.errors import ConfigError, NotFoundError
from content_queue.models import build_notice
from content_queue.registry import Registry, RegistryFile
from content_queue.settings import Settings
from content_queue.store import Claim, Outcome, PlannedDelivery, Store

SECRET = "s3cret-for-tests-only"
SECRET_ENV = "VC_TEST_TV_INGEST_SECRET"
ATOM = "{http://www.w3.org/2005/Atom}"


def make_registry(ingest_url: str | None = None) -> Registry:
    tv: dict[str, Any] = {"id": "east-liu-tv", "kind": "tv_feed"}
    if ingest_url:
        tv |= {"ingest_url": ingest_url, "ingest_secret_env": SECRET_ENV}
    doc = RegistryFile.model_validate(
        {
            "version": 1,
            "county": {"code": "371521", "name": "示例县"},
            "townships": [
                {
                    "id": "east",
                    "name": "东城镇",
                    "villages": [
                        {"id": "east-liu", "name": "刘庄村", "endpoints": [tv]},
                        {
                            "id": "east-wang",
                            "name": "王庄村",
                            "endpoints": [
                                {"id": "east-wang-led", "kind": "led", "device_id": "l1"}
                            ],
                        },
                    ],
                }
            ],
        }
    )
    return Registry(doc)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("VILLAGECAST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv(SECRET_ENV, SECRET)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home", feed_base_url="http://tv.example:8765", http_timeout_seconds=2
    )


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'vc.sqlite'}")


def notice_data(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "title": "2026年10月村级财务收支公开",
        "body": "本月收入合计12,345.60元，支出合计8,210.00元。\n如有疑问请向村务监督委员会反映。",
        "category": "village_finance",
        "priority": "important",
        "targets": {"villages": ["east-liu"]},
    }
    data.update(over)
    return data


def claim_notice(store: Store, **over: Any) -> Claim:
    _, (delivery,) = store.add_notice(
        build_notice(notice_data(**over)),
        [PlannedDelivery("east-liu-tv", "tv_feed", "east-liu", "east")],
    )
    (claim,) = store.claim([delivery.id], worker="t", lease_seconds=60, max_attempts=3)
    return claim


def context(
    claim: Claim, *, registry: Registry, settings: Settings, store: Store
) -> DeliveryContext:
    return DeliveryContext(
        delivery_id=claim.delivery.id,
        attempt=claim.attempt,
        notice=claim.notice,
        endpoint=registry.endpoints["east-liu-tv"],
        village_id="east-liu",
        registry=registry,
        settings=settings,
        store=store,
    )


def send(
    store: Store,
    settings: Settings,
    *,
    registry: Registry | None = None,
    channel: TvFeedChannel | None = None,
    **over: Any,
) -> tuple[Claim, SendResult]:
    """Claim a new notice, deliver it and record the outcome, as the dispatcher does."""
    claim = claim_notice(store, **over)
    ctx = context(claim, registry=registry or make_registry(), settings=settings, store=store)
    result = (channel or TvFeedChannel()).deliver(ctx)
    store.finish(claim, Outcome(result.status, external_ref=result.external_ref), max_attempts=3)
    return claim, result


def parse(settings: Settings, fmt: str) -> Any:
    return feedparser.parse(feed_file(settings, "east-liu-tv", fmt).read_bytes())


def read_json(settings: Settings) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(feed_file(settings, "east-liu-tv", "json").read_bytes())
    return data


# -- feed files ---------------------------------------------------------------------------


def test_send_writes_three_feeds_newest_first(store: Store, settings: Settings) -> None:
    now = datetime.now(UTC)
    old, _ = send(store, settings, title="较早的通知", publish_at=now - timedelta(hours=2))
    expires = now + timedelta(days=3)
    new, result = send(
        store,
        settings,
        title="寒潮蓝色预警",
        category="emergency",
        priority="emergency",
        publish_at=now - timedelta(hours=1),
        expires_at=expires,
    )
    assert result == SendResult("sent", external_ref=entry_id(new.notice.id))
    assert [d.status for d in store.deliveries(new.notice.id)] == ["sent"]

    for fmt in ("atom", "rss"):
        feed = parse(settings, fmt)
        assert not feed.bozo, feed.bozo_exception
        assert feed.feed.title == "刘庄村 村务公开"
        assert [e.title for e in feed.entries] == ["寒潮蓝色预警", "较早的通知"]
        assert [e.id for e in feed.entries] == [entry_id(new.notice.id), entry_id(old.notice.id)]
        first = feed.entries[0]
        assert "村务监督委员会" in feed.entries[1].summary
        assert first.published_parsed is not None
        raw = ET.fromstring(feed_file(settings, "east-liu-tv", fmt).read_bytes())
        item = raw.find(f"{ATOM}entry") if fmt == "atom" else raw.find("channel/item")
        assert item is not None
        assert item.findtext(f"{{{VC_NS}}}priority") == "emergency"
        assert item.findtext(f"{{{VC_NS}}}category") == "emergency"
        expiry = item.findtext(f"{{{VC_NS}}}expires")
        assert expiry and datetime.fromisoformat(expiry) == expires.replace(microsecond=0)
    atom = parse(settings, "atom")
    assert atom.entries[0].tags[0].term == "emergency"
    assert atom.entries[0].tags[0].label == "应急通知"
    assert parse(settings, "rss").entries[0].tags[0].term == "应急通知"

    doc = read_json(settings)
    assert [i["title"] for i in doc["items"]] == ["寒潮蓝色预警", "较早的通知"]
    assert doc["items"][0]["_villagecast"]["expires_at"] is not None
    assert doc["items"][1]["_villagecast"]["expires_at"] is None  # declared: never expires


def test_json_feed_is_version_1_1_with_required_fields(store: Store, settings: Settings) -> None:
    claim, _ = send(store, settings)
    doc = read_json(settings)
    assert doc["version"] == "https://jsonfeed.org/version/1.1"
    assert doc["title"] == "刘庄村 村务公开"
    assert doc["feed_url"] == "http://tv.example:8765/feeds/east-liu.json"
    assert doc["home_page_url"] and doc["language"] == "zh-CN"
    (item,) = doc["items"]
    assert item["id"] == entry_id(claim.notice.id)
    assert item["content_text"].startswith("本月收入合计12,345.60元")
    assert item["content_html"].startswith("<p>本月收入合计")
    datetime.fromisoformat(item["date_published"])
    datetime.fromisoformat(item["date_modified"])
    assert item["tags"] == ["村级财务", "重要"]
    assert item["_villagecast"] == {
        "notice_id": claim.notice.id,
        "revision": 1,
        "supersedes": None,
        "category": "village_finance",
        "category_label": "村级财务",
        "priority": "important",
        "expires_at": None,
        "status": "active",
    }
    # Raw UTF-8, not \\u escapes: the TV platform's parser and people read the same bytes.
    assert "刘庄村".encode() in feed_file(settings, "east-liu-tv", "json").read_bytes()


def test_resending_is_idempotent(store: Store, settings: Settings) -> None:
    claim, _ = send(store, settings)
    registry = make_registry()
    ctx = context(claim, registry=registry, settings=settings, store=store)
    TvFeedChannel().deliver(ctx)  # a worker that repeats the send after a crash
    assert [e.id for e in parse(settings, "atom").entries] == [entry_id(claim.notice.id)]


def test_withdrawn_notice_becomes_a_tombstone(store: Store, settings: Settings) -> None:
    gone, _ = send(store, settings, title="关于停水的通知")
    store.withdraw(gone.notice.id, actor="secretary")
    kept, _ = send(store, settings, title="关于召开村民代表会议的通知")

    atom_bytes = feed_file(settings, "east-liu-tv", "atom").read_bytes()
    atom = feedparser.parse(atom_bytes)
    assert [e.id for e in atom.entries] == [entry_id(kept.notice.id)]
    root = ET.fromstring(atom_bytes)
    (tomb,) = root.findall(f"{{{TOMBSTONE_NS}}}deleted-entry")
    assert tomb.get("ref") == entry_id(gone.notice.id)
    assert datetime.fromisoformat(tomb.get("when") or "").tzinfo is not None
    assert tomb.findtext(f"{{{TOMBSTONE_NS}}}comment") == "已撤回"
    assert "停水" not in atom_bytes.decode()  # the withdrawn text is not republished

    rss = parse(settings, "rss")
    titles = {e.id: e.title for e in rss.entries}
    assert titles[entry_id(gone.notice.id)] == "【已撤回】关于停水的通知"
    withdrawn = next(e for e in rss.entries if e.id == entry_id(gone.notice.id))
    assert "withdrawn" in [t.term for t in withdrawn.tags]

    items = {i["id"]: i for i in read_json(settings)["items"]}
    assert items[entry_id(gone.notice.id)]["_villagecast"]["status"] == "withdrawn"
    assert items[entry_id(gone.notice.id)]["title"] == "【已撤回】关于停水的通知"
    assert items[entry_id(kept.notice.id)]["_villagecast"]["status"] == "active"


def test_publish_feed_after_withdrawal_shows_the_tombstone(
    store: Store, settings: Settings
) -> None:
    gone, _ = send(store, settings)
    store.withdraw(gone.notice.id, actor="secretary")
    publish_feed(
        store, settings, endpoint_id="east-liu-tv", village_id="east-liu", village_name="刘庄村"
    )
    assert parse(settings, "atom").entries == []
    assert b"deleted-entry" in feed_file(settings, "east-liu-tv", "atom").read_bytes()


def test_expired_notice_is_left_out(store: Store, settings: Settings) -> None:
    now = datetime.now(UTC)
    short, _ = send(store, settings, title="今晚停电", expires_at=now + timedelta(hours=1))
    long, _ = send(store, settings, title="长期公示")
    later = now + timedelta(hours=2)
    registry = make_registry()
    for fmt in ("atom", "rss"):
        feed = feedparser.parse(village_feed(store, registry, settings, "east-liu", fmt, now=later))
        assert [e.id for e in feed.entries] == [entry_id(long.notice.id)]
    doc = json.loads(village_feed(store, registry, settings, "east-liu", "json", now=later))
    assert [i["id"] for i in doc["items"]] == [entry_id(long.notice.id)]
    # Before it expired it was there.
    current = json.loads(village_feed(store, registry, settings, "east-liu", "json", now=now))
    assert entry_id(short.notice.id) in [i["id"] for i in current["items"]]


def test_table_is_an_escaped_html_table(store: Store, settings: Settings) -> None:
    table = {
        "caption": "收支<明细>",
        "columns": ["项目", "金额（元）"],
        "rows": [["<script>alert(1)</script>", "1 & 2"], ["村道路灯维修", "3,210.00"]],
    }
    send(store, settings, table=table)
    html = read_json(settings)["items"][0]["content_html"]
    assert "<table><caption>收支&lt;明细&gt;</caption>" in html
    assert "<th>项目</th><th>金额（元）</th>" in html
    assert "<td>&lt;script&gt;alert(1)&lt;/script&gt;</td><td>1 &amp; 2</td>" in html
    assert "<script>" not in html
    atom = parse(settings, "atom")
    assert "<table>" in atom.entries[0].content[0].value
    assert "村道路灯维修" in atom.entries[0].content[0].value


def test_concurrent_sends_to_one_village_keep_both_items(
    store: Store, settings: Settings, tmp_path: Path
) -> None:
    class SlowFirstRead(Store):
        """The first reader stalls between reading the store and writing the files."""

        first = threading.Event()

        def feed_entries(self, endpoint_id: str, *, limit: int = 100) -> Any:
            entries = super().feed_entries(endpoint_id, limit=limit)
            if not self.first.is_set():
                self.first.set()
                time.sleep(0.5)
            return entries

    slow = SlowFirstRead(store.url)
    registry = make_registry()
    errors: list[BaseException] = []

    def deliver(claim: Claim) -> None:
        try:
            TvFeedChannel().deliver(
                context(claim, registry=registry, settings=settings, store=slow)
            )
        except BaseException as exc:
            errors.append(exc)

    a = claim_notice(slow, title="第一条")
    t1 = threading.Thread(target=deliver, args=(a,))
    t1.start()
    assert SlowFirstRead.first.wait(5)
    # The second notice is claimed while the first worker sits on its (stale) read.
    b = claim_notice(slow, title="第二条")
    t2 = threading.Thread(target=deliver, args=(b,))
    t2.start()
    t1.join(10)
    t2.join(10)
    assert not errors
    for fmt in ("atom", "rss"):
        assert {e.title for e in parse(settings, fmt).entries} == {"第一条", "第二条"}
    assert {i["title"] for i in read_json(settings)["items"]} == {"第一条", "第二条"}


def test_render_feed_is_pure_and_handles_no_entries() -> None:
    now = datetime(2026, 12, 1, tzinfo=UTC)
    for fmt in ("atom", "rss"):
        data = render_feed(
            [],
            endpoint_id="x-tv",
            village_id="x",
            village_name="赵家村",
            fmt=fmt,
            base_url="http://h/",
            now=now,
        )
        feed = feedparser.parse(data)
        assert not feed.bozo and feed.entries == [] and feed.feed.title == "赵家村 村务公开"
    with pytest.raises(NotFoundError):
        render_feed(
            [],
            endpoint_id="x-tv",
            village_id="x",
            village_name="赵家村",
            fmt="xml",
            base_url="http://h",
            now=now,
        )


def test_village_feed_unknown_village_or_no_tv_endpoint(store: Store, settings: Settings) -> None:
    registry = make_registry()
    with pytest.raises(NotFoundError) as unknown:
        village_feed(store, registry, settings, "nowhere", "atom")
    assert "nowhere" in unknown.value.render("zh") and "unknown village" in unknown.value.render(
        "en"
    )
    with pytest.raises(NotFoundError) as no_tv:
        village_feed(store, registry, settings, "east-wang", "atom")
    assert "tv_feed" in no_tv.value.render("zh") and "tv_feed" in no_tv.value.render("en")


def test_oversized_body_is_a_content_error(store: Store, settings: Settings) -> None:
    claim = claim_notice(store)
    big = dataclasses.replace(claim.notice, body="字" * 20001)
    ctx = dataclasses.replace(
        context(claim, registry=make_registry(), settings=settings, store=store), notice=big
    )
    with pytest.raises(ContentError) as err:
        TvFeedChannel().deliver(ctx)
    assert err.value.code == "content"
    assert not feed_file(settings, "east-liu-tv", "atom").exists()


# -- push to the platform's ingest endpoint ---------------------------------------------------


class _PlatformServer(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[dict[str, Any]]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the timeout case: the client hung up before the slow answer


class _Platform(BaseHTTPRequestHandler):
    """The TV platform's ingest API as documented: verify the HMAC, act on the path."""

    server: _PlatformServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, body: bytes = b"", **headers: str) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key.replace("_", "-"), value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ts = self.headers.get("X-Villagecast-Timestamp", "")
        sig = self.headers.get("X-Villagecast-Signature", "")
        want = (
            "sha256="
            + hmac.new(SECRET.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
        )
        verified = hmac.compare_digest(sig, want)
        self.server.requests.append(
            {
                "path": self.path,
                "headers": dict(self.headers),
                "json": json.loads(body),
                "verified": verified,
            }
        )
        mode = self.path.strip("/")
        if not verified or mode == "forbidden":
            self._answer(403, b'{"error":"bad signature"}')
        elif mode == "ok":
            self._answer(200, b'{"ok":true,"id":"tv-8841"}', Content_Type="application/json")
        elif mode == "busy":
            self._answer(503, b"upstream busy")
        elif mode == "slow-down":
            self._answer(429, b"too many", Retry_After="7")
        elif mode == "sleep":
            time.sleep(0.8)
            self._answer(200, b'{"ok":true}')
        elif mode == "bad":
            echo = f"invalid payload: field 'zone' missing; got signature {sig}; " + "x" * 400
            self._answer(400, echo.encode())
        elif mode == "refused":
            self._answer(
                200, '{"ok":false,"error":"unknown_village","message":"村不存在"}'.encode()
            )


@pytest.fixture
def platform() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = _PlatformServer(("127.0.0.1", 0), _Platform)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    yield f"http://{host!s}:{port}", server.requests
    server.shutdown()
    server.server_close()
    thread.join(5)


def push(
    store: Store, settings: Settings, url: str, *, client: httpx.Client | None = None
) -> tuple[Claim, SendResult]:
    claim = claim_notice(store)
    ctx = context(claim, registry=make_registry(url), settings=settings, store=store)
    return claim, TvFeedChannel(client=client).deliver(ctx)


def test_push_acknowledged_is_delivered_and_signed(
    store: Store, settings: Settings, platform: tuple[str, list[dict[str, Any]]]
) -> None:
    base, requests = platform
    with httpx.Client() as client:
        claim, result = push(store, settings, f"{base}/ok", client=client)
    assert result == SendResult("delivered", external_ref="tv-8841")
    (req,) = requests
    assert req["verified"]
    assert req["headers"]["Idempotency-Key"] == f"villagecast-delivery-{claim.delivery.id}"
    assert req["headers"]["Content-Type"] == "application/json; charset=utf-8"
    assert abs(int(req["headers"]["X-Villagecast-Timestamp"]) - time.time()) < 60
    body = req["json"]
    assert body["id"] == entry_id(claim.notice.id)
    assert body["title"] == "2026年10月村级财务收支公开"
    assert body["category"] == "village_finance" and body["category_label"] == "村级财务"
    assert body["village_id"] == "east-liu" and body["withdrawn"] is False
    assert set(body) >= {"notice_id", "revision", "priority", "publish_at", "expires_at", "table"}
    # The feed is written as well: the platform may also pull.
    assert [e.id for e in parse(settings, "atom").entries] == [entry_id(claim.notice.id)]


def test_push_without_injected_client(
    store: Store, settings: Settings, platform: tuple[str, list[dict[str, Any]]]
) -> None:
    base, requests = platform
    _, result = push(store, settings, f"{base}/ok")
    assert result.status == "delivered" and requests[0]["verified"]


def test_push_5xx_is_transient(
    store: Store, settings: Settings, platform: tuple[str, list[dict[str, Any]]]
) -> None:
    base, _ = platform
    with pytest.raises(TransientError) as err:
        push(store, settings, f"{base}/busy")
    assert err.value.code == "http_503"


def test_push_429_honours_retry_after(
    store: Store, settings: Settings, platform: tuple[str, list[dict[str, Any]]]
) -> None:
    base, _ = platform
    with pytest.raises(TransientError) as err:
        push(store, settings, f"{base}/slow-down")
    assert err.value.code == "http_429" and err.value.retry_after == 7


def test_push_timeout_is_transient(
    store: Store, tmp_path: Path, platform: tuple[str, list[dict[str, Any]]]
) -> None:
    base, _ = platform
    quick = Settings(home=tmp_path / "home", http_timeout_seconds=0.2)
    with pytest.raises(TransientError) as err:
        push(store, quick, f"{base}/sleep")
    assert err.value.code == "timeout"
    assert isinstance(err.value.__cause__, httpx.TimeoutException)


def test_push_connection_refused_is_transient(store: Store, settings: Settings) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TransientError) as err:
        push(store, settings, f"http://127.0.0.1:{port}/ingest")
    assert err.value.code == "connect"


def test_push_403_is_permanent_and_keeps_the_secret_out(
    store: Store, settings: Settings, platform: tuple[str, list[dict[str, Any]]]
) -> None:
    base, requests = platform
    with pytest.raises(PermanentError) as err:
        push(store, settings, f"{base}/forbidden")
    assert err.value.code == "http_403"
    signature = requests[0]["headers"]["X-Villagecast-Signature"]
    for lang in ("zh", "en"):
        text = err.value.render(lang)
        assert SECRET not in text and signature not in text
        assert SECRET_ENV in text
    assert "签名" in err.value.render("zh") and "signature" in err.value.render("en")


def test_push_400_is_permanent_with_a_short_excerpt(
    store: Store, settings: Settings, platform: tuple[str, list[dict[str, Any]]]
) -> None:
    base, requests = platform
    with pytest.raises(PermanentError) as err:
        push(store, settings, f"{base}/bad")
    assert err.value.code == "http_400"
    text = err.value.render("en")
    assert "HTTP 400" in text and "field 'zone' missing" in text
    signature = requests[0]["headers"]["X-Villagecast-Signature"]
    assert signature not in text and "***" in text  # the echoed signature is scrubbed
    assert len(text) < 320


def test_push_200_with_an_error_body_is_permanent(
    store: Store, settings: Settings, platform: tuple[str, list[dict[str, Any]]]
) -> None:
    base, _ = platform
    with pytest.raises(PermanentError) as err:
        push(store, settings, f"{base}/refused")
    assert err.value.code == "unknown_village"
    assert "村不存在" in err.value.render("zh")


def test_push_missing_secret_is_a_config_error(
    store: Store, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SECRET_ENV)
    with pytest.raises(ConfigError) as err:
        push(store, settings, "http://127.0.0.1:9/ingest")
    assert SECRET_ENV in err.value.render("zh") and SECRET_ENV in err.value.render("en")
    # Nothing was published for a misconfigured endpoint.
    assert not feed_file(settings, "east-liu-tv", "atom").exists()
