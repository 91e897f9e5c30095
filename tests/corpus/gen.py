"""Generate Alembic script locations that do what real projects' histories do.

Deterministic: a history is a function of its name and its ``Spec``.  Each history is a complete
``script_location`` (``env.py`` + ``versions/``) whose scripts:

* form a long graph with branch points and merges (``down_revision`` tuples);
* create tables with rows, seed lookup tables with explicit ids (``op.bulk_insert``), create
  enum types with their tables and drop them in downgrades (two styles);
* define SQLAlchemy 2 ORM models (``Mapped[int]``) and backfill through a ``Session``;
* use ``from alembic import context`` (``get_bind``, ``is_offline_mode``);
* run batched data migrations that ``print()`` their progress;
* drop tables in loops behind ``sa.inspect()`` guards;
* widen varchar columns; create constraints by naming convention (``None`` names, ``op.f()``);
* import the small application package in ``tests/corpus/apps`` (``shopapp``: a custom
  column type, shared constants);
* optionally build indexes ``CONCURRENTLY`` in ``autocommit_block()`` (per-step runs).

Every step can be made to fail on purpose, after its work and in either direction: the scripts
read ``CORPUS_FAIL=up:<rev>`` / ``down:<rev>`` from the environment (online runs only).

The env.py styles are the ones real projects ship: Alembic's ``init`` template (its own engine
from ``sqlalchemy.url``), the cookbook's shared connection (``config.attributes["connection"]``),
one that ends the caller's transaction and opens its own, one that opens a second connection
from the shared connection's engine.
"""

from __future__ import annotations

import hashlib
import random
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

APPS = Path(__file__).resolve().parent / "apps"

FAIL_ENV = "CORPUS_FAIL"


@dataclass(frozen=True)
class Spec:
    name: str
    env: str  # one of ENV_PY
    revisions: int
    seed: int
    concurrent: bool = False  # autocommit_block() index builds -> per-step runs


@dataclass
class Rev:
    id: str
    down: tuple[str, ...]
    op: str
    doc: str
    upgrade: list[str] = field(default_factory=list)
    downgrade: list[str] = field(default_factory=list)
    imports: set[str] = field(default_factory=set)
    module: list[str] = field(default_factory=list)


