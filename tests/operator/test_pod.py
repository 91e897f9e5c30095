"""The operator as users run it: the image, as the Deployment of manifests/overlays/cluster-wide, in its Pod
on a real node (ServiceAccount and RBAC, in-cluster config, securityContext, probes, limits).

Only a Pod can show these: the operator is PID 1 (issue 10: every migration failed), the kubelet's
SIGTERM on pod deletion, its memory limit, its probes during a long migration (ten minutes of it:
test_zz_long_migration.py, arranged to overlap the rest of the suite). The databases live in
the PostgreSQL inside the node (``node.database_url()``), the only one pods can reach.
"""

from __future__ import annotations

import json
import time

import pytest

from dbhelp import heads, q
from opharness import Kube, condition, dbrev_resource, is_state, ready_at, wait_for
from scriptgen import write_script

pytestmark = pytest.mark.cluster

OP_NS = "dbrev-system"
SELECTOR = "app.kubernetes.io/component=operator"


def operator_pod(kube) -> dict:
    def running():
        pods = json.loads(kube("get", "pods", "-n", OP_NS, "-l", SELECTOR, "-o", "json"))["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")
                and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]
        return live[0] if len(live) == 1 else None
    return wait_for(running, 120, "one Ready operator pod")


def restarts(pod: dict) -> int:
    return sum(c.get("restartCount", 0) for c in pod["status"].get("containerStatuses", []))



def sleeping(url: str, marker: str) -> int:
    return q(url, f"SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' "
                  "AND pid <> pg_backend_pid()")[0][0]


def test_the_image_migrates_as_pid_1_with_in_cluster_config(node, deployed, app, examples_dir):
    # Issue 10: in the container the operator is PID 1; the worker's parent-death check took that for
    # "my parent died" and every migration failed as "the worker process died (exit code 1)".
    ns, url = app
    kube = deployed
    kube.configmap_from(ns, "migrations", examples_dir)
    kube.apply(dbrev_resource(ns, "orders", "head", policy={"dataLoss": "Allow"}))
    st = ready_at(kube, ns, "orders", "f1a2b3c4d5e6", timeout=120)
    assert st["history"][0]["result"] == "applied"
    assert heads(url) == ["f1a2b3c4d5e6"]
    pod = operator_pod(kube)
    name = pod["metadata"]["name"]
    # PID 1 is the operator itself, as the non-root user, with no kubeconfig (in-cluster config)
    probe = ("import os; print(open('/proc/1/cmdline').read().replace(chr(0), ' ').strip()); "
             "print(os.getuid()); print(os.environ.get('KUBECONFIG')); "
             "print(os.environ['KUBERNETES_SERVICE_HOST'])")
    out = kube("exec", "-n", OP_NS, name, "--", "python3", "-c", probe).splitlines()
    assert "dbrev operator" in out[0] and "--all-namespaces" in out[0], out
    assert out[1] == "65532" and out[2] == "None" and out[3] == "10.0.0.1", out
    # the read-only root filesystem is enforced
    code, _, err = kube("exec", "-n", OP_NS, name, "--", "python3", "-c", "open('/opt/x', 'w')", check=False)
    assert code != 0 and "Read-only file system" in err
    assert restarts(pod) == 0


def migration_pods(kube, ns: str) -> list[dict]:
    return json.loads(kube("get", "pods", "-n", ns, "-l", "app.kubernetes.io/managed-by=dbrev", "-o", "json"))["items"]


def test_operator_pod_deleted_mid_migration_the_job_goes_on_and_the_next_pod_adopts_it(node, deployed, app,
                                                                                          tmp_path):
    """The migration runs in its Job's pod, not in the operator's: `kubectl delete pod` of the operator (a
    rollout, a node drain) stops nothing; the next operator pod finds the Job still running, waits for it
    instead of starting another, and reports its result."""
    ns, url = app
    kube = deployed
    d = tmp_path / "m"
    write_script(d, "t001aaaa", None, 'op.create_table("t1", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("t1")')
    write_script(d, "t002aaaa", "t001aaaa", 'op.create_table("t2", sa.Column("id", sa.Integer, primary_key=True))\n'
                 'op.execute("SELECT pg_sleep(15) -- sigterm-marker")', 'op.drop_table("t2")')
    kube.configmap_from(ns, "migrations", d)
    before = operator_pod(kube)["metadata"]["name"]
    kube.apply(dbrev_resource(ns, "k", "head"))
    wait_for(lambda: sleeping(url, "sigterm-marker"), 90, "the slow step to start")
    (job_pod,) = migration_pods(kube, ns)
    # what `kubectl delete pod` and a rollout do: the kubelet sends SIGTERM (grace period 30 s)
    kube("delete", "pod", "-n", OP_NS, before, "--wait=false")
    st = ready_at(kube, ns, "k", "t002aaaa", timeout=180)  # the next pod reports the Job's result
    assert operator_pod(kube)["metadata"]["name"] != before
    assert heads(url) == ["t002aaaa"]
    runs = [r[0] for r in q(url, "SELECT status FROM dbrev.runs ORDER BY id")]
    assert runs == ["applied"], runs  # one run: the Job was adopted, never started twice
    pods = migration_pods(kube, ns)
    assert [p["metadata"]["name"] for p in pods] == [job_pod["metadata"]["name"]]
    assert st["currentRevision"] == "t002aaaa"


