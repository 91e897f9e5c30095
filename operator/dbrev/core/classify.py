"""Classify what a migration step does from its SQL (and, failing that, its source).

Pure functions.  SQL is parsed with pglast (PostgreSQL's own parser), never
grepped.  For each step we report:

* effects: what it drops, truncates, deletes, retypes, updates, renames;
* destructive: drops a table, column, schema, type or sequence; truncates;
  deletes rows; changes a column's type (which may narrow, round or truncate
  silently);
* needs_autocommit: statements PostgreSQL refuses inside a transaction
  (``CONCURRENTLY``, ``VACUUM``...) or an ``autocommit_block`` (which
  commits everything before it);
* heavy_locks: statements that hold a table lock for longer than an instant
  (rewrites, scans, non-concurrent index builds on existing tables).

When a step cannot be rendered offline (it reads data through
``op.get_bind()``), :func:`classify_source` inspects the script's Python
source for ``op.*`` calls and literal SQL instead.
"""

from __future__ import annotations

import ast
import re
from dataclasses import asdict, dataclass, field

import pglast
from pglast import ast as pg
from pglast.enums import AlterTableType as AT
from pglast.enums import ObjectType as OT
from pglast.enums import TransactionStmtKind as TK

DESTRUCTIVE_KINDS = frozenset({
    "drop_table", "drop_column", "drop_schema", "drop_type", "drop_sequence",
    "truncate", "delete_rows", "alter_column_type",
})


@dataclass(frozen=True)
class Effect:
    kind: str
    schema: str | None = None
    table: str | None = None
    column: str | None = None
    name: str | None = None  # schema/type/sequence name for drops of those
    cascade: bool = False
    detail: str = ""
    where: str | None = None  # the condition of a DELETE, deparsed (archiving copies what it matches)
    created_in_plan: bool = False  # the object was created by an earlier step of the same plan
    new_type: str | None = None  # alter_column_type: the type the column gets, as the SQL spells it

    @property
    def key(self) -> tuple:
        return (self.kind, self.schema, self.table, self.column, self.name)

    @property
    def destructive(self) -> bool:
        """Loses data that existed before the run (what a run itself created holds only its own data)."""
        return self.kind in DESTRUCTIVE_KINDS and not self.created_in_plan

    @property
    def object(self) -> str:
        if self.table:
            base = f"{self.schema}.{self.table}" if self.schema else self.table
            return f"{base}.{self.column}" if self.column else base
        return self.name or ""

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if v not in (None, "", False)}
        d["object"] = self.object
        d["destructive"] = self.destructive
        return d


@dataclass
class Classification:
    effects: list[Effect] = field(default_factory=list)
    autocommit_reasons: list[str] = field(default_factory=list)
    heavy_locks: list[str] = field(default_factory=list)
    touched_tables: set[str] = field(default_factory=set)
    created_tables: set[str] = field(default_factory=set)
    created_columns: set[str] = field(default_factory=set)  # "table.column" added by ADD COLUMN
    notes: list[str] = field(default_factory=list)
    reads_data: bool = False
    statements: int = 0

    @property
    def destructive(self) -> bool:
        return any(e.destructive for e in self.effects)

    @property
    def needs_autocommit(self) -> bool:
        return bool(self.autocommit_reasons)

    def merge(self, other: "Classification") -> None:
        have = {e.key for e in self.effects}
        for e in other.effects:
            if e.key not in have:  # the SQL and the source may describe the same drop twice
                self.effects.append(e)
                have.add(e.key)
        for attr in ("autocommit_reasons", "heavy_locks", "notes"):
            mine = getattr(self, attr)
            mine.extend(x for x in getattr(other, attr) if x not in mine)
        self.touched_tables |= other.touched_tables
        self.created_tables |= other.created_tables
        self.created_columns |= other.created_columns
        self.reads_data = self.reads_data or other.reads_data
        self.statements += other.statements


def _qual(rel) -> tuple[str | None, str]:
    return (rel.schemaname or None, rel.relname)


def _key(schema: str | None, table: str) -> str:
    return f"{schema}.{table}" if schema else table


def _names(obj) -> list[str]:
    if isinstance(obj, pg.TypeName):
        obj = obj.names
    if isinstance(obj, pg.String):
        return [obj.sval]
    if isinstance(obj, (tuple, list)):
        out = []
        for o in obj:
            out.extend(_names(o))
        return out
    return [getattr(obj, "sval", str(obj))]


