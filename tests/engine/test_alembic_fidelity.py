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
    from dbrev.pg.ephemeral import create_database

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


# -- the project's env.py ---------------------------------------------------------------------------

# Alembic's own "generic" template, with a naming convention: it opens its own connection from
# sqlalchemy.url and never looks at config.attributes.
TEMPLATE_ENV_PY = textwrap.dedent('''
    from logging.config import fileConfig

    from alembic import context
    from sqlalchemy import MetaData, engine_from_config, pool

    config = context.config
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)

    target_metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s"})

    def run_migrations_offline():
        url = config.get_main_option("sqlalchemy.url")
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True,
                          dialect_opts={"paramstyle": "named"})
        with context.begin_transaction():
            context.run_migrations()

    def run_migrations_online():
        connectable = engine_from_config(config.get_section(config.config_ini_section, {}),
                                         prefix="sqlalchemy.", poolclass=pool.NullPool)
        with connectable.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata)
            with context.begin_transaction():
                context.run_migrations()

    if context.is_offline_mode():
        run_migrations_offline()
    else:
        run_migrations_online()
''')

# The "shared connection" pattern of code that calls Alembic from a transaction of its own: end the
# caller's transaction, run Alembic in a fresh one, commit.
COMMITTING_ENV_PY = textwrap.dedent('''
    from alembic import context
    from sqlalchemy import MetaData

    config = context.config
    target_metadata = MetaData(naming_convention={"uq": "uq_%(table_name)s_%(column_0_name)s",
                                                  "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"})

    connection = config.attributes["connection"]
    if connection.in_transaction():
        connection.commit()
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
''')


ENV_FLAG: tuple[str, ...] = ()  # the default: a script location runs through its env.py


def _project(tmp_path: Path, env_py: str, name: str = "alembic") -> Path:
    loc = tmp_path / name
    v = loc / "versions"
    v.mkdir(parents=True)
    (loc / "env.py").write_text(env_py)
    write_script(v, "p001aaaa", None,
                 'op.create_table("owners", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("code", sa.Text, nullable=False), sa.UniqueConstraint("code"))\n'
                 'op.create_table("pets", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("owner_id", sa.Integer, sa.ForeignKey("owners.id")))\n'
                 'op.execute("INSERT INTO owners (code) VALUES (\'a\'), (\'b\')")\n'
                 'op.execute("INSERT INTO pets (owner_id) SELECT id FROM owners")',
                 'op.drop_table("pets")\nop.drop_table("owners")')
    # drops the constraints by the names the project's naming convention gave them
    write_script(v, "p002aaaa", "p001aaaa",
                 'op.drop_constraint("uq_owners_code", "owners", type_="unique")\n'
                 'op.drop_constraint("fk_pets_owner_id_owners", "pets", type_="foreignkey")\n'
                 'op.add_column("owners", sa.Column("note", sa.Text))',
                 'op.drop_column("owners", "note")\n'
                 'op.create_foreign_key(None, "pets", "owners", ["owner_id"], ["id"])\n'
                 'op.create_unique_constraint(None, "owners", ["code"])')
    return loc


def _schema(url: str) -> list[str]:
    """The catalog facts dbrev fingerprints (constraint and index names included), dbrev's schemas aside."""
    from dbrev.pg import integrity

    eng = sa.create_engine(url)
    try:
        with eng.connect() as c:
            return integrity.fingerprint_facts(c, exclude_schemas=("dbrev", "dbrev_archive"))
    finally:
        eng.dispose()


def _constraints(url: str) -> list[str]:
    return sorted(r[0] for r in q(url, "SELECT conname FROM pg_constraint c JOIN pg_namespace n "
                                       "ON n.oid = c.connamespace WHERE nspname = 'public'"))


