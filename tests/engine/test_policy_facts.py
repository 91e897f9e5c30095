"""Data loss means rows: policy decided on live facts (empty tables, widenings), sequences repaired
on request, and a rollback that never escalates the data-loss policy.  Real PostgreSQL server."""

from __future__ import annotations

from dbhelp import heads, q
from clihelp import dbrev
from enginehelp import run_apply
from scriptgen import write_script

CONCURRENT_UP = ('with op.get_context().autocommit_block():\n'
                 '    op.create_index("ix_people_n", "people", ["n"], postgresql_concurrently=True)')
CONCURRENT_DOWN = ('with op.get_context().autocommit_block():\n'
                   '    op.drop_index("ix_people_n", table_name="people", postgresql_concurrently=True)')


def people(d):
    write_script(d, "w001aaaa", None,
                 'op.create_table("people", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("name", sa.String(255)), sa.Column("n", sa.Integer))\n'
                 'op.create_table("scratch", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("scratch")\nop.drop_table("people")')


def test_widenings_and_drops_of_empty_tables_are_not_data_loss(database_url, tmp_path):
    d = tmp_path / "m"
    people(d)
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO people (name, n) SELECT 'p' || g, g FROM generate_series(1, 20) g")
    write_script(d, "w002aaaa", "w001aaaa",
                 'op.alter_column("people", "name", type_=sa.String(500), existing_type=sa.String(255))\n'
                 'op.alter_column("people", "n", type_=sa.BigInteger, existing_type=sa.Integer)\n'
                 'op.drop_table("scratch")',
                 'op.create_table("scratch", sa.Column("id", sa.Integer, primary_key=True))\n'
                 'op.alter_column("people", "n", type_=sa.Integer, existing_type=sa.BigInteger)\n'
                 'op.alter_column("people", "name", type_=sa.String(255), existing_type=sa.String(500))')
    r = run_apply(str(d), "head", url=database_url)  # dataLoss Deny
    assert r.code == 0, r.stdout + r.stderr
    why = {x["effect"]: x["why"] for x in r.json["decision"]["not_data_loss"]}
    assert any("only widens" in w for w in why.values()) and any("is empty" in w for w in why.values()), why
    assert q(database_url, "SELECT count(*) FROM people")[0][0] == 20
    # narrowing a column that holds rows is data loss again
    write_script(d, "w003aaaa", "w002aaaa",
                 'op.alter_column("people", "name", type_=sa.String(5), existing_type=sa.String(500))', "pass")
    r = run_apply(str(d), "head", url=database_url)
    assert r.code == 3 and r.json["error"]["reason"] == "DataLossDenied", r.stdout
    assert "name" in r.json["error"]["message"]


def test_a_drop_of_a_table_that_holds_rows_is_still_refused(database_url, tmp_path):
    d = tmp_path / "m"
    people(d)
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO scratch DEFAULT VALUES")
    write_script(d, "w002aaaa", "w001aaaa", 'op.drop_table("scratch")', "pass")
    r = run_apply(str(d), "head", url=database_url)
    assert r.code == 3 and r.json["error"]["reason"] == "DataLossDenied"
    assert q(database_url, "SELECT count(*) FROM scratch")[0][0] == 1


def seeded(d):
    write_script(d, "q001aaaa", None,
                 'op.create_table("plans", sa.Column("id", sa.Integer, primary_key=True), sa.Column("k", sa.Text))\n'
                 'op.execute("INSERT INTO plans (id, k) VALUES (1, \'free\'), (2, \'pro\')")',
                 'op.drop_table("plans")')


def test_a_seed_row_with_an_explicit_id_is_repaired_on_request(database_url, tmp_path):
    d = tmp_path / "m"
    seeded(d)
    # by default the install is applied as Alembic applies it, and the hazard is reported with its fix
    r = dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url)
    assert r.code == 0 and r.json["result"] == "applied", r.stdout
    (warn,) = r.json["integrity"]["new_findings"]
    assert warn["check"] == "sequences" and warn["severity"] == "warning"
    assert "setval" in warn["message"] and "--repair-sequences" in warn["message"]
    assert dbrev("apply", "--migrations", str(d), "-r", "base", "--allow-downgrade", "--allow-data-loss",
                 url=database_url).code == 0
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--repair-sequences", url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    (fix,) = r.json["repaired_sequences"]
    assert fix["sequence"] == "public.plans_id_seq" and fix["to"] == 2
    assert any(x.get("message") == "Repaired a sequence the run left behind its column" for x in r.logs)
    q(database_url, "INSERT INTO plans (k) VALUES ('team')")  # the next insert no longer collides
    assert r.json["integrity"]["passed"]


