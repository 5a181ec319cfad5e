"""The dashboard in English: every page, message and export, chosen per request (``?lang=``,
then the ``vc_lang`` cookie, then VILLAGECAST_LANG), Chinese by default, over real HTTP."""

from __future__ import annotations

import csv
import html
import io
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import httpx
import pytest
from openpyxl import load_workbook

from content_queue.db import Attempt, DeviceCommand
from content_queue.models import build_notice
from content_queue.store import NoticeView, utcnow
from dashboard._lang import parse_lang, server_lang
from dispatcher.service import correct_notice
from tests.dashboard.conftest import PASSWORD, County

# CJK ideographs, radicals, CJK punctuation (、。「」), kana, full-width forms (（），：).
CJK = re.compile(r"[\u2e80-\u9fff\u3000-\u303f\uf900-\ufaff\ufe30-\ufe4f\uff00-\uffef]")
SWITCH = re.compile(r'<span class="lang-switch" id="lang-switch">.*?</span>', re.S)

ERROR_ZH = "设备不认识签名密钥（请给设备下发新的公钥）"  # conftest's County.fail


def leftover_cjk(page: str, data: set[str]) -> list[str]:
    """CJK text left on the page once the data (names, titles, bodies) is taken out,
    with some context each; the language switch names Chinese in Chinese on purpose."""
    text = SWITCH.sub("", page)
    for value in sorted(data, key=len, reverse=True):
        text = text.replace(html.escape(value), "").replace(value, "")
    return [text[max(0, m.start() - 40) : m.end() + 40] for m in CJK.finditer(text)]


class Scene:
    """A township with something on every page: a failed and a retrying delivery with
    attempts and device acks, a withdrawal with its recall, a correction, an offline
    board, notices awaiting review (one the viewer's own)."""

    def __init__(self, county: County) -> None:
        self.county = county
        registry = county.registry
        self.data: set[str] = {t.name for t in registry.townships.values()}
        self.data |= {v.name for v in registry.villages.values()}
        self.data |= {ep.name for ep in registry.endpoints.values() if ep.name}

        self.failing, _ = self._notice("刘庄停水通知", ["east-liu", "east-wang"])
        self.led = county.delivery(self.failing.id, "east-liu-led")
        county.fail(self.led.id)
        spk = county.delivery(self.failing.id, "east-wang-spk")
        county.set_status(
            spk.id,
            "pending",
            attempts=1,
            error_code="-1",
            error_zh="对方系统繁忙",
            error_en="the vendor is busy",
        )
        now = utcnow()
        with county.store.session() as s:
            for number, outcome in ((1, "transient"), (2, "permanent")):
                s.add(
                    Attempt(
                        delivery_id=self.led.id,
                        number=number,
                        worker="w1",
                        started_at=now - timedelta(minutes=10 - number),
                        finished_at=now,
                        outcome=outcome,
                        error_code="device_unknown_key",
                        error_zh=ERROR_ZH,
                        error_en="the device does not know the signing key",
                    )
                )
            s.add(
                DeviceCommand(
                    id="cmd-1",
                    delivery_id=self.led.id,
                    device_id="led-east-liu-01",
                    kind="led.show",
                    issued_at=now,
                    expires_at=now + timedelta(days=1),
                    sync=True,
                    published_at=now,
                    acked_at=now,
                    ack_status="rejected",
                    ack_reason="unknown_key",
                )
            )
        self.withdrawn, _ = self._notice("王庄会议改期", ["east-wang"])
        tv = county.delivery(self.withdrawn.id, "east-wang-tv")
        county.set_status(tv.id, "delivered", sent_at=now, delivered_at=now)
        east = county.client("east")
        assert (
            east.post(
                f"/api/v1/notices/{self.withdrawn.id}/withdraw", json={"reason": "时间改了"}
            ).status_code
            == 200
        )
        self.data.add("时间改了")
        self.old, _ = self._notice("刘庄村民代表会议", ["east-liu"])
        draft = build_notice(
            {
                "title": "刘庄村民代表会议（更正）",
                "body": "改在周日上午9时。",
                "category": "meeting",
                "targets": {"villages": ["east-liu"]},
                "supersedes": self.old.id,
                "revision": 2,
            }
        )
        self.new, _ = correct_notice(
            draft, store=county.store, registry=county.registry, ring=None, actor="t"
        )
        self.data |= {"刘庄村民代表会议（更正）", "改在周日上午9时。"}
        county.store.record_presence(
            device_id="led-east-liu-01",
            state="offline",
            at=now - timedelta(hours=3),
            fresh_boot=True,
        )
        for author in ("east", "liu"):
            title = f"2026年11月村级财务收支公开（{author}）"
            county.store.add_notice(
                build_notice(
                    {
                        "title": title,
                        "body": "本月收支见附表。",
                        "category": "village_finance",
                        "targets": {"villages": ["east-liu"]},
                        "channels": ["tv_feed"],
                        "author": author,
                    }
                ),
                [],
                review="submitted",
            )
            self.data |= {title, "本月收支见附表。"}

    def _notice(self, title: str, villages: list[str]) -> tuple[NoticeView, list[int]]:
        n, ids = self.county.notice(title, {"villages": villages})
        self.data |= {title, "定于本周六上午9时在村委会会议室召开村民代表会议。"}
        return n, ids

    def pages(self) -> list[str]:
        return [
            "/overview",
            "/overview?partial=1",
            f"/notices/{self.failing.id}",
            f"/notices/{self.failing.id}?partial=1",
            f"/notices/{self.withdrawn.id}",
            f"/notices/{self.old.id}",
            "/failures",
            "/failures?partial=1",
            "/devices",
            "/devices?partial=1",
            "/devices/led-east-liu-01",
            "/devices/spk-east-wang-01",
            "/review",
            "/export",
        ]


