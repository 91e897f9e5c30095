"""The CLI's other verbs, bad inputs, secrets, and the project's own env.py."""

from __future__ import annotations

import textwrap

import pytest

from dbhelp import heads, q
from clihelp import dbrev
from dbrev.pg.ephemeral import PostgresServer, create_database
from scriptgen import linear_history, write_script

PASSWORD = "Sup3r-S3cret-pw%/@x"


@pytest.fixture(scope="module")
def secret_server():
    """A server that demands a password (scram-sha-256)."""
    s = PostgresServer(password=PASSWORD).start()
    yield s
    s.cleanup()


def _url(server, password=PASSWORD, db="postgres", port=None):
    from urllib.parse import quote

    return f"postgresql+psycopg://postgres:{quote(password, safe='')}@127.0.0.1:{port or server.port}/{db}"


def _no_secret(*texts):
    from urllib.parse import quote

    for t in texts:
        assert PASSWORD not in t
        assert quote(PASSWORD, safe="") not in t
        assert "Sup3r-S3cret" not in t


def test_no_password_in_any_output(secret_server, tmp_path):
    dbname = create_database(_url(secret_server)).rsplit("/", 1)[1]
    url = _url(secret_server, db=dbname)
    d = tmp_path / "m"
    linear_history(d, 2)
    write_script(d, "r003aaaa", "r002aaaa", 'op.execute("SELECT 1/0")', "pass")
    runs = [
        dbrev("apply", "--migrations", str(d), "-r", "r002aaaa", "--log-level", "debug", url=url),
        dbrev("apply", "--migrations", str(d), "-r", "head", "--log-level", "debug", url=url),  # fails, rolls back
        dbrev("apply", "--migrations", str(d), "-r", "head", "--log-level", "debug", url=url, json_out=False),
        dbrev("plan", "--migrations", str(d), "-r", "head", "--log-level", "debug", url=url),
        dbrev("current", "--migrations", str(d), "--log-level", "debug", url=url),
        dbrev("verify", "--log-level", "debug", url=url),
        dbrev("history", "--migrations", str(d), "--runs", "5", url=url),
    ]
    assert [r.code for r in runs] == [0, 1, 1, 0, 0, 0, 0]
    for r in runs:
        _no_secret(r.stdout, r.stderr)
    assert runs[4].json["database"].startswith("postgresql+psycopg://postgres:***@")


def test_wrong_password_is_bad_input_without_the_password(secret_server, tmp_path):
    d = tmp_path / "m"
    linear_history(d, 1)
    wrong = "Wr0ng-Sup3r-S3cret"
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--log-level", "debug", url=_url(secret_server, wrong))
    assert r.code == 2
    assert r.json["error"]["reason"] == "DatabaseAuthFailed"
    assert "password" in r.json["error"]["hint"]
    assert wrong not in r.stdout + r.stderr
    r = dbrev("current", url=_url(secret_server, wrong), json_out=False)
    assert r.code == 2 and "cannot log in" in r.stderr and wrong not in r.stdout + r.stderr


def test_unreachable_database_retries_then_reports_unavailable(tmp_path):
    from dbrev.pg.ephemeral import free_port

    port = free_port()
    url = f"postgresql+psycopg://app:{PASSWORD.replace('%', '%25').replace('/', '%2F').replace('@', '%40')}" \
          f"@127.0.0.1:{port}/shop"
    r = dbrev("current", "--connect-timeout", "2", "--log-level", "info", url=url)
    assert r.code == 5
    assert r.json["error"]["reason"] == "DatabaseUnavailable"
    assert "gave up after" in r.json["error"]["message"]
    assert any(rec.get("message") == "Database not reachable yet; retrying" for rec in r.logs)
    _no_secret(r.stdout, r.stderr)


def test_missing_database_and_bad_urls(pg_admin_url, tmp_path):
    base = pg_admin_url.rsplit("/", 1)[0]
    r = dbrev("current", url=base + "/no_such_db_here")
    assert r.code == 2 and r.json["error"]["reason"] == "DatabaseNotFound"
    r = dbrev("current", url="mysql://u:p@h/db")
    assert r.code == 2 and "PostgreSQL only" in r.json["error"]["message"]
    r = dbrev("current", url="not a url at all")
    assert r.code == 2 and r.json["error"]["reason"] == "InvalidDatabaseURL"
    r = dbrev("current")
    assert r.code == 2 and "DBREV_DATABASE_URL" in r.json["error"]["hint"]


