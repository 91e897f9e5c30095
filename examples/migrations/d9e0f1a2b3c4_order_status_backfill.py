"""orders.status, backfilled from shipped_at (fulfilment team's branch)

Revision ID: d9e0f1a2b3c4
Revises: b7c8d9e0f1a2
Create Date: 2026-03-11 16:20:00
"""
import sqlalchemy as sa
from alembic import op

revision = "d9e0f1a2b3c4"
down_revision = "b7c8d9e0f1a2"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("orders", sa.Column("status", sa.String(16), nullable=True))
    # Data migration: every existing order gets a status derived from shipped_at.
    op.execute(
        "UPDATE orders SET status = CASE WHEN shipped_at IS NOT NULL THEN 'shipped' ELSE 'pending' END"
    )
    op.alter_column("orders", "status", nullable=False, server_default="pending")


def downgrade():
    op.drop_column("orders", "status")
