"""What the dispatcher does, as plain functions the CLI, the tasks and the tests all call."""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from channels.base import (
    Channel,
    ChannelError,
    ContentError,
    Deferred,
    DeliveryContext,
    PermanentError,
    SendResult,
    TransientError,
    get_channel,
)
from content_queue.cap import ImportedAlert, parse_alert
from content_queue.doorbells import doorbells_taken
from content_queue.doorbells import note_doorbell_taken as note_taken
from content_queue.errors import (
    ConfigError,
    NotFoundError,
    NoticeError,
    StateError,
    VillagecastError,
)
from content_queue.i18n import Text, tr
from content_queue.models import NoticeDraft, NoticeTable
from content_queue.privacy import scan_notice
from content_queue.registry import AnyEndpoint, Registry, load_registry
from content_queue.settings import Settings
from content_queue.store import (
    Claim,
    DeliveryView,
    NoticeView,
    Outcome,
    Store,
    SweepReport,
    Withdrawal,
    utcnow,
)
from dispatcher.planner import Plan, plan_notice

__all__ = [
    "CapImport",
    "Ringer",
    "Submitted",
    "Withdrawn",
    "backoff_seconds",
    "correct_notice",
    "guard_personal_data",
    "import_cap",
    "open_store",
    "process_deliveries",
    "registry_cache",
    "submit_notice",
    "sweep_once",
    "withdraw_notice",
    "worker_name",
]

log = logging.getLogger(__name__)

Ringer = Callable[[Mapping[str, Sequence[int]], float | None], object]
"""Rings doorbells for delivery ids by kind, with an optional countdown in seconds."""


