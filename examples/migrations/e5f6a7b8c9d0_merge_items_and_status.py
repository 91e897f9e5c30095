"""merge the order_items and order status branches

Revision ID: e5f6a7b8c9d0
Revises: c3d4e5f6a7b8, d9e0f1a2b3c4
Create Date: 2026-03-15 10:00:00
"""

revision = "e5f6a7b8c9d0"
down_revision = ("c3d4e5f6a7b8", "d9e0f1a2b3c4")
branch_labels = None
depends_on = None


def upgrade():
    pass


def downgrade():
    pass
