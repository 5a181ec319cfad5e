"""The dashboard over real HTTP: sign-in, scopes (no reading or acting across townships),
CSRF, the actions, export, metrics and the public listener."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import httpx
import pytest
from openpyxl import load_workbook
from sqlalchemy import select, update

from content_queue.db import AuditEntry, WebSession
from content_queue.store import utcnow
from tests.dashboard.conftest import PASSWORD, County

# -- signing in ----------------------------------------------------------------------------


def test_everything_private_needs_a_login(county: County) -> None:
    c = county.client()
    assert c.get("/api/v1/overview").status_code == 401
    assert c.get("/api/v1/notices/1").status_code == 401
    assert c.get("/export/deliveries.csv").status_code == 401
    page = c.get("/overview")
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/overview"
    login = c.get("/login")
    assert login.status_code == 200 and '<meta charset="utf-8">' in login.text
    assert "登录" in login.text


def test_session_cookie_is_httponly_samesite_and_expires(county: County) -> None:
    c = county.client()
    r = c.post("/api/v1/login", json={"username": "east", "password": PASSWORD})
    assert r.status_code == 200
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("vc_session=")
    low = cookie.lower()
    assert "httponly" in low and "samesite=lax" in low and "path=/" in low
    assert "max-age=43200" in low  # web_session_hours = 12
    token = c.cookies["vc_session"]
    with county.store.session() as s:
        ids = list(s.scalars(select(WebSession.id)))
    assert ids and token not in ids  # only the token's SHA-256 is stored
    assert c.get("/api/v1/me").json()["role"] == "township_officer"


def test_wrong_password_then_rate_limited_per_account(county: County) -> None:
    c = county.client()
    for _ in range(5):
        bad = c.post("/api/v1/login", json={"username": "east", "password": "nope-nope-nope"})
        assert bad.status_code == 401
    # Even the right password is refused now, with a Retry-After.
    held = c.post("/api/v1/login", json={"username": "east", "password": PASSWORD})
    assert held.status_code == 429 and int(held.headers["retry-after"]) > 0
    assert "登录失败次数过多" in held.json()["detail"]
    # Another account from the same address is not held by east's failures alone.
    assert county.client("west").get("/api/v1/me").status_code == 200


def test_rate_limited_per_address_across_accounts(county: County) -> None:
    c = county.client()
    for i in range(20):
        r = c.post("/api/v1/login", json={"username": f"guess{i}", "password": "x" * 12})
        assert r.status_code == 401
    assert (
        c.post("/api/v1/login", json={"username": "county", "password": PASSWORD}).status_code
        == 429
    )


def test_idle_and_expired_sessions_end(county: County) -> None:
    c = county.client("east")
    assert c.get("/api/v1/me").status_code == 200
    with county.store.session() as s:
        s.execute(update(WebSession).values(last_seen_at=utcnow() - timedelta(hours=3)))
    assert c.get("/api/v1/me").status_code == 401  # idle longer than 120 minutes
    c2 = county.client("west")
    with county.store.session() as s:
        s.execute(update(WebSession).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert c2.get("/api/v1/me").status_code == 401


def test_logout_and_password_change_end_sessions(county: County) -> None:
    c = county.client("east")
    assert c.post("/api/v1/logout").status_code == 200
    c.cookies.clear()
    assert c.get("/api/v1/me").status_code == 401
    c2 = county.client("west")
    county.accounts.set_password("west", "another-pass-77")
    assert c2.get("/api/v1/me").status_code == 401


def test_login_form_needs_its_csrf_token(county: County) -> None:
    c = county.client()
    no_token = c.post("/login", data={"username": "east", "password": PASSWORD})
    assert no_token.status_code == 303 and no_token.headers["location"].startswith("/login?")
    assert "vc_session" not in c.cookies
    page = c.get("/login")
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    ok = c.post(
        "/login",
        data={"username": "east", "password": PASSWORD, "csrf_token": token, "next": "/failures"},
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/failures"
    assert c.get("/failures").status_code == 200
    # An open redirect through ?next= is refused.
    c2 = county.client()
    token = c2.get("/login").text.split('name="csrf_token" value="')[1].split('"')[0]
    evil = c2.post(
        "/login",
        data={"username": "east", "password": PASSWORD, "csrf_token": token, "next": "//evil"},
    )
    assert evil.headers["location"] == "/overview"


# -- scope ---------------------------------------------------------------------------------


def test_township_sees_only_its_villages(county: County) -> None:
    everywhere, _ = county.notice("全县会议", {"county": True})
    west_only, _ = county.notice("西河乡会议", {"villages": ["west-zhao"]})
    east = county.client("east")
    o = east.get("/api/v1/overview").json()
    assert [n["id"] for n in o["notices"]] == [everywhere.id]
    villages = {v["village_id"] for v in o["villages"]}
    assert villages == {"east-liu", "east-wang", None}  # None: the east-only official account
    # The west notice and its deliveries are invisible, exactly like missing ids.
    assert east.get(f"/api/v1/notices/{west_only.id}").status_code == 404
    assert east.get("/api/v1/notices/99999").status_code == 404
    assert east.get(f"/notices/{west_only.id}").status_code == 404
    detail = east.get(f"/api/v1/notices/{everywhere.id}").json()
    endpoints = {d["endpoint_id"] for d in detail["deliveries"]}
    assert endpoints == {"east-liu-tv", "east-liu-led", "east-liu-wecom", "east-wang-tv"} | {
        "east-wang-spk",
        "east-oa",
    }
    # West sees its own village and not the official account that covers only east.
    west = county.client("west").get(f"/api/v1/notices/{everywhere.id}").json()
    assert {d["endpoint_id"] for d in west["deliveries"]} == {"west-zhao-tv"}
    # The county sees everything.
    full = county.client("county").get(f"/api/v1/notices/{everywhere.id}").json()
    assert len(full["deliveries"]) == 7


def test_secretary_sees_only_their_village_and_cannot_act(county: County) -> None:
    n, _ = county.notice("全县会议", {"county": True})
    led = county.delivery(n.id, "east-liu-led")
    county.fail(led.id)
    liu = county.client("liu")
    detail = liu.get(f"/api/v1/notices/{n.id}").json()
    assert {d["village_id"] for d in detail["deliveries"]} == {"east-liu"}
    assert detail["can_retry"] is False and detail["can_withdraw"] is False
    assert liu.post(f"/api/v1/deliveries/{led.id}/retry").status_code == 403
    assert liu.post(f"/api/v1/notices/{n.id}/withdraw", json={}).status_code == 403
    page = liu.get(f"/notices/{n.id}")
    assert page.status_code == 200 and 'class="retry"' not in page.text
    assert "撤回通知" not in page.text
    assert county.delivery(n.id, "east-liu-led").status == "failed"
    reviewer = county.client("liu-reviewer")
    assert reviewer.post(f"/api/v1/deliveries/{led.id}/retry").status_code == 403


def test_no_action_across_townships_by_id_guessing(county: County) -> None:
    west_only, _ = county.notice("西河乡会议", {"villages": ["west-zhao"]})
    zhao = county.delivery(west_only.id, "west-zhao-tv")
    county.fail(zhao.id, code="endpoint_removed")
    east = county.client("east")
    assert east.post(f"/api/v1/deliveries/{zhao.id}/retry").status_code == 404
    assert east.post(f"/api/v1/notices/{west_only.id}/withdraw", json={}).status_code == 404
    form = east.post(
        f"/deliveries/{zhao.id}/retry", data={"csrf_token": east.headers["X-CSRF-Token"]}
    )
    assert form.status_code == 404
    form = east.post(
        f"/notices/{west_only.id}/withdraw",
        data={"csrf_token": east.headers["X-CSRF-Token"], "reason": "x"},
    )
    assert form.status_code == 404
    assert county.delivery(west_only.id, "west-zhao-tv").status == "failed"
    assert county.store.notice(west_only.id).state == "active"
    assert county.rings.calls == []
    # Nor through the failures list, the export or the devices list.
    assert east.get("/api/v1/failures").json()["failed"] == []
    assert "西河乡会议" not in east.get("/export/deliveries.csv").text
    assert all(d["village_id"] != "west-zhao" for d in east.get("/api/v1/devices").json())


def test_township_cannot_withdraw_a_notice_that_also_went_elsewhere(county: County) -> None:
    n, _ = county.notice("全县会议", {"county": True})
    east = county.client("east")
    assert east.get(f"/api/v1/notices/{n.id}").json()["can_withdraw"] is False
    r = east.post(f"/api/v1/notices/{n.id}/withdraw", json={"reason": "写错了"})
    assert r.status_code == 403 and "县级管理员" in r.json()["detail"]
    assert county.store.notice(n.id).state == "active"


# -- CSRF and actions ----------------------------------------------------------------------


def test_api_actions_refuse_a_missing_or_wrong_csrf_token(county: County) -> None:
    n, _ = county.notice("刘庄会议", {"villages": ["east-liu"]})
    led = county.delivery(n.id, "east-liu-led")
    county.fail(led.id)
    east = county.client("east")
    token = east.headers.pop("X-CSRF-Token")
    assert east.post(f"/api/v1/deliveries/{led.id}/retry").status_code == 403
    bad = east.post(f"/api/v1/deliveries/{led.id}/retry", headers={"X-CSRF-Token": "x" * 43})
    assert bad.status_code == 403 and "CSRF" in bad.text
    form = east.post(f"/deliveries/{led.id}/retry", data={})
    assert form.status_code == 403
    form = east.post(f"/notices/{n.id}/withdraw", data={"reason": "x"})
    assert form.status_code == 403
    assert county.delivery(n.id, "east-liu-led").status == "failed"
    assert county.store.notice(n.id).state == "active"
    # Another session's token is not this session's.
    other = county.client("east")
    cross = east.post(
        f"/api/v1/deliveries/{led.id}/retry",
        headers={"X-CSRF-Token": other.headers["X-CSRF-Token"]},
    )
    assert cross.status_code == 403
    ok = east.post(f"/api/v1/deliveries/{led.id}/retry", headers={"X-CSRF-Token": token})
    assert ok.status_code == 200


def test_retry_moves_a_failed_delivery_back_and_rings(county: County) -> None:
    n, _ = county.notice("刘庄会议", {"villages": ["east-liu"]})
    led = county.delivery(n.id, "east-liu-led")
    county.fail(led.id)
    east = county.client("east")
    before = east.get(f"/api/v1/notices/{n.id}").json()
    failed = next(d for d in before["deliveries"] if d["id"] == led.id)
    assert failed["status"] == "failed" and "公钥" in failed["fix_zh"]
    r = east.post(f"/api/v1/deliveries/{led.id}/retry")
    assert r.status_code == 200
    assert r.json() == {"id": led.id, "notice_id": n.id, "status": "pending", "attempts": 0}
    after = county.delivery(n.id, "east-liu-led")
    assert after.status == "pending" and after.attempts == 0 and after.error_code is None
    assert county.rings.calls == [{"led": [led.id]}]
    with county.store.session() as s:
        audit = s.scalars(select(AuditEntry).where(AuditEntry.action == "delivery.retry")).one()
    assert audit.actor == "web:east"
    assert audit.details["previous"]["error_code"] == "device_unknown_key"
    # Retrying what is not failed is a clear conflict.
    again = east.post(f"/api/v1/deliveries/{led.id}/retry")
    assert again.status_code == 409 and "只有失败的投递可以重试" in again.json()["detail"]


def test_retry_from_the_page_form(county: County) -> None:
    n, _ = county.notice("刘庄会议", {"villages": ["east-liu"]})
    led = county.delivery(n.id, "east-liu-led")
    county.fail(led.id)
    east = county.client("east")
    page = east.get(f"/notices/{n.id}")
    assert f'action="/deliveries/{led.id}/retry"' in page.text
    token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    r = east.post(f"/deliveries/{led.id}/retry", data={"csrf_token": token})
    assert r.status_code == 303 and r.headers["location"].startswith(f"/notices/{n.id}?msg=")
    assert county.delivery(n.id, "east-liu-led").status == "pending"


def test_withdraw_recalls_what_went_out_and_shows_it_beside_the_publish(county: County) -> None:
    n, _ = county.notice("刘庄会议", {"villages": ["east-liu"]})
    led = county.delivery(n.id, "east-liu-led")
    tv = county.delivery(n.id, "east-liu-tv")
    county.set_status(led.id, "delivered", sent_at=utcnow(), delivered_at=utcnow())
    waiting = [d.id for d in county.store.deliveries(n.id) if d.status == "pending"]
    assert tv.id in waiting and led.id not in waiting
    east = county.client("east")
    r = east.post(f"/api/v1/notices/{n.id}/withdraw", json={"reason": "时间改了"})
    assert r.status_code == 200
    body = r.json()
    # What had not gone out is cancelled; the board that showed it gets a recall.
    assert body["cancelled"] == len(waiting) and len(body["recalls"]) == 1
    assert county.rings.calls == [{"led": body["recalls"]}]
    detail = east.get(f"/api/v1/notices/{n.id}").json()
    assert detail["state"] == "withdrawn" and detail["can_withdraw"] is False
    by_id = {d["id"]: d for d in detail["deliveries"]}
    assert by_id[led.id]["status"] == "delivered"
    assert by_id[led.id]["recall"]["id"] == body["recalls"][0]
    assert by_id[led.id]["recall"]["action"] == "recall"
    assert by_id[tv.id]["status"] == "cancelled"
    page = east.get(f"/notices/{n.id}").text
    assert "撤回（清屏/停播/撤下）" in page


def test_retry_refuses_a_withdrawn_publish_but_retries_a_failed_recall(county: County) -> None:
    n, _ = county.notice("刘庄会议", {"villages": ["east-liu"]})
    led = county.delivery(n.id, "east-liu-led")
    tv = county.delivery(n.id, "east-liu-tv")
    county.set_status(led.id, "delivered", sent_at=utcnow())
    county.fail(tv.id, code="config")
    east = county.client("east")
    assert east.post(f"/api/v1/notices/{n.id}/withdraw", json={"reason": "x"}).status_code == 200
    refused = east.post(f"/api/v1/deliveries/{tv.id}/retry")
    assert refused.status_code == 409 and "不再重发" in refused.json()["detail"]
    (recall,) = [d for d in county.store.deliveries(n.id) if d.action == "recall"]
    county.fail(recall.id, code="mqtt_unreachable")
    ok = east.post(f"/api/v1/deliveries/{recall.id}/retry")
    assert ok.status_code == 200 and ok.json()["status"] == "pending"


def test_notice_page_lists_every_revision(county: County) -> None:
    from content_queue.models import build_notice
    from dispatcher.service import correct_notice

    old, _ = county.notice("刘庄会议", {"villages": ["east-liu"]})
    draft = build_notice(
        {
            "title": "刘庄会议（更正）",
            "body": "改在周日上午9时。",
            "category": "meeting",
            "targets": {"villages": ["east-liu"]},
            "supersedes": old.id,
            "revision": 2,
        }
    )
    new, _ = correct_notice(
        draft, store=county.store, registry=county.registry, ring=None, actor="t"
    )
    east = county.client("east")
    for nid in (old.id, new.notice.id):
        revs = east.get(f"/api/v1/notices/{nid}").json()["revisions"]
        assert [(r["id"], r["revision"]) for r in revs] == [(old.id, 1), (new.notice.id, 2)]
        assert [r["current"] for r in revs] == [nid == old.id, nid == new.notice.id]
    assert east.get(f"/api/v1/notices/{old.id}").json()["state"] == "superseded"
    assert "第 2 版" in east.get(f"/notices/{old.id}").text


# -- pages ---------------------------------------------------------------------------------


def test_overview_page_highlights_failures_and_filters(county: County) -> None:
    n, _ = county.notice("刘庄会议", {"villages": ["east-liu", "east-wang"]})
    county.fail(county.delivery(n.id, "east-liu-led").id)
    east = county.client("east")
    page = east.get("/overview")
    assert page.status_code == 200
    assert f'<tr class="has-failed" data-notice="{n.id}">' in page.text
    assert 'class="cell failed"' in page.text
    live = east.get("/overview", params={"partial": 1})
    assert "<html" not in live.text and 'id="failed-total">1<' in live.text
    only_tv = east.get("/api/v1/overview", params={"channel": "tv_feed"}).json()
    assert only_tv["kinds"] == ["tv_feed"] and only_tv["total"]["failed"] == 0
    wang = east.get("/api/v1/overview", params={"village": "east-wang"}).json()
    assert {v["village_id"] for v in wang["villages"]} == {"east-wang"}
    other_category = east.get("/api/v1/overview", params={"category": "village_finance"}).json()
    assert other_category["notices"] == []
    # A village outside the scope filters to nothing, never to the other township's data.
    assert east.get("/api/v1/overview", params={"village": "west-zhao"}).json()["notices"] == []
    old = east.get("/api/v1/overview", params={"since": "2020-01-01", "until": "2020-01-31"})
    assert old.json()["notices"] == []


def test_titles_are_escaped_on_every_page(county: County) -> None:
    n, _ = county.notice("<script>alert(1)</script>", {"villages": ["east-liu"]})
    county.fail(county.delivery(n.id, "east-liu-led").id)
    east = county.client("east")
    for path in ("/overview", f"/notices/{n.id}", "/failures"):
        text = east.get(path).text
        assert "<script>alert(1)</script>" not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_devices_offline_counted_and_highlighted(county: County) -> None:
    old = utcnow() - timedelta(hours=2)
    county.store.record_presence(device_id="led-east-liu-01", state="offline", at=old)
    county.store.record_presence(device_id="spk-east-wang-01", state="online", at=utcnow())
    east = county.client("east")
    assert east.get("/api/v1/overview").json()["devices_offline"] == 1
    rows = east.get("/api/v1/devices").json()
    by_id = {r["device_id"]: r for r in rows}
    assert by_id["led-east-liu-01"]["alert"] is True
    assert by_id["spk-east-wang-01"]["state"] == "online"
    assert "has-failed" in east.get("/devices").text
    detail = east.get("/api/v1/devices/led-east-liu-01").json()
    assert detail["history"][0]["state"] == "offline"
    assert county.client("west").get("/api/v1/devices/led-east-liu-01").status_code == 404
    failures = east.get("/api/v1/failures").json()
    assert [d["device_id"] for d in failures["offline_devices"]] == ["led-east-liu-01"]


def test_failures_oldest_first_with_the_fix(county: County) -> None:
    a, _ = county.notice("第一条", {"villages": ["east-liu"]})
    b, _ = county.notice("第二条", {"villages": ["east-liu"]})
    county.fail(county.delivery(b.id, "east-liu-led").id, code="93000")
    county.set_status(
        county.delivery(a.id, "east-liu-tv").id,
        "failed",
        error_code="endpoint_removed",
        error_zh="端点已不在 devices.yaml 中",
        finished_at=utcnow() - timedelta(hours=1),
    )
    data = county.client("east").get("/api/v1/failures").json()
    assert [d["notice_id"] for d in data["failed"]] == [a.id, b.id]
    assert "devices.yaml" in data["failed"][0]["fix_zh"]
    assert "webhook key" in data["failed"][1]["fix_zh"]
    page = county.client("east").get("/failures").text
    assert "建议：" in page


def test_export_csv_and_xlsx_are_scoped_and_formula_safe(county: County) -> None:
    _n, _ = county.notice('=HYPERLINK("http://x")', {"county": True})
    east = county.client("east")
    r = east.get("/export/deliveries.csv")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.content.startswith("\ufeff".encode())
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0][:3] == ["通知编号", "标题", "类别"]
    assert {row[7] for row in rows[1:]} == {
        "east-liu-tv",
        "east-liu-led",
        "east-liu-wecom",
        "east-wang-tv",
        "east-wang-spk",
        "east-oa",
    }
    assert all(row[1].startswith("'=") for row in rows[1:])
    x = east.get("/export/deliveries.xlsx")
    assert x.status_code == 200
    ws = load_workbook(io.BytesIO(x.content)).active
    assert ws is not None
    values = list(ws.values)
    assert values[0][0] == "通知编号" and len(values) == len(rows)
    empty = east.get(
        "/export/deliveries.csv", params={"since": "2020-01-01", "until": "2020-01-02"}
    )
    assert len(empty.content.decode("utf-8-sig").splitlines()) == 1
    assert east.get("/export/deliveries.csv", params={"since": "bad"}).status_code == 400


# -- metrics, public paths, schema ---------------------------------------------------------


def test_metrics_for_loopback_or_a_bearer_token(
    county: County, monkeypatch: pytest.MonkeyPatch
) -> None:
    n, _ = county.notice("王庄会议", {"villages": ["east-wang"]})
    county.set_status(
        county.delivery(n.id, "east-wang-spk").id, "delivered", details={"cache_hit": True}
    )
    text = httpx.get(f"{county.web}/metrics").text
    assert 'villagecast_deliveries{action="publish",channel="tv_feed",state="pending"} 1.0' in text
    assert 'villagecast_deliveries{action="publish",channel="speaker",state="delivered"} 1.0' in (
        text
    )
    assert 'villagecast_queue_depth{channel="tv_feed"} 1.0' in text
    assert 'villagecast_synthesis_deliveries{cache="hit"} 1.0' in text
    lag = next(line for line in text.splitlines() if line.startswith("villagecast_broker_lag"))
    assert float(lag.split()[1]) >= 0
    monkeypatch.setenv("VILLAGECAST_METRICS_TOKEN", "s3cret-token")
    assert httpx.get(f"{county.web}/metrics").status_code == 403
    ok = httpx.get(f"{county.web}/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert ok.status_code == 200
    # Not on the public listener at all.
    assert httpx.get(f"{county.feeds}/metrics").status_code == 404


def test_feed_listener_serves_only_public_paths(county: County) -> None:
    assert county.feeds != county.web
    assert httpx.get(f"{county.feeds}/healthz").text == "ok\n"
    feed = httpx.get(f"{county.feeds}/feeds/east-liu.atom")
    assert feed.status_code == 200 and "atom" in feed.headers["content-type"]
    head = httpx.head(f"{county.feeds}/feeds/east-liu.json")
    assert head.status_code == 200 and head.content == b""
    for path in ("/overview", "/login", "/api/v1/overview", "/api/openapi.json", "/static/app.js"):
        r = httpx.get(f"{county.feeds}{path}")
        assert r.status_code == 404, path
    with httpx.Client() as raw:
        for target in (b"/feeds/..%2F..%2Fvillagecast.sqlite", b"/feeds/%252e%252e%252fx.atom"):
            request = httpx.Request("GET", county.web, extensions={"target": target})
            assert raw.send(request).status_code == 404
    # The web listener serves the public paths too (one address is enough behind a proxy).
    assert httpx.get(f"{county.web}/feeds/east-liu.rss").status_code == 200
    assert httpx.get(f"{county.web}/feeds/nowhere.rss").status_code == 404


def test_openapi_schema_is_served_and_pages_send_security_headers(county: County) -> None:
    schema = httpx.get(f"{county.web}/api/openapi.json").json()
    paths = set(schema["paths"])
    assert {
        "/api/v1/overview",
        "/api/v1/notices/{notice_id}",
        "/api/v1/deliveries/{delivery_id}/retry",
        "/api/v1/notices/{notice_id}/withdraw",
        "/api/v1/devices",
        "/api/v1/failures",
        "/export/deliveries.csv",
        "/metrics",
    } <= paths
    page = county.client("east").get("/overview")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-frame-options"] == "DENY"
