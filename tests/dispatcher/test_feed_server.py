"""The feed server over real HTTP: serving, conditional GETs, and fetches confirming deliveries."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import feedparser
import httpx
import pytest
from sqlalchemy import select

from channels.base import DeliveryContext
from channels.tv_feed import TvFeedChannel
from content_queue.db import FeedFetch
from content_queue.models import build_notice
from content_queue.registry import Registry, RegistryFile
from content_queue.settings import Settings
from content_queue.store import Outcome, PlannedDelivery, Store
from dispatcher.feed_server import serve_in_thread

UA = "test-tv-platform/1.0"


def make_registry() -> Registry:
    doc = RegistryFile.model_validate(
        {
            "version": 1,
            "county": {"code": "371521", "name": "示例县"},
            "townships": [
                {
                    "id": "west",
                    "name": "西河乡",
                    "villages": [
                        {
                            "id": "west-zhao",
                            "name": "赵家村",
                            "endpoints": [{"id": "west-zhao-tv", "kind": "tv_feed"}],
                        },
                        {
                            "id": "west-li",
                            "name": "李家村",
                            "endpoints": [{"id": "west-li-tv", "kind": "tv_feed"}],
                        },
                        {
                            "id": "west-qian",
                            "name": "钱家村",
                            "endpoints": [{"id": "west-qian-led", "kind": "led", "device_id": "q"}],
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


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", feed_host="127.0.0.1", feed_port=0)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'vc.sqlite'}")


@pytest.fixture
def server(settings: Settings, store: Store) -> Iterator[str]:
    registry = make_registry()
    srv, thread = serve_in_thread(settings, store, lambda: registry)
    host, port = srv.server_address[:2]
    yield f"http://{host!s}:{port}"
    srv.shutdown()
    srv.server_close()
    thread.join(5)


@pytest.fixture
def http(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, headers={"User-Agent": UA}, timeout=5) as client:
        yield client


def publish(store: Store, settings: Settings, title: str = "村民代表会议通知") -> int:
    """One notice through the channel to west-zhao's feed, recorded 'sent'; its delivery id."""
    _, (delivery,) = store.add_notice(
        build_notice(
            {
                "title": title,
                "body": "定于本周六上午9时在村委会会议室召开村民代表会议。",
                "category": "meeting",
                "targets": {"villages": ["west-zhao"]},
            }
        ),
        [PlannedDelivery("west-zhao-tv", "tv_feed", "west-zhao", "west")],
    )
    (claim,) = store.claim([delivery.id], worker="t", lease_seconds=60, max_attempts=3)
    registry = make_registry()
    ctx = DeliveryContext(
        delivery_id=delivery.id,
        attempt=claim.attempt,
        notice=claim.notice,
        endpoint=registry.endpoints["west-zhao-tv"],
        village_id="west-zhao",
        registry=registry,
        settings=settings,
        store=store,
    )
    result = TvFeedChannel().deliver(ctx)
    assert result.status == "sent"
    store.finish(claim, Outcome("sent", external_ref=result.external_ref), max_attempts=3)
    return delivery.id


def status(store: Store, delivery_id: int) -> str:
    (d,) = store.deliveries(ids=[delivery_id])
    return d.status


def eventually_status(store: Store, delivery_id: int, timeout: float = 5.0) -> str:
    """The fetch is recorded after the response is written, so the client may be first."""
    deadline = time.monotonic() + timeout
    while (current := status(store, delivery_id)) != "delivered" and time.monotonic() < deadline:
        time.sleep(0.02)
    return current


def fetches(store: Store, *, at_least: int = 0, timeout: float = 5.0) -> list[tuple[str, str, str]]:
    """Recorded fetches; waits (briefly) for ``at_least`` of them, since a fetch is recorded
    after its response is written and the client may read the store first."""
    deadline = time.monotonic() + timeout
    while True:
        with store.session() as s:
            rows = s.execute(select(FeedFetch.endpoint_id, FeedFetch.feed_format, FeedFetch.client))
            found = [(e, f, c) for e, f, c in rows]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_get_serves_the_feed_and_confirms_the_delivery(
    store: Store, settings: Settings, http: httpx.Client
) -> None:
    did = publish(store, settings)
    assert status(store, did) == "sent"
    resp = http.get("/feeds/west-zhao.atom")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/atom+xml; charset=utf-8"
    assert resp.headers["etag"] and resp.headers["last-modified"]
    feed = feedparser.parse(resp.content)
    assert [e.title for e in feed.entries] == ["村民代表会议通知"]
    assert eventually_status(store, did) == "delivered"
    assert fetches(store, at_least=1) == [("west-zhao-tv", "atom", UA)]


