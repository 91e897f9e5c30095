"""The RBAC of manifests/ is exactly what the operator uses: proven with kube-apiserver's audit log.

For each overlay, a control plane of its own with an audit log (every request a ServiceAccount makes),
the overlay applied for real, and the operator started with the Deployment's own arguments (``-A`` or
``-n $(POD_NAMESPACE)``, ``--peering=dbrev``) and a real token of the manifests' ServiceAccount. It then
goes through a representative scenario: a DatabaseRevision reaches Ready, its ConfigMap changes, a
downgrade waits for an approval and is approved, a health gate reads the Deployment and StatefulSet it
names and, under ``onFailure: Rollback``, patches them back to their previous ReplicaSet and
ControllerRevision and deletes the StatefulSet's pod stuck on the broken revision, the operator stops
(and leaves the peering object).
Then, from the audit log:

1. no request by the ServiceAccount was refused (401/403): nothing is missing;
2. every (API group, resource, verb) the overlay grants it was used: nothing is granted in vain.

The operator's end-to-end tests (tests/operator) run under the cluster-wide RBAC as well.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dbrev_dev.envtest.controlplane import ControlPlane, service_account_username
from dbrev.pg.ephemeral import create_database, drop_database
from fixtures_cluster import local_control_plane_only

from opharness import Kube, Operator, condition, dbrev_resource, is_state, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow, local_control_plane_only]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "migrations"
HEAD = "f1a2b3c4d5e6"
MERGE = "e5f6a7b8c9d0"


def granted(objs: list[dict], sa: tuple[str, str]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every rule of every role bound to the ServiceAccount."""
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objs if o["kind"] in ("Role", "ClusterRole")}
    out = set()
    for b in objs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and (s["namespace"], s["name"]) == sa for s in b["subjects"]):
            continue
        ref = b["roleRef"]
        role = roles[(ref["kind"], b["metadata"].get("namespace") if ref["kind"] == "Role" else None, ref["name"])]
        for rule in role["rules"]:
            out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


def used(events: list[dict]) -> tuple[set[tuple[str, str, str]], list[str]]:
    """(apiGroup, resource[/subresource], verb) of resource requests; and every refused request."""
    out, refused = set(), []
    for e in events:
        code = (e.get("responseStatus") or {}).get("code")
        if code in (401, 403):
            refused.append(f"{code} {e['verb']} {e['requestURI']}")
        ref = e.get("objectRef")
        if not ref:
            continue  # discovery (/api, /apis/...), open to every authenticated user
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        out.add((ref.get("apiGroup", ""), resource, e["verb"]))
    return out, refused


