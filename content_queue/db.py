"""Tables of the store: notices, deliveries, attempts, feed fetches and the audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "Attempt",
    "AuditEntry",
    "Base",
    "Delivery",
    "Device",
    "DeviceCommand",
    "FeedFetch",
    "KvEntry",
    "Notice",
    "PresenceEvent",
    "RateEvent",
    "SendPart",
    "UTCDateTime",
    "User",
    "WebSession",
]


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite keeps no zone, so it is restored here)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class Notice(Base):
    __tablename__ = "notices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(32))
    priority: Mapped[str] = mapped_column(String(16))
    targets: Mapped[dict[str, Any]] = mapped_column(JSON)
    channels: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    table: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    publish_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    author: Mapped[str] = mapped_column(String(64), default="")
    revision: Mapped[int] = mapped_column(Integer, default=1)
    supersedes_id: Mapped[int | None] = mapped_column(
        ForeignKey("notices.id"), nullable=True, index=True
    )
    state: Mapped[str] = mapped_column(String(16), default="active")
    """active or withdrawn."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Delivery(Base):
    """One notice to one endpoint: the unit of work and the source of truth."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint(
            "notice_id", "endpoint_id", "action", name="uq_delivery_notice_endpoint_action"
        ),
        Index("ix_deliveries_status_due", "status", "due_at"),
        Index("ix_deliveries_endpoint_status", "endpoint_id", "status"),
        # The dashboard groups a notice's deliveries by place, channel and state from here.
        Index(
            "ix_deliveries_overview",
            "notice_id",
            "action",
            "township_id",
            "village_id",
            "kind",
            "status",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    notice_id: Mapped[int] = mapped_column(ForeignKey("notices.id"), index=True)
    endpoint_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16), default="publish", server_default="publish")
    """``publish`` (send the notice) or ``recall`` (take it back: clear, stop, delete)."""
    recall_of: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id"), nullable=True, index=True
    )
    """For a recall: the publish delivery it takes back."""
    village_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    township_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime)
    """Earliest time the delivery may be attempted (publish time, then retry time)."""
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    leased_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_zh: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_en: Mapped[str | None] = mapped_column(Text, nullable=True)
    external_ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """What the channel wants remembered: the engine that spoke, the clip, moved plays."""
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Attempt(Base):
    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """sent, delivered, transient, permanent, content, config, lost, stale."""
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_zh: Mapped[str | None] = mapped_column(Text, nullable=True)
    error_en: Mapped[str | None] = mapped_column(Text, nullable=True)


class FeedFetch(Base):
    """The TV platform fetched a village's feed: what was in it is now delivered."""

    __tablename__ = "feed_fetches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    endpoint_id: Mapped[str] = mapped_column(String(64), index=True)
    fetched_at: Mapped[datetime] = mapped_column(UTCDateTime)
    feed_format: Mapped[str] = mapped_column(String(8))
    client: Mapped[str] = mapped_column(String(255), default="")


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    notice_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    """SHA-256 sealing this entry and ``prev_hash`` (content_queue.audit)."""


class DeviceCommand(Base):
    """A signed command sent to a device for a delivery, and what the device said of it."""

    __tablename__ = "device_commands"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"), index=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sync: Mapped[bool] = mapped_column(default=False)
    """Re-sent to a device that came back with no memory of what to show."""
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    acked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    ack_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    ack_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    ack_detail: Mapped[str | None] = mapped_column(String(255), nullable=True)


class Device(Base):
    """The last known state of an LED board or loudspeaker."""

    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="unknown")
    last_seen: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    firmware: Mapped[str | None] = mapped_column(String(64), nullable=True)
    capabilities: Mapped[list[str]] = mapped_column(JSON, default=list)
    showing: Mapped[list[str]] = mapped_column(JSON, default=list)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class PresenceEvent(Base):
    __tablename__ = "presence_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    fresh_boot: Mapped[bool] = mapped_column(default=False)


class SendPart(Base):
    """One message of a multi-part send (a WeCom part, a voice clip, an article).

    A part is recorded ``sending`` before the request and ``accepted`` after the far
    side took it, so a retry or a sweeper never sends an accepted part again and a part
    left ``sending`` by a crash is known to have an unknown outcome.
    """

    __tablename__ = "send_parts"
    __table_args__ = (UniqueConstraint("delivery_id", "part_key", name="uq_send_part"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id"), index=True)
    part_key: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16))
    """``sending``, ``accepted``, ``unknown`` or ``failed``."""
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    external_ref: Mapped[str | None] = mapped_column(String(255), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)


class RateEvent(Base):
    """One use of a rate-limited resource (a robot's message), for a limiter shared by
    every worker process on every machine."""

    __tablename__ = "rate_events"
    __table_args__ = (Index("ix_rate_events_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(UTCDateTime)


class KvEntry(Base):
    """Small shared state with an expiry: access tokens, per-endpoint send locks."""

    __tablename__ = "kv_entries"

    key: Mapped[str] = mapped_column(String(191), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class User(Base):
    """A person who signs in (dashboard, later the CLI): a role and the places it covers.

    ``township_id`` scopes a township officer, ``villages`` a secretary or a reviewer; a
    county administrator has neither. Issue #7's review rules use the same accounts.
    """

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("username", name="uq_users_username"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(64), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(24))
    """secretary, reviewer, township_officer or county_admin."""
    township_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    villages: Mapped[list[str]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class WebSession(Base):
    """A signed-in browser. The cookie holds a random token; only its SHA-256 is stored,
    so a copy of the database gives no usable session."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    """SHA-256 (hex) of the cookie's token."""
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    ip: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(255), default="")