@dataclass
class History:
    spec: Spec
    location: Path
    revs: list[Rev]  # a topological order, oldest first
    heads: list[str]

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.revs]

    def ops(self) -> dict[str, str]:
        return {r.id: r.op for r in self.revs}

    def late_upgrade_step(self) -> str:
        """A step near head that does work (not a merge): where an upgrade is made to fail."""
        return next(r.id for r in reversed(self.revs) if r.op not in ("merge",) and len(r.down) == 1)

    def late_downgrade_step(self) -> str:
        """A step near base (run late in a downgrade to base) after which the downgrade fails."""
        return next(r.id for r in self.revs[1:] if r.op not in ("merge",))

    def middle(self) -> str:
        """A merge near the middle of the order: every line of development goes through it."""
        n = len(self.revs)
        merges = [i for i, r in enumerate(self.revs) if r.op == "merge"] or [n // 2]
        return self.revs[min(merges, key=lambda i: abs(i - n // 2))].id


# ---------------------------------------------------------------------------------------------
# env.py files

_ENV_HEAD = '''"""{doc}"""
from logging.config import fileConfig  # noqa: F401  (what alembic init writes)

import sqlalchemy as sa
from alembic import context
from sqlalchemy import pool

{metadata}

config = context.config


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, dialect_opts={{"paramstyle": "named"}})
    with context.begin_transaction():
        context.run_migrations()
'''

_META_APP = '''from shopapp.models import Base

target_metadata = Base.metadata'''

_META_LOCAL = '''target_metadata = sa.MetaData(naming_convention={
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})'''

ENV_PY = {
    # alembic init's template: its own engine from sqlalchemy.url
    "template": ("Alembic's init template: an engine of its own from sqlalchemy.url", _META_APP, '''

def run_migrations_online() -> None:
    connectable = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
'''),
    # the cookbook's "sharing a connection" recipe, per-migration transactions
    "shared": ("The cookbook's shared connection, one transaction per migration", _META_LOCAL, '''

def run_migrations_online() -> None:
    connectable = config.attributes.get("connection", None)
    if connectable is None:
        engine = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
        with engine.connect() as connection:
            _run(connection)
    else:
        _run(connectable)


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
'''),
    # ends whatever transaction the caller's connection is in, then runs in one of its own
    "own_txn": ("Ends the caller's transaction and runs the migrations in one of its own", _META_APP, '''

def run_migrations_online() -> None:
    connection = config.attributes.get("connection", None)
    if connection is None:
        engine = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
        with engine.connect() as connection:
            _run(connection)
    else:
        _run(connection)


def _run(connection) -> None:
    if connection.in_transaction():
        connection.commit()
    context.configure(connection=connection, target_metadata=target_metadata)
    with connection.begin():
        context.run_migrations()
'''),
    # a second connection from the shared connection's engine
    "engine": ("Opens a connection of its own from the shared connection's engine", _META_LOCAL, '''

def run_migrations_online() -> None:
    shared = config.attributes.get("connection", None)
    if shared is not None:
        engine = shared.engine
    else:
        engine = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
'''),
}

_ENV_TAIL = '''

if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
'''


def env_py(kind: str) -> str:
    doc, meta, online = ENV_PY[kind]
    return _ENV_HEAD.format(doc=doc, metadata=meta) + online + _ENV_TAIL


# ---------------------------------------------------------------------------------------------
# the graph

def rev_id(name: str, i: int) -> str:
    return hashlib.sha256(f"{name}:{i}".encode()).hexdigest()[:12]


@dataclass
class _Path:
    """What a line of development has: the tables its scripts may touch."""
    tables: list[str]  # t_* tables (id, name varchar, amount Money)
    lookups: list[str]
    legacy: list[tuple[str, ...]]
    dropped: set[str]

    def copy(self) -> "_Path":
        return _Path(list(self.tables), list(self.lookups), list(self.legacy), set(self.dropped))


def _merge_paths(paths: list[_Path]) -> _Path:
    out = _Path([], [], [], set())
    for p in paths:
        out.dropped |= p.dropped
    for p in paths:
        for t in p.tables:
            if t not in out.tables:
                out.tables.append(t)
        for t in p.lookups:
            if t not in out.lookups:
                out.lookups.append(t)
        for grp in p.legacy:
            if grp not in out.legacy and not set(grp) & out.dropped:
                out.legacy.append(grp)
    return out


class _Builder:
    def __init__(self, spec: Spec):
        self.spec = spec
        self.rng = random.Random(spec.seed)
        self.revs: list[Rev] = []
        self.seen: set[str] = set()
        self.used: dict[str, set] = {"widen": set(), "uq": set(), "legacy": set()}

    def new_id(self) -> str:
        return rev_id(self.spec.name, len(self.revs))

    def add(self, down: tuple[str, ...], path: _Path) -> str:
        k = len(self.revs)
        rid = self.new_id()
        choices = ["create_table", "create_table", "seed_lookup", "enum_table", "legacy_create"]
        if path.tables:
            choices += ["orm_backfill", "batch_print", "context_stats", "naming", "widen"]
            if self.spec.concurrent:
                choices += ["concurrent_index", "concurrent_index"]
            if path.lookups:
                choices += ["fk_lookup"]
        if [g for g in path.legacy if g not in self.used["legacy"]]:
            choices += ["guarded_drop", "guarded_drop"]
        if k == 0:
            choices = ["create_table"]
        while True:
            missing = sorted(set(choices) - self.seen)
            op = self.rng.choice(missing if missing and self.rng.random() < 0.7 else choices)
            rev = Rev(rid, down, op, "")
            if getattr(self, "op_" + op)(rev, k, path):
                self.seen.add(op)
                break
        self.revs.append(rev)
        return rid

    def merge(self, downs: tuple[str, ...]) -> str:
        rid = self.new_id()
        self.revs.append(Rev(rid, downs, "merge", f"merge {len(downs)} branches"))
        return rid

    # -- the operations a step performs ---------------------------------------------------------

    def pick(self, path: _Path, used: str | None = None):
        pool = [t for t in path.tables if used is None or t not in self.used[used]]
        if not pool:
            return None
        t = self.rng.choice(pool)
        if used:
            self.used[used].add(t)
        return t

    def op_create_table(self, rev: Rev, k: int, path: _Path) -> bool:
        t = f"t_{k}"
        rev.doc = f"create {t} with rows (money column from the application)"
        rev.imports.add("from shopapp.types import Money")
        rev.upgrade += [
            f'op.create_table("{t}", sa.Column("id", sa.Integer, primary_key=True),',
            '                sa.Column("name", sa.String(50), nullable=False),',
            '                sa.Column("amount", Money(), nullable=False, server_default="0"),',
            '                sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()))',
            f'op.execute("INSERT INTO {t} (name, amount) SELECT \'{t}-\' || g, g * 100 FROM generate_series(1, 60) g")',
        ]
        rev.downgrade += [f'op.drop_table("{t}")']
        path.tables.append(t)
        return True

    def op_seed_lookup(self, rev: Rev, k: int, path: _Path) -> bool:
        t = f"lookup_{k}"
        rev.doc = f"create {t} and seed it with explicit ids"
        rev.upgrade += [
            f'tbl = op.create_table("{t}", sa.Column("id", sa.Integer, primary_key=True),',
            '                      sa.Column("code", sa.String(20), nullable=False, unique=True))',
            'op.bulk_insert(tbl, [{"id": i, "code": f"code-{i}"} for i in range(1, 6)])',
        ]
        rev.downgrade += [f'op.drop_table("{t}")']
        path.lookups.append(t)
        return True

    def op_enum_table(self, rev: Rev, k: int, path: _Path) -> bool:
        t, typ = f"ticket_{k}", f"ticket_state_{k}"
        rev.doc = f"create {t} with enum type {typ}"
        rev.imports.add("from shopapp import constants")
        rev.upgrade += [
            f'op.create_table("{t}", sa.Column("id", sa.Integer, primary_key=True),',
            f'                sa.Column("state", sa.Enum(*constants.TICKET_STATES, name="{typ}"), nullable=False))',
            f'op.execute("INSERT INTO {t} (state) SELECT (CASE WHEN g % 2 = 0 THEN \'open\' ELSE \'closed\' END)::{typ} '
            f'FROM generate_series(1, 20) g")',
        ]
        rev.downgrade += [f'op.drop_table("{t}")']
        if k % 2:
            rev.imports.add("from sqlalchemy.dialects import postgresql")
            rev.downgrade += [f'postgresql.ENUM(name="{typ}").drop(op.get_bind(), checkfirst=True)']
        else:
            rev.downgrade += [f'op.execute("DROP TYPE {typ}")']
        return True

    def op_legacy_create(self, rev: Rev, k: int, path: _Path) -> bool:
        grp = (f"legacy_{k}_a", f"legacy_{k}_b")
        rev.doc = f"create {', '.join(grp)} (dropped later behind an inspect() guard)"
        for t in grp:
            rev.upgrade += [f'op.create_table("{t}", sa.Column("id", sa.Integer, primary_key=True), '
                            f'sa.Column("payload", sa.Text))',
                            f'op.execute("INSERT INTO {t} (payload) SELECT \'p\' || g FROM generate_series(1, 3) g")']
        rev.downgrade += [f'op.drop_table("{t}")' for t in reversed(grp)]
        path.legacy.append(grp)
        return True

    def op_guarded_drop(self, rev: Rev, k: int, path: _Path) -> bool:
        grp = self.rng.choice([g for g in path.legacy if g not in self.used["legacy"]])
        self.used["legacy"].add(grp)
        path.legacy.remove(grp)
        path.dropped |= set(grp)
        rev.doc = f"drop {', '.join(grp)} if they exist"
        rev.upgrade += [
            'existing = set(sa.inspect(op.get_bind()).get_table_names())',
            f'for name in {grp!r}:',
            '    if name in existing:',
            '        op.drop_table(name)',
        ]
        rev.downgrade += [f'op.create_table("{t}", sa.Column("id", sa.Integer, primary_key=True), '
                          f'sa.Column("payload", sa.Text))' for t in grp]
        return True

    def op_orm_backfill(self, rev: Rev, k: int, path: _Path) -> bool:
        t = self.pick(path)
        col = f"note_{k}"
        rev.doc = f"add {t}.{col}, backfilled through an ORM model"
        rev.imports |= {"from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column",
                        "from alembic import context"}
        rev.module += [
            "class _Base(DeclarativeBase):",
            "    pass",
            "",
            "",
            "class _Row(_Base):",
            f'    __tablename__ = "{t}"',
            "    id: Mapped[int] = mapped_column(primary_key=True)",
            "    name: Mapped[str] = mapped_column(sa.String(200))",
            f"    {col}: Mapped[str | None] = mapped_column(sa.Text)",
        ]
        rev.upgrade += [
            f'op.add_column("{t}", sa.Column("{col}", sa.Text))',
            "if context.is_offline_mode():",
            f'    op.execute("UPDATE {t} SET {col} = \'note for \' || name")',
            "else:",
            "    with Session(bind=op.get_bind()) as session:",
            "        for row in session.scalars(sa.select(_Row).order_by(_Row.id)):",
            f'            row.{col} = "note for " + row.name',
            "        session.flush()",
            "        session.commit()",
        ]
        rev.downgrade += [f'op.drop_column("{t}", "{col}")']
        return True

    def op_batch_print(self, rev: Rev, k: int, path: _Path) -> bool:
        t = self.pick(path)
        col = f"score_{k}"
        rev.doc = f"add {t}.{col}, backfilled in batches that print their progress"
        rev.imports.add("from alembic import context")
        rev.upgrade += [
            f'op.add_column("{t}", sa.Column("{col}", sa.Integer))',
            "if context.is_offline_mode():",
            f'    op.execute("UPDATE {t} SET {col} = id * 2")',
            "else:",
            "    bind = context.get_bind()",
            "    done = 0",
            "    while True:",
            f'        res = bind.execute(sa.text("UPDATE {t} SET {col} = id * 2 WHERE id IN '
            f'(SELECT id FROM {t} WHERE {col} IS NULL ORDER BY id LIMIT 25)"))',
            "        if res.rowcount == 0:",
            "            break",
            "        done += res.rowcount",
            f'        print(f"{t}.{col}: backfilled {{done}} rows")',
        ]
        rev.downgrade += [f'op.drop_column("{t}", "{col}")']
        return True

    def op_context_stats(self, rev: Rev, k: int, path: _Path) -> bool:
        t = self.pick(path)
        s = f"stats_{k}"
        rev.doc = f"record {t}'s size in {s} (alembic.context)"
        rev.imports.add("from alembic import context")
        rev.upgrade += [
            f'stats = op.create_table("{s}", sa.Column("id", sa.Integer, primary_key=True),',
            '                        sa.Column("table_name", sa.String(63), nullable=False),',
            '                        sa.Column("row_count", sa.BigInteger, nullable=False))',
            "if context.is_offline_mode():",
            f'    op.execute("INSERT INTO {s} (table_name, row_count) SELECT \'{t}\', count(*) FROM {t}")',
            "else:",
            f'    n = context.get_bind().execute(sa.text("SELECT count(*) FROM {t}")).scalar_one()',
            f'    op.bulk_insert(stats, [{{"table_name": "{t}", "row_count": n}}])',
        ]
        rev.downgrade += [f'op.drop_table("{s}")']
        return True

    def op_naming(self, rev: Rev, k: int, path: _Path) -> bool:
        t = self.pick(path, "uq")
        if t is None:
            return False
        ck = f"amount_nonneg_{k}"
        rev.doc = f"constraints on {t} named by the naming convention"
        rev.upgrade += [
            f'op.create_unique_constraint(None, "{t}", ["name"])',
            f'op.create_check_constraint("{ck}", "{t}", "amount >= 0")',
        ]
        rev.downgrade += [
            f'op.drop_constraint(op.f("ck_{t}_{ck}"), "{t}", type_="check")',
            f'op.drop_constraint(op.f("uq_{t}_name"), "{t}", type_="unique")',
        ]
        return True

    def op_widen(self, rev: Rev, k: int, path: _Path) -> bool:
        t = self.pick(path, "widen")
        if t is None:
            return False
        rev.doc = f"widen {t}.name to varchar(200)"
        rev.upgrade += [f'op.alter_column("{t}", "name", type_=sa.String(200), existing_type=sa.String(50), '
                        'existing_nullable=False)']
        rev.downgrade += [f'op.alter_column("{t}", "name", type_=sa.String(50), existing_type=sa.String(200), '
                          'existing_nullable=False)']
        return True

    def op_concurrent_index(self, rev: Rev, k: int, path: _Path) -> bool:
        t = self.pick(path)
        ix = f"ix_{k}_{t}_created"
        rev.doc = f"index {t}.created_at concurrently"
        rev.upgrade += [
            "with op.get_context().autocommit_block():",
            f'    op.create_index("{ix}", "{t}", ["created_at"], postgresql_concurrently=True)',
        ]
        rev.downgrade += [
            "with op.get_context().autocommit_block():",
            f'    op.drop_index("{ix}", table_name="{t}", postgresql_concurrently=True)',
        ]
        return True

    def op_fk_lookup(self, rev: Rev, k: int, path: _Path) -> bool:
        t = self.pick(path)
        lk = self.rng.choice(path.lookups)
        col = f"lookup_{k}_id"
        rev.doc = f"{t}.{col} references {lk} (a convention-named foreign key)"
        rev.upgrade += [
            f'op.add_column("{t}", sa.Column("{col}", sa.Integer))',
            f'op.execute("UPDATE {t} SET {col} = 1 + id % 5")',
            f'op.create_foreign_key(None, "{t}", "{lk}", ["{col}"], ["id"])',
        ]
        rev.downgrade += [
            f'op.drop_constraint(op.f("fk_{t}_{col}_{lk}"), "{t}", type_="foreignkey")',
            f'op.drop_column("{t}", "{col}")',
        ]
        return True


def _graph(b: _Builder) -> list[str]:
    """Build the revisions: a trunk with forks of 2-3 branches (1-4 steps each), merged again."""
    n = b.spec.revisions
    path = _Path([], [], [], set())
    tip: tuple[str, ...] = ()
    while len(b.revs) < n:
        room = n - len(b.revs)
        if len(b.revs) >= 2 and room >= 6 and b.rng.random() < 0.6:
            width = b.rng.choice((2, 2, 3))
            ends, paths = [], []
            for _ in range(width):
                p = path.copy()
                t = tip
                for _ in range(b.rng.randint(1, 3)):
                    t = (b.add(t, p),)
                ends.append(t[0])
                paths.append(p)
            path = _merge_paths(paths)
            tip = (b.merge(tuple(ends)),)
        else:
            tip = (b.add(tip, path),)
    return list(tip)


# ---------------------------------------------------------------------------------------------
# writing the files

_SCRIPT = '''"""{doc}

Revision ID: {rev}
Revises: {revises}
"""
import os

import sqlalchemy as sa
from alembic import op
{imports}

revision = {rev!r}
down_revision = {down}
branch_labels = None
depends_on = None

{module}

def _fail_here(direction):
    if not op.get_context().as_sql and os.environ.get("{fail_env}") == f"{{direction}}:{{revision}}":
        raise RuntimeError(f"{fail_env}: the {{direction}}grade of {{revision}} fails on purpose")


def upgrade():
{upgrade}
    _fail_here("up")


def downgrade():
{downgrade}
    _fail_here("down")
'''


def _script(r: Rev) -> str:
    down = None if not r.down else (r.down[0] if len(r.down) == 1 else tuple(r.down))
    body = lambda lines: textwrap.indent("\n".join(lines) or "pass", "    ")  # noqa: E731
    return _SCRIPT.format(doc=r.doc, rev=r.id, revises=", ".join(r.down), down=repr(down),
                          imports="\n".join(sorted(r.imports)), fail_env=FAIL_ENV,
                          module=("\n".join(r.module) + "\n\n") if r.module else "",
                          upgrade=body(r.upgrade), downgrade=body(r.downgrade))


def build(spec: Spec, root: Path) -> History:
    b = _Builder(spec)
    heads = _graph(b)
    loc = root / spec.name
    versions = loc / "versions"
    versions.mkdir(parents=True, exist_ok=True)
    (loc / "env.py").write_text(env_py(spec.env))
    (loc / "script.py.mako").write_text("# not used: the corpus writes its scripts itself\n")
    for i, r in enumerate(b.revs):
        (versions / f"{r.id}_{i:03d}_{r.op}.py").write_text(_script(r))
    return History(spec, loc, b.revs, heads)


SPECS = [
    Spec("shop", env="template", revisions=32, seed=1),
    Spec("ledger", env="shared", revisions=36, seed=2, concurrent=True),
    Spec("own_txn", env="own_txn", revisions=24, seed=3),
    Spec("engine_conn", env="engine", revisions=24, seed=4),
]
BY_NAME = {s.name: s for s in SPECS}
