"""add customers.phone

Revision ID: b7c8d9e0f1a2
Revises: a1b2c3d4e5f6
Create Date: 2026-02-03 14:05:00
"""
import sqlalchemy as sa
from alembic import op

revision = "b7c8d9e0f1a2"
down_revision = "a1b2c3d4e5f6"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("customers", sa.Column("phone", sa.String(32), nullable=True))


def downgrade():
    # Drops whatever phone numbers were stored since the upgrade.
    op.drop_column("customers", "phone")