def _split(parts: list[str]) -> tuple[str | None, str]:
    return (parts[-2], parts[-1]) if len(parts) >= 2 else (None, parts[-1])


def classify_sql(sql: str, version_table: str = "alembic_version") -> Classification:
    """Classify a block of SQL (statements separated by ``;``)."""
    out = Classification()
    if not sql.strip():
        return out
    try:
        stmts = pglast.parse_sql(sql)
    except pglast.parser.ParseError as e:  # type: ignore[attr-defined]
        out.notes.append(f"SQL could not be parsed ({e}); classified from the script source only")
        return out
    for raw in stmts:
        st = raw.stmt
        out.statements += 1
        _classify_stmt(st, out, version_table)
    return out


def _classify_stmt(st, out: Classification, version_table: str) -> None:  # noqa: C901
    if isinstance(st, pg.TransactionStmt):
        if st.kind in (TK.TRANS_STMT_COMMIT,):
            r = "commits mid-step (autocommit_block)"
            if r not in out.autocommit_reasons:
                out.autocommit_reasons.append(r)
        return
    if isinstance(st, pg.CreateStmt):
        s, t = _qual(st.relation)
        out.created_tables.add(_key(s, t))
        out.touched_tables.add(_key(s, t))
        return
    if isinstance(st, pg.CreateTableAsStmt):
        s, t = _qual(st.into.rel)
        out.created_tables.add(_key(s, t))
        out.touched_tables.add(_key(s, t))
        return
    if isinstance(st, pg.InsertStmt):
        s, t = _qual(st.relation)
        if t != version_table:
            out.touched_tables.add(_key(s, t))
        return
    if isinstance(st, pg.DeleteStmt):
        s, t = _qual(st.relation)
        if t == version_table:
            return
        out.touched_tables.add(_key(s, t))
        # with USING or WITH the condition needs other relations: archiving then keeps the whole table
        simple = not getattr(st, "usingClause", None) and not getattr(st, "withClause", None)
        full = _deparse(st.whereClause) if st.whereClause is not None else None
        cond = full if simple else None
        suffix = f" WHERE {full}" if full else " (all rows)"
        out.effects.append(Effect("delete_rows", s, t, detail=f"DELETE FROM {_key(s, t)}{suffix}", where=cond))
        return
    if isinstance(st, pg.UpdateStmt):
        s, t = _qual(st.relation)
        if t == version_table:
            return
        out.touched_tables.add(_key(s, t))
        out.effects.append(Effect("update_rows", s, t, detail=f"UPDATE {_key(s, t)}"))
        return
    if isinstance(st, pg.TruncateStmt):
        for rel in st.relations:
            s, t = _qual(rel)
            out.touched_tables.add(_key(s, t))
            out.effects.append(Effect("truncate", s, t, cascade=bool(st.behavior),
                                      detail=f"TRUNCATE {_key(s, t)}"))
            out.heavy_locks.append(f"TRUNCATE {_key(s, t)}: ACCESS EXCLUSIVE")
        return
    if isinstance(st, pg.DropStmt):
        cascade = bool(st.behavior)
        kind = {OT.OBJECT_TABLE: "drop_table", OT.OBJECT_SCHEMA: "drop_schema",
                OT.OBJECT_TYPE: "drop_type", OT.OBJECT_DOMAIN: "drop_type",
                OT.OBJECT_SEQUENCE: "drop_sequence"}.get(st.removeType)
        for obj in st.objects or ():
            parts = _names(obj)
            if kind == "drop_table":
                s, t = _split(parts)
                out.touched_tables.add(_key(s, t))
                out.effects.append(Effect("drop_table", s, t, cascade=cascade,
                                          detail=f"DROP TABLE {_key(s, t)}" + (" CASCADE" if cascade else "")))
            elif kind:
                out.effects.append(Effect(kind, name=".".join(parts), cascade=cascade,
                                          detail=f"{kind.replace('_', ' ').upper()} {'.'.join(parts)}"))
            elif st.removeType == OT.OBJECT_INDEX and st.concurrent:
                out.autocommit_reasons.append(f"DROP INDEX CONCURRENTLY {'.'.join(parts)}")
        return
    if isinstance(st, pg.IndexStmt):
        s, t = _qual(st.relation)
        if st.concurrent:
            out.autocommit_reasons.append(f"CREATE INDEX CONCURRENTLY {st.idxname or ''} ON {_key(s, t)}".replace("  ", " "))
        elif _key(s, t) not in out.created_tables:
            out.heavy_locks.append(
                f"CREATE INDEX {st.idxname or ''} ON {_key(s, t)}: SHARE lock blocks writes while it builds"
                .replace("  ", " "))
        return
    if isinstance(st, pg.ReindexStmt):
        conc = any(getattr(p, "defname", "") == "concurrently" for p in (st.params or ()))
        if conc:
            out.autocommit_reasons.append("REINDEX CONCURRENTLY")
        else:
            out.heavy_locks.append("REINDEX: blocks writes (and reads of the index) while it runs")
        return
    if isinstance(st, pg.VacuumStmt):
        out.autocommit_reasons.append("VACUUM cannot run inside a transaction")
        if any(getattr(o, "defname", "") == "full" for o in (st.options or ())):
            out.heavy_locks.append("VACUUM FULL: ACCESS EXCLUSIVE, rewrites the table")
        return
    if isinstance(st, pg.AlterEnumStmt):
        out.notes.append("ALTER TYPE ... ADD VALUE: the new value cannot be used before the transaction commits")
        return
    if isinstance(st, (pg.CreatedbStmt, pg.DropdbStmt, pg.AlterSystemStmt)):
        out.autocommit_reasons.append(f"{type(st).__name__} cannot run inside a transaction")
        return
    if isinstance(st, pg.ClusterStmt):
        out.heavy_locks.append("CLUSTER: ACCESS EXCLUSIVE, rewrites the table")
        return
    if isinstance(st, pg.RenameStmt):
        if st.relation is not None:
            s, t = _qual(st.relation)
            out.touched_tables.add(_key(s, t))
            what = st.subname or t
            out.effects.append(Effect("rename", s, t, column=st.subname,
                                      detail=f"RENAME {what} TO {st.newname}"))
        return
    if isinstance(st, pg.AlterTableStmt):
        s, t = _qual(st.relation)
        key = _key(s, t)
        out.touched_tables.add(key)
        new = key in out.created_tables
        for cmd in st.cmds:
            sub = cmd.subtype
            if sub == AT.AT_DropColumn:
                out.effects.append(Effect("drop_column", s, t, cmd.name, cascade=bool(cmd.behavior),
                                          detail=f"ALTER TABLE {key} DROP COLUMN {cmd.name}"))
            elif sub == AT.AT_AlterColumnType:
                newtype = _type_str(cmd.def_)
                out.effects.append(Effect("alter_column_type", s, t, cmd.name, new_type=newtype,
                                          detail=f"ALTER TABLE {key} ALTER COLUMN {cmd.name} TYPE {newtype}"))
                if not new:
                    out.heavy_locks.append(f"ALTER TABLE {key} ALTER COLUMN {cmd.name} TYPE: "
                                           "ACCESS EXCLUSIVE, may rewrite the table")
            elif sub == AT.AT_SetNotNull and not new:
                out.heavy_locks.append(f"ALTER TABLE {key} ALTER COLUMN {cmd.name} SET NOT NULL: "
                                       "ACCESS EXCLUSIVE while the table is scanned")
            elif sub == AT.AT_AddConstraint and not new:
                con = cmd.def_
                if getattr(con, "skip_validation", False):
                    continue
                ctype = getattr(con, "contype", None)
                from pglast.enums import ConstrType as CT
                if ctype == CT.CONSTR_FOREIGN:
                    out.heavy_locks.append(f"ALTER TABLE {key} ADD FOREIGN KEY: SHARE ROW EXCLUSIVE on both "
                                           "tables while it validates (use NOT VALID, then VALIDATE)")
                elif ctype == CT.CONSTR_CHECK:
                    out.heavy_locks.append(f"ALTER TABLE {key} ADD CHECK: ACCESS EXCLUSIVE while it validates "
                                           "(use NOT VALID, then VALIDATE)")
                elif ctype in (CT.CONSTR_PRIMARY, CT.CONSTR_UNIQUE) and not getattr(con, "indexname", None):
                    out.heavy_locks.append(f"ALTER TABLE {key} ADD {ctype.name[7:]}: builds an index "
                                           "under ACCESS EXCLUSIVE")
            elif sub == AT.AT_AddColumn:
                out.created_columns.add(f"{key}.{cmd.def_.colname}")
            if sub == AT.AT_AddColumn and not new:
                coldef = cmd.def_
                if getattr(coldef, "constraints", None):
                    from pglast.enums import ConstrType as CT
                    for c in coldef.constraints:
                        if c.contype == CT.CONSTR_DEFAULT and _volatile(c.raw_expr):
                            out.heavy_locks.append(f"ALTER TABLE {key} ADD COLUMN {coldef.colname} with a "
                                                   "volatile default: rewrites the table")
        return


