#!/usr/bin/env python3
"""Engine benchmarks: dbrev against plain Alembic and against a sequential scan.

Runnable alone (``.venv/bin/python bench/bench_engine.py``); ``make bench`` runs it
through ``bench/run_all.py``.  It starts and stops its own throwaway PostgreSQL
(:class:`dbrev.pg.ephemeral.PostgresServer`) and prints figures as ratios
against baselines measured in the same run -- nothing here asserts a time.

1. upgrade: a 20-step upgrade (tables, columns, indexes, constraints, an enum, a
   view, data inserts and updates on a few thousand rows), applied to a fresh
   database each time by

   * ``alembic upgrade head`` (CLI; a minimal alembic.ini + env.py + versions/),
   * ``dbrev apply -r head --json`` (CLI) on the same scripts,

   several repetitions, alternating which goes first; median wall times and the
   ratio (target: dbrev within 1.3x of Alembic).  Also the in-process figures
   (``alembic.command.upgrade``; ``dbrev.engine.verbs.apply`` in the same process and
   through its worker) and a breakdown of where dbrev's time goes.

2. verify: a 5-million-row table (bigserial PK, a validated FK, a NOT VALID FK so
   the orphans check really scans, two secondary indexes), then
   ``dbrev verify --json`` (CLI), ``dbrev.engine.verbs.verify`` and
   ``dbrev.pg.integrity.run_checks`` (in process) against one full sequential scan
   (``SELECT count(*)`` with index scans disabled), target within 2x.

Options: ``--reps N`` (default 7), ``--rows N`` (default 5,000,000),
``--only upgrade|verify``, ``--keep`` (leave the server running, print its URL).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "operator"))

from dbrev.pg.ephemeral import PostgresServer, drop_database  # noqa: E402

VENV_BIN = Path(sys.executable).parent
DBREV = str(VENV_BIN / "dbrev")
ALEMBIC = str(VENV_BIN / "alembic")
PY = sys.executable

UPGRADE_TARGET = 1.3
VERIFY_TARGET = 2.0


# ---------------------------------------------------------------------------
# output helpers


def say(msg: str = "") -> None:
    print(msg, flush=True)


def fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}s"


def median(xs):
    return statistics.median(xs) if xs else None


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    return "\n".join(out)


def timed_run(cmd: list[str], env: dict | None = None, check: bool = True) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {proc.returncode}\nstdout: {proc.stdout[-3000:]}\n"
                           f"stderr: {proc.stderr[-3000:]}")
    return dt, proc


def psql_scalar(url: str, sql: str):
    import psycopg

    with psycopg.connect(_dsn(url), autocommit=True) as conn:
        return conn.execute(sql).fetchone()[0]


def _dsn(url: str) -> str:
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return f"host={u.host} port={u.port} user={u.username} dbname={u.database}"


# ---------------------------------------------------------------------------
# 1. the 20-step upgrade

STEPS: list[tuple[str, str, str]] = [
    ("create accounts", """
        op.create_table(
            "accounts",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("email", sa.String(255), nullable=False),
            sa.Column("name", sa.String(100)),
            sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        )""", 'op.drop_table("accounts")'),
    ("create projects", """
        op.create_table(
            "projects",
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),
            sa.Column("name", sa.String(200), nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        )""", 'op.drop_table("projects")'),
    ("seed accounts and projects", """
        op.execute("INSERT INTO accounts (email, name) "
                   "SELECT 'user' || g || '@example.com', 'User ' || g FROM generate_series(1, 5000) g")
        op.execute("INSERT INTO projects (account_id, name) "
                   "SELECT 1 + (g % 5000), 'Project ' || g FROM generate_series(1, 8000) g")""",
     'op.execute("DELETE FROM projects")\nop.execute("DELETE FROM accounts")'),
    ("unique index on accounts.email", 'op.create_index("ix_accounts_email", "accounts", ["email"], unique=True)',
     'op.drop_index("ix_accounts_email", table_name="accounts")'),
    ("accounts.status", """
        op.add_column("accounts", sa.Column("status", sa.String(20), nullable=False, server_default="active"))""",
     'op.drop_column("accounts", "status")'),
    ("create tasks", """
        op.create_table(
            "tasks",
            sa.Column("id", sa.BigInteger, primary_key=True),
            sa.Column("project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
            sa.Column("title", sa.String(200), nullable=False),
            sa.Column("state", sa.String(20), nullable=False, server_default="open"),
            sa.Column("priority", sa.SmallInteger, nullable=False, server_default="2"),
            sa.Column("due", sa.Date),
            sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        )""", 'op.drop_table("tasks")'),
    ("seed tasks", """
        op.execute("INSERT INTO tasks (project_id, title, state, priority, due) "
                   "SELECT 1 + (g % 8000), 'Task ' || g, (ARRAY['open','done','blocked'])[1 + g % 3], g % 5, "
                   "date '2024-01-01' + (g % 365) FROM generate_series(1, 12000) g")""",
     'op.execute("DELETE FROM tasks")'),
    ("indexes on tasks", """
        op.create_index("ix_tasks_project_id", "tasks", ["project_id"])
        op.create_index("ix_tasks_state_due", "tasks", ["state", "due"])""",
     'op.drop_index("ix_tasks_state_due", table_name="tasks")\n'
     'op.drop_index("ix_tasks_project_id", table_name="tasks")'),
    ("projects.archived", """
        op.add_column("projects", sa.Column("archived", sa.Boolean, nullable=False, server_default=sa.false()))""",
     'op.drop_column("projects", "archived")'),
    ("archive old projects", 'op.execute("UPDATE projects SET archived = true WHERE id % 7 = 0")',
     'op.execute("UPDATE projects SET archived = false")'),
    ("accounts.display_name backfilled", """
        op.add_column("accounts", sa.Column("display_name", sa.String(100)))
        op.execute("UPDATE accounts SET display_name = coalesce(name, split_part(email, '@', 1))")
        op.alter_column("accounts", "display_name", nullable=False)""",
     'op.drop_column("accounts", "display_name")'),
    ("tags and task_tags", """
        op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True),
                        sa.Column("name", sa.String(50), nullable=False, unique=True))
        op.create_table("task_tags",
                        sa.Column("task_id", sa.BigInteger, sa.ForeignKey("tasks.id", ondelete="CASCADE"),
                                  primary_key=True),
                        sa.Column("tag_id", sa.Integer, sa.ForeignKey("tags.id", ondelete="CASCADE"),
                                  primary_key=True))""",
     'op.drop_table("task_tags")\nop.drop_table("tags")'),
    ("seed tags", """
        tags = sa.table("tags", sa.column("id", sa.Integer), sa.column("name", sa.String))
        op.bulk_insert(tags, [{"id": i, "name": f"tag-{i}"} for i in range(1, 51)])
        # explicit ids leave the serial's sequence behind (dbrev's "sequences" check catches a missing setval)
        op.execute("SELECT setval('tags_id_seq', (SELECT max(id) FROM tags))")
        op.execute("INSERT INTO task_tags (task_id, tag_id) SELECT id, 1 + id % 50 FROM tasks WHERE id % 3 = 0")""",
     'op.execute("DELETE FROM task_tags")\nop.execute("DELETE FROM tags")'),
    ("priority check", 'op.create_check_constraint("ck_tasks_priority", "tasks", "priority BETWEEN 0 AND 5")',
     'op.drop_constraint("ck_tasks_priority", "tasks", type_="check")'),
    ("rename projects.name to title", 'op.alter_column("projects", "name", new_column_name="title")',
     'op.alter_column("projects", "title", new_column_name="name")'),
    ("task kind enum", """
        kind = sa.Enum("bug", "feature", "chore", name="task_kind")
        kind.create(op.get_bind(), checkfirst=False)
        op.add_column("tasks", sa.Column("kind", kind, nullable=False, server_default="chore"))
        op.execute("UPDATE tasks SET kind = 'bug' WHERE title LIKE '%7'")""",
     'op.drop_column("tasks", "kind")\nsa.Enum(name="task_kind").drop(op.get_bind(), checkfirst=False)'),
    ("create comments", """
        op.create_table(
            "comments",
            sa.Column("id", sa.BigInteger, primary_key=True),
            sa.Column("task_id", sa.BigInteger, sa.ForeignKey("tasks.id", ondelete="CASCADE"), nullable=False),
            sa.Column("body", sa.Text, nullable=False),
            sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        )
        op.create_index("ix_comments_task_id", "comments", ["task_id"])""",
     'op.drop_table("comments")'),
    ("project_stats view", """
        op.execute("CREATE VIEW project_stats AS SELECT p.id AS project_id, count(t.id) AS tasks, "
                   "count(t.id) FILTER (WHERE t.state = 'open') AS open_tasks "
                   "FROM projects p LEFT JOIN tasks t ON t.project_id = p.id GROUP BY p.id")""",
     'op.execute("DROP VIEW project_stats")'),
    ("unique project title per account", """
        op.create_unique_constraint("uq_projects_account_title", "projects", ["account_id", "title"])""",
     'op.drop_constraint("uq_projects_account_title", "projects", type_="unique")'),
    ("partial index on open tasks", """
        op.create_index("ix_tasks_open_due", "tasks", ["due"], postgresql_where=sa.text("state = 'open'"))
        op.execute("UPDATE tasks SET priority = 4 WHERE state = 'blocked' AND priority < 4")""",
     'op.drop_index("ix_tasks_open_due", table_name="tasks")'),
]

ENV_PY = '''"""Minimal Alembic env.py (online mode only), as `alembic init` would write it."""
import os

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config
url = os.environ.get("BENCH_DATABASE_URL") or config.get_main_option("sqlalchemy.url")


def run_migrations_online():
    connectable = engine_from_config({"sqlalchemy.url": url}, prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()


run_migrations_online()
'''

ALEMBIC_INI = """[alembic]
script_location = %(here)s
sqlalchemy.url =

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = INFO
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""