def open_store(settings: Settings) -> Store:
    settings.ensure_home()
    return Store.open(settings.resolved_database_url)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _RegistryCache:
    """devices.yaml, reloaded when the file changes (workers run for weeks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cached: dict[Path, tuple[float, Registry]] = {}

    def get(self, path: Path) -> Registry:
        path = path.resolve()
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = -1.0
        with self._lock:
            hit = self._cached.get(path)
            if hit is not None and hit[0] == mtime:
                return hit[1]
        registry = load_registry(path)
        with self._lock:
            self._cached[path] = (mtime, registry)
        return registry


registry_cache = _RegistryCache()


@dataclass
class Submitted:
    notice: NoticeView
    deliveries: list[DeliveryView]
    plan: Plan
    rung: bool
    ring_error: Text | None = None
    warnings: list[Text] = field(default_factory=list)


def submit_notice(
    draft: NoticeDraft,
    *,
    store: Store,
    registry: Registry,
    ring: Ringer | None,
    now: datetime | None = None,
    source: dict[str, Any] | None = None,
) -> Submitted:
    """Plan, store (one transaction), then ring. A broker failure loses nothing."""
    draft = guard_personal_data(draft)
    plan = plan_notice(draft, registry)
    notice, deliveries = store.add_notice(draft, plan.deliveries, now=now, source=source)
    rung, ring_error = _ring_due(store, ring, _due(deliveries), what=notice.id)
    return Submitted(notice, deliveries, plan, rung, ring_error, list(plan.warnings))


@dataclass
class Withdrawn:
    withdrawal: Withdrawal
    rung: bool
    ring_error: Text | None = None


def withdraw_notice(
    notice_id: int,
    *,
    store: Store,
    ring: Ringer | None,
    actor: str,
    reason: str = "",
    now: datetime | None = None,
) -> Withdrawn:
    """Withdraw a notice everywhere: cancel what has not gone out, recall what has."""
    withdrawal = store.withdraw(notice_id, actor=actor, reason=reason, now=now)
    rung, ring_error = _ring_due(store, ring, _due(withdrawal.recalls), what=notice_id)
    return Withdrawn(withdrawal, rung, ring_error)


def correct_notice(
    draft: NoticeDraft,
    *,
    store: Store,
    registry: Registry,
    ring: Ringer | None,
    actor: str,
    reason: str = "",
    now: datetime | None = None,
) -> tuple[Submitted, Withdrawal]:
    """Send a corrected revision and recall the one it supersedes (one transaction)."""
    draft = guard_personal_data(draft)
    plan = plan_notice(draft, registry)
    notice, deliveries, withdrawal = store.correct_notice(
        draft, plan.deliveries, actor=actor, reason=reason, now=now
    )
    due = _due([*deliveries, *withdrawal.recalls])
    rung, ring_error = _ring_due(store, ring, due, what=notice.id)
    submitted = Submitted(notice, deliveries, plan, rung, ring_error, list(plan.warnings))
    return submitted, withdrawal


@dataclass
class CapImport:
    alert: ImportedAlert
    action: str
    """``added``, ``corrected`` or ``withdrawn``."""
    notice_id: int
    submitted: Submitted | None = None
    withdrawn: Withdrawn | None = None


def import_cap(
    data: bytes,
    *,
    store: Store,
    registry: Registry,
    ring: Ringer | None,
    actor: str,
    now: datetime | None = None,
) -> CapImport:
    """Turn an incoming CAP 1.2 alert into a notice, a correction or a withdrawal."""
    alert = parse_alert(data, registry=registry, author=actor)
    source = {"cap_identifier": alert.identifier, "cap_sender": alert.sender}
    if store.notice_id_for_source("cap_identifier", alert.identifier) is not None:
        raise StateError(
            tr(
                "这条 CAP 警报（{id}）已经导入过",
                "this CAP alert ({id}) was imported already",
                id=alert.identifier,
            )
        )
    earlier = next(
        (
            nid
            for ref in alert.references
            if (nid := store.notice_id_for_source("cap_identifier", ref)) is not None
        ),
        None,
    )
    if alert.msg_type == "Cancel":
        if earlier is None:
            raise NotFoundError(
                tr(
                    "要取消的警报（{refs}）没有导入过，无需撤回",
                    "the alert to cancel ({refs}) was never imported; nothing to withdraw",
                    refs=", ".join(alert.references),
                )
            )
        done = withdraw_notice(
            earlier, store=store, ring=ring, actor=actor, reason=f"CAP Cancel {alert.identifier}"
        )
        return CapImport(alert, "withdrawn", earlier, withdrawn=done)
    assert alert.draft is not None
    if alert.msg_type == "Update" and earlier is not None:
        old = store.notice(earlier)
        if old.state == "active":
            draft = alert.draft.model_copy(
                update={"supersedes": old.id, "revision": old.revision + 1}
            )
            draft = guard_personal_data(draft)
            plan = plan_notice(draft, registry)
            notice, rows, withdrawal = store.correct_notice(
                draft,
                plan.deliveries,
                actor=actor,
                reason=f"CAP Update {alert.identifier}",
                now=now,
                source=source,
            )
            rung, err = _ring_due(store, ring, _due([*rows, *withdrawal.recalls]), what=notice.id)
            sub = Submitted(notice, rows, plan, rung, err, list(plan.warnings))
            return CapImport(alert, "corrected", notice.id, submitted=sub)
    draft = guard_personal_data(alert.draft)
    plan = plan_notice(draft, registry)
    notice, rows = store.add_notice(draft, plan.deliveries, now=now, source=source)
    rung, err = _ring_due(store, ring, _due(rows), what=notice.id)
    sub = Submitted(notice, rows, plan, rung, err, list(plan.warnings))
    return CapImport(alert, "added", notice.id, submitted=sub)


def guard_personal_data(draft: NoticeDraft) -> NoticeDraft:
    """Nothing with a resident ID, mobile or bank card number reaches a public channel:
    the notice is refused with each finding named (masked), or masked when asked."""
    scan = scan_notice(draft.title, draft.body, draft.table.model_dump() if draft.table else None)
    if not scan.findings:
        return draft
    if draft.personal_data == "mask":
        return draft.model_copy(
            update={
                "title": scan.title,
                "body": scan.body,
                "table": NoticeTable(**scan.table) if scan.table is not None else None,
            }
        )
    raise NoticeError(
        tr(
            "通知含有 {n} 处个人信息，公开前必须处理：请删除或修改，"
            "或用 --mask-personal-data 按公示惯例打码（如 138****1234）",
            "the notice holds {n} piece(s) of personal data: remove them, or use "
            "--mask-personal-data to mask them in the published style (e.g. 138****1234)",
            n=len(scan.findings),
        ),
        details=[f.describe() for f in scan.findings],
    )


def _due(deliveries: Sequence[DeliveryView]) -> dict[str, list[int]]:
    due: dict[str, list[int]] = {}
    for d in deliveries:
        if d.status == "pending":
            due.setdefault(d.kind, []).append(d.id)
    return due


def _ring_due(
    store: Store, ring: Ringer | None, due: dict[str, list[int]], *, what: int
) -> tuple[bool, Text | None]:
    """Ring the workers for what is due now. A broker failure loses nothing: the rows are
    in the store and the sweeper rings for them later."""
    if not due or ring is None:
        return False, None
    try:
        ring(due, None)
        store.mark_enqueued([i for ids in due.values() for i in ids])
    except Exception as exc:  # any broker failure: the sweeper will ring later
        log.warning("doorbell failed for notice %s: %s", what, type(exc).__name__)
        return False, tr(
            "通知已保存，但暂时无法通知工作进程（{e}）；工作进程启动后会自动发送",
            "the notice is saved, but the worker queue cannot be reached ({e}); "
            "it will be sent once a worker runs",
            e=type(exc).__name__,
        )
    return True, None


def backoff_seconds(attempt: int, settings: Settings, *, hint: float | None = None) -> float:
    """Exponential backoff with jitter, capped below the broker's visibility timeout."""
    base = min(settings.retry_cap_seconds, settings.retry_base_seconds * 2.0 ** max(0, attempt - 1))
    delay = base * random.uniform(0.5, 1.0)
    if hint is not None:
        delay = max(delay, min(hint, settings.retry_cap_seconds))
    return delay


