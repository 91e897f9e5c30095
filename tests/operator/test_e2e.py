"""The operator end to end: a real cluster, real PostgreSQL, `dbrev operator` as a Pod (or a process: conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dbhelp import heads, q
from opharness import condition, dbrev_resource, is_state, ready_at, wait_for
from scriptgen import write_script

pytestmark = pytest.mark.cluster

HEAD = "f1a2b3c4d5e6"
MERGE = "e5f6a7b8c9d0"


@pytest.fixture
def shop(kube, namespace, database_url, examples_dir):
    """A namespace with the example migrations in a ConfigMap and the database URL in a Secret."""
    kube.secret_url(namespace, "db", database_url)
    kube.configmap_from(namespace, "migrations", examples_dir)
    return namespace



def test_apply_upgrade_and_gitops_revert(kube, shop, database_url, start_operator):
    op = start_operator([shop])
    kube.apply(dbrev_resource(shop, "orders", MERGE, policy={"dataLoss": "Allow"}))
    st = ready_at(kube, shop, "orders", MERGE)
    assert st["targetRevision"] == MERGE and st["observedGeneration"] == 1
    assert {c["type"]: c["status"] for c in st["conditions"]} == {"Ready": "True", "Reconciling": "False",
                                                                   "Stalled": "False"}
    assert st["plan"]["direction"] == "upgrade" and len(st["plan"]["steps"]) == 5
    assert st["plan"]["hash"].startswith("sha256:") and st["plan"]["transaction"] == "single"
    assert st["integrity"]["passed"] is True and st["integrity"]["fingerprint"].startswith("sha256:")
    assert st["history"][0]["result"] == "applied" and st["history"][0]["trigger"] == "create"
    assert st["databaseKey"].startswith("sha256:")
    assert heads(database_url) == [MERGE]
    assert ["Planned", "Applying", "Applied"] == [r for r in kube.reasons(shop, "orders")
                                                  if r in ("Planned", "Applying", "Applied")]

    # a new revision in git: upgrade
    kube("patch", "dbrev", "orders", "-n", shop, "--type", "merge", "-p", json.dumps({"spec": {"revision": "head"}}))
    st = ready_at(kube, shop, "orders", HEAD)
    assert st["plan"]["transaction"] == "per-step" and st["observedGeneration"] == 2
    assert heads(database_url) == [HEAD]
    assert st["history"][0]["trigger"] == "spec" and st["history"][0]["direction"] == "upgrade"

    # the GitOps revert: spec.revision goes back
    kube("patch", "dbrev", "orders", "-n", shop, "--type", "merge", "-p", json.dumps({"spec": {"revision": MERGE}}))
    st = ready_at(kube, shop, "orders", MERGE)
    assert st["history"][0]["direction"] == "downgrade" and st["history"][0]["result"] == "applied"
    assert [h["direction"] for h in st["history"]] == ["downgrade", "upgrade", "upgrade"]
    assert heads(database_url) == [MERGE]
    assert q(database_url, "SELECT to_regclass('ix_orders_created_at')")[0][0] is None
    assert op.metric("dbrev_ready", namespace=shop, name="orders") == 1
    assert op.metric("dbrev_revision_info", namespace=shop, name="orders", current=MERGE, target=MERGE) == 1
    assert op.metric("dbrev_migration_steps_total", direction="downgrade", result="applied") >= 2
    assert op.metric("dbrev_reconcile_total", result="applied") >= 3
    # a pass with nothing to do writes nothing
    rv = kube.get(shop, "orders")["metadata"]["resourceVersion"]
    time.sleep(5)  # two timer ticks
    assert kube.get(shop, "orders")["metadata"]["resourceVersion"] == rv


def test_denied_downgrade_is_stalled_and_changes_nothing(kube, shop, database_url, start_operator):
    start_operator([shop])
    kube.apply(dbrev_resource(shop, "orders", HEAD, policy={"downgrade": "Deny"}))
    ready_at(kube, shop, "orders", HEAD)
    before = q(database_url, "SELECT count(*) FROM information_schema.columns WHERE table_schema='public'")
    kube("patch", "dbrev", "orders", "-n", shop, "--type", "merge", "-p", json.dumps({"spec": {"revision": MERGE}}))
    st = wait_for(lambda: (s := kube.status(shop, "orders")) and condition(s, "Stalled").get("status") == "True"
                  and s, 60, "Stalled")
    assert condition(st, "Stalled")["reason"] == "DowngradeDenied"
    assert condition(st, "Ready") == {**condition(st, "Ready"), "status": "False", "reason": "DowngradeDenied"}
    assert condition(st, "Reconciling")["status"] == "False"
    assert "spec.policy.downgrade" in condition(st, "Ready")["message"]
    assert st["observedGeneration"] == 2 and st["currentRevision"] == HEAD
    assert st["lastError"]["reason"] == "DowngradeDenied"
    assert heads(database_url) == [HEAD]
    assert q(database_url, "SELECT count(*) FROM information_schema.columns WHERE table_schema='public'") == before
    assert "Blocked" in kube.reasons(shop, "orders")


def test_approval_flow_with_a_stale_approval(kube, shop, database_url, start_operator):
    start_operator([shop])
    kube.apply(dbrev_resource(shop, "orders", HEAD, policy={"downgrade": "RequireApproval", "dataLoss": "Allow"}))
    ready_at(kube, shop, "orders", HEAD)
    kube("patch", "dbrev", "orders", "-n", shop, "--type", "merge", "-p", json.dumps({"spec": {"revision": MERGE}}))
    st = wait_for(lambda: (s := kube.status(shop, "orders")) and is_state(s, "False", "AwaitingApproval") and s,
                  60, "AwaitingApproval")
    assert condition(st, "Stalled")["status"] == "False" and condition(st, "Reconciling")["status"] == "False"
    assert "kubectl annotate databaserevision orders" in condition(st, "Ready")["message"]
    plan_a = st["plan"]["hash"]
    assert plan_a in condition(st, "Ready")["message"]
    assert heads(database_url) == [HEAD]
    # an approval for another plan does not run this one
    kube("annotate", "dbrev", "orders", "-n", shop, "--overwrite", "dbrev.io/approve=sha256:" + "0" * 64)
    st = wait_for(lambda: (s := kube.status(shop, "orders")) and "different plan" in condition(s, "Ready")["message"]
                  and s, 30, "stale approval noticed")
    assert is_state(st, "False", "AwaitingApproval") and heads(database_url) == [HEAD]
    # the target changes after plan A was reviewed: a new plan needs a new approval
    kube("patch", "dbrev", "orders", "-n", shop, "--type", "merge", "-p",
         json.dumps({"spec": {"revision": "d9e0f1a2b3c4"}}))
    st = wait_for(lambda: (s := kube.status(shop, "orders")) and s.get("observedGeneration") == 3
                  and is_state(s, "False", "AwaitingApproval") and s, 60, "a new plan awaiting approval")
    plan_b = st["plan"]["hash"]
    assert plan_b != plan_a
    kube("annotate", "dbrev", "orders", "-n", shop, "--overwrite", f"dbrev.io/approve={plan_a}")
    time.sleep(4)
    assert heads(database_url) == [HEAD] and is_state(kube.status(shop, "orders"), "False", "AwaitingApproval")
    # `dbrev approve` approves exactly the waiting plan
    out = subprocess.run([sys.executable, "-m", "dbrev", "approve", "orders", "-n", shop, "--json"],
                         capture_output=True, text=True, env={**__import__("os").environ,
                                                              "KUBECONFIG": kube.kubeconfig})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["approved"] == plan_b
    st = ready_at(kube, shop, "orders", "d9e0f1a2b3c4")
    assert st["history"][0]["planHash"] == plan_b and st["history"][0]["trigger"] == "approval"
    again = subprocess.run([sys.executable, "-m", "dbrev", "approve", "orders", "-n", shop], capture_output=True,
                           text=True, env={**__import__("os").environ, "KUBECONFIG": kube.kubeconfig})
    assert again.returncode == 2 and "not waiting for an approval" in again.stderr


def test_failing_migration_is_rolled_back_stalled_with_events_and_metrics(kube, namespace, database_url,
                                                                          start_operator, tmp_path):
    d = tmp_path / "m"
    write_script(d, "a001aaaa", None, 'op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("accounts")')
    write_script(d, "a002aaaa", "a001aaaa", 'op.add_column("accounts", sa.Column("email", sa.Text))',
                 'op.drop_column("accounts", "email")')
    write_script(d, "a003aaaa", "a002aaaa", 'op.execute("SELECT * FROM no_such_table")', "pass", doc="broken")
    kube.secret_url(namespace, "db", database_url)
    kube.configmap_from(namespace, "migrations", d)
    op = start_operator([namespace])
    kube.apply(dbrev_resource(namespace, "acct", "a001aaaa"))
    ready_at(kube, namespace, "acct", "a001aaaa")
    kube("patch", "dbrev", "acct", "-n", namespace, "--type", "merge", "-p", json.dumps({"spec": {"revision": "head"}}))
    st = wait_for(lambda: (s := kube.status(namespace, "acct")) and condition(s, "Stalled").get("status") == "True"
                  and s, 60, "Stalled after the failure")
    assert condition(st, "Stalled")["reason"] == "RolledBack"
    msg = condition(st, "Ready")["message"]
    assert "no_such_table" in msg and "a003aaaa" in msg and "rolled back to a001aaaa" in msg
    assert st["lastError"]["step"] == "a003aaaa" and st["lastError"]["location"].startswith("a003aaaa")
    assert st["currentRevision"] == "a001aaaa" and heads(database_url) == ["a001aaaa"]
    assert st["history"][0]["result"] == "rolled_back"
    reasons = kube.reasons(namespace, "acct")
    for r in ("MigrationFailed", "RollbackTriggered", "RollbackExecuted"):
        assert r in reasons, reasons
    assert op.metric("dbrev_rollbacks_total", namespace=namespace, name="acct", trigger="migration_failure",
                     result="success") == 1
    assert op.metric("dbrev_rollbacks_total", namespace=namespace, name="acct", result="failure") == 0
    # no namespace label on this counter: in Pod mode the session's one operator may still be finishing an earlier
    # test's pass (the namespaced counters above are exact)
    assert op.metric("dbrev_reconcile_total", result="rolled_back") >= 1
    assert op.metric("dbrev_stalled", namespace=namespace, name="acct") == 1
    logs = op.logs()
    assert any(r.get("event") == "rollback_triggered" and r.get("namespace") == namespace for r in logs)
    assert any(r.get("event") == "rollback_executed" and r.get("success") is True for r in logs)

    # fixing the script in the ConfigMap reconciles by itself
    write_script(d, "a003aaaa", "a002aaaa", 'op.create_table("ledger", sa.Column("id", sa.Integer, '
                 'primary_key=True))', 'op.drop_table("ledger")', doc="broken")
    kube.configmap_from(namespace, "migrations", d)
    st = ready_at(kube, namespace, "acct", "a003aaaa")
    assert st["history"][0]["trigger"] == "configmap/migrations"
    assert st.get("lastError") is None
    assert op.metric("dbrev_stalled", namespace=namespace, name="acct") == 0


def test_killing_the_operator_mid_run_ends_consistent(kube, namespace, database_url, start_operator, tmp_path,
                                                      operator_mode):
    d = tmp_path / "m"
    write_script(d, "k001aaaa", None, 'op.create_table("t1", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("t1")')
    write_script(d, "k002aaaa", "k001aaaa", 'op.create_table("t2", sa.Column("id", sa.Integer, primary_key=True))\n'
                 'op.execute("SELECT pg_sleep(6)")', 'op.drop_table("t2")')
    kube.secret_url(namespace, "db", database_url)
    kube.configmap_from(namespace, "migrations", d)
    op = start_operator([namespace])
    kube.apply(dbrev_resource(namespace, "k", "head"))
    wait_for(lambda: q(database_url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(6)%' "
                                     "AND pid <> pg_backend_pid()")[0][0], 60, "the slow step to start")
    op.kill()
    # the backend goes away: in process, the worker died with the operator and PostgreSQL rolled the open
    # transaction back; in a Job, the migration goes on without the operator and finishes
    wait_for(lambda: not q(database_url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(6)%' "
                                         "AND pid <> pg_backend_pid()")[0][0], 30, "the backend to go away")
    in_job = operator_mode != "process"
    if in_job:
        wait_for(lambda: heads(database_url) == ["k002aaaa"], 60, "the Job to finish without the operator")
    else:
        assert heads(database_url) == []
    st = kube.status(namespace, "k")
    assert condition(st, "Reconciling")["status"] == "True"  # it said it was working
    start_operator([namespace])
    st = ready_at(kube, namespace, "k", "k002aaaa", timeout=120)
    assert heads(database_url) == ["k002aaaa"]
    runs = q(database_url, "SELECT status FROM dbrev.runs ORDER BY id")
    # in a Job nothing was interrupted: one run, which the next operator reports (adopted, or seen as done)
    assert [r[0] for r in runs] == (["applied"] if in_job else ["interrupted", "applied"])


def test_database_outage_recovers_by_itself(kube, namespace, start_operator, examples_dir, new_postgres):
    from dbrev.pg.ephemeral import create_database

    server = new_postgres().start()
    try:
        url = create_database(server.url())
        kube.secret_url(namespace, "db", url)
        kube.configmap_from(namespace, "migrations", examples_dir)
        op = start_operator([namespace])
        server.stop()
        kube.apply(dbrev_resource(namespace, "orders", MERGE, database={
            "urlSecretRef": {"name": "db"}, "connectTimeoutSeconds": 1}))
        st = wait_for(lambda: (s := kube.status(namespace, "orders")) and is_state(s, "False", "DatabaseUnavailable")
                      and s, 60, "DatabaseUnavailable")
        assert condition(st, "Reconciling")["status"] == "True" and condition(st, "Stalled")["status"] == "False"
        assert "retrying in" in condition(st, "Ready")["message"]
        assert "Retrying" in kube.reasons(namespace, "orders")
        server.start()
        st = ready_at(kube, namespace, "orders", MERGE, timeout=120)
        assert op.metric("dbrev_reconcile_total", result="transient_error") >= 1
        assert "Recovered" in kube.reasons(namespace, "orders") or "Applied" in kube.reasons(namespace, "orders")
    finally:
        server.cleanup()


def test_bad_inputs_are_stalled_with_a_reason_and_recover(kube, namespace, database_url, examples_dir,
                                                          start_operator):
    start_operator([namespace])
    kube.apply(dbrev_resource(namespace, "orders", MERGE))
    st = wait_for(lambda: (s := kube.status(namespace, "orders")) and condition(s, "Stalled").get("status") == "True"
                  and s, 60, "SecretNotFound")
    assert condition(st, "Ready")["reason"] == "SecretNotFound"
    assert "create the Secret" in condition(st, "Ready")["message"]
    kube.secret_url(namespace, "db", database_url)  # the Secret appears: reconciles by itself
    st = wait_for(lambda: (s := kube.status(namespace, "orders")) and condition(s, "Ready").get("reason")
                  == "ConfigMapNotFound" and s, 60, "ConfigMapNotFound")
    kube.configmap_from(namespace, "migrations", examples_dir)
    ready_at(kube, namespace, "orders", MERGE)
    kube("patch", "dbrev", "orders", "-n", namespace, "--type", "merge", "-p",
         json.dumps({"spec": {"revision": "abcdef99"}}))
    st = wait_for(lambda: (s := kube.status(namespace, "orders")) and condition(s, "Ready").get("reason")
                  == "RevisionNotFound" and s, 60, "RevisionNotFound")
    assert condition(st, "Stalled")["status"] == "True" and heads(database_url) == [MERGE]
    # a wrong password: Stalled, and the password never shows anywhere
    wrong = database_url.replace("postgresql+psycopg://postgres@", "postgresql+psycopg://nobody_xyz:Wr0ngPassw0rd@")
    kube.secret_url(namespace, "db", wrong)
    st = wait_for(lambda: (s := kube.status(namespace, "orders")) and condition(s, "Ready").get("reason")
                  in ("DatabaseAuthFailed",) and s, 60, "DatabaseAuthFailed")
    everything = json.dumps(kube.get(namespace, "orders")) + json.dumps(kube.events(namespace))
    assert "Wr0ngPassw0rd" not in everything


def test_two_resources_for_one_database_conflict(kube, shop, database_url, start_operator):
    start_operator([shop])
    kube.apply(dbrev_resource(shop, "first", MERGE))
    ready_at(kube, shop, "first", MERGE)
    kube.apply(dbrev_resource(shop, "second", "head"))
    st = wait_for(lambda: (s := kube.status(shop, "second")) and condition(s, "Stalled").get("status") == "True"
                  and s, 60, "Conflict")
    assert condition(st, "Ready")["reason"] == "Conflict" and f"{shop}/first" in condition(st, "Ready")["message"]
    assert heads(database_url) == [MERGE]


def test_suspend_and_delete_never_touch_the_database(kube, shop, database_url, start_operator):
    op = start_operator([shop])
    kube.apply(dbrev_resource(shop, "orders", MERGE))
    ready_at(kube, shop, "orders", MERGE)
    kube("patch", "dbrev", "orders", "-n", shop, "--type", "merge", "-p",
         json.dumps({"spec": {"suspend": True, "revision": "head"}}))
    st = wait_for(lambda: (s := kube.status(shop, "orders")) and condition(s, "Reconciling").get("reason")
                  == "Suspended" and s, 60, "Suspended")
    assert condition(st, "Ready")["status"] == "True"  # unchanged while suspended
    assert op.metric("dbrev_ready", namespace=shop, name="orders") == 1  # and the metric agrees
    assert heads(database_url) == [MERGE]
    kube("delete", "dbrev", "orders", "-n", shop, "--wait=true", "--timeout=30s")
    assert heads(database_url) == [MERGE]
    assert q(database_url, "SELECT count(*) FROM customers")[0][0] == 0


def test_kubectl_get_and_explain_read_well(kube, shop, start_operator):
    start_operator([shop])
    kube.apply(dbrev_resource(shop, "orders", MERGE))
    ready_at(kube, shop, "orders", MERGE)
    out = kube("get", "dbrev", "-n", shop)
    header, row = out.splitlines()[:2]
    assert header.split() == ["NAME", "TARGET", "CURRENT", "READY", "REASON", "AGE"]
    assert row.split()[:5] == ["orders", MERGE, MERGE, "True", "AtRevision"]
    wide = kube("get", "dbrev", "-n", shop, "-o", "wide")
    assert "DIRECTION" in wide and "PLAN" in wide and "sha256:" in wide
    explain = kube("explain", "databaserevision.spec")
    for text in ("revision", "GitOps revert", "urlSecretRef", "policy", "driftCheckInterval"):
        assert text in explain
    assert "RequireApproval" in kube("explain", "databaserevision.spec.policy.downgrade")
    # CEL validation says what is wrong
    code, _, err = kube("apply", "-f", "-", check=False, input=json.dumps(dbrev_resource(
        shop, "bad", "head", database={"urlSecretRef": {"name": "a"},
                                       "credentials": {"host": "h", "database": "d", "user": "u",
                                                       "passwordSecretRef": {"name": "p"}}})))
    assert code != 0 and "exactly one of database.urlSecretRef or database.credentials" in err
    code, _, err = kube("apply", "-f", "-", check=False, input=json.dumps(dbrev_resource(shop, "bad", "not a rev!")))
    assert code != 0 and "spec.revision must be a revision id" in err
    # the version table names the history: it cannot be changed under a live resource
    code, _, err = kube("patch", "dbrev", "orders", "-n", shop, "--type", "merge", "-p",
                        json.dumps({"spec": {"migrations": {"versionTable": "other_version"}}}), check=False)
    assert code != 0 and "cannot change" in err


def test_drift_found_by_the_timer(kube, shop, database_url, start_operator):
    op = start_operator([shop])
    kube.apply(dbrev_resource(shop, "orders", MERGE, policy={"dataLoss": "Allow"}, driftCheckInterval="2s"))
    ready_at(kube, shop, "orders", MERGE)
    q(database_url, "ALTER TABLE customers ADD COLUMN hand_made int")
    st = wait_for(lambda: (s := kube.status(shop, "orders")) and any(
        f["check"] == "drift" for f in (s.get("integrity") or {}).get("findings", [])) and s, 60, "drift finding")
    assert is_state(st, "True", "AtRevision")
    assert "DriftDetected" in kube.reasons(shop, "orders")
    assert op.metric("dbrev_drift_detected", namespace=shop, name="orders") == 1
    # someone migrates by hand: the timer notices and brings it back
    from clihelp import dbrev as cli

    examples = Path(__file__).resolve().parents[2] / "examples" / "migrations"
    assert cli("apply", "--migrations", str(examples), "-r", "head", url=database_url).code == 0
    st = wait_for(lambda: (s := kube.status(shop, "orders")) and s["history"][0]["trigger"] == "drift" and s,
                  90, "the timer to bring the database back")
    assert st["history"][0]["direction"] == "downgrade" and is_state(st, "True", "AtRevision")
    assert heads(database_url) == [MERGE]


def test_deployment_id_in_history_events_and_logs(kube, shop, database_url, start_operator):
    """Issue 13 §3: the dbrev.io/deployment-id annotation (CI stamps it) follows the run everywhere."""
    op = start_operator([shop])
    body = dbrev_resource(shop, "orders", MERGE, policy={"dataLoss": "Allow"})
    body["metadata"]["annotations"] = {"dbrev.io/deployment-id": "release-2026.12.02-1"}
    kube.apply(body)
    st = ready_at(kube, shop, "orders", MERGE)
    assert st["history"][0]["deploymentId"] == "release-2026.12.02-1"
    applied = [e for e in kube.events(shop, "orders") if e["reason"] == "Applied"]
    assert applied and "(deployment release-2026.12.02-1)" in applied[-1]["message"]
    run_logs = [r for r in op.logs() if r.get("run_id") is not None]
    assert run_logs and all(r.get("deployment_id") == "release-2026.12.02-1" for r in run_logs)

    # the next release, stamped by Argo CD only: the tracking id names the application
    kube("annotate", "dbrev", "orders", "-n", shop, "dbrev.io/deployment-id-",
         "argocd.argoproj.io/tracking-id=shop:dbrev.io/DatabaseRevision:" + shop + "/orders")
    kube("patch", "dbrev", "orders", "-n", shop, "--type", "merge", "-p", json.dumps({"spec": {"revision": "head"}}))
    st = ready_at(kube, shop, "orders", HEAD)
    assert st["history"][0]["deploymentId"] == "argocd:shop"
    assert st["history"][1]["deploymentId"] == "release-2026.12.02-1"
