"""No rollback path loses a row, and no rollback is reported failed for what was already there.

Each test counts rows before the run and after its rollback, on the real PostgreSQL server.
"""

from __future__ import annotations

from dbhelp import heads, q, table_locked
from clihelp import dbrev
from enginehelp import run_apply
from scriptgen import write_script

CONCURRENT_UP = ('with op.get_context().autocommit_block():\n'
                 '    op.create_index("ix_keep_v", "keep", ["v"], postgresql_concurrently=True)')
CONCURRENT_DOWN = ('with op.get_context().autocommit_block():\n'
                   '    op.drop_index("ix_keep_v", table_name="keep", postgresql_concurrently=True)')


def destructive_per_step_history(d, first_down='op.execute("SELECT 1/0")', big_down='op.drop_table("big")'):
    """Going down to base: drop ``big`` (1,000 rows), an autocommit step, then a step that fails."""
    write_script(d, "k001aaaa", None, 'op.create_table("keep", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("v", sa.Text))', first_down)
    write_script(d, "k002aaaa", "k001aaaa", CONCURRENT_UP, CONCURRENT_DOWN)
    write_script(d, "k003aaaa", "k002aaaa",
                 'op.create_table("big", sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Text))',
                 big_down)


def test_per_step_rollback_of_a_destructive_downgrade_puts_the_rows_back(database_url, tmp_path):
    d = tmp_path / "m"
    destructive_per_step_history(d)
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO big (v) SELECT 'row ' || g FROM generate_series(1, 1000) g")
    before = q(database_url, "SELECT id, v FROM big ORDER BY id")
    r = run_apply(str(d), "base", url=database_url, downgrade="Allow", data_loss="Allow")
    assert r.code == 1, r.stdout + r.stderr
    doc = r.json
    assert doc["transaction"] == "per-step"
    import json; assert doc["result"] == "rolled_back", json.dumps(doc["rollback"], indent=1, default=str)[:4000]
    assert doc["rollback"]["success"] is True, doc["rollback"]
    assert heads(database_url) == ["k003aaaa"]
    # the rows are back, ids and all, and the sequence is past them
    assert q(database_url, "SELECT id, v FROM big ORDER BY id") == before
    q(database_url, "INSERT INTO big (v) VALUES ('new')")
    assert doc["decision"]["archive"] is True  # archived because a per-step rollback could need it
    assert [x["object"] for x in doc["rollback"]["restored"]] == ["public.big"]
    assert doc["rollback"]["restored"][0]["inserted"] == 1000


def test_a_rollback_that_cannot_put_rows_back_says_so_and_names_the_table(database_url, tmp_path):
    d = tmp_path / "m"
    # the downgrade deletes rows inside a DO block: no plan can see it, no archive keeps it
    destructive_per_step_history(
        d, big_down='op.execute("DO $$ BEGIN DELETE FROM big WHERE id > 400; END $$")\n'
                    'op.execute("ALTER TABLE big ALTER COLUMN v SET DEFAULT \'x\'")')
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO big (v) SELECT 'row ' || g FROM generate_series(1, 1000) g")
    r = run_apply(str(d), "base", url=database_url, downgrade="Allow", data_loss="Allow")
    doc = r.json
    assert q(database_url, "SELECT count(*) FROM big")[0][0] == 400
    assert doc["rollback"]["success"] is False, doc["rollback"]
    assert doc["result"] == "failed" and doc["error"]["reason"] == "RollbackFailed"
    missing = [f for f in doc["rollback"]["integrity"]["findings"] if f["check"] == "rowCounts"]
    assert missing and missing[0]["object"] == "public.big" and missing[0]["count"] == 600
    assert "public.big" in doc["rollback"]["message"]


def test_pre_existing_findings_do_not_fail_a_per_step_rollback(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "e001aaaa", None, 'op.create_table("keep", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("v", sa.Text))', 'op.drop_table("keep")')
    assert run_apply(str(d), "head", url=database_url).code == 0
    # a sequence behind its column, made by hand long before this run
    q(database_url, "INSERT INTO keep (id, v) VALUES (50, 'by hand')")
    write_script(d, "e002aaaa", "e001aaaa", CONCURRENT_UP, CONCURRENT_DOWN)
    write_script(d, "e003aaaa", "e002aaaa", 'op.execute("SELECT 1/0")', "pass")
    r = run_apply(str(d), "head", url=database_url)
    doc = r.json
    import json; assert doc["result"] == "rolled_back", json.dumps(doc["rollback"], indent=1, default=str)[:4000]
    assert doc["rollback"]["success"] is True and doc["rollback"]["integrity"]["passed"] is True
    assert heads(database_url) == ["e001aaaa"]


def test_pre_existing_not_valid_constraint_does_not_fail_a_transaction_rollback(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "n001aaaa", None, 'op.create_table("keep", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("v", sa.Integer))', 'op.drop_table("keep")')
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO keep (v) VALUES (-1)")
    q(database_url, "ALTER TABLE keep ADD CONSTRAINT v_positive CHECK (v > 0) NOT VALID")
    write_script(d, "n002aaaa", "n001aaaa", 'op.add_column("keep", sa.Column("w", sa.Text))\n'
                 'op.execute("SELECT 1/0")', "pass")
    r = run_apply(str(d), "head", url=database_url)
    doc = r.json
    assert doc["transaction"] == "single" and doc["result"] == "rolled_back", doc
    assert doc["rollback"]["success"] is True, doc["rollback"]
    assert doc["error"]["reason"] == "MigrationFailed"


