"""Review before publishing: who may draft, approve, reject, withdraw and correct, where.

Notices whose category needs review (``settings.review_categories``; village finance
and farm subsidy lists by default) go ``submitted`` and reach no channel until another
person approves them (``submitted -> active``, the deliveries are written then), or are
``rejected`` with a reason. An emergency may bypass review with a stated reason, which
the audit log keeps and the township sees. Every action is checked against the acting
person's role and villages (:class:`content_queue.accounts.Principal`).

``principal`` None is the single-operator mode of a one-laptop installation with no
accounts at all: the operator may do everything, and the two-person rule still compares
names (``--author``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from content_queue.accounts import ROLE_LABELS, Action, NotAllowed, Principal
from content_queue.errors import NoticeError, StateError
from content_queue.i18n import Text, tr
from content_queue.models import NoticeDraft, Priority
from content_queue.registry import Registry
from content_queue.settings import Settings
from content_queue.store import NoticeView, Store, Withdrawal
from dispatcher.planner import plan_notice
from dispatcher.service import (
    Ringer,
    Submitted,
    Withdrawn,
    _due,
    _ring_due,
    correct_notice,
    guard_personal_data,
    submit_notice,
    withdraw_notice,
)

__all__ = [
    "ACTION_LABELS",
    "Reviewed",
    "approve_notice",
    "authorize",
    "draft_notice",
    "needs_review",
    "reject_notice",
    "resubmit_notice",
    "review_correction",
    "withdraw_as",
]

ACTION_LABELS: dict[Action, Text] = {
    Action.VIEW: tr("查看", "view"),
    Action.RETRY: tr("重试投递", "retry a delivery"),
    Action.WITHDRAW: tr("撤回通知", "withdraw a notice"),
    Action.DRAFT: tr("起草通知", "draft a notice"),
    Action.APPROVE: tr("审核通知", "review a notice"),
    Action.CORRECT: tr("更正通知", "correct a notice"),
    Action.BYPASS_REVIEW: tr("紧急通知免审发布", "send an emergency without review"),
}


def _villages(targets: dict[str, Any], registry: Registry) -> set[str]:
    return set(
        registry.resolve_villages(
            villages=[str(v) for v in targets.get("villages") or []],
            townships=[str(t) for t in targets.get("townships") or []],
            county=bool(targets.get("county")),
        )
    )


def authorize(
    principal: Principal | None,
    action: Action,
    *,
    targets: dict[str, Any],
    registry: Registry,
) -> None:
    """Refuse, in plain words, an action outside the person's role or villages."""
    if principal is None:
        return
    if not principal.can(action):
        raise NotAllowed(
            tr(
                "您的账号（{role}）不能{action}",
                "your account ({role_en}) may not {action}",
                role=ROLE_LABELS[principal.role],
                role_en=principal.role.value,
                action=ACTION_LABELS[action],
            )
        )
    allowed = principal.village_ids(registry)
    if allowed is None:
        return
    outside = sorted(_villages(targets, registry) - allowed)
    if outside:
        raise NotAllowed(
            tr(
                "您的账号只管辖自己的村（乡镇），不能对这些村{action}：{v}",
                "your account may not {action} for villages outside its scope: {v}",
                action=ACTION_LABELS[action],
                v="、".join(registry.village_name(v) for v in outside[:5]),
            )
        )


def needs_review(draft: NoticeDraft, settings: Settings) -> bool:
    return draft.category.value in settings.review_categories


@dataclass
class Reviewed:
    """What became of a notice: dispatched (with its deliveries) or waiting for review."""

    notice: NoticeView
    submitted: Submitted | None
    """Set when it was dispatched."""
    withdrawal: Withdrawal | None = None
    """The revision a dispatched correction superseded."""

    @property
    def waiting(self) -> bool:
        return self.notice.state in ("draft", "submitted")


def draft_notice(
    draft: NoticeDraft,
    *,
    principal: Principal | None,
    store: Store,
    registry: Registry,
    settings: Settings,
    ring: Ringer | None,
    bypass_reason: str | None = None,
    keep_as_draft: bool = False,
    source: dict[str, Any] | None = None,
) -> Reviewed:
    """Enter a notice: dispatched now, or held for review when its category needs it."""
    authorize(principal, Action.DRAFT, targets=draft.targets.model_dump(), registry=registry)
    if principal is not None:
        draft = draft.model_copy(update={"author": principal.username})
    if bypass_reason is not None:
        if draft.priority != Priority.EMERGENCY:
            raise NoticeError(
                tr(
                    "只有紧急通知可以免审发布",
                    "only an emergency may bypass review",
                )
            )
        if not bypass_reason.strip():
            raise NoticeError(tr("免审发布必须写明理由", "bypassing review needs a stated reason"))
        authorize(
            principal, Action.BYPASS_REVIEW, targets=draft.targets.model_dump(), registry=registry
        )
    review = needs_review(draft, settings) and bypass_reason is None
    if keep_as_draft or review:
        draft = guard_personal_data(draft)
        plan_notice(draft, registry)  # refuse now what could never be sent
        notice, _ = store.add_notice(
            draft,
            [],
            review="draft" if keep_as_draft else "submitted",
            source=dict(source or {}),
        )
        return Reviewed(notice, None)
    extra = {"review_bypassed": bypass_reason} if bypass_reason is not None else {}
    sub = submit_notice(
        draft, store=store, registry=registry, ring=ring, source={**(source or {}), **extra}
    )
    return Reviewed(sub.notice, sub)


