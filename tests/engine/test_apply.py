"""`dbrev apply` on a real PostgreSQL server: atomicity, rollback, policy, locking, timeouts."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from dbhelp import heads, q, table_locked
from enginehelp import run_apply, run_plan
from clihelp import dbrev, popen
from scriptgen import linear_history, write_script


def test_examples_upgrade_to_head_then_back_one_step(database_url, examples_dir):
    r = dbrev("apply", "--migrations", str(examples_dir), "-r", "head", url=database_url)
    assert r.code == 0, r.stderr
    doc = r.json
    assert doc["result"] == "applied" and doc["direction"] == "upgrade"
    assert doc["from_revision"] is None and doc["to_revision"] == "f1a2b3c4d5e6"
    assert [s["revision"] for s in doc["steps"]][0] == "a1b2c3d4e5f6" and len(doc["steps"]) == 7
    assert doc["integrity"]["passed"] is True
    assert doc["transaction"] == "per-step"  # the concurrent index forces it
    assert isinstance(doc["duration_seconds"], float)
    cur = dbrev("current", "--migrations", str(examples_dir), url=database_url)
    assert cur.code == 0 and cur.json["revisions"] == ["f1a2b3c4d5e6"] and cur.json["at_head"] is True

    r = dbrev("apply", "--migrations", str(examples_dir), "-r", "-1", "--allow-downgrade", url=database_url)
    assert r.code == 0 and r.json["result"] == "applied" and r.json["direction"] == "downgrade"
    assert heads(database_url) == ["0a1b2c3d4e5f"]
    again = dbrev("apply", "--migrations", str(examples_dir), "-r", "0a1b2c3d4e5f", url=database_url)
    assert again.code == 0 and again.json["result"] == "noop"


def test_failure_in_the_middle_of_a_three_step_upgrade_leaves_the_start(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "r001aaaa", None,
                 'op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("name", sa.Text))', 'op.drop_table("accounts")')
    assert dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url).code == 0
    q(database_url, "INSERT INTO accounts (name) SELECT 'acct ' || g FROM generate_series(1, 500) g")
    write_script(d, "r002aaaa", "r001aaaa", 'op.add_column("accounts", sa.Column("email", sa.Text))\n'
                 'op.execute("UPDATE accounts SET name = upper(name)")', 'op.drop_column("accounts", "email")')
    broken = write_script(d, "r003aaaa", "r002aaaa",
                          'op.create_table("ledger", sa.Column("id", sa.Integer, primary_key=True))\n'
                          'op.execute("SELECT 1/0")', 'op.drop_table("ledger")', doc="broken step")
    line = broken.read_text().splitlines().index('    op.execute("SELECT 1/0")') + 1
    write_script(d, "r004aaaa", "r003aaaa", 'op.add_column("accounts", sa.Column("x", sa.Integer))',
                 'op.drop_column("accounts", "x")')
    r = dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url)
    assert r.code == 1, r.stdout + r.stderr
    doc = r.json
    assert doc["result"] == "rolled_back" and doc["transaction"] == "single"
    assert doc["error"]["step"] == "r003aaaa"
    assert doc["error"]["location"] == f"{broken.name}:{line}"  # the line of op.execute("SELECT 1/0")
    assert "division by zero" in doc["error"]["message"]
    assert doc["rollback"]["method"] == "transaction" and doc["rollback"]["success"] is True
    assert doc["current_revisions"] == ["r001aaaa"]
    assert heads(database_url) == ["r001aaaa"]
    rows = q(database_url, "SELECT count(*), min(name), max(name) FROM accounts")[0]
    assert rows == (500, "acct 1", "acct 99")  # untouched: the UPDATE was rolled back
    cols = {r[0] for r in q(database_url, "SELECT column_name FROM information_schema.columns "
                                          "WHERE table_name='accounts'")}
    assert cols == {"id", "name"}
    assert q(database_url, "SELECT to_regclass('ledger')")[0][0] is None
    logs = r.logs
    trig = [x for x in logs if x.get("event") == "rollback_triggered"]
    execd = [x for x in logs if x.get("event") == "rollback_executed"]
    assert trig and trig[0]["reason"] == "migration_failure" and trig[0]["from_version"] == "r004aaaa"
    assert trig[0]["to_version"] == "r001aaaa"
    assert execd and execd[0]["success"] is True
    err = [x for x in logs if x["level"] == "ERROR" and x["message"] == "Migration failed"]
    assert err and err[0]["error_type"] and "stack_trace" in err[0]


def test_per_step_run_failing_after_an_autocommit_step_is_undone_by_inverse_steps(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "p001aaaa", None, 'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("sku", sa.Text))', 'op.drop_table("items")')
    write_script(d, "p002aaaa", "p001aaaa",
                 'with op.get_context().autocommit_block():\n'
                 '    op.create_index("ix_items_sku", "items", ["sku"], postgresql_concurrently=True)',
                 'with op.get_context().autocommit_block():\n'
                 '    op.drop_index("ix_items_sku", table_name="items", postgresql_concurrently=True)')
    write_script(d, "p003aaaa", "p002aaaa", 'op.execute("SELECT no_such_function()")', "pass")
    plan = run_plan(str(d), "head", url=database_url)
    assert plan.json["transaction"] == "per-step"
    r = run_apply(str(d), "head", url=database_url)
    assert r.code == 1
    doc = r.json
    assert doc["result"] == "rolled_back"
    assert doc["rollback"]["method"] == "inverse_steps" and doc["rollback"]["success"] is True
    assert [s["revision"] for s in doc["rollback"]["steps"]] == ["p002aaaa", "p001aaaa"]
    assert heads(database_url) == []
    assert q(database_url, "SELECT to_regclass('items')")[0][0] is None
    assert doc["rollback"]["integrity"]["passed"] is True


def test_no_rollback_on_failure_leaves_per_step_progress(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "p001aaaa", None, 'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("items")')
    write_script(d, "p002aaaa", "p001aaaa",
                 'with op.get_context().autocommit_block():\n'
                 '    op.create_index("ix_items_id", "items", ["id"], postgresql_concurrently=True)', "pass")
    write_script(d, "p003aaaa", "p002aaaa", 'op.execute("SELECT 1/0")', "pass")
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--no-rollback-on-failure", url=database_url)
    assert r.code == 1 and r.json["result"] == "failed"
    assert heads(database_url) == ["p002aaaa"]


def test_downgrade_that_drops_a_column_is_refused_without_allow_data_loss(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "d001aaaa", None, 'op.create_table("people", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("people")')
    write_script(d, "d002aaaa", "d001aaaa", 'op.add_column("people", sa.Column("phone", sa.Text))',
                 'op.drop_column("people", "phone")')
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO people (phone) VALUES ('+1 555 0100')")
    r = run_apply(str(d), "d001aaaa", url=database_url, downgrade="Allow")
    assert r.code == 3, r.stdout
    assert r.json["result"] == "refused" and r.json["error"]["reason"] == "DataLossDenied"
    assert "DROP COLUMN phone" in r.json["error"]["message"]
    assert heads(database_url) == ["d002aaaa"]
    assert q(database_url, "SELECT phone FROM people")[0][0] == "+1 555 0100"
    r = run_apply(str(d), "d001aaaa", url=database_url)
    assert r.code == 3 and r.json["error"]["reason"] == "DowngradeDenied"
    r = run_apply(str(d), "d001aaaa", url=database_url, downgrade="Allow", data_loss="Allow")
    assert r.code == 0 and heads(database_url) == ["d001aaaa"]


def test_verification_failure_after_an_upgrade_rolls_back(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "v001aaaa", None, 'op.create_table("orders", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("note", sa.Text))', 'op.drop_table("orders")')
    assert dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url).code == 0
    q(database_url, "INSERT INTO orders (note) VALUES ('a'), ('b')")
    # a data migration that inserts explicit ids leaves the serial sequence behind
    write_script(d, "v002aaaa", "v001aaaa", 'op.execute("INSERT INTO orders (id, note) VALUES (100, \'imported\')")',
                 'op.execute("DELETE FROM orders WHERE id = 100")')
    r = dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url)
    assert r.code == 1, r.stdout
    doc = r.json
    assert doc["result"] == "rolled_back" and doc["error"]["reason"] == "IntegrityCheckFailed"
    assert doc["rollback"]["reason"] == "integrity_check_failure" and doc["rollback"]["success"]
    new = doc["integrity"]["new_findings"]
    assert new and new[0]["check"] == "sequences" and new[0]["object"].endswith("orders_id_seq")
    assert heads(database_url) == ["v001aaaa"]
    assert q(database_url, "SELECT count(*) FROM orders")[0][0] == 2
    trig = [x for x in r.logs if x.get("event") == "rollback_triggered"]
    assert trig and trig[0]["reason"] == "integrity_check_failure"


def test_undeclared_row_loss_is_caught(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "w001aaaa", None,
                 'op.create_table("events", sa.Column("id", sa.Integer, primary_key=True), sa.Column("k", sa.Text))',
                 'op.drop_table("events")')
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO events (k) SELECT 'x' FROM generate_series(1, 50)")
    # deletes rows through the connection: invisible to the offline SQL, so the plan cannot declare it
    write_script(d, "w002aaaa", "w001aaaa",
                 'conn = op.get_bind()\n'
                 'n = conn.execute(sa.text("SELECT count(*) FROM events")).scalar()\n'
                 'conn.execute(sa.text("DELETE FROM events WHERE id > :n"), {"n": n // 2})', "pass")
    r = run_apply(str(d), "head", url=database_url)
    # the step cannot render offline: it is classified online, and its deletes are refused before it commits
    assert r.code == 3 and r.json["result"] == "refused", r.stdout
    assert r.json["error"]["reason"] == "DataLossDenied" and "25 rows" in r.json["error"]["message"]
    assert q(database_url, "SELECT count(*) FROM events")[0][0] == 50


def test_two_concurrent_applies_never_both_migrate(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "c001aaaa", None, 'op.create_table("slow", sa.Column("id", sa.Integer, primary_key=True))\n'
                 'op.execute("SELECT pg_sleep(3)")', 'op.drop_table("slow")')
    a = popen("apply", "--migrations", str(d), "-r", "head", "--lock-timeout", "1", url=database_url)
    time.sleep(0.3)
    b = popen("apply", "--migrations", str(d), "-r", "head", "--lock-timeout", "1", url=database_url)
    out_a, _ = a.communicate(60)
    out_b, _ = b.communicate(60)
    import json

    results = sorted([json.loads(out_a)["result"], json.loads(out_b)["result"]])
    assert results.count("applied") == 1, results
    assert results[0] in ("busy", "noop") or results[1] in ("busy", "noop")
    codes = sorted([a.returncode, b.returncode])
    assert codes in ([0, 4], [0, 0])
    runs = q(database_url, "SELECT status FROM dbrev.runs")
    assert [r[0] for r in runs] == ["applied"]


def test_busy_result_names_the_lock_holder(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "c001aaaa", None, 'op.execute("SELECT pg_sleep(4)")', "pass")
    a = popen("apply", "--migrations", str(d), "-r", "head", url=database_url)
    deadline = time.time() + 20
    while time.time() < deadline:
        if q(database_url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(4)%' "
                           "AND pid <> pg_backend_pid()")[0][0]:
            break
        time.sleep(0.1)
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--lock-timeout", "0.5", url=database_url)
    a.communicate(60)
    assert r.code == 4 and r.json["result"] == "busy"
    assert "another migration" in r.json["error"]["message"] and "dbrev" in r.json["error"]["message"]


def _wait_for_query(url, text, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        n = q(url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE :t AND pid <> pg_backend_pid()",
              t=f"%{text}%")[0][0]
        if n:
            return
        time.sleep(0.1)
    raise AssertionError(f"query {text!r} never started")


def _worker_pids(parent_pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(parent_pid)], capture_output=True, text=True).stdout.split()
    return [int(x) for x in out]


def test_worker_killed_with_sigkill_mid_run_leaves_a_consistent_revision(database_url, tmp_path):
    d = tmp_path / "m"
    linear_history(d, 2)
    write_script(d, "r003aaaa", "r002aaaa",
                 'op.create_table("t3", sa.Column("id", sa.Integer, primary_key=True))\n'
                 'op.execute("SELECT pg_sleep(60)")', 'op.drop_table("t3")')
    assert dbrev("apply", "--migrations", str(d), "-r", "r001aaaa", url=database_url).code == 0
    p = popen("apply", "--migrations", str(d), "-r", "head", url=database_url)
    _wait_for_query(database_url, "pg_sleep(60)")
    workers = _worker_pids(p.pid)
    assert workers
    for w in workers:
        os.kill(w, signal.SIGKILL)
    out, _ = p.communicate(60)
    import json

    doc = json.loads(out)
    assert doc["result"] == "rolled_back" and p.returncode == 1
    assert doc["current_revisions"] == ["r001aaaa"]
    assert heads(database_url) == ["r001aaaa"]
    assert q(database_url, "SELECT to_regclass('t2'), to_regclass('t3')")[0] == (None, None)
    # the lock was released and the interrupted journal entry is noticed by the next run
    r = dbrev("apply", "--migrations", str(d), "-r", "r002aaaa", url=database_url)
    assert r.code == 0 and heads(database_url) == ["r002aaaa"]


def test_hard_timeout_kills_the_run_and_the_database_is_back_at_the_start(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "s001aaaa", None, 'op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("a")')
    write_script(d, "s002aaaa", "s001aaaa", 'op.execute("SELECT pg_sleep(120)")', "pass")
    t0 = time.monotonic()
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--timeout", "4", url=database_url)
    assert time.monotonic() - t0 < 40
    assert r.code == 1 and r.json["result"] == "rolled_back"
    assert r.json["error"]["reason"] == "TimedOut"
    assert heads(database_url) == []
    n = q(database_url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(120)%' "
                        "AND pid <> pg_backend_pid()")[0][0]
    assert n == 0


def test_table_lock_timeout_is_busy_and_changes_nothing(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "l001aaaa", None, 'op.create_table("hot", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("hot")')
    assert run_apply(str(d), "head", url=database_url).code == 0
    write_script(d, "l002aaaa", "l001aaaa", 'op.add_column("hot", sa.Column("x", sa.Integer))',
                 'op.drop_column("hot", "x")')
    with table_locked(database_url, "hot"):
        r = run_apply(str(d), "head", url=database_url, lock_timeout=1.0)
    assert r.code == 4 and r.json["result"] == "busy", r.stdout
    assert heads(database_url) == ["l001aaaa"]


def test_unknown_revision_in_the_database(database_url, tmp_path):
    d = tmp_path / "m"
    linear_history(d, 1)
    q(database_url, "CREATE TABLE alembic_version (version_num varchar(32) primary key); "
                    "INSERT INTO alembic_version VALUES ('deadbeef0000')")
    for cmd in (["apply", "-r", "head"], ["plan", "-r", "head"]):
        r = dbrev(*cmd, "--migrations", str(d), url=database_url)
        assert r.code == 2
        assert r.json["error"]["reason"] == "UnknownDatabaseRevision"
        assert "deadbeef0000" in r.json["error"]["message"] and r.json["error"]["hint"]


def test_plan_json_fields_and_plan_hash_binding(database_url, tmp_path):
    d = tmp_path / "m"
    linear_history(d, 3)
    p = run_plan(str(d), "head", url=database_url)
    assert p.code == 0
    doc = p.json
    assert doc["direction"] == "upgrade" and doc["hash"].startswith("sha256:")
    step = doc["steps"][0]
    assert {"revision", "destructive", "needs_autocommit", "sql"} <= set(step)
    assert "CREATE TABLE t1" in step["sql"]
    assert heads(database_url) == []  # planning changed nothing
    wrong = run_apply(str(d), "head", url=database_url, expected_hash="sha256:" + "0" * 64)
    assert wrong.code == 3 and wrong.json["error"]["reason"] == "PlanChanged"
    ok = run_apply(str(d), "head", url=database_url, expected_hash=doc["hash"])
    assert ok.code == 0 and ok.json["plan_hash"] == doc["hash"]


def test_scripts_importing_their_application_package(database_url, tmp_path):
    app = tmp_path / "src" / "shopapp"
    app.mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "schema.py").write_text("TABLE = 'app_settings'\nDEFAULTS = {'currency': 'EUR'}\n")
    d = tmp_path / "m"
    write_script(d, "i001aaaa", None, extra="from shopapp.schema import TABLE, DEFAULTS\n", upgrade=
                 'op.create_table(TABLE, sa.Column("k", sa.Text, primary_key=True), sa.Column("v", sa.Text))\n'
                 'for k, v in DEFAULTS.items():\n'
                 '    op.execute(sa.text(f"INSERT INTO {TABLE} VALUES (:k, :v)").bindparams(k=k, v=v))',
                 downgrade='op.drop_table("app_settings")')
    r = run_apply(str(d), "head", url=database_url)
    assert r.code == 2 and r.json["error"]["reason"] == "InvalidScripts"
    assert "shopapp" in r.json["error"]["message"] and "--pythonpath" in r.json["error"]["hint"]
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--pythonpath", str(tmp_path / "src"),
              url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    assert q(database_url, "SELECT v FROM app_settings WHERE k='currency'")[0][0] == "EUR"
    r = dbrev("apply", "--migrations", str(d), "-r", "base", "--allow-downgrade", "--allow-data-loss",
              url=database_url, env={"PYTHONPATH": str(tmp_path / "src")})
    assert r.code == 0, r.stdout + r.stderr


def test_an_import_inside_upgrade_that_fails_is_bad_input(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "i001aaaa", None, "import not_installed_pkg_xyz\nop.execute('SELECT 1')")
    r = run_apply(str(d), "head", url=database_url)
    assert r.code == 2 and r.json["error"]["reason"] == "InvalidScripts"
    assert "not_installed_pkg_xyz" in r.json["error"]["message"] and ".py:" in r.json["error"]["message"]
    assert heads(database_url) == []


def test_a_table_rename_is_not_row_loss(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "n001aaaa", None, 'op.create_table("a", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("a")')
    write_script(d, "n002aaaa", "n001aaaa", 'op.rename_table("a", "b")', 'op.rename_table("b", "a")')
    assert run_apply(str(d), "n001aaaa", url=database_url).code == 0
    q(database_url, "INSERT INTO a DEFAULT VALUES")
    r = run_apply(str(d), "head", url=database_url)
    assert r.code == 0 and r.json["result"] == "applied", r.stdout
    r = run_apply(str(d), "n001aaaa", url=database_url, downgrade="Allow")
    assert r.code == 0 and q(database_url, "SELECT count(*) FROM a")[0][0] == 1


def test_a_fresh_install_that_replaces_its_own_tables_is_not_data_loss(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "f001aaaa", None, 'op.create_table("tmp_import", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("tmp_import")')
    write_script(d, "f002aaaa", "f001aaaa", 'op.drop_table("tmp_import")',
                 'op.create_table("tmp_import", sa.Column("id", sa.Integer, primary_key=True))')
    r = run_apply(str(d), "head", url=database_url)
    assert r.code == 0, r.stdout
    # once the table existed before the run and holds rows, dropping it is data loss again
    assert run_apply(str(d), "f001aaaa", url=database_url, downgrade="Allow").code == 0
    q(database_url, "INSERT INTO tmp_import DEFAULT VALUES")
    r = run_apply(str(d), "head", url=database_url)
    assert r.code == 3 and r.json["error"]["reason"] == "DataLossDenied"


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg2", ""])
def test_application_urls_with_other_drivers_work(database_url, tmp_path, driver):
    url = database_url.replace("postgresql+psycopg://", f"postgresql{'+' + driver if driver else ''}://")
    r = dbrev("current", url=url + ("?ssl=disable" if driver == "asyncpg" else ""))
    assert r.code == 0, r.stdout + r.stderr
    assert r.json["revisions"] == []


def test_isolated_worker_gets_a_minimal_environment_and_still_times_out(database_url, tmp_path, monkeypatch):
    """The operator's path: a fresh interpreter with only the request, killed on timeout."""
    from dbrev.engine.verbs import apply
    from dbrev.core.options import DbOptions, Policy, RunRequest

    d = tmp_path / "m"
    write_script(d, "z001aaaa", None, 'import os\nassert "KUBECONFIG" not in os.environ and '
                 '"DBREV_SECRET_TOKEN" not in os.environ\n'
                 'op.create_table("z", sa.Column("id", sa.Integer, primary_key=True))', 'op.drop_table("z")')
    write_script(d, "z002aaaa", "z001aaaa", 'op.execute("SELECT pg_sleep(60)")', "pass")
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    monkeypatch.setenv("DBREV_SECRET_TOKEN", "operator-only")
    req = RunRequest(db=DbOptions(url=database_url), migrations=str(d), target="z001aaaa", policy=Policy())
    assert apply(req, timeout=60, isolate=True).result == "applied"
    req = RunRequest(db=DbOptions(url=database_url), migrations=str(d), target="head", policy=Policy())
    t0 = time.monotonic()
    result = apply(req, timeout=3, isolate=True)
    assert time.monotonic() - t0 < 30
    assert result.result == "rolled_back" and result.error.reason == "TimedOut"
    assert heads(database_url) == ["z001aaaa"]