@pytest.mark.parametrize(
    ("fmt", "media_type"),
    [("rss", "application/rss+xml"), ("json", "application/feed+json")],
)
def test_other_formats_have_their_content_types(
    store: Store, settings: Settings, http: httpx.Client, fmt: str, media_type: str
) -> None:
    did = publish(store, settings)
    resp = http.get(f"/feeds/west-zhao.{fmt}")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == f"{media_type}; charset=utf-8"
    assert "村民代表会议通知" in resp.content.decode("utf-8")
    assert eventually_status(store, did) == "delivered"


def test_if_none_match_gives_304_and_still_counts_as_a_fetch(
    store: Store, settings: Settings, http: httpx.Client
) -> None:
    publish(store, settings)
    first = http.get("/feeds/west-zhao.atom")
    etag = first.headers["etag"]
    did = publish(store, settings, title="第二条通知")  # the file changes: a new ETag
    stale = http.get("/feeds/west-zhao.atom", headers={"If-None-Match": etag})
    assert stale.status_code == 200 and stale.headers["etag"] != etag
    assert eventually_status(store, did) == "delivered"
    again = http.get("/feeds/west-zhao.atom", headers={"If-None-Match": stale.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert again.headers["etag"] == stale.headers["etag"]
    assert [f[1] for f in fetches(store, at_least=3)] == ["atom", "atom", "atom"]


def test_if_modified_since_gives_304(store: Store, settings: Settings, http: httpx.Client) -> None:
    publish(store, settings)
    first = http.get("/feeds/west-zhao.json")
    resp = http.get(
        "/feeds/west-zhao.json", headers={"If-Modified-Since": first.headers["last-modified"]}
    )
    assert resp.status_code == 304


def test_head_and_missing_feed_confirm_nothing(
    store: Store, settings: Settings, http: httpx.Client
) -> None:
    did = publish(store, settings)
    head = http.head("/feeds/west-zhao.atom")
    assert head.status_code == 200 and int(head.headers["content-length"]) > 0
    assert status(store, did) == "sent"
    # A village that has published nothing yet gets an empty, valid feed.
    empty = http.get("/feeds/west-li.rss")
    assert empty.status_code == 200
    feed = feedparser.parse(empty.content)
    assert not feed.bozo and feed.entries == [] and feed.feed.title == "李家村 村务公开"
    assert fetches(store) == []


@pytest.mark.parametrize(
    "path",
    [
        "/feeds/nowhere.atom",
        "/feeds/west-qian.atom",  # a village without a TV feed endpoint
        "/feeds/west-zhao.xml",
        "/feeds/west-zhao",
        "/feeds/..%2Fetc.atom",
        "/feeds/..%2F..%2Fvc.sqlite",
        "/feeds/%2e%2e%2fwest-zhao-tv.atom",
        "/feeds/",
        "/",
        "/feeds/west-zhao.atom/extra",
    ],
)
def test_unknown_paths_are_404(
    store: Store, settings: Settings, server: str, http: httpx.Client, path: str
) -> None:
    publish(store, settings)
    # Send the path byte for byte: a client normalising '..' would hide a traversal attempt.
    resp = http.send(httpx.Request("GET", server, extensions={"target": path.encode()}))
    assert resp.status_code == 404
    assert "未找到" in resp.text and "not found" in resp.text
    assert fetches(store) == []


def test_healthz(http: httpx.Client) -> None:
    resp = http.get("/healthz")
    assert resp.status_code == 200 and resp.text == "ok\n"


def test_broken_registry_answers_503(settings: Settings, store: Store) -> None:
    def broken() -> Registry:
        raise RuntimeError("devices.yaml half-written")

    srv, thread = serve_in_thread(settings, store, broken)
    try:
        host, port = srv.server_address[:2]
        resp = httpx.get(f"http://{host!s}:{port}/feeds/west-zhao.atom", timeout=5)
        assert resp.status_code == 503
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_audio_clips_are_served_by_their_hash(settings: Settings, http: httpx.Client) -> None:
    import hashlib

    data = b"ID3 fake mp3 bytes"
    digest = hashlib.sha256(data).hexdigest()
    (settings.home / "audio").mkdir(parents=True, exist_ok=True)
    (settings.home / "audio" / f"{digest}.mp3").write_bytes(data)
    resp = http.get(f"/audio/{digest}.mp3")
    assert resp.status_code == 200 and resp.content == data
    assert resp.headers["content-type"] == "audio/mpeg"
    assert resp.headers["etag"] == f'"{digest}"'
    assert (
        http.get(f"/audio/{digest}.mp3", headers={"If-None-Match": f'"{digest}"'}).status_code
        == 304
    )
    assert http.get("/audio/../villagecast.sqlite").status_code == 404
    assert http.get(f"/audio/{digest[:-1]}.mp3").status_code == 404
