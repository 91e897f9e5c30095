"""The health gate on the real one-node cluster (issue 13): real rollouts, real readiness probes.

A release renames ``items.name`` to ``items.title`` (r002). The application's first version (v1) only
needs ``items.id``; the new one (v2) requires the schema at r002 but still reads ``items.name`` (the
bug): its readiness probe, a query against the node's PostgreSQL, never passes after the migration.

* ``onFailure: Report``: the DatabaseRevision ends Stalled, reason WorkloadUnhealthy, naming the Deployment;
  nothing is rolled back.
* ``onFailure: Rollback``: the Deployment goes back to v1 (its previous ReplicaSet, as ``kubectl rollout
  undo``), and once v1 is available the schema goes back to r001, verified; the rows are intact, the
  runbook's records are logged with ``health_check_failure`` and the deployment id, and nothing loops.
* ``Rollback`` whose schema downgrade would lose data under ``dataLoss: Deny``: the workload goes back,
  the schema stays, Stalled SchemaRollbackBlocked saying so.
* a window that passes while the pods are Pending fails the gate.

The operator runs as a host process (as in tests/operator) with a real token of the manifests'
ServiceAccount and only the RBAC of ``manifests/overlays/cluster-wide``, against the node's API server;
PostgreSQL listens inside the node, which both the host and the pods reach.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from clihelp import dbrev
from dbhelp import heads, json_lines, q
from dbrev.pg.ephemeral import create_database, drop_database
from dbrev_dev.envtest.images import MANIFESTS_IMAGE
from opharness import Kube, Operator, condition, dbrev_resource, wait_for
from scriptgen import write_script

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "manifests" / "overlays" / "cluster-wide"
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
R1, R2 = "r001aaaa", "r002bbbb"
PY = "/opt/dbrev/bin/python"  # the image's Python, which has psycopg

PROBE_V1 = ("import os, psycopg; c = psycopg.connect(os.environ['DSN'], connect_timeout=3); "
            "c.execute('SELECT id FROM items LIMIT 0')")
# v2 needs the schema at r002 (so it cannot pass its probe before the migration) and reads the old column
PROBE_V2 = ("import os, psycopg; c = psycopg.connect(os.environ['DSN'], connect_timeout=3); "
            "v = c.execute('SELECT version_num FROM alembic_version').fetchone(); "
            f"assert v and v[0] == '{R2}', v; c.execute('SELECT name FROM items LIMIT 0')")


@pytest.fixture(scope="module")
def nkube(node):
    """kubectl on the node; the CRDs and the cluster-wide overlay's RBAC objects (no operator Deployment)."""
    kube = Kube(node)
    kube("apply", "-f", str(ROOT / "crds"))
    node.wait_established("databaserevisions.dbrev.io")
    built = subprocess.run([str(node.kubectl_path), "kustomize", str(OVERLAY)], capture_output=True, text=True,
                           check=True).stdout
    every = [o for o in yaml.safe_load_all(built) if o]
    kube.apply("---\n".join(yaml.safe_dump(o) for o in every if o["kind"] in RBAC_KINDS))
    (dep,) = [o for o in every if o["kind"] == "Deployment"]
    kube.sa = (dep["metadata"]["namespace"], dep["spec"]["template"]["spec"]["serviceAccountName"])
    return kube


@pytest.fixture
def shop(node, nkube, tmp_path):
    """A namespace with a fresh database, the release's migrations, and an operator serving it."""
    ns = node.create_namespace(f"gate-{uuid.uuid4().hex[:6]}")
    admin = node.database_url()
    url = create_database(admin)
    nkube.secret_url(ns, "db", url)
    nkube.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "app-db", "namespace": ns},
                 "stringData": {"dsn": url.replace("postgresql+psycopg://", "postgresql://")}})
    token = node.service_account_kubeconfig(*nkube.sa, expiration_seconds=3600)
    op = Operator(str(token), [ns], tmp_path).start()
    try:
        yield {"ns": ns, "url": url, "op": op, "dir": tmp_path / "migrations"}
    finally:
        op.stop()
        nkube("delete", "dbrev", "--all", "-n", ns, "--wait=false", check=False)
        nkube("delete", "namespace", ns, "--wait=false", check=False)
        drop_database(admin, url.rsplit("/", 1)[1])


