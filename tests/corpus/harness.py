"""Run a corpus history through plain Alembic and through the dbrev CLI, and look at the result.

* ``alembic(...)``: Alembic's own ``command.upgrade`` / ``command.downgrade`` with the history's
  env.py, in a fresh interpreter (the application package on ``PYTHONPATH``, as a project's
  ``prepend_sys_path`` would put it).
* ``dbrev_apply(...)``: ``dbrev apply`` as a user types it (``--pythonpath`` for the application).
* ``schema(url)``: ``pg_dump --schema-only`` split into statements; dbrev's own schemas are left
  out of the dump, and only what differs between two dumps of the same schema is normalised
  (comments, ``SET`` lines, pg_dump's random ``\\restrict`` key).
* ``row_counts(url)``: the exact row count of every table outside dbrev's schemas.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from clihelp import CliResult, dbrev
from dbhelp import q
from dbrev.pg.ephemeral import find_bindir
from gen import APPS, FAIL_ENV

_ALEMBIC = """
import sys
from alembic import command
from alembic.config import Config

loc, url, verb, target = sys.argv[1:5]
cfg = Config()
cfg.set_main_option("script_location", loc)
cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
getattr(command, verb)(cfg, target)
"""


def alembic(location: Path, url: str, verb: str, target: str, fail: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (FAIL_ENV, "DBREV_DATABASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join([str(APPS), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    if fail:
        env[FAIL_ENV] = fail
    return subprocess.run([sys.executable, "-c", _ALEMBIC, str(location), url, verb, target],
                          capture_output=True, text=True, env=env, timeout=300)


def alembic_ok(location: Path, url: str, verb: str, target: str) -> None:
    p = alembic(location, url, verb, target)
    assert p.returncode == 0, f"plain Alembic failed ({verb} {target}): {p.stderr[-3000:]}"


def dbrev_apply(location: Path, url: str, target: str, *flags: str, fail: str | None = None) -> CliResult:
    env = {FAIL_ENV: fail or ""}
    return dbrev("apply", "--migrations", str(location), "--pythonpath", str(APPS), "-r", target, *flags,
                 url=url, env=env)


def document(r: CliResult) -> dict:
    """dbrev's --json document; if something else was printed around it, the last JSON object in stdout."""
    try:
        return json.loads(r.stdout)
    except ValueError:
        pass
    text = r.stdout
    for i in [i for i, ch in enumerate(text) if ch == "{" and (i == 0 or text[i - 1] == "\n")][::-1]:
        try:
            return json.loads(text[i:])
        except ValueError:
            continue
    return {"unparsed_stdout": text[-2000:]}


def explain(r: CliResult) -> str:
    """What to show when a dbrev run did not do what was expected."""
    d = document(r)
    brief = {k: d.get(k) for k in ("result", "error", "rollback", "warnings", "current_revisions") if k in d}
    if "unparsed_stdout" in d:
        brief = d
    errs = [ln for ln in r.stderr.splitlines() if '"ERROR"' in ln or "Traceback" in ln or "Error" in ln][-6:]
    return f"exit {r.code}: {json.dumps(brief, default=str)[:2500]}\nstderr: " + "\n".join(x[:600] for x in errs)


# ---------------------------------------------------------------------------------------------
# looking at a database

def _pg_env(url: str) -> tuple[list[str], dict]:
    u = make_url(url)
    env = dict(os.environ)
    if u.password:
        env["PGPASSWORD"] = u.password
    return ["-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "postgres"], env


def pg_dump_bin() -> str:
    fixed = Path("/usr/lib/postgresql/15/bin/pg_dump")
    return str(fixed if fixed.exists() else find_bindir() / "pg_dump")


def schema(url: str) -> list[str]:
    """The schema as pg_dump prints it, one statement per item, dbrev's own schemas left out."""
    conn, env = _pg_env(url)
    p = subprocess.run([pg_dump_bin(), "--schema-only", "--no-owner", "--no-privileges", "-N", "dbrev",
                        "-N", "dbrev_*", *conn, make_url(url).database], capture_output=True, text=True, env=env,
                       check=True)
    lines = [ln for ln in p.stdout.splitlines()
             if ln.strip() and not ln.startswith(("--", "SET ", "\\restrict", "\\unrestrict"))
             and not ln.startswith("SELECT pg_catalog.set_config('search_path'")]
    stmts = [s.strip() for s in "\n".join(lines).split(";\n") if s.strip()]
    # event triggers dbrev may install for itself live outside any schema: leave out only those
    return [s for s in stmts if not (s.upper().startswith(("CREATE EVENT TRIGGER", "ALTER EVENT TRIGGER"))
                                     and "dbrev" in s)]


def schema_diff(expected: list[str], actual: list[str], a: str = "alembic", b: str = "dbrev") -> str:
    """The statements that differ, each on one line."""
    one = lambda stmts: [" ".join(x.split()) for x in stmts]  # noqa: E731
    return "\n".join(x[:400] for x in list(difflib.unified_diff(one(expected), one(actual), a, b, lineterm="",
                                                                  n=0))[:60])


def row_counts(url: str) -> dict[str, int]:
    tables = q(url, "SELECT schemaname, tablename FROM pg_tables WHERE schemaname NOT IN "
                    "('pg_catalog', 'information_schema') AND schemaname NOT LIKE 'dbrev%' ORDER BY 1, 2")
    return {f"{s}.{t}": q(url, f'SELECT count(*) FROM "{s}"."{t}"')[0][0] for s, t in tables}


def missing_rows(before: dict[str, int], after: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Tables that have fewer rows after than before (a table that is gone counts as 0)."""
    return {t: (n, after.get(t, 0)) for t, n in before.items() if after.get(t, 0) < n}


_USER_ROWS = {
    "t": "INSERT INTO {t} (name, amount) SELECT 'user-{t}-' || g, g FROM generate_series(1, 40) g",
    "lookup": "INSERT INTO {t} (id, code) SELECT 100 + g, 'user-' || g FROM generate_series(1, 10) g",
    "ticket": "INSERT INTO {t} (state) SELECT 'open' FROM generate_series(1, 15) g",
    "legacy": "INSERT INTO {t} (payload) SELECT 'user-' || g FROM generate_series(1, 7) g",
    "stats": "INSERT INTO {t} (table_name, row_count) SELECT 'user', g FROM generate_series(1, 4) g",
}


def add_user_rows(url: str) -> int:
    """What an application writes between runs: rows in every corpus table that no migration put there.

    A rollback that re-runs steps re-creates the rows a step seeds itself; these it cannot."""
    n = 0
    for (t,) in q(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"):
        sql = _USER_ROWS.get(t.split("_")[0])
        if sql:
            q(url, sql.format(t=t))
            n += 1
    return n
