"""Seed rows for ``dbrev check --data``: so that what a downgrade would lose is counted.

A scratch database that a history was just applied to holds only the rows the scripts insert
themselves; a downgrade that drops a column the application fills later looks lossless there.
:func:`seed` inserts one row into every table (parents before children), each column given a
value of its type: its default where it has one, a value from the referenced table for a foreign
key, the next integer for an integer key, a tagged text for text, ``now()`` for dates and times,
and so on.  Each table's row goes in under a savepoint: one that cannot be made (a CHECK, a
NOT NULL column of a type dbrev cannot make a value for, a referenced table without rows) is
skipped, and the reason is reported.  :func:`inventory` and :func:`losses` count what a downgrade
removed: rows of the tables it drops, non-null values of the columns it drops, rows it deletes.

Only for scratch databases: ``dbrev check`` refuses any other.
"""

from __future__ import annotations

from sqlalchemy import text

from ..pg import integrity as I
from ..pg.db import quote_ident
from .rehearse import COUNT_CAP, Loss, catalog_objects

_TABLES = """
    SELECT c.oid::bigint, format('%I.%I', n.nspname, c.relname)
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition AND {ns} AND {rel} AND {ext}
    ORDER BY 2"""

_COLUMNS = """
    SELECT a.attrelid::bigint, a.attnum::int, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
           a.atthasdef, a.attidentity, a.attgenerated,
           coalesce(bt.typcategory, t.typcategory), coalesce(bt.typname, t.typname), t.typtype,
           a.atttypid::bigint,
           EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indisunique
                   AND a.attnum = ANY (i.indkey)) AS is_unique
    FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
    WHERE a.attrelid = ANY (CAST(:oids AS bigint[])) AND a.attnum > 0 AND NOT a.attisdropped
    ORDER BY a.attrelid, a.attnum"""

_FKS = """
    SELECT conrelid::bigint, confrelid::bigint, conkey::int[], confkey::int[]
    FROM pg_constraint WHERE contype = 'f' AND conrelid = ANY (CAST(:oids AS bigint[]))"""

_INTEGERS = {"int2", "int4", "int8"}


def _tables(conn, exclude_schemas, exclude_tables) -> dict[int, str]:
    sql = _TABLES.format(ns=I.ns_filter("n"), rel=I.rel_filter("n", "c"), ext=I.not_ext("pg_class", "c.oid"))
    rows = conn.execute(text(sql), I.exclusion_params(exclude_schemas, exclude_tables)).all()
    return {int(o): name for o, name in rows}


def dependency_order(tables: dict[int, str], fks) -> list[int]:
    """Referenced tables first (a cycle is broken where it is met)."""
    needs: dict[int, set[int]] = {o: set() for o in tables}
    for rel, ref, _, _ in fks:
        if rel in needs and ref in tables and ref != rel:
            needs[rel].add(ref)
    out: list[int] = []
    seen: set[int] = set()

    def visit(o: int, path: set[int]) -> None:
        if o in seen or o in path:
            return
        path.add(o)
        for r in sorted(needs[o], key=lambda x: tables[x]):
            visit(r, path)
        path.discard(o)
        seen.add(o)
        out.append(o)

    for o in sorted(tables, key=lambda x: tables[x]):
        visit(o, set())
    return out


def _value(col: dict, table: str, tag: str) -> str | None:
    """A SQL expression of the column's type, or None when dbrev cannot make one."""
    t, cat, base, name = col["type"], col["category"], col["base"], col["name"]
    q = quote_ident(name)
    lit = I.sql_literal
    if col["unique"] and base in _INTEGERS:
        return f"(SELECT coalesce(max({q}), 0) + 1 FROM {table})"
    if cat == "B":
        return "true"
    if cat == "N":
        return f"CAST('1' AS {t})"
    if cat == "S":
        return f"CAST({lit(f'seed {tag} {name}')} AS {t})"
    if cat == "D":
        return f"CAST(now() AS {t})"
    if cat == "T":
        return f"CAST('1 day' AS {t})"
    if cat == "E":
        return (f"CAST((SELECT e.enumlabel FROM pg_enum e WHERE e.enumtypid = {int(col['typid'])} "
                f"ORDER BY e.enumsortorder LIMIT 1) AS {t})")
    if cat == "A":
        return f"CAST('{{}}' AS {t})"
    if cat == "I":
        return f"CAST('127.0.0.1' AS {t})"
    if cat == "R":
        return f"CAST('empty' AS {t})"
    if cat == "V":
        return f"CAST('1' AS {t})"
    if base == "uuid":
        return f"CAST(md5({lit(f'seed {tag} {table} {name}')}) AS {t})"
    if base in ("json", "jsonb"):
        return f"CAST('{{}}' AS {t})"
    if base == "bytea":
        return f"CAST(decode('00', 'hex') AS {t})"
    if base in ("macaddr", "macaddr8"):
        return f"CAST('08:00:2b:01:02:03' AS {t})"
    if base == "xml":
        return f"CAST('<seed/>' AS {t})"
    return None


