"""Nothing lost: the database keeps the scripts it applied, and destructive steps keep their data."""

from __future__ import annotations

import shutil
import subprocess

from dbhelp import heads, q
from clihelp import dbrev
from enginehelp import run_apply, run_plan
from dbrev.pg.ephemeral import PostgresServer, create_database, find_bindir
from scriptgen import write_script


def history(folder):
    write_script(folder, "s001aaaa", None,
                 'op.create_table("customers", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("name", sa.Text, nullable=False))', 'op.drop_table("customers")', doc="customers")
    write_script(folder, "s002aaaa", "s001aaaa",
                 'op.add_column("customers", sa.Column("phone", sa.Text))\n'
                 'op.create_table("notes", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("customer_id", sa.Integer), sa.Column("body", sa.Text))',
                 'op.drop_table("notes")\nop.drop_column("customers", "phone")', doc="phone and notes")
    write_script(folder, "s003aaaa", "s002aaaa",
                 'op.create_index("ix_notes_customer", "notes", ["customer_id"])',
                 'op.drop_index("ix_notes_customer", table_name="notes")', doc="index notes")


def populate(url):
    q(url, "INSERT INTO customers (name, phone) SELECT 'c' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE '+1-555-' || g "
           "END FROM generate_series(1, 300) g")
    q(url, "INSERT INTO notes (customer_id, body) SELECT 1 + g % 300, 'note ' || g || E' with \\'quotes\\' and ; "
           "semicolons' FROM generate_series(1, 700) g")


def test_archive_keeps_a_dropped_column_and_table_and_restores_them_row_by_row(database_url, tmp_path):
    d = tmp_path / "m"
    history(d)
    assert dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url).code == 0
    populate(database_url)
    phones = q(database_url, "SELECT id, phone FROM customers ORDER BY id")
    notes = q(database_url, "SELECT id, customer_id, body FROM notes ORDER BY id")

    plain = dbrev("apply", "--migrations", str(d), "-r", "s001aaaa", "--allow-downgrade", url=database_url)
    assert plain.code == 3 and plain.json["error"]["reason"] == "DataLossDenied"
    r = dbrev("apply", "--migrations", str(d), "-r", "s001aaaa", "--allow-downgrade", "--archive",
              url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    archived = {a["object"]: a for a in r.json["archived"]}
    assert archived["public.customers.phone"]["rows"] == 300
    assert archived["public.notes"]["rows"] == 700
    assert heads(database_url) == ["s001aaaa"]
    assert q(database_url, "SELECT to_regclass('notes')")[0][0] is None

    lst = dbrev("archive", "list", "--verify", url=database_url)
    assert lst.code == 0
    entries = lst.json["archives"]
    assert {(e["kind"], e["source_table"], e["source_column"]) for e in entries} == {
        ("drop_table", "notes", None), ("drop_column", "customers", "phone")}
    assert all(e["checksum_ok"] and e["checksum"].startswith("xor64:") for e in entries)
    assert all(e["revision"] == "s002aaaa" for e in entries)

    # restoring before the schema has the objects again is refused, and changes nothing
    early = dbrev("archive", "restore", "--revision", "s002aaaa", url=database_url)
    assert early.code == 2 and "does not exist at the current revision" in early.json["error"]["message"]

    assert dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url).code == 0
    assert q(database_url, "SELECT count(*) FROM notes")[0][0] == 0
    res = dbrev("archive", "restore", "--revision", "s002aaaa", url=database_url)
    assert res.code == 0, res.stdout + res.stderr
    by = {x["object"]: x for x in res.json["restored"]}
    assert by["public.notes"]["inserted"] == 700 and by["public.customers.phone"]["updated"] == 300
    assert q(database_url, "SELECT id, phone FROM customers ORDER BY id") == phones
    assert q(database_url, "SELECT id, customer_id, body FROM notes ORDER BY id") == notes
    # ids came back with the rows: the sequence moved past them, so the next insert works
    q(database_url, "INSERT INTO notes (customer_id, body) VALUES (1, 'new')")
    again = dbrev("archive", "restore", "--revision", "s002aaaa", url=database_url)
    assert again.code == 2 and "already restored" in again.json["error"]["message"]
    v = dbrev("verify", "--migrations", str(d), url=database_url)
    assert v.json["passed"], v.json