def test_a_failed_rollback_lists_the_steps_that_ran(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "g001aaaa", None, 'op.create_table("keep", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("v", sa.Text))', 'op.drop_table("keep")')
    write_script(d, "g002aaaa", "g001aaaa", 'op.create_table("other", sa.Column("id", sa.Integer))',
                 'op.execute("SELECT 1/0")')
    write_script(d, "g003aaaa", "g002aaaa", CONCURRENT_UP, CONCURRENT_DOWN)
    write_script(d, "g004aaaa", "g003aaaa", 'op.execute("SELECT 1/0")', "pass")
    r = run_apply(str(d), "head", url=database_url)
    doc = r.json
    assert doc["rollback"]["success"] is False
    ran = [(s["revision"], s["status"]) for s in doc["rollback"]["steps"]]
    assert ran == [("g003aaaa", "applied"), ("g002aaaa", "failed")], ran


def test_busy_leaves_no_running_journal_row(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "b001aaaa", None, 'op.create_table("hot", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("hot")')
    assert run_apply(str(d), "head", url=database_url).code == 0
    write_script(d, "b002aaaa", "b001aaaa", 'op.add_column("hot", sa.Column("x", sa.Integer))',
                 'op.drop_column("hot", "x")')
    with table_locked(database_url, "hot"):
        r = run_apply(str(d), "head", url=database_url, lock_timeout=1.0)
    assert r.code == 4 and r.json["result"] == "busy", r.stdout
    assert q(database_url, "SELECT status FROM dbrev.runs ORDER BY id DESC LIMIT 1")[0][0] == "busy"
    again = run_apply(str(d), "head", url=database_url)
    assert again.code == 0 and not [w for w in again.json["warnings"] if "interrupted" in w]


def test_a_timed_out_run_closes_its_journal_row(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "t001aaaa", None, 'op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("a")')
    write_script(d, "t002aaaa", "t001aaaa", 'op.execute("SELECT pg_sleep(120)")', "pass")
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--timeout", "4", url=database_url)
    assert r.json["error"]["reason"] == "TimedOut"
    assert q(database_url, "SELECT status FROM dbrev.runs ORDER BY id DESC LIMIT 1")[0][0] == "timed_out"
    write_script(d, "t002aaaa", "t001aaaa", "pass", "pass")
    again = run_apply(str(d), "head", url=database_url)
    assert again.code == 0 and not [w for w in again.json["warnings"] if "interrupted" in w], again.json


def test_the_undo_after_a_timeout_keeps_the_data_loss_policy(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "x001aaaa", None, 'op.create_table("keep", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("v", sa.Text))', 'op.drop_table("keep")')
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO keep (v) SELECT 'v' || g FROM generate_series(1, 10) g")
    write_script(d, "x002aaaa", "x001aaaa", CONCURRENT_UP, CONCURRENT_DOWN)
    write_script(d, "x003aaaa", "x002aaaa", 'op.add_column("keep", sa.Column("extra", sa.Text))\n'
                 'op.execute("UPDATE keep SET extra = v")', 'op.drop_column("keep", "extra")')
    write_script(d, "x004aaaa", "x003aaaa", 'op.execute("SELECT pg_sleep(120)")', "pass")
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--timeout", "8", url=database_url)
    doc = r.json
    assert doc["error"]["reason"] == "TimedOut", doc
    # dataLoss is Deny: the undo that would drop keep.extra (10 values) is refused, and says so
    assert doc["rollback"]["success"] is False
    # the trigger is the one the single-transaction path and the metric use (not the reason "TimedOut")
    assert doc["rollback"]["reason"] == "timeout", doc["rollback"]
    assert doc["rollback"]["error"]["reason"] == "DataLossDenied", doc["rollback"]
    assert heads(database_url) == ["x003aaaa"]
    assert q(database_url, "SELECT count(extra) FROM keep")[0][0] == 10


def test_a_transaction_rollback_proves_its_rows_too(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "y001aaaa", None, 'op.create_table("keep", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("v", sa.Text))', 'op.drop_table("keep")')
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO keep (v) SELECT 'v' || g FROM generate_series(1, 10) g")
    # while the run's transaction is open, another session deletes rows (here: the script itself, through a
    # connection of its own); ROLLBACK cannot bring them back, and the rollback must not claim it did
    write_script(d, "y002aaaa", "y001aaaa",
                 'if not op.get_context().as_sql:\n'
                 '    eng = sa.create_engine(os.environ["DBREV_DATABASE_URL"])\n'
                 '    with eng.begin() as c:\n'
                 '        c.execute(sa.text("DELETE FROM keep WHERE id > 4"))\n'
                 '    eng.dispose()\n'
                 'op.add_column("keep", sa.Column("w", sa.Text))\n'
                 'op.execute("SELECT 1/0")', "pass", extra="import os")
    r = run_apply(str(d), "head", url=database_url)
    doc = r.json
    assert doc["transaction"] == "single" and doc["rollback"]["method"] == "transaction"
    assert doc["rollback"]["success"] is False, doc["rollback"]
    assert doc["result"] == "failed" and doc["error"]["reason"] == "RollbackFailed"
    assert "public.keep" in doc["rollback"]["message"]
    assert heads(database_url) == ["y001aaaa"]
