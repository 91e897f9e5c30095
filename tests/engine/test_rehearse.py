"""Rehearsed downgrades inside the run (issue 14), on a real PostgreSQL server."""

from __future__ import annotations

from dbhelp import heads, q
from clihelp import dbrev
from enginehelp import run_apply, run_plan
from scriptgen import write_script

from dbrev.engine import rehearse
from dbrev.engine.rehearse import Loss, Outcome, classify


def _base(d):
    write_script(d, "r001aaaa", None,
                 'op.create_table("users", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))',
                 'op.drop_table("users")')


def _at_base_rev(d, url, rows=0):
    r = run_apply(str(d), "r001aaaa", url=url)
    assert r.code == 0, r.stdout + r.stderr
    if rows:
        q(url, f"INSERT INTO users (name) SELECT 'u' || g FROM generate_series(1, {rows}) g")


FLAGS = {"--allow-data-loss": {"data_loss": "Allow"}, "--archive": {"data_loss": "Archive"},
         "--rehearse=never": {"rehearse": "Never"}, "--rehearse=require": {"rehearse": "Require"}}


def _apply(d, url, *flags):
    """`dbrev apply -r head FLAGS` in this process (the CLI's --rehearse: test_require_refuses_...)."""
    return run_apply(d, "head", url=url, **{k: v for f in flags for k, v in FLAGS[f].items()})


def test_correct_downgrade_is_proven(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url, rows=3)
    write_script(d, "r002aaaa", "r001aaaa",
                 'op.add_column("users", sa.Column("email", sa.Text))\n'
                 'op.create_index("ix_users_email", "users", ["email"])',
                 'op.drop_index("ix_users_email", table_name="users")\nop.drop_column("users", "email")')
    r = _apply(d, database_url)
    assert r.code == 0, r.stdout + r.stderr
    rr = r.json["rollback_readiness"]
    assert rr["status"] == "Proven", rr
    assert rr["steps"] == ["downgrade r002aaaa"]
    # the rehearsal was undone: the upgrade is committed, the column exists
    assert heads(database_url) == ["r002aaaa"]
    assert q(database_url, "SELECT count(email) FROM users") == [(0,)]


def test_downgrade_that_forgets_an_index_is_broken_naming_it(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url)
    p = write_script(d, "r002aaaa", "r001aaaa", 'op.create_index("ix_users_name", "users", ["name"])', "pass")
    r = _apply(d, database_url)
    assert r.code == 0, r.stdout + r.stderr
    rr = r.json["rollback_readiness"]
    assert rr["status"] == "Broken", rr
    assert any("ix_users_name" in x and x.startswith("+") for x in rr["differences"]), rr
    line = p.read_text().splitlines().index("def downgrade():") + 1
    assert rr["step"] == "r002aaaa" and rr["location"] == f"{p.name}:{line}"


def test_downgrade_that_leaves_a_column_behind_is_broken(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url)
    write_script(d, "r002aaaa", "r001aaaa",
                 'op.add_column("users", sa.Column("a", sa.Text))\nop.add_column("users", sa.Column("b", sa.Text))',
                 'op.drop_column("users", "a")')
    rr = _apply(d, database_url).json["rollback_readiness"]
    assert rr["status"] == "Broken"
    assert any(x.startswith("+ column public.users.b") for x in rr["differences"]), rr["differences"]
    assert not any("users.a" in x for x in rr["differences"])


def test_pass_as_downgrade_is_broken(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url)
    write_script(d, "r002aaaa", "r001aaaa",
                 'op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True))', "pass")
    rr = _apply(d, database_url).json["rollback_readiness"]
    assert rr["status"] == "Broken"
    assert any("audit" in x for x in rr["differences"])


def test_downgrade_dropping_a_populated_column_is_lossy_with_the_count(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url, rows=7)
    write_script(d, "r002aaaa", "r001aaaa",
                 'op.add_column("users", sa.Column("nick", sa.Text))\n'
                 'op.execute("UPDATE users SET nick = upper(name) WHERE id <= 5")',
                 'op.drop_column("users", "nick")')
    r = _apply(d, database_url)
    assert r.code == 0
    rr = r.json["rollback_readiness"]
    assert rr["status"] == "Lossy", rr
    assert rr["losses"] == [{"table": "public.users", "column": "nick", "rows": 5, "kind": "column"}]
    assert "5 value(s) of column public.users.nick" in rr["message"]
    assert q(database_url, "SELECT count(nick) FROM users") == [(5,)]  # the rehearsal did not drop it