@pytest.mark.parametrize("case", ["syntax", "import", "duplicate", "chain", "no_revision", "cycle"])
def test_broken_scripts_are_reported_with_file_and_line(database_url, tmp_path, case):
    d = tmp_path / "m"
    linear_history(d, 2)
    if case == "syntax":
        p = write_script(d, "b003aaaa", "r002aaaa", "op.execute('x'", name="b003_syntax.py")
        line = p.read_text().splitlines().index("    op.execute('x'") + 1
        expect = (f"b003_syntax.py:{line}:", "syntax error", "never closed")
    elif case == "import":
        write_script(d, "b003aaaa", "r002aaaa", extra="import definitely_not_installed_xyz", name="b003_imp.py")
        expect = ("b003_imp.py:9", "definitely_not_installed_xyz")
    elif case == "duplicate":
        write_script(d, "r002aaaa", "r001aaaa", name="zz_dup.py")
        expect = ("zz_dup.py:5", "defined more than once")
    elif case == "chain":
        write_script(d, "b003aaaa", "nonexistent01", name="b003_chain.py")
        expect = ("b003_chain.py:6", "nonexistent01")
    elif case == "no_revision":
        (d / "helpers.py").write_text("X = 1\n")
        expect = ("helpers.py:1", "revision")
    else:
        write_script(d, "c1aaaaaa", "c2aaaaaa", name="c1.py")
        write_script(d, "c2aaaaaa", "c1aaaaaa", name="c2.py")
        expect = ("cycle",)
    for cmd in (["apply", "-r", "head"], ["plan", "-r", "head"], ["history"]):
        r = dbrev(*cmd, "--migrations", str(d), url=database_url)
        assert r.code == 2, (cmd, r.stdout, r.stderr)
        err = r.json["error"]
        assert err["reason"] == "InvalidScripts"
        for e in expect:
            assert e in err["message"], err
    assert q(database_url, "SELECT to_regclass('alembic_version')")[0][0] is None


def test_history_and_current_text(database_url, examples_dir):
    assert dbrev("apply", "--migrations", str(examples_dir), "-r", "e5f6a7", url=database_url).code == 0
    r = dbrev("history", "--migrations", str(examples_dir), "--runs", "3", url=database_url, json_out=False)
    assert r.code == 0
    lines = r.stdout.splitlines()
    assert lines[0].startswith("0a1b2c3d4e5f -> f1a2b3c4d5e6 (head)")
    assert any("e5f6a7b8c9d0 (current, merge)" in ln for ln in lines)
    assert any("b7c8d9e0f1a2 (branchpoint)" in ln for ln in lines)
    assert any(ln.startswith("run 1:") and "applied" in ln for ln in lines)
    h = dbrev("history", "--migrations", str(examples_dir), url=database_url).json
    applied = {e["revision"]: e["applied"] for e in h["revisions"]}
    assert applied["c3d4e5f6a7b8"] and not applied["f1a2b3c4d5e6"]
    c = dbrev("current", "--migrations", str(examples_dir), url=database_url)
    assert c.json["pending"] == ["0a1b2c3d4e5f", "f1a2b3c4d5e6"]


def test_verify_on_demand_and_drift(database_url, examples_dir):
    assert dbrev("apply", "--migrations", str(examples_dir), "-r", "head", url=database_url).code == 0
    r = dbrev("verify", "--migrations", str(examples_dir), "-r", "head", url=database_url)
    assert r.code == 0 and r.json["passed"] and r.json["fingerprint"].startswith("sha256:")
    # someone changes the schema by hand
    q(database_url, "ALTER TABLE customers ADD COLUMN loyalty_points int")
    r = dbrev("verify", "--migrations", str(examples_dir), url=database_url)
    drift = [f for f in r.json["findings"] if f["check"] == "drift"]
    assert drift and "loyalty_points" in drift[0]["message"]
    r = dbrev("verify", "--migrations", str(examples_dir), "--accept-drift", url=database_url)
    r = dbrev("verify", "--migrations", str(examples_dir), url=database_url)
    assert not [f for f in r.json["findings"] if f["check"] == "drift"]
    r = dbrev("verify", "--migrations", str(examples_dir), "-r", "b7c8d9e0f1a2", url=database_url)
    assert r.code == 1 and any(f["check"] == "version" for f in r.json["findings"])