def test_a_sequence_already_behind_never_fails_a_run(database_url, tmp_path):
    d = tmp_path / "m"
    seeded(d)
    assert run_apply(str(d), "head", url=database_url, repair_sequences=True).code == 0
    q(database_url, "INSERT INTO plans (id, k) VALUES (10, 'by hand')")
    write_script(d, "q002aaaa", "q001aaaa", 'op.add_column("plans", sa.Column("note", sa.Text))',
                 'op.drop_column("plans", "note")')
    r = run_apply(str(d), "head", url=database_url)
    assert r.code == 0 and r.json["result"] == "applied", r.stdout
    assert "repaired_sequences" not in r.json


def undo_narrows(d):
    """Forward: widen a column that holds rows, an autocommit step, a failing step.  The undo narrows it."""
    write_script(d, "u001aaaa", None,
                 'op.create_table("people", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("name", sa.String(10)), sa.Column("n", sa.Integer))', 'op.drop_table("people")')
    write_script(d, "u002aaaa", "u001aaaa",
                 'op.alter_column("people", "name", type_=sa.String(100), existing_type=sa.String(10))',
                 'op.alter_column("people", "name", type_=sa.String(10), existing_type=sa.String(100))')
    write_script(d, "u003aaaa", "u002aaaa", CONCURRENT_UP, CONCURRENT_DOWN)
    write_script(d, "u004aaaa", "u003aaaa", 'op.execute("SELECT 1/0")', "pass")


def test_a_rollback_never_escalates_the_data_loss_policy(database_url, tmp_path):
    d = tmp_path / "m"
    undo_narrows(d)
    assert run_apply(str(d), "u001aaaa", url=database_url).code == 0
    q(database_url, "INSERT INTO people (name) VALUES ('ann'), ('bob')")
    r = run_apply(str(d), "head", url=database_url)  # dataLoss Deny
    doc = r.json
    assert doc["result"] == "failed" and doc["error"]["reason"] == "RollbackFailed", doc
    rb = doc["rollback"]
    assert rb["success"] is False and rb["error"]["reason"] == "DataLossDenied"
    assert "existed before the run" in rb["error"]["message"] and "name" in rb["error"]["message"]
    assert rb["steps"] == []  # nothing ran: the undo was refused before its first step
    assert heads(database_url) == ["u003aaaa"]
    # under Archive the same undo keeps a copy and runs
    assert run_apply(str(d), "u001aaaa", url=database_url, downgrade="Allow", data_loss="Archive").code == 0
    r = run_apply(str(d), "head", url=database_url, data_loss="Archive")
    assert r.json["result"] == "rolled_back" and r.json["rollback"]["success"], r.stdout
    assert [a["object"] for a in r.json["rollback"]["archived"]] == ["public.people.name"]
    assert heads(database_url) == ["u001aaaa"]


def test_a_table_empty_at_plan_time_and_seeded_by_the_run_may_still_be_dropped(database_url, tmp_path):
    d = tmp_path / "m"
    people(d)
    assert run_apply(str(d), "head", url=database_url).code == 0
    write_script(d, "w002aaaa", "w001aaaa", 'op.execute("INSERT INTO scratch DEFAULT VALUES")', "pass")
    write_script(d, "w003aaaa", "w002aaaa", 'op.drop_table("scratch")', "pass")
    r = run_apply(str(d), "head", url=database_url)
    assert r.code == 0 and r.json["result"] == "applied", r.stdout


def test_rows_that_arrive_after_the_decision_are_not_dropped_unseen(database_url, tmp_path):
    d = tmp_path / "m"
    people(d)
    assert run_apply(str(d), "head", url=database_url).code == 0
    # another session writes into the empty table while the run is under way
    write_script(d, "w002aaaa", "w001aaaa",
                 'if not op.get_context().as_sql:\n'
                 '    eng = sa.create_engine(os.environ["DBREV_DATABASE_URL"])\n'
                 '    with eng.begin() as c:\n'
                 '        c.execute(sa.text("INSERT INTO scratch DEFAULT VALUES"))\n'
                 '    eng.dispose()', "pass", extra="import os")
    write_script(d, "w003aaaa", "w002aaaa", 'op.drop_table("scratch")', "pass")
    r = run_apply(str(d), "head", url=database_url)
    assert r.code == 3 and r.json["error"]["reason"] == "DataLossDenied", r.stdout
    assert "holds rows now" in r.json["error"]["message"]
    assert q(database_url, "SELECT count(*) FROM scratch")[0][0] == 1 and heads(database_url) == ["w001aaaa"]
