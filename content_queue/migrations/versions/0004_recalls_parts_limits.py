"""recall deliveries, send parts, shared rate limits, shared key-value entries

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 00:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(
            sa.Column("action", sa.String(16), nullable=False, server_default="publish")
        )
        batch.add_column(sa.Column("recall_of", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_deliveries_recall_of", "deliveries", ["recall_of"], ["id"])
        batch.create_index("ix_deliveries_recall_of", ["recall_of"])
        batch.drop_constraint("uq_delivery_notice_endpoint", type_="unique")
        batch.create_unique_constraint(
            "uq_delivery_notice_endpoint_action", ["notice_id", "endpoint_id", "action"]
        )
    op.create_table(
        "send_parts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("delivery_id", sa.Integer(), sa.ForeignKey("deliveries.id"), nullable=False),
        sa.Column("part_key", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("external_ref", sa.String(255), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.UniqueConstraint("delivery_id", "part_key", name="uq_send_part"),
    )
    op.create_index("ix_send_parts_delivery_id", "send_parts", ["delivery_id"])
    op.create_table(
        "rate_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key", sa.String(128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_rate_events_key_at", "rate_events", ["key", "at"])
    op.create_table(
        "kv_entries",
        sa.Column("key", sa.String(191), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("kv_entries")
    op.drop_index("ix_rate_events_key_at", "rate_events")
    op.drop_table("rate_events")
    op.drop_index("ix_send_parts_delivery_id", "send_parts")
    op.drop_table("send_parts")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_constraint("uq_delivery_notice_endpoint_action", type_="unique")
        batch.create_unique_constraint("uq_delivery_notice_endpoint", ["notice_id", "endpoint_id"])
        batch.drop_index("ix_deliveries_recall_of")
        batch.drop_constraint("fk_deliveries_recall_of", type_="foreignkey")
        batch.drop_column("recall_of")
        batch.drop_column("action")
