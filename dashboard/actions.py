"""What a person can do from the dashboard: retry a failed delivery, withdraw a notice.

Both check the role and the scope first (an id outside the scope is "not found", as if it
did not exist), then call the same store and dispatcher functions as the CLI.
"""

from __future__ import annotations

import logging

from sqlalchemy import func, select

from content_queue.accounts import Action, NotAllowed, Principal
from content_queue.db import Delivery
from content_queue.errors import NotFoundError
from content_queue.i18n import tr
from content_queue.registry import Registry
from content_queue.store import DeliveryView, NoticeView, Store
from dashboard.queries import delivery_in_scope
from dashboard.scope import Scope
from dispatcher.service import Ringer, Withdrawn, withdraw_notice

__all__ = ["retry_delivery", "withdraw"]

log = logging.getLogger(__name__)


def actor_of(principal: Principal) -> str:
    return f"web:{principal.username}"


def _require(principal: Principal, action: Action) -> None:
    if not principal.can(action):
        raise NotAllowed(
            tr(
                "您的账号（{role}）没有这个权限",
                "your account ({role_en}) may not do this",
                role=principal.role.value,
                role_en=principal.role.value,
            )
        )


def retry_delivery(
    delivery_id: int, *, store: Store, scope: Scope, ring: Ringer | None, reason: str = ""
) -> DeliveryView:
    """Move a failed delivery back to pending and ring its worker at once.

    If the broker cannot be reached the delivery is still pending with no doorbell, and
    the sweeper rings for it on its next pass.
    """
    if delivery_in_scope(store, scope, delivery_id) is None:
        raise NotFoundError(tr("投递 {id} 不存在", "delivery {id} does not exist", id=delivery_id))
    _require(scope.principal, Action.RETRY)
    view = store.retry_failed(delivery_id, actor=actor_of(scope.principal), reason=reason)
    if ring is not None:
        try:
            ring({view.kind: [view.id]}, None)
            store.mark_enqueued([view.id])
        except Exception as exc:  # the sweeper rings for it
            log.warning("retry doorbell for delivery %s failed: %s", view.id, type(exc).__name__)
    return view


def withdraw(
    notice_id: int, *, store: Store, scope: Scope, ring: Ringer | None, reason: str = ""
) -> Withdrawn:
    """Withdraw a notice everywhere; a township may only withdraw what went to it alone."""
    with store.session(readonly=True) as s:
        visible = s.scalar(
            select(func.count()).where(Delivery.notice_id == notice_id, scope.deliveries())
        )
        outside = s.scalar(
            select(func.count()).where(
                Delivery.notice_id == notice_id,
                Delivery.action == "publish",
                ~scope.deliveries(),
            )
        )
    if not visible:
        raise NotFoundError(tr("通知 {id} 不存在", "notice {id} does not exist", id=notice_id))
    _require(scope.principal, Action.WITHDRAW)
    if outside:
        raise NotAllowed(
            tr(
                "这条通知也发往了您管辖范围以外的村，撤回会影响它们：请由县级管理员撤回",
                "this notice also went outside your area; a county administrator must withdraw it",
            )
        )
    return withdraw_notice(
        notice_id, store=store, ring=ring, actor=actor_of(scope.principal), reason=reason
    )


# -- review (issue #7) -------------------------------------------------------------------


def awaiting_review(store: Store, registry: Registry, principal: Principal) -> list[NoticeView]:
    """Submitted notices this person may review (all of their villages in scope), oldest
    first; their own are listed too, marked, since they cannot approve them."""
    from dispatcher.review import authorize

    out = []
    for n in reversed(store.notices(limit=500, state="submitted")):
        try:
            authorize(principal, Action.APPROVE, targets=n.targets, registry=registry)
        except NotAllowed:
            continue
        out.append(n)
    return out


def _reviewable(store: Store, registry: Registry, principal: Principal, notice_id: int) -> None:
    if all(n.id != notice_id for n in awaiting_review(store, registry, principal)):
        raise NotFoundError(
            tr("待审核的通知 {id} 不存在", "no notice {id} awaits your review", id=notice_id)
        )


def approve(
    notice_id: int, *, store: Store, registry: Registry, principal: Principal, ring: Ringer | None
) -> NoticeView:
    from dispatcher.review import approve_notice

    _reviewable(store, registry, principal, notice_id)
    done = approve_notice(
        notice_id,
        principal=principal,
        actor=actor_of(principal),
        store=store,
        registry=registry,
        ring=ring,
    )
    return done.notice


def reject(
    notice_id: int, *, store: Store, registry: Registry, principal: Principal, reason: str
) -> NoticeView:
    from dispatcher.review import reject_notice

    _reviewable(store, registry, principal, notice_id)
    return reject_notice(
        notice_id,
        principal=principal,
        actor=actor_of(principal),
        reason=reason,
        store=store,
        registry=registry,
    )
