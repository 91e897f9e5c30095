"""The health gate on a StatefulSet, on the real one-node cluster, with the real StatefulSet controller.

The same release as tests/operator/test_healthgate_node.py (r002 renames ``items.name``; v2 still reads
it, so its readiness probe never passes), shipped as a StatefulSet with the default
``podManagementPolicy: OrderedReady`` and ``RollingUpdate``:

* a healthy rollout (v1 at r001) passes the gate;
* ``onFailure: Rollback``: the StatefulSet's pod ``web-0`` is replaced by v2, which never becomes Ready,
  so the window fails the gate.  Patching the template back to the previous ControllerRevision is not
  enough by itself: under OrderedReady the controller waits for the broken pod to become Ready before
  it replaces it (Kubernetes' "forced rollback" caveat), so dbrev deletes exactly that pod (of the
  StatefulSet, not of the revision it goes back to, not Ready) once the controller has taken the
  undo.  The old revision's pod comes back Ready (``status.currentRevision == updateRevision`` ==
  the v1 ControllerRevision, the pod's ``controller-revision-hash`` too), then the schema goes back
  to r001, verified, rows intact, the runbook's records logged, and nothing loops.

Run only under the node lock (docs/development.md):
``flock /run/dbrev-helpers-node.lock .venv/bin/python -m pytest -q tests/operator/test_healthgate_statefulset_node.py``
"""

from __future__ import annotations

import json

import pytest

from dbhelp import heads, q
from dbrev_dev.envtest.images import MANIFESTS_IMAGE
from opharness import Operator, dbrev_resource, wait_for
from test_healthgate_node import (PROBE_V1, PROBE_V2, PY, R1, R2, cond, migrations, nkube, phase,  # noqa: F401
                                  records, shop)

pytestmark = pytest.mark.cluster


def statefulset(ns: str, version: str, probe: str) -> dict:
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web", "namespace": ns},
            "spec": {"replicas": 1, "serviceName": "web", "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web", "version": version}}, "spec": {
                         "terminationGracePeriodSeconds": 1,
                         "containers": [{
                             "name": "web", "image": MANIFESTS_IMAGE, "imagePullPolicy": "IfNotPresent",
                             "command": [PY, "-c", "import time; time.sleep(10 ** 9)"],
                             "env": [{"name": "DSN", "valueFrom": {"secretKeyRef": {"name": "app-db", "key": "dsn"}}},
                                     {"name": "VERSION", "value": version}],
                             "readinessProbe": {"exec": {"command": [PY, "-c", probe]}, "periodSeconds": 2,
                                                "timeoutSeconds": 10, "failureThreshold": 1}}]}}}}


def gated(ns: str, revision: str, on_failure: str, window: str, deployment_id: str) -> dict:
    body = dbrev_resource(ns, "orders", revision, policy={"dataLoss": "Allow"},
                          healthGate={"workloads": [{"kind": "StatefulSet", "name": "web"}], "window": window,
                                      "onFailure": on_failure})
    body["metadata"]["annotations"] = {"dbrev.io/deployment-id": deployment_id}
    return body


def sts(kube, ns) -> dict:
    return json.loads(kube("get", "statefulset", "web", "-n", ns, "-o", "json"))


def pods(kube, ns) -> list[dict]:
    return [p for p in json.loads(kube("get", "pods", "-n", ns, "-l", "app=web", "-o", "json"))["items"]
            if not p["metadata"].get("deletionTimestamp")]


def is_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def revisions(kube, ns) -> dict[str, dict]:
    """The StatefulSet's ControllerRevisions by name."""
    items = json.loads(kube("get", "controllerrevisions", "-n", ns, "-l", "app=web", "-o", "json"))["items"]
    return {r["metadata"]["name"]: r for r in items}


def version_of(revision: dict) -> str:
    return revision["data"]["spec"]["template"]["metadata"]["labels"]["version"]


def release_v1(kube, shop, on_failure: str, window: str) -> dict:
    """v1 and r001: the StatefulSet's first rollout passes the gate; returns the StatefulSet."""
    ns = shop["ns"]
    kube.apply(statefulset(ns, "v1", PROBE_V1))
    kube.apply(gated(ns, R1, on_failure, window, "rel-1"))
    st = phase(kube, ns, ("Passed", "Failed"), 180)
    assert st["healthGate"]["phase"] == "Passed", (st["healthGate"], shop["op"].tail())
    assert cond(st, "Ready")["status"] == "True" and st["currentRevision"] == R1
    assert "StatefulSet/web" in st["healthGate"]["message"] and "ready" in st["healthGate"]["message"]
    assert "HealthGatePassed" in kube.reasons(ns, "orders")
    kube("rollout", "status", "statefulset/web", "-n", ns, "--timeout=60s")
    return sts(kube, ns)


def test_a_healthy_statefulset_rollout_passes_the_gate(nkube, shop):
    ns, url, op = shop["ns"], shop["url"], shop["op"]
    migrations(shop, nkube)
    s = release_v1(nkube, shop, "Rollback", "3m")
    assert heads(url) == [R1]
    (pod,) = pods(nkube, ns)
    assert is_ready(pod) and pod["metadata"]["labels"]["version"] == "v1"
    assert pod["metadata"]["labels"]["controller-revision-hash"] == s["status"]["updateRevision"] \
        == s["status"]["currentRevision"]
    assert op.metric("dbrev_health_gate_total", namespace=ns, name="orders", result="passed") == 1
    assert not records(op, "rollback_triggered")


