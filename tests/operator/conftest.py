"""Operator end-to-end fixtures: the real control plane, real PostgreSQL, the operator as a process."""

from __future__ import annotations

from pathlib import Path

import pytest

from opharness import Kube, Operator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def crd_installed(control_plane):
    kube = Kube(control_plane)
    kube("apply", "-f", str(ROOT / "crds"))
    kube("wait", "--for=condition=Established", "crd/databaserevisions.dbrev.io", "--timeout=60s")
    return True


@pytest.fixture(scope="session")
def operator_kubeconfig(control_plane, crd_installed) -> str:
    """The identity the operator runs as (admin here; manifests' ServiceAccount where RBAC is tested)."""
    return str(control_plane.kubeconfig)


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
