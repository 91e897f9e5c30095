"""manifests/, the Dockerfile and the Docker-only Makefile targets.

Every manifest is rendered with the real kustomize (``kubectl kustomize``, v1.34's) and validated by
the real kube-apiserver (``kubectl apply --dry-run=server``: schemas, defaults, admission). There is no
kubelet, so the Deployment never runs here: its shape is checked below, and ``make e2e-kind`` runs it.
What the RBAC grants is proven exact by test_rbac.py (audit log) and the operator's end-to-end tests
(which run under it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from dbrev.controller import crd

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
OVERLAYS = ("cluster-wide", "namespaced")
NS = "dbrev-system"
IMAGE = "ghcr.io/dbrev/dbrev:0.1.0"
# The operator's rules in every namespace it serves: the contract docs/install.md explains verb by verb.
OPERATOR_RULES = [
    {"apiGroups": ["dbrev.io"], "resources": ["databaserevisions"], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": ["dbrev.io"], "resources": ["databaserevisions/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["configmaps", "secrets"], "verbs": ["get", "list", "watch"]},
    # the health gate: read the named workloads, list their ReplicaSets and pods (read-only)
    {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets"], "verbs": ["get", "patch"]},
    {"apiGroups": ["apps"], "resources": ["replicasets", "controllerrevisions"], "verbs": ["list"]},
    # delete: a gated StatefulSet's forced rollback (its stuck pods of the broken revision, OrderedReady)
    # get: the operator's own pod (its image); list: also a migration Job's pod (its result, its failure)
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    # the migration Jobs (controller/jobrun) and their ServiceAccount, which nothing binds
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "create", "delete"]},
    {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["create"]},
]


def peering_rules(plural: str) -> list[dict]:
    return [{"apiGroups": ["kopf.dev"], "resources": [plural], "verbs": ["list", "watch"]},
            {"apiGroups": ["kopf.dev"], "resources": [plural], "resourceNames": ["dbrev"], "verbs": ["patch"]}]


def kustomize(kubectl: str, path: Path) -> list[dict]:
    p = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"kubectl kustomize {path} failed:\n{p.stderr}"
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def container(objs: list[dict]) -> dict:
    (c,) = one(objs, "Deployment", "dbrev-operator")["spec"]["template"]["spec"]["containers"]
    return c


@pytest.fixture(scope="module")
def tool(kubectl) -> str:
    return kubectl


@pytest.fixture(scope="module")
def built(tool) -> dict[str, list[dict]]:
    return {o: kustomize(tool, MANIFESTS / "overlays" / o) for o in OVERLAYS}


@pytest.fixture(scope="module")
def crds_and_namespace(control_plane):
    """Server-side dry runs need the CRDs (for KopfPeering objects) and the namespace to exist for real."""
    control_plane.kubectl("apply", "-k", str(ROOT / "crds"))
    control_plane.wait_established("databaserevisions.dbrev.io", "kopfpeerings.kopf.dev",
                                 "clusterkopfpeerings.kopf.dev")
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
    return True


def server_dry_run(control_plane, objs: list[dict]) -> str:
    p = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", check=False,
                              input="---\n".join(yaml.safe_dump(o) for o in objs))
    assert p.returncode == 0, f"the API server refused:\n{p.stderr}"
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    assert len(lines) == len(objs) and all(ln.endswith("(server dry run)") for ln in lines), p.stdout
    return p.stdout


# ------------------------------------------------------------------ the API server accepts everything

@pytest.mark.cluster
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_accepted_by_the_api_server(control_plane, crds_and_namespace, built, overlay):
    objs = built[overlay]
    kinds = sorted({o["kind"] for o in objs})
    assert {"Namespace", "ServiceAccount", "ClusterRole", "Deployment", "Service",
            "CustomResourceDefinition"} <= set(kinds)
    out = server_dry_run(control_plane, objs)
    assert "deployment.apps/dbrev-operator" in out


@pytest.mark.cluster
def test_base_builds_and_is_accepted(control_plane, crds_and_namespace, tool):
    objs = kustomize(tool, MANIFESTS / "base")
    server_dry_run(control_plane, objs)
    # the base binds nothing: an overlay decides where the ClusterRole applies
    assert not [o for o in objs if o["kind"] in ("ClusterRoleBinding", "RoleBinding")]


@pytest.mark.cluster
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_installing_into_another_namespace_with_a_wrapper_overlay(control_plane, crds_and_namespace, tool,
                                                                  namespace, tmp_path, overlay):
    """docs/install.md: `namespace: X` in your own kustomization moves every namespaced object and binding.

    For the namespaced overlay, as docs/install.md shows it: into an existing (application's) namespace,
    whose Namespace object is left out."""
    wrapper = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": namespace,
               "resources": [os.path.relpath(MANIFESTS / "overlays" / overlay, tmp_path)]}
    if overlay == "namespaced":
        wrapper["patches"] = [{"patch": "$patch: delete\napiVersion: v1\nkind: Namespace\n"
                                        "metadata: {name: dbrev-system}\n"}]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(wrapper))
    objs = kustomize(tool, tmp_path)
    server_dry_run(control_plane, objs)
    if overlay == "namespaced":
        assert not [o for o in objs if o["kind"] == "Namespace"]
    else:
        assert one(objs, "Namespace")["metadata"]["name"] == namespace
    for o in objs:
        for s in o.get("subjects") or []:
            assert s["namespace"] == namespace, o
        if o["kind"] in ("ServiceAccount", "Deployment", "Service", "Role", "RoleBinding", "KopfPeering"):
            assert o["metadata"]["namespace"] == namespace, o
    if overlay == "namespaced":  # the operator serves the namespace it runs in, whatever its name
        assert "--namespace=$(POD_NAMESPACE)" in container(objs)["args"]


# ------------------------------------------------------------------ one source for the CRDs

@pytest.mark.cluster
def test_crds_in_the_manifests_are_exactly_crds_folder(built):
    on_disk = {}
    for f in sorted((ROOT / "crds").glob("*.yaml")):
        for d in yaml.safe_load_all(f.read_text()):
            if d:
                on_disk[d["metadata"]["name"]] = d
    assert set(on_disk) == {"databaserevisions.dbrev.io", "kopfpeerings.kopf.dev", "clusterkopfpeerings.kopf.dev"}
    assert on_disk[crd.CRD_NAME] == crd.crd(), "crds/ is stale: run `make crds`"
    for overlay, objs in built.items():
        rendered = {o["metadata"]["name"]: o for o in objs if o["kind"] == "CustomResourceDefinition"}
        assert rendered == on_disk, f"overlays/{overlay} renders CRDs that differ from crds/"
    # included by reference, never copied
    assert not list(MANIFESTS.rglob("*databaserevision*")), "a copy of the CRD in manifests/"
    base = yaml.safe_load((MANIFESTS / "base" / "kustomization.yaml").read_text())
    assert "../../crds" in base["resources"]


def test_kopf_peering_crds_match_kopfs_definition():
    docs = {d["metadata"]["name"]: d for d in yaml.safe_load_all((ROOT / "crds" / "kopf-peering.yaml").read_text())
            if d}
    for name, scope, kind in (("clusterkopfpeerings.kopf.dev", "Cluster", "ClusterKopfPeering"),
                              ("kopfpeerings.kopf.dev", "Namespaced", "KopfPeering")):
        spec = docs[name]["spec"]
        assert spec["group"] == "kopf.dev" and spec["scope"] == scope and spec["names"]["kind"] == kind
        (v,) = spec["versions"]
        assert v["name"] == "v1" and v["served"] and v["storage"]
        assert "subresources" not in v  # Kopf merge-patches .status on the object itself
        status = v["schema"]["openAPIV3Schema"]["properties"]["status"]
        assert status["type"] == "object" and status["x-kubernetes-preserve-unknown-fields"] is True


# ------------------------------------------------------------------ the Deployment

@pytest.mark.cluster
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_is_hardened(built, overlay):
    objs = built[overlay]
    dep = one(objs, "Deployment", "dbrev-operator")
    pod = dep["spec"]["template"]["spec"]
    c = container(objs)
    assert dep["metadata"]["namespace"] == NS and dep["spec"]["replicas"] == 1
    # equal peering priorities freeze Kopf: never two pods at once
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    assert pod["serviceAccountName"] == one(objs, "ServiceAccount", "dbrev-operator")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["privileged"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    res = c["resources"]
    assert set(res["requests"]) == set(res["limits"]) == {"cpu", "memory"}
    assert c["image"] == IMAGE and c["command"] == ["dbrev", "operator"]
    # probes: Kopf's liveness endpoint on the port `dbrev operator` serves it on by default
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "healthz": 8081}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "healthz"}, probe
    # the only writable place, and the scripts go there
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
    assert env["DBREV_SCRIPTS_DIR"].startswith("/tmp/") and env["DBREV_LOG_LEVEL"] == "info"
    assert env["POD_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # Kopf's peering identity
    assert {m["mountPath"]: m["name"] for m in c["volumeMounts"]} == {"/tmp": "tmp"}
    assert [v for v in pod["volumes"] if v["name"] == "tmp"][0]["emptyDir"]
    # the metrics Service points at this pod's metrics port
    svc = one(objs, "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8080, "metrics")]


@pytest.mark.cluster
def test_args_per_overlay_and_the_peering_object_they_name(built):
    cw, ns = container(built["cluster-wide"])["args"], container(built["namespaced"])["args"]
    assert cw == ["--peering=dbrev", "--all-namespaces"]
    assert ns == ["--peering=dbrev", "--namespace=$(POD_NAMESPACE)"]
    # The peering object is made by a Job once its CRD is served (one `kubectl apply -k` installs all),
    # as the kind the overlay's operator uses, in the Job's namespace; its grant is "create that kind".
    for overlay, kind, plural in (("cluster-wide", "ClusterKopfPeering", "clusterkopfpeerings"),
                                  ("namespaced", "KopfPeering", "kopfpeerings")):
        objs = built[overlay]
        assert not [o for o in objs if o["kind"] in ("KopfPeering", "ClusterKopfPeering")]
        job = one(objs, "Job", "dbrev-peering-setup")
        (c,) = job["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}
        assert env["PEERING_KIND"] == kind and env.get("PEERING_NAME", "dbrev") == "dbrev"
        assert c["image"] == IMAGE and c["securityContext"]["readOnlyRootFilesystem"] is True
        role = one(objs, "ClusterRole" if kind == "ClusterKopfPeering" else "Role", "dbrev-peering-setup")
        assert role["rules"] == [{"apiGroups": ["kopf.dev"], "resources": [plural], "verbs": ["create"]}]
    # the restricted Pod Security Standard where the namespace is the operator's alone
    labels = one(built["cluster-wide"], "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert "pod-security.kubernetes.io/enforce" not in one(built["namespaced"], "Namespace")["metadata"]["labels"]


# ------------------------------------------------------------------ RBAC: shape (test_rbac.py: exactness)

def bindings_of(objs: list[dict], sa=(NS, "dbrev-operator")) -> list[dict]:
    return [o for o in objs if o["kind"] in ("ClusterRoleBinding", "RoleBinding")
            and any(s["kind"] == "ServiceAccount" and (s["namespace"], s["name"]) == sa for s in o["subjects"])]


@pytest.mark.cluster
def test_cluster_wide_rbac(built):
    objs = built["cluster-wide"]
    bound = {(b["kind"], b["roleRef"]["kind"], b["roleRef"]["name"]) for b in bindings_of(objs)}
    assert bound == {("ClusterRoleBinding", "ClusterRole", "dbrev-operator"),
                     ("ClusterRoleBinding", "ClusterRole", "dbrev-operator-peering")}
    assert one(objs, "ClusterRole", "dbrev-operator")["rules"] == OPERATOR_RULES
    assert one(objs, "ClusterRole", "dbrev-operator-peering")["rules"] == peering_rules("clusterkopfpeerings")
    assert not [o for o in objs if o["kind"] in ("Role", "RoleBinding")]


@pytest.mark.cluster
def test_namespaced_rbac_grants_nothing_cluster_wide(built):
    objs = built["namespaced"]
    assert not [o for o in objs if o["kind"] == "ClusterRoleBinding"]
    bound = {(b["kind"], b["metadata"]["namespace"], b["roleRef"]["kind"], b["roleRef"]["name"])
             for b in bindings_of(objs)}
    assert bound == {("RoleBinding", NS, "ClusterRole", "dbrev-operator"),
                     ("RoleBinding", NS, "Role", "dbrev-operator-peering")}
    assert one(objs, "ClusterRole", "dbrev-operator")["rules"] == OPERATOR_RULES
    role = one(objs, "Role", "dbrev-operator-peering")
    assert role["metadata"]["namespace"] == NS and role["rules"] == peering_rules("kopfpeerings")


@pytest.mark.cluster
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_wildcards_no_writes_to_secrets_or_configmaps(built, overlay):
    for o in built[overlay]:
        for rule in o.get("rules") or []:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (o["metadata"]["name"], rule)
            if {"secrets", "configmaps"} & set(rule["resources"]):
                assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
            verbs = set(rule["verbs"])
            if rule["apiGroups"] == [""] and rule["resources"] == ["pods"]:
                # the one delete: a StatefulSet's forced rollback (healthgate.stuck_pods picks the pods)
                verbs -= {"delete"}
            if rule["apiGroups"] == ["batch"] and rule["resources"] == ["jobs"]:
                # the migration Jobs it creates: one that failed to start or outlived its deadline is deleted
                verbs -= {"delete"}
            assert not {"escalate", "bind", "impersonate", "delete", "deletecollection", "update"} & verbs


# ------------------------------------------------------------------ Dockerfile (no Docker here: by review)

def dockerfile_stages() -> list[list[str]]:
    lines, cur = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#"):
            continue
        cur += raw.rstrip("\\") + " " if raw.endswith("\\") else raw
        if not raw.endswith("\\"):
            if cur.strip():
                lines.append(cur.strip())
            cur = ""
    stages: list[list[str]] = []
    for ln in lines:
        if ln.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(ln)
    return stages


def test_dockerfile_is_multi_stage_slim_and_non_root():
    text_all = (ROOT / "Dockerfile").read_text()
    # the base is a build argument: the public slim Python for users, a local Debian base in CI
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text_all, re.M)
    stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage: a builder and a final stage"
    assert stages[0][0].split()[1] == "${BASE_IMAGE}" and " AS " in stages[0][0].upper()
    final = stages[-1]
    assert final[0].split()[1] == "${BASE_IMAGE}", "the final image is the same slim base"
    text = "\n".join(final)
    for tool in ("build-essential", "gcc", "g++", "make ", "apt-get install", "git ", "pip install"):
        assert tool not in text, f"{tool!r} in the final stage"
    assert "COPY --from=builder /opt/dbrev /opt/dbrev" in text  # only the builder's environment
    assert "COPY operator" not in text  # no source tree in the final image
    assert not re.search(r"^RUN --mount", text_all, re.M)  # builds with the classic builder too (no BuildKit)
    users = [ln.split()[1] for ln in final if ln.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] == "65532", "runs as the non-root uid the Deployment expects"
    assert 'ENTRYPOINT ["dbrev"]' in final and 'CMD ["operator", "-A"]' in final
    assert "--no-index --find-links=/wheelhouse" in "\n".join(stages[0])  # offline builds


def test_dockerignore_keeps_the_context_small():
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    assert {".git", ".venv", ".cluster", "tests", "bench"} <= ignored
    assert not {"operator", "pyproject.toml", "README.md", ".wheelhouse"} & ignored  # what the builder copies


# ------------------------------------------------------------------ Makefile targets for Docker users

@pytest.mark.parametrize("target,tool", [("kind-up", "docker"), ("image", "docker"), ("kind-load", "docker"),
                                         ("deploy", "kubectl"), ("undeploy", "kubectl"), ("e2e-kind", "docker")])
def test_docker_targets_fail_clearly_without_their_tools(target, tool, tmp_path):
    make = shutil.which("make")
    if not make:
        pytest.skip("make is not installed")
    # PATH without docker, kind or kubectl (the recipes' shell is /bin/bash, found by its full path)
    p = subprocess.run([make, "-s", "-C", str(ROOT), target], capture_output=True, text=True, timeout=60,
                       env={"PATH": str(tmp_path), "HOME": str(tmp_path)})
    assert p.returncode != 0
    first = {"kind-load": "image", "e2e-kind": "kind-up"}.get(target, target)  # the prerequisite that stops
    assert re.search(rf"'make {re.escape(first)}' needs {tool}", p.stderr), p.stderr
    assert "docs/install.md" in p.stderr


def test_makefile_keeps_its_targets_and_deploys_the_overlays():
    text = (ROOT / "Makefile").read_text()
    for target in ("setup", "test", "test-fast", "demo", "bench", "cluster-up", "cluster-down", "crds",
                   "kind-up", "image", "kind-load", "deploy", "undeploy", "e2e-kind"):
        assert re.search(rf"^{re.escape(target)}:", text, re.M), target
    assert "manifests/overlays/$(OVERLAY)" in text and "OVERLAY ?= cluster-wide" in text
    assert "image: ghcr.io/dbrev/dbrev:" in text  # what deploy swaps for $(IMG); must match the Deployment
    assert f"image: {IMAGE}" in (MANIFESTS / "base" / "deployment.yaml").read_text()