def test_rollback_puts_the_statefulset_back_to_its_previous_controllerrevision_then_the_schema(nkube, shop):
    ns, url, op = shop["ns"], shop["url"], shop["op"]
    migrations(shop, nkube)
    # the window fails the gate (a StatefulSet has no progress deadline) and bounds the way back
    first = release_v1(nkube, shop, "Rollback", "45s")
    v1_revision = first["status"]["updateRevision"]
    (v1_pod,) = pods(nkube, ns)
    before = q(url, "SELECT id, name FROM items ORDER BY id")
    # the bad release: the StatefulSet to v2 and spec.revision to r002, as one sync would
    nkube.apply(statefulset(ns, "v2", PROBE_V2))
    nkube("annotate", "dbrev", "orders", "-n", ns, "--overwrite", "dbrev.io/deployment-id=rel-2")
    nkube("patch", "dbrev", "orders", "-n", ns, "--type=merge", "-p", json.dumps({"spec": {"revision": R2}}))
    # the controller replaced web-0 by v2, which never becomes Ready: the rollout is stuck on it
    stuck = wait_for(lambda: [p for p in pods(nkube, ns) if p["metadata"]["labels"]["version"] == "v2"], 120,
                     "web-0 replaced by v2")
    v2_revision = stuck[0]["metadata"]["labels"]["controller-revision-hash"]
    assert v2_revision != v1_revision and version_of(revisions(nkube, ns)[v2_revision]) == "v2"
    st = phase(nkube, ns, ("RolledBack", "RollbackIncomplete"), 300)
    stalled = cond(st, "Stalled")
    assert stalled["reason"] == "RolledBackAfterHealthCheck", (stalled, op.tail())
    # failed by web-0's readiness probe (14 s allowance), or by the window if the timer came later
    failure = st["healthGate"]["failure"]
    assert failure.startswith(("StatefulSet/web failed: pod web-0 container web: running",
                               "StatefulSet/web not healthy within 45s")), failure
    assert st["healthGate"]["rolledBack"] == [f"StatefulSet/web to ControllerRevision {v1_revision} (revision 1)"]
    # the application went back first, to the previous ControllerRevision: the controller reuses it (its
    # revision number bumped), the template is v1's, and the one pod is v1's, Ready
    s = sts(nkube, ns)
    assert s["spec"]["template"]["metadata"]["labels"]["version"] == "v1"
    assert s["status"]["updateRevision"] == s["status"]["currentRevision"] == v1_revision
    assert s["status"]["readyReplicas"] == s["status"]["updatedReplicas"] == 1
    (pod,) = pods(nkube, ns)
    assert is_ready(pod) and pod["metadata"]["labels"]["version"] == "v1"
    assert pod["metadata"]["labels"]["controller-revision-hash"] == v1_revision
    assert pod["metadata"]["uid"] not in (v1_pod["metadata"]["uid"], stuck[0]["metadata"]["uid"])
    # dbrev deleted the stuck v2 pod (the forced rollback), and said so
    deleted = [r for r in op.logs() if r.get("event") == "stuck_pod_deleted"]
    assert [(r["workload"], r["pod"]) for r in deleted] == [("StatefulSet/web", "web-0")], op.tail()
    assert deleted[0]["revision"] == v2_revision
    # then the schema: at r001, verified, the rows intact
    assert heads(url) == [R1] and st["currentRevision"] == R1 and st["healthGate"]["schemaTarget"] == R1
    assert q(url, "SELECT id, name FROM items ORDER BY id") == before and len(before) == 25
    assert st["history"][0]["direction"] == "downgrade" and st["history"][0]["deploymentId"] == "rel-2"
    (trig,) = records(op, "rollback_triggered")
    assert (trig["reason"], trig["from_version"], trig["to_version"]) == ("health_check_failure", R2, R1)
    assert trig["workload"] == "StatefulSet/web" and trig["deployment_id"] == "rel-2"
    (done,) = records(op, "rollback_executed")
    assert done["success"] is True and (done["from_version"], done["to_version"]) == (R2, R1)
    reasons = nkube.reasons(ns, "orders")
    assert reasons.index("RollbackTriggered") < reasons.index("WorkloadsRolledBack") < reasons.index(
        "RollbackExecuted")
    assert op.metric("dbrev_rollbacks_total", namespace=ns, name="orders", trigger="health_check_failure",
                     result="success") == 1
    # no loop: a restarted operator leaves the outcome standing; neither r002 nor v2 comes back
    runs = len(st["history"])
    op.kill()
    op2 = Operator(op.kubeconfig, [ns], op.workdir).start()
    try:
        wait_for(lambda: any(r.get("message", "").startswith("The last outcome stands") for r in op2.logs()), 60,
                 "the restarted operator to leave the outcome standing")
        st = nkube.status(ns, "orders")
        assert len(st["history"]) == runs and cond(st, "Stalled")["reason"] == "RolledBackAfterHealthCheck"
        assert heads(url) == [R1]
        assert sts(nkube, ns)["spec"]["template"]["metadata"]["labels"]["version"] == "v1"
        assert not [r for r in op2.logs() if r.get("event") == "stuck_pod_deleted"]
    finally:
        op2.stop()
