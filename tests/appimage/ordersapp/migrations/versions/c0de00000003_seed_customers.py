"""seed the first customers and their orders (a data step: Money binds Decimals as cents)

Revision ID: c0de00000003
Revises: c0de00000002
Create Date: 2026-11-09 08:40:02
"""
import decimal

import sqlalchemy as sa
from alembic import op

from ordersapp.types import Money

revision = "c0de00000003"
down_revision = "c0de00000002"
branch_labels = None
depends_on = None

customer = sa.table("customer", sa.column("id", sa.Integer), sa.column("email", sa.String),
                    sa.column("balance", Money()))
orders = sa.table("orders", sa.column("id", sa.Integer), sa.column("customer_id", sa.Integer),
                  sa.column("total", Money()), sa.column("state", sa.String))

CUSTOMERS = [
    {"id": 1, "email": "ada@example.org", "balance": decimal.Decimal("12.50")},
    {"id": 2, "email": "grace@example.org", "balance": decimal.Decimal("0")},
    {"id": 3, "email": "linus@example.org", "balance": decimal.Decimal("99.99")},
]
ORDERS = [
    {"id": 1, "customer_id": 1, "total": decimal.Decimal("19.90"), "state": "paid"},
    {"id": 2, "customer_id": 1, "total": decimal.Decimal("5.00"), "state": "new"},
    {"id": 3, "customer_id": 2, "total": decimal.Decimal("120.00"), "state": "shipped"},
    {"id": 4, "customer_id": 3, "total": decimal.Decimal("7.25"), "state": "cancelled"},
]


def upgrade() -> None:
    op.bulk_insert(customer, CUSTOMERS)
    op.bulk_insert(orders, ORDERS)
    # explicit ids: the serial sequences move past them, as the application's own inserts need
    op.execute("SELECT setval(pg_get_serial_sequence('customer', 'id'), (SELECT max(id) FROM customer))")
    op.execute("SELECT setval(pg_get_serial_sequence('orders', 'id'), (SELECT max(id) FROM orders))")


def downgrade() -> None:
    op.execute(orders.delete().where(orders.c.id.in_([o["id"] for o in ORDERS])))
    op.execute(customer.delete().where(customer.c.id.in_([c["id"] for c in CUSTOMERS])))
