"""audit log hash chain

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 00:45:00
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from content_queue.audit import GENESIS, entry_hash

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _aware(value: object) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def upgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.add_column(sa.Column("prev_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("hash", sa.String(64), nullable=True))
    # Seal what is already there, in order, so the chain starts at the first entry.
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT id, at, actor, action, notice_id, details FROM audit_log ORDER BY id")
    ).all()
    prev = GENESIS
    for row in rows:
        details = row.details
        if isinstance(details, str):
            details = json.loads(details)
        digest = entry_hash(
            at=_aware(row.at),
            actor=row.actor,
            action=row.action,
            notice_id=row.notice_id,
            details=details,
            prev_hash=prev,
        )
        conn.execute(
            sa.text("UPDATE audit_log SET prev_hash = :p, hash = :h WHERE id = :id"),
            {"p": prev, "h": digest, "id": row.id},
        )
        prev = digest


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:
        batch.drop_column("hash")
        batch.drop_column("prev_hash")