def test_a_rename_is_not_counted_as_loss(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url, rows=4)
    write_script(d, "r002aaaa", "r001aaaa", 'op.alter_column("users", "name", new_column_name="full_name")',
                 'op.alter_column("users", "full_name", new_column_name="name")')
    rr = _apply(d, database_url, "--allow-data-loss").json["rollback_readiness"]
    assert rr["status"] == "Proven", rr


def test_downgrade_raising_is_irreversible(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url)
    write_script(d, "r002aaaa", "r001aaaa", 'op.add_column("users", sa.Column("x", sa.Text))',
                 'raise NotImplementedError("one way")')
    rr = _apply(d, database_url).json["rollback_readiness"]
    assert rr["status"] == "Irreversible", rr
    assert rr["step"] == "r002aaaa" and "NotImplementedError" in rr["message"]


def test_downgrade_failing_at_run_time_is_broken_with_file_and_line(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url)
    p = write_script(d, "r002aaaa", "r001aaaa", 'op.add_column("users", sa.Column("x", sa.Text))',
                     'op.drop_column("users", "no_such_column")')
    r = _apply(d, database_url)
    assert r.code == 0
    rr = r.json["rollback_readiness"]
    assert rr["status"] == "Broken", rr
    line = p.read_text().splitlines().index('    op.drop_column("users", "no_such_column")') + 1
    assert rr["location"] == f"{p.name}:{line}" and "no_such_column" in rr["error"]
    assert heads(database_url) == ["r002aaaa"]


def test_require_refuses_and_leaves_the_database_at_the_start(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url, rows=2)
    write_script(d, "r002aaaa", "r001aaaa", 'op.create_index("ix_users_name", "users", ["name"])', "pass")
    before = dbrev("verify", url=database_url).json["fingerprint"]
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--rehearse=require", url=database_url)
    assert r.code == 3, r.stdout + r.stderr
    doc = r.json
    assert doc["result"] == "refused" and doc["error"]["reason"] == "RollbackNotReady"
    assert "Broken" in doc["error"]["message"] and "ix_users_name" in doc["error"]["message"]
    assert doc["rollback"]["method"] == "transaction" and doc["rollback"]["success"] is True
    from dbrev.controller.metrics import ROLLBACK_TRIGGERS  # the operator counts it as dbrev_rollbacks_total{trigger}

    assert doc["rollback"]["reason"] == "rehearsal_failure" and doc["rollback"]["reason"] in ROLLBACK_TRIGGERS
    assert doc["current_revisions"] == ["r001aaaa"]
    assert heads(database_url) == ["r001aaaa"]
    assert q(database_url, "SELECT count(*) FROM pg_indexes WHERE indexname = 'ix_users_name'") == [(0,)]
    assert dbrev("verify", url=database_url).json["fingerprint"] == before
    # a proven way back is committed under Require
    write_script(d, "r002aaaa", "r001aaaa", 'op.create_index("ix_users_name", "users", ["name"])',
                 'op.drop_index("ix_users_name", table_name="users")')
    ok = _apply(d, database_url, "--rehearse=require")
    assert ok.code == 0 and ok.json["rollback_readiness"]["status"] == "Proven"
    assert heads(database_url) == ["r002aaaa"]


def test_per_step_plan_is_unproven_with_the_reason(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url)
    write_script(d, "r002aaaa", "r001aaaa",
                 'with op.get_context().autocommit_block():\n'
                 '    op.create_index("ix_c", "users", ["name"], postgresql_concurrently=True)',
                 'with op.get_context().autocommit_block():\n'
                 '    op.drop_index("ix_c", table_name="users", postgresql_concurrently=True)')
    r = _apply(d, database_url, "--rehearse=require")
    assert r.code == 0, r.stdout + r.stderr
    assert r.json["transaction"] == "per-step"
    rr = r.json["rollback_readiness"]
    assert rr["status"] == "Unproven" and "one transaction per step" in rr["reason"]


