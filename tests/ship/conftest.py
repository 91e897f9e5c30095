"""Fixtures of the "ship it" tests: the ecosystem's CRDs installed in the test cluster.

Helpers and where each CRD comes from: shiptools.py.
"""

from __future__ import annotations

import pytest

from shiptools import (
    ARGO_CD,
    FLUX_KUSTOMIZE_CONTROLLER,
    PROMETHEUS_OPERATOR,
    ROOT,
    go_module_dir,
    install_crds,
)


@pytest.fixture(scope="session")
def dbrev_crd(control_plane):
    install_crds(control_plane, [ROOT / "crds" / "dbrev.io_databaserevisions.yaml"])


@pytest.fixture(scope="session")
def monitoring_crds(control_plane):
    d = go_module_dir(*PROMETHEUS_OPERATOR) / "example" / "prometheus-operator-crd"
    install_crds(control_plane, [d / "monitoring.coreos.com_servicemonitors.yaml",
                                 d / "monitoring.coreos.com_prometheusrules.yaml"])


@pytest.fixture(scope="session")
def argocd_crds(control_plane):
    install_crds(control_plane, [go_module_dir(*ARGO_CD) / "manifests" / "crds" / "application-crd.yaml"])


@pytest.fixture(scope="session")
def flux_crds(control_plane):
    d = go_module_dir(*FLUX_KUSTOMIZE_CONTROLLER) / "config" / "crd" / "bases"
    install_crds(control_plane, [d / "kustomize.toolkit.fluxcd.io_kustomizations.yaml"])