def seed(conn, exclude_schemas, exclude_tables, tag: str) -> tuple[dict[str, int], dict[str, str]]:
    """One row into each table, in the caller's transaction (a savepoint per table).  Returns
    (``{table: rows inserted}``, ``{table: why it was skipped}``)."""
    tables = _tables(conn, exclude_schemas, exclude_tables)
    if not tables:
        return {}, {}
    oids = list(tables)
    cols: dict[int, list[dict]] = {o: [] for o in oids}
    for (rel, num, name, typ, notnull, hasdef, ident, gen, cat, base, typtype, typid, uniq) in conn.execute(
            text(_COLUMNS), {"oids": oids}).all():
        cols[int(rel)].append({"num": num, "name": name, "type": typ, "notnull": notnull, "hasdef": hasdef,
                               "identity": ident, "generated": gen, "category": cat, "base": base,
                               "typtype": typtype, "typid": typid, "unique": uniq})
    fks = [(int(r), int(f), list(k), list(fk)) for r, f, k, fk in conn.execute(text(_FKS), {"oids": oids}).all()]
    seeded: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for oid in dependency_order(tables, fks):
        table = tables[oid]
        try:
            values = _row(conn, table, cols[oid], [fk for fk in fks if fk[0] == oid], tables, cols, tag)
        except _Skip as e:
            skipped[table] = str(e)
            continue
        names = ", ".join(quote_ident(n) for n in values)
        sql = (f"INSERT INTO {table} ({names}) VALUES ({', '.join(values.values())})" if values
               else f"INSERT INTO {table} DEFAULT VALUES")
        sp = conn.begin_nested()
        try:
            conn.execute(text(sql))
            sp.commit()
            seeded[table] = 1
        except Exception as e:  # noqa: BLE001 - a row the table refuses is reported, not fatal
            sp.rollback()
            msg = str(getattr(e, "orig", None) or e).strip().splitlines()
            skipped[table] = f"the row was refused: {msg[0] if msg else type(e).__name__}"
    return seeded, skipped


class _Skip(Exception):
    pass


def _row(conn, table: str, columns: list[dict], fks, tables, cols, tag: str) -> dict[str, str]:
    by_num = {c["num"]: c for c in columns}
    values: dict[str, str] = {}
    for rel, ref, keys, ref_keys in fks:
        mine = [by_num[k] for k in keys]
        if ref == rel or ref not in tables:
            if all(not c["notnull"] for c in mine):
                continue  # NULL: a self-reference (or a table outside the check) with nothing to point at
            raise _Skip(f"a NOT NULL foreign key to {'itself' if ref == rel else 'a table outside the check'} "
                        f"({', '.join(c['name'] for c in mine)})")
        ref_cols = {c["num"]: c for c in cols[ref]}
        names = [quote_ident(ref_cols[k]["name"]) for k in ref_keys]
        row = conn.execute(text(f"SELECT {', '.join(names)} FROM {tables[ref]} "
                                f"WHERE {' AND '.join(n + ' IS NOT NULL' for n in names)} LIMIT 1")).first()
        if row is None:
            if all(not c["notnull"] for c in mine):
                continue
            raise _Skip(f"its foreign key ({', '.join(c['name'] for c in mine)}) references {tables[ref]}, "
                        f"which has no row")
        for c, v in zip(mine, row):
            values[c["name"]] = f"CAST({I.sql_literal(str(v))} AS {c['type']})"
    for c in columns:
        if c["name"] in values or c["generated"] or c["identity"] or c["hasdef"]:
            continue  # generated, identity, defaults: the table's own value
        v = _value(c, table, tag)
        if v is None:
            if c["notnull"]:
                raise _Skip(f"column {c['name']} is NOT NULL, of type {c['type']}, which dbrev cannot make a "
                            f"value for")
            continue
        values[c["name"]] = v
    return values


# -- what a downgrade removed ----------------------------------------------------------

def inventory(conn, exclude_schemas, exclude_tables) -> dict:
    """Tables and columns (keyed by OID and attnum: a rename keeps the key), each table's rows and each
    column's non-null values (one scan per table, each count capped at COUNT_CAP)."""
    objs = catalog_objects(conn, exclude_schemas, exclude_tables)
    counts: dict[tuple[int, int], int] = {}
    by_table: dict[int, list[tuple[int, str]]] = {}
    for (oid, num), (table, col) in objs.items():
        if num:
            by_table.setdefault(oid, []).append((num, col))
    for (oid, num), (table, _) in objs.items():
        if num:
            continue
        cs = sorted(by_table.get(oid, []))
        exprs = ["count(*)"] + [f"count({quote_ident(c)})" for _, c in cs]
        row = conn.execute(text(f"SELECT {', '.join(exprs)} FROM (SELECT * FROM {table} LIMIT {COUNT_CAP + 1}) s")
                           ).first()
        counts[(oid, 0)] = int(row[0])
        for (n, _), v in zip(cs, row[1:]):
            counts[(oid, n)] = int(v)
    return {"objects": objs, "counts": counts}


def losses(before: dict, after: dict) -> list[Loss]:
    """What went between two inventories: dropped tables' rows, dropped columns' values, deleted rows.  PURE."""
    out: list[Loss] = []
    ob, oa = before["objects"], after["objects"]
    gone_tables = {k[0] for k in ob if k[1] == 0 and k not in oa}
    for key, (table, col) in sorted(ob.items(), key=lambda kv: (kv[1][0], kv[1][1] or "")):
        n = before["counts"].get(key, 0)
        if key in oa or not n or (key[1] and key[0] in gone_tables):
            continue
        out.append(Loss(table, col, min(n, COUNT_CAP), "table" if key[1] == 0 else "column", n > COUNT_CAP))
    for key, (table, col) in sorted(oa.items(), key=lambda kv: kv[1][0]):
        if key[1] or key not in ob:
            continue
        fewer = before["counts"].get(key, 0) - after["counts"].get(key, 0)
        if fewer > 0:
            out.append(Loss(table, None, fewer, "rows"))
    return out
