"""customer.country (backfilled with the default country)

Revision ID: c0de00000004
Revises: c0de00000003
Create Date: 2026-11-16 11:27:55
"""
import sqlalchemy as sa
from alembic import op

import ordersapp.types
from ordersapp.constants import DEFAULT_COUNTRY

revision = "c0de00000004"
down_revision = "c0de00000003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("customer", sa.Column("country", ordersapp.types.CountryCode(), nullable=True))
    customer = sa.table("customer", sa.column("country", ordersapp.types.CountryCode()))
    op.execute(customer.update().values(country=DEFAULT_COUNTRY.lower()))  # the type stores it upper-case
    op.alter_column("customer", "country", existing_type=ordersapp.types.CountryCode(), nullable=False)
    op.create_check_constraint("country_upper", "customer", "country = upper(country)")  # ck_customer_country_upper


def downgrade() -> None:
    op.drop_constraint(op.f("ck_customer_country_upper"), "customer", type_="check")
    op.drop_column("customer", "country")
