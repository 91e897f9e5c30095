"""Integrity checks that scale: catalog facts, not table scans.

Called by the migration runner before and after applying migrations (inside the
migration's transaction when it can be) and by ``dbrev verify`` on demand.

Checks and what they cost
-------------------------
``indexes``      pg_index rows that are not valid / ready / live (catalog only).
``constraints``  pg_constraint rows that are NOT VALID (catalog only).
``orphans``      for each NOT VALID foreign key only (a validated one cannot have
                 orphans): one anti-join ``NOT EXISTS`` query, stopped after
                 ``orphan_cap`` orphan rows.  It reads the child table (the parent
                 side is probed through its unique index), so it is skipped with a
                 warning when the child holds more than ``orphan_scan_rows``
                 (estimated) rows unless ``exact=True``, and runs under a local
                 ``statement_timeout`` (``scan_timeout_ms``).
``sequences``    sequences owned by a column (serial or identity) whose next value
                 is not above ``max(column)``.  ``max()`` is only computed when the
                 column leads a valid, non-partial btree index (one index probe);
                 other columns are reported as "not checked" warnings unless
                 ``exact=True``.
``rowCounts``    needs a before and an after: :func:`table_stats` (estimates from
                 pg_class / pg_stat, catalog only), :func:`xact_row_changes` (rows the
                 current transaction inserted/updated/deleted, from pgstat's
                 backend-local counters), :func:`exact_counts` (``count(*)``: explicit,
                 for the tables a plan touches), :func:`row_count_findings` (pure).
``fingerprint``  sha256 over sorted catalog facts (:func:`fingerprint_facts`).

Transactions
------------
Every function takes a SQLAlchemy ``Connection`` that may be inside an open
transaction (the migration's).  Nothing here commits or rolls back that
transaction and nothing needs autocommit.  Queries that could fail (permission,
timeout, a lock wait cancelled) run inside a SAVEPOINT so a failure never
aborts the caller's transaction; per-object failures become ``warning``
findings.  Settings changed for a query (``search_path`` while collecting
fingerprint facts, ``statement_timeout`` for scans) are transaction-local and
restored afterwards.  On a connection in driver autocommit mode no savepoints are
used and settings are changed for the session and restored.

Names
-----
Objects are named ``schema.table``, ``schema.table.constraint``,
``schema.index`` and ``schema.sequence`` with each part quoted like PostgreSQL's
``quote_ident`` (``public.orders``, ``public."Order Items"``): unambiguous and
valid SQL.  Functions taking table names (``exact_counts``, ``declared_loss``,
``dropped_ok``) also accept unquoted raw names (``public.Order Items``) and
``(schema, table)`` tuples; an unqualified name matches a table of that name in
any schema.  Names are compared exactly (no case folding).
"""

from __future__ import annotations

import hashlib
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator, Mapping

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection

from ..core.options import ALL_CHECKS  # noqa: E402  (one source: the CRD, the CLI and the checks)
CATALOG_CHECKS = ("constraints", "indexes", "sequences", "orphans")
DEFAULT_EXCLUDE_SCHEMAS = ("dbrev", "dbrev_archive")
DEFAULT_EXCLUDE_TABLES = (("public", "alembic_version"),)

#: stop counting orphans of one foreign key after this many rows
ORPHAN_CAP = 10001
#: skip the orphan scan of a child table estimated above this many rows (unless exact)
ORPHAN_SCAN_ROWS = 5_000_000
#: statement_timeout for each orphan / max() query
SCAN_TIMEOUT_MS = 30_000

#: bump when the set or spelling of facts changes: old recorded hashes then differ
FINGERPRINT_VERSION = "dbrev-fingerprint-v1"

ERROR = "error"
WARNING = "warning"


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    check: str  # one of ALL_CHECKS, or "version" / "drift"
    object: str
    count: int
    severity: str  # "error" | "warning"
    message: str

    @property
    def key(self) -> tuple[str, str]:
        """(check, object): tells a pre-existing finding from a new one."""
        return (self.check, self.object)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class IntegrityReport:
    passed: bool
    findings: list[Finding]
    checked_at: str
    fingerprint: str | None = None
    duration_ms: int = 0
    #: the facts behind ``fingerprint`` (not in to_dict: use diff_facts on them)
    facts: list[str] = field(default_factory=list, repr=False, compare=False)

    @classmethod
    def of(cls, findings: list[Finding], fingerprint: str | None = None) -> "IntegrityReport":
        """Passed when no finding is an error; checked now."""
        return cls(passed=not any(f.severity == ERROR for f in findings), findings=list(findings),
                   checked_at=datetime.now(timezone.utc).isoformat(timespec="seconds"), fingerprint=fingerprint)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "findings": [f.to_dict() for f in self.findings],
            "checked_at": self.checked_at,
            "fingerprint": self.fingerprint,
            "duration_ms": self.duration_ms,
        }


@dataclass(frozen=True)
class TableStat:
    table: str  # "schema.name", quote_ident'ed parts
    estimate: int  # pg_class.reltuples, or pg_stat n_live_tup when never analysed


# ---------------------------------------------------------------------------
# Plumbing: savepoints, local settings, filters, names
# ---------------------------------------------------------------------------


def _is_autocommit(conn: Connection) -> bool:
    try:
        return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))
    except Exception:  # pragma: no cover - exotic pools/drivers
        return False


@contextmanager
def _guard(conn: Connection) -> Iterator[None]:
    """Run a block in a SAVEPOINT: an error rolls back to it and re-raises, leaving the
    caller's transaction usable.  RELEASE on success (not a commit)."""
    if _is_autocommit(conn):
        yield
        return
    sp = conn.begin_nested()
    try:
        yield
    except BaseException:
        if sp.is_active:
            sp.rollback()
        raise
    else:
        if sp.is_active:
            sp.commit()


@contextmanager
def _setting(conn: Connection, name: str, value: str) -> Iterator[None]:
    """Change a setting for the block; transaction-local, then restored.  Use inside
    :func:`_guard`: after an error the savepoint rollback restores it."""
    autocommit = _is_autocommit(conn)
    old = conn.execute(text("SELECT current_setting(:n)"), {"n": name}).scalar()
    conn.execute(text("SELECT set_config(:n, :v, :l)"), {"n": name, "v": value, "l": not autocommit})
    try:
        yield
    except BaseException:
        if autocommit:  # nothing aborted; put the session back
            conn.execute(text("SELECT set_config(:n, :v, false)"), {"n": name, "v": old})
        raise
    conn.execute(text("SELECT set_config(:n, :v, :l)"), {"n": name, "v": old, "l": not autocommit})


@contextmanager
def _scan_timeout(conn: Connection, timeout_ms: int | None) -> Iterator[None]:
    """A statement_timeout for one scan; never raises an existing, stricter one."""
    if not timeout_ms:
        yield
        return
    cur = conn.execute(text(
        "SELECT setting::bigint * CASE unit WHEN 's' THEN 1000 WHEN 'min' THEN 60000 ELSE 1 END "
        "FROM pg_settings WHERE name = 'statement_timeout'")).scalar() or 0
    if cur and cur <= timeout_ms:
        yield
        return
    with _setting(conn, "statement_timeout", f"{int(timeout_ms)}ms"):
        yield