def run_scenario(cp: ControlPlane, overlay: str, app_ns: str | None, admin_url: str, workdir: Path) -> dict:
    kube = Kube(cp)
    objs = [o for o in yaml.safe_load_all(kube("kustomize", str(ROOT / "manifests" / "overlays" / overlay))) if o]
    kube("apply", "-k", str(ROOT / "crds"))
    cp.wait_established("databaserevisions.dbrev.io", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev")
    wait_for(lambda: kube("get", "databaserevisions", "-A", check=False)[0] == 0, 30, "the CRD to be served")
    kube.apply("---\n".join(yaml.safe_dump(o) for o in objs))  # for real: the Deployment is stored, never run
    dep = [o for o in objs if o["kind"] == "Deployment"][0]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    op_ns = dep["metadata"]["namespace"]
    sa = (op_ns, pod["serviceAccountName"])
    ns = app_ns or op_ns
    if app_ns:
        cp.create_namespace(app_ns)

    url = create_database(admin_url)
    try:
        kube.secret_url(ns, "db", url)
        kube.configmap_from(ns, "migrations", EXAMPLES)
        # the Deployment's own command line and environment, as the kubelet would expand them
        env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
        env.update(POD_ID=f"{dep['metadata']['name']}-test", POD_NAMESPACE=op_ns)
        env.pop("DBREV_SCRIPTS_DIR")  # the harness puts them in the test's folder
        env.pop("HOME")
        env.pop("TMPDIR")
        args = [a.replace("$(POD_NAMESPACE)", op_ns) for a in c["args"]]
        assert c["command"] == ["dbrev", "operator"]
        # The overlay's Job makes the peering object once its CRD is served; there is no kubelet here,
        # so make the object the Job would (its kind from the Job's PEERING_KIND).
        (job,) = [o for o in objs if o["kind"] == "Job" and o["metadata"]["name"] == "dbrev-peering-setup"]
        job_env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        kind = job_env["PEERING_KIND"]
        peering = {"apiVersion": "kopf.dev/v1", "kind": kind,
                   "metadata": {"name": job_env.get("PEERING_NAME") or "dbrev",
                                **({"namespace": op_ns} if kind == "KopfPeering" else {})}}
        kube.apply(yaml.safe_dump(peering))
        where = ["-n", peering["metadata"]["namespace"]] if peering["kind"] == "KopfPeering" else []

        def peers() -> dict:
            return json.loads(kube("get", peering["kind"], peering["metadata"]["name"], *where, "-o", "json")
                              ).get("status") or {}

        token = cp.service_account_kubeconfig(*sa, create=False)
        # no kubelet here: the migrations of this part run in the operator's own process (the development
        # switch); the migration Jobs' verbs are used in the part after it
        op = Operator(str(token), [], workdir, env={**env, "DBREV_MIGRATIONS_IN_PROCESS": "1"}, args=args).start()
        try:
            kube.apply(dbrev_resource(ns, "orders", HEAD,
                                      policy={"downgrade": "RequireApproval", "dataLoss": "Allow"}))
            wait_for(lambda: is_state(kube.status(ns, "orders"), "True", "AtRevision"), 90, "Ready at head")
            # --peering works: the operator keeps itself alive in the overlay's peering object
            me = wait_for(lambda: peers().get(env["POD_ID"]), 30, "a keep-alive in the peering object")
            assert me["priority"] == 0
            # a referenced ConfigMap changes: the operator notices (watch) and asks for a pass (patch)
            kube("label", "configmap", "migrations", "-n", ns, "touched=yes")
            wait_for(lambda: "configmap/migrations" in (kube.get(ns, "orders")["metadata"].get("annotations") or {})
                     .get("dbrev.io/reconcile-requested-at", ""), 60, "a pass requested for the ConfigMap change")
            # a downgrade waits for an approval, which a human gives with `dbrev approve` (as admin)
            kube("patch", "dbrev", "orders", "-n", ns, "--type", "merge", "-p",
                 json.dumps({"spec": {"revision": MERGE}}))
            wait_for(lambda: is_state(kube.status(ns, "orders"), "False", "AwaitingApproval"), 60, "AwaitingApproval")
            out = subprocess.run([sys.executable, "-m", "dbrev", "approve", "orders", "-n", ns],
                                 capture_output=True, text=True, env={**cp.env()}, timeout=60)
            assert out.returncode == 0, out.stderr
            st = wait_for(lambda: (s := kube.status(ns, "orders")) and is_state(s, "True", "AtRevision")
                          and s.get("currentRevision") == MERGE and s, 90, "Ready after the approved downgrade")
            assert condition(st, "Stalled")["status"] == "False"
            assert {"Planned", "Applied"} <= set(kube.reasons(ns, "orders"))
            # the health gate reads the workloads it names (a window that passes: nothing rolls them out here)
            gated_url = create_database(admin_url)
            try:
                kube.secret_url(ns, "gated-db", gated_url)
                tmpl = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
                kube.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": ns},
                            "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": tmpl}})
                kube.apply({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "cache",
                                                                                        "namespace": ns},
                            "spec": {"serviceName": "cache", "selector": {"matchLabels": {"app": "web"}},
                                     "template": tmpl}})
                previous_revisions(kube, ns, tmpl)
                stuck_pod(kube, ns)
                kube.apply(dbrev_resource(ns, "gated", HEAD, secret="gated-db", policy={"dataLoss": "Allow"},
                                          healthGate={"window": "3s", "onFailure": "Rollback", "workloads": [
                                              {"kind": "Deployment", "name": "web"},
                                              {"kind": "StatefulSet", "name": "cache"}]}))
                # onFailure: Rollback patches both back (the undo's verbs); then the StatefulSet's forced
                # rollback: once its controller has taken the undo (played here: there is no controller-manager),
                # the pod stuck on the broken revision is deleted
                wait_for(lambda: json.loads(kube("get", "statefulset", "cache", "-n", ns, "-o", "json"))[
                    "metadata"]["generation"] == 2, 60, "the StatefulSet patched back")
                kube("patch", "statefulset", "cache", "-n", ns, "--subresource=status", "--type=merge", "-p",
                     json.dumps({"status": {"replicas": 1, "observedGeneration": 2, "updateRevision": "cache-1",
                                            "currentRevision": "cache-2"}}))
                wait_for(lambda: "cache-0" not in kube("get", "pods", "-n", ns, "-o", "name"), 60,
                         "the stuck pod deleted")
                # then nothing rolls them out: the rollback runs out of its window
                wait_for(lambda: is_state(kube.status(ns, "gated"), "False", "WorkloadRollbackFailed"), 90,
                         "the health gate's rollback to fail")
                image = json.loads(kube("get", "deployment", "web", "-n", ns, "-o", "json"))[
                    "spec"]["template"]["spec"]["containers"][0]["image"]
                assert image == "x:v1", "the Deployment was not patched back to its previous ReplicaSet"
            finally:
                kube("delete", "dbrev", "gated", "-n", ns, "--wait=true")
                drop_database(admin_url, gated_url.rsplit("/", 1)[1])
            time.sleep(3)  # a drift-check tick (DBREV_TIMER_INTERVAL=2) and a peering keep-alive
        finally:
            op.stop()
        logs, returncode = op.tail(200), op.proc.returncode
        assert env["POD_ID"] not in peers(), "a stopped operator leaves the peering object"
        logs += "\n--- the Job part:\n" + job_part(kube, cp, ns, op_ns, str(token), env, args, workdir, c["image"], pod)
    finally:
        drop_database(admin_url, url.rsplit("/", 1)[1])
    time.sleep(1)
    return {"objs": objs, "sa": sa, "events": cp.audit_events(user=service_account_username(*sa)), "logs": logs,
            "returncode": returncode}


