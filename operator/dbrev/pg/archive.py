"""Destructive steps keep their data: archive before, restore after.

With the ``Archive`` data-loss policy, just before a step that drops a table
or column, truncates, deletes rows or changes a column's type runs, dbrev
copies what the step would remove into the ``dbrev_archive`` schema — in the
same transaction as the step, after taking a SHARE lock so no write slips in
between — and records it in ``dbrev.archive_manifest`` (revision, object,
rows, checksum).  ``dbrev archive restore`` puts the data back once the schema
has the object again; ``dbrev archive prune`` applies retention.

What is copied:

============================  ==================================================
drop_table, truncate          every row (``LIKE`` the table: same columns)
drop_column, alter_column     the key columns and that column
delete_rows                   the rows matching the DELETE's condition (or, when
                              it has none usable on its own, every row)
============================  ==================================================

The copy is a ``CREATE TABLE ... AS`` (PostgreSQL's fastest); the checksum is
order-independent (XOR of 64-bit row hashes) and computed by a parallel scan of
the fresh copy.  A copy never depends on an object the run may drop next: a
column of a user-defined type (an enum, a domain, an extension's type, arrays
of them) is stored as text, with ``dbrev type: <type>`` as the column's
comment, and cast back to the live column's type on restore.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..core import log as L
from ..core.classify import Effect
from .db import quote_ident
from ..core.errors import BadInput

ARCHIVE_SCHEMA = "dbrev_archive"


@dataclass(frozen=True)
class Relation:
    schema: str
    table: str

    @property
    def sql(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.table)}"

    @property
    def text(self) -> str:
        return f"{self.schema}.{self.table}"


def resolve(conn: Connection, schema: str | None, table: str) -> Relation | None:
    """Where an (unqualified) table name points in this session's search_path; None when missing."""
    name = f"{quote_ident(schema)}.{quote_ident(table)}" if schema else quote_ident(table)
    row = conn.execute(sa.text(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass(:n)"), {"n": name}).first()
    return Relation(row[0], row[1]) if row else None


def key_columns(conn: Connection, rel: Relation) -> list[str]:
    """The primary key, else the first unique index on NOT NULL columns; [] when the table has neither."""
    rows = conn.execute(sa.text("""
        SELECT i.indisprimary, array_agg(a.attname ORDER BY k.ord) AS cols,
               bool_and(a.attnotnull) AS notnull
        FROM pg_index i
        JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = to_regclass(:t) AND i.indisunique AND i.indisvalid AND i.indpred IS NULL
              AND i.indexprs IS NULL
        GROUP BY i.indexrelid, i.indisprimary
        ORDER BY i.indisprimary DESC, i.indexrelid"""), {"t": rel.sql}).all()
    for primary, cols, notnull in rows:
        if primary or notnull:
            return list(cols)
    return []


def _ensure_schema(conn: Connection) -> None:
    conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(ARCHIVE_SCHEMA)}"))


def _archive_name(manifest_id: int, rel: Relation, column: str | None) -> str:
    base = f"a{manifest_id}_{rel.table}" + (f"_{column}" if column else "")
    return re.sub(r"[^A-Za-z0-9_]", "_", base)[:63]


def preserve(conn: Connection, state_schema: str, vt: str, revision: str, direction: str,
             effects: list[Effect]) -> list[dict]:
    """Copy what ``effects`` would remove; returns the manifest rows written."""
    out = []
    seen: set[tuple] = set()
    for e in effects:
        if not e.destructive or not e.table:
            continue
        rel = resolve(conn, e.schema, e.table)
        if rel is None:
            continue  # created earlier in this run, or already gone: nothing stored there yet
        if e.kind in ("drop_column", "alter_column_type") and e.column not in _columns(conn, rel.sql):
            continue  # added by this very step before it drops it: nothing stored there yet
        key = (e.kind, rel.text, e.column, e.where)
        if key in seen:
            continue
        seen.add(key)
        with L.timed("archive", revision=revision, object=rel.text + (f".{e.column}" if e.column else "")):
            out.append(_preserve_one(conn, state_schema, vt, revision, direction, e, rel))
    return out


def _preserve_one(conn: Connection, state_schema: str, vt: str, revision: str, direction: str, e: Effect,
                  rel: Relation) -> dict:
    _ensure_schema(conn)
    conn.execute(sa.text(f"LOCK TABLE {rel.sql} IN SHARE MODE"))
    keys = key_columns(conn, rel)
    column = e.column if e.kind in ("drop_column", "alter_column_type") else None
    mid = conn.execute(sa.text(
        f"INSERT INTO {quote_ident(state_schema)}.archive_manifest (version_table, revision, direction, kind, "
        f"source_schema, source_table, source_column, key_columns, archive_schema, archive_table, rows, checksum) "
        f"VALUES (:vt, :r, :d, :k, :s, :t, :c, :keys, :as, '', 0, '') RETURNING id"),
        {"vt": vt, "r": revision, "d": direction, "k": e.kind, "s": rel.schema, "t": rel.table, "c": column,
         "keys": keys, "as": ARCHIVE_SCHEMA}).scalar()
    name = _archive_name(mid, rel, column)
    target = f"{quote_ident(ARCHIVE_SCHEMA)}.{quote_ident(name)}"
    types = _column_types(conn, rel.sql)
    if column and keys:
        cols = [k for k in keys if k != column] + [column]
    else:
        cols = list(types)  # whole rows: a table, deleted rows, or a column of a table with no key
    # a copy must not depend on what the run drops next (an enum type dropped after its table): columns of
    # user-defined types are kept as text, their type recorded on the column, and cast back on restore
    as_text = [c for c in cols if types[c][1]]
    select_list = ", ".join(f"{quote_ident(c)}::text AS {quote_ident(c)}" if c in as_text else quote_ident(c)
                            for c in cols)
    where = f" WHERE {e.where}" if e.kind == "delete_rows" and e.where else ""
    # CREATE TABLE AS is the fastest copy PostgreSQL has; the checksum is a second, parallel pass
    rows = conn.execute(sa.text(f"CREATE TABLE {target} AS SELECT {select_list} FROM {rel.sql}{where}")).rowcount
    for c in as_text:
        note = f"dbrev type: {types[c][0]}"
        conn.exec_driver_sql(f"COMMENT ON COLUMN {target}.{quote_ident(c)} IS '{note.replace(chr(39), chr(39) * 2)}'",
                             execution_options={"no_parameters": True})
    checksum = table_checksum(conn, target)
    conn.execute(sa.text(f"UPDATE {quote_ident(state_schema)}.archive_manifest SET archive_table=:n, rows=:rows, "
                         f"checksum=:c WHERE id=:id"), {"n": name, "rows": rows, "c": checksum, "id": mid})
    comment = f"dbrev archive {mid}: {e.kind} {rel.text}{'.' + column if column else ''} before {direction} {revision}"
    conn.execute(sa.text(f"COMMENT ON TABLE {target} IS " + "'" + comment.replace("'", "''").replace(":", r"\:")
                         + "'"))
    L.logger.info("Archived data before a destructive step", extra={
        "archive_id": mid, "revision": revision, "kind": e.kind, "object": rel.text + (f".{column}" if column else ""),
        "rows": rows, "archive_table": f"{ARCHIVE_SCHEMA}.{name}"})
    return {"id": mid, "kind": e.kind, "object": rel.text + (f".{column}" if column else ""), "rows": rows,
            "archive_table": f"{ARCHIVE_SCHEMA}.{name}", "checksum": checksum, "revision": revision}


# -- list / restore / prune ----------------------------------------------------

def list_archives(conn: Connection, state_schema: str, vt: str | None = None) -> list[dict]:
    s = quote_ident(state_schema)
    if not conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f"{s}.archive_manifest"}).scalar():
        return []
    where = "WHERE version_table = :vt" if vt else ""
    rows = conn.execute(sa.text(
        f"SELECT id, version_table, revision, direction, kind, source_schema, source_table, source_column, "
        f"key_columns, archive_schema, archive_table, rows, checksum, created_at, restored_at "
        f"FROM {s}.archive_manifest {where} ORDER BY id"), {"vt": vt}).mappings().all()
    return [dict(r) for r in rows]