def migrations(shop, kube, extra_column: bool = False) -> None:
    d = shop["dir"]
    write_script(d, R1, None,
                 'op.create_table("items", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))\n'
                 'op.execute("INSERT INTO items (name) SELECT \'item \' || i FROM generate_series(1, 25) i")',
                 'op.drop_table("items")')
    up = 'op.alter_column("items", "name", new_column_name="title")'
    down = 'op.alter_column("items", "title", new_column_name="name")'
    if extra_column:  # its downgrade drops a column with data in it: data loss
        up += '\nop.add_column("items", sa.Column("extra", sa.Text, server_default="x"))'
        down = 'op.drop_column("items", "extra")\n' + down
    write_script(d, R2, R1, up, down)
    kube.configmap_from(shop["ns"], "migrations", d)


def web(ns: str, version: str, probe: str, deadline: int = 30, **pod) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
            "spec": {"replicas": 1, "progressDeadlineSeconds": deadline, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "version": version}}, "spec": {
                         "terminationGracePeriodSeconds": 1, **pod,
                         "containers": [{
                             "name": "web", "image": MANIFESTS_IMAGE, "imagePullPolicy": "IfNotPresent",
                             "command": [PY, "-c", "import time; time.sleep(10 ** 9)"],
                             "env": [{"name": "DSN", "valueFrom": {"secretKeyRef": {"name": "app-db", "key": "dsn"}}},
                                     {"name": "VERSION", "value": version}],
                             "readinessProbe": {"exec": {"command": [PY, "-c", probe]}, "periodSeconds": 2,
                                                "timeoutSeconds": 10, "failureThreshold": 1}}]}}}}


def gated(ns, revision, on_failure, window="3m", policy=None, deployment_id=None):
    body = dbrev_resource(ns, "orders", revision, policy=policy or {"dataLoss": "Allow"},
                          healthGate={"workloads": [{"kind": "Deployment", "name": "web"}], "window": window,
                                      "onFailure": on_failure})
    if deployment_id:
        body["metadata"]["annotations"] = {"dbrev.io/deployment-id": deployment_id}
    return body


def cond(st, ctype):
    return condition(st, ctype) or {}


def phase(kube, ns, want, timeout):
    return wait_for(lambda: (s := kube.status(ns, "orders")).get("healthGate", {}).get("phase") in want and s,
                    timeout, f"the gate in phase {want}")


def deployment(kube, ns) -> dict:
    return json.loads(kube("get", "deployment", "web", "-n", ns, "-o", "json"))


