"""Rehearsed downgrades through the operator (issue 14): status.rollbackReadiness, the RollbackNotReady
Event, the dbrev_rollback_readiness metric, the -o wide column, and a GitOps revert's plan showing the
readiness recorded when the upgrade ran.  Real kube-apiserver, real PostgreSQL, `dbrev operator` as a process."""

from __future__ import annotations

import json

import pytest

from dbhelp import heads
from opharness import condition, dbrev_resource, ready_at, wait_for
from scriptgen import write_script

pytestmark = pytest.mark.cluster



def test_readiness_in_status_metric_wide_column_and_a_reverts_plan(kube, namespace, database_url, start_operator,
                                                                   tmp_path):
    d = tmp_path / "m"
    write_script(d, "p001aaaa", None,
                 'op.create_table("users", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))\n'
                 'op.execute("INSERT INTO users (name) VALUES (\'a\'), (\'b\'), (\'c\')")',
                 'op.drop_table("users")')
    write_script(d, "p002aaaa", "p001aaaa",
                 'op.add_column("users", sa.Column("nick", sa.Text))\nop.execute("UPDATE users SET nick = name")',
                 'op.drop_column("users", "nick")')
    write_script(d, "p003aaaa", "p002aaaa", 'op.create_index("ix_users_name", "users", ["name"])', "pass")
    kube.secret_url(namespace, "db", database_url)
    kube.configmap_from(namespace, "migrations", d)
    op = start_operator([namespace])
    kube.apply(dbrev_resource(namespace, "acct", "p001aaaa", policy={"downgrade": "RequireApproval", "dataLoss": "Allow"}))
    ready_at(kube, namespace, "acct", "p001aaaa")
    kube("patch", "dbrev", "acct", "-n", namespace, "--type", "merge", "-p",
         json.dumps({"spec": {"revision": "p002aaaa"}}))
    st = ready_at(kube, namespace, "acct", "p002aaaa")
    rr = st["rollbackReadiness"]
    assert rr["status"] == "Lossy" and "3 value(s) of column public.users.nick" in rr["message"], rr
    assert op.metric("dbrev_rollback_readiness", namespace=namespace, name="acct", readiness="Lossy") == 1
    assert op.metric("dbrev_rollback_readiness", namespace=namespace, name="acct", readiness="Proven") == 0
    wide = kube("get", "dbrev", "acct", "-n", namespace, "-o", "wide")
    assert "ROLLBACK" in wide.splitlines()[0] and "Lossy" in wide

    # the next revision's way back is Broken: applied (Report), with a Warning Event and the metric
    kube("patch", "dbrev", "acct", "-n", namespace, "--type", "merge", "-p",
         json.dumps({"spec": {"revision": "p003aaaa"}}))
    st = ready_at(kube, namespace, "acct", "p003aaaa")
    assert st["rollbackReadiness"]["status"] == "Broken" and st["rollbackReadiness"]["step"] == "p003aaaa"
    assert "RollbackNotReady" in kube.reasons(namespace, "acct")
    assert op.metric("dbrev_rollback_readiness", namespace=namespace, name="acct", readiness="Broken") == 1
    assert op.metric("dbrev_rollback_readiness", namespace=namespace, name="acct", readiness="Lossy") == 0

    # the GitOps revert to p001aaaa waits for approval; its plan shows what each upgrade's run proved
    kube("patch", "dbrev", "acct", "-n", namespace, "--type", "merge", "-p",
         json.dumps({"spec": {"revision": "p001aaaa"}}))
    st = wait_for(lambda: (s := kube.status(namespace, "acct")) and condition(s, "Ready").get("reason")
                  == "AwaitingApproval" and s, 60, "the revert to wait for approval")
    rec = st["plan"]["recordedReadiness"]
    assert [(x["status"], x["from"], x["to"]) for x in rec] == [("Broken", "p003aaaa", "p002aaaa"),
                                                              ("Lossy", "p002aaaa", "p001aaaa")], rec
    assert rec[0]["location"].startswith("p003aaaa") and rec[1]["recordedAt"].startswith("20")
    assert heads(database_url) == ["p003aaaa"]