def _context(
    claim: Claim, endpoint: AnyEndpoint, *, store: Store, registry: Registry, settings: Settings
) -> DeliveryContext:
    d = claim.delivery
    return DeliveryContext(
        delivery_id=d.id,
        attempt=claim.attempt,
        notice=claim.notice,
        endpoint=endpoint,
        village_id=d.village_id,
        registry=registry,
        settings=settings,
        store=store,
        action="recall" if d.action == "recall" else "publish",
        recall_of=d.recall_of,
    )


def _attempt(claim: Claim, *, store: Store, registry: Registry, settings: Settings) -> Outcome:
    d = claim.delivery
    endpoint = registry.endpoint(d.endpoint_id)
    if endpoint is None:
        return Outcome(
            "failed",
            tr(
                "端点 {ep} 已不在 devices.yaml 中",
                "endpoint {ep} is no longer in devices.yaml",
                ep=d.endpoint_id,
            ),
            code="endpoint_removed",
            attempt_outcome="config",
        )
    channel = get_channel(d.kind)
    if channel is None:
        return Outcome("skipped", tr("该渠道尚未实现", "this channel is not built yet"))
    recall = d.action == "recall"
    ctx = _context(claim, endpoint, store=store, registry=registry, settings=settings)
    try:
        result = channel.take_back(ctx) if recall else channel.deliver(ctx)
    except Exception as exc:
        return _error_outcome(exc, claim, settings)
    return _sent_outcome(result)


def _sent_outcome(result: SendResult) -> Outcome:
    if result.status == "held":
        return Outcome(
            "held",
            result.hold_reason,
            code="held",
            retry_at=result.hold_until or utcnow(),
            external_ref=result.external_ref,
            details=result.details,
        )
    return Outcome(result.status, external_ref=result.external_ref, details=result.details)


def _error_outcome(exc: Exception, claim: Claim, settings: Settings) -> Outcome:
    """The outcome of an attempt whose channel raised ``exc``."""
    if isinstance(exc, Deferred):
        # The channel's own pacing: tried again when it says, not counted as an attempt.
        return Outcome(
            "retry",
            exc.text,
            code=exc.code,
            retry_at=utcnow() + timedelta(seconds=max(0.0, exc.retry_after or 0.0)),
            attempt_outcome="deferred",
            counts_attempt=False,
        )
    if isinstance(exc, TransientError):
        delay = backoff_seconds(claim.attempt, settings, hint=exc.retry_after)
        return Outcome(
            "retry",
            exc.text,
            code=exc.code,
            retry_at=utcnow() + timedelta(seconds=delay),
            attempt_outcome="transient",
        )
    if isinstance(exc, PermanentError | ContentError):
        kind = "content" if isinstance(exc, ContentError) else "permanent"
        return Outcome("failed", exc.text, code=exc.code, attempt_outcome=kind)
    if isinstance(exc, ConfigError):
        return Outcome("failed", exc.text, code="config", attempt_outcome="config")
    if isinstance(exc, ChannelError | VillagecastError):
        return Outcome("failed", exc.text, code="error", attempt_outcome="permanent")
    # A bug or an unexpected library error: retry (bounded by max_attempts) and keep the
    # traceback in the worker's log, not in the user's face.
    log.error(
        "delivery %s crashed in channel %s", claim.delivery.id, claim.delivery.kind, exc_info=exc
    )
    delay = backoff_seconds(claim.attempt, settings)
    return Outcome(
        "retry",
        tr(
            "渠道内部错误（{e}），稍后重试",
            "internal channel error ({e}); will retry",
            e=type(exc).__name__,
        ),
        code="internal",
        retry_at=utcnow() + timedelta(seconds=delay),
        attempt_outcome="transient",
    )