def job_part(kube: Kube, cp: ControlPlane, ns: str, op_ns: str, token: str, env: dict, args: list[str],
             workdir: Path, image: str, pod_spec: dict) -> str:
    """The migration Jobs' verbs, for real: the operator reads its own pod for the image (the pod object is made
    here: no kubelet), creates the migration pods' ServiceAccount, lists Jobs (to adopt one still running),
    creates the Job and watches it and its pods. No controller runs the Job here, so a human deletes it (as
    `kubectl delete job` mid-run): the operator sees JobDeleted, a transient reason, and deletes what is left."""
    tmpl = pod_spec  # the Deployment's own pod spec: it passes the namespace's "restricted" Pod Security
    kube.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": env["POD_ID"], "namespace": op_ns},
                "spec": {**tmpl, "automountServiceAccountToken": False,
                         "containers": [{**tmpl["containers"][0], "image": image, "imagePullPolicy": "Never"}]}})
    op = Operator(token, [], workdir, env={**env, "DBREV_MIGRATIONS_IN_PROCESS": "0"}, args=args).start()
    try:
        # its own version table: "orders" (still there) manages the database's alembic_version
        kube.apply(dbrev_resource(ns, "jobs", HEAD, migrations={"configMapRefs": [{"name": "migrations"}],
                                                                "versionTable": "jobs_version"}))
        sel = "app.kubernetes.io/managed-by=dbrev,dbrev.io/name=jobs"
        name = wait_for(lambda: kube("get", "jobs", "-n", ns, "-l", sel, "-o", "name").strip(), 60,
                        "the migration Job")
        job = json.loads(kube("get", name, "-n", ns, "-o", "json"))
        ctr = job["spec"]["template"]["spec"]["containers"][0]
        assert ctr["image"] == image and ctr["imagePullPolicy"] == "Never", ctr  # the operator's own, from its pod
        assert kube("get", "serviceaccount", "dbrev-migrations", "-n", ns, "-o", "name").strip()
        kube("delete", name, "-n", ns, "--cascade=background", "--wait=false")
        wait_for(lambda: is_state(kube.status(ns, "jobs"), "False", "JobDeleted")
                 or condition(kube.status(ns, "jobs"), "Reconciling").get("reason") == "JobDeleted", 60,
                 "JobDeleted")
        kube("delete", "dbrev", "jobs", "-n", ns, "--wait=true")
    finally:
        op.stop()
    return op.tail(100)


def previous_revisions(kube: Kube, ns: str, tmpl: dict) -> None:
    """What the controllers would have left after one update (there is no controller-manager here): a
    previous ReplicaSet of Deployment/web and a previous ControllerRevision of StatefulSet/cache."""
    def owner(kind, name):
        uid = json.loads(kube("get", kind.lower(), name, "-n", ns, "-o", "json"))["metadata"]["uid"]
        return [{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": True}]

    def template(image, **labels):
        return {"metadata": {"labels": {**tmpl["metadata"]["labels"], **labels}},
                "spec": {"containers": [{**tmpl["spec"]["containers"][0], "image": image}]}}

    for rev, image in ((1, "x:v1"), (2, tmpl["spec"]["containers"][0]["image"])):
        h = f"h{rev}"
        kube.apply({"apiVersion": "apps/v1", "kind": "ReplicaSet",
                    "metadata": {"name": f"web-{h}", "namespace": ns, "labels": {"app": "web", "pod-template-hash": h},
                                 "annotations": {"deployment.kubernetes.io/revision": str(rev)},
                                 "ownerReferences": owner("Deployment", "web")},
                    "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web", "pod-template-hash": h}},
                             "template": template(image, **{"pod-template-hash": h})}})
        kube.apply({"apiVersion": "apps/v1", "kind": "ControllerRevision",
                    "metadata": {"name": f"cache-{rev}", "namespace": ns, "labels": {"app": "web"},
                                 "ownerReferences": owner("StatefulSet", "cache")},
                    "revision": rev, "data": {"spec": {"template": {**template(image), "$patch": "replace"}}}})
    kube("patch", "statefulset", "cache", "-n", ns, "--subresource=status", "--type=merge", "-p",
         json.dumps({"status": {"replicas": 0, "updateRevision": "cache-2", "currentRevision": "cache-2"}}))


