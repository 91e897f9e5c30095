"""index orders.created_at without blocking writes

Revision ID: f1a2b3c4d5e6
Revises: 0a1b2c3d4e5f
Create Date: 2026-04-20 13:10:00

CREATE INDEX CONCURRENTLY cannot run inside a transaction: the run that
includes this step uses one transaction per step, and dbrev's plan says so.
"""
from alembic import op

revision = "f1a2b3c4d5e6"
down_revision = "0a1b2c3d4e5f"
branch_labels = None
depends_on = None


def upgrade():
    with op.get_context().autocommit_block():
        op.create_index("ix_orders_created_at", "orders", ["created_at"],
                        postgresql_concurrently=True, if_not_exists=True)


def downgrade():
    with op.get_context().autocommit_block():
        op.drop_index("ix_orders_created_at", table_name="orders",
                      postgresql_concurrently=True, if_exists=True)
