"""orders.note, and one open order per customer (fails: the seeded data has two for customer 1)

Only in the `:broken` image: its newest script. The unique constraint cannot be created over the data
the history seeded (customer 1 has two orders), so the step raises when it runs against the database —
after it added a column, which the rollback must undo. Offline (the plan) it renders fine.

Revision ID: c0de00000006
Revises: c0de00000005
Create Date: 2026-11-30 10:05:41
"""
import sqlalchemy as sa
from alembic import op

revision = "c0de00000006"
down_revision = "c0de00000005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orders", sa.Column("note", sa.Text(), nullable=True))
    op.create_unique_constraint(None, "orders", ["customer_id"])  # uq_orders_customer_id: duplicate key


def downgrade() -> None:
    op.drop_constraint(op.f("uq_orders_customer_id"), "orders", type_="unique")
    op.drop_column("orders", "note")
