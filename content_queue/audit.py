"""The audit log as a hash chain: each entry seals the one before it.

Every entry stores ``prev_hash`` (the previous entry's hash) and ``hash`` = SHA-256 over
a canonical JSON of its own fields and ``prev_hash``. Editing an entry breaks its hash;
deleting or reordering entries breaks the next entry's ``prev_hash``; cutting entries
off the end is caught by comparing the head with one written down earlier
(``villagecast audit verify`` prints it; ``--expect-head`` checks it).

Hashes are assigned in the writing transaction (a ``before_flush`` hook), so every
code path that adds an :class:`~content_queue.db.AuditEntry` is chained. SQLite's
``BEGIN IMMEDIATE`` serialises writers; on PostgreSQL a transaction-scoped advisory lock
does the same, so two writers can never chain onto the same predecessor.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from content_queue.db import AuditEntry
from content_queue.i18n import Text, tr

__all__ = ["GENESIS", "AuditReport", "entry_hash", "install_chain", "verify_chain"]

GENESIS = "0" * 64
_PG_LOCK_KEY = 0x76636175  # "vcau": one advisory lock for the audit chain


def entry_hash(
    *,
    at: datetime,
    actor: str,
    action: str,
    notice_id: int | None,
    details: dict[str, Any] | None,
    prev_hash: str,
) -> str:
    payload = {
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "actor": actor,
        "action": action,
        "notice_id": notice_id,
        "details": details or {},
        "prev": prev_hash,
    }
    canonical = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _seal(entry: AuditEntry, prev: str) -> str:
    entry.prev_hash = prev
    entry.hash = entry_hash(
        at=entry.at,
        actor=entry.actor,
        action=entry.action,
        notice_id=entry.notice_id,
        details=entry.details,
        prev_hash=prev,
    )
    return entry.hash


def install_chain(sessions: sessionmaker[Session]) -> None:
    """Chain every new audit entry written through these sessions."""

    @event.listens_for(sessions, "before_flush")
    def _chain(session: Session, _ctx: Any, _instances: Any) -> None:
        new = [o for o in session.new if isinstance(o, AuditEntry)]
        if not new:
            return
        new.sort(key=lambda o: inspect(o).insert_order or 0)
        with session.no_autoflush:
            bind = session.get_bind()
            if bind.dialect.name == "postgresql":
                session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            prev = session.scalar(
                select(AuditEntry.hash)
                .where(AuditEntry.hash.is_not(None))
                .order_by(AuditEntry.id.desc())
                .limit(1)
            )
        prev = prev or GENESIS
        for entry in new:
            if entry.details is None:
                entry.details = {}
            prev = _seal(entry, prev)


@dataclass
class AuditReport:
    count: int = 0
    head: str = GENESIS
    problems: list[tuple[int, Text]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_chain(entries: Iterable[AuditEntry]) -> AuditReport:
    """Walk the entries in id order and report every link that does not hold."""
    report = AuditReport()
    prev = GENESIS
    for e in entries:
        report.count += 1
        if e.prev_hash != prev:
            report.problems.append(
                (
                    e.id,
                    tr(
                        "第 {id} 条的前一条哈希对不上：它之前的记录被删除、插入或改动过",
                        "entry {id} does not follow the one before it: an entry before it "
                        "was deleted, inserted or edited",
                        id=e.id,
                    ),
                )
            )
        expected = entry_hash(
            at=e.at,
            actor=e.actor,
            action=e.action,
            notice_id=e.notice_id,
            details=e.details,
            prev_hash=e.prev_hash or "",
        )
        if e.hash != expected:
            report.problems.append(
                (
                    e.id,
                    tr(
                        "第 {id} 条的内容与其哈希不符：这条记录被改动过",
                        "entry {id} does not match its hash: it was edited",
                        id=e.id,
                    ),
                )
            )
        prev = e.hash or ""
    report.head = prev
    return report
