"""`dbrev rollback` end to end on real PostgreSQL: the runbook as one command."""

from __future__ import annotations

from clihelp import dbrev
from enginehelp import run_apply
from dbhelp import heads, q
from scriptgen import linear_history, write_script

R1, R2, R3 = "r001aaaa", "r002aaaa", "r003aaaa"


def _indexed_history(d):
    """r1 creates table t with rows; r2 and r3 add indexes (their downgrades lose no data)."""
    write_script(d, R1, None,
                 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True), sa.Column("a", sa.Integer),'
                 ' sa.Column("b", sa.Integer))\nop.execute("INSERT INTO t (a, b) SELECT g, g FROM generate_series(1, 5) g")',
                 'op.drop_table("t")', doc="create t")
    write_script(d, R2, R1, 'op.create_index("t_a", "t", ["a"])', 'op.drop_index("t_a", "t")', doc="index a")
    write_script(d, R3, R2, 'op.create_index("t_b", "t", ["b"])', 'op.drop_index("t_b", "t")', doc="index b")


def _records(res, event):
    return [r for r in res.logs if r.get("event") == event]


def test_default_target_is_the_revision_before_the_last_applied_run(database_url, tmp_path):
    d = tmp_path / "m"
    _indexed_history(d)
    assert dbrev("apply", "--migrations", str(d), "-r", R1, url=database_url).code == 0
    assert dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url).code == 0  # one run: r1 -> r3

    res = dbrev("rollback", "--migrations", str(d), "--reason", "health_check_failure",
                "--deployment-id", "deploy-42", "--log-level", "info", url=database_url)
    assert res.code == 0, res.stdout + res.stderr
    doc = res.json
    # the run before the last one ended at r1: not -1 (r2)
    assert doc["assessment"]["target"] == R1 and doc["assessment"]["target_source"] == "journal"
    assert doc["result"] == "applied" and doc["success"] is True
    assert doc["integrity"]["passed"] is True
    assert doc["reason"] == "health_check_failure" and doc["deployment_id"] == "deploy-42"
    assert heads(database_url) == [R1]
    assert q(database_url, "SELECT count(*) FROM t")[0][0] == 5
    assert q(database_url, "SELECT count(*) FROM pg_indexes WHERE tablename='t' AND indexname IN ('t_a', 't_b')")[0][0] == 0

    trig, = _records(res, "rollback_triggered")
    assert (trig["reason"], trig["from_version"], trig["to_version"], trig["deployment_id"]) == \
        ("health_check_failure", R3, R1, "deploy-42")
    done, = _records(res, "rollback_executed")
    assert (done["from_version"], done["to_version"], done["success"], done["deployment_id"]) == \
        (R3, R1, True, "deploy-42")
    # every record of the run carries the deployment id (log context, through the worker)
    started = [r for r in res.logs if r.get("status") == "started"]
    assert started and all(r.get("deployment_id") == "deploy-42" for r in started)
    assert all(r.get("deployment_id") == "deploy-42" for r in res.logs)
    # the journal shows the rollback as dbrev's run
    runs = dbrev("history", "--migrations", str(d), "--runs", "1", url=database_url).json["runs"]
    assert runs[0]["direction"] == "downgrade" and "rollback" in runs[0]["actor"]