def _raw(conn: Connection, sql: str):
    """Execute SQL built from server-quoted identifiers: no bind parameters, so neither
    SQLAlchemy nor the driver interprets ':' or '%' inside identifiers."""
    return conn.exec_driver_sql(sql, execution_options={"no_parameters": True})


# user schemas only: no catalogs, toast or temp schemas, none of the excluded ones
def ns_filter(alias: str) -> str:
    return (f"({alias}.nspname NOT IN ('pg_catalog', 'information_schema') "
            f"AND {alias}.nspname !~ '^pg_(toast|temp)' "
            f"AND NOT ({alias}.nspname = ANY (CAST(:excl AS text[]))))")


def rel_filter(ns_alias: str, rel_alias: str) -> str:
    """Leave out the excluded tables (``x_schema`` NULL = any schema)."""
    return (f"NOT EXISTS (SELECT 1 FROM unnest(CAST(:x_schema AS text[]), CAST(:x_table AS text[])) "
            f"AS x(s, t) WHERE (x.s IS NULL OR x.s = {ns_alias}.nspname) AND x.t = {rel_alias}.relname)")


def not_ext(catalog: str, oid_expr: str) -> str:
    """Not a member of an extension (those belong to the extension's version)."""
    return (f"NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.classid = '{catalog}'::regclass "
            f"AND e.objid = {oid_expr} AND e.deptype = 'e')")


def exclusion_params(exclude_schemas: Iterable[str], exclude_tables: Iterable = ()) -> dict:
    xs, xt = [], []
    for t in exclude_tables:
        s, n = _split_name(t)
        xs.append(s)
        xt.append(n)
    return {"excl": list(exclude_schemas or ()), "x_schema": xs, "x_table": xt}


def _quote_ident(name: str) -> str:
    """Always-quoted identifier (for SQL built from client-side names)."""
    return '"' + name.replace('"', '""') + '"'


def sql_literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _split_name(name) -> tuple[str | None, str]:
    """``(schema | None, table)`` from ``"s.t"``, ``'"S"."T x"'``, ``"t"`` or a tuple.

    Quoted parts are unquoted (``""`` -> ``"``); unquoted parts are kept verbatim (no
    case folding), and an unquoted name splits at its first dot only."""
    if isinstance(name, tuple):
        if len(name) != 2:
            raise ValueError(f"a table is (schema, name), not {name!r}")
        return (name[0] or None, name[1])
    name = str(name)
    if '"' not in name:
        schema, dot, table = name.partition(".")
        return (schema, table) if dot else (None, name)
    parts, cur, i = [], [], 0
    while i < len(name):
        ch = name[i]
        if ch == '"':
            j = i + 1
            while True:
                k = name.find('"', j)
                if k < 0:
                    raise ValueError(f"unbalanced quote in table name {name!r}")
                if name[k + 1:k + 2] == '"':
                    cur.append(name[j:k] + '"')
                    j = k + 2
                    continue
                cur.append(name[j:k])
                i = k + 1
                break
            continue
        if ch == ".":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    if len(parts) > 2:
        raise ValueError(f"expected schema.table, got {name!r}")
    return (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])


def _matcher(names: Iterable) -> Callable[[str], bool]:
    """A predicate over canonical "schema.table" keys: does it match one of ``names``?"""
    exact: set[str] = set()
    qualified: set[tuple[str, str]] = set()
    bare: set[str] = set()
    for n in names or ():
        if isinstance(n, str):
            exact.add(n)
        s, t = _split_name(n)
        if s is None:
            bare.add(t)
        else:
            qualified.add((s, t))

    def match(key: str) -> bool:
        if key in exact:
            return True
        s, t = _split_name(key)
        return (s, t) in qualified or t in bare

    return match


# ---------------------------------------------------------------------------
# Catalog checks
# ---------------------------------------------------------------------------


def catalog_findings(conn: Connection, checks: Iterable[str] = ALL_CHECKS,
                     exclude_schemas: Iterable[str] = DEFAULT_EXCLUDE_SCHEMAS, *, exact: bool = False,
                     orphan_cap: int = ORPHAN_CAP, orphan_scan_rows: int = ORPHAN_SCAN_ROWS,
                     scan_timeout_ms: int | None = SCAN_TIMEOUT_MS) -> list[Finding]:
    """The catalog checks among ``checks`` ("rowCounts" and "fingerprint" are ignored
    here: they need a before/after or a stored hash).  ``exact=True`` lifts the limits
    that keep the checks cheap (unindexed sequence columns, big orphan scans)."""
    checks = tuple(checks)
    unknown = [c for c in checks if c not in ALL_CHECKS]
    if unknown:
        raise ValueError(f"unknown integrity check(s) {unknown}; known: {', '.join(ALL_CHECKS)}")
    p = exclusion_params(exclude_schemas)
    out: list[Finding] = []
    if "indexes" in checks:
        out += _index_findings(conn, p)
    if "constraints" in checks:
        out += _constraint_findings(conn, p)
    if "orphans" in checks:
        out += _orphan_findings(conn, p, exact=exact, cap=orphan_cap, scan_rows=orphan_scan_rows,
                                timeout_ms=scan_timeout_ms)
    if "sequences" in checks:
        out += _sequence_findings(conn, p, exact=exact, timeout_ms=scan_timeout_ms)
    return out


def _index_findings(conn: Connection, p: dict) -> list[Finding]:
    sql = f"""
        SELECT format('%I.%I', n.nspname, ic.relname) AS index_name,
               format('%I.%I', tn.nspname, tc.relname) AS table_name,
               ic.relkind, i.indisvalid, i.indisready, i.indislive,
               EXISTS (SELECT 1 FROM pg_stat_progress_create_index pr
                       WHERE pr.index_relid = i.indexrelid) AS building
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = ic.relnamespace
        JOIN pg_class tc ON tc.oid = i.indrelid
        JOIN pg_namespace tn ON tn.oid = tc.relnamespace
        WHERE NOT (i.indisvalid AND i.indisready AND i.indislive)
          AND {ns_filter('n')} AND {ns_filter('tn')}
        ORDER BY 1"""
    out = []
    for r in conn.execute(text(sql), p).mappings():
        state = ("INVALID" if not r["indisvalid"] else "") or ("not ready" if not r["indisready"] else "") \
            or "being dropped"
        if r["building"]:
            out.append(Finding("indexes", r["index_name"], 1, WARNING,
                               f"Index {r['index_name']} on {r['table_name']} is {state} because a CREATE INDEX "
                               f"CONCURRENTLY / REINDEX CONCURRENTLY is building it right now; check again when "
                               f"that finishes."))
        elif r["relkind"] == "I":
            out.append(Finding("indexes", r["index_name"], 1, ERROR,
                               f"Partitioned index {r['index_name']} on {r['table_name']} is {state} because some "
                               f"partitions have no attached index; create the missing partition indexes and "
                               f"ALTER INDEX {r['index_name']} ATTACH PARTITION each of them."))
        else:
            out.append(Finding("indexes", r["index_name"], 1, ERROR,
                               f"Index {r['index_name']} on {r['table_name']} is {state} (left behind by a failed "
                               f"CREATE INDEX CONCURRENTLY or REINDEX CONCURRENTLY): queries do not use it but "
                               f"writes still maintain it, and CREATE INDEX IF NOT EXISTS skips it; run DROP INDEX "
                               f"CONCURRENTLY {r['index_name']} and create it again."))
    return out