def stuck_pod(kube: Kube, ns: str) -> None:
    """A pod of StatefulSet/cache on its broken revision (cache-2), never Ready: no kubelet runs it."""
    uid = json.loads(kube("get", "statefulset", "cache", "-n", ns, "-o", "json"))["metadata"]["uid"]
    kube.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}})
    kube.apply({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "cache-0", "namespace": ns,
                             "labels": {"app": "web", "controller-revision-hash": "cache-2"},
                             "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "cache",
                                                  "uid": uid, "controller": True}]},
                "spec": {"automountServiceAccountToken": False, "containers": [{"name": "c", "image": "x:v2"}]}})


@pytest.fixture
def audited(tmp_path):
    cp = ControlPlane(tmp_path / "control-plane", die_with_parent=True, audit=True).start()
    try:
        yield cp
    finally:
        cp.stop()


@pytest.mark.parametrize("overlay,app_ns", [("cluster-wide", "shop"), ("namespaced", None)])
def test_rbac_is_exactly_what_the_operator_uses(audited, pg_admin_url, tmp_path, overlay, app_ns):
    r = run_scenario(audited, overlay, app_ns, pg_admin_url, tmp_path)
    have, refused = used(r["events"])
    grants = granted(r["objs"], r["sa"])
    assert r["events"], "the audit log holds no request of the operator's ServiceAccount"
    assert not refused, "requests the manifests do not allow:\n" + "\n".join(sorted(set(refused))) + \
        "\n--- operator log:\n" + r["logs"]
    assert not have - grants, f"used without a grant (cannot happen without a 403): {sorted(have - grants)}"
    # no kubelet here, so no migration pod ever has a log: the relay is proven by the Pod-mode end-to-end tests
    # (tests/operator/test_e2e.py finds the run's records in the operator's log)
    unused = grants - have - {("", "pods/log", "get")}
    assert not unused, f"granted but never used by the operator: {sorted(unused)}"
    assert r["returncode"] == 0, r["logs"]  # it stopped cleanly on SIGTERM (and left the peering object)
    # and the expected shape: the namespaced operator never reads anything cluster-wide
    scopes = {(e["objectRef"]["resource"], e["objectRef"].get("namespace"))
              for e in r["events"] if e.get("objectRef")}
    if overlay == "namespaced":
        assert {n for _, n in scopes} == {r["sa"][0]}, scopes
    else:
        assert ("clusterkopfpeerings", None) in scopes and ("databaserevisions", None) in scopes


def test_granted_and_used_are_computed_per_rule():
    """The comparison itself: a missing or an extra verb shows up."""
    objs = [{"kind": "ClusterRole", "metadata": {"name": "r"},
             "rules": [{"apiGroups": [""], "resources": ["events"], "verbs": ["create", "get"]}]},
            {"kind": "ClusterRoleBinding", "metadata": {"name": "b"}, "roleRef": {"kind": "ClusterRole", "name": "r"},
             "subjects": [{"kind": "ServiceAccount", "namespace": "n", "name": "s"}]},
            {"kind": "ClusterRoleBinding", "metadata": {"name": "other"},
             "roleRef": {"kind": "ClusterRole", "name": "r"},
             "subjects": [{"kind": "ServiceAccount", "namespace": "n", "name": "someone-else"}]}]
    assert granted(objs, ("n", "s")) == {("", "events", "create"), ("", "events", "get")}
    events = [{"verb": "create", "requestURI": "/api/v1/namespaces/a/events", "responseStatus": {"code": 201},
               "objectRef": {"resource": "events", "namespace": "a", "apiVersion": "v1"}},
              {"verb": "patch", "requestURI": "/apis/dbrev.io/v1alpha1/namespaces/a/databaserevisions/x/status",
               "responseStatus": {"code": 403}, "objectRef": {"resource": "databaserevisions", "subresource": "status",
                                                               "apiGroup": "dbrev.io", "namespace": "a"}},
              {"verb": "get", "requestURI": "/apis", "responseStatus": {"code": 200}}]
    have, refused = used(events)
    assert have == {("", "events", "create"), ("dbrev.io", "databaserevisions/status", "patch")}
    assert refused == ["403 patch /apis/dbrev.io/v1alpha1/namespaces/a/databaserevisions/x/status"]