def test_returning_to_a_revision_compares_its_fingerprint(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "f001aaaa", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("t")')
    # a sloppy downgrade: forgets to drop the index it created
    write_script(d, "f002aaaa", "f001aaaa", 'op.add_column("t", sa.Column("x", sa.Integer))\n'
                 'op.create_index("ix_t_x2", "t", ["id"])', 'op.drop_column("t", "x")')
    assert dbrev("apply", "--migrations", str(d), "-r", "f001aaaa", url=database_url).code == 0
    assert dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url).code == 0
    r = dbrev("apply", "--migrations", str(d), "-r", "f001aaaa", "--allow-downgrade", "--allow-data-loss",
              url=database_url)
    assert r.code == 0
    drift = [f for f in r.json["integrity"]["findings"] if f["check"] == "drift"]
    assert drift and "ix_t_x2" in drift[0]["message"] and drift[0]["severity"] == "warning"


ENV_PY = textwrap.dedent('''
    from alembic import context
    from sqlalchemy import engine_from_config, pool, text

    config = context.config

    def run_migrations_online():
        connection = config.attributes.get("connection")
        if connection is None:
            engine = engine_from_config(config.get_section(config.config_ini_section, {}),
                                        prefix="sqlalchemy.", poolclass=pool.NullPool)
            with engine.connect() as connection:
                _run(connection)
        else:
            _run(connection)

    def _run(connection):
        connection.execute(text("SET search_path TO app, public"))
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()

    run_migrations_online()
''')


