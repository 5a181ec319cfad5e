"""The durable store: the only source of truth for notices and their deliveries.

Every state change is a compare-and-set on the delivery row, so any number of
workers and sweepers can race without serving an endpoint twice. Celery messages
only carry delivery ids; losing one loses nothing because the sweeper rings again.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

from sqlalchemy import (
    BindParameter,
    Engine,
    String,
    and_,
    bindparam,
    cast,
    create_engine,
    event,
    func,
    insert,
    inspect,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from content_queue.audit import AuditReport, install_chain, verify_chain
from content_queue.db import (
    Attempt,
    AuditEntry,
    Delivery,
    Device,
    DeviceCommand,
    FeedFetch,
    Notice,
    PresenceEvent,
    UTCDateTime,
)
from content_queue.errors import NotFoundError, StateError, StoreError
from content_queue.i18n import Text, tr
from content_queue.models import NoticeDraft

__all__ = [
    "ACKED_KINDS",
    "ACK_SUCCESS",
    "NOTICE_STATE_LABELS",
    "RECALL_WAIT_SECONDS",
    "SETTLED",
    "TERMINAL",
    "Claim",
    "DeliveryStatus",
    "DeliveryView",
    "DeviceAck",
    "DeviceView",
    "NewCommand",
    "NoticeView",
    "Outcome",
    "PlannedDelivery",
    "Store",
    "SweepReport",
    "Withdrawal",
    "utcnow",
]


def utcnow() -> datetime:
    return datetime.now(UTC)


class DeliveryStatus(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


S = DeliveryStatus
TERMINAL = frozenset({S.DELIVERED, S.FAILED, S.EXPIRED, S.CANCELLED, S.SKIPPED})
SETTLED = TERMINAL | {S.SENT}
"""Out of the dispatcher's hands: terminal, or accepted and waiting for the far side's ack."""

STATUS_LABELS: dict[str, Text] = {
    S.PENDING: tr("待发送", "pending"),
    S.SCHEDULED: tr("定时", "scheduled"),
    S.SENDING: tr("发送中", "sending"),
    S.SENT: tr("已发出", "sent"),
    S.DELIVERED: tr("已送达", "delivered"),
    S.FAILED: tr("失败", "failed"),
    S.EXPIRED: tr("已过期", "expired"),
    S.CANCELLED: tr("已取消", "cancelled"),
    S.SKIPPED: tr("已跳过", "skipped"),
}


SHOWING_KEPT = 50
"""Command ids kept per device as what it shows, the newest last. A board may hold more (a
rotation of unexpired notices); the list grew with every notice before, and with it the
write of each ack (the 10-minute soak: each board's list reached 600 ids and the ack path
slowed all along, docs/performance.md)."""


ATTEMPT_OUTCOME_LABELS: dict[str, Text] = {
    "sent": tr("已发出", "sent"),
    "delivered": tr("已送达", "delivered"),
    "retry": tr("暂时失败，稍后重试", "failed for now, will retry"),
    "transient": tr("暂时失败，稍后重试", "failed for now, will retry"),
    "deferred": tr("等待发送额度，不计入重试次数", "waiting for room to send, not counted"),
    "permanent": tr("失败", "failed"),
    "content": tr("内容不符合该渠道要求", "content refused by the channel"),
    "config": tr("配置有误", "configuration error"),
    "stale": tr("已由其他工作进程接手", "taken over by another worker"),
    "lost": tr("工作进程中断", "worker stopped mid-way"),
    "failed": tr("失败", "failed"),
    "skipped": tr("已跳过", "skipped"),
    "expired": tr("已过期", "expired"),
    "cancelled": tr("已取消", "cancelled"),
}
"""What one attempt came to, for people (``Attempt.outcome`` holds the word)."""


NOTICE_STATE_LABELS: dict[str, Text] = {
    "draft": tr("草稿", "draft"),
    "submitted": tr("待审核", "awaiting review"),
    "rejected": tr("审核未通过", "rejected"),
    "active": tr("有效", "active"),
    "withdrawn": tr("撤回", "withdrawn"),
    "superseded": tr("被更正", "superseded"),
}

RECALL_WAIT_SECONDS = 2.0
"""How long a recall waits for the publish it takes back to stop being in flight."""


@dataclass(frozen=True)
class NoticeView:
    id: int
    title: str
    body: str
    category: str
    priority: str
    targets: dict[str, Any]
    channels: list[str] | None
    table: dict[str, Any] | None
    publish_at: datetime
    expires_at: datetime | None
    author: str
    revision: int
    supersedes_id: int | None
    state: str
    created_at: datetime

    @classmethod
    def of(cls, n: Notice) -> NoticeView:
        return cls(
            id=n.id,
            title=n.title,
            body=n.body,
            category=n.category,
            priority=n.priority,
            targets=dict(n.targets),
            channels=list(n.channels) if n.channels is not None else None,
            table=dict(n.table) if n.table is not None else None,
            publish_at=n.publish_at,
            expires_at=n.expires_at,
            author=n.author,
            revision=n.revision,
            supersedes_id=n.supersedes_id,
            state=n.state,
            created_at=n.created_at,
        )

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@dataclass(frozen=True)
class DeliveryView:
    id: int
    notice_id: int
    endpoint_id: str
    kind: str
    village_id: str | None
    township_id: str | None
    status: str
    attempts: int
    due_at: datetime
    sent_at: datetime | None
    delivered_at: datetime | None
    finished_at: datetime | None
    error_code: str | None
    error_zh: str | None
    error_en: str | None
    external_ref: str | None
    updated_at: datetime
    details: dict[str, Any] | None = None
    action: str = "publish"
    """``publish`` or ``recall`` (taking a withdrawn or superseded notice back)."""
    recall_of: int | None = None

    @classmethod
    def of(cls, d: Delivery) -> DeliveryView:
        return cls(
            id=d.id,
            notice_id=d.notice_id,
            endpoint_id=d.endpoint_id,
            kind=d.kind,
            village_id=d.village_id,
            township_id=d.township_id,
            status=d.status,
            attempts=d.attempts,
            due_at=d.due_at,
            sent_at=d.sent_at,
            delivered_at=d.delivered_at,
            finished_at=d.finished_at,
            error_code=d.error_code,
            error_zh=d.error_zh,
            error_en=d.error_en,
            external_ref=d.external_ref,
            updated_at=d.updated_at,
            details=dict(d.details) if d.details else None,
            action=d.action or "publish",
            recall_of=d.recall_of,
        )

    def error(self, lang: str = "zh") -> str | None:
        return self.error_zh if lang == "zh" else self.error_en


_VIEW_COLUMNS = tuple(getattr(Delivery, f.name) for f in dataclasses.fields(DeliveryView))
"""The delivery columns a :class:`DeliveryView` is made of (same names)."""


@dataclass(frozen=True)
class Withdrawal:
    notice_id: int
    cancelled: int
    """Deliveries that had not gone out and never will."""
    recalls: list[DeliveryView]
    """One recall delivery per endpoint the notice reached (or may have reached)."""

    @property
    def recall_ids_by_kind(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for r in self.recalls:
            out.setdefault(r.kind, []).append(r.id)
        return out


@dataclass(frozen=True)
class PlannedDelivery:
    endpoint_id: str
    kind: str
    village_id: str | None
    township_id: str | None
    skip_reason: Text | None = None


@dataclass(frozen=True)
class Claim:
    """A delivery leased to one worker for one attempt."""

    delivery: DeliveryView
    notice: NoticeView
    attempt: int
    token: str


OutcomeKind = Literal[
    "sent", "delivered", "held", "retry", "failed", "skipped", "expired", "cancelled"
]


@dataclass(frozen=True)
class Outcome:
    kind: OutcomeKind
    text: Text | None = None
    code: str | None = None
    retry_at: datetime | None = None
    external_ref: str | None = None
    attempt_outcome: str | None = None
    """What to record on the attempt row when it differs from ``kind`` (e.g. 'config')."""
    details: dict[str, Any] | None = None
    """Channel facts to keep on the delivery (merged into what is there)."""
    counts_attempt: bool = True
    """False for a ``retry`` where nothing went out (the channel's own pacing): the attempt
    is given back, so waiting does not use up the retry budget."""


@dataclass
class SweepReport:
    ring: dict[str, list[int]] = field(default_factory=dict)
    released: int = 0
    reclaimed: int = 0
    gave_up: int = 0
    expired: int = 0
    resent: int = 0

    @property
    def rung(self) -> int:
        return sum(len(v) for v in self.ring.values())


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    if url.startswith(prefix) and url != prefix + ":memory:":
        return Path(url[len(prefix) :])
    return None


def _engine(url: str, *, readonly: bool = False) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            connect_args={"timeout": 60, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # pysqlite's own BEGIN handling is bypassed
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # Writers take the lock up front: a deferred transaction that later writes can
            # fail with SQLITE_BUSY instead of waiting. Readers must not take it at all
            # (in WAL mode they never block writers).
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True)


class Store:
    """Notices, deliveries, attempts and audit, behind a few transactional operations."""

    _instances: ClassVar[dict[tuple[int, str], Store]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        path = _sqlite_path(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = _engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        install_chain(self._sessions)
        self.read_engine = _engine(url, readonly=True) if url.startswith("sqlite") else self.engine
        self._read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)
        self._writers = _WriterQueue(path.with_name(path.name + ".writer.lock")) if path else None
        if migrate:
            self.migrate()

    @classmethod
    def open(cls, url: str) -> Store:
        """One store per process and URL (engines must not cross a fork)."""
        key = (os.getpid(), url)
        with cls._lock:
            store = cls._instances.get(key)
            if store is None:
                store = cls._instances[key] = cls(url)
            return store

    # -- plumbing ----------------------------------------------------------------------

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Session]:
        factory = self._read_sessions if readonly else self._sessions
        turn = None if readonly or self._writers is None else self._writers.turn()
        try:
            with turn or nullcontext(), factory.begin() as s:
                yield s
        except OperationalError as exc:
            raise StoreError(
                tr(
                    "数据库暂时无法访问：{e}",
                    "the database cannot be reached: {e}",
                    e=str(exc.orig) if exc.orig else str(exc),
                )
            ) from exc

    def migrate(self) -> None:
        """Bring the schema to the newest revision (serialised by a file lock on SQLite)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
        path = _sqlite_path(self.url)
        lock_path = (path.parent / ".migrate.lock") if path else None
        try:
            with _file_lock(lock_path), self.engine.connect() as conn, _pg_lock(conn):
                if self._is_current(conn):
                    return
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
                conn.commit()
        except SQLAlchemyError as exc:
            raise StoreError(
                tr(
                    "无法打开或升级数据库 {url}：{e}",
                    "cannot open or upgrade the database {url}: {e}",
                    url=_redact(self.url),
                    e=str(exc).splitlines()[0],
                )
            ) from exc

    def _is_current(self, conn: Any) -> bool:
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        if not inspect(conn).has_table("alembic_version"):
            return False
        heads = set(MigrationContext.configure(conn).get_current_heads())
        script = ScriptDirectory(str(Path(__file__).parent / "migrations"))
        return heads == set(script.get_heads())

    # -- notices -----------------------------------------------------------------------

    def add_notice(
        self,
        draft: NoticeDraft,
        plans: Sequence[PlannedDelivery],
        *,
        now: datetime | None = None,
        source: dict[str, Any] | None = None,
        review: Literal["draft", "submitted"] | None = None,
    ) -> tuple[NoticeView, list[DeliveryView]]:
        """Write the notice and one delivery per endpoint in one transaction.

        With ``review`` the notice waits as a draft or for review and gets no deliveries
        until :meth:`approve` dispatches it.

        ``source`` (e.g. ``{"cap_identifier": ...}``) is kept in the audit entry, so an
        imported notice can be found again by where it came from."""
        now = now or utcnow()
        with self.session() as s:
            return self._add_notice(
                s, draft, [] if review else plans, now=now, source=source, review=review
            )

    def notice_id_for_source(self, key: str, value: str) -> int | None:
        """The newest notice added with ``source[key] == value``."""
        with self.session(readonly=True) as s:
            return s.scalar(
                select(AuditEntry.notice_id)
                .where(
                    AuditEntry.action == "notice.add",
                    AuditEntry.details[key].as_string() == value,
                )
                .order_by(AuditEntry.id.desc())
                .limit(1)
            )

    def correct_notice(
        self,
        draft: NoticeDraft,
        plans: Sequence[PlannedDelivery],
        *,
        actor: str,
        reason: str = "",
        now: datetime | None = None,
        source: dict[str, Any] | None = None,
    ) -> tuple[NoticeView, list[DeliveryView], Withdrawal]:
        """Add a corrected revision and supersede the old one, in one transaction: the old
        revision is recalled from every endpoint it reached and the new one goes out."""
        if draft.supersedes is None:
            raise StateError(tr("更正必须指明被更正的通知", "a correction must name its notice"))
        now = now or utcnow()
        with self.session() as s:
            notice, rows = self._add_notice(s, draft, plans, now=now, source=source)
            withdrawal = self._withdraw(
                s, draft.supersedes, actor=actor, reason=reason, superseded_by=notice.id, now=now
            )
            return notice, rows, withdrawal

    @staticmethod
    def _add_notice(
        s: Session,
        draft: NoticeDraft,
        plans: Sequence[PlannedDelivery],
        *,
        now: datetime,
        source: dict[str, Any] | None = None,
        review: Literal["draft", "submitted"] | None = None,
    ) -> tuple[NoticeView, list[DeliveryView]]:
        publish_at = draft.publish_at or now
        if draft.supersedes is not None and s.get(Notice, draft.supersedes) is None:
            raise NotFoundError(
                tr(
                    "要更正的通知 {id} 不存在",
                    "notice {id} does not exist",
                    id=draft.supersedes,
                )
            )
        notice = Notice(
            title=draft.title,
            body=draft.body,
            category=draft.category.value,
            priority=draft.priority.value,
            targets=draft.targets.model_dump(),
            channels=list(draft.channels) if draft.channels is not None else None,
            table=draft.table.model_dump() if draft.table else None,
            publish_at=publish_at,
            expires_at=draft.expires_at,
            author=draft.author,
            revision=draft.revision,
            supersedes_id=draft.supersedes,
            state=review or "active",
            created_at=now,
        )
        s.add(notice)
        s.flush()
        rows = _insert_deliveries(s, notice.id, plans, publish_at=publish_at, now=now)
        s.add(
            AuditEntry(
                at=now,
                actor=draft.author or "cli",
                action="notice.add",
                notice_id=notice.id,
                details={"deliveries": len(rows), "title": draft.title, **(source or {})},
            )
        )
        if review == "submitted":
            s.add(
                AuditEntry(
                    at=now,
                    actor=draft.author or "cli",
                    action="notice.submit",
                    notice_id=notice.id,
                    details={},
                )
            )
        s.flush()
        return NoticeView.of(notice), rows

    # -- review ------------------------------------------------------------------------

    def submit(self, notice_id: int, *, actor: str, now: datetime | None = None) -> NoticeView:
        """A draft goes to review."""
        now = now or utcnow()
        with self.session() as s:
            n = self._in_state(s, notice_id, ("draft", "rejected"), tr("提交", "submit"))
            n.state = "submitted"
            s.add(AuditEntry(at=now, actor=actor, action="notice.submit", notice_id=n.id))
            return NoticeView.of(n)

    def reject(
        self, notice_id: int, *, actor: str, reason: str, now: datetime | None = None
    ) -> NoticeView:
        """Send a notice back to its author with the reason; nothing goes out."""
        now = now or utcnow()
        with self.session() as s:
            n = self._in_state(s, notice_id, ("submitted",), tr("驳回", "reject"))
            n.state = "rejected"
            s.add(
                AuditEntry(
                    at=now,
                    actor=actor,
                    action="notice.reject",
                    notice_id=n.id,
                    details={"reason": reason},
                )
            )
            return NoticeView.of(n)

    def approve(
        self,
        notice_id: int,
        plans: Sequence[PlannedDelivery],
        *,
        actor: str,
        approver: str | None = None,
        now: datetime | None = None,
    ) -> tuple[NoticeView, list[DeliveryView], Withdrawal | None]:
        """Approve and dispatch in one transaction: the deliveries are written, and a
        correction supersedes (and recalls) the revision it corrects. The author can never
        approve their own notice."""
        now = now or utcnow()
        with self.session() as s:
            n = self._in_state(s, notice_id, ("submitted",), tr("审核通过", "approve"))
            if (approver or actor) == n.author:
                raise StateError(
                    tr(
                        "不能审核通过自己起草的通知 {id}：需要另一位审核人（两人原则）",
                        "you cannot approve notice {id}, which you drafted: another person "
                        "must review it",
                        id=notice_id,
                    )
                )
            n.state = "active"
            if n.publish_at < now:
                n.publish_at = now  # goes out now; a future publish time is kept
            s.add(AuditEntry(at=now, actor=actor, action="notice.approve", notice_id=n.id))
            rows = _insert_deliveries(s, n.id, plans, publish_at=n.publish_at, now=now)
            s.add(
                AuditEntry(
                    at=now,
                    actor=actor,
                    action="notice.dispatch",
                    notice_id=n.id,
                    details={"deliveries": len(rows)},
                )
            )
            withdrawal = None
            if n.supersedes_id is not None:
                withdrawal = self._withdraw(
                    s,
                    n.supersedes_id,
                    actor=actor,
                    reason=f"corrected by notice {n.id}",
                    superseded_by=n.id,
                    now=now,
                )
            s.flush()
            return NoticeView.of(n), rows, withdrawal

    @staticmethod
    def _in_state(s: Session, notice_id: int, states: Sequence[str], verb: Text) -> Notice:
        n = s.get(Notice, notice_id)
        if n is None:
            raise NotFoundError(tr("通知 {id} 不存在", "notice {id} does not exist", id=notice_id))
        if n.state not in states:
            raise StateError(
                tr(
                    "通知 {id} 当前状态是「{state}」，不能{verb}",
                    "notice {id} is {state_en}: cannot {verb}",
                    id=notice_id,
                    state=NOTICE_STATE_LABELS.get(n.state, tr(n.state, n.state)),
                    state_en=n.state,
                    verb=verb,
                )
            )
        return n

    def notice(self, notice_id: int) -> NoticeView:
        with self.session(readonly=True) as s:
            n = s.get(Notice, notice_id)
            if n is None:
                raise NotFoundError(
                    tr("通知 {id} 不存在", "notice {id} does not exist", id=notice_id)
                )
            return NoticeView.of(n)

    def notices(self, *, limit: int = 50, state: str | None = None) -> list[NoticeView]:
        with self.session(readonly=True) as s:
            q = select(Notice)
            if state is not None:
                q = q.where(Notice.state == state)
            rows = s.scalars(q.order_by(Notice.id.desc()).limit(limit))
            return [NoticeView.of(n) for n in rows]

    def deliveries(
        self, notice_id: int | None = None, *, ids: Iterable[int] | None = None
    ) -> list[DeliveryView]:
        with self.session(readonly=True) as s:
            q = select(Delivery).order_by(Delivery.id)
            if notice_id is not None:
                q = q.where(Delivery.notice_id == notice_id)
            if ids is not None:
                q = q.where(Delivery.id.in_(list(ids)))
            return [DeliveryView.of(d) for d in s.scalars(q)]

    def count_open(
        self, notice_ids: Sequence[int], states: Iterable[str], *, action: str = "publish"
    ) -> int:
        """How many of these notices' deliveries are not yet in one of ``states``."""
        with self.session(readonly=True) as s:
            q = select(func.count()).where(
                Delivery.notice_id.in_(list(notice_ids)),
                Delivery.status.not_in(list(states)),
                Delivery.action == action,
            )
            return int(s.scalar(q) or 0)

    def delivery_counts(
        self, notice_ids: Sequence[int], *, action: str = "publish"
    ) -> dict[int, Counter[str]]:
        out: dict[int, Counter[str]] = {i: Counter() for i in notice_ids}
        with self.session(readonly=True) as s:
            q = (
                select(Delivery.notice_id, Delivery.status, func.count())
                .where(Delivery.notice_id.in_(list(notice_ids)), Delivery.action == action)
                .group_by(Delivery.notice_id, Delivery.status)
            )
            for nid, status, count in s.execute(q):
                out[nid][status] = count
        return out

    def status_rows(self) -> list[tuple[str | None, str | None, str, str, int]]:
        """(township, village, kind, status, count) over every delivery."""
        with self.session(readonly=True) as s:
            q = select(
                Delivery.township_id,
                Delivery.village_id,
                Delivery.kind,
                Delivery.status,
                func.count(),
            )
            q = q.where(Delivery.action == "publish").group_by(
                Delivery.township_id, Delivery.village_id, Delivery.kind, Delivery.status
            )
            return [(t, v, k, st, c) for t, v, k, st, c in s.execute(q)]

    def attempts(self, delivery_id: int) -> list[dict[str, Any]]:
        with self.session(readonly=True) as s:
            q = (
                select(Attempt)
                .where(Attempt.delivery_id == delivery_id)
                .order_by(Attempt.number, Attempt.id)
            )
            return [
                {
                    "number": a.number,
                    "worker": a.worker,
                    "started_at": a.started_at,
                    "finished_at": a.finished_at,
                    "outcome": a.outcome,
                    "error_code": a.error_code,
                    "error_zh": a.error_zh,
                    "error_en": a.error_en,
                }
                for a in s.scalars(q)
            ]

    def withdraw(
        self,
        notice_id: int,
        *,
        actor: str,
        reason: str = "",
        superseded_by: int | None = None,
        now: datetime | None = None,
    ) -> Withdrawal:
        """Withdraw a notice (or mark it superseded by a correction), in one transaction.

        What has not gone out is cancelled. Every endpoint it reached, or may have reached
        (a send in flight), gets a ``recall`` delivery of its own: the channel clears the
        board, stops the loudspeaker, deletes the article or posts a withdrawal message,
        and the township sees those deliveries' states like any other.
        """
        now = now or utcnow()
        with self.session() as s:
            return self._withdraw(
                s, notice_id, actor=actor, reason=reason, superseded_by=superseded_by, now=now
            )

    @staticmethod
    def _withdraw(
        s: Session,
        notice_id: int,
        *,
        actor: str,
        reason: str,
        superseded_by: int | None,
        now: datetime,
    ) -> Withdrawal:
        n = s.get(Notice, notice_id)
        if n is None:
            raise NotFoundError(tr("通知 {id} 不存在", "notice {id} does not exist", id=notice_id))
        if n.state in ("draft", "submitted") and superseded_by is None:
            # Never dispatched: nothing went out, nothing to recall.
            n.state = "withdrawn"
            s.add(
                AuditEntry(
                    at=now,
                    actor=actor,
                    action="notice.withdraw",
                    notice_id=notice_id,
                    details={"reason": reason, "cancelled": 0, "recalls": 0},
                )
            )
            return Withdrawal(notice_id=notice_id, cancelled=0, recalls=[])
        if n.state != "active":
            raise StateError(
                tr(
                    "通知 {id} 已{state}，不能再撤回",
                    "notice {id} is already {state_en}",
                    id=notice_id,
                    state=NOTICE_STATE_LABELS.get(n.state, tr(n.state, n.state)),
                    state_en=n.state,
                )
            )
        n.state = "superseded" if superseded_by is not None else "withdrawn"
        why = (
            tr("已被更正版本（通知 {id}）取代", "superseded by notice {id}", id=superseded_by)
            if superseded_by is not None
            else tr("通知已撤回", "the notice was withdrawn")
        )
        rows = list(
            s.scalars(
                select(Delivery)
                .where(Delivery.notice_id == notice_id, Delivery.action == "publish")
                .order_by(Delivery.id)
            )
        )
        cancelled = 0
        recalls: list[Delivery] = []
        for d in rows:
            if d.status in (S.PENDING, S.SCHEDULED):
                _end(d, S.CANCELLED, now, why, code="withdrawn")
                cancelled += 1
            elif d.status in (S.SENDING, S.SENT, S.DELIVERED):
                r = Delivery(
                    notice_id=notice_id,
                    endpoint_id=d.endpoint_id,
                    kind=d.kind,
                    action="recall",
                    recall_of=d.id,
                    village_id=d.village_id,
                    township_id=d.township_id,
                    status=S.PENDING,
                    attempts=0,
                    due_at=now,
                    updated_at=now,
                )
                s.add(r)
                recalls.append(r)
        s.add(
            AuditEntry(
                at=now,
                actor=actor,
                action="notice.supersede" if superseded_by is not None else "notice.withdraw",
                notice_id=notice_id,
                details={
                    "reason": reason,
                    "superseded_by": superseded_by,
                    "cancelled": cancelled,
                    "recalls": len(recalls),
                },
            )
        )
        s.flush()
        return Withdrawal(
            notice_id=notice_id,
            cancelled=cancelled,
            recalls=[DeliveryView.of(r) for r in recalls],
        )

    # -- audit -------------------------------------------------------------------------

    def audit_entries(
        self,
        *,
        notice_id: int | None = None,
        actor: str | None = None,
        action: str | None = None,
        since: datetime | None = None,
        limit: int | None = 200,
    ) -> list[dict[str, Any]]:
        """Audit entries, oldest first (the last ``limit`` of them)."""
        with self.session(readonly=True) as s:
            q = select(AuditEntry)
            if notice_id is not None:
                q = q.where(AuditEntry.notice_id == notice_id)
            if actor is not None:
                q = q.where(AuditEntry.actor == actor)
            if action is not None:
                q = q.where(AuditEntry.action == action)
            if since is not None:
                q = q.where(AuditEntry.at >= since)
            q = q.order_by(AuditEntry.id.desc())
            if limit is not None:
                q = q.limit(limit)
            rows = list(s.scalars(q))
            return [
                {
                    "id": e.id,
                    "at": e.at,
                    "actor": e.actor,
                    "action": e.action,
                    "notice_id": e.notice_id,
                    "details": dict(e.details or {}),
                    "hash": e.hash,
                }
                for e in reversed(rows)
            ]

    def verify_audit(self) -> AuditReport:
        """Recompute the audit chain from the first entry (streamed, any size)."""
        with self.session(readonly=True) as s:
            entries = s.scalars(
                select(AuditEntry).order_by(AuditEntry.id).execution_options(yield_per=1000)
            )
            return verify_chain(entries)

    # -- the delivery state machine ------------------------------------------------------

    def mark_enqueued(self, ids: Sequence[int], *, now: datetime | None = None) -> None:
        if not ids:
            return
        now = now or utcnow()
        with self.session() as s:
            s.execute(
                update(Delivery)
                .where(Delivery.id.in_(list(ids)))
                .values(enqueued_at=now)
                .execution_options(synchronize_session=False)
            )

    def claim(
        self,
        ids: Sequence[int],
        *,
        worker: str,
        lease_seconds: float,
        max_attempts: int,
        now: datetime | None = None,
    ) -> list[Claim]:
        """Lease due, pending deliveries to this worker; ends expired or withdrawn ones.

        Core statements for the whole chunk (a grouped ``UPDATE`` per outcome and one
        ``INSERT ... SELECT`` for the attempt rows), not ORM objects: the ORM inserts
        attempt rows one ``INSERT ... RETURNING`` at a time. Each claim's token is the
        call's random prefix and the delivery id, so it is distinct per attempt and the
        database can write it without a statement per row."""
        now = now or utcnow()
        claims: list[Claim] = []
        with self.session() as s:
            q = (
                select(*_VIEW_COLUMNS)
                .where(
                    Delivery.id.in_(_many("ids")),
                    Delivery.status == S.PENDING,
                    Delivery.due_at <= now,
                )
                .order_by(Delivery.id)
                .with_for_update(skip_locked=True)
            )
            rows = [dict(r._mapping) for r in s.execute(q, {"ids": list(ids)})]
            if not rows:
                return []
            notices = {
                n.id: NoticeView.of(n)
                for n in s.scalars(
                    select(Notice).where(Notice.id.in_({d["notice_id"] for d in rows}))
                )
            }
            recalled = {d["recall_of"] for d in rows if d["recall_of"] is not None}
            # A publish still in flight: recalling now could arrive before it.
            in_flight = (
                set(
                    s.scalars(
                        select(Delivery.id).where(
                            Delivery.id.in_(recalled), Delivery.status == S.SENDING
                        )
                    )
                )
                if recalled
                else set()
            )
            waiting: list[int] = []
            ended: dict[tuple[S, str | None, str | None, str | None], list[int]]
            ended = defaultdict(list)
            leased: list[dict[str, Any]] = []
            for d in rows:
                notice = notices[d["notice_id"]]
                end: tuple[S, Text, str | None] | None = None
                if d["action"] == "recall":
                    if d["recall_of"] in in_flight:
                        waiting.append(d["id"])  # tried again once the publish has settled
                        continue
                elif notice.state != "active":
                    end = (S.CANCELLED, tr("通知已撤回", "the notice was withdrawn"), None)
                if end is None and d["action"] == "publish" and notice.expired(now):
                    end = (
                        S.EXPIRED,
                        tr("发送前通知已过期", "the notice expired before it went out"),
                        None,
                    )
                if end is None and d["attempts"] >= max_attempts:
                    end = (
                        S.FAILED,
                        tr(
                            "已尝试 {n} 次仍未成功，已停止重试",
                            "gave up after {n} attempts",
                            n=d["attempts"],
                        ),
                        "attempts_exhausted",
                    )
                if end is not None:
                    status, why, code = end
                    ended[(status, code, why.render("zh"), why.render("en"))].append(d["id"])
                    continue
                leased.append(d)
            if waiting:
                s.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(waiting))
                    .values(
                        due_at=now + timedelta(seconds=RECALL_WAIT_SECONDS),
                        enqueued_at=None,
                        updated_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
            for (status, code, zh, en), ended_ids in ended.items():
                s.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(ended_ids))
                    .values(
                        status=status,
                        finished_at=now,
                        updated_at=now,
                        lease_until=None,
                        leased_by=None,
                        error_code=code,
                        error_zh=zh,
                        error_en=en,
                    )
                    .execution_options(synchronize_session=False)
                )
            if not leased:
                return []
            # leased_by is VARCHAR(64) on PostgreSQL: 8 random hex digits and the id make the
            # token about as long as the 12 digits it had before.
            prefix = f"{worker}:{uuid.uuid4().hex[:8]}."
            leased_ids = [d["id"] for d in leased]
            conn = s.connection()  # Core statements: no ORM rows are involved
            conn.execute(
                update(Delivery)
                .where(Delivery.id.in_(_many("ids")))
                .values(
                    status=S.SENDING,
                    attempts=Delivery.attempts + 1,
                    lease_until=now + timedelta(seconds=lease_seconds),
                    leased_by=literal(prefix, String) + cast(Delivery.id, String),
                    updated_at=now,
                ),
                {"ids": leased_ids},
            )
            conn.execute(
                insert(Attempt).from_select(
                    ["delivery_id", "number", "worker", "started_at"],
                    select(
                        Delivery.id,
                        Delivery.attempts,
                        Delivery.leased_by,
                        literal(now, UTCDateTime),
                    )
                    .where(Delivery.id.in_(_many("ids")))
                    .order_by(Delivery.id),
                ),
                {"ids": leased_ids},
            )
            for d in leased:
                number = d["attempts"] + 1
                d.update(status=S.SENDING, attempts=number, updated_at=now)
                d["action"] = d["action"] or "publish"
                claims.append(
                    Claim(
                        DeliveryView(**d),
                        notices[d["notice_id"]],
                        number,
                        f"{prefix}{d['id']}",
                    )
                )
        return claims

    def finish(
        self,
        claim: Claim,
        outcome: Outcome,
        *,
        max_attempts: int,
        now: datetime | None = None,
    ) -> str:
        """Record one attempt's outcome; returns the delivery's new status.

        Only the lease holder may move the delivery on. A worker that comes back after its
        lease expired (the sweeper already handed the delivery to someone else) is recorded
        as a ``stale`` attempt and changes nothing.
        """
        return self.finish_many([(claim, outcome)], max_attempts=max_attempts, now=now)[0]

    def finish_many(
        self,
        results: Sequence[tuple[Claim, Outcome]],
        *,
        max_attempts: int,
        now: datetime | None = None,
    ) -> list[str]:
        """:meth:`finish` for several claims in one transaction."""
        now = now or utcnow()
        ids = [c.delivery.id for c, _ in results]
        tokens = [c.token for c, _ in results]
        with self.session() as s, s.no_autoflush:
            # Two queries for the whole chunk, one flush at commit.
            # Locked (in id order, so two finishers cannot deadlock) before the acks are
            # read: on PostgreSQL an ack recorded meanwhile is then seen, never lost.
            rows = {
                d.id: d
                for d in s.scalars(
                    select(Delivery)
                    .where(Delivery.id.in_(ids))
                    .order_by(Delivery.id)
                    .with_for_update()
                )
            }
            attempts = {
                a.worker: a
                for a in s.scalars(
                    select(Attempt).where(Attempt.delivery_id.in_(ids), Attempt.worker.in_(tokens))
                )
            }
            acked = frozenset(
                s.scalars(
                    select(DeviceCommand.delivery_id).where(
                        DeviceCommand.delivery_id.in_(ids),
                        DeviceCommand.ack_status.in_(ACK_SUCCESS),
                    )
                )
            )
            return [
                self._finish(
                    rows.get(c.delivery.id),
                    attempts.get(c.token),
                    c,
                    o,
                    max_attempts=max_attempts,
                    now=now,
                    acked=acked,
                )
                for c, o in results
            ]

    @staticmethod
    def _finish(
        d: Delivery | None,
        attempt: Attempt | None,
        claim: Claim,
        outcome: Outcome,
        *,
        max_attempts: int,
        now: datetime,
        acked: frozenset[int] = frozenset(),
    ) -> str:
        if d is None:
            raise NotFoundError(tr("投递记录不存在", "no such delivery"))
        owned = d.status == S.SENDING and d.leased_by == claim.token
        if attempt is not None:
            attempt.finished_at = now
            attempt.outcome = (outcome.attempt_outcome or outcome.kind) if owned else "stale"
            attempt.error_code = outcome.code
            attempt.error_zh = outcome.text.render("zh") if outcome.text else None
            attempt.error_en = outcome.text.render("en") if outcome.text else None
        if not owned:
            return d.status
        d.lease_until = None
        d.leased_by = None
        d.updated_at = now
        if outcome.external_ref is not None:
            d.external_ref = outcome.external_ref
        if outcome.details:
            d.details = {**(d.details or {}), **outcome.details}
        kind = outcome.kind
        if kind == "retry" and not outcome.counts_attempt:
            d.attempts = max(0, d.attempts - 1)
        if kind == "retry" and d.attempts >= max_attempts:
            _end(
                d,
                S.FAILED,
                now,
                tr(
                    "已尝试 {n} 次仍未成功：{last}",
                    "gave up after {n} attempts: {last}",
                    n=d.attempts,
                    last=outcome.text or "",
                ),
                code=outcome.code or "attempts_exhausted",
            )
        elif kind == "retry":
            retry_at = outcome.retry_at or now
            d.status = S.PENDING
            d.due_at = retry_at
            d.enqueued_at = retry_at  # the caller rings with a countdown to this time
            _set_error(d, outcome.text, outcome.code)
        elif kind == "held":
            # Nothing went out: the channel waits for a time of its own (a mass-send quota
            # window, a daily digest). Held like a scheduled notice, and not counted as an
            # attempt, so a long wait does not use up the retry budget.
            d.status = S.SCHEDULED
            d.due_at = outcome.retry_at or now
            d.enqueued_at = None
            d.attempts = max(0, d.attempts - 1)
            _set_error(d, outcome.text, outcome.code)
        elif kind == "sent":
            d.status = S.SENT
            d.sent_at = now
            _set_error(d, None, None)
            if d.kind in ACKED_KINDS and d.id in acked:
                # The device acked before this worker recorded the publish.
                d.status = S.DELIVERED
                d.delivered_at = now
                d.finished_at = now
        elif kind == "delivered":
            d.status = S.DELIVERED
            d.sent_at = d.sent_at or now
            d.delivered_at = now
            d.finished_at = now
            _set_error(d, None, None)
        else:
            status = {
                "failed": S.FAILED,
                "skipped": S.SKIPPED,
                "expired": S.EXPIRED,
                "cancelled": S.CANCELLED,
            }[kind]
            _end(d, status, now, outcome.text, code=outcome.code)
        return d.status

    @staticmethod
    def _finish_simple(
        s: Session,
        results: Sequence[tuple[Claim, Outcome]],
        leases: dict[int, tuple[str, str | None, str, dict[str, Any] | None]],
        acked: frozenset[int],
        *,
        now: datetime,
    ) -> None:
        """:meth:`_finish`'s rules for owned ``sent`` and ``delivered`` outcomes, grouped by
        new status: one statement for the deliveries without details (and an
        ``executemany`` for their external refs), one ``executemany`` for those with
        details (merged into what the delivery had); and one statement per distinct
        attempt outcome (a chunk has one), closing the attempts by their tokens without
        reading their rows first."""
        groups: dict[str, tuple[list[int], list[dict[str, Any]]]] = {
            "sent": ([], []),
            "confirmed": ([], []),
            "delivered": ([], []),
        }
        refs: list[dict[str, Any]] = []
        closing: dict[tuple[str, str | None, str | None, str | None], list[Claim]]
        closing = defaultdict(list)
        for claim, outcome in results:
            did = claim.delivery.id
            _, _, kind, details = leases[did]
            if outcome.kind == "delivered":
                plain, detailed = groups["delivered"]
            elif kind in ACKED_KINDS and did in acked:
                # The device acked before this worker recorded the publish.
                plain, detailed = groups["confirmed"]
            else:
                plain, detailed = groups["sent"]
            if outcome.details:
                detailed.append(
                    {
                        "b_id": did,
                        "b_ref": outcome.external_ref,
                        "b_details": {**(details or {}), **outcome.details},
                    }
                )
            else:
                plain.append(did)
                if outcome.external_ref is not None:
                    refs.append({"b_id": did, "b_ref": outcome.external_ref})
            text = outcome.text
            key = (
                outcome.attempt_outcome or outcome.kind,
                outcome.code,
                text.render("zh") if text else None,
                text.render("en") if text else None,
            )
            closing[key].append(claim)
        conn = s.connection()  # Core statements, no ORM bookkeeping per row
        common: dict[str, Any] = {
            "lease_until": None,
            "leased_by": None,
            "updated_at": now,
            "error_code": None,
            "error_zh": None,
            "error_en": None,
        }
        values: dict[str, dict[str, Any]] = {
            "sent": {"status": S.SENT, "sent_at": now},
            "confirmed": {
                "status": S.DELIVERED,
                "sent_at": now,
                "delivered_at": now,
                "finished_at": now,
            },
            "delivered": {
                "status": S.DELIVERED,
                "sent_at": func.coalesce(Delivery.sent_at, literal(now, UTCDateTime)),
                "delivered_at": now,
                "finished_at": now,
            },
        }
        for name, (plain, detailed) in groups.items():
            if plain:
                conn.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(_many("ids")))
                    .values(**(common | values[name])),
                    {"ids": plain},
                )
            if detailed:
                conn.execute(
                    update(Delivery)
                    .where(Delivery.id == bindparam("b_id"))
                    .values(
                        **(common | values[name]),
                        external_ref=func.coalesce(
                            bindparam("b_ref", type_=String), Delivery.external_ref
                        ),
                        details=bindparam("b_details", type_=Delivery.details.type),
                    ),
                    detailed,
                )
        if refs:
            conn.execute(
                update(Delivery)
                .where(Delivery.id == bindparam("b_id"))
                .values(external_ref=bindparam("b_ref")),
                refs,
            )
        for (kind, code, zh, en), claims in closing.items():
            conn.execute(
                update(Attempt)
                .where(
                    Attempt.delivery_id.in_(_many("ids")),
                    Attempt.worker.in_(_many("tokens")),
                )
                .values(finished_at=now, outcome=kind, error_code=code, error_zh=zh, error_en=en),
                {"ids": [c.delivery.id for c in claims], "tokens": [c.token for c in claims]},
            )

    def finish_chunk(
        self,
        results: Sequence[tuple[Claim, Outcome]],
        *,
        published: Sequence[str] = (),
        max_attempts: int,
        now: datetime | None = None,
    ) -> list[str]:
        """:meth:`finish_many`, and in the same transaction note the device commands of the
        chunk that the broker accepted as published (recorded before they were published,
        by :meth:`record_commands`).

        The common cases, a ``sent`` or ``delivered`` outcome for a delivery still under
        this worker's lease, are written with a few batched statements for the whole chunk
        (one per outcome, plus one ``executemany`` for the external refs and details); every
        other outcome goes through the same per-row rules as :meth:`finish_many`.
        """
        now = now or utcnow()
        ids = [c.delivery.id for c, _ in results]
        tokens = [c.token for c, _ in results]
        with self.session() as s, s.no_autoflush:
            # Deliveries first, locked (PostgreSQL; SQLite's writer lock already serialises):
            # an ack recorded concurrently either commits before this (and is seen below)
            # or waits for this commit and then confirms the 'sent' delivery itself.
            leases = {
                did: (status, leased_by, kind, details)
                for did, status, leased_by, kind, details in s.connection().execute(
                    select(
                        Delivery.id,
                        Delivery.status,
                        Delivery.leased_by,
                        Delivery.kind,
                        Delivery.details,
                    )
                    .where(Delivery.id.in_(_many("ids")))
                    .order_by(Delivery.id)
                    .with_for_update(),
                    {"ids": ids},
                )
            }
            if published:
                s.execute(
                    update(DeviceCommand)
                    .where(DeviceCommand.id.in_(list(published)))
                    .values(published_at=now)
                    .execution_options(synchronize_session=False)
                )
            # Only deliveries that devices confirm can have an ack waiting.
            confirmable = [d for d, lease in leases.items() if lease[2] in ACKED_KINDS]
            acked = (
                frozenset(
                    s.connection()
                    .execute(
                        select(DeviceCommand.delivery_id).where(
                            DeviceCommand.delivery_id.in_(_many("ids")),
                            DeviceCommand.ack_status.in_(ACK_SUCCESS),
                        ),
                        {"ids": confirmable},
                    )
                    .scalars()
                )
                if confirmable
                else frozenset()
            )
            simple: list[int] = []
            other: list[int] = []
            for i, (c, o) in enumerate(results):
                lease = leases.get(c.delivery.id)
                owned = lease is not None and lease[0] == S.SENDING and lease[1] == c.token
                (simple if owned and o.kind in ("sent", "delivered") else other).append(i)
            statuses: list[str] = [""] * len(results)
            if simple:
                self._finish_simple(s, [results[i] for i in simple], leases, acked, now=now)
                for i in simple:
                    claim, outcome = results[i]
                    did = claim.delivery.id
                    confirmed = leases[did][2] in ACKED_KINDS and did in acked
                    sent = outcome.kind == "sent" and not confirmed
                    statuses[i] = S.SENT if sent else S.DELIVERED
            if other:
                other_ids = [ids[i] for i in other]
                rows = {
                    d.id: d for d in s.scalars(select(Delivery).where(Delivery.id.in_(other_ids)))
                }
                attempts = {
                    a.worker: a
                    for a in s.scalars(
                        select(Attempt).where(
                            Attempt.delivery_id.in_(other_ids),
                            Attempt.worker.in_([tokens[i] for i in other]),
                        )
                    )
                }
                for i in other:
                    c, o = results[i]
                    statuses[i] = self._finish(
                        rows.get(c.delivery.id),
                        attempts.get(c.token),
                        c,
                        o,
                        max_attempts=max_attempts,
                        now=now,
                        acked=acked,
                    )
            return statuses

    def overdue_kinds(self, *, redoorbell_seconds: float, now: datetime | None = None) -> set[str]:
        """Kinds with a due pending delivery whose doorbell was rung too long ago.

        The sweeper asks the broker how full these kinds' queues are before it rings them
        again (``sweep(busy_kinds=...)``); nothing is asked when nothing is overdue.
        """
        now = now or utcnow()
        stale = now - timedelta(seconds=redoorbell_seconds)
        with self.session(readonly=True) as s:
            return set(
                s.scalars(
                    select(Delivery.kind)
                    .where(
                        Delivery.status == S.PENDING,
                        Delivery.due_at <= now,
                        Delivery.enqueued_at < stale,
                    )
                    .distinct()
                )
            )

    def sweep(
        self,
        *,
        max_attempts: int,
        redoorbell_seconds: float,
        ack_timeout_seconds: float | None = None,
        ring_cutoffs: Mapping[str, datetime] | None = None,
        now: datetime | None = None,
        limit: int = 5000,
    ) -> SweepReport:
        """One pass of the sweeper; idempotent, safe to run from several processes at once.

        ``ring_cutoffs``: for these kinds, only deliveries last rung before the kind's
        cutoff are rung again (the sweeper's reading of the broker queues, see
        ``overdue_kinds``); a delivery never rung is rung at once whatever the queues hold.

        SQLite runs one writer at a time. On PostgreSQL every row a step moves is locked
        with ``FOR UPDATE SKIP LOCKED``: a row another sweeper or a worker is moving is
        left to it, and a row read here cannot change before this transaction commits.
        """
        now = now or utcnow()
        report = SweepReport()
        with self.session() as s:
            # Held notices whose publish time came.
            res = s.execute(
                update(Delivery)
                .where(Delivery.status == S.SCHEDULED, Delivery.due_at <= now)
                .values(status=S.PENDING, updated_at=now, enqueued_at=None)
                .execution_options(synchronize_session=False)
            )
            report.released = int(getattr(res, "rowcount", 0) or 0)

            # Anything still waiting whose notice expired meanwhile.
            expired_notices = select(Notice.id).where(
                Notice.expires_at.is_not(None), Notice.expires_at <= now
            )
            for d in s.scalars(
                select(Delivery)
                .where(
                    Delivery.status.in_([S.PENDING, S.SCHEDULED, S.SENT]),
                    Delivery.notice_id.in_(expired_notices),
                )
                .limit(limit)
                .with_for_update(skip_locked=True, of=Delivery)
            ):
                _end(
                    d,
                    S.EXPIRED,
                    now,
                    tr("通知在送达前已过期", "the notice expired before it was confirmed"),
                )
                report.expired += 1

            # Leases that ran out: the worker died (or hung) mid-delivery.
            for d in s.scalars(
                select(Delivery)
                .where(Delivery.status == S.SENDING, Delivery.lease_until < now)
                .limit(limit)
                .with_for_update(skip_locked=True, of=Delivery)
            ):
                s.execute(
                    update(Attempt)
                    .where(
                        Attempt.delivery_id == d.id,
                        Attempt.worker == d.leased_by,
                        Attempt.finished_at.is_(None),
                    )
                    .values(finished_at=now, outcome="lost")
                    .execution_options(synchronize_session=False)
                )
                d.leased_by = None
                d.lease_until = None
                if d.attempts >= max_attempts:
                    _end(
                        d,
                        S.FAILED,
                        now,
                        tr(
                            "工作进程在发送时中断了 {n} 次（可能是这条内容导致崩溃），已停止重试",
                            "the worker died {n} times while delivering this "
                            "(likely a poison payload)",
                            n=d.attempts,
                        ),
                        code="worker_lost",
                    )
                    report.gave_up += 1
                else:
                    d.status = S.PENDING
                    d.due_at = now
                    d.enqueued_at = None
                    d.updated_at = now
                    report.reclaimed += 1

            # Commands the broker accepted but an online device never acked: the broker may
            # have lost them (killed between autosaves) or the ack was lost. Send again with
            # the same command id; the device drops the duplicate and acks.
            if ack_timeout_seconds is not None:
                online = select(Device.device_id).where(Device.state == "online")
                unacked = select(DeviceCommand.delivery_id).where(
                    DeviceCommand.device_id.in_(online),
                    DeviceCommand.acked_at.is_(None),
                    DeviceCommand.sync.is_(False),
                )
                for d in s.scalars(
                    select(Delivery)
                    .where(
                        Delivery.kind.in_(ACKED_KINDS),
                        Delivery.status == S.SENT,
                        Delivery.sent_at < now - timedelta(seconds=ack_timeout_seconds),
                        Delivery.id.in_(unacked),
                    )
                    .limit(limit)
                    .with_for_update(skip_locked=True, of=Delivery)
                ):
                    d.status = S.PENDING
                    d.due_at = now
                    d.enqueued_at = None
                    d.updated_at = now
                    report.resent += 1

            # Doorbells: due work whose last doorbell is missing or too old. A kind in
            # ``ring_cutoffs`` rings again only what was rung before its cutoff: later
            # doorbells may still be waiting in the broker's queue (content_queue/doorbells.py).
            stale = now - timedelta(seconds=redoorbell_seconds)
            cutoffs = dict(ring_cutoffs or {})
            due_again = or_(
                and_(Delivery.kind.not_in(cutoffs), Delivery.enqueued_at < stale),
                *(
                    and_(Delivery.kind == kind, Delivery.enqueued_at < min(stale, cut))
                    for kind, cut in cutoffs.items()
                ),
            )
            rows = s.execute(
                select(Delivery.id, Delivery.kind)
                .where(
                    Delivery.status == S.PENDING,
                    Delivery.due_at <= now,
                    or_(Delivery.enqueued_at.is_(None), due_again),
                )
                .order_by(Delivery.id)
                .limit(limit)
                .with_for_update(skip_locked=True, of=Delivery)
            ).all()
            ids = [r[0] for r in rows]
            for did, kind in rows:
                report.ring.setdefault(kind, []).append(did)
            if ids:
                s.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(ids))
                    .values(enqueued_at=now)
                    .execution_options(synchronize_session=False)
                )
        return report

    # -- TV feed support ----------------------------------------------------------------

    def feed_entries(
        self, endpoint_id: str, *, limit: int = 100
    ) -> list[tuple[NoticeView, DeliveryView]]:
        """Notices on this feed endpoint that are (or are being) published, newest first."""
        shown = [S.SENDING, S.SENT, S.DELIVERED, S.EXPIRED, S.CANCELLED]
        with self.session(readonly=True) as s:
            q = (
                select(Delivery, Notice)
                .join(Notice, Notice.id == Delivery.notice_id)
                .where(
                    Delivery.endpoint_id == endpoint_id,
                    Delivery.action == "publish",
                    Delivery.status.in_(shown),
                    or_(Delivery.sent_at.is_not(None), Delivery.status == S.SENDING),
                )
                .order_by(Notice.publish_at.desc(), Notice.id.desc())
                .limit(limit)
            )
            return [(NoticeView.of(n), DeliveryView.of(d)) for d, n in s.execute(q)]

    def record_feed_fetch(
        self, endpoint_id: str, *, feed_format: str, client: str, now: datetime | None = None
    ) -> int:
        """The platform fetched this feed: what was already in it counts as delivered."""
        now = now or utcnow()
        with self.session() as s:
            s.add(
                FeedFetch(
                    endpoint_id=endpoint_id,
                    fetched_at=now,
                    feed_format=feed_format,
                    client=client[:255],
                )
            )
            res = s.execute(
                update(Delivery)
                .where(
                    Delivery.endpoint_id == endpoint_id,
                    Delivery.status == S.SENT,
                    Delivery.sent_at <= now,
                )
                .values(status=S.DELIVERED, delivered_at=now, finished_at=now, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return int(getattr(res, "rowcount", 0) or 0)

    # -- devices (LED boards, loudspeakers) ----------------------------------------------

    def record_command(
        self,
        *,
        command_id: str,
        delivery_id: int,
        device_id: str,
        kind: str,
        issued_at: datetime,
        expires_at: datetime,
        sync: bool = False,
    ) -> None:
        """Remember a signed command before it is published (idempotent per command id)."""
        with self.session() as s:
            if s.get(DeviceCommand, command_id) is None:
                s.add(
                    DeviceCommand(
                        id=command_id,
                        delivery_id=delivery_id,
                        device_id=device_id,
                        kind=kind,
                        issued_at=issued_at,
                        expires_at=expires_at,
                        sync=sync,
                    )
                )

    def record_commands(self, commands: Sequence[NewCommand]) -> None:
        """:meth:`record_command` for many commands (a claimed chunk's), in one transaction."""
        if not commands:
            return
        with self.session() as s:
            known = set(
                s.scalars(
                    select(DeviceCommand.id).where(
                        DeviceCommand.id.in_([c.command_id for c in commands])
                    )
                )
            )
            rows: list[dict[str, Any]] = []
            for c in commands:
                if c.command_id in known:
                    continue
                known.add(c.command_id)
                rows.append(
                    {
                        "id": c.command_id,
                        "delivery_id": c.delivery_id,
                        "device_id": c.device_id,
                        "kind": c.kind,
                        "issued_at": c.issued_at,
                        "expires_at": c.expires_at,
                        "sync": c.sync,
                    }
                )
            if rows:
                s.execute(insert(DeviceCommand), rows)

    def mark_published(self, command_id: str, *, now: datetime | None = None) -> None:
        with self.session() as s:
            s.execute(
                update(DeviceCommand)
                .where(DeviceCommand.id == command_id)
                .values(published_at=now or utcnow())
                .execution_options(synchronize_session=False)
            )

    def record_ack(
        self,
        *,
        device_id: str,
        command_id: str,
        status: str,
        reason: str | None,
        detail: str | None,
        now: datetime | None = None,
    ) -> str | None:
        """A device answered a command; returns the delivery's status afterwards.

        ``device_id`` comes from the topic the ack arrived on (the broker's ACL lets a device
        write only its own), so an ack for another device's command is ignored.
        """
        now = now or utcnow()
        with self.session() as s:
            cmd = s.get(DeviceCommand, command_id)
            if cmd is None or cmd.device_id != device_id:
                return None
            # The delivery is locked before the ack is written, as finish_many locks it
            # before reading acks: whichever commits second sees the other's write.
            d = s.get(Delivery, cmd.delivery_id, with_for_update=True)
            cmd.acked_at = now
            cmd.ack_status = status
            cmd.ack_reason = reason
            cmd.ack_detail = (detail or "")[:255] or None
            if d is None:
                return None
            if status in ACK_SUCCESS:
                dev = s.get(Device, device_id, with_for_update=True)
                if dev is not None and status == "shown":
                    showing = [c for c in (dev.showing or []) if c != command_id]
                    dev.showing = [*showing, command_id][-SHOWING_KEPT:]
                    dev.updated_at = now
                elif dev is not None and status == "cleared" and dev.showing:
                    # A clear names the notice: whatever the board showed of it is gone.
                    gone = set(
                        s.scalars(
                            select(DeviceCommand.id)
                            .join(Delivery, Delivery.id == DeviceCommand.delivery_id)
                            .where(
                                DeviceCommand.id.in_(list(dev.showing)),
                                Delivery.notice_id == d.notice_id,
                            )
                        )
                    )
                    dev.showing = [c for c in dev.showing if c not in gone]
                    dev.updated_at = now
                if d.status == S.SENT:
                    d.status = S.DELIVERED
                    d.delivered_at = now
                    d.finished_at = now
                    d.updated_at = now
                return d.status
            if cmd.sync or reason == "replayed" or d.status not in (S.SENT, S.SENDING):
                return d.status  # a re-sync or a late duplicate does not undo a delivery
            why = REJECTION_TEXTS.get(reason or "", tr("设备拒绝", "the device refused"))
            if reason == "expired":
                _end(d, S.EXPIRED, now, why, code="device_expired")
            else:
                text = tr(
                    "设备 {dev} 拒绝了指令：{why}",
                    "device {dev} rejected the command: {why}",
                    dev=device_id,
                    why=why,
                )
                _end(d, S.FAILED, now, text, code=f"device_{reason or 'rejected'}")
            return d.status

    def record_acks(
        self, acks: Sequence[DeviceAck], *, now: datetime | None = None
    ) -> list[str | None]:
        """:meth:`record_ack` for many acks, in their order; returns each one's result.

        The answer that comes by the thousand in a fan-out, a command carried out (``shown``,
        ``played``), is recorded many to a transaction; any other answer (a rejection, a
        clear) goes through :meth:`record_ack` on its own, in its place in the order.
        """
        now = now or utcnow()
        results: list[str | None] = [None] * len(acks)
        run: list[int] = []

        def flush() -> None:
            if run:
                statuses = self._record_carried_out([acks[i] for i in run], now=now)
                for i, status in zip(run, statuses, strict=True):
                    results[i] = status
                run.clear()

        for i, ack in enumerate(acks):
            if ack.status in CARRIED_OUT:
                run.append(i)
                continue
            flush()
            results[i] = self.record_ack(
                device_id=ack.device_id,
                command_id=ack.command_id,
                status=ack.status,
                reason=ack.reason,
                detail=ack.detail,
                now=now,
            )
        flush()
        return results

    def _record_carried_out(self, acks: Sequence[DeviceAck], *, now: datetime) -> list[str | None]:
        """What :meth:`record_ack` does for ``shown``/``played``, for many acks in one
        transaction: three reads, then one batched write per table (the writer lock is held
        throughout, so what is read is what is written over)."""
        with self.session() as s:
            cmds = {
                cid: (device, delivery)
                for cid, device, delivery in s.execute(
                    select(
                        DeviceCommand.id, DeviceCommand.device_id, DeviceCommand.delivery_id
                    ).where(DeviceCommand.id.in_({a.command_id for a in acks}))
                )
            }
            # Locked in the same order as finish_chunk locks them (deliveries, then
            # commands), so a worker finishing these deliveries and this batch serialise.
            status: dict[int, str] = dict(
                s.execute(
                    select(Delivery.id, Delivery.status)
                    .where(Delivery.id.in_({delivery for _, delivery in cmds.values()}))
                    .order_by(Delivery.id)
                    .with_for_update()
                ).all()
            )
            shown_on = {a.device_id for a in acks if a.status == "shown"}
            showing: dict[str, list[str]] = (
                {
                    dev: list(current or [])
                    for dev, current in s.execute(
                        select(Device.device_id, Device.showing).where(
                            Device.device_id.in_(shown_on)
                        )
                    )
                }
                if shown_on
                else {}
            )
            command_rows: dict[str, tuple[str, str | None, str | None]] = {}
            devices_changed: set[str] = set()
            confirmed: set[int] = set()
            out: list[str | None] = []
            for a in acks:
                found = cmds.get(a.command_id)
                if found is None or found[0] != a.device_id:
                    out.append(None)
                    continue
                command_rows[a.command_id] = (a.status, a.reason, (a.detail or "")[:255] or None)
                delivery = found[1]
                if delivery not in status:
                    out.append(None)
                    continue
                if a.status == "shown" and a.device_id in showing:
                    current = [c for c in showing[a.device_id] if c != a.command_id]
                    showing[a.device_id] = [*current, a.command_id][-SHOWING_KEPT:]
                    devices_changed.add(a.device_id)
                if status[delivery] == S.SENT:
                    status[delivery] = S.DELIVERED
                    confirmed.add(delivery)
                out.append(status[delivery])
            # One statement per kind of answer (a burst is nearly all "shown"), one
            # executemany for the devices' lists.
            answers: dict[tuple[str, str | None, str | None], list[str]] = defaultdict(list)
            for cid, (status_, reason, detail) in command_rows.items():
                answers[(status_, reason, detail)].append(cid)
            for (status_, reason, detail), cids in answers.items():
                s.execute(
                    update(DeviceCommand)
                    .where(DeviceCommand.id.in_(cids))
                    .values(acked_at=now, ack_status=status_, ack_reason=reason, ack_detail=detail)
                    .execution_options(synchronize_session=False)
                )
            if devices_changed:
                s.connection().execute(  # plain executemany, no ORM bookkeeping
                    update(Device)
                    .where(Device.device_id == bindparam("b_device"))
                    .values(showing=bindparam("b_showing"), updated_at=now),
                    [{"b_device": dev, "b_showing": showing[dev]} for dev in devices_changed],
                )
            if confirmed:
                s.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(confirmed), Delivery.status == S.SENT)
                    .values(status=S.DELIVERED, delivered_at=now, finished_at=now, updated_at=now)
                    .execution_options(synchronize_session=False)
                )
            return out

    def record_presence(
        self,
        *,
        device_id: str,
        state: str,
        at: datetime,
        firmware: str | None = None,
        capabilities: Sequence[str] = (),
        showing: Sequence[str] = (),
        fresh_boot: bool = False,
    ) -> None:
        now = utcnow()
        with self.session() as s:
            # Two listeners may record the same message at once: create the row if missing
            # (a no-op for the second) and lock it, so the state change is counted once.
            _insert_ignore(
                s,
                Device,
                device_id=device_id,
                state="unknown",
                capabilities=[],
                showing=[],
                updated_at=now,
            )
            dev = s.get(Device, device_id, with_for_update=True)
            assert dev is not None
            if dev.last_seen is not None and at < dev.last_seen:
                return  # an old retained message replayed after a newer one
            changed = dev.state != state
            dev.state = state
            dev.last_seen = at
            dev.updated_at = now
            if firmware is not None:
                dev.firmware = firmware
            dev.capabilities = list(capabilities)
            if state == "online":
                dev.showing = list(showing)[-SHOWING_KEPT:]
            if changed:
                s.add(PresenceEvent(device_id=device_id, state=state, at=at, fresh_boot=fresh_boot))
            elif fresh_boot:
                # Another listener recorded this same coming online first (the device row is
                # locked, so one of them sees the change): mark that event, do not add one.
                last = s.scalars(
                    select(PresenceEvent)
                    .where(PresenceEvent.device_id == device_id)
                    .order_by(PresenceEvent.id.desc())
                    .limit(1)
                ).first()
                if last is not None and last.state == state:
                    last.fresh_boot = True
                else:
                    s.add(PresenceEvent(device_id=device_id, state=state, at=at, fresh_boot=True))

    def devices(self) -> list[DeviceView]:
        with self.session(readonly=True) as s:
            return [
                DeviceView(
                    device_id=d.device_id,
                    state=d.state,
                    last_seen=d.last_seen,
                    firmware=d.firmware,
                    capabilities=list(d.capabilities or []),
                    showing=list(d.showing or []),
                    updated_at=d.updated_at,
                )
                for d in s.scalars(select(Device).order_by(Device.device_id))
            ]

    def presence_history(
        self, device_id: str, *, limit: int = 50
    ) -> list[tuple[str, datetime, bool]]:
        with self.session(readonly=True) as s:
            q = (
                select(PresenceEvent)
                .where(PresenceEvent.device_id == device_id)
                .order_by(PresenceEvent.at.desc(), PresenceEvent.id.desc())
                .limit(limit)
            )
            return [(e.state, e.at, e.fresh_boot) for e in s.scalars(q)]

    def commands_for(self, delivery_id: int) -> list[dict[str, Any]]:
        with self.session(readonly=True) as s:
            q = select(DeviceCommand).where(DeviceCommand.delivery_id == delivery_id)
            return [
                {
                    "id": c.id,
                    "device": c.device_id,
                    "kind": c.kind,
                    "sync": c.sync,
                    "published_at": c.published_at,
                    "acked_at": c.acked_at,
                    "ack_status": c.ack_status,
                    "ack_reason": c.ack_reason,
                }
                for c in s.scalars(q.order_by(DeviceCommand.issued_at))
            ]

    def sync_candidates(
        self, device_id: str, *, now: datetime | None = None
    ) -> list[tuple[NoticeView, DeviceView | None, int, str]]:
        """What a device that lost its memory should show again: (notice, _, delivery, kind)."""
        now = now or utcnow()
        with self.session(readonly=True) as s:
            # IN, not JOIN + DISTINCT: PostgreSQL cannot compare the notices' JSON columns.
            sent_to = select(DeviceCommand.delivery_id).where(DeviceCommand.device_id == device_id)
            q = (
                select(Delivery.id, Delivery.kind, Notice)
                .join(Notice, Notice.id == Delivery.notice_id)
                .where(
                    Delivery.id.in_(sent_to),
                    Delivery.action == "publish",
                    Delivery.status.in_([S.SENT, S.DELIVERED]),
                    Notice.state == "active",
                    or_(Notice.expires_at.is_(None), Notice.expires_at > now),
                )
                .order_by(Delivery.id)
            )
            return [(NoticeView.of(n), None, did, kind) for did, kind, n in s.execute(q)]

    # -- people acting on failures (the dashboard) ------------------------------------------

    def retry_failed(
        self, delivery_id: int, *, actor: str, reason: str = "", now: datetime | None = None
    ) -> DeliveryView:
        """Give a failed delivery a fresh start: back to ``pending`` now, attempts reset.

        For after a person fixed the cause (a key renewed, a board back on the network).
        The attempts already made stay in ``attempts``; the audit log records who retried
        and what the last error was. A publish of a notice that was withdrawn or has
        expired is not sent again (a failed recall may be retried: the board must clear).
        """
        now = now or utcnow()
        with self.session() as s:
            d = s.get(Delivery, delivery_id)
            if d is None:
                raise NotFoundError(
                    tr("投递 {id} 不存在", "delivery {id} does not exist", id=delivery_id)
                )
            if d.status != S.FAILED:
                raise StateError(
                    tr(
                        "投递 {id} 当前是「{state}」，只有失败的投递可以重试",
                        "delivery {id} is {state_en}; only a failed delivery can be retried",
                        id=delivery_id,
                        state=STATUS_LABELS.get(d.status, tr(d.status, d.status)),
                        state_en=d.status,
                    )
                )
            n = s.get(Notice, d.notice_id)
            assert n is not None
            if d.action == "publish" and n.state != "active":
                raise StateError(
                    tr(
                        "通知 {id} 已撤回或被更正，不再重发",
                        "notice {id} was withdrawn or corrected; it is not sent again",
                        id=n.id,
                    )
                )
            if d.action == "publish" and n.expires_at is not None and n.expires_at <= now:
                raise StateError(
                    tr(
                        "通知 {id} 已过期，不再重发",
                        "notice {id} has expired; it is not sent again",
                        id=n.id,
                    )
                )
            previous = {"error_code": d.error_code, "error": d.error_zh, "attempts": d.attempts}
            d.status = S.PENDING
            d.attempts = 0
            d.due_at = now
            d.enqueued_at = None
            d.lease_until = None
            d.leased_by = None
            d.finished_at = None
            d.updated_at = now
            _set_error(d, None, None)
            s.add(
                AuditEntry(
                    at=now,
                    actor=actor,
                    action="delivery.retry",
                    notice_id=d.notice_id,
                    details={"delivery": d.id, "reason": reason, "previous": previous},
                )
            )
            s.flush()
            return DeliveryView.of(d)


