"""Review before publishing: the permission matrix, the two-person rule, emergency bypass,
and the whole flow from the command line with real accounts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import app
from content_queue.accounts import Action, NotAllowed, Principal, Role
from content_queue.errors import NoticeError
from content_queue.models import build_notice
from content_queue.registry import Registry, load_registry
from content_queue.settings import Settings, get_settings, reset_settings
from content_queue.store import Store
from dispatcher import review
from dispatcher.service import open_store

PEOPLE = {
    "secretary": Principal(1, "liu-kuaiji", "刘会计", Role.SECRETARY, villages=("east-liu",)),
    "reviewer": Principal(2, "liu-jiandu", "王委员", Role.REVIEWER, villages=("east-liu",)),
    "officer": Principal(3, "east-officer", "张干事", Role.TOWNSHIP_OFFICER, township_id="east"),
    "admin": Principal(4, "county-admin", "县管理员", Role.COUNTY_ADMIN),
}
ACTIONS = [Action.DRAFT, Action.APPROVE, Action.WITHDRAW, Action.CORRECT, Action.BYPASS_REVIEW]
# Who may do what for a village in their own scope (east-liu).
IN_SCOPE = {
    "secretary": {Action.DRAFT, Action.BYPASS_REVIEW},
    "reviewer": {Action.APPROVE},
    "officer": set(ACTIONS),
    "admin": set(ACTIONS),
}


@pytest.fixture
def on(home: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("VILLAGECAST_REVIEW_CATEGORIES", '["village_finance", "farm_subsidy"]')
    reset_settings()
    return get_settings()


@pytest.fixture
def registry(on: Settings) -> Registry:
    return load_registry(on.devices)


@pytest.mark.parametrize("who", list(PEOPLE))
@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("village", ["east-liu", "west-zhao"])
def test_permission_matrix(registry: Registry, who: str, action: Action, village: str) -> None:
    allowed = action in IN_SCOPE[who] and (village == "east-liu" or who == "admin")
    targets = {"villages": [village]}
    if allowed:
        review.authorize(PEOPLE[who], action, targets=targets, registry=registry)
    else:
        with pytest.raises(NotAllowed) as err:
            review.authorize(PEOPLE[who], action, targets=targets, registry=registry)
        assert err.value.render("zh").startswith("您的账号")


def _finance(**over: Any) -> Any:
    data = {
        "title": "2026年11月村级财务收支公开",
        "body": "本月收支情况见附表。",
        "category": "village_finance",
        "targets": {"villages": ["east-liu"]},
        "channels": ["tv_feed"],
        **over,
    }
    return build_notice(data)


def _enter(draft: Any, who: str | None, on: Settings, registry: Registry, **kw: Any) -> Any:
    return review.draft_notice(
        draft,
        principal=PEOPLE[who] if who else None,
        store=open_store(on),
        registry=registry,
        settings=on,
        ring=None,
        **kw,
    )


def test_finance_waits_for_a_second_person(on: Settings, registry: Registry) -> None:
    store: Store = open_store(on)
    entered = _enter(_finance(), "secretary", on, registry)
    assert entered.waiting and entered.notice.state == "submitted"
    assert store.deliveries(entered.notice.id) == []  # nothing can go out yet
    assert entered.notice.author == "liu-kuaiji"
    # A secretary may not review at all.
    with pytest.raises(NotAllowed, match="may not review"):
        review.approve_notice(
            entered.notice.id,
            principal=PEOPLE["secretary"],
            actor="liu-kuaiji",
            store=store,
            registry=registry,
            ring=None,
        )
    done = review.approve_notice(
        entered.notice.id,
        principal=PEOPLE["reviewer"],
        actor="liu-jiandu",
        store=store,
        registry=registry,
        ring=None,
    )
    assert done.notice.state == "active"
    assert [d.status for d in store.deliveries(entered.notice.id)] == ["pending"]
    actions = [e["action"] for e in store.audit_entries(notice_id=entered.notice.id)]
    assert actions == ["notice.add", "notice.submit", "notice.approve", "notice.dispatch"]


def test_an_officer_cannot_approve_what_they_drafted(on: Settings, registry: Registry) -> None:
    store = open_store(on)
    entered = _enter(_finance(), "officer", on, registry)
    with pytest.raises(NotAllowed, match="drafted") as err:
        review.approve_notice(
            entered.notice.id,
            principal=PEOPLE["officer"],
            actor="east-officer",
            store=store,
            registry=registry,
            ring=None,
        )
    assert "两人原则" in err.value.render("zh")
    assert store.notice(entered.notice.id).state == "submitted"


def test_the_store_enforces_two_persons_too(on: Settings, registry: Registry) -> None:
    store = open_store(on)
    entered = _enter(_finance(author="zhang"), None, on, registry)
    with pytest.raises(Exception, match="another person"):
        store.approve(entered.notice.id, [], actor="zhang")
    assert store.notice(entered.notice.id).state == "submitted"


def test_rejection_needs_a_reason_and_sends_nothing(on: Settings, registry: Registry) -> None:
    store = open_store(on)
    entered = _enter(_finance(), "secretary", on, registry)
    with pytest.raises(NoticeError):
        review.reject_notice(
            entered.notice.id,
            principal=PEOPLE["reviewer"],
            actor="liu-jiandu",
            reason=" ",
            store=store,
            registry=registry,
        )
    n = review.reject_notice(
        entered.notice.id,
        principal=PEOPLE["reviewer"],
        actor="liu-jiandu",
        reason="支出第3行金额与凭证不符",
        store=store,
        registry=registry,
    )
    assert n.state == "rejected" and store.deliveries(n.id) == []
    (entry,) = store.audit_entries(notice_id=n.id, action="notice.reject")
    assert entry["details"]["reason"] == "支出第3行金额与凭证不符"


def test_emergency_bypass_is_recorded_and_only_for_emergencies(
    on: Settings, registry: Registry
) -> None:
    store = open_store(on)
    with pytest.raises(NoticeError, match="emergency"):
        _enter(_finance(), "secretary", on, registry, bypass_reason="来不及")
    urgent = _finance(category="village_finance", priority="emergency", title="紧急：账户冻结")
    with pytest.raises(NoticeError, match="reason"):
        _enter(urgent, "secretary", on, registry, bypass_reason="  ")
    entered = _enter(urgent, "secretary", on, registry, bypass_reason="银行通知今日必须公示")
    assert entered.notice.state == "active" and entered.submitted is not None
    (entry,) = store.audit_entries(notice_id=entered.notice.id, action="notice.add")
    assert entry["details"]["review_bypassed"] == "银行通知今日必须公示"
    with pytest.raises(NotAllowed):
        _enter(urgent, "reviewer", on, registry, bypass_reason="x")


def test_categories_without_review_go_straight_out(on: Settings, registry: Registry) -> None:
    entered = _enter(_finance(category="meeting", title="开会"), "secretary", on, registry)
    assert entered.notice.state == "active" and entered.submitted is not None


def test_correction_under_review_keeps_the_old_revision_until_approved(
    on: Settings, registry: Registry
) -> None:
    store = open_store(on)
    first = _enter(_finance(), "secretary", on, registry)
    review.approve_notice(
        first.notice.id,
        principal=PEOPLE["reviewer"],
        actor="liu-jiandu",
        store=store,
        registry=registry,
        ring=None,
    )
    fix = _finance(
        body="更正：本月收支见附表（第3行已更正）。", supersedes=first.notice.id, revision=2
    )
    corrected = review.review_correction(
        fix,
        principal=PEOPLE["officer"],
        actor="east-officer",
        store=store,
        registry=registry,
        settings=on,
        ring=None,
    )
    assert corrected.waiting and store.notice(first.notice.id).state == "active"
    done = review.approve_notice(
        corrected.notice.id,
        principal=PEOPLE["reviewer"],
        actor="liu-jiandu",
        store=store,
        registry=registry,
        ring=None,
    )
    assert done.withdrawal is not None and store.notice(first.notice.id).state == "superseded"
    assert len(done.withdrawal.recalls) == 0  # the first one never left 'pending' here


runner = CliRunner()


def _cli(*args: str, stdin: str | None = None) -> Any:
    return runner.invoke(app, list(args), input=stdin)


def test_cli_flow_with_accounts(on: Settings) -> None:
    pw = "Cun-wu-gong-kai-2026"
    for user, role in (("liu-kuaiji", "secretary"), ("liu-jiandu", "reviewer")):
        r = _cli(
            "users",
            "add",
            user,
            "--role",
            role,
            "--village",
            "east-liu",
            "--password-stdin",
            stdin=pw + "\n",
        )
        assert r.exit_code == 0, r.output
    args = [
        "notice",
        "add",
        "--title",
        "11月财务公开",
        "--body",
        "见附表。",
        "--category",
        "village_finance",
        "--village",
        "east-liu",
        "--channel",
        "tv_feed",
    ]
    refused = _cli(*args)
    assert refused.exit_code == 2 and "请先登录" in refused.output
    assert _cli("login", "liu-kuaiji", "--password-stdin", stdin=pw + "\n").exit_code == 0
    session = on.home / "cli-session"
    assert session.stat().st_mode & 0o777 == 0o600
    added = _cli(*args)
    assert added.exit_code == 0 and "已提交审核" in added.output, added.output
    nid = json.loads(_cli("notice", "list", "--json").output)[0]["id"]
    own = _cli("notice", "approve", str(nid))
    assert own.exit_code == 2 and "不能审核通知" in own.output
    assert _cli("logout").exit_code == 0 and not session.exists()
    assert _cli("login", "liu-jiandu", "--password-stdin", stdin=pw + "\n").exit_code == 0
    ok = _cli("notice", "approve", str(nid), "--json")
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["state"] == "active" and [d["status"] for d in data["deliveries"]] == ["pending"]
    bad = _cli("login", "liu-jiandu", "--password-stdin", stdin="wrong-password\n")
    assert bad.exit_code == 2 and "密码不对" in bad.output