_CONTYPES = {"f": "foreign key", "c": "check constraint", "u": "unique constraint", "p": "primary key",
             "x": "exclusion constraint", "n": "not-null constraint", "t": "constraint trigger"}


def _constraint_findings(conn: Connection, p: dict) -> list[Finding]:
    sql = f"""
        SELECT con.conname, quote_ident(con.conname) AS qname, con.contype, con.conrelid <> 0 AS on_table,
               CASE WHEN con.conrelid <> 0 THEN format('%I.%I', n.nspname, c.relname)
                    ELSE format('%I.%I', tn.nspname, t.typname) END AS owner
        FROM pg_constraint con
        JOIN pg_namespace cn ON cn.oid = con.connamespace
        LEFT JOIN pg_class c ON c.oid = con.conrelid
        LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_type t ON t.oid = con.contypid
        LEFT JOIN pg_namespace tn ON tn.oid = t.typnamespace
        WHERE NOT con.convalidated AND con.conparentid = 0 AND {ns_filter('cn')}
        ORDER BY 5, 1"""
    out = []
    for r in conn.execute(text(sql), p).mappings():
        obj = f"{r['owner']}.{r['qname']}"
        kind = _CONTYPES.get(r["contype"], "constraint")
        if r["on_table"]:
            fix = f"ALTER TABLE {r['owner']} VALIDATE CONSTRAINT {r['qname']}"
            what = "rows written before it was added were never checked"
        else:
            fix = f"ALTER DOMAIN {r['owner']} VALIDATE CONSTRAINT {r['qname']}"
            what = "values stored before it was added were never checked"
        out.append(Finding("constraints", obj, 1, ERROR,
                           f"The {kind} {obj} is NOT VALID: {what}; fix any violating rows, then run {fix} "
                           f"(it takes only a SHARE UPDATE EXCLUSIVE lock)."))
    return out


# row estimate of a table, partitioned tables summed over their leaves
_ESTIMATE = """
    CASE WHEN {c}.relkind = 'p' THEN
        (SELECT coalesce(sum(CASE WHEN lc.reltuples >= 0 THEN lc.reltuples ELSE coalesce(ls.n_live_tup, 0) END), 0)
         FROM pg_partition_tree({c}.oid) pt JOIN pg_class lc ON lc.oid = pt.relid
         LEFT JOIN pg_stat_user_tables ls ON ls.relid = lc.oid
         WHERE pt.isleaf)
    WHEN {c}.reltuples >= 0 THEN {c}.reltuples
    ELSE coalesce((SELECT st.n_live_tup FROM pg_stat_user_tables st WHERE st.relid = {c}.oid), 0) END"""


def _orphan_findings(conn: Connection, p: dict, *, exact: bool, cap: int, scan_rows: int,
                     timeout_ms: int | None) -> list[Finding]:
    sql = f"""
        SELECT format('%I.%I.%I', n.nspname, c.relname, con.conname) AS obj, quote_ident(con.conname) AS qname,
               format('%I.%I', n.nspname, c.relname) AS child, c.relkind AS child_kind,
               format('%I.%I', pn.nspname, pc.relname) AS parent, pc.relkind AS parent_kind,
               con.confmatchtype,
               array_agg(quote_ident(ca.attname) ORDER BY k.ord) AS child_cols,
               array_agg(quote_ident(pa.attname) ORDER BY k.ord) AS parent_cols,
               ({_ESTIMATE.format(c='c')})::bigint AS estimate
        FROM pg_constraint con
        JOIN pg_class c ON c.oid = con.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_class pc ON pc.oid = con.confrelid
        JOIN pg_namespace pn ON pn.oid = pc.relnamespace
        CROSS JOIN LATERAL unnest(con.conkey, con.confkey) WITH ORDINALITY AS k(ck, pk, ord)
        JOIN pg_attribute ca ON ca.attrelid = con.conrelid AND ca.attnum = k.ck
        JOIN pg_attribute pa ON pa.attrelid = con.confrelid AND pa.attnum = k.pk
        WHERE con.contype = 'f' AND NOT con.convalidated AND con.conparentid = 0 AND {ns_filter('n')}
        GROUP BY con.oid, n.nspname, c.oid, c.relname, c.relkind, pn.nspname, pc.relname, pc.relkind
        ORDER BY 1"""
    fks = conn.execute(text(sql), p).mappings().all()
    out = []
    for fk in fks:
        ccols, pcols = list(fk["child_cols"]), list(fk["parent_cols"])
        what = ccols[0] if len(ccols) == 1 else f"({', '.join(ccols)})"
        target = f"{fk['parent']}({', '.join(pcols)})"
        if not exact and fk["estimate"] > scan_rows:
            out.append(Finding("orphans", fk["obj"], 0, WARNING,
                               f"Orphan rows of the NOT VALID foreign key {fk['obj']} were not counted: "
                               f"{fk['child']} holds about {fk['estimate']} rows (more than {scan_rows}); run the "
                               f"check with exact counts off-peak, or ALTER TABLE {fk['child']} VALIDATE CONSTRAINT "
                               f"{fk['qname']}."))
            continue
        only_c = "ONLY " if fk["child_kind"] == "r" else ""
        only_p = "ONLY " if fk["parent_kind"] == "r" else ""
        match = " AND ".join(f"pa.{pc} = ch.{cc}" for cc, pc in zip(ccols, pcols))
        missing = f"NOT EXISTS (SELECT 1 FROM {only_p}{fk['parent']} pa WHERE {match})"
        if fk["confmatchtype"] == "f":  # MATCH FULL: all NULL is exempt, partly NULL is a violation
            cond = (f"NOT ({' AND '.join(f'ch.{c} IS NULL' for c in ccols)}) AND "
                    f"({' OR '.join(f'ch.{c} IS NULL' for c in ccols)} OR {missing})")
        else:  # MATCH SIMPLE: any NULL column exempts the row
            cond = " AND ".join(f"ch.{c} IS NOT NULL" for c in ccols) + f" AND {missing}"
        q = f"SELECT count(*) FROM (SELECT 1 FROM {only_c}{fk['child']} ch WHERE {cond} LIMIT {int(cap)}) s"
        try:
            with _guard(conn), _scan_timeout(conn, timeout_ms):
                n = int(_raw(conn, q).scalar())
        except sa_exc.DBAPIError as e:
            if e.connection_invalidated:
                raise
            out.append(Finding("orphans", fk["obj"], 0, WARNING,
                               f"Orphan rows of the NOT VALID foreign key {fk['obj']} could not be counted "
                               f"({_first_line(e)}); retry, or run ALTER TABLE {fk['child']} VALIDATE CONSTRAINT "
                               f"{fk['qname']} which reports the first violating row."))
            continue
        if n > 0:
            amount = f"At least {n}" if n >= cap else f"{n}"
            verb = "has" if n == 1 else "have"
            out.append(Finding("orphans", fk["obj"], n, ERROR,
                               f"{amount} row{'' if n == 1 else 's'} of {fk['child']} {verb} a {what} that matches "
                               f"no row of {target}: the foreign key {fk['obj']} is NOT VALID, so they were never "
                               f"rejected; fix or delete them, then run ALTER TABLE {fk['child']} VALIDATE "
                               f"CONSTRAINT {fk['qname']}."))
    return out