def test_never_skips_the_rehearsal(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url)
    write_script(d, "r002aaaa", "r001aaaa", 'op.create_index("ix_users_name", "users", ["name"])', "pass")
    r = _apply(d, database_url, "--rehearse=never")
    assert r.code == 0 and "rollback_readiness" not in r.json


# -- the pure classification ----------------------------------------------------------

def test_classify_pure():
    base = dict(steps=("downgrade r2",), before_facts=("column public.t.a text",), start=("r1",),
                heads_after=("r1",), scripts={"r2": "r2.py:12"})
    assert classify(Outcome(after_facts=("column public.t.a text",), **base)).status == rehearse.PROVEN
    broken = classify(Outcome(after_facts=("column public.t.a text", "column public.t.b text"), **base))
    assert broken.status == rehearse.BROKEN and broken.details["location"] == "r2.py:12"
    assert broken.details["differences"] == ["+ column public.t.b text"]
    lossy = classify(Outcome(after_facts=("column public.t.a text",), data_loss_policy="Archive",
                             losses=(Loss("public.t", "b", 3, "column"),), archived=("public.t.b",), **base))
    assert lossy.status == rehearse.LOSSY and "Archive would keep a copy of public.t.b" in lossy.message
    assert classify(Outcome(after_facts=base["before_facts"], **{**base, "heads_after": ("r2",)})).status == "Broken"
    assert classify(Outcome(irreversible=(("r2", "r2.py", "has no downgrade() function"),))).status == "Irreversible"
    assert rehearse.unproven("why").details["reason"] == "why"
    assert broken.blocks and not lossy.blocks


SHARED_ENV_PY = '''
from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection)
with context.begin_transaction():
    context.run_migrations()
'''

# keeps dbrev's transaction while the upgrade runs, commits it the second time it runs (the rehearsal)
SECOND_TIME_COMMITS_ENV_PY = '''
import builtins
from alembic import context

connection = context.config.attributes["connection"]
if getattr(builtins, "_dbrev_env_runs", 0):
    connection.commit()
builtins._dbrev_env_runs = getattr(builtins, "_dbrev_env_runs", 0) + 1
context.configure(connection=connection)
with context.begin_transaction():
    context.run_migrations()
'''


def _env_project(tmp_path, env_py):
    loc = tmp_path / "alembic"
    (loc / "versions").mkdir(parents=True)
    (loc / "env.py").write_text(env_py)
    write_script(loc / "versions", "r001aaaa", None,
                 'op.create_table("users", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("users")')
    return loc