def test_archive_of_deleted_rows_keeps_only_what_the_delete_matches(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "x001aaaa", None, 'op.create_table("sessions", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("expired", sa.Boolean))', 'op.drop_table("sessions")')
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO sessions (expired) SELECT g % 4 = 0 FROM generate_series(1, 400) g")
    write_script(d, "x002aaaa", "x001aaaa", 'op.execute("DELETE FROM sessions WHERE expired")', "pass")
    r = run_apply(str(d), "head", url=database_url, data_loss="Archive")
    assert r.code == 0, r.stdout
    (a,) = r.json["archived"]
    assert a["kind"] == "delete_rows" and a["rows"] == 100
    assert q(database_url, "SELECT count(*) FROM sessions")[0][0] == 300
    # deletes the plan declared are not a verification failure
    assert r.json["integrity"]["passed"]


def test_prune_by_count_and_age(database_url, tmp_path):
    d = tmp_path / "m"
    history(d)
    assert run_apply(str(d), "head", url=database_url).code == 0
    populate(database_url)
    assert run_apply(str(d), "s001aaaa", url=database_url, downgrade="Allow", data_loss="Archive").code == 0
    dry = dbrev("archive", "prune", "--keep", "1", "--dry-run", url=database_url)
    assert len(dry.json["pruned"]) == 1 and len(dbrev("archive", "list", url=database_url).json["archives"]) == 2
    assert dbrev("archive", "prune", "--keep", "1", url=database_url).code == 0
    left = dbrev("archive", "list", url=database_url).json["archives"]
    assert len(left) == 1
    assert dbrev("archive", "prune", "--older-than", "30d", url=database_url).json["pruned"] == []
    bad = dbrev("archive", "prune", "--older-than", "soon", url=database_url)
    assert bad.code == 2


def test_downgrade_uses_the_scripts_the_database_keeps(database_url, tmp_path):
    full = tmp_path / "full"
    history(full)
    assert run_apply(str(full), "head", url=database_url).code == 0
    stored = q(database_url, "SELECT revision, sha256 FROM dbrev.scripts ORDER BY revision")
    assert [r[0] for r in stored] == ["s001aaaa", "s002aaaa", "s003aaaa"]
    # the GitOps revert removed the newer scripts
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(next(full.glob("s001aaaa_*.py")), old)
    p = run_plan(str(old), "s001aaaa", url=database_url)
    assert p.code == 0
    assert p.json["scripts_from_database"] == ["s003aaaa", "s002aaaa"]
    assert [s["script_origin"] for s in p.json["steps"]] == ["database", "database"]
    r = run_apply(str(old), "s001aaaa", url=database_url, downgrade="Allow", data_loss="Allow")
    assert r.code == 0, r.stdout + r.stderr
    assert heads(database_url) == ["s001aaaa"]
    h = dbrev("history", "--migrations", str(old), url=database_url, json_out=False)
    assert "stored in database only" in h.stdout


def test_a_changed_script_under_an_applied_id_is_a_conflict(database_url, tmp_path):
    d = tmp_path / "m"
    history(d)
    assert run_apply(str(d), "head", url=database_url).code == 0
    f = next(d.glob("s003aaaa_*.py"))
    f.write_text(f.read_text().replace('op.drop_index("ix_notes_customer", table_name="notes")',
                                       'op.execute("DROP TABLE notes CASCADE")'))
    r = run_apply(str(d), "s002aaaa", url=database_url, downgrade="Allow", data_loss="Allow")
    assert r.code == 2 and r.json["error"]["reason"] == "ScriptConflict"
    assert heads(database_url) == ["s003aaaa"]
    p = run_plan(str(d), "head", url=database_url)
    assert p.code == 0  # an upgrade does not use it
    # a tampered stored copy is not trusted
    q(database_url, "UPDATE dbrev.scripts SET source = source || '# tampered' WHERE revision = 's002aaaa'")
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(next(d.glob("s001aaaa_*.py")), old)
    shutil.copy(f, old)
    r = run_plan(str(old), "s001aaaa", url=database_url)
    assert r.code == 2  # s003's parent s002 now has no trustworthy script