def table_checksum(conn: Connection, target: str, method: str | None = None) -> str:
    """Order-independent: XOR of 64-bit row hashes.  ``xor64`` hashes the row's values by type
    (PostgreSQL 14+); ``xor64t`` hashes its text form (older servers, or types without a hash)."""
    if method in (None, "xor64"):
        try:
            with conn.begin_nested():
                v = conn.execute(sa.text(
                    f"SELECT coalesce(bit_xor(hash_record_extended(t, 0)), 0) FROM {target} t")).scalar()
            return f"xor64:{v & ((1 << 64) - 1):016x}"
        except sa.exc.DBAPIError:
            if method == "xor64":
                raise
    v = conn.execute(sa.text(
        f"SELECT coalesce(bit_xor(hashtextextended(t::text, 0)), 0) FROM {target} t")).scalar()
    return f"xor64t:{v & ((1 << 64) - 1):016x}"


def verify_checksum(conn: Connection, entry: dict) -> bool:
    target = f"{quote_ident(entry['archive_schema'])}.{quote_ident(entry['archive_table'])}"
    method = entry["checksum"].split(":", 1)[0]
    return table_checksum(conn, target, method) == entry["checksum"]


def _columns(conn: Connection, relsql: str) -> dict[str, str]:
    rows = conn.execute(sa.text(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass(:t) AND attnum > 0 AND NOT attisdropped ORDER BY attnum"), {"t": relsql}).all()
    return {r[0]: r[1] for r in rows}


def _column_types(conn: Connection, relsql: str) -> dict[str, tuple[str, bool]]:
    """column -> (format_type, user-defined: the type, or an array's element type, lives outside pg_catalog)."""
    rows = conn.execute(sa.text("""
        SELECT a.attname, format_type(a.atttypid, a.atttypmod),
               tn.nspname NOT IN ('pg_catalog', 'information_schema')
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
        JOIN pg_namespace tn ON tn.oid = coalesce(et.typnamespace, t.typnamespace)
        WHERE a.attrelid = to_regclass(:t) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"""),
        {"t": relsql}).all()
    return {r[0]: (r[1], bool(r[2])) for r in rows}


def restore(conn: Connection, entry: dict, state_schema: str, force: bool = False) -> dict:
    """Put one archive back; the caller commits.  Returns what happened."""
    if entry.get("restored_at") and not force:
        raise BadInput(f"archive {entry['id']} was already restored at {entry['restored_at']}",
                       hint="pass --force to restore it again")
    if not verify_checksum(conn, entry):
        raise BadInput(f"archive {entry['id']} fails its checksum: its table was changed since it was written",
                       hint="inspect it by hand; dbrev will not restore data it cannot vouch for")
    rel = Relation(entry["source_schema"], entry["source_table"])
    src = f"{quote_ident(entry['archive_schema'])}.{quote_ident(entry['archive_table'])}"
    live = _columns(conn, rel.sql)
    if not live:
        raise BadInput(f"table {rel.text} does not exist at the current revision",
                       hint="upgrade to a revision that has it first, then restore")
    archived = _columns(conn, src)
    kind = entry["kind"]
    keys = list(entry.get("key_columns") or [])
    if kind in ("drop_column", "alter_column_type"):
        col = entry["source_column"]
        if col not in live:
            raise BadInput(f"column {rel.text}.{col} does not exist at the current revision",
                           hint="upgrade to a revision that has it first, then restore")
        if not keys:
            raise BadInput(f"table {rel.text} has no primary key: archive {entry['id']} cannot be matched to rows "
                           f"automatically", hint=f"the rows are kept whole in {src}")
        missing_keys = [k for k in keys if k not in live]
        if missing_keys:
            raise BadInput(f"key column(s) {', '.join(missing_keys)} of {rel.text} no longer exist")
        on = " AND ".join(f"t.{quote_ident(k)} = a.{quote_ident(k)}" for k in keys)
        n = conn.execute(sa.text(
            f"UPDATE {rel.sql} t SET {quote_ident(col)} = a.{quote_ident(col)}::{live[col]} FROM {src} a "
            f"WHERE {on}")).rowcount
        result = {"updated": n, "inserted": 0, "skipped": entry["rows"] - n}
    else:
        cols = [c for c in archived if c in live]
        lost = [c for c in archived if c not in live]
        col_list = ", ".join(quote_ident(c) for c in cols)
        conflict = ""
        live_keys = key_columns(conn, rel)
        if live_keys:
            conflict = f" ON CONFLICT ({', '.join(quote_ident(k) for k in live_keys)}) DO NOTHING"
        # cast to the live column types (columns of user-defined types were archived as text)
        casts = ", ".join(f"a.{quote_ident(c)}::{live[c]}" for c in cols)
        n = conn.execute(sa.text(
            f"INSERT INTO {rel.sql} ({col_list}) SELECT {casts} FROM {src} a{conflict}")).rowcount
        result = {"updated": 0, "inserted": n, "skipped": entry["rows"] - n, "columns_not_restored": lost}
        _bump_sequences(conn, rel)
    conn.execute(sa.text(f"UPDATE {quote_ident(state_schema)}.archive_manifest SET restored_at = now() "
                         f"WHERE id = :id"), {"id": entry["id"]})
    L.logger.info("Restored archived data", extra={"archive_id": entry["id"], "object": rel.text, **{
        k: v for k, v in result.items() if k != "columns_not_restored"}})
    return {"id": entry["id"], "kind": kind, "object": rel.text + (f".{entry['source_column']}"
                                                                  if entry.get("source_column") else ""), **result}


def _bump_sequences(conn: Connection, rel: Relation) -> None:
    """Rows put back with their ids: move owned sequences past them (else the next insert collides)."""
    rows = conn.execute(sa.text("""
        SELECT s.oid::regclass::text AS seq, a.attname
        FROM pg_depend d JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
        JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
        WHERE d.refobjid = to_regclass(:t) AND d.deptype IN ('a', 'i')"""), {"t": rel.sql}).all()
    for seq, col in rows:
        conn.execute(sa.text(
            f"SELECT setval(:s, greatest((SELECT max({quote_ident(col)}) FROM {rel.sql}), "
            f"(SELECT last_value FROM {seq})))"), {"s": seq})


def prune(conn: Connection, state_schema: str, older_than: timedelta | None = None, keep: int | None = None,
          vt: str | None = None, dry_run: bool = False) -> list[dict]:
    """Retention: drop archives older than ``older_than`` and/or beyond the newest ``keep``."""
    entries = list_archives(conn, state_schema, vt)
    doomed = []
    now = datetime.now(timezone.utc)
    newest_first = sorted(entries, key=lambda e: e["id"], reverse=True)
    for i, e in enumerate(newest_first):
        too_old = older_than is not None and now - e["created_at"] > older_than
        too_many = keep is not None and i >= keep
        if too_old or too_many:
            doomed.append(e)
    if not dry_run:
        for e in doomed:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {quote_ident(e['archive_schema'])}."
                                 f"{quote_ident(e['archive_table'])}"))
            conn.execute(sa.text(f"DELETE FROM {quote_ident(state_schema)}.archive_manifest WHERE id = :id"),
                         {"id": e["id"]})
    return doomed


def parse_age(text: str) -> timedelta:
    """``--older-than``: a duration in the one grammar (:mod:`dbrev.core.durations`)."""
    from ..core.durations import EXAMPLES, parse_duration

    try:
        return timedelta(seconds=parse_duration(text.strip()))
    except ValueError:
        raise BadInput(f"invalid age {text!r}", hint=f"use {EXAMPLES}") from None