def test_project_env_py_mode(database_url, tmp_path):
    loc = tmp_path / "alembic"
    (loc / "versions").mkdir(parents=True)
    (loc / "env.py").write_text(ENV_PY)
    q(database_url, "CREATE SCHEMA app")
    write_script(loc / "versions", "e001aaaa", None,
                 'op.create_table("widgets", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("widgets")')
    write_script(loc / "versions", "e002aaaa", "e001aaaa", 'op.execute("SELECT 1/0")', "pass")
    r = dbrev("apply", "--migrations", str(loc), "-r", "e001aaaa", "--env-py", url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    # env.py's search_path put the table in schema app: proof env.py ran, on dbrev's connection
    assert q(database_url, "SELECT to_regclass('app.widgets')")[0][0] == "app.widgets"
    assert not r.json["warnings"]
    r = dbrev("apply", "--migrations", str(loc), "-r", "head", "--env-py", url=database_url)
    assert r.code == 1 and r.json["result"] == "rolled_back" and r.json["rollback"]["method"] == "transaction"
    assert q(database_url, "SELECT version_num FROM app.alembic_version")[0][0] == "e001aaaa"
    # the built-in environment (--builtin-env) ignores env.py
    r = dbrev("apply", "--migrations", str(loc), "-r", "base", "--allow-downgrade", "--allow-data-loss",
              "--version-table-schema", "app", "--builtin-env", url=database_url)
    # widgets is in schema app; without env.py's search_path the downgrade cannot see it
    assert r.code == 1 and r.json["result"] == "rolled_back"
    assert "widgets" in r.json["error"]["message"]


# -- 15.8: passwords with raw reserved characters ------------------------------------------------

@pytest.mark.parametrize("raw", ["Pa@ssWordXy", "p@ss:w/rd%#x9Q"])
def test_raw_reserved_characters_in_a_password_are_read_as_meant(secret_server, tmp_path, raw):
    role = "raw_" + str(abs(hash(raw)) % 10000)
    q(_url(secret_server), f"DROP ROLE IF EXISTS {role}")
    q(_url(secret_server), f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{raw}'")
    dbname = create_database(_url(secret_server)).rsplit("/", 1)[1]
    url = f"postgresql+psycopg://{role}:{raw}@127.0.0.1:{secret_server.port}/{dbname}"  # not URL-encoded
    d = tmp_path / "m"
    write_script(d, "w001aaaa", None, f'print("connected with {raw}")\n'
                 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))', 'op.drop_table("t")')
    r = dbrev("apply", "--migrations", str(d), "-r", "head", url=url)
    assert r.code == 0, r.stdout + r.stderr
    c = dbrev("current", url=url)
    assert c.code == 0 and c.json["database"] == f"postgresql+psycopg://{role}:***@127.0.0.1:{secret_server.port}/{dbname}"
    wrong = dbrev("current", url=url.replace(raw, raw[:-1] + "Z"), json_out=True)
    assert wrong.code == 2 and wrong.json["error"]["reason"] == "DatabaseAuthFailed"
    for out in (r.stdout + r.stderr, c.stdout + c.stderr, wrong.stdout + wrong.stderr):
        for fragment in (raw, raw[1:], raw[3:], raw.split("@", 1)[1], raw[:-1] + "Z"):
            assert fragment not in out, fragment


def test_an_ambiguous_raw_password_is_refused_with_a_hint(tmp_path):
    r = dbrev("current", url="postgresql+psycopg://u:a@b@c@127.0.0.1/db?application_name=x@y")
    assert r.code == 2 and r.json["error"]["reason"] == "InvalidDatabaseURL"
    assert "URL-encode" in r.json["error"]["hint"]
    assert "a@b" not in r.stdout + r.stderr


def test_a_two_character_password_is_masked(secret_server, tmp_path):
    q(_url(secret_server), "DROP ROLE IF EXISTS shorty")
    q(_url(secret_server), "CREATE ROLE shorty LOGIN SUPERUSER PASSWORD 'Qz'")
    dbname = create_database(_url(secret_server)).rsplit("/", 1)[1]
    url = f"postgresql+psycopg://shorty:Qz@127.0.0.1:{secret_server.port}/{dbname}"
    d = tmp_path / "m"
    write_script(d, "q001aaaa", None, 'print("the password: Qz")\nop.execute("SELECT 1")', "pass")
    r = dbrev("apply", "--migrations", str(d), "-r", "head", url=url)
    assert r.code == 0, r.stdout + r.stderr
    assert "the password: ***" in r.stderr
    assert "Qz" not in r.stdout + r.stderr


# -- 15.12: bad input is exit 2, and a JSON document under --json --------------------------------

def test_bad_flags_are_bad_input(database_url, tmp_path):
    d = tmp_path / "m"
    linear_history(d, 1)
    for args in (["--timeout", "0"], ["--timeout", "-5"], ["--version-table-schema", ""], ["--version-table", ""],
                 ["--version-table", "v" * 64], ["--lock-timeout", "0"], ["--state-schema", " "],
                 ["--state-schema", "pg_foo"], ["--version-table-schema", "pg_catalog"], ["--version-table", "a\nb"]):
        r = dbrev("apply", "--migrations", str(d), "-r", "head", *args, url=database_url)
        assert r.code == 2, (args, r.stdout, r.stderr)
        assert r.json["result"] == "error" and r.json["error"]["exit_code"] == 2, args
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--no-such-flag", url=database_url)
    assert r.code == 2 and "--no-such-flag" in r.json["error"]["message"]
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--timeout", "0", url=database_url, json_out=False)
    assert r.code == 2 and "positive" in r.stderr
    assert q(database_url, "SELECT to_regclass('alembic_version')")[0][0] is None


def test_bad_sslmode_is_bad_input(pg_admin_url):
    r = dbrev("current", "--connect-timeout", "3", url=pg_admin_url + "?sslmode=bogus")
    assert r.code == 2, r.stdout + r.stderr
    assert r.json["error"]["reason"] == "InvalidDatabaseURL" and "sslmode" in r.json["error"]["message"]


def test_empty_migrations_folder_warns(database_url, tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    r = dbrev("apply", "--migrations", str(d), "-r", "heads", url=database_url)
    assert r.code == 0
    assert any("holds no version scripts" in w for w in r.json["warnings"])
    assert any(rec.get("message") == "Empty migrations folder" for rec in r.logs)


# -- 15.14: the run's full record by default; dbrev show; foreign-key hints ------------------------

def test_default_log_keeps_the_runbook_record(database_url, tmp_path):
    d = tmp_path / "m"
    linear_history(d, 1)
    write_script(d, "r002aaaa", "r001aaaa", 'op.create_table("x", sa.Column("id", sa.Integer))\n'
                 'op.execute("SELECT 1/0")', 'op.drop_table("x")')
    r = dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url)
    assert r.code == 1 and r.json["result"] == "rolled_back"
    statuses = [rec.get("status") for rec in r.logs if rec.get("message", "").startswith("Migration state")]
    assert "started" in statuses
    events = [rec.get("event") for rec in r.logs]
    assert "rollback_triggered" in events and "rollback_executed" in events
    log = tmp_path / "run.log"
    r = dbrev("apply", "--migrations", str(d), "-r", "r001aaaa", "--log-file", str(log), "--log-format", "text",
              url=database_url)
    assert r.code == 0 and r.stderr == ""
    assert "info: Migration state transition: started" in log.read_text()


def test_show_prints_a_revision_with_its_sql_and_classification(database_url, tmp_path):
    d = tmp_path / "m"
    linear_history(d, 2)
    assert dbrev("apply", "--migrations", str(d), "-r", "r001aaaa", url=database_url).code == 0
    r = dbrev("show", "r002", "--migrations", str(d), url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    doc = r.json
    assert doc["revision"] == "r002aaaa" and doc["down_revisions"] == ["r001aaaa"] and doc["doc"] == "create t2"
    assert doc["file"].endswith(".py") and doc["stored_in_database"] is False and doc["applied"] is False
    assert "CREATE TABLE t2" in doc["upgrade"]["sql"] and not doc["upgrade"]["destructive"]
    assert "DROP TABLE t2" in doc["downgrade"]["sql"] and doc["downgrade"]["destructive"]
    assert dbrev("show", "r001aaaa", "--migrations", str(d), url=database_url).json["stored_in_database"] is True
    t = dbrev("show", "r002aaaa", "--migrations", str(d), json_out=False)
    assert t.code == 0 and "parents: r001aaaa" in t.stdout and "DROP TABLE t2" in t.stdout
    assert "! drop_table t2" in t.stdout or "DESTRUCTIVE" in t.stdout


def test_a_downgrade_blocked_by_a_foreign_key_names_it(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "k001aaaa", None, 'op.create_table("parent", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.execute("DROP TABLE parent")')
    write_script(d, "k002aaaa", "k001aaaa", "pass", "pass")
    assert dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url).code == 0
    q(database_url, "CREATE TABLE child (id int, parent_id int CONSTRAINT child_parent_fk REFERENCES parent(id))")
    r = dbrev("apply", "--migrations", str(d), "-r", "base", "--allow-downgrade", "--allow-data-loss",
              url=database_url)
    assert r.code == 1 and r.json["result"] == "rolled_back"
    hint = r.json["error"]["hint"]
    assert "child_parent_fk" in hint and "child" in hint


# -- 9.4: the driver the URL names ----------------------------------------------------------------

def test_the_url_names_the_driver(database_url, tmp_path):
    pytest.importorskip("psycopg2")
    d = tmp_path / "m"
    write_script(d, "d001aaaa", None, '''
        op.create_table("n", sa.Column("v", sa.Integer))
        if not op.get_context().as_sql:
            # psycopg2 sends '0' untyped and PostgreSQL casts it; on psycopg 3 it is bound as ::VARCHAR
            n = sa.table("n", sa.column("v"))
            op.get_bind().execute(n.insert().values(v=sa.literal("0")))
            print("driver", op.get_bind().dialect.driver)
    ''', 'op.drop_table("n")')
    url = database_url.replace("postgresql+psycopg://", "postgresql+psycopg2://")
    r = dbrev("apply", "--migrations", str(d), "-r", "head", url=url)
    assert r.code == 0, r.stdout + r.stderr
    assert "driver psycopg2" in r.stderr
    assert q(database_url, "SELECT v FROM n")[0][0] == 0
    bare = database_url.replace("postgresql+psycopg://", "postgresql://")
    r = dbrev("apply", "--migrations", str(d), "-r", "base", "--allow-downgrade", "--allow-data-loss", url=bare)
    assert r.code == 0, r.stdout + r.stderr
    r = dbrev("current", url=database_url.replace("postgresql+psycopg://", "postgresql+pg8000://"))
    assert r.code == 0 and any("psycopg 3 instead" in rec.get("message", "") for rec in r.logs)


def test_asyncpg_urls_run_scripts_on_asyncpg(database_url, tmp_path):
    pytest.importorskip("asyncpg")
    pytest.importorskip("greenlet")
    d = tmp_path / "m"
    write_script(d, "a001aaaa", None, '''
        op.create_table("n", sa.Column("v", sa.Integer))
        if not op.get_context().as_sql:
            print("driver", op.get_bind().dialect.driver)
            op.get_bind().execute(sa.text("INSERT INTO n (v) VALUES (1)"))
    ''', 'op.drop_table("n")')
    write_script(d, "a002aaaa", "a001aaaa", '''
        with op.get_context().autocommit_block():
            op.create_index("ix_n_v", "n", ["v"], postgresql_concurrently=True)
    ''', '''
        with op.get_context().autocommit_block():
            op.drop_index("ix_n_v", "n", postgresql_concurrently=True)
    ''')
    url = database_url.replace("postgresql+psycopg://", "postgresql+asyncpg://")
    r = dbrev("apply", "--migrations", str(d), "-r", "head", url=url)
    assert r.code == 0, r.stdout + r.stderr
    assert "driver asyncpg" in r.stderr and r.json["transaction"] == "per-step"
    assert q(database_url, "SELECT v FROM n")[0][0] == 1
    r = dbrev("apply", "--migrations", str(d), "-r", "base", "--allow-downgrade", "--allow-data-loss", url=url)
    assert r.code == 0, r.stdout + r.stderr
    assert heads(database_url) == []
