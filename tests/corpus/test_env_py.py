"""Small reproductions of what the real-world histories (bench/realworld) showed about env.py files.

Each is an env.py style a well-known project ships, cut down to two scripts; dbrev must run it
the way plain Alembic does.
"""

from __future__ import annotations

import functools
import time

import pytest

import gen
from clihelp import dbrev
from dbhelp import heads, q
from harness import alembic_ok, explain
from scriptgen import write_script


@functools.lru_cache(maxsize=1)
def env_flags() -> tuple[str, ...]:
    """Run through the project's env.py: the default once dbrev uses it like Alembic; ``--env-py`` before."""
    out = dbrev("apply", "--help", json_out=False).stdout
    return ("--env-py",) if "--env-py" in out else ()


def _two_steps(loc, env_text: str) -> None:
    (loc / "versions").mkdir(parents=True)
    (loc / "env.py").write_text(env_text)
    write_script(loc / "versions", "e001aaaa", None,
                 'op.create_table("account", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))\n'
                 'op.execute("INSERT INTO account (name) SELECT \'a\' || g FROM generate_series(1, 50) g")',
                 'op.drop_table("account")')
    write_script(loc / "versions", "e002aaaa", "e001aaaa",
                 'op.add_column("account", sa.Column("email", sa.String(100)))',
                 'op.drop_column("account", "email")')


def _apply(loc, url, target, *flags):
    t0 = time.monotonic()
    r = dbrev("apply", "--migrations", str(loc), "-r", target, *env_flags(), "--timeout", "20", *flags, url=url,
              timeout=90)
    return r, time.monotonic() - t0


@pytest.mark.parametrize("style", ["template", "engine"])
def test_an_env_py_with_a_connection_of_its_own_downgrades_like_alembic(style, tmp_path, database_url,
                                                                        second_database_url):
    """ckan's env.py (an engine of its own from sqlalchemy.url, like ``alembic init``'s) and mlflow's (a
    connection from ``config.attributes['connection'].engine``): a step that alters a table that existed
    before the run must not wait on a lock dbrev's own session holds (ckan's downgrade hung until the
    worker's timeout; mlflow's upgrade hit lock_timeout)."""
    loc = tmp_path / "loc"
    _two_steps(loc, gen.env_py(style).replace("from shopapp.models import Base\n\ntarget_metadata = Base.metadata",
                                               "target_metadata = None"))
    for url in (database_url, second_database_url):
        q(url, "SELECT 1")
    alembic_ok(loc, second_database_url, "upgrade", "e001aaaa")
    alembic_ok(loc, second_database_url, "upgrade", "heads")
    alembic_ok(loc, second_database_url, "downgrade", "base")

    r, _ = _apply(loc, database_url, "e001aaaa")
    assert r.code == 0, explain(r)
    r, took = _apply(loc, database_url, "heads")
    assert r.code == 0 and heads(database_url) == ["e002aaaa"], f"upgrade over an existing table ({took:.0f}s): " \
                                                                 f"{explain(r)}"
    r, took = _apply(loc, database_url, "base", "--allow-downgrade", "--allow-data-loss")
    assert r.code == 0 and heads(database_url) == [], f"downgrade ({took:.0f}s): {explain(r)}"
    assert took < 15


def test_an_env_py_that_configures_logging_from_its_ini_file_runs(tmp_path, database_url, second_database_url):
    """optuna's env.py calls ``fileConfig(config.config_file_name)`` when the root logger has no handler
    (Alembic's template guards it with ``if config.config_file_name is not None``).  Plain Alembic runs it with
    the project's alembic.ini; dbrev must give env.py a config it can run with (or say up front it cannot)."""
    loc = tmp_path / "loc"
    env = gen.env_py("shared").replace(
        "config = context.config\n",
        "config = context.config\n\nimport logging\nif len(logging.getLogger().handlers) == 0:\n"
        "    fileConfig(config.config_file_name)\n")
    _two_steps(loc, env)
    (loc / "alembic.ini").write_text("[alembic]\nscript_location = %(here)s\n\n[loggers]\nkeys = root\n\n"
                                     "[handlers]\nkeys = console\n\n[formatters]\nkeys = generic\n\n"
                                     "[logger_root]\nlevel = WARN\nhandlers = console\n\n"
                                     "[handler_console]\nclass = StreamHandler\nargs = (sys.stderr,)\n"
                                     "level = NOTSET\nformatter = generic\n\n"
                                     "[formatter_generic]\nformat = %(levelname)s %(message)s\n")
    r, _ = _apply(loc, database_url, "heads")
    assert r.code in (0, 2), explain(r)
    if r.code == 2:  # refused up front: it must say why, and change nothing
        assert "env.py" in r.stdout and heads(database_url) == []
    else:
        assert heads(database_url) == ["e002aaaa"]