def test_a_migration_pod_killed_by_its_memory_limit(node, deployed, app, tmp_path):
    # A migration pod of dbrev's own image has a 512Mi limit (DBREV_MIGRATION_MEMORY_LIMIT). A migration
    # that needs more is killed by the kernel's OOM killer; the database stays at its revision and the
    # operator, in its own pod, says so.
    ns, url = app
    kube = deployed
    d = tmp_path / "m"
    write_script(d, "m001aaaa", None, 'op.create_table("m1", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("m1")')
    write_script(d, "m002aaaa", "m001aaaa",
                 'op.create_table("m2", sa.Column("id", sa.Integer, primary_key=True))\n'
                 'hog = bytearray(1536 * 1024 * 1024)\n'
                 'for i in range(0, len(hog), 4096):\n'
                 '    hog[i] = 1', 'op.drop_table("m2")')
    kube.configmap_from(ns, "migrations", d)
    pod_before = operator_pod(kube)
    kube.apply(dbrev_resource(ns, "hog", "head"))

    def failed():
        st = kube.status(ns, "hog")
        return (is_state(st, "False") and condition(st, "Reconciling").get("status") != "True") and st
    st = wait_for(failed, 180, "the run to fail")
    assert heads(url) == []  # one transaction: the first step was rolled back with the second
    assert "m2" not in [r[0] for r in q(url, "SELECT tablename FROM pg_tables WHERE schemaname='public'")]
    ready = condition(st, "Ready")
    assert ready["status"] == "False" and ready["reason"] == "OutOfMemory", ready
    assert "OOM-killed" in ready["message"] and "memory limit" in ready["message"], ready
    assert st["lastError"]["reason"] == "OutOfMemory"
    runs = [r[0] for r in q(url, "SELECT status FROM dbrev.runs ORDER BY id")]
    # the hog runs as soon as the step's upgrade() does: while the plan renders it offline (no run journaled
    # yet), or in the run (its journal row closed as died, never left "running")
    assert set(runs) <= {"died"}, runs
    # the operator itself was never at risk: same pod, no restart
    pod_after = operator_pod(kube)
    assert pod_after["metadata"]["name"] == pod_before["metadata"]["name"]
    assert restarts(pod_after) == restarts(pod_before)


def test_a_rollout_never_runs_two_peers_and_the_new_pod_serves(node, deployed, app, examples_dir):
    # manifests/base/deployment.yaml: strategy Recreate, because two replicas with the same priority
    # would both pause. Through a real rollout, the peering object never holds two keep-alives, and
    # the new pod (with its own identity, POD_ID = its name) serves.
    ns, url = app
    kube = deployed
    kube.configmap_from(ns, "migrations", examples_dir)
    old = operator_pod(kube)["metadata"]["name"]

    def peers() -> dict:
        return json.loads(kube("get", "clusterkopfpeering", "dbrev", "-o", "json")).get("status") or {}

    wait_for(lambda: old in peers(), 60, "the running pod's keep-alive")
    kube("-n", OP_NS, "rollout", "restart", "deployment/dbrev-operator")
    most = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        most = max(most, len(peers()))
        pods = json.loads(kube("get", "pods", "-n", OP_NS, "-l", SELECTOR, "-o", "json"))["items"]
        names = [p["metadata"]["name"] for p in pods]
        if old not in names and any(n in peers() for n in names):
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the rollout did not finish: pods {names}, peers {list(peers())}")
    assert most <= 1, "two operators were peers at the same time"
    new = operator_pod(kube)["metadata"]["name"]
    assert new != old and list(peers()) == [new]
    kube.apply(dbrev_resource(ns, "orders", "head", policy={"dataLoss": "Allow"}))
    ready_at(kube, ns, "orders", "f1a2b3c4d5e6", timeout=120)
    assert heads(url) == ["f1a2b3c4d5e6"]
