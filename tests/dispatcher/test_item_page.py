"""Each feed item's page (what a poster's QR code opens): served only once it is in the feed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import feedparser
import httpx

from channels.tv_feed import item_url
from content_queue.models import build_notice
from content_queue.settings import Settings
from content_queue.store import PlannedDelivery, Store
from tests.dispatcher import test_feed_server as fs
from tests.dispatcher.test_feed_server import publish

# The feed server tests' fixtures: a store, settings, a server in a thread, a client.
_clean_env, settings, store, server, http = fs._clean_env, fs.settings, fs.store, fs.server, fs.http


def test_item_page_and_the_feed_link_to_it(
    store: Store, settings: Settings, http: httpx.Client
) -> None:
    did = publish(store, settings)
    (delivery,) = store.deliveries(ids=[did])
    page = http.get(f"/feeds/west-zhao/{delivery.notice_id}.html")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.text
    assert '<meta charset="utf-8">' in html and "村民代表会议通知" in html and "赵家村" in html
    url = item_url(settings.resolved_feed_base_url, "west-zhao", delivery.notice_id)
    atom = feedparser.parse(http.get("/feeds/west-zhao.atom").content)
    assert atom.entries[0].link == url
    assert http.get("/feeds/west-zhao.json").json()["items"][0]["url"] == url

    # Another village's page for the same id, or an unknown id: not found.
    assert http.get(f"/feeds/west-li/{delivery.notice_id}.html").status_code == 404
    assert http.get(f"/feeds/west-zhao/{delivery.notice_id + 99}.html").status_code == 404

    store.withdraw(delivery.notice_id, actor="t", reason="x")
    gone = http.get(f"/feeds/west-zhao/{delivery.notice_id}.html")
    assert (
        gone.status_code == 200
        and "【已撤回】" in gone.text
        and "召开村民代表会议" not in gone.text
    )


def test_a_scheduled_notice_has_no_page_yet(store: Store, http: httpx.Client) -> None:
    later = datetime.now(UTC) + timedelta(days=1)
    notice, _ = store.add_notice(
        build_notice(
            {
                "title": "明天才公开",
                "body": "x",
                "category": "meeting",
                "targets": {"villages": ["west-zhao"]},
                "publish_at": later,
            }
        ),
        [PlannedDelivery("west-zhao-tv", "tv_feed", "west-zhao", "west")],
    )
    assert http.get(f"/feeds/west-zhao/{notice.id}.html").status_code == 404