def _attempt_chunk(
    claims: Sequence[Claim],
    channel: Channel,
    *,
    store: Store,
    registry: Registry,
    settings: Settings,
) -> tuple[list[tuple[Claim, Outcome]], list[str]]:
    """Attempt a claimed chunk together (:meth:`Channel.deliver_many`); returns the
    outcomes and the device commands the broker accepted, to note with them."""
    outcomes: dict[int, Outcome] = {}
    batch: list[tuple[int, DeliveryContext]] = []
    for i, claim in enumerate(claims):
        d = claim.delivery
        endpoint = registry.endpoint(d.endpoint_id)
        if endpoint is None or d.kind != channel.kind or d.action != "publish":
            # Recalls, and what cannot be sent at all, one at a time as before.
            outcomes[i] = _attempt(claim, store=store, registry=registry, settings=settings)
            continue
        batch.append(
            (i, _context(claim, endpoint, store=store, registry=registry, settings=settings))
        )
    published: list[str] = []
    results = channel.deliver_many([ctx for _, ctx in batch]) if batch else []
    for (i, _), result in zip(batch, results, strict=True):
        if isinstance(result, SendResult):
            outcomes[i] = _sent_outcome(result)
            published.extend(result.published)
        else:
            outcomes[i] = _error_outcome(result, claims[i], settings)
    return [(claim, outcomes[i]) for i, claim in enumerate(claims)], published


def process_deliveries(
    ids: Sequence[int],
    *,
    store: Store,
    settings: Settings,
    ring: Ringer | None,
    worker: str | None = None,
    kind: str | None = None,
) -> dict[int, str]:
    """Claim and attempt these deliveries; returns each claimed delivery's new status."""
    worker = worker or worker_name()
    registry: Registry | None = None
    registry_error: VillagecastError | None = None
    results: dict[int, str] = {}
    retry: dict[str, list[int]] = {}
    retry_at: datetime | None = None
    # Claim just before sending: a batch of slow sends (a paced WeCom robot) must not hold
    # leases on work it has not started, or the sweeper would hand it out twice. Channels
    # whose sends are fast and idempotent claim a few at a time to save transactions.
    pending = list(ids)
    kind = kind or (_kind_of(store, pending[0]) if pending else None)
    channel = get_channel(kind) if kind else None
    chunk = max(1, channel.claim_chunk if channel else 1)
    while pending:
        batch, pending = pending[:chunk], pending[chunk:]
        claims = store.claim(
            batch,
            worker=worker,
            lease_seconds=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )
        if not claims:
            continue
        if registry is None and registry_error is None:
            try:
                registry = registry_cache.get(settings.devices)
            except VillagecastError as exc:
                registry_error = exc
        published: list[str] = []
        if registry is None:
            assert registry_error is not None
            outcomes = [(c, _registry_retry(c, registry_error, settings)) for c in claims]
        elif channel is not None and channel.sends_in_chunks():
            outcomes, published = _attempt_chunk(
                claims, channel, store=store, registry=registry, settings=settings
            )
        else:
            outcomes = [
                (c, _attempt(c, store=store, registry=registry, settings=settings)) for c in claims
            ]
        statuses = store.finish_chunk(
            outcomes, published=published, max_attempts=settings.max_attempts
        )
        for (claim, outcome), status in zip(outcomes, statuses, strict=True):
            results[claim.delivery.id] = status
            if status == "pending" and outcome.retry_at is not None:
                retry.setdefault(claim.delivery.kind, []).append(claim.delivery.id)
                retry_at = max(retry_at, outcome.retry_at) if retry_at else outcome.retry_at
    if retry and ring is not None and retry_at is not None:
        try:
            ring(retry, max(0.0, (retry_at - utcnow()).total_seconds()))
        except Exception as exc:  # the sweeper rings again after redoorbell_seconds
            log.warning("retry doorbell failed: %s", type(exc).__name__)
    return results


def _registry_retry(claim: Claim, error: VillagecastError, settings: Settings) -> Outcome:
    """devices.yaml cannot be read: try again later (an operator is probably editing it)."""
    return Outcome(
        "retry",
        error.text,
        code="registry",
        retry_at=utcnow() + timedelta(seconds=backoff_seconds(claim.attempt, settings)),
        attempt_outcome="config",
    )