# ---------------------------------------------------------------------------
# Type changes that never lose a value

_INT_RANK = {"smallint": 1, "int2": 1, "integer": 2, "int": 2, "int4": 2, "bigint": 3, "int8": 3}
_TEXTY = ("character varying", "varchar", "text", "character", "char", "bpchar")
_TYPE_RE = re.compile(r"^\s*([a-z_ ]+?)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$")


def _parse_type(t: str | None) -> tuple[str, tuple[int, ...]] | None:
    if not t:
        return None
    t = t.strip().lower().removeprefix("pg_catalog.").replace('"', "")
    m = _TYPE_RE.match(t)
    if not m:
        return None
    name = " ".join(m.group(1).split())
    name = {"varchar": "character varying", "char": "character", "bpchar": "character", "int": "integer",
            "int4": "integer", "int2": "smallint", "int8": "bigint", "decimal": "numeric",
            "float8": "double precision", "float4": "real"}.get(name, name)
    mods = tuple(int(x) for x in (m.group(2), m.group(3)) if x is not None)
    return name, mods


def is_widening(old: str | None, new: str | None) -> bool:
    """Does every value of type ``old`` fit ``new`` unchanged?  PURE; ``old`` as PostgreSQL's
    ``format_type`` prints it, ``new`` as the migration's SQL spells it.  Unknown pairs: False."""
    a, b = _parse_type(old), _parse_type(new)
    if a is None or b is None:
        return False
    (an, am), (bn, bm) = a, b
    if an == bn and am == bm:
        return True
    if an in _INT_RANK and bn in _INT_RANK:
        return _INT_RANK[bn] >= _INT_RANK[an]
    if an in _INT_RANK and bn == "numeric":
        return not bm or bm[0] - (bm[1] if len(bm) > 1 else 0) >= {1: 5, 2: 10, 3: 19}[_INT_RANK[an]]
    if an == "character varying" and bn == "character varying":
        return not bm or (bool(am) and bm[0] >= am[0])
    if an in ("character varying", "character", "text") and bn == "text":
        return an != "character"  # char(n) -> text drops the trailing blanks
    if an == "numeric" and bn == "numeric":
        if not bm:
            return True
        if not am:
            return False
        ap, asc = am[0], (am[1] if len(am) > 1 else 0)
        bp, bsc = bm[0], (bm[1] if len(bm) > 1 else 0)
        return bsc >= asc and bp - bsc >= ap - asc
    if an == "real" and bn == "double precision":
        return True
    if an == "timestamp without time zone" and bn == "timestamp without time zone":
        return not bm or (bool(am) and bm[0] >= am[0])
    return False