@pytest.fixture
def scene(county: County) -> Scene:
    return Scene(county)


def test_every_page_in_english_has_no_chinese_left_but_the_data(
    county: County, scene: Scene
) -> None:
    east = county.client("east")
    first = east.get("/overview", params={"lang": "en"})
    assert first.status_code == 200
    # Chosen once, remembered by the cookie for every later page.
    assert east.cookies["vc_lang"] == "en"
    cookie = first.headers["set-cookie"].lower()
    assert "samesite=lax" in cookie and "path=/" in cookie and "httponly" in cookie
    for path in scene.pages():
        r = east.get(path)
        assert r.status_code == 200, path
        if "partial" not in path:
            assert '<html lang="en">' in r.text, path
            assert 'lang="zh-CN" hreflang="zh-CN">中文</a>' in r.text, path
        assert leftover_cjk(r.text, scene.data) == [], path
    # What the scene put there really is on the pages, in English.
    notice = east.get(f"/notices/{scene.failing.id}").text
    assert "Suggested fix: " in notice and "signing key" in notice
    assert "2 attempts" in notice and "(re-sync)" in notice and 'class="retry"' in notice
    # Each attempt's outcome in words, not the stored word ("transient", "permanent").
    assert "· failed for now, will retry ·" in notice and "· failed ·" in notice
    assert "Withdraw notice" in notice and "Delivered/acked" in notice
    assert "Recall (clear the board" in east.get(f"/notices/{scene.withdrawn.id}").text
    assert "revision 2" in east.get(f"/notices/{scene.old.id}").text
    failures = east.get("/failures").text
    assert "Failed deliveries (1)" in failures and "Being retried (1)" in failures
    assert "the vendor is busy" in failures and "3 h 0 min" in failures
    review = east.get("/review").text
    assert "You drafted this" in review and "Approve and send" in review
    assert "Village finance" in review
    device = east.get("/devices/led-east-liu-01").text
    assert "Restarted with empty storage" in device and "offline for 3 h" in device


