"""Operator end-to-end fixtures: the real control plane, real PostgreSQL, the operator as a process.

The operator runs as the ServiceAccount of manifests/ with exactly the RBAC of
``manifests/overlays/cluster-wide`` (a real TokenRequest token), so a verb the manifests miss fails
these tests.  ``DBREV_TEST_OPERATOR_AS=admin`` runs it as the cluster admin instead (to tell an
RBAC problem from another one).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from opharness import Kube, Operator

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "manifests" / "overlays" / "cluster-wide"
# What the operator's identity is made of; the Deployment, Service, CRDs and peering object are not
# needed here (there is no kubelet, and the tests run the operator standalone as a local process).
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@pytest.fixture(scope="session")
def crd_installed(control_plane):
    kube = Kube(control_plane)
    kube("apply", "-f", str(ROOT / "crds"))
    kube("wait", "--for=condition=Established", "crd/databaserevisions.dbrev.io", "--timeout=60s")
    return True


@pytest.fixture(scope="session")
def operator_identity(control_plane, crd_installed) -> tuple[str, str] | None:
    """(namespace, name) of the manifests' ServiceAccount, its RBAC applied; None when running as admin."""
    if os.environ.get("DBREV_TEST_OPERATOR_AS") == "admin":
        return None
    built = subprocess.run([str(control_plane.kubectl_path), "kustomize", str(OVERLAY)], capture_output=True,
                           text=True, check=True).stdout
    every = [o for o in yaml.safe_load_all(built) if o]
    objs = [o for o in every if o["kind"] in RBAC_KINDS]
    Kube(control_plane).apply("---\n".join(yaml.safe_dump(o) for o in objs))
    # the Deployment's ServiceAccount (the overlay has another one: its peering Job's)
    (dep,) = [o for o in every if o["kind"] == "Deployment"]
    return dep["metadata"]["namespace"], dep["spec"]["template"]["spec"]["serviceAccountName"]


@pytest.fixture
def operator_kubeconfig(control_plane, operator_identity) -> str:
    """The kubeconfig the operator runs with: a fresh token of the manifests' ServiceAccount."""
    if operator_identity is None:
        return str(control_plane.kubeconfig)
    return str(control_plane.service_account_kubeconfig(*operator_identity, expiration_seconds=3600))


@pytest.fixture
def kube(control_plane, crd_installed) -> Kube:
    return Kube(control_plane)


@pytest.fixture
def start_operator(operator_kubeconfig, tmp_path):
    started: list[Operator] = []

    def start(namespaces, env=None, args=None, kubeconfig=None, wait=True) -> Operator:
        op = Operator(kubeconfig or operator_kubeconfig, list(namespaces), tmp_path, env, args).start(wait)
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()