def _deparse(node) -> str | None:
    try:
        from pglast.stream import RawStream

        return RawStream()(node)
    except Exception:  # pragma: no cover - deparsing is best effort
        return None


def _type_str(typename) -> str:
    try:
        from pglast.stream import RawStream

        return RawStream()(typename.typeName if hasattr(typename, "typeName") else typename)
    except Exception:  # pragma: no cover - rendering is best effort
        return "?"


def _volatile(expr) -> bool:
    if isinstance(expr, pg.FuncCall):
        name = ".".join(_names(expr.funcname)).lower()
        return name.split(".")[-1] in {"random", "gen_random_uuid", "uuid_generate_v4", "clock_timestamp",
                                       "nextval", "timeofday"}
    return False


# ---------------------------------------------------------------------------
# Source analysis (for steps that cannot be rendered offline)

_OP_DROP = {"drop_table", "drop_column", "alter_column", "execute", "create_index", "drop_index",
            "bulk_insert", "rename_table"}


def classify_source(source: str, function: str, version_table: str = "alembic_version") -> Classification:
    """Classify the ``upgrade``/``downgrade`` function of a script from its source.

    Follows calls to other module-level functions one level deep.
    """
    out = Classification()
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return out
    funcs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    root = funcs.get(function)
    if root is None:
        return out
    bodies = [root]
    for node in ast.walk(root):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in funcs:
            if funcs[node.func.id] not in bodies:
                bodies.append(funcs[node.func.id])
    consts = _module_string_constants(tree)
    for body in bodies:
        for node in ast.walk(body):
            if isinstance(node, ast.Attribute) and node.attr == "autocommit_block":
                r = "autocommit_block() commits everything before it"
                if r not in out.autocommit_reasons:
                    out.autocommit_reasons.append(r)
            if isinstance(node, ast.Attribute) and node.attr in ("get_bind", "connection"):
                out.reads_data = True
            if not isinstance(node, ast.Call):
                continue
            fname = _call_name(node)
            if fname is None:
                continue
            args = [_const(a, consts) for a in node.args]
            kw = {k.arg: _const(k.value, consts) for k in node.keywords if k.arg}
            kwraw = {k.arg: k.value for k in node.keywords if k.arg}
            schema = kw.get("schema")
            if fname == "drop_table" and args and args[0]:
                out.effects.append(Effect("drop_table", schema, args[0], detail=f"op.drop_table({args[0]!r})"))
                out.touched_tables.add(_key(schema, args[0]))
            elif fname == "drop_column" and len(args) >= 2 and args[0] and args[1]:
                out.effects.append(Effect("drop_column", schema, args[0], args[1],
                                          detail=f"op.drop_column({args[0]!r}, {args[1]!r})"))
                out.touched_tables.add(_key(schema, args[0]))
            elif fname == "alter_column" and "type_" in kwraw and len(args) >= 2:
                if isinstance(args[0], str) and isinstance(args[1], str):
                    out.effects.append(Effect("alter_column_type", schema, args[0], args[1],
                                              detail=f"op.alter_column({args[0]!r}, {args[1]!r}, type_=...)"))
                    out.touched_tables.add(_key(schema, args[0]))
                else:  # names computed at run time: the online classification sees what it really does
                    out.notes.append("op.alter_column(...) with names computed at run time: classified online")
            elif fname == "rename_table" and len(args) >= 2 and args[0]:
                out.effects.append(Effect("rename", schema, args[0], detail=f"op.rename_table({args[0]!r}, "
                                                                             f"{args[1]!r})"))
                out.touched_tables.add(_key(schema, args[0]))
            elif fname == "create_table" and args and isinstance(args[0], str):
                out.created_tables.add(_key(schema, args[0]))
            elif fname == "add_column" and args and isinstance(args[0], str) and len(node.args) >= 2:
                col = node.args[1]
                if isinstance(col, ast.Call) and col.args and isinstance(col.args[0], ast.Constant):
                    out.created_columns.add(f"{_key(schema, args[0])}.{col.args[0].value}")
            elif fname in ("create_index", "drop_index") and _truthy(kwraw.get("postgresql_concurrently")):
                out.autocommit_reasons.append(f"op.{fname}(..., postgresql_concurrently=True)")
            elif fname in ("execute", "exec_driver_sql") or (fname == "text" and node.args):
                sql = args[0] if args else None
                if isinstance(sql, str):
                    sub = classify_sql(sql, version_table)
                    sub.notes = [n for n in sub.notes if "could not be parsed" not in n]
                    out.merge(sub)
    return out


def _module_string_constants(tree: ast.Module) -> dict[str, str]:
    out = {}
    for n in tree.body:
        if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
            if isinstance(n.value, ast.Constant) and isinstance(n.value.value, str):
                out[n.targets[0].id] = n.value.value
    return out


def _call_name(node: ast.Call) -> str | None:
    f = node.func
    if isinstance(f, ast.Attribute):
        return f.attr
    if isinstance(f, ast.Name):
        return f.id
    return None


def _const(node, consts: dict[str, str]):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in consts:
        return consts[node.id]
    if isinstance(node, ast.Call) and _call_name(node) == "text" and node.args:
        return _const(node.args[0], consts)
    return None


def _truthy(node) -> bool:
    return isinstance(node, ast.Constant) and bool(node.value)