def test_a_script_location_runs_through_its_env_py_by_default(database_url, pg_admin_url, tmp_path):
    loc = _project(tmp_path, TEMPLATE_ENV_PY)
    other = second_database(pg_admin_url)
    ref = plain_alembic(loc, other, "upgrade", "p001aaaa")
    assert ref.returncode == 0, ref.stderr
    r = dbrev("apply", "--migrations", str(loc), "-r", "p001aaaa", "--lock-timeout", "3", *ENV_FLAG, url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    assert _constraints(database_url) == _constraints(other)
    assert "uq_owners_code" in _constraints(database_url)
    assert any("env.py" in w for w in r.json["warnings"])  # it said which guarantee its env.py costs
    ref = plain_alembic(loc, other, "upgrade", "head")
    assert ref.returncode == 0, ref.stderr
    r = dbrev("apply", "--migrations", str(loc), "-r", "head", "--lock-timeout", "3", *ENV_FLAG, url=database_url)
    assert r.code == 0 and r.json["result"] == "applied", r.stdout + r.stderr
    assert heads(database_url) == ["p002aaaa"] and _constraints(database_url) == _constraints(other)
    assert _schema(database_url) == _schema(other)
    # and back: the downgrade re-creates the constraints under the convention's names
    ref = plain_alembic(loc, other, "downgrade", "p001aaaa")
    assert ref.returncode == 0, ref.stderr
    r = dbrev("apply", "--migrations", str(loc), "-r", "p001aaaa", "--allow-downgrade", "--allow-data-loss",
              "--lock-timeout", "3", *ENV_FLAG, url=database_url)
    assert r.code == 0 and r.json["result"] == "applied", r.stdout + r.stderr
    assert _constraints(database_url) == _constraints(other)
    assert _schema(database_url) == _schema(other)
    assert q(database_url, "SELECT status FROM dbrev.runs ORDER BY id DESC LIMIT 1") == [("applied",)]


def test_builtin_env_forces_dbrevs_environment(database_url, tmp_path):
    loc = _project(tmp_path, TEMPLATE_ENV_PY)
    p = dbrev("plan", "--migrations", str(loc), "-r", "p001aaaa", url=database_url)
    assert p.code == 0 and any("through env.py" in w for w in p.json["warnings"]), p.stdout
    r = dbrev("apply", "--migrations", str(loc), "-r", "p001aaaa", "--builtin-env", url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    assert "owners_code_key" in _constraints(database_url)  # PostgreSQL's own name: no convention
    assert not any("env.py" in w for w in r.json["warnings"])
    h = dbrev("apply", "--help", json_out=False)
    assert "--builtin-env" in h.stdout


def test_env_py_that_commits_the_callers_transaction(database_url, pg_admin_url, tmp_path):
    loc = _project(tmp_path, COMMITTING_ENV_PY)
    r = dbrev("apply", "--migrations", str(loc), "-r", "head", *ENV_FLAG, url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    doc = r.json
    assert doc["result"] == "applied" and doc["current_revisions"] == ["p002aaaa"]
    assert doc["integrity"]["passed"] is True
    assert any("env.py" in w and "transaction" in w for w in doc["warnings"]), doc["warnings"]
    assert heads(database_url) == ["p002aaaa"]
    runs = q(database_url, "SELECT status FROM dbrev.runs ORDER BY id")
    assert runs[-1] == ("applied",), runs
    # a failing step after such an env.py committed: dbrev still returns to the start
    write_script(loc / "versions", "p003aaaa", "p002aaaa", 'op.add_column("owners", sa.Column("z", sa.Integer))\n'
                 'op.execute("SELECT 1/0")', 'op.drop_column("owners", "z")')
    r = dbrev("apply", "--migrations", str(loc), "-r", "head", *ENV_FLAG, url=database_url)
    assert r.code == 1, r.stdout + r.stderr
    assert r.json["result"] == "rolled_back" and r.json["current_revisions"] == ["p002aaaa"]
    assert heads(database_url) == ["p002aaaa"]
    assert q(database_url, "SELECT status FROM dbrev.runs ORDER BY id DESC LIMIT 1") == [("rolled_back",)]


def test_configmap_scripts_with_an_env_py_run_through_it(database_url, tmp_path):
    from dbrev.engine.scripts import load_folder, materialize

    loc = _project(tmp_path, TEMPLATE_ENV_PY)
    files = {p.name: p.read_text() for p in (loc / "versions").glob("*.py")}
    files["env.py"] = (loc / "env.py").read_text()
    folder = materialize(files, tmp_path / "cm")
    assert (folder / "env.py").is_file() and (folder / "versions").is_dir()
    ss = load_folder(folder)
    assert ss.env_py == folder / "env.py" and set(ss.infos) == {"p001aaaa", "p002aaaa"}
    r = dbrev("apply", "--migrations", str(folder), "-r", "head", url=database_url)
    assert r.code == 0 and r.json["result"] == "applied", r.stdout + r.stderr
    assert "pk_owners" in _constraints(database_url)  # the env.py's naming convention
    # without env.py the folder stays flat and runs built-in
    del files["env.py"]
    flat = materialize(files, tmp_path / "cm")
    assert not (flat / "versions").exists() and load_folder(flat).env_py is None


# ends the caller's transaction and begins one of its own that it leaves to the caller to commit
# (what code running Alembic inside `engine.begin()` expects)
OWN_TRANSACTION_ENV_PY = textwrap.dedent('''
    from alembic import context

    connection = context.config.attributes["connection"]
    connection.commit()
    connection.begin()
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
''')


def test_env_py_that_begins_its_own_transaction_keeps_the_run_atomic(database_url, tmp_path):
    loc = _project(tmp_path, OWN_TRANSACTION_ENV_PY)
    r = dbrev("apply", "--migrations", str(loc), "-r", "p001aaaa", url=database_url)
    assert r.code == 0 and r.json["result"] == "applied", r.stdout + r.stderr
    assert heads(database_url) == ["p001aaaa"]
    assert any("began its own" in w for w in r.json["warnings"]), r.json["warnings"]
    # a failed verification is still a ROLLBACK of the whole run (an explicit id leaves the sequence behind)
    write_script(loc / "versions", "p003aaaa", "p001aaaa", 'op.add_column("owners", sa.Column("z", sa.Integer))\n'
                 'op.execute("INSERT INTO owners (id, code) VALUES (100, \'z\')")', 'op.drop_column("owners", "z")',
                 name="p003aaaa_import.py")
    (loc / "versions" / next(p.name for p in (loc / "versions").glob("p002*"))).unlink()
    r = dbrev("apply", "--migrations", str(loc), "-r", "head", url=database_url)
    doc = r.json
    assert r.code == 1 and doc["result"] == "rolled_back", r.stdout + r.stderr
    assert doc["rollback"]["method"] == "transaction"
    assert heads(database_url) == ["p001aaaa"] and q(database_url, "SELECT count(*) FROM owners") == [(2,)]
    assert "z" not in {c for (c,) in q(database_url, "SELECT column_name FROM information_schema.columns "
                                                     "WHERE table_name = 'owners'")}
    assert q(database_url, "SELECT status FROM dbrev.runs ORDER BY id DESC LIMIT 1") == [("rolled_back",)]


def test_env_py_with_its_own_connection_fails_cleanly(database_url, tmp_path):
    loc = _project(tmp_path, TEMPLATE_ENV_PY)
    assert dbrev("apply", "--migrations", str(loc), "-r", "head", url=database_url).code == 0
    write_script(loc / "versions", "p003aaaa", "p002aaaa", 'op.add_column("owners", sa.Column("z", sa.Integer))\n'
                 'op.execute("SELECT 1/0")', 'op.drop_column("owners", "z")')
    r = dbrev("apply", "--migrations", str(loc), "-r", "head", "--lock-timeout", "3", url=database_url)
    doc = r.json
    assert r.code == 1 and doc["result"] == "rolled_back", r.stdout + r.stderr
    assert doc["error"]["step"] == "p003aaaa" and "division by zero" in doc["error"]["message"]
    assert doc["rollback"]["success"] is True and heads(database_url) == ["p002aaaa"]
    cols = {c for (c,) in q(database_url, "SELECT column_name FROM information_schema.columns "
                                          "WHERE table_name = 'owners'")}
    assert "z" not in cols
    assert q(database_url, "SELECT status FROM dbrev.runs ORDER BY id DESC LIMIT 1") == [("rolled_back",)]


def test_plan_refuses_what_apply_refuses_when_a_script_differs_from_its_stored_copy(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "s001aaaa", None, 'op.create_table("t", sa.Column("id", sa.Integer))', 'op.drop_table("t")')
    changed = write_script(d, "s002aaaa", "s001aaaa", 'op.add_column("t", sa.Column("x", sa.Integer))',
                           'op.drop_column("t", "x")')
    assert dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url).code == 0
    changed.write_text(changed.read_text().replace('op.drop_column("t", "x")', 'op.execute("SELECT 1")'))
    a = dbrev("apply", "--migrations", str(d), "-r", "s001aaaa", "--allow-downgrade", "--allow-data-loss",
              url=database_url)
    assert a.code == 2 and a.json["error"]["error_type"] == "ScriptConflict", a.stdout + a.stderr
    p = dbrev("plan", "--migrations", str(d), "-r", "s001aaaa", url=database_url)
    assert p.code == 2 and p.json["error"]["error_type"] == "ScriptConflict", p.stdout + p.stderr
    assert p.json["error"]["message"] == a.json["error"]["message"]
    # an upgrade past the changed script is no conflict: plan warns, as apply does
    write_script(d, "s003aaaa", "s002aaaa", 'op.add_column("t", sa.Column("y", sa.Integer))',
                 'op.drop_column("t", "y")')
    p = dbrev("plan", "--migrations", str(d), "-r", "head", url=database_url)
    assert p.code == 0 and any("s002aaaa" in w and "stored" in w for w in p.json["warnings"]), p.stdout


# opens a second connection from the engine of the one dbrev shares
ENGINE_ENV_PY = textwrap.dedent('''
    from alembic import context
    from sqlalchemy import MetaData

    target_metadata = MetaData(naming_convention={"uq": "uq_%(table_name)s_%(column_0_name)s",
                                                  "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s"})
    shared = context.config.attributes["connection"]
    with shared.engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
''')


def test_env_py_connecting_from_the_shared_engine_does_not_deadlock_with_dbrevs_snapshot(database_url, tmp_path):
    loc = _project(tmp_path, ENGINE_ENV_PY)
    r = dbrev("apply", "--migrations", str(loc), "-r", "p001aaaa", url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    # the snapshot's orphan scan reads pets and owners; p002 alters both from env.py's own session
    r = dbrev("apply", "--migrations", str(loc), "-r", "head", "--lock-timeout", "3", url=database_url)
    assert r.code == 0 and r.json["result"] == "applied", r.stdout + r.stderr
    assert heads(database_url) == ["p002aaaa"]
    assert any("own database connection" in w for w in r.json["warnings"])
    assert q(database_url, "SELECT status FROM dbrev.runs ORDER BY id DESC LIMIT 1") == [("applied",)]


def test_an_env_py_that_cannot_import_its_application_says_so(database_url, tmp_path):
    loc = _project(tmp_path, "import shop_models_not_installed\n" + STOCK_ENV_PY)
    r = dbrev("apply", "--migrations", str(loc), "-r", "p001aaaa", url=database_url)
    assert r.code == 1, r.stdout + r.stderr
    msg = r.json["error"]["message"]
    assert "env.py" in msg and "shop_models_not_installed" in msg and "--builtin-env" in msg, msg
    assert heads(database_url) == []
    p = dbrev("plan", "--migrations", str(loc), "-r", "p001aaaa", url=database_url)
    assert p.code == 0 and any("through env.py" in w for w in p.json["warnings"]), p.stdout
    r = dbrev("apply", "--migrations", str(loc), "-r", "p001aaaa", "--builtin-env", url=database_url)
    assert r.code == 0, r.stdout + r.stderr


def test_env_pys_own_connection_gets_dbrevs_lock_timeout(database_url, tmp_path):
    import time

    loc = _project(tmp_path, TEMPLATE_ENV_PY)
    assert dbrev("apply", "--migrations", str(loc), "-r", "p001aaaa", url=database_url).code == 0
    eng = sa.create_engine(database_url)
    try:
        with eng.connect() as holder:
            holder.execute(sa.text("LOCK TABLE owners IN ACCESS SHARE MODE"))  # an application's long read
            t0 = time.monotonic()
            r = dbrev("apply", "--migrations", str(loc), "-r", "head", "--lock-timeout", "2", "--timeout", "60",
                      url=database_url)
            took = time.monotonic() - t0
            holder.rollback()
    finally:
        eng.dispose()
    assert took < 30, (took, r.stdout)
    doc = r.json
    assert r.code in (1, 4), r.stdout + r.stderr
    assert "lock timeout" in (doc.get("error") or {}).get("message", ""), doc
    assert doc.get("result") in ("rolled_back", "busy", "error")
    assert heads(database_url) == ["p001aaaa"]


# -- alembic.ini ------------------------------------------------------------------------------------

FILECONFIG_ENV_PY = textwrap.dedent('''
    import logging
    from logging.config import fileConfig

    from alembic import context

    config = context.config
    fileConfig(config.config_file_name)  # optuna's env.py and others do this unguarded
    logging.getLogger("alembic.env").warning("env.py logging works: %s", config.get_main_option("marker"))

    context.configure(connection=config.attributes["connection"])
    with context.begin_transaction():
        context.run_migrations()
''')

INI_LOGGING = ("[loggers]\nkeys = root,alembic\n\n[handlers]\nkeys = console\n\n[formatters]\nkeys = generic\n\n"
               "[logger_root]\nlevel = WARNING\nhandlers = console\n\n"
               "[logger_alembic]\nlevel = INFO\nhandlers =\nqualname = alembic\n\n"
               "[handler_console]\nclass = StreamHandler\nargs = (sys.stderr,)\nlevel = NOTSET\nformatter = generic\n\n"
               "[formatter_generic]\nformat = %(levelname)s [%(name)s] %(message)s\n")


def test_the_projects_alembic_ini_above_the_script_location_is_read_like_alembic_reads_it(database_url, tmp_path):
    # `alembic init alembic` layout: project/alembic.ini, project/alembic/env.py
    loc = tmp_path / "project" / "alembic"
    (loc / "versions").mkdir(parents=True)
    (loc / "env.py").write_text(FILECONFIG_ENV_PY)
    (tmp_path / "project" / "lib").mkdir()
    (tmp_path / "project" / "lib" / "ini_helper_mod.py").write_text('TABLE = "made_by_helper"\n')
    (tmp_path / "project" / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/somewhere_else\nprepend_sys_path = lib\nmarker = from-the-ini\n"
        "sqlalchemy.url = postgresql://nobody@127.0.0.1:1/not_this_one\n\n" + INI_LOGGING)
    write_script(loc / "versions", "i001aaaa", None,
                 'import ini_helper_mod\nfrom alembic import context\n'
                 'op.create_table(ini_helper_mod.TABLE + "_" + context.config.get_main_option("marker")'
                 '.replace("-", "_"), sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("made_by_helper_from_the_ini")')
    r = dbrev("apply", "--migrations", str(loc), "-r", "head", url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    assert r.json["result"] == "applied"  # stdout is only dbrev's document
    assert heads(database_url) == ["i001aaaa"]  # sqlalchemy.url of the ini is not used, script_location neither
    assert q(database_url, "SELECT to_regclass('made_by_helper_from_the_ini') IS NOT NULL")[0][0]
    assert "env.py logging works: from-the-ini" in r.stderr and "env.py logging works" not in r.stdout


def test_without_an_alembic_ini_env_py_gets_a_default_one_logging_to_stderr(database_url, tmp_path):
    loc = tmp_path / "alembic"
    (loc / "versions").mkdir(parents=True)
    (loc / "env.py").write_text(FILECONFIG_ENV_PY)
    write_script(loc / "versions", "i001aaaa", None,
                 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))', 'op.drop_table("t")')
    r = dbrev("apply", "--migrations", str(loc), "-r", "head", url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    assert r.json["result"] == "applied" and heads(database_url) == ["i001aaaa"]
    assert "env.py logging works: None" in r.stderr and "env.py logging works" not in r.stdout
