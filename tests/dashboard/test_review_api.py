"""Review in the dashboard: who sees what awaits review, approve, reject, the two-person
rule and CSRF, over real HTTP."""

from __future__ import annotations

from content_queue.models import build_notice
from content_queue.store import NoticeView
from tests.dashboard.conftest import County


def _submitted(county: County, *, author: str, village: str = "east-liu") -> NoticeView:
    draft = build_notice(
        {
            "title": "2026年11月村级财务收支公开",
            "body": "本月收支见附表。",
            "category": "village_finance",
            "targets": {"villages": [village]},
            "channels": ["tv_feed"],
            "author": author,
        }
    )
    notice, _ = county.store.add_notice(draft, [], review="submitted")
    return notice


def test_reviewer_sees_approves_and_it_goes_out(county: County) -> None:
    n = _submitted(county, author="liu")
    reviewer = county.client("liu-reviewer")
    listed = reviewer.get("/api/v1/review").json()
    assert [i["id"] for i in listed] == [n.id] and listed[0]["author"] == "liu"
    page = reviewer.get("/review").text
    assert "审核通过并发出" in page and n.title in page
    r = reviewer.post(f"/api/v1/notices/{n.id}/approve")
    assert r.status_code == 200 and r.json() == {"notice_id": n.id, "state": "active"}
    assert [d.status for d in county.store.deliveries(n.id)] == ["pending"]
    assert county.rings.calls == [{"tv_feed": [d.id for d in county.store.deliveries(n.id)]}]
    assert reviewer.get("/api/v1/review").json() == []


def test_author_cannot_approve_and_others_cannot_see(county: County) -> None:
    n = _submitted(county, author="east")
    east = county.client("east")
    # Listed (marked as theirs on the page) but refused: another person must review.
    assert [i["id"] for i in east.get("/api/v1/review").json()] == [n.id]
    assert "您起草的通知，须由他人审核" in east.get("/review").text
    r = east.post(f"/api/v1/notices/{n.id}/approve")
    assert r.status_code in (403, 409), r.text
    assert county.store.notice(n.id).state == "submitted"
    # Another township's officer and a secretary never see it: 404 like a missing id.
    for who in ("west", "liu"):
        c = county.client(who)
        assert c.get("/api/v1/review").json() == []
        assert c.post(f"/api/v1/notices/{n.id}/approve").status_code == 404


def test_reject_needs_a_reason_and_csrf(county: County) -> None:
    n = _submitted(county, author="liu")
    reviewer = county.client("liu-reviewer")
    assert reviewer.post(f"/api/v1/notices/{n.id}/reject", json={"reason": " "}).status_code in (
        400,
        422,
    )
    no_csrf = county.client("liu-reviewer")
    no_csrf.headers.pop("X-CSRF-Token")
    assert no_csrf.post(f"/api/v1/notices/{n.id}/reject", json={"reason": "x"}).status_code == 403
    r = reviewer.post(f"/api/v1/notices/{n.id}/reject", json={"reason": "支出第3行与凭证不符"})
    assert r.status_code == 200 and r.json()["state"] == "rejected"
    assert county.store.deliveries(n.id) == []