ACKED_KINDS = frozenset({"led", "speaker"})
"""Channels whose deliveries are confirmed by a device ack."""
ACK_SUCCESS = ("shown", "played", "cleared", "stopped")


def _many(name: str) -> BindParameter[Any]:
    """A list parameter for ``IN``: the values are bound when the statement runs, so a
    chunk's ids are not each turned into a literal expression first (a few hundred
    microseconds a chunk)."""
    return bindparam(name, expanding=True)


REJECTION_TEXTS: dict[str, Text] = {
    "bad_signature": tr(
        "签名校验失败（指令可能被篡改，或签名密钥不对）", "the signature did not verify"
    ),
    "unknown_key": tr(
        "设备不认识签名密钥（请给设备下发新的公钥）", "the device does not know the signing key"
    ),
    "wrong_device": tr("指令发给了别的设备", "the command was for another device"),
    "expired": tr("指令到达设备时已过期", "the command had expired when it arrived"),
    "clock_skew": tr(
        "设备时钟与调度器相差太大（请校准设备时间）",
        "the device clock is too far from the dispatcher's (set its time)",
    ),
    "replayed": tr("设备已执行过这条指令", "the device had already run this command"),
    "malformed": tr("设备无法解析这条指令", "the device could not parse the command"),
    "unsupported": tr("设备不支持这种指令", "the device does not support this command"),
    "bad_clip": tr(
        "广播音箱下载的音频校验不符或无法下载（请检查音频服务地址）",
        "the loudspeaker could not fetch the clip or its SHA-256 did not match",
    ),
}