def _sequence_findings(conn: Connection, p: dict, *, exact: bool, timeout_ms: int | None) -> list[Finding]:
    sql = f"""
        SELECT format('%I.%I', sn.nspname, s.relname) AS seq,
               format('%I.%I', tn.nspname, t.relname) AS tbl, t.relkind,
               quote_ident(a.attname) AS col, d.deptype,
               sq.seqstart, sq.seqincrement,
               has_sequence_privilege(s.oid, 'SELECT') AS can_select,
               has_sequence_privilege(s.oid, 'USAGE') AS can_usage,
               s.oid AS seqoid,
               EXISTS (SELECT 1 FROM pg_index i
                       JOIN pg_class ic ON ic.oid = i.indexrelid
                       JOIN pg_am am ON am.oid = ic.relam
                       WHERE i.indrelid = t.oid AND i.indkey[0] = a.attnum AND i.indisvalid
                         AND i.indpred IS NULL AND am.amname = 'btree') AS indexed
        FROM pg_depend d
        JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
        JOIN pg_namespace sn ON sn.oid = s.relnamespace
        JOIN pg_sequence sq ON sq.seqrelid = s.oid
        JOIN pg_class t ON t.oid = d.refobjid
        JOIN pg_namespace tn ON tn.oid = t.relnamespace
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid AND NOT a.attisdropped
        JOIN pg_type ty ON ty.oid = a.atttypid
        WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
          AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
          AND t.relkind IN ('r', 'p')
          AND ty.typnamespace = 'pg_catalog'::regnamespace AND ty.typname IN ('int2', 'int4', 'int8', 'numeric')
          AND {ns_filter('sn')} AND {ns_filter('tn')}
        ORDER BY 1"""
    out = []
    for r in conn.execute(text(sql), p).mappings().all():
        seq, tbl, col = r["seq"], r["tbl"], r["col"]
        colref = f"{tbl}.{col}"
        kind = "identity column" if r["deptype"] == "i" else "column"
        if not (r["indexed"] or exact):
            out.append(Finding("sequences", seq, 0, WARNING,
                               f"Sequence {seq} (feeding {kind} {colref}) was not compared with the column's "
                               f"maximum because {col} does not lead a btree index and max() would read the whole "
                               f"table; run the check with exact counts to include it."))
            continue
        if not (r["can_select"] or r["can_usage"]):
            out.append(Finding("sequences", seq, 0, WARNING,
                               f"Sequence {seq} (feeding {kind} {colref}) was not checked: this role may not read "
                               f"it; grant SELECT on it to the role dbrev uses."))
            continue
        inc = int(r["seqincrement"])
        agg = "max" if inc > 0 else "min"
        only = "ONLY " if r["relkind"] == "r" else ""
        colmax = f"(SELECT {agg}({col})::numeric FROM {only}{tbl})"
        if r["can_select"]:
            q = f"SELECT {colmax}, s.last_value::numeric, s.is_called FROM {seq} s"
        else:  # USAGE only: pg_sequence_last_value is NULL until the first nextval
            q = f"SELECT {colmax}, pg_sequence_last_value({int(r['seqoid'])}::oid)::numeric, true"
        try:
            with _guard(conn), _scan_timeout(conn, timeout_ms):
                m, last, called = _raw(conn, q).one()
        except sa_exc.DBAPIError as e:
            if e.connection_invalidated:
                raise
            out.append(Finding("sequences", seq, 0, WARNING,
                               f"Sequence {seq} (feeding {kind} {colref}) could not be checked "
                               f"({_first_line(e)}); retry later."))
            continue
        if m is None:
            continue  # empty table (or all NULL): nothing to collide with
        m = int(m)
        if last is None:  # never called: the next value is the start value
            last, called = int(r["seqstart"]), False
        last = int(last)
        effective = last if called else last - inc  # the last value handed out
        nxt = effective + inc
        behind = (nxt <= m) if inc > 0 else (nxt >= m)
        if not behind:
            continue
        gap = (m - effective) if inc > 0 else (effective - m)
        out.append(Finding("sequences", seq, gap, ERROR,
                           f"Sequence {seq} is {gap} behind {kind} {colref}: its next value {nxt} is "
                           f"{'not above' if inc > 0 else 'not below'} {agg}({col}) = {m}, so inserts that use "
                           f"the default will collide with existing rows (an apply repairs what it caused with "
                           f"--repair-sequences or policy.repairSequences); run SELECT setval({sql_literal(seq)}, "
                           f"(SELECT {agg}({col}) FROM {tbl}))."))
    return out


def sequence_oids(conn: Connection) -> set[int]:
    """The oids of every sequence now (taken before a run: which sequences the run created)."""
    return {int(r[0]) for r in conn.execute(text("SELECT oid FROM pg_class WHERE relkind = 'S'"))}


def created_by_run(conn: Connection, findings: Iterable[Finding], before: set[int]) -> list[Finding]:
    """Sequences-behind errors on sequences the run itself created become warnings that say so.

    A fresh table seeded with explicit ids (lookup rows, a default tenant) leaves its sequence behind:
    plain Alembic applies that, and so does dbrev — the hazard (the first insert that uses the default
    collides) is reported with its fix instead of undoing the install.  A sequence that existed before
    the run feeds a table the application already writes to: that stays an error.
    """
    out = []
    for f in findings:
        if f.check == "sequences" and f.severity == ERROR:
            oid = conn.execute(text("SELECT to_regclass(:s)::oid"), {"s": f.object}).scalar()
            if oid is not None and int(oid) not in before:
                f = Finding(f.check, f.object, f.count, WARNING,
                            f"{f.message} The run created this sequence and seeded its table with explicit ids; "
                            f"it was applied as Alembic applies it. Add the setval to the migration, or apply "
                            f"with --repair-sequences (policy.repairSequences).")
        out.append(f)
    return out


def repair_sequences(conn: Connection, sequences: Iterable[str]) -> list[dict]:
    """Move each named sequence (``schema.seq`` as findings name it) past its owning column's
    maximum (minimum for descending ones), in the caller's transaction.  Returns what moved:
    ``[{"sequence", "column", "from", "to"}]``; a sequence that is no longer behind is left alone."""
    out = []
    for seq in sequences:
        row = conn.execute(text("""
            SELECT format('%I.%I', tn.nspname, t.relname), quote_ident(a.attname), sq.seqincrement,
                   t.relkind
            FROM pg_depend d JOIN pg_sequence sq ON sq.seqrelid = d.objid
            JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace
            JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
            WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.deptype IN ('a', 'i') AND d.objid = to_regclass(:s)"""), {"s": seq}).first()
        if row is None:
            continue
        tbl, col, inc, kind = row
        agg = "max" if int(inc) > 0 else "min"
        only = "ONLY " if kind == "r" else ""
        last, called = _raw(conn, f"SELECT last_value, is_called FROM {seq}").one()
        m = _raw(conn, f"SELECT {agg}({col}) FROM {only}{tbl}").scalar()
        if m is None:
            continue
        effective = int(last) if called else int(last) - int(inc)
        if (int(inc) > 0 and effective >= int(m)) or (int(inc) < 0 and effective <= int(m)):
            continue
        _raw(conn, f"SELECT setval({sql_literal(seq)}, {int(m)})")
        out.append({"sequence": seq, "column": f"{tbl}.{col}", "from": effective, "to": int(m)})
    return out


