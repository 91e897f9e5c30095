"""A custom column type: money as integer cents in the database, a decimal in Python."""

from __future__ import annotations

import decimal

import sqlalchemy as sa


class Money(sa.types.TypeDecorator):
    impl = sa.BigInteger
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return int(decimal.Decimal(value) * 100)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return decimal.Decimal(value) / 100
