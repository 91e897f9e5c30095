"""The application's models (SQLAlchemy 2 declarative) and the metadata its env.py gives Alembic."""

from __future__ import annotations

import datetime
import decimal

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ordersapp.constants import ORDER_STATES
from ordersapp.types import CountryCode, Money

#: every constraint and index the migrations create without a name of their own is named by this
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class Customer(Base):
    __tablename__ = "customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(320), unique=True)
    balance: Mapped[decimal.Decimal] = mapped_column(Money(), server_default="0")
    country: Mapped[str] = mapped_column(CountryCode())


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (sa.CheckConstraint(sa.column("state").in_(ORDER_STATES), name="state"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    customer_id: Mapped[int] = mapped_column(sa.ForeignKey("customer.id"), index=True)
    total: Mapped[decimal.Decimal] = mapped_column(Money())
    state: Mapped[str] = mapped_column(sa.String(16), server_default="new")
    created_at: Mapped[datetime.datetime] = mapped_column(sa.DateTime(timezone=True), server_default=sa.func.now())


class Shipment(Base):
    __tablename__ = "shipment"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id", ondelete="CASCADE"), unique=True)
    carrier: Mapped[str] = mapped_column(sa.String(16), index=True)
    shipped_at: Mapped[datetime.datetime | None] = mapped_column(sa.DateTime(timezone=True))