def _first_line(e: BaseException) -> str:
    orig = getattr(e, "orig", None) or e
    return (str(orig).strip().splitlines() or [type(orig).__name__])[0]


# ---------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------

_FACT_QUERIES: tuple[str, ...] = (
    # schemas
    f"""SELECT 'schema ' || quote_ident(n.nspname) FROM pg_namespace n WHERE {ns_filter('n')}""",
    # extensions (their member objects are left out below)
    f"""SELECT 'extension ' || quote_ident(e.extname) || ' VERSION ' || quote_literal(e.extversion)
               || ' SCHEMA ' || quote_ident(n.nspname)
        FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE {ns_filter('n')}""",
    # tables, views, composite types...: kind, persistence, partitioning, inheritance, RLS, options
    f"""SELECT 'table ' || format('%I.%I', n.nspname, c.relname) || ' '
               || CASE c.relkind WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'PARTITIONED TABLE' WHEN 'v' THEN 'VIEW'
                                 WHEN 'm' THEN 'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE'
                                 WHEN 'c' THEN 'COMPOSITE TYPE' ELSE c.relkind::text END
               || CASE WHEN c.relpersistence = 'u' THEN ' UNLOGGED' ELSE '' END
               || coalesce(' PARTITION BY ' || pg_get_partkeydef(c.oid), '')
               || CASE WHEN c.relispartition THEN coalesce(' PARTITION OF ' || (
                        SELECT format('%I.%I', pn.nspname, pc.relname) FROM pg_inherits ih
                        JOIN pg_class pc ON pc.oid = ih.inhparent JOIN pg_namespace pn ON pn.oid = pc.relnamespace
                        WHERE ih.inhrelid = c.oid LIMIT 1) || ' ' || pg_get_expr(c.relpartbound, c.oid), '')
                  ELSE coalesce(' INHERITS (' || (
                        SELECT string_agg(format('%I.%I', pn.nspname, pc.relname), ', ' ORDER BY ih.inhseqno)
                        FROM pg_inherits ih JOIN pg_class pc ON pc.oid = ih.inhparent
                        JOIN pg_namespace pn ON pn.oid = pc.relnamespace WHERE ih.inhrelid = c.oid) || ')', '') END
               || CASE WHEN c.relrowsecurity THEN ' ROW LEVEL SECURITY' ELSE '' END
               || CASE WHEN c.relforcerowsecurity THEN ' FORCE ROW LEVEL SECURITY' ELSE '' END
               || CASE WHEN c.reloptions IS NOT NULL THEN ' WITH (' || array_to_string(
                        ARRAY(SELECT o FROM unnest(c.reloptions) o ORDER BY o), ', ') || ')' ELSE '' END
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c') AND {ns_filter('n')} AND {rel_filter('n', 'c')}
          AND {not_ext('pg_class', 'c.oid')}""",
    # columns: by name, never by position (a down/up cycle re-adds a column at the end)
    f"""SELECT 'column ' || format('%I.%I.%I', n.nspname, c.relname, a.attname) || ' '
               || format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attcollation <> 0 AND a.attcollation <> ty.typcollation THEN ' COLLATE ' || (
                        SELECT format('%I.%I', cn.nspname, co.collname) FROM pg_collation co
                        JOIN pg_namespace cn ON cn.oid = co.collnamespace WHERE co.oid = a.attcollation)
                  ELSE '' END
               || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
               || CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY'
                                     WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END
               || CASE WHEN a.attgenerated = 's' THEN ' GENERATED ALWAYS AS (' || pg_get_expr(ad.adbin, ad.adrelid)
                                                     || ') STORED'
                       WHEN a.attgenerated <> '' THEN ' GENERATED ALWAYS AS (' || pg_get_expr(ad.adbin, ad.adrelid)
                                                     || ') VIRTUAL'
                       WHEN ad.adbin IS NOT NULL THEN ' DEFAULT ' || pg_get_expr(ad.adbin, ad.adrelid)
                       ELSE '' END
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type ty ON ty.oid = a.atttypid
        LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
        WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
          AND {ns_filter('n')} AND {rel_filter('n', 'c')} AND {not_ext('pg_class', 'c.oid')}""",
    # table constraints (pg_get_constraintdef says NOT VALID when it is)
    f"""SELECT 'constraint ' || format('%I.%I.%I', n.nspname, c.relname, con.conname) || ' '
               || pg_get_constraintdef(con.oid)
        FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {ns_filter('n')} AND {rel_filter('n', 'c')} AND {not_ext('pg_class', 'c.oid')}""",
    # indexes with their validity
    f"""SELECT 'index ' || format('%I.%I', n.nspname, ic.relname) || ' ' || pg_get_indexdef(i.indexrelid)
               || CASE WHEN NOT i.indisvalid THEN ' INVALID' ELSE '' END
               || CASE WHEN NOT i.indisready THEN ' NOT READY' ELSE '' END
               || CASE WHEN NOT i.indislive THEN ' NOT LIVE' ELSE '' END
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid JOIN pg_namespace n ON n.oid = ic.relnamespace
        JOIN pg_class tc ON tc.oid = i.indrelid JOIN pg_namespace tn ON tn.oid = tc.relnamespace
        WHERE {ns_filter('n')} AND {ns_filter('tn')} AND {rel_filter('tn', 'tc')}
          AND {not_ext('pg_class', 'tc.oid')}""",
    # enums (labels in their sort order), domains, ranges, base types
    f"""SELECT CASE t.typtype
               WHEN 'e' THEN 'enum ' || format('%I.%I', n.nspname, t.typname) || ' (' || coalesce((
                    SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                    FROM pg_enum e WHERE e.enumtypid = t.oid), '') || ')'
               WHEN 'd' THEN 'domain ' || format('%I.%I', n.nspname, t.typname) || ' AS '
                    || format_type(t.typbasetype, t.typtypmod)
                    || CASE WHEN t.typnotnull THEN ' NOT NULL' ELSE '' END
                    || coalesce(' DEFAULT ' || pg_get_expr(t.typdefaultbin, 0), '')
               WHEN 'r' THEN 'range ' || format('%I.%I', n.nspname, t.typname) || ' SUBTYPE ' || coalesce((
                    SELECT format_type(r.rngsubtype, NULL) FROM pg_range r WHERE r.rngtypid = t.oid), '?')
               ELSE 'type ' || format('%I.%I', n.nspname, t.typname) || ' BASE' END
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE t.typtype IN ('e', 'd', 'r', 'b') AND {ns_filter('n')} AND {not_ext('pg_type', 't.oid')}
          AND NOT EXISTS (SELECT 1 FROM pg_type el WHERE el.typarray = t.oid)""",
    # domain constraints
    f"""SELECT 'domain constraint ' || format('%I.%I.%I', n.nspname, t.typname, con.conname) || ' '
               || pg_get_constraintdef(con.oid)
        FROM pg_constraint con JOIN pg_type t ON t.oid = con.contypid JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE con.contypid <> 0 AND {ns_filter('n')} AND {not_ext('pg_type', 't.oid')}""",
    # sequences: parameters and owner, never their current value
    f"""SELECT 'sequence ' || format('%I.%I', n.nspname, c.relname) || ' AS ' || format_type(s.seqtypid, NULL)
               || ' START ' || s.seqstart || ' INCREMENT ' || s.seqincrement || ' MINVALUE ' || s.seqmin
               || ' MAXVALUE ' || s.seqmax || ' CACHE ' || s.seqcache
               || CASE WHEN s.seqcycle THEN ' CYCLE' ELSE ' NO CYCLE' END
               || coalesce(' OWNED BY ' || (
                    SELECT format('%I.%I.%I', tn.nspname, t.relname, a.attname) FROM pg_depend d
                    JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace tn ON tn.oid = t.relnamespace
                    JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
                    WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                      AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
                    LIMIT 1), '')
        FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {ns_filter('n')} AND {rel_filter('n', 'c')} AND {not_ext('pg_class', 'c.oid')}""",
    # view definitions
    f"""SELECT 'viewdef ' || format('%I.%I', n.nspname, c.relname) || ' AS ' || pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND {ns_filter('n')} AND {rel_filter('n', 'c')}
          AND {not_ext('pg_class', 'c.oid')}""",
    # functions and procedures (full definition); aggregates and window functions by signature
    f"""SELECT 'function ' || format('%I.%I', n.nspname, p.proname) || '('
               || pg_get_function_identity_arguments(p.oid) || ') '
               || CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid)
                       WHEN p.prokind = 'a' THEN 'AGGREGATE' ELSE 'WINDOW' END
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {ns_filter('n')} AND {not_ext('pg_proc', 'p.oid')}""",
    # user triggers (not the internal ones behind foreign keys)
    f"""SELECT 'trigger ' || format('%I.%I.%I', n.nspname, c.relname, tg.tgname) || ' '
               || pg_get_triggerdef(tg.oid)
               || CASE WHEN tg.tgenabled <> 'O' THEN ' ENABLED=' || tg.tgenabled::text ELSE '' END
        FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT tg.tgisinternal AND {ns_filter('n')} AND {rel_filter('n', 'c')}
          AND {not_ext('pg_class', 'c.oid')}""",
    # row-level security policies
    f"""SELECT 'policy ' || format('%I.%I.%I', n.nspname, c.relname, pol.polname)
               || CASE WHEN pol.polpermissive THEN ' PERMISSIVE' ELSE ' RESTRICTIVE' END
               || ' FOR ' || CASE pol.polcmd WHEN '*' THEN 'ALL' WHEN 'r' THEN 'SELECT' WHEN 'a' THEN 'INSERT'
                                            WHEN 'w' THEN 'UPDATE' WHEN 'd' THEN 'DELETE' END
               || ' TO ' || coalesce((SELECT string_agg(rn, ', ' ORDER BY rn) FROM (
                    SELECT CASE WHEN r = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(r)) END AS rn
                    FROM unnest(pol.polroles) r) rr), '')
               || coalesce(' USING (' || pg_get_expr(pol.polqual, pol.polrelid) || ')', '')
               || coalesce(' WITH CHECK (' || pg_get_expr(pol.polwithcheck, pol.polrelid) || ')', '')
        FROM pg_policy pol JOIN pg_class c ON c.oid = pol.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {ns_filter('n')} AND {rel_filter('n', 'c')}""",
)