def _check_reviewer(principal: Principal | None, notice: NoticeView, *, registry: Registry) -> None:
    authorize(principal, Action.APPROVE, targets=notice.targets, registry=registry)
    if principal is not None and principal.username == notice.author:
        raise NotAllowed(
            tr(
                "不能审核自己起草的通知 {id}：需要另一位审核人（两人原则）",
                "you cannot review notice {id}, which you drafted: another person must",
                id=notice.id,
            )
        )


def approve_notice(
    notice_id: int,
    *,
    principal: Principal | None,
    actor: str,
    store: Store,
    registry: Registry,
    ring: Ringer | None,
    now: datetime | None = None,
) -> Reviewed:
    """Approve a submitted notice and dispatch it (a correction also recalls the revision
    it corrects), all in one transaction."""
    notice = store.notice(notice_id)
    _check_reviewer(principal, notice, registry=registry)
    draft = NoticeDraft.model_validate(
        {
            "title": notice.title,
            "body": notice.body,
            "category": notice.category,
            "priority": notice.priority,
            "targets": notice.targets,
            "channels": notice.channels,
            "table": notice.table,
            "expires_at": notice.expires_at,
        }
    )
    plan = plan_notice(draft, registry)
    approver = principal.username if principal is not None else actor
    approved, rows, withdrawal = store.approve(
        notice_id, plan.deliveries, actor=actor, approver=approver, now=now
    )
    due = _due([*rows, *(withdrawal.recalls if withdrawal else [])])
    rung, err = _ring_due(store, ring, due, what=notice_id)
    sub = Submitted(approved, rows, plan, rung, err, list(plan.warnings))
    return Reviewed(approved, sub, withdrawal)


def reject_notice(
    notice_id: int,
    *,
    principal: Principal | None,
    actor: str,
    reason: str,
    store: Store,
    registry: Registry,
) -> NoticeView:
    if not reason.strip():
        raise NoticeError(tr("驳回必须写明理由", "a rejection needs a reason"))
    notice = store.notice(notice_id)
    _check_reviewer(principal, notice, registry=registry)
    return store.reject(notice_id, actor=actor, reason=reason)


def resubmit_notice(
    notice_id: int, *, principal: Principal | None, actor: str, store: Store, registry: Registry
) -> NoticeView:
    """A draft (or a rejected notice, after its author fixed it by a correction) goes to
    review."""
    notice = store.notice(notice_id)
    authorize(principal, Action.DRAFT, targets=notice.targets, registry=registry)
    return store.submit(notice_id, actor=actor)


def withdraw_as(
    notice_id: int,
    *,
    principal: Principal | None,
    actor: str,
    store: Store,
    registry: Registry,
    ring: Ringer | None,
    reason: str = "",
) -> Withdrawn:
    notice = store.notice(notice_id)
    own_draft = (
        principal is not None
        and notice.state in ("draft", "submitted")
        and notice.author == principal.username
    )
    if not own_draft:
        authorize(principal, Action.WITHDRAW, targets=notice.targets, registry=registry)
    return withdraw_notice(notice_id, store=store, ring=ring, actor=actor, reason=reason)


def review_correction(
    draft: NoticeDraft,
    *,
    principal: Principal | None,
    actor: str,
    store: Store,
    registry: Registry,
    settings: Settings,
    ring: Ringer | None,
    reason: str = "",
) -> Reviewed:
    """A correction: dispatched at once (superseding the old revision), or, when its
    category needs review, held until approved (the old one stays until then)."""
    assert draft.supersedes is not None
    old = store.notice(draft.supersedes)
    authorize(principal, Action.CORRECT, targets=old.targets, registry=registry)
    if principal is not None:
        draft = draft.model_copy(update={"author": principal.username})
    if needs_review(draft, settings):
        draft = guard_personal_data(draft)
        plan_notice(draft, registry)
        if old.state != "active":
            raise StateError(
                tr(
                    "通知 {id} 已不是有效状态，不能更正",
                    "notice {id} is no longer active and cannot be corrected",
                    id=old.id,
                )
            )
        notice, _ = store.add_notice(draft, [], review="submitted")
        return Reviewed(notice, None)
    sub, withdrawal = correct_notice(
        draft, store=store, registry=registry, ring=ring, actor=actor, reason=reason
    )
    return Reviewed(sub.notice, sub, withdrawal)
