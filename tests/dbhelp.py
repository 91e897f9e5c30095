"""Small helpers shared by tests that look into a database or at JSON-lines logs."""

from __future__ import annotations

import contextlib
import json

import sqlalchemy as sa


def q(url: str, sql: str, **params):
    """Run one statement in its own transaction; rows when it returns any."""
    eng = sa.create_engine(url)
    try:
        with eng.begin() as c:
            res = c.execute(sa.text(sql), params)
            return res.fetchall() if res.returns_rows else None
    finally:
        eng.dispose()


def heads(url: str, table: str = "alembic_version") -> list[str]:
    """The revisions in the version table ([] when there is none)."""
    try:
        return sorted(r[0] for r in q(url, f"SELECT version_num FROM {table}"))
    except sa.exc.ProgrammingError:
        return []


@contextlib.contextmanager
def table_locked(url: str, table: str, mode: str = "ACCESS SHARE"):
    """Another session holds a lock on ``table`` for the block (a migration's DDL then waits for it)."""
    eng = sa.create_engine(url)
    holder = eng.connect()
    try:
        holder.execute(sa.text(f"LOCK TABLE {table} IN {mode} MODE"))
        yield
    finally:
        holder.rollback()
        holder.close()
        eng.dispose()


def json_lines(text: str) -> list[dict]:
    """The JSON objects among the lines of a log."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out