def _kind_of(store: Store, delivery_id: int) -> str | None:
    found = store.deliveries(ids=[delivery_id])
    return found[0].kind if found else None


QueueCounter = Callable[[set[str]], Mapping[str, int]]
"""Messages waiting in each of these broker queues."""

STUCK_FACTOR = 30
"""A queue that holds messages while no worker has taken a doorbell from it for this many
times ``redoorbell_seconds`` counts as stuck: its overdue doorbells are rung again (at most
once per such period)."""
_RING_SLACK = timedelta(seconds=1)  # ring time vs. insert order across processes
_NOTE_EVERY = 1.0  # seconds between two notes of one queue in one process
_noted: dict[str, tuple[float, float]] = {}  # queue -> (monotonic time, ring time) noted


def note_doorbell_taken(store: Store, queue: str, rung_at: float | None) -> None:
    """A worker took a doorbell rung at ``rung_at`` from ``queue``.

    Written at most once a second per queue and process (or sooner when the ring time
    moved on by a second): the note lagging only delays a re-ring.
    """
    if rung_at is None:
        return
    clock = time.monotonic()
    last_clock, last_rung = _noted.get(queue, (float("-inf"), float("-inf")))
    if clock - last_clock < _NOTE_EVERY and rung_at < last_rung + _NOTE_EVERY:
        return
    _noted[queue] = (clock, max(rung_at, last_rung))
    try:
        note_taken(store, queue, datetime.fromtimestamp(rung_at, UTC))
    except Exception as exc:  # only the sweeper's pacing depends on it
        log.warning("could not note the doorbell taken from %s: %s", queue, type(exc).__name__)


def ring_cutoffs(
    store: Store, kinds: set[str], queued: QueueCounter, settings: Settings
) -> dict[str, datetime]:
    """For each kind, the ring time before which its doorbells can no longer be queued.

    An empty queue holds none. One that holds messages holds, in order, every doorbell rung
    after the last one a worker took from it; if no worker has taken one for
    ``STUCK_FACTOR`` x ``redoorbell_seconds`` it counts as stuck, and doorbells older than
    that are rung again. Kinds with nothing queued are left out (every overdue delivery of
    theirs may be rung again).
    """
    from dispatcher.doorbell import queues_of

    now = utcnow()
    chains = {kind: queues_of(kind) for kind in kinds}
    counts = queued({q for qs in chains.values() for q in qs})
    busy = [q for q, n in counts.items() if n > 0]
    if not busy:
        return {}
    taken = doorbells_taken(store, busy)
    stuck = now - timedelta(seconds=STUCK_FACTOR * settings.redoorbell_seconds)
    cutoffs: dict[str, datetime] = {}
    for kind, queues in chains.items():
        cut = now
        for q in queues:
            if counts.get(q, 0) > 0:
                seen = taken.get(q)
                if seen is None or seen.noted_at < stuck:
                    cut = min(cut, stuck)
                else:
                    cut = min(cut, seen.rung_at - _RING_SLACK)
        if cut < now:
            cutoffs[kind] = cut
    return cutoffs


def sweep_once(
    *,
    store: Store,
    settings: Settings,
    ring: Ringer | None,
    queued: QueueCounter | None = None,
) -> SweepReport:
    """One sweep; ``queued`` (the broker's queue lengths) keeps re-rings off a backlog.

    A re-ring while the earlier doorbell still waits in its queue only lengthens the queue
    every worker drains: under a backlog that outlasts ``redoorbell_seconds`` (a large
    fan-out on the embedded broker with workers dying) the re-rings used to pile up faster
    than they were drained. Without ``queued`` every overdue delivery is rung again.
    """
    cutoffs: dict[str, datetime] = {}
    if queued is not None and ring is not None:
        overdue = store.overdue_kinds(redoorbell_seconds=settings.redoorbell_seconds)
        if overdue:
            try:
                cutoffs = ring_cutoffs(store, overdue, queued, settings)
            except Exception as exc:  # ringing will tell whether the broker is really gone
                log.warning("sweeper could not read the queue lengths: %s", type(exc).__name__)
    report = store.sweep(
        max_attempts=settings.max_attempts,
        redoorbell_seconds=settings.redoorbell_seconds,
        ack_timeout_seconds=settings.ack_timeout_seconds,
        ring_cutoffs=cutoffs,
    )
    if report.ring and ring is not None:
        try:
            ring(report.ring, None)
        except Exception as exc:
            log.warning("sweeper could not ring %d doorbell(s): %s", report.rung, exc)
    return report