def write_history(root: Path) -> tuple[Path, Path, list[str]]:
    """An Alembic env (alembic.ini, env.py, versions/) with the 20 steps; returns (ini, versions, revisions)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from scriptgen import write_script

    root.mkdir(parents=True, exist_ok=True)
    (root / "env.py").write_text(ENV_PY)
    (root / "alembic.ini").write_text(ALEMBIC_INI)
    (root / "script.py.mako").write_text("")
    versions = root / "versions"
    revs: list[str] = []
    down = None
    for i, (doc, up, dn) in enumerate(STEPS, 1):
        rev = f"be{i:02d}c0ffee{i:02d}"
        write_script(versions, rev, down, textwrap.dedent(up), textwrap.dedent(dn), doc=doc)
        revs.append(rev)
        down = rev
    return root / "alembic.ini", versions, revs


def at_head(url: str, head: str) -> bool:
    return psql_scalar(url, "SELECT string_agg(version_num, ',') FROM alembic_version") == head


def parse_timings(stderr: str) -> dict[str, float]:
    """Sum of 'Finished <op> operation' durations (ms) from dbrev's JSON debug logs, by operation."""
    out: dict[str, float] = {}
    for line in stderr.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        msg = rec.get("message", "")
        if msg.startswith("Finished ") and msg.endswith(" operation") and "duration_ms" in rec:
            op = rec.get("operation") or msg.split()[1]
            if op in ("upgrade", "downgrade"):  # per-step records
                op = "steps (sum)"
            out[op] = out.get(op, 0.0) + float(rec["duration_ms"])
    return out


