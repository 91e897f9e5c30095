"""orders

Revision ID: c0de00000002
Revises: c0de00000001
Create Date: 2026-11-05 14:03:11
"""
import sqlalchemy as sa
from alembic import op

import ordersapp.types
from ordersapp.constants import ORDER_STATES

revision = "c0de00000002"
down_revision = "c0de00000001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("total", ordersapp.types.Money(), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="new", nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(sa.column("state").in_(ORDER_STATES), name="state"),  # -> ck_orders_state
        sa.ForeignKeyConstraint(["customer_id"], ["customer.id"]),  # -> fk_orders_customer_id_customer
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_orders_customer_id"), "orders", ["customer_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_orders_customer_id"), table_name="orders")
    op.drop_table("orders")