def ready_pods(kube, ns) -> list[dict]:
    pods = json.loads(kube("get", "pods", "-n", ns, "-l", "app=web", "-o", "json"))["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]


def release_v1(kube, shop, on_failure, **kw):
    """v1 and r001: the first rollout passes the gate."""
    ns = shop["ns"]
    kube.apply(web(ns, "v1", PROBE_V1))
    kube.apply(gated(ns, R1, on_failure, deployment_id="rel-1", **kw))
    st = phase(kube, ns, ("Passed",), 180)
    assert cond(st, "Ready")["status"] == "True" and st["currentRevision"] == R1
    assert "HealthGatePassed" in kube.reasons(ns, "orders")
    kube("rollout", "status", "deployment/web", "-n", ns, "--timeout=60s")
    return st


def release_v2(kube, shop):
    """The bad release: the Deployment to v2 and spec.revision to r002, as one sync would."""
    ns = shop["ns"]
    kube.apply(web(ns, "v2", PROBE_V2))
    kube("annotate", "dbrev", "orders", "-n", ns, "--overwrite", "dbrev.io/deployment-id=rel-2")
    kube("patch", "dbrev", "orders", "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"revision": R2}}))


def records(op, event):
    return [r for r in op.logs() if r.get("event") == event]


def test_report_leaves_the_release_and_the_runbook_by_hand_goes_application_first(node, nkube, shop):
    ns, url, op = shop["ns"], shop["url"], shop["op"]
    migrations(shop, nkube)
    release_v1(nkube, shop, "Report")
    release_v2(nkube, shop)
    st = phase(nkube, ns, ("Failed",), 180)
    assert heads(url) == [R2]
    ready, stalled = cond(st, "Ready"), cond(st, "Stalled")
    assert ready["status"] == "False" and ready["reason"] == "WorkloadUnhealthy"
    assert stalled["status"] == "True" and "Deployment/web" in stalled["message"]
    assert st["healthGate"]["workload"] == "Deployment/web" and st["healthGate"]["deploymentId"] == "rel-2"
    ev = [e for e in nkube.events(ns, "orders") if e["reason"] == "WorkloadUnhealthy"]
    assert ev and "(deployment rel-2)" in ev[-1]["message"]
    # Report rolls nothing back: the Deployment is still v2, the schema at r002
    assert deployment(nkube, ns)["spec"]["template"]["metadata"]["labels"]["version"] == "v2"
    assert not records(op, "rollback_triggered")
    # the runbook by hand: `dbrev rollback NAME` puts the gated Deployment back first, then the schema
    before = q(url, "SELECT id, title FROM items ORDER BY id")
    res = dbrev("rollback", "orders", "-n", ns, "--reason", "health_check_failure", "--deployment-id", "rel-2",
                "--timeout", "240", env=node.env(), timeout=300)
    assert res.code == 0, res.stdout + res.stderr
    assert res.json["success"] is True and (res.json["from_revision"], res.json["to_revision"]) == (R2, R1)
    assert res.json["workloads"]["roll_back"] == ["Deployment/web"]
    assert res.json["workloads"]["result"].startswith("rolled back Deployment/web to ReplicaSet web-")
    assert deployment(nkube, ns)["spec"]["template"]["metadata"]["labels"]["version"] == "v1"
    pods = ready_pods(nkube, ns)
    assert pods and {p["metadata"]["labels"]["version"] for p in pods} == {"v1"}
    assert heads(url) == [R1] and q(url, "SELECT id, name FROM items ORDER BY id") == before
    recs = {r["event"]: r for r in json_lines(res.stderr) if r.get("event", "").startswith("rollback_")}
    assert recs["rollback_triggered"]["reason"] == "health_check_failure"
    assert recs["rollback_executed"]["success"] is True and recs["rollback_executed"]["deployment_id"] == "rel-2"


def test_rollback_puts_the_deployment_back_then_the_schema_and_does_not_loop(nkube, shop):
    ns, url, op = shop["ns"], shop["url"], shop["op"]
    migrations(shop, nkube)
    release_v1(nkube, shop, "Rollback")
    before = q(url, "SELECT id, name FROM items ORDER BY id")
    release_v2(nkube, shop)
    st = phase(nkube, ns, ("RollingBack", "RolledBack", "RollbackIncomplete"), 180)
    st = phase(nkube, ns, ("RolledBack", "RollbackIncomplete"), 240)
    stalled = cond(st, "Stalled")
    assert stalled["reason"] == "RolledBackAfterHealthCheck", (stalled, op.tail())
    assert f"spec.revision still names {R2}" in stalled["message"]
    # the application went back first: v1's pods are Ready, the Deployment's template is v1's again
    dep = deployment(nkube, ns)
    assert dep["spec"]["template"]["metadata"]["labels"]["version"] == "v1"
    nkube("rollout", "status", "deployment/web", "-n", ns, "--timeout=60s")
    pods = ready_pods(nkube, ns)
    assert pods and {p["metadata"]["labels"]["version"] for p in pods} == {"v1"}
    # then the schema: at r001, verified, the rows intact (the renamed column back with its values)
    assert heads(url) == [R1] and st["currentRevision"] == R1
    assert q(url, "SELECT id, name FROM items ORDER BY id") == before and len(before) == 25
    assert st["history"][0]["direction"] == "downgrade" and st["history"][0]["deploymentId"] == "rel-2"
    assert st["healthGate"]["rolledBack"][0].startswith("Deployment/web to ReplicaSet web-")
    assert st["healthGate"]["schemaTarget"] == R1
    # the runbook's records, with the reason and the deployment id
    (trig,) = records(op, "rollback_triggered")
    assert (trig["reason"], trig["from_version"], trig["to_version"]) == ("health_check_failure", R2, R1)
    assert trig["deployment_id"] == "rel-2"
    (done,) = records(op, "rollback_executed")
    assert done["success"] is True and (done["from_version"], done["to_version"]) == (R2, R1)
    assert done["deployment_id"] == "rel-2"
    downgrade_records = [r for r in op.logs() if r.get("rollback_reason") == "health_check_failure"]
    assert downgrade_records and all(r.get("deployment_id") == "rel-2" for r in downgrade_records)
    reasons = nkube.reasons(ns, "orders")
    assert reasons.index("RollbackTriggered") < reasons.index("WorkloadsRolledBack") < reasons.index(
        "RollbackExecuted")
    ex = [e for e in nkube.events(ns, "orders") if e["reason"] == "RollbackExecuted"]
    assert "(deployment rel-2)" in ex[-1]["message"]
    assert op.metric("dbrev_rollbacks_total", namespace=ns, name="orders", trigger="health_check_failure",
                     result="success") == 1
    # no loop: a restarted operator leaves the outcome standing; r002 is not applied again
    runs = len(st["history"])
    op.kill()
    op2 = Operator(op.kubeconfig, [ns], op.workdir).start()
    try:
        wait_for(lambda: any(r.get("message", "").startswith("The last outcome stands") for r in op2.logs()), 60,
                 "the restarted operator to leave the outcome standing")
        st = nkube.status(ns, "orders")
        assert len(st["history"]) == runs and cond(st, "Stalled")["reason"] == "RolledBackAfterHealthCheck"
        assert heads(url) == [R1]
        assert deployment(nkube, ns)["spec"]["template"]["metadata"]["labels"]["version"] == "v1"
    finally:
        op2.stop()


def test_rollback_whose_schema_downgrade_loses_data_under_deny_leaves_the_schema(nkube, shop):
    ns, url, op = shop["ns"], shop["url"], shop["op"]
    migrations(shop, nkube, extra_column=True)
    release_v1(nkube, shop, "Rollback", policy={"dataLoss": "Deny"})
    release_v2(nkube, shop)
    st = phase(nkube, ns, ("RolledBack", "RollbackIncomplete"), 300)
    stalled = cond(st, "Stalled")
    assert stalled["reason"] == "SchemaRollbackBlocked", (stalled, op.tail())
    msg = stalled["message"]
    assert "Rolled back Deployment/web to ReplicaSet web-" in msg and f"the schema stays at {R2}" in msg
    assert "refused by the policy" in msg and f"dbrev rollback orders -n {ns} --to {R1}" in msg
    # the workload went back; the schema did not move, nothing lost
    assert deployment(nkube, ns)["spec"]["template"]["metadata"]["labels"]["version"] == "v1"
    assert heads(url) == [R2] and q(url, "SELECT count(*) FROM items WHERE extra = 'x'")[0][0] == 25
    (done,) = records(op, "rollback_executed")
    assert done["success"] is False
    assert op.metric("dbrev_rollbacks_total", namespace=ns, name="orders", trigger="health_check_failure",
                     result="failure") == 1


def test_a_window_that_passes_while_pods_are_pending_fails_the_gate(nkube, shop):
    ns, url = shop["ns"], shop["url"]
    migrations(shop, nkube)
    # a pod nothing can schedule: Pending for good
    # (the progress deadline far away: it is the window that fails the gate)
    nkube.apply(web(ns, "v1", PROBE_V1, deadline=600, nodeSelector={"dbrev.io/no-such-node": "x"}))
    nkube.apply(gated(ns, R1, "Report", window="20s"))
    st = phase(nkube, ns, ("Failed",), 180)
    assert heads(url) == [R1]
    pods = json.loads(nkube("get", "pods", "-n", ns, "-l", "app=web", "-o", "json"))["items"]
    assert pods and {p["status"]["phase"] for p in pods} == {"Pending"}
    stalled = cond(st, "Stalled")
    assert stalled["reason"] == "WorkloadUnhealthy" and "Deployment/web not healthy within 20s" in stalled["message"]


def test_rollback_whose_schema_downgrade_needs_an_approval_waits_for_it(node, nkube, shop):
    ns, url, op = shop["ns"], shop["url"], shop["op"]
    migrations(shop, nkube)
    release_v1(nkube, shop, "Rollback", policy={"downgrade": "RequireApproval", "dataLoss": "Allow"})
    release_v2(nkube, shop)
    st = phase(nkube, ns, ("AwaitingApproval", "RolledBack", "RollbackIncomplete"), 240)
    ready = cond(st, "Ready")
    assert st["healthGate"]["phase"] == "AwaitingApproval" and ready["reason"] == "AwaitingApproval", (ready, op.tail())
    assert "rolled back Deployment/web" in ready["message"] and "needs an approval" in ready["message"]
    # the application is back already; the schema waits for a human
    assert deployment(nkube, ns)["spec"]["template"]["metadata"]["labels"]["version"] == "v1"
    assert heads(url) == [R2] and st["plan"]["direction"] == "downgrade"
    res = dbrev("approve", "orders", "-n", ns, env=node.env())
    assert res.code == 0, res.stdout + res.stderr
    st = phase(nkube, ns, ("RolledBack", "RollbackIncomplete"), 120)
    assert cond(st, "Stalled")["reason"] == "RolledBackAfterHealthCheck", op.tail()
    assert heads(url) == [R1]
    (done,) = records(op, "rollback_executed")
    assert done["success"] is True
