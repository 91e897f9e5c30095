"""shipment

Revision ID: c0de00000005
Revises: c0de00000004
Create Date: 2026-11-23 16:50:18
"""
import sqlalchemy as sa
from alembic import op

from ordersapp.constants import CARRIERS

revision = "c0de00000005"
down_revision = "c0de00000004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shipment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=False),
        sa.Column("carrier", sa.String(length=16), nullable=False),
        sa.Column("shipped_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(sa.column("carrier").in_(CARRIERS), name="carrier"),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_unique_constraint(None, "shipment", ["order_id"])  # named by the convention: uq_shipment_order_id
    op.create_index(op.f("ix_shipment_carrier"), "shipment", ["carrier"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_shipment_carrier"), table_name="shipment")
    op.drop_table("shipment")