def test_rolling_back_twice_goes_two_releases_back_and_data_loss_is_refused_without_flags(database_url, tmp_path):
    d = tmp_path / "m"
    _indexed_history(d)
    assert run_apply(str(d), R1, url=database_url).code == 0
    assert run_apply(str(d), "head", url=database_url).code == 0
    assert dbrev("rollback", "--migrations", str(d), url=database_url).code == 0  # r3 -> r1
    # the next rollback undoes the first run (base -> r1): dropping t loses its rows
    res = dbrev("rollback", "--migrations", str(d), "--deployment-id", "d7", url=database_url)
    assert res.code == 3, res.stdout + res.stderr
    assert res.json["result"] == "refused" and res.json["error"]["reason"] == "DataLossDenied"
    assert res.json["assessment"]["target"] == "base"
    assert [x["kind"] for x in res.json["assessment"]["loses"]] == ["drop_table"]
    assert heads(database_url) == [R1] and q(database_url, "SELECT count(*) FROM t")[0][0] == 5
    done, = _records(res, "rollback_executed")
    assert done["success"] is False and done["result"] == "refused" and done["deployment_id"] == "d7"
    text = dbrev("rollback", "--migrations", str(d), url=database_url, json_out=False)
    assert text.code == 3 and "--allow-data-loss" in text.stdout and "would lose" in text.stdout

    res = dbrev("rollback", "--migrations", str(d), "--archive", url=database_url)
    assert res.code == 0, res.stdout + res.stderr
    assert heads(database_url) == []
    assert q(database_url, "SELECT sum(rows) FROM dbrev.archive_manifest")[0][0] == 5


def test_to_a_revision_or_relative(database_url, tmp_path):
    d = tmp_path / "m"
    _indexed_history(d)
    assert run_apply(str(d), "head", url=database_url).code == 0
    res = dbrev("rollback", "--migrations", str(d), "--to", "-1", url=database_url)
    assert res.code == 0 and heads(database_url) == [R2]
    assert res.json["assessment"]["target_source"] == "requested"
    assert dbrev("rollback", "--migrations", str(d), "--to", R1[:5], url=database_url).code == 0
    assert heads(database_url) == [R1]
    # a rollback never goes up
    res = dbrev("rollback", "--migrations", str(d), "--to", "head", url=database_url)
    assert res.code == 2 and "goes down" in res.json["error"]["message"] and heads(database_url) == [R1]
    # an unknown target: bad input, nothing changed
    res = dbrev("rollback", "--migrations", str(d), "--to", "nosuchrev", url=database_url)
    assert res.code == 2 and heads(database_url) == [R1]


def test_dry_run_shows_the_plan_and_changes_nothing(database_url, tmp_path):
    d = tmp_path / "m"
    linear_history(d, 2)
    assert run_apply(str(d), R1, url=database_url).code == 0
    assert run_apply(str(d), R2, url=database_url).code == 0
    res = dbrev("rollback", "--migrations", str(d), "--dry-run", url=database_url)
    assert res.code == 0 and res.json["result"] == "planned"
    assert res.json["assessment"]["plan"]["to_revisions"] == [R1]
    assert res.json["decision"]["allowed"] is False  # dropping t2 under Deny
    assert not _records(res, "rollback_triggered")
    assert heads(database_url) == [R2] and q(database_url, "SELECT count(*) FROM t2")[0][0] == 1
    text = dbrev("rollback", "--migrations", str(d), "--dry-run", url=database_url, json_out=False)
    assert "dry run: nothing changed" in text.stdout and "would be refused" in text.stdout
    assert f"downgrade {R2}" in text.stdout


def test_nothing_to_roll_back(database_url, tmp_path):
    d = tmp_path / "m"
    _indexed_history(d)
    # at base: nothing to do, exit 0 (as apply's noop)
    res = dbrev("rollback", "--migrations", str(d), url=database_url)
    assert res.code == 0 and res.json["result"] == "noop" and "nothing to roll back" in res.json["message"]
    assert not _records(res, "rollback_triggered")
    # already at the requested target: noop too
    assert run_apply(str(d), R2, url=database_url).code == 0
    res = dbrev("rollback", "--migrations", str(d), "--to", R2, url=database_url)
    assert res.code == 0 and res.json["result"] == "noop"
    # at a revision no journaled run ended at (moved outside dbrev): no safe default, exit 2, unchanged
    q(database_url, "DELETE FROM dbrev.runs")
    res = dbrev("rollback", "--migrations", str(d), url=database_url)
    assert res.code == 2 and "--to" in res.json["error"]["hint"] and heads(database_url) == [R2]