def bench_upgrade(pg: PostgresServer, reps: int, work: Path) -> dict:
    ini, versions, revs = write_history(work / "alembic")
    head = revs[-1]
    admin = pg.url()
    env = {**os.environ, "BENCH_DATABASE_URL": ""}
    env.pop("DBREV_DATABASE_URL", None)

    def alembic_cli() -> float:
        url = pg.create_database()
        try:
            dt, _ = timed_run([ALEMBIC, "-c", str(ini), "upgrade", "head"], env={**env, "BENCH_DATABASE_URL": url})
            assert at_head(url, head), "alembic did not reach head"
            return dt
        finally:
            drop_database(admin, url.rsplit("/", 1)[1])

    def dbrev_cli(extra: list[str] = (), keep_stderr: bool = False):
        url = pg.create_database()
        try:
            dt, proc = timed_run([DBREV, "apply", "--migrations", str(versions), "-r", "head", "--database-url", url,
                                  "--json", *extra], env=env)
            doc = json.loads(proc.stdout)
            assert doc["result"] == "applied", doc
            assert at_head(url, head), "dbrev did not reach head"
            return (dt, proc.stderr, doc) if keep_stderr else dt
        finally:
            drop_database(admin, url.rsplit("/", 1)[1])

    say(f"[upgrade] 20-step history in {versions}; warming up (1 run each, not counted)")
    alembic_cli()
    dbrev_cli()
    def cold_run(tool: str) -> tuple[float, float, float]:
        """(wall, imports, run) of one run in a fresh interpreter: no CLI, no worker."""
        url = pg.create_database()
        try:
            wall, proc = timed_run([PY, "-c", COLD[tool], str(versions), url], env={**env, "BENCH_DATABASE_URL": ""})
            t_imp, t_run = json.loads(proc.stdout.strip().splitlines()[-1])
            assert at_head(url, head), f"{tool} (fresh interpreter) did not reach head"
            return wall, t_imp, t_run
        finally:
            drop_database(admin, url.rsplit("/", 1)[1])

    # every repetition runs the four variants back to back, in a rotating order, so that load from
    # other processes on the machine hits them alike
    runs = {"alembic_cli": alembic_cli, "dbrev_cli": dbrev_cli, "cold_alembic": lambda: cold_run("alembic"),
            "cold_dbrev": lambda: cold_run("dbrev")}
    times: dict[str, list] = {k: [] for k in runs}
    names = list(runs)
    for i in range(reps):
        for k in names[i % 4:] + names[:i % 4]:
            times[k].append(runs[k]())
        say(f"[upgrade] rep {i + 1}/{reps}: CLI alembic {times['alembic_cli'][-1]:.3f}s  dbrev "
            f"{times['dbrev_cli'][-1]:.3f}s; fresh interpreter alembic {times['cold_alembic'][-1][0]:.3f}s  "
            f"dbrev {times['cold_dbrev'][-1][0]:.3f}s")
    a_times, d_times = times["alembic_cli"], times["dbrev_cli"]

    # in process: alembic.command.upgrade, dbrev.engine.verbs.apply in this process and through the worker
    from alembic import command
    from alembic.config import Config

    from dbrev.engine import verbs as engine
    from dbrev.pg.db import DbOptions
    from dbrev.engine.runner import RunRequest

    def alembic_inproc() -> float:
        url = pg.create_database()
        try:
            cfg = Config(str(ini))
            os.environ["BENCH_DATABASE_URL"] = url
            t0 = time.perf_counter()
            command.upgrade(cfg, "head")
            dt = time.perf_counter() - t0
            assert at_head(url, head)
            return dt
        finally:
            os.environ.pop("BENCH_DATABASE_URL", None)
            drop_database(admin, url.rsplit("/", 1)[1])

    def dbrev_inproc(in_process: bool, profile: cProfile.Profile | None = None):
        url = pg.create_database()
        try:
            req = RunRequest(db=DbOptions(url=url), migrations=str(versions), target="head")
            t0 = time.perf_counter()
            if profile:
                profile.enable()
            res = engine.apply(req, in_process=in_process, log_level="WARNING", stderr_sink=lambda s: None)
            if profile:
                profile.disable()
            dt = time.perf_counter() - t0
            assert res["result"] == "applied", res
            return dt
        finally:
            drop_database(admin, url.rsplit("/", 1)[1])

    import logging

    from dbrev.core import log as L

    L.setup_logging("WARNING", "json", open(os.devnull, "w"))
    logging.getLogger("alembic").setLevel(logging.WARNING)
    alembic_inproc()
    dbrev_inproc(True)
    ai, di, dw = [], [], []
    for i in range(reps):
        ai.append(alembic_inproc())
        di.append(dbrev_inproc(True))
        dw.append(dbrev_inproc(False))
    say(f"[upgrade] in process: alembic {fmt_s(median(ai))}, dbrev {fmt_s(median(di))}, "
        f"dbrev via worker {fmt_s(median(dw))}")

    # where the time goes
    breakdown = profile_upgrade(pg, versions, reps, dbrev_cli, dbrev_inproc,
                                {"alembic": times["cold_alembic"], "dbrev": times["cold_dbrev"]})

    return {"alembic_cli": a_times, "dbrev_cli": d_times, "alembic_inproc": ai, "dbrev_inproc": di,
            "dbrev_worker": dw, "breakdown": breakdown}