def test_chinese_stays_the_default(county: County, scene: Scene) -> None:
    east = county.client("east")
    for path in scene.pages():
        r = east.get(path)
        assert r.status_code == 200, path
        if "partial" not in path:
            assert '<html lang="zh-CN">' in r.text, path
            assert 'lang="en" hreflang="en">English</a>' in r.text, path
    assert "vc_lang" not in east.cookies
    assert "投递总览" in east.get("/overview").text
    assert "建议：" in east.get("/failures").text
    assert "3 小时 0 分" in east.get("/failures").text
    notice = east.get(f"/notices/{scene.failing.id}").text
    assert "· 暂时失败，稍后重试 ·" in notice and "· 失败 ·" in notice
    assert "transient" not in notice and "permanent" not in notice
    # English, then Chinese again on request; the cookie follows.
    assert "Delivery overview" in east.get("/overview", params={"lang": "en"}).text
    back = east.get("/overview", params={"lang": "zh"})
    assert "投递总览" in back.text and east.cookies["vc_lang"] == "zh"
    assert "需要处理的问题" in east.get("/failures").text
    # An unknown value changes nothing.
    assert '<html lang="zh-CN">' in east.get("/overview", params={"lang": "fr"}).text


def test_the_switch_keeps_the_filters_and_drops_the_flash(county: County, scene: Scene) -> None:
    east = county.client("east")
    page = east.get("/overview", params={"village": "east-liu", "msg": "已退出"}).text
    href = re.search(r'<a href="([^"]+)" lang="en" hreflang="en">English</a>', page)
    assert href is not None
    url = html.unescape(href.group(1))
    assert url == "/overview?village=east-liu&lang=en"


