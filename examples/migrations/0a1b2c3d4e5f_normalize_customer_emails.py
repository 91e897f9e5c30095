"""customers.email_normalized, computed in Python in batches

Revision ID: 0a1b2c3d4e5f
Revises: e5f6a7b8c9d0
Create Date: 2026-04-02 08:45:00

A data migration that reads rows through the connection: it cannot be
rendered as offline SQL, and dbrev's plan says so.
"""
import sqlalchemy as sa
from alembic import op

revision = "0a1b2c3d4e5f"
down_revision = "e5f6a7b8c9d0"
branch_labels = None
depends_on = None

BATCH = 1000


def normalize(email: str) -> str:
    local, _, domain = email.strip().partition("@")
    return f"{local.split('+', 1)[0].lower()}@{domain.lower()}"


def upgrade():
    op.add_column("customers", sa.Column("email_normalized", sa.String(255), nullable=True))
    conn = op.get_bind()
    customers = sa.table("customers", sa.column("id", sa.Integer), sa.column("email", sa.String),
                         sa.column("email_normalized", sa.String))
    last_id = 0
    while True:
        rows = conn.execute(
            sa.select(customers.c.id, customers.c.email)
            .where(customers.c.id > last_id).order_by(customers.c.id).limit(BATCH)
        ).fetchall()
        if not rows:
            break
        conn.execute(
            customers.update().where(customers.c.id == sa.bindparam("cid"))
            .values(email_normalized=sa.bindparam("norm")),
            [{"cid": r.id, "norm": normalize(r.email)} for r in rows],
        )
        last_id = rows[-1].id
    op.create_index("ix_customers_email_normalized", "customers", ["email_normalized"])


def downgrade():
    op.drop_index("ix_customers_email_normalized", table_name="customers")
    op.drop_column("customers", "email_normalized")
