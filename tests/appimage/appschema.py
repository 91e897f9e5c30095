"""What the ordersapp tests compare and look at: its revisions, a database's schema as plain data
(from the catalog, ``dbrev``'s own schemas left out), its row counts.

Imported by tests/appimage/test_ordersapp.py (host), tests/operator/test_appimage_node.py and
bench/bench_jobs.py (``tests/appimage`` on ``sys.path``).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

HERE = Path(__file__).resolve().parent
APP = HERE / "ordersapp"  # alembic.ini, ordersapp/, migrations/ (env.py + versions/)
BROKEN = HERE / "broken"  # the :broken tag's extra, failing script

REVS = [p.name.split("_", 1)[0] for p in sorted((APP / "migrations" / "versions").glob("*.py"))]
V1_HEAD, V2_HEAD = REVS[2], REVS[4]  # the heads of images :v1 (3 scripts) and :v2 (all 5)
BROKEN_REV = "c0de00000006"
TABLES = ("customer", "orders", "shipment")
#: names only env.py's naming convention gives (PostgreSQL's own would be customer_pkey, ...)
CONVENTION_NAMES = ("pk_customer", "uq_customer_email", "fk_orders_customer_id_customer", "ck_orders_state",
                    "ix_orders_customer_id")
#: schemas that are dbrev's own bookkeeping (state, archive), not the application's
DBREV_SCHEMAS = ("dbrev", "dbrev_archive")

_EXCLUDED = ("pg_catalog", "information_schema", "pg_toast", *DBREV_SCHEMAS)


def _rows(conn, sql: str) -> list[tuple]:
    return [tuple(r) for r in conn.execute(sa.text(sql), {"ex": list(_EXCLUDED)})]


def schema(url: str) -> dict[str, list[tuple]]:
    """The application's schema as sorted plain rows: tables, columns (type, nullability, default),
    constraints (name, kind, definition), indexes (name, definition), sequences, types, views."""
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            not_ours = "NOT (n.nspname = ANY(:ex)) AND n.nspname NOT LIKE 'pg_temp%'"
            return {
                "tables": sorted(_rows(c, f"""
                    SELECT n.nspname, cl.relname, cl.relkind FROM pg_class cl JOIN pg_namespace n ON n.oid = cl.relnamespace
                    WHERE cl.relkind IN ('r', 'p', 'v', 'm', 'S') AND {not_ours}""")),
                "columns": sorted(_rows(c, f"""
                    SELECT n.nspname, cl.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                           pg_get_expr(d.adbin, d.adrelid)
                    FROM pg_attribute a JOIN pg_class cl ON cl.oid = a.attrelid
                    JOIN pg_namespace n ON n.oid = cl.relnamespace
                    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
                    WHERE a.attnum > 0 AND NOT a.attisdropped AND cl.relkind IN ('r', 'p', 'v', 'm')
                      AND {not_ours}""")),
                "constraints": sorted(_rows(c, f"""
                    SELECT n.nspname, cl.relname, co.conname, co.contype, pg_get_constraintdef(co.oid)
                    FROM pg_constraint co JOIN pg_class cl ON cl.oid = co.conrelid
                    JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE {not_ours}""")),
                "indexes": sorted(_rows(c, f"""
                    SELECT n.nspname, cl.relname, pg_get_indexdef(i.indexrelid)
                    FROM pg_index i JOIN pg_class cl ON cl.oid = i.indexrelid
                    JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE {not_ours}""")),
                "types": sorted(_rows(c, f"""
                    SELECT n.nspname, t.typname, t.typtype FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                    WHERE t.typtype IN ('e', 'd', 'c') AND t.typrelid = 0 AND {not_ours}""")),
            }
    finally:
        eng.dispose()


def constraint_names(url: str) -> set[str]:
    s = schema(url)
    return {r[2] for r in s["constraints"]} | {r[1] for r in s["indexes"]}


def counts(url: str) -> dict[str, int | None]:
    """Rows per application table (None: the table does not exist)."""
    eng = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with eng.connect() as c:
            out = {}
            for t in TABLES:
                exists = c.execute(sa.text("SELECT to_regclass(:t)"), {"t": f"public.{t}"}).scalar()
                out[t] = c.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar() if exists else None
            return out
    finally:
        eng.dispose()


def diff(a: dict, b: dict) -> dict[str, tuple[list, list]]:
    """What differs between two :func:`schema` results: part -> (only in a, only in b)."""
    out = {}
    for k in sorted(set(a) | set(b)):
        x, y = set(a.get(k, [])), set(b.get(k, []))
        if x != y:
            out[k] = (sorted(x - y), sorted(y - x))
    return out