def _import_time(code: str, n: int = 5) -> float:
    ts = []
    for _ in range(n):
        dt, _ = timed_run([PY, "-c", code])
        ts.append(dt)
    return median(ts)


# one run in a fresh interpreter: prints [import seconds, run seconds]
COLD = {
    "alembic": """
import json, os, sys, time
t0 = time.perf_counter()
from alembic import command
from alembic.config import Config
t1 = time.perf_counter()
versions, url = sys.argv[1:3]
os.environ["BENCH_DATABASE_URL"] = url
command.upgrade(Config(os.path.join(os.path.dirname(versions), "alembic.ini")), "head")
print(json.dumps([t1 - t0, time.perf_counter() - t1]))
""",
    "dbrev": """
import json, sys, time
t0 = time.perf_counter()
from dbrev.engine import verbs as engine
from dbrev.pg.db import DbOptions
from dbrev.engine.runner import RunRequest
t1 = time.perf_counter()
versions, url = sys.argv[1:3]
res = engine.apply(RunRequest(db=DbOptions(url=url), migrations=versions, target="head"), in_process=True)
assert res["result"] == "applied", res
print(json.dumps([t1 - t0, time.perf_counter() - t1]))
""",
}

PROFILE_FUNCS = [
    # (label, file suffix, function name)
    ("load scripts (exec modules)", "dbrev/engine/scripts.py", "load_folder"),
    ("plan: offline render (all steps)", "dbrev/engine/scripts.py", "render"),
    ("plan: classify SQL (pglast)", "dbrev/core/classify.py", "classify_sql"),
    ("plan: build_plan total", "dbrev/core/planning.py", "build_plan"),
    ("state schema (ensure_schema)", "dbrev/pg/state.py", "ensure_schema"),
    ("snapshot before (checks + fingerprint)", "dbrev/engine/runner.py", "_snapshot"),
    ("run migrations (Alembic, incl. callbacks)", "alembic/runtime/migration.py", "run_migrations"),
    ("  store script copies", "dbrev/pg/state.py", "store_script"),
    ("  per-step row-change counters", "dbrev/pg/integrity.py", "xact_row_changes"),
    ("  journal step updates", "dbrev/pg/state.py", "step"),
    ("verify after (checks + fingerprint + counts)", "dbrev/engine/runner.py", "_post_verify"),
    ("  fingerprint facts (before + after)", "dbrev/pg/integrity.py", "fingerprint_facts"),
    ("  catalog checks (before + after)", "dbrev/pg/integrity.py", "catalog_findings"),
    ("record fingerprint", "dbrev/pg/state.py", "record_fingerprint"),
    ("connect (engine + first connection)", "dbrev/pg/db.py", "connect"),
]