def test_the_cookie_sticks_across_redirects_and_login(county: County) -> None:
    c = county.client()
    r = c.get("/overview", params={"lang": "en"})
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/overview"
    assert c.cookies["vc_lang"] == "en"
    login = c.get(r.headers["location"])
    assert '<html lang="en">' in login.text and ">Sign in</button>" in login.text
    assert leftover_cjk(login.text, set()) == []
    token = login.text.split('name="csrf_token" value="')[1].split('"')[0]
    wrong = c.post(
        "/login",
        data={"username": "east", "password": "nope-nope", "csrf_token": token, "next": "/x"},
    )
    assert wrong.status_code == 303
    again = c.get(wrong.headers["location"])
    assert "Wrong username or password" in again.text
    assert leftover_cjk(again.text, set()) == []
    token = again.text.split('name="csrf_token" value="')[1].split('"')[0]
    ok = c.post(
        "/login",
        data={"username": "east", "password": PASSWORD, "csrf_token": token, "next": "/failures"},
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/failures"
    page = c.get("/failures")
    assert '<html lang="en">' in page.text and "Problems that need a person" in page.text
    csrf = page.text.split('name="csrf_token" value="')[1].split('"')[0]
    out = c.post("/logout", data={"csrf_token": csrf})
    assert out.status_code == 303
    assert "Signed out" in c.get(out.headers["location"]).text


def test_flash_messages_after_an_action_follow_the_language(county: County, scene: Scene) -> None:
    east = county.client("east")
    east.get("/overview", params={"lang": "en"})
    page = east.get(f"/notices/{scene.failing.id}").text
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    r = east.post(f"/deliveries/{scene.led.id}/retry", data={"csrf_token": token})
    assert r.status_code == 303
    shown = east.get(r.headers["location"]).text
    assert f"Delivery {scene.led.id} is being sent again" in shown
    assert leftover_cjk(shown, scene.data) == []
    # Refused (already pending): the reason in English on the page it comes back to.
    r = east.post(f"/deliveries/{scene.led.id}/retry", data={"csrf_token": token})
    shown = east.get(r.headers["location"]).text
    assert "only a failed delivery can be retried" in shown
    assert leftover_cjk(shown, scene.data) == []
    r = east.post(
        f"/notices/{scene.failing.id}/withdraw", data={"csrf_token": token, "reason": "wrong"}
    )
    shown = east.get(r.headers["location"]).text
    assert "Withdrawn: " in shown and leftover_cjk(shown, scene.data) == []
    # A form without its CSRF token: an English error page, still 403.
    refused = east.post(f"/deliveries/{scene.led.id}/retry", data={})
    assert refused.status_code == 403 and "CSRF token missing or wrong" in refused.text
    assert leftover_cjk(refused.text, set()) == []


def test_error_pages_in_both_languages(county: County) -> None:
    east = county.client("east")
    zh = east.get("/notices/99999")
    assert zh.status_code == 404 and "通知 99999 不存在" in zh.text
    assert '<html lang="zh-CN">' in zh.text
    en = east.get("/notices/99999", params={"lang": "en"})
    assert en.status_code == 404 and "notice 99999 does not exist" in en.text
    assert '<html lang="en">' in en.text and leftover_cjk(en.text, set()) == []
    bad = east.get("/overview", params={"since": "soon"})
    assert bad.status_code == 400 and "YYYY-MM-DD" in bad.text
    assert leftover_cjk(bad.text, set()) == []  # the cookie from the last request
    assert "日期格式应为" in east.get("/export/deliveries.csv?since=soon&lang=zh").text


def test_a_malformed_id_is_a_page_not_a_json_dump(county: County) -> None:
    east = county.client("east")
    zh = east.get("/notices/abc", params={"lang": "zh"})
    assert zh.status_code == 404 and "没有这个页面" in zh.text
    assert zh.headers["content-type"].startswith("text/html")
    en = east.get("/notices/abc", params={"lang": "en"})
    assert en.status_code == 404 and "no such page" in en.text
    assert leftover_cjk(en.text, set()) == []
    # The JSON API keeps FastAPI's documented validation body.
    api = east.get("/api/v1/notices/abc")
    assert api.status_code == 422 and isinstance(api.json()["detail"], list)


def test_api_keeps_detail_and_offers_english_labels(county: County, scene: Scene) -> None:
    east = county.client("east")
    # detail stays Chinese (clients rely on it) with detail_en beside it, whatever the lang.
    missing = east.get("/api/v1/notices/99999", params={"lang": "en"})
    assert missing.status_code == 404
    assert missing.json() == {
        "detail": "通知 99999 不存在",
        "detail_en": "notice 99999 does not exist",
    }
    assert county.client().get("/api/v1/overview").json() == {
        "detail": "请先登录（login required）",
        "detail_en": "login required",
    }
    csrf = county.client("east")
    csrf.headers.pop("X-CSRF-Token")
    refused = csrf.post(f"/api/v1/deliveries/{scene.led.id}/retry").json()
    assert refused["detail"] == "CSRF 校验失败：请刷新页面后再提交（CSRF token missing or wrong）"
    assert refused["detail_en"].startswith("CSRF token missing or wrong")
    # Labels in both languages; the one made-up name follows ?lang or Accept-Language
    # (a fresh session: the ?lang=en above left a cookie, which an API call honours too).
    east = county.client("east")
    detail = east.get(f"/api/v1/notices/{scene.failing.id}").json()
    assert (detail["category_zh"], detail["category_en"]) == ("会议通知", "Meetings")
    assert (detail["state_zh"], detail["state_en"]) == ("有效", "active")
    assert (detail["priority_zh"], detail["priority_en"]) == ("普通", "routine")
    led = next(d for d in detail["deliveries"] if d["id"] == scene.led.id)
    assert (led["status_zh"], led["status_en"]) == ("失败", "failed")
    assert (led["kind_zh"], led["kind_en"]) == ("LED 屏", "LED board")
    oa = {d["village"] for d in detail["deliveries"] if d["village_id"] is None}
    assert oa == {"公众号"}
    for params, headers in (({"lang": "en"}, {}), ({}, {"Accept-Language": "en-GB,en;q=0.9"})):
        en = east.get(f"/api/v1/notices/{scene.failing.id}", params=params, headers=headers)
        assert {d["village"] for d in en.json()["deliveries"] if d["village_id"] is None} == {
            "official account"
        }
    zh_first = east.get(
        "/api/v1/overview", headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}
    ).json()
    assert {v["name"] for v in zh_first["villages"] if v["village_id"] is None} == {
        "公众号（覆盖多个村）"
    }
    assert all(n["category_en"] for n in zh_first["notices"])
    schema = httpx.get(f"{county.web}/api/openapi.json").json()
    for path in ("/api/v1/overview", "/api/v1/notices/{notice_id}", "/export/deliveries.csv"):
        params = {p["name"] for p in schema["paths"][path]["get"]["parameters"]}
        assert "lang" in params, path