def test_rehearsal_runs_through_the_projects_env_py(database_url, tmp_path):
    loc = _env_project(tmp_path, SHARED_ENV_PY)
    r = run_apply(str(loc), "head", url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    assert r.json["rollback_readiness"]["status"] == "Proven", r.json["rollback_readiness"]
    assert heads(database_url) == ["r001aaaa"]


def test_env_py_that_would_commit_during_the_rehearsal_cannot(database_url, tmp_path):
    loc = _env_project(tmp_path, SECOND_TIME_COMMITS_ENV_PY)
    write_script(loc / "versions", "r002aaaa", "r001aaaa", 'op.add_column("users", sa.Column("x", sa.Text))',
                 'op.drop_column("users", "x")')
    r = run_apply(str(loc), "head", url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    rr = r.json["rollback_readiness"]
    assert rr["status"] == "Unproven" and "end dbrev's transaction" in rr["reason"], rr
    # the upgrade was committed once, whole, after its verification; nothing of the way back stuck
    assert heads(database_url) == ["r002aaaa"]
    assert q(database_url, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' "
                           "AND column_name = 'x'") == [(1,)]


def test_downgrade_calling_sys_exit_is_broken_and_the_upgrade_commits(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url)
    write_script(d, "r002aaaa", "r001aaaa", 'op.add_column("users", sa.Column("x", sa.Text))',
                 'import sys\nsys.exit(3)')
    r = _apply(d, database_url)
    assert r.code == 0, r.stdout + r.stderr
    rr = r.json["rollback_readiness"]
    assert rr["status"] == "Broken" and rr["step"] == "r002aaaa", rr
    assert heads(database_url) == ["r002aaaa"]


def test_lossy_with_archive_says_what_the_archive_would_keep(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url, rows=4)
    write_script(d, "r002aaaa", "r001aaaa",
                 'op.add_column("users", sa.Column("nick", sa.Text))\nop.execute("UPDATE users SET nick = name")',
                 'op.drop_column("users", "nick")')
    rr = _apply(d, database_url, "--archive").json["rollback_readiness"]
    assert rr["status"] == "Lossy" and rr["losses"][0]["rows"] == 4, rr
    assert rr["archive_keeps"] == ["public.users.nick"] and "Archive would keep a copy" in rr["message"]


# -- a later revert's plan shows the readiness recorded when the upgrade ran ---------------------------

def test_a_reverts_plan_shows_the_readiness_recorded_when_the_upgrade_ran(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url, rows=6)
    write_script(d, "r002aaaa", "r001aaaa",
                 'op.add_column("users", sa.Column("nick", sa.Text))\n'
                 'op.execute("UPDATE users SET nick = name WHERE id <= 4")',
                 'op.drop_column("users", "nick")')
    up = _apply(d, database_url)
    assert up.code == 0 and up.json["rollback_readiness"]["status"] == "Lossy", up.stdout + up.stderr
    assert "recorded_readiness" not in up.json  # an upgrade undoes nothing
    # the GitOps revert: plan back to r001aaaa
    p = run_plan(str(d), "r001aaaa", url=database_url)
    assert p.code == 0, p.stdout + p.stderr
    rec = p.json["recorded_readiness"]
    assert len(rec) == 1 and rec[0]["status"] == "Lossy" and rec[0]["from"] == ["r002aaaa"]
    assert rec[0]["to"] == ["r001aaaa"] and rec[0]["losses"][0]["rows"] == 4 and rec[0]["recorded_at"]
    assert rec[0]["unrecorded"] == []
    text = dbrev("plan", "--migrations", str(d), "-r", "r001aaaa", url=database_url, json_out=False).stdout
    line = next(x for x in text.splitlines() if "rehearsed:" in x)
    assert "rehearsed: Lossy r002aaaa -> r001aaaa: restores the starting schema, losing 4 value(s) of column " \
           "public.users.nick" in line and " UTC, run " in line and "(recorded 20" in line, text
    # further back: each upgrade's own record, newest first (r001aaaa was applied, rehearsed, by _at_base_rev)
    rec = run_plan(str(d), "base", url=database_url).json["recorded_readiness"]
    assert [(x["status"], x["from"], x["to"]) for x in rec] == [("Lossy", ["r002aaaa"], ["r001aaaa"]),
                                                              ("Proven", ["r001aaaa"], [])]
    # the downgrade itself reports it too, and an upgrade's plan has none
    assert "recorded_readiness" not in run_plan(str(d), "head", url=database_url).json
    down = run_apply(str(d), "r001aaaa", url=database_url, downgrade="Allow", data_loss="Allow")
    assert down.code == 0, down.stdout + down.stderr
    assert down.json["recorded_readiness"][0]["status"] == "Lossy"
    assert heads(database_url) == ["r001aaaa"]


def test_bookkeeping_of_state_version_1_gains_the_readiness_column(database_url, tmp_path):
    d = tmp_path / "m"
    _base(d)
    _at_base_rev(d, database_url)
    q(database_url, "ALTER TABLE dbrev.runs DROP COLUMN readiness")  # as state version 1 made it
    write_script(d, "r002aaaa", "r001aaaa", 'op.add_column("users", sa.Column("x", sa.Text))',
                 'op.drop_column("users", "x")')
    assert "recorded_readiness" not in run_plan(str(d), "base", url=database_url).json
    assert _apply(d, database_url).code == 0
    assert q(database_url, "SELECT readiness->>'status' FROM dbrev.runs ORDER BY id DESC LIMIT 1") == [("Proven",)]
    # r001aaaa's run was recorded without one: a plan to base says what has no rehearsal on record
    text = dbrev("plan", "--migrations", str(d), "-r", "base", url=database_url, json_out=False).stdout
    assert "rehearsed: Proven r002aaaa -> r001aaaa" in text and "nothing recorded for undoing r001aaaa" in text, text