def profile_upgrade(pg: PostgresServer, versions: Path, reps: int, dbrev_cli, dbrev_inproc, cold_runs: dict) -> dict:
    """Where dbrev's wall time goes: process start-up, imports, worker, and the run's phases."""
    out: dict = {}
    out["python -c pass"] = _import_time("pass")
    out["python: import alembic.config (alembic CLI's import)"] = _import_time("import alembic.config")
    out["python: import dbrev.cli (dbrev CLI's import)"] = _import_time("import dbrev.cli")
    out["python: import what the worker needs"] = _import_time(
        "import dbrev.engine.worker, dbrev.engine.runner, dbrev.core.planning, dbrev.core.classify, pglast, "
        "alembic.runtime.environment")
    dt, _ = timed_run([DBREV, "--version"])
    out["dbrev --version"] = dt
    dt, _ = timed_run([ALEMBIC, "--version"])
    out["alembic --version"] = dt
    for tool in ("alembic", "dbrev"):
        runs = cold_runs[tool]
        out[f"cold {tool}"] = tuple(median([r[i] for r in runs]) for i in range(3))
    # offline plan of all 20 steps, in process (renders and classifies every step)
    from dbrev.engine import verbs as engine

    engine.plan(str(versions), "head", from_revisions=[])  # warm
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        engine.plan(str(versions), "head", from_revisions=[])
        ts.append(time.perf_counter() - t0)
    out["engine.plan from base (in process, offline)"] = median(ts)
    # dbrev's own phase timings (debug logs of the CLI run, worker included)
    phases: dict[str, list[float]] = {}
    for _ in range(3):
        _dt, stderr, _doc = dbrev_cli(["--log-level", "debug"], keep_stderr=True)
        for op, ms in parse_timings(stderr).items():
            phases.setdefault(op, []).append(ms / 1000)
    out["phases"] = {op: median(v) for op, v in phases.items()}
    # cProfile of the in-process run
    prof = cProfile.Profile()
    dbrev_inproc(True, prof)
    st = pstats.Stats(prof)
    cum: dict[str, float] = {}
    for (fname, _line, func), (_cc, _nc, _tt, ct, _callers) in st.stats.items():
        for label, suffix, name in PROFILE_FUNCS:
            if func == name and fname.replace("\\", "/").endswith(suffix):
                cum[label] = cum.get(label, 0.0) + ct
    out["cprofile_total"] = st.total_tt
    out["cprofile"] = {label: cum.get(label) for label, _s, _n in PROFILE_FUNCS}
    return out


# ---------------------------------------------------------------------------
# 2. verification on a big table

BIG_B1 = '''
op.create_table("customers", sa.Column("id", sa.Integer, primary_key=True),
                sa.Column("name", sa.Text, nullable=False),
                sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False))
op.create_table("coupons", sa.Column("id", sa.Integer, primary_key=True), sa.Column("code", sa.Text, nullable=False))
op.create_table("orders", sa.Column("id", sa.BigInteger, primary_key=True),
                sa.Column("customer_id", sa.Integer, nullable=False),
                sa.Column("coupon_id", sa.Integer),
                sa.Column("status", sa.String(16), nullable=False),
                sa.Column("amount", sa.Numeric(10, 2), nullable=False),
                sa.Column("created_at", sa.DateTime(timezone=True), nullable=False))
'''

BIG_B2 = '''
op.create_foreign_key("fk_orders_customer", "orders", "customers", ["customer_id"], ["id"])
op.create_index("ix_orders_customer_id", "orders", ["customer_id"])
op.create_index("ix_orders_created_at", "orders", ["created_at"])
# added NOT VALID (the first half of the zero-downtime way), validated by a later release
op.execute("ALTER TABLE orders ADD CONSTRAINT fk_orders_coupon FOREIGN KEY (coupon_id) REFERENCES coupons (id) "
           "NOT VALID")
'''


