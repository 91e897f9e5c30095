"""The application's own column types (the scripts import them, as autogenerate writes them)."""

from __future__ import annotations

import decimal

import sqlalchemy as sa


class Money(sa.types.TypeDecorator):
    """Money: integer cents in the database, a Decimal in Python."""

    impl = sa.BigInteger
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return int((decimal.Decimal(value) * 100).to_integral_value())

    def process_literal_param(self, value, dialect):
        return self.process_bind_param(value, dialect)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return decimal.Decimal(value) / 100


class CountryCode(sa.types.TypeDecorator):
    """An ISO 3166 alpha-2 code, stored upper-case in a char(2)."""

    impl = sa.CHAR(2)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else str(value).upper()

    def process_literal_param(self, value, dialect):
        return self.process_bind_param(value, dialect)
