"""customer

Revision ID: c0de00000001
Revises:
Create Date: 2026-11-02 09:12:40
"""
import sqlalchemy as sa
from alembic import op

import ordersapp.types

revision = "c0de00000001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # no constraint names here: env.py's naming convention gives pk_customer and uq_customer_email
    op.create_table(
        "customer",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("balance", ordersapp.types.Money(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
    )


def downgrade() -> None:
    op.drop_table("customer")