def bench_verify(pg: PostgresServer, rows: int, reps: int, work: Path) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from scriptgen import write_script

    import psycopg

    versions = work / "big" / "versions"
    write_script(versions, "big1schema", None, BIG_B1, 'op.drop_table("orders")\nop.drop_table("coupons")\n'
                 'op.drop_table("customers")', doc="orders schema")
    write_script(versions, "big2indexes", "big1schema", BIG_B2,
                 'op.drop_constraint("fk_orders_coupon", "orders", type_="foreignkey")\n'
                 'op.drop_index("ix_orders_created_at", table_name="orders")\n'
                 'op.drop_index("ix_orders_customer_id", table_name="orders")\n'
                 'op.drop_constraint("fk_orders_customer", "orders", type_="foreignkey")', doc="indexes and FKs")
    url = pg.create_database("bigverify")
    env = {k: v for k, v in os.environ.items() if k != "DBREV_DATABASE_URL"}
    out: dict = {"rows": rows}
    timed_run([DBREV, "apply", "--migrations", str(versions), "-r", "big1schema", "--database-url", url, "--json"],
              env=env)
    say(f"[verify] loading {rows:,} orders (generate_series) ...")
    t0 = time.perf_counter()
    with psycopg.connect(_dsn(url), autocommit=True) as conn:
        conn.execute("INSERT INTO customers (name) SELECT 'customer ' || g FROM generate_series(1, 100000) g")
        conn.execute("INSERT INTO coupons (code) SELECT 'C' || g FROM generate_series(1, 1000) g")
        conn.execute(
            "INSERT INTO orders (customer_id, coupon_id, status, amount, created_at) "
            "SELECT 1 + g % 100000, CASE WHEN g % 3 = 0 THEN 1 + g % 1000 END, "
            "(ARRAY['new','paid','shipped','cancelled'])[1 + g % 4], (g % 10000) / 100.0, "
            "timestamptz '2020-01-01' + g * interval '20 seconds' "
            f"FROM generate_series(1, {int(rows)}) g")
        out["load_seconds"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        conn.execute("VACUUM ANALYZE customers, coupons, orders")
        out["vacuum_seconds"] = time.perf_counter() - t1
    say(f"[verify] loaded in {out['load_seconds']:.1f}s, VACUUM ANALYZE {out['vacuum_seconds']:.1f}s; "
        f"applying indexes + FKs with dbrev ...")
    # the NOT VALID FK is a new "constraints" error by design: leave that check out of this apply
    dt, proc = timed_run([DBREV, "apply", "--migrations", str(versions), "-r", "head", "--database-url", url,
                          "--json", "--verify", "indexes,sequences,orphans,rowCounts,fingerprint"], env=env)
    out["index_apply_seconds"] = dt
    doc = json.loads(proc.stdout)
    assert doc["result"] == "applied", doc
    out["index_apply_verify_note"] = [f["message"][:120] for f in (doc.get("integrity") or {}).get("findings", [])]
    with psycopg.connect(_dsn(url), autocommit=True) as conn:
        size = conn.execute("SELECT pg_size_pretty(pg_table_size('orders')), "
                            "pg_size_pretty(pg_indexes_size('orders'))").fetchone()
        out["table_size"], out["index_size"] = size
    say(f"[verify] indexes + FKs applied in {dt:.1f}s; orders: {out['table_size']} heap, {out['index_size']} indexes")

    scan_sql = "SELECT count(*) FROM orders"

    def seqscan(parallel: bool) -> float:
        with psycopg.connect(_dsn(url), autocommit=True) as conn:
            conn.execute("SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off")
            if not parallel:
                conn.execute("SET max_parallel_workers_per_gather = 0")
            t0 = time.perf_counter()
            n = conn.execute(scan_sql).fetchone()[0]
            dt = time.perf_counter() - t0
            assert n == rows
            return dt

    psql = [str(pg.bindir / "psql"), "-X", "-q", "-t", "-h", "127.0.0.1", "-p", str(pg.port), "-U", pg.user,
            "-d", "bigverify", "-c", "SET enable_indexscan = off; SET enable_indexonlyscan = off; "
                                     "SET enable_bitmapscan = off; " + scan_sql]

    def psql_scan() -> float:
        dt, proc = timed_run(psql)
        assert int(proc.stdout.split()[-1]) == rows, proc.stdout
        return dt

    def plan_of(sql: str, parallel: bool = True) -> str:
        with psycopg.connect(_dsn(url), autocommit=True) as conn:
            conn.execute("SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off")
            if not parallel:
                conn.execute("SET max_parallel_workers_per_gather = 0")
            return " / ".join(r[0].strip() for r in conn.execute("EXPLAIN " + sql).fetchall()[:4])

    from dbrev.engine import verbs as engine
    from dbrev.pg import integrity
    from dbrev.pg.db import DbOptions, connection

    def cli_verify() -> tuple[float, dict]:
        dt, proc = timed_run([DBREV, "verify", "--migrations", str(versions), "--database-url", url, "--json"],
                             env=env, check=False)
        doc = json.loads(proc.stdout)
        assert proc.returncode in (0, 1), proc.stderr
        return dt, doc

    def inproc_engine_verify() -> float:
        t0 = time.perf_counter()
        engine.verify(DbOptions(url=url), migrations=str(versions))
        return time.perf_counter() - t0

    def inproc_run_checks() -> tuple[float, object]:
        with connection(DbOptions(url=url)) as conn:
            t0 = time.perf_counter()
            rep = integrity.run_checks(conn)
            dt = time.perf_counter() - t0
            conn.rollback()
        return dt, rep

    def orphan_query_only() -> float:
        with connection(DbOptions(url=url)) as conn:
            t0 = time.perf_counter()
            integrity.catalog_findings(conn, ("orphans",))
            dt = time.perf_counter() - t0
            conn.rollback()
        return dt

    # warm: the first scans of a freshly written table set hint bits and fill the page cache
    seqscan(True)
    seqscan(False)
    _dt, first_doc = cli_verify()
    out["verify_doc"] = {"passed": first_doc.get("passed"),
                         "findings": [(f["check"], f["severity"], f["count"], f["message"][:110])
                                      for f in first_doc.get("findings", [])]}
    res: dict[str, list[float]] = {k: [] for k in ("seq_parallel", "seq_serial", "psql", "cli", "engine",
                                                   "run_checks", "orphans")}
    for i in range(reps):
        res["psql"].append(psql_scan())
        res["seq_parallel"].append(seqscan(True))
        res["seq_serial"].append(seqscan(False))
        res["cli"].append(cli_verify()[0])
        res["engine"].append(inproc_engine_verify())
        dt, rep = inproc_run_checks()
        res["run_checks"].append(dt)
        res["orphans"].append(orphan_query_only())
        say(f"[verify] rep {i + 1}/{reps}: count(*) {res['seq_parallel'][-1]:.3f}s (parallel) "
            f"{res['seq_serial'][-1]:.3f}s (serial); dbrev verify CLI {res['cli'][-1]:.3f}s, engine.verify "
            f"{res['engine'][-1]:.3f}s, run_checks {dt:.3f}s")
    out["times"] = res
    out["run_checks_findings"] = [(f.check, f.severity, f.count) for f in rep.findings]
    out["plans"] = {"count(*)": plan_of(scan_sql), "count(*) serial": plan_of(scan_sql, False)}
    with psycopg.connect(_dsn(url), autocommit=True) as conn:
        oq = ("SELECT count(*) FROM (SELECT 1 FROM ONLY public.orders ch WHERE ch.coupon_id IS NOT NULL AND "
              "NOT EXISTS (SELECT 1 FROM ONLY public.coupons pa WHERE pa.id = ch.coupon_id) LIMIT 10001) s")
        out["plans"]["orphans query"] = " / ".join(r[0].strip() for r in conn.execute("EXPLAIN " + oq).fetchall()[:6])
    return out


# ---------------------------------------------------------------------------


def report(up: dict | None, ver: dict | None) -> None:
    say()
    say("=" * 100)
    say("bench_engine results (medians; ratios are against baselines measured in this same run)")
    say("=" * 100)
    rows = []
    if up:
        a, d = median(up["alembic_cli"]), median(up["dbrev_cli"])
        ai, di, dw = median(up["alembic_inproc"]), median(up["dbrev_inproc"]), median(up["dbrev_worker"])
        n = len(up["alembic_cli"])
        rows += [
            ["20-step upgrade, CLI wall", "alembic upgrade head", fmt_s(a), "dbrev apply --json", fmt_s(d),
             f"{d / a:.2f}x", f"<= {UPGRADE_TARGET}x", "MET" if d / a <= UPGRADE_TARGET else "NOT MET", n],
            ["20-step upgrade, in process", "command.upgrade", fmt_s(ai), "engine.apply(in_process)", fmt_s(di),
             f"{di / ai:.2f}x", f"<= {UPGRADE_TARGET}x", "MET" if di / ai <= UPGRADE_TARGET else "NOT MET", n],
            ["20-step upgrade, in process", "command.upgrade", fmt_s(ai), "engine.apply (worker)", fmt_s(dw),
             f"{dw / ai:.2f}x", "(info)", "", n],
        ]
    if ver:
        t = ver["times"]
        sp, ss = median(t["seq_parallel"]), median(t["seq_serial"])
        base = min(sp, ss)
        n = len(t["cli"])
        label = f"verify, {ver['rows'] / 1e6:g}M rows"
        ps = median(t["psql"])
        rows.append([label, "psql -c 'count(*)' (CLI)", fmt_s(ps), "dbrev verify --json (CLI)", fmt_s(median(t["cli"])),
                     f"{median(t['cli']) / ps:.2f}x", f"<= {VERIFY_TARGET}x",
                     "MET" if median(t["cli"]) / ps <= VERIFY_TARGET else "NOT MET", n])
        for name, key in (("dbrev verify --json (CLI)", "cli"), ("engine.verify (in process)", "engine"),
                          ("integrity.run_checks", "run_checks"), ("  of which the orphans scan", "orphans")):
            v = median(t[key])
            rows.append([label, "count(*) seq scan (best)", fmt_s(base), name, fmt_s(v), f"{v / base:.2f}x",
                         f"<= {VERIFY_TARGET}x" if key != "orphans" else "(info)",
                         ("MET" if v / base <= VERIFY_TARGET else "NOT MET") if key != "orphans" else "", n])
        rows.append([label, "count(*) parallel / serial", f"{fmt_s(sp)} / {fmt_s(ss)}", "", "", "", "", "", n])
    say(table(rows, ["measure", "baseline", "time", "dbrev", "time", "ratio", "target", "", "reps"]))
    if up:
        b = up["breakdown"]
        say()
        say("Where dbrev apply's time goes (20-step upgrade):")
        say(f"  process start-up / imports (median of 5 runs each):")
        for k in ("python -c pass", "python: import alembic.config (alembic CLI's import)",
                  "python: import dbrev.cli (dbrev CLI's import)", "python: import what the worker needs",
                  "alembic --version", "dbrev --version"):
            say(f"    {k:<58} {fmt_s(b[k])}")
        say("  one run in a fresh interpreter (no CLI, no worker; medians, interleaved with the CLI runs): "
            "wall = imports + cold run")
        for tool in ("alembic", "dbrev"):
            wall, imp, run = b[f"cold {tool}"]
            say(f"    {tool + (' command.upgrade' if tool == 'alembic' else ' engine.apply(in_process=True)'):<58} "
                f"{fmt_s(wall)} = {fmt_s(imp)} + {fmt_s(run)} (+ interpreter)")
        d_cli, a_cli = median(up["dbrev_cli"]), median(up["alembic_cli"])
        say(f"    => dbrev CLI minus fresh-interpreter engine run: {fmt_s(d_cli - b['cold dbrev'][0])} "
            f"(CLI process + worker start-up and hand-over)")
        say(f"    => alembic CLI minus fresh-interpreter command.upgrade: {fmt_s(a_cli - b['cold alembic'][0])}")
        say(f"  offline plan of the 20 steps, in process: {fmt_s(b['engine.plan from base (in process, offline)'])}")
        say("  phases logged by dbrev (--log-level debug, CLI run, medians of 3):")
        for op, v in sorted(b["phases"].items(), key=lambda kv: -kv[1]):
            say(f"    {op:<58} {fmt_s(v)}")
        say(f"  cProfile of one in-process engine.apply (cumulative, profiler overhead included; "
            f"total {b['cprofile_total']:.3f}s):")
        for label, v in b["cprofile"].items():
            say(f"    {label:<58} {fmt_s(v)}")
    if ver:
        say()
        say(f"Big table: {ver['rows']:,} rows loaded in {ver['load_seconds']:.1f}s (generate_series), "
            f"VACUUM ANALYZE {ver['vacuum_seconds']:.1f}s, indexes + FKs applied by dbrev in "
            f"{ver['index_apply_seconds']:.1f}s; orders is {ver['table_size']} + {ver['index_size']} of indexes")
        say(f"dbrev verify reported passed={ver['verify_doc']['passed']}:")
        for f in ver["verify_doc"]["findings"]:
            say(f"    {f[1]} [{f[0]}] ({f[2]}): {f[3]}")
        t = ver["times"]
        say(f"dbrev verify CLI minus engine.verify in process: {fmt_s(median(t['cli']) - median(t['engine']))} "
            f"(interpreter start-up and imports; `dbrev --version` alone: see above or ~0.2s)")
        say("Query plans:")
        for k, v in ver["plans"].items():
            say(f"    {k}: {v}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--only", choices=["upgrade", "verify"])
    ap.add_argument("--json-out", metavar="FILE", help="also write the raw figures as JSON")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dbrev-bench-"))
    pg = PostgresServer()
    t0 = time.perf_counter()
    up = ver = None
    try:
        pg.start()
        say(f"[bench_engine] PostgreSQL {psql_scalar(pg.url(), 'SHOW server_version')} on port {pg.port}; "
            f"{os.cpu_count()} CPUs; reps={args.reps}")
        if args.only in (None, "upgrade"):
            up = bench_upgrade(pg, args.reps, work)
        if args.only in (None, "verify"):
            ver = bench_verify(pg, args.rows, max(3, args.reps // 2 + 1), work)
    finally:
        pg.cleanup()
        shutil.rmtree(work, ignore_errors=True)
    report(up, ver)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"upgrade": up, "verify": ver}, indent=2, default=str))
    say(f"\n[bench_engine] done in {time.perf_counter() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