def fingerprint_facts(conn: Connection, exclude_schemas: Iterable[str] = DEFAULT_EXCLUDE_SCHEMAS,
                      exclude_tables: Iterable = DEFAULT_EXCLUDE_TABLES) -> list[str]:
    """The sorted catalog facts behind :func:`fingerprint`, one string per object.

    ``exclude_tables`` are ``(schema, name)`` pairs (schema ``None``: any schema) or
    names as :func:`_split_name` reads them; pass the version table here.
    ``search_path`` is pinned to ``pg_catalog`` while reading so that every name in a
    definition is schema-qualified the same way whatever the session's path is."""
    p = exclusion_params(exclude_schemas, exclude_tables)
    facts: list[str] = []
    with _guard(conn), _setting(conn, "search_path", "pg_catalog"):
        for q in _FACT_QUERIES:
            facts += [r[0] for r in conn.execute(text(q), p) if r[0] is not None]
    return sorted(facts)


def fingerprint_of(facts: Iterable[str]) -> str:
    """``sha256:<hex>`` of facts (sorted here, so any order gives the same hash)."""
    h = hashlib.sha256(FINGERPRINT_VERSION.encode() + b"\0")
    for f in sorted(facts):
        h.update(f.encode("utf-8"))
        h.update(b"\0")
    return "sha256:" + h.hexdigest()


def fingerprint(conn: Connection, exclude_schemas: Iterable[str] = DEFAULT_EXCLUDE_SCHEMAS,
                exclude_tables: Iterable = DEFAULT_EXCLUDE_TABLES) -> str:
    """A hash of the user schema: same schema -> same hash, whatever the creation order
    or column order; leaves out the version table and the excluded schemas."""
    return fingerprint_of(fingerprint_facts(conn, exclude_schemas, exclude_tables))


_WS = re.compile(r"\s+")


def _fact_object(fact: str) -> str:
    """"column public.t.c integer" -> "column public.t.c": what a fact is about."""
    parts = fact.split(" ", 2)
    if parts[0] == "domain" and len(parts) > 2 and parts[1] == "constraint":
        parts = fact.split(" ", 3)
        return " ".join(parts[:3])
    return " ".join(parts[:2])


def diff_facts(before: list[str], after: list[str], limit: int = 10, width: int = 240) -> list[str]:
    """Human-readable differences: ``- fact`` (gone) and ``+ fact`` (new), grouped by the
    object they are about (so a changed column shows its old and new line together),
    whitespace collapsed, each line cut at ``width`` characters, at most ``limit`` lines
    plus one "... and N more" line.  Pure."""
    b, a = set(before), set(after)
    lines = [("-", f) for f in b - a] + [("+", f) for f in a - b]
    lines.sort(key=lambda x: (_fact_object(x[1]), x[0] != "-", x[1]))
    out = []
    for sign, fact in lines:
        s = _WS.sub(" ", fact).strip()
        if len(s) > width:
            s = s[:width - 1] + "…"
        out.append(f"{sign} {s}")
    if limit is not None and len(out) > limit:
        rest = len(out) - limit
        out = out[:limit] + [f"... and {rest} more difference{'s' if rest != 1 else ''}"]
    return out


# ---------------------------------------------------------------------------
# Row counts
# ---------------------------------------------------------------------------