def test_exports_in_english(county: County, scene: Scene) -> None:
    east = county.client("east")
    r = east.get("/export/deliveries.csv", params={"lang": "en"})
    assert r.status_code == 200
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0] == [
        "Notice",
        "Title",
        "Category",
        "Published at",
        "Township",
        "Village",
        "Channel",
        "Endpoint",
        "Action",
        "Status",
        "Attempts",
        "Sent at",
        "Delivered at",
        "Error code",
        "Error",
        "Delivery",
    ]
    by_delivery = {row[15]: row for row in rows[1:]}
    led = by_delivery[str(scene.led.id)]
    assert led[6] == "LED board" and led[8] == "publish" and led[9] == "failed"
    assert led[14] == "the device does not know the signing key"
    assert any(row[8] == "recall" for row in rows[1:])
    # Nothing Chinese but the data: titles, places, the official account's own name.
    for row in rows[1:]:
        assert leftover_cjk("\n".join(row), scene.data) == [], row
    x = east.get("/export/deliveries.xlsx")  # the cookie now says English
    wb = load_workbook(io.BytesIO(x.content))
    ws = wb.active
    assert ws is not None and ws.title == "Deliveries"
    assert next(iter(ws.values))[:3] == ("Notice", "Title", "Category")
    zh = east.get("/export/deliveries.csv", params={"lang": "zh"})
    assert zh.content.decode("utf-8-sig").startswith("通知编号,标题,类别")


def test_server_default_is_villagecast_lang_only(
    county: County, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANG", "en_US.UTF-8")
    monkeypatch.setenv("LC_ALL", "en_US.UTF-8")
    assert server_lang(None) == "zh"  # the machine's locale is not the reader's
    assert server_lang("en") == "en" and server_lang("zh_CN.UTF-8") == "zh"
    assert [parse_lang(v) for v in ("en-US", "EN", "zh-Hans", "fr", "", None)] == [
        "en",
        "en",
        "zh",
        None,
        None,
        None,
    ]
    county.settings.lang = "en"
    east = county.client("east")
    assert '<html lang="en">' in east.get("/overview").text
    assert '<html lang="zh-CN">' in east.get("/overview", params={"lang": "zh"}).text


def test_concurrent_requests_never_see_each_others_language(county: County) -> None:
    county.notice("刘庄会议", {"villages": ["east-liu"]})
    base = county.web
    login = httpx.post(f"{base}/api/v1/login", json={"username": "east", "password": PASSWORD})
    session = login.cookies["vc_session"]

    def fetch(i: int) -> tuple[str, str]:
        lang = "en" if i % 2 else "zh"
        r = httpx.get(f"{base}/overview", params={"lang": lang}, cookies={"vc_session": session})
        return lang, r.text

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(fetch, range(40)))
    for lang, text in results:
        if lang == "en":
            assert '<html lang="en">' in text and "投递总览" not in text
        else:
            assert '<html lang="zh-CN">' in text and "Delivery overview" not in text