CARRIED_OUT = frozenset({"shown", "played"})
"""Acks that :meth:`Store.record_acks` records in batches (the rest one at a time)."""


@dataclass(frozen=True)
class NewCommand:
    """A signed device command to remember before it is published."""

    command_id: str
    delivery_id: int
    device_id: str
    kind: str
    issued_at: datetime
    expires_at: datetime
    sync: bool = False


@dataclass(frozen=True)
class DeviceAck:
    """A device's answer to a command, as the listener hands it to the store."""

    device_id: str
    command_id: str
    status: str
    reason: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class DeviceView:
    device_id: str
    state: str
    last_seen: datetime | None
    firmware: str | None
    capabilities: list[str]
    showing: list[str]
    updated_at: datetime


def _insert_deliveries(
    s: Session,
    notice_id: int,
    plans: Sequence[PlannedDelivery],
    *,
    publish_at: datetime,
    now: datetime,
) -> list[DeliveryView]:
    """One delivery per planned endpoint: skipped with its reason, held until the publish
    time, or due now (shared by adding a notice and approving a reviewed one).

    One Core executemany and one query for the new ids: the ORM would insert the rows one
    ``INSERT ... RETURNING`` at a time (0.1 ms a row, half a second for a county). The
    notice has no publish deliveries before this (a new notice, or a reviewed one that
    gets them at approval), so (notice, endpoint, publish) finds exactly these rows."""
    if not plans:
        return []
    pending = S.SCHEDULED if publish_at > now else S.PENDING
    values: list[dict[str, Any]] = []
    for p in plans:
        skip = p.skip_reason
        values.append(
            {
                "notice_id": notice_id,
                "endpoint_id": p.endpoint_id,
                "kind": p.kind,
                "village_id": p.village_id,
                "township_id": p.township_id,
                "status": (S.SKIPPED if skip is not None else pending).value,
                "attempts": 0,
                "due_at": publish_at,
                "finished_at": now if skip is not None else None,
                "error_zh": skip.render("zh") if skip is not None else None,
                "error_en": skip.render("en") if skip is not None else None,
                "updated_at": now,
                "action": "publish",
            }
        )
    conn = s.connection()
    # On the connection: plain Core, no ORM. The columns left out stay NULL (``details``
    # too: given as None, the JSON type would write the JSON text 'null').
    conn.execute(insert(Delivery), values)
    ids: dict[str, int] = {
        endpoint: did
        for endpoint, did in conn.execute(
            select(Delivery.endpoint_id, Delivery.id).where(
                Delivery.notice_id == notice_id, Delivery.action == "publish"
            )
        )
    }
    unset: dict[str, Any] = dict.fromkeys(
        ("sent_at", "delivered_at", "error_code", "external_ref", "details", "recall_of")
    )
    return [DeliveryView(id=ids[v["endpoint_id"]], **v, **unset) for v in values]