def table_stats(conn: Connection, exclude_schemas: Iterable[str] = DEFAULT_EXCLUDE_SCHEMAS,
                exclude_tables: Iterable = DEFAULT_EXCLUDE_TABLES) -> dict[str, TableStat]:
    """Every user table (plain and partitioned) with a cheap row estimate: catalog and
    statistics only, no table is read.  A partitioned table's estimate is the sum of its
    leaves.  Note that PostgreSQL caches statistics views for the rest of a transaction
    once read (``stats_fetch_consistency``), so estimates do not move inside one."""
    sql = f"""
        SELECT format('%I.%I', n.nspname, c.relname) AS tbl, ({_ESTIMATE.format(c='c')})::bigint AS est
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND {ns_filter('n')} AND {rel_filter('n', 'c')}
        ORDER BY 1"""
    rows = conn.execute(text(sql), exclusion_params(exclude_schemas, exclude_tables)).all()
    return {t: TableStat(t, int(e)) for t, e in rows}


def exact_counts(conn: Connection, tables: Iterable) -> dict[str, int]:
    """``count(*)`` of each table (full scans: call it only for tables a plan touches).

    Names are read like :func:`_split_name` (unqualified ones through ``search_path``);
    the result is keyed by the canonical ``schema.table`` name of :func:`table_stats`.
    Tables that do not exist are left out.  Plain tables are counted ``ONLY`` (without
    inheritance children), partitioned tables with their partitions."""
    wanted = []
    for t in tables:
        s, n = _split_name(t)
        wanted.append(f"{_quote_ident(s)}.{_quote_ident(n)}" if s else _quote_ident(n))
    if not wanted:
        return {}
    with _guard(conn):
        rows = conn.execute(text(
            "SELECT format('%I.%I', n.nspname, c.relname), c.relkind "
            "FROM unnest(CAST(:q AS text[])) AS w(q) "
            "JOIN pg_class c ON c.oid = to_regclass(w.q) JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p', 'm', 'f')"), {"q": wanted}).all()
        found = list(dict.fromkeys((name, kind) for name, kind in rows))
        if not found:
            return {}
        q = " UNION ALL ".join(
            f"SELECT {i}, count(*) FROM {'ONLY ' if kind == 'r' else ''}{name}"
            for i, (name, kind) in enumerate(found))
        counts = dict(_raw(conn, q).all())
    return {name: int(counts[i]) for i, (name, _) in enumerate(found)}


def column_set(conn: Connection, exclude_schemas: Iterable[str] = DEFAULT_EXCLUDE_SCHEMAS) -> set[str]:
    """Every column of every user table as ``schema.table.column`` (table quoted like
    :func:`table_stats`, the column name raw).  Catalog only."""
    sql = f"""
        SELECT format('%I.%I', n.nspname, c.relname) || '.' || a.attname
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND {ns_filter('n')}"""
    return {r[0] for r in conn.execute(text(sql), exclusion_params(exclude_schemas))}


@dataclass(frozen=True)
class LiveState:
    """What a step could remove, read just before and just after it runs (in its transaction)."""
    tables: dict  # oid -> (canonical name, relfilenode, holds rows)
    columns: dict  # (oid, attnum) -> (column name, format_type)
    deleted: dict  # canonical name -> rows this transaction deleted so far


def live_state(conn: Connection, exclude_schemas: Iterable[str] = DEFAULT_EXCLUDE_SCHEMAS,
               exclude_tables: Iterable = DEFAULT_EXCLUDE_TABLES) -> LiveState:
    """Catalog facts plus one ``EXISTS`` probe per table (never a count): for steps that cannot be
    rendered offline, classified by what they actually do."""
    p = exclusion_params(exclude_schemas, exclude_tables)
    rows = conn.execute(text(f"""
        SELECT c.oid, format('%I.%I', n.nspname, c.relname), c.relfilenode
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND {ns_filter('n')} AND {rel_filter('n', 'c')}"""), p).all()
    has = {}
    for i in range(0, len(rows), 200):
        chunk = rows[i:i + 200]
        q = " UNION ALL ".join(f"SELECT {int(oid)}::oid, EXISTS (SELECT 1 FROM {name})" for oid, name, _ in chunk)
        has.update(dict(_raw(conn, q).all()))
    tables = {int(oid): (name, int(node), bool(has.get(oid))) for oid, name, node in rows}
    cols = conn.execute(text(f"""
        SELECT a.attrelid, a.attnum, a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
          AND {ns_filter('n')} AND {rel_filter('n', 'c')}"""), p).all()
    columns = {(int(r[0]), int(r[1])): (r[2], r[3]) for r in cols}
    deleted = {t: v[2] for t, v in xact_row_changes(conn, exclude_schemas, exclude_tables).items()}
    return LiveState(tables, columns, deleted)


def live_effects(before: LiveState, after: LiveState, preexisting: Iterable[str]) -> list:
    """What a step removed that existed before the run and held rows: ``classify.Effect``s.  PURE."""
    from ..core.classify import Effect, is_widening

    pre = set(preexisting)
    out = []
    gone: set[str] = set()

    def eff(kind, name, column=None, detail=""):
        s, t = _split_name(name)
        return Effect(kind, s, t, column, detail=detail + " (seen online)")

    for oid, (name, node, rows) in sorted(before.tables.items()):
        if name not in pre or not rows:
            continue
        if oid not in after.tables:
            gone.add(name)
            out.append(eff("drop_table", name, detail=f"DROP TABLE {name}"))
        elif after.tables[oid][1] != node and not after.tables[oid][2]:
            out.append(eff("truncate", name, detail=f"TRUNCATE {name}"))
    for (oid, att), (col, typ) in sorted(before.columns.items()):
        t = before.tables.get(oid)
        if t is None or t[0] not in pre or not t[2] or oid not in after.tables:
            continue
        now = after.columns.get((oid, att))
        if now is None:
            out.append(eff("drop_column", t[0], col, f"ALTER TABLE {t[0]} DROP COLUMN {col}"))
        elif now[1] != typ and not is_widening(typ, now[1]):
            out.append(eff("alter_column_type", t[0], col, f"ALTER TABLE {t[0]} ALTER COLUMN {col} TYPE {now[1]} "
                                                           f"(was {typ})"))
    for name, n in sorted(after.deleted.items()):
        d = int(n) - int(before.deleted.get(name, 0))
        if d > 0 and name in pre and name not in gone:
            out.append(eff("delete_rows", name, detail=f"DELETE FROM {name} ({d} rows)"))
    return out


def rollback_row_findings(before: Mapping[str, int], after: Mapping[str, int]) -> list[Finding]:
    """After a rollback: every table counted before the run must be back with at least as many
    rows (exact counts).  PURE.  A missing table or a missing row is an error."""
    out = []
    for t in sorted(before):
        b = int(before[t])
        if t not in after:
            if b:
                out.append(Finding("rowCounts", t, b, ERROR,
                                   f"Table {t} had {b} rows before the run and does not exist after the rollback."))
            continue
        lost = b - int(after[t])
        if lost > 0:
            out.append(Finding("rowCounts", t, lost, ERROR,
                               f"Table {t} had {b} rows before the run and has {after[t]} after the rollback: "
                               f"{lost} row{'s are' if lost != 1 else ' is'} missing."))
    return out