def test_a_restored_dump_rolls_back_with_no_newer_scripts_on_disk(tmp_path, pg_admin_url):
    d = tmp_path / "m"
    history(d)
    src = create_database(pg_admin_url)
    assert run_apply(str(d), "head", url=src).code == 0
    populate(src)
    bindir = find_bindir()
    dump = tmp_path / "shop.dump"
    from sqlalchemy.engine import make_url

    u = make_url(src)
    subprocess.run([str(bindir / "pg_dump"), "-Fc", "-h", u.host, "-p", str(u.port), "-U", u.username, "-f",
                    str(dump), u.database], check=True)
    other = PostgresServer().start()  # another server: the database was copied elsewhere
    try:
        dst = create_database(other.url())
        v = make_url(dst)
        subprocess.run([str(bindir / "pg_restore"), "--no-owner", "-h", v.host, "-p", str(v.port), "-U", v.username,
                        "-d", v.database, str(dump)], check=True)
        old = tmp_path / "old"
        old.mkdir()
        shutil.copy(next(d.glob("s001aaaa_*.py")), old)
        r = run_apply(str(old), "s001aaaa", url=dst, downgrade="Allow", data_loss="Archive")
        assert r.code == 0, r.stdout + r.stderr
        assert heads(dst) == ["s001aaaa"]
        assert {a["object"] for a in r.json["archived"]} == {"public.notes", "public.customers.phone"}
        assert q(dst, "SELECT count(*) FROM customers")[0][0] == 300
    finally:
        other.cleanup()


def test_archive_runs_inside_the_step_transaction(database_url, tmp_path):
    """A failure later in the run rolls the archive back with the step: no orphan archives."""
    d = tmp_path / "m"
    write_script(d, "h001aaaa", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.execute("SELECT 1/0")')
    write_script(d, "h002aaaa", "h001aaaa", 'op.add_column("t", sa.Column("c", sa.Text))', 'op.drop_column("t", "c")')
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO t (c) SELECT 'v' || g FROM generate_series(1, 10) g")
    r = run_apply(str(d), "base", url=database_url, downgrade="Allow", data_loss="Archive")
    assert r.code == 1 and r.json["result"] == "rolled_back", r.stdout
    assert heads(database_url) == ["h002aaaa"]
    assert q(database_url, "SELECT count(c) FROM t")[0][0] == 10
    assert dbrev("archive", "list", url=database_url).json["archives"] == []
    assert q(database_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'dbrev_archive'")[0][0] == 0


def test_archive_of_a_table_dropped_with_its_enum_type_and_its_restore(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "m001aaaa", None,
                 'op.execute("CREATE TYPE mood AS ENUM (\'sad\', \'ok\', \'happy\')")\n'
                 'op.execute("CREATE TABLE person (id serial PRIMARY KEY, name text, mood mood, past mood[])")',
                 'op.drop_table("person")\nop.execute("DROP TYPE mood")', doc="people and moods")
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO person (name, mood, past) SELECT 'p' || g, (ARRAY['sad','ok','happy'])[1 + g % 3]"
                    "::mood, ARRAY['ok', 'sad']::mood[] FROM generate_series(1, 30) g")
    before = q(database_url, "SELECT id, name, mood::text, past::text FROM person ORDER BY id")
    r = run_apply(str(d), "base", url=database_url, downgrade="Allow", data_loss="Archive")
    assert r.code == 0, r.stdout + r.stderr
    assert [a["object"] for a in r.json["archived"]] == ["public.person"]
    assert q(database_url, "SELECT to_regtype('mood')")[0][0] is None
    # the copy keeps the values as text and says which type they had
    comments = q(database_url, "SELECT a.attname, col_description(a.attrelid, a.attnum) FROM pg_attribute a "
                               "WHERE a.attrelid = (SELECT oid FROM pg_class WHERE relname LIKE 'a%_person' AND "
                               "relnamespace = 'dbrev_archive'::regnamespace) AND a.attname IN ('mood', 'past') "
                               "ORDER BY 1")
    assert comments == [("mood", "dbrev type: mood"), ("past", "dbrev type: mood[]")]
    assert run_apply(str(d), "head", url=database_url).code == 0
    res = dbrev("archive", "restore", "--revision", "m001aaaa", url=database_url)
    assert res.code == 0, res.stdout + res.stderr
    assert q(database_url, "SELECT id, name, mood::text, past::text FROM person ORDER BY id") == before
