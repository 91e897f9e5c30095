"""dbrev runs scripts the way Alembic runs them: same compile, same `alembic.context`, same env.py.

Each test runs the same scripts through dbrev and, where it makes sense, through plain Alembic
(`alembic.command.upgrade` with a stock env.py) on a second database, and compares.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import sqlalchemy as sa

from clihelp import dbrev
from dbhelp import heads, q
from scriptgen import write_script

STOCK_ENV_PY = textwrap.dedent('''
    from alembic import context
    from sqlalchemy import engine_from_config, pool

    config = context.config

    def run_migrations_offline():
        context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()

    def run_migrations_online():
        connectable = config.attributes.get("connection")
        if connectable is None:
            engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                                        prefix="sqlalchemy.", poolclass=pool.NullPool)
            with engine.connect() as connection:
                context.configure(connection=connection)
                with context.begin_transaction():
                    context.run_migrations()
        else:
            context.configure(connection=connectable)
            with context.begin_transaction():
                context.run_migrations()

    if context.is_offline_mode():
        run_migrations_offline()
    else:
        run_migrations_online()
''')


def second_database(pg_admin_url: str) -> str:
    from dbrev.envtest.postgres import create_database

    return create_database(pg_admin_url)


def plain_alembic(location: Path, url: str, *args: str, env_py: str | None = STOCK_ENV_PY) -> subprocess.CompletedProcess:
    """`alembic <args>` on ``location`` (a versions folder is wrapped into a script location)."""
    if not (location / "env.py").is_file():
        loc = location.parent / (location.name + "-alembic")
        if loc.exists():
            shutil.rmtree(loc)
        shutil.copytree(location, loc / "versions")
        (loc / "env.py").write_text(env_py or STOCK_ENV_PY)
        location = loc
    code = textwrap.dedent(f'''
        import sys
        from alembic.config import Config, CommandLine
        cfg = Config()
        cfg.set_main_option("script_location", {str(location)!r})
        cfg.set_main_option("sqlalchemy.url", {url.replace("%", "%%")!r})
        cl = CommandLine()
        ns = cl.parser.parse_args(sys.argv[1:])
        cl.run_cmd(cfg, ns)
    ''')
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)


ORM_SCRIPT_EXTRA = '''
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Gadget(Base):
    __tablename__ = "gadgets"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(40))
'''


def test_a_script_defining_an_orm_model_with_mapped_loads_like_under_alembic(database_url, pg_admin_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "o001aaaa", None,
                 'op.create_table("gadgets", *[c.copy() for c in Gadget.__table__.columns])\n'
                 'op.bulk_insert(Gadget.__table__, [{"name": "first"}])',
                 'op.drop_table("gadgets")', extra=ORM_SCRIPT_EXTRA)
    other = second_database(pg_admin_url)
    ref = plain_alembic(d, other, "upgrade", "head")
    assert ref.returncode == 0, ref.stderr
    assert q(other, "SELECT id, name FROM gadgets") == [(1, "first")]

    p = dbrev("plan", "--migrations", str(d), "-r", "head", url=database_url)
    assert p.code == 0, p.stdout + p.stderr
    assert p.json["steps"][0]["renderable"] is True
    r = dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    assert q(database_url, "SELECT id, name FROM gadgets") == [(1, "first")]


CONTEXT_UPGRADE = '''
from alembic import context
assert context.config.get_main_option("script_location")
if context.is_offline_mode():
    op.execute("SELECT 'offline'")
else:
    bind = context.get_bind()
    n = bind.execute(sa.text("SELECT count(*) FROM items")).scalar()
    op.execute(f"INSERT INTO items (n) VALUES ({n + 41})")
    assert context.get_context().dialect.name == "postgresql"
'''


def test_alembic_context_is_established_online_and_offline(database_url, pg_admin_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "c001aaaa", None, 'op.create_table("items", sa.Column("n", sa.Integer))',
                 'op.drop_table("items")')
    write_script(d, "c002aaaa", "c001aaaa", CONTEXT_UPGRADE, 'op.execute("DELETE FROM items")')
    other = second_database(pg_admin_url)
    ref = plain_alembic(d, other, "upgrade", "head")
    assert ref.returncode == 0, ref.stderr
    assert q(other, "SELECT n FROM items") == [(41,)]

    p = dbrev("plan", "--migrations", str(d), "-r", "head", url=database_url)
    assert p.code == 0, p.stdout + p.stderr
    step = p.json["steps"][1]
    assert step["renderable"] is True, step
    r = dbrev("plan", "--migrations", str(d), "-r", "head", "--sql", url=database_url, json_out=False)
    assert "SELECT 'offline'" in r.stdout
    a = dbrev("apply", "--migrations", str(d), "-r", "head", "--allow-data-loss", url=database_url)
    assert a.code == 0, a.stdout + a.stderr
    assert q(database_url, "SELECT n FROM items") == [(41,)]


def _script_line(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip() == text)


def test_sys_exit_and_keyboard_interrupt_in_upgrade_are_the_scripts_failure(database_url, tmp_path):
    for n, (stmt, words) in enumerate([("sys.exit(0)", "sys.exit(0)"), ("sys.exit(3)", "sys.exit(3)"),
                                        ("raise KeyboardInterrupt", "KeyboardInterrupt")]):
        d = tmp_path / f"m{n}"
        write_script(d, "x001aaaa", None, 'op.create_table("t", sa.Column("id", sa.Integer))',
                     'op.drop_table("t")')
        bad = write_script(d, "x002aaaa", "x001aaaa", 'op.add_column("t", sa.Column("y", sa.Integer))\n' + stmt,
                           'op.drop_column("t", "y")', extra="import sys")
        line = _script_line(bad, stmt)
        p = dbrev("plan", "--migrations", str(d), "-r", "head", url=database_url)
        assert p.code == 0, p.stdout + p.stderr
        step = p.json["steps"][1]
        assert step["renderable"] is False
        assert f"{bad.name}:{line}" in step["render_error"] and words in step["render_error"], step
        a = dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url)
        assert a.code == 1, a.stdout + a.stderr
        doc = a.json
        assert doc["result"] == "rolled_back" and doc["current_revisions"] == []
        assert doc["error"]["step"] == "x002aaaa" and doc["error"]["location"] == f"{bad.name}:{line}"
        assert words in doc["error"]["message"], doc["error"]
        assert heads(database_url) == []


def test_a_script_without_upgrade_is_named(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "u001aaaa", None, 'op.create_table("t", sa.Column("id", sa.Integer))', 'op.drop_table("t")')
    bad = write_script(d, "u002aaaa", "u001aaaa")
    bad.write_text(bad.read_text().replace("def upgrade():", "def upgrade_():"))
    a = dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url)
    assert a.code in (1, 2), a.stdout + a.stderr
    text = a.json["error"]["message"]
    assert bad.name in text and "upgrade()" in text, a.json["error"]
    assert "u002aaaa_" not in text.replace(bad.name, ""), text  # no internal module name
    assert heads(database_url) == []


def test_os_exit_in_a_script_names_the_step_and_file(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "k001aaaa", None, 'op.create_table("t", sa.Column("id", sa.Integer))', 'op.drop_table("t")')
    bad = write_script(d, "k002aaaa", "k001aaaa",
                       'from alembic import context\nif not context.is_offline_mode():\n    os._exit(7)',
                       extra="import os")
    a = dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url)
    assert a.code == 1, a.stdout + a.stderr
    err = a.json["error"]
    assert "k002aaaa" in err["message"] and bad.name in err["message"], err
    assert err.get("step") == "k002aaaa"
    assert heads(database_url) == []


def test_offline_rendering_never_reaches_the_database(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "n001aaaa", None, 'op.create_table("marks", sa.Column("id", sa.Integer))',
                 'op.drop_table("marks")')
    write_script(d, "n002aaaa", "n001aaaa", '''
from alembic import context
assert context.config.get_main_option("sqlalchemy.url") is None or not context.is_offline_mode()
n = op.get_bind().execute(sa.text("SELECT count(*) FROM marks")).scalar()
op.execute(f"INSERT INTO marks VALUES ({n})")
''')
    assert dbrev("apply", "--migrations", str(d), "-r", "n001aaaa", url=database_url).code == 0
    q(database_url, "INSERT INTO marks VALUES (5)")
    p = dbrev("plan", "--migrations", str(d), "-r", "head", url=database_url)
    assert p.code == 0, p.stdout + p.stderr
    step = p.json["steps"][0]
    assert step["renderable"] is False and "cannot render offline" in step["render_error"], step
    assert q(database_url, "SELECT id FROM marks") == [(5,)]
    # online, the same script reads and writes the database
    a = dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url)
    assert a.code == 0, a.stdout + a.stderr
    assert sorted(q(database_url, "SELECT id FROM marks")) == [(1,), (5,)]