def xact_row_changes(conn: Connection, exclude_schemas: Iterable[str] = DEFAULT_EXCLUDE_SCHEMAS,
                     exclude_tables: Iterable = DEFAULT_EXCLUDE_TABLES) -> dict[str, tuple[int, int, int]]:
    """Rows inserted, updated and deleted so far by the CURRENT transaction (its
    savepoints included, cascades included), per table with any change:
    ``{"schema.table": (n_tup_ins, n_tup_upd, n_tup_del)}``.  From
    ``pg_stat_xact_user_tables`` (backend-local counters, no table read).

    Blind spots: ``TRUNCATE`` is not counted as deletes, and a table dropped in the
    transaction has no row here (see the disappeared-table rule of
    :func:`row_count_findings`)."""
    sql = f"""
        SELECT format('%I.%I', s.schemaname, s.relname), s.n_tup_ins, s.n_tup_upd, s.n_tup_del
        FROM pg_stat_xact_user_tables s
        JOIN pg_class c ON c.oid = s.relid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE (s.n_tup_ins + s.n_tup_upd + s.n_tup_del) > 0
          AND {ns_filter('n')} AND {rel_filter('n', 'c')}
        ORDER BY 1"""
    rows = conn.execute(text(sql), exclusion_params(exclude_schemas, exclude_tables)).all()
    return {t: (int(i), int(u), int(d)) for t, i, u, d in rows}


def row_count_findings(before: Mapping[str, TableStat], after: Mapping[str, TableStat],
                       deleted: Mapping[str, int], declared_loss: Iterable, dropped_ok: Iterable,
                       exact_before: Mapping[str, int] | None = None,
                       exact_after: Mapping[str, int] | None = None) -> list[Finding]:
    """"rowCounts" findings from a before/after pair.  PURE.

    * a table in ``before`` and not in ``after`` that ``dropped_ok`` does not name ->
      error, count = its estimated rows ("disappeared": dropped or renamed);
    * with exact counts for both sides: a decrease in a table ``declared_loss`` does not
      name -> error, count = rows lost;
    * rows deleted (``deleted``, from :func:`xact_row_changes`; a tuple value is read as
      ``(ins, upd, del)``) from a pre-existing table ``declared_loss`` does not name ->
      error, count = rows deleted; downgraded to a warning when exact counts show the
      table did not shrink (rows deleted and re-inserted).  Tables created by the
      migration (absent from a non-empty ``before``) are not reported.

    One finding per table (the strongest).  ``declared_loss`` / ``dropped_ok`` entries
    may be qualified (``"public.orders"``, ``'public."Order Items"'``, ``("public",
    "orders")``) or not (``"orders"``): an unqualified name matches a table of that name
    in ANY schema.  A table in ``dropped_ok`` also counts as declared loss (deletes before
    a declared drop are moot)."""
    loss_ok = _matcher(list(declared_loss or ()) + list(dropped_ok or ()))
    drop_ok = _matcher(dropped_ok or ())
    exact_before = exact_before or {}
    exact_after = exact_after or {}
    out: dict[str, Finding] = {}

    for t, st in before.items():
        if t in after or drop_ok(t):
            continue
        out[t] = Finding("rowCounts", t, max(int(st.estimate), 0), ERROR,
                         f"Table {t} (about {max(int(st.estimate), 0)} rows) existed before the migration and is "
                         f"gone after it, but the plan does not declare dropping it; if the drop or rename is "
                         f"intended declare it, otherwise roll back.")

    for t in sorted(set(exact_before) & set(exact_after)):
        if t in out or loss_ok(t):
            continue
        lost = int(exact_before[t]) - int(exact_after[t])
        if lost > 0:
            out[t] = Finding("rowCounts", t, lost, ERROR,
                             f"Table {t} went from {exact_before[t]} to {exact_after[t]} rows ({lost} lost), which "
                             f"the plan does not declare; roll back, or declare the data loss if it is intended.")

    for t, v in sorted(deleted.items()):
        n = int(v[2] if isinstance(v, (tuple, list)) else v)
        if n <= 0 or t in out or loss_ok(t):
            continue
        if before and t not in before:
            continue  # created by the migration: nothing pre-existing was lost
        shrank_not = t in exact_before and t in exact_after and int(exact_after[t]) >= int(exact_before[t])
        if shrank_not:
            out[t] = Finding("rowCounts", t, n, WARNING,
                             f"{n} rows were deleted from {t}, which the plan does not declare, but its exact row "
                             f"count did not go down ({exact_before[t]} -> {exact_after[t]}); check that the "
                             f"re-inserted rows are the same data.")
        else:
            out[t] = Finding("rowCounts", t, n, ERROR,
                             f"{n} row{'s were' if n != 1 else ' was'} deleted from {t}, which the plan does not "
                             f"declare; roll back, or declare the data loss if it is intended.")
    return [out[t] for t in sorted(out)]


# ---------------------------------------------------------------------------
# Comparing and running
# ---------------------------------------------------------------------------


def new_findings(before: Iterable[Finding], after: Iterable[Finding], *,
                 include_worse: bool = False) -> list[Finding]:
    """Findings in ``after`` whose key is not in ``before`` (PURE).  ``include_worse``
    also returns those whose key was there with a smaller count (more orphans, a
    sequence further behind)."""
    prev: dict[tuple[str, str], int] = {}
    for f in before:
        prev[f.key] = max(prev.get(f.key, 0), f.count)
    return [f for f in after
            if f.key not in prev or (include_worse and f.count > prev[f.key])]


def run_checks(conn: Connection, checks: Iterable[str] = ALL_CHECKS, version_table: str = "alembic_version",
               version_table_schema: str | None = None,
               exclude_schemas: Iterable[str] = DEFAULT_EXCLUDE_SCHEMAS, *, exact: bool = False) -> IntegrityReport:
    """The catalog checks plus the fingerprint (when asked for).  No row counts: those
    need a before and an after (see :func:`row_count_findings`).  With no
    ``version_table_schema`` the version table is looked for where Alembic puts it: the
    session's current schema."""
    t0 = time.monotonic()
    checks = tuple(checks)
    checked_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    findings = catalog_findings(conn, checks, exclude_schemas, exact=exact)
    fp, facts = None, []
    if "fingerprint" in checks:
        schema = version_table_schema or conn.execute(text("SELECT current_schema()")).scalar() or "public"
        facts = fingerprint_facts(conn, exclude_schemas, ((schema, version_table),))
        fp = fingerprint_of(facts)
    return IntegrityReport(passed=not any(f.severity == ERROR for f in findings), findings=findings,
                           checked_at=checked_at, fingerprint=fp,
                           duration_ms=int((time.monotonic() - t0) * 1000), facts=facts)


__all__ = [
    "ALL_CHECKS", "CATALOG_CHECKS", "Finding", "IntegrityReport", "TableStat",
    "catalog_findings", "fingerprint", "fingerprint_facts", "fingerprint_of", "diff_facts",
    "table_stats", "exact_counts", "column_set", "rollback_row_findings", "xact_row_changes",
    "row_count_findings", "new_findings", "run_checks", "repair_sequences", "LiveState", "live_state",
    "live_effects",
]