def _set_error(d: Delivery, text: Text | None, code: str | None) -> None:
    d.error_code = code
    d.error_zh = text.render("zh") if text else None
    d.error_en = text.render("en") if text else None


def _end(
    d: Delivery, status: S, now: datetime, text: Text | None, *, code: str | None = None
) -> None:
    d.status = status
    d.finished_at = now
    d.updated_at = now
    d.lease_until = None
    d.leased_by = None
    _set_error(d, text, code)


def _insert_ignore(s: Session, model: type[Any], **values: Any) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL."""
    if s.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        s.execute(pg_insert(model).values(**values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        s.execute(sqlite_insert(model).values(**values).on_conflict_do_nothing())


def _redact(url: str) -> str:
    """Hide the password part of a database URL before it reaches a message."""
    if "://" in url and "@" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


_PG_MIGRATE_LOCK = 0x76636D67  # "vcmg"


@contextmanager
def _pg_lock(conn: Any) -> Iterator[None]:
    """Several services starting at once on PostgreSQL migrate one after the other."""
    if conn.dialect.name != "postgresql":
        yield
        return
    conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATE_LOCK})
    conn.commit()
    try:
        yield
    finally:
        conn.rollback()
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATE_LOCK})
        conn.commit()


@contextmanager
def _file_lock(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class _WriterQueue:
    """SQLite writers of this database on this machine take turns on a file lock.

    SQLite's own wait for its write lock polls: its busy handler sleeps 1, 2, 5, 10 ... up
    to 100 ms between tries, so with two workers and the ack listener writing at once a
    writer sleeps long after the lock was freed (in a 5,000-board fan-out the workers spent
    a third of their time in BEGIN IMMEDIATE). A blocked ``flock`` wakes as soon as it is
    released. Reentrant within a thread. The lock file is opened for each turn and closed
    after it, so no descriptor outlives a transaction or crosses a fork."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._mutex = threading.RLock()
        self._depth = 0
        self._fd: int | None = None

    @contextmanager
    def turn(self) -> Iterator[None]:
        """Hold the write turn (already held by this thread: nothing more to wait for)."""
        with self._mutex:
            if self._depth == 0:
                fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
                self._fd = fd
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
                if self._depth == 0 and self._fd is not None:
                    os.close(self._fd)  # closing the last descriptor releases the lock
                    self._fd = None
