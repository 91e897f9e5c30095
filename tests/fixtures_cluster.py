"""Control-plane fixtures: one real etcd + kube-apiserver per test session.

Fixtures (mark tests that use them ``@pytest.mark.cluster``):

``control_plane``  session — (``session_control_plane`` by its own name, for fixtures that must
                   keep meaning the bare control plane where a folder overrides ``control_plane``,
                   as tests/operator does in Pod mode) a started :class:`dbrev_dev.envtest.controlplane.ControlPlane`
                   (``.kubeconfig``, ``.kubectl(...)``, ``.kubectl_path``,
                   ``.api_client(as_service_account=(ns, name))``,
                   ``.service_account_kubeconfig(ns, name)``, ``.request(...)``).
                   Sets ``KUBECONFIG`` in ``os.environ`` for the session, so Kopf
                   and the ``kubernetes`` client find it.
``kubeconfig``     session — the admin kubeconfig path (str).
``kubectl``        session — path (str) of the kubectl built with kube-apiserver.
``k8s_api``        function — an admin ``kubernetes.client.ApiClient`` (closed after).
``namespace``      function — a fresh namespace (with a ``default`` ServiceAccount) for
                   the test; deletion is started afterwards but never completes (there
                   is no controller-manager), which is fine: names are unique.

The binaries come from ``KUBEBUILDER_ASSETS`` or the version-keyed cache; when
missing they are built (minutes on a fresh machine; progress goes to the
terminal).  A failed build fails the tests — cluster tests are never skipped.
``DBREV_TEST_CLUSTER_DIR`` keeps the control plane's folder (logs) at a fixed place.

``node``           session — a real one-node cluster (:class:`dbrev_dev.envtest.node.NodeCluster`:
                   kubelet, containerd, PostgreSQL inside the node at ``node.database_url()``)
                   with the operator image built and loaded as ``ghcr.io/dbrev/dbrev:0.1.0`` (the
                   manifests' reference). It does not touch ``KUBECONFIG``. Without what a node
                   needs (root, containerd, the node binaries...) the tests using it skip with the
                   reason, except under ``CI=true``, where they fail: CI always runs them.

``DBREV_TEST_KUBECONFIG=PATH`` uses an existing cluster instead (kind, or a
control plane from ``make cluster-up``): nothing is built or started, and the
tests about the local control-plane tool itself are skipped.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import uuid
from pathlib import Path

import pytest

from dbrev_dev.envtest.assets import AssetError  # a checkout without `pip install -e .`: pyproject's pythonpath
from dbrev_dev.envtest.controlplane import (
    ControlPlane,
    ControlPlaneError,
    ExistingCluster,
)

__all__ = ["session_control_plane", "control_plane", "kubeconfig", "kubectl", "k8s_api", "namespace", "local_control_plane_only", "node",
           "node_or_skip_reason"]

EXISTING_KUBECONFIG = os.environ.get("DBREV_TEST_KUBECONFIG")

# For tests of the local control-plane tool itself (they start their own).
local_control_plane_only = pytest.mark.skipif(
    bool(EXISTING_KUBECONFIG),
    reason="DBREV_TEST_KUBECONFIG points at an existing cluster; the local control plane is not in use",
)


@pytest.fixture(scope="session")
def session_control_plane(tmp_path_factory, pytestconfig):
    """A real etcd + kube-apiserver for the whole session, stopped at the end."""
    if EXISTING_KUBECONFIG:
        try:
            cp = ExistingCluster(EXISTING_KUBECONFIG).start()
        except (ControlPlaneError, OSError, KeyError) as e:
            pytest.fail(f"DBREV_TEST_KUBECONFIG={EXISTING_KUBECONFIG}: {e}", pytrace=False)
        yield from _with_kubeconfig_env(cp)
        return
    folder = os.environ.get("DBREV_TEST_CLUSTER_DIR")
    root = Path(folder) if folder else tmp_path_factory.mktemp("control-plane")
    cp = ControlPlane(root, die_with_parent=True)  # no orphans if pytest is killed
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    # Let a first-time build show its progress instead of looking hung.
    uncaptured = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    try:
        with uncaptured:
            cp.start()
            print(
                f"\n[dbrev-envtest] control plane {cp.server} up in "
                f"{cp.timings['startup']:.1f}s; kubeconfig {cp.kubeconfig}",
                file=sys.stderr,
            )
    except AssetError as e:
        pytest.fail(f"control-plane binaries unavailable: {e}", pytrace=False)
    except ControlPlaneError as e:
        pytest.fail(f"control plane did not start: {e}", pytrace=False)
    yield from _with_kubeconfig_env(cp)


@pytest.fixture(scope="session")
def control_plane(session_control_plane):
    return session_control_plane


def _with_kubeconfig_env(cp):
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cp.kubeconfig)
    try:
        yield cp
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        cp.stop()


@pytest.fixture(scope="session")
def kubeconfig(session_control_plane) -> str:
    """Path of the admin kubeconfig (embedded certificates; system:masters)."""
    return str(session_control_plane.kubeconfig)


@pytest.fixture(scope="session")
def kubectl(session_control_plane) -> str:
    """Path of the kubectl built at the kube-apiserver's version; prefer it to PATH's."""
    return str(session_control_plane.kubectl_path)


@pytest.fixture
def k8s_api(control_plane):
    """An admin kubernetes.client.ApiClient (the global client config is untouched)."""
    api = control_plane.api_client()
    try:
        yield api
    finally:
        api.close()


def _namespace_name(nodeid: str) -> str:
    test = nodeid.rsplit("::", 1)[-1]
    slug = re.sub(r"[^a-z0-9-]+", "-", test.lower()).strip("-")[:40].strip("-") or "t"
    return f"{slug}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(control_plane, request) -> str:
    """A fresh namespace for this test (name derived from the test's name)."""
    name = control_plane.create_namespace(_namespace_name(request.node.nodeid))
    try:
        yield name
    finally:
        control_plane.delete_namespace(name)


def node_or_skip_reason() -> str | None:
    """Why the node tests cannot run here (None: they can)."""
    from dbrev_dev.envtest.node import unavailable_reason

    return unavailable_reason()


@pytest.fixture(scope="session")
def node(tmp_path_factory, pytestconfig):
    """A real one-node cluster for the session, with PostgreSQL inside it and the operator image loaded."""
    from dbrev_dev.envtest import images
    from dbrev_dev.envtest.node import NodeCluster, NodeError

    reason = node_or_skip_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: the one-node cluster tests must run, but: {reason}", pytrace=False)
        pytest.skip(f"no one-node cluster here: {reason}")
    folder = os.environ.get("DBREV_TEST_NODE_DIR")
    root = Path(folder) if folder else tmp_path_factory.mktemp("node")
    n = NodeCluster(root, die_with_parent=True, postgres=True)
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    uncaptured = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    try:
        with uncaptured:
            archive = images.operator_archive()  # minutes the first time; cached by source hash
            n.start()
            n.load_image(archive, images.MANIFESTS_IMAGE)
            print(f"\n[dbrev-envtest] one-node cluster {n.server} Ready in {n.timings['node-ready']:.1f}s; "
                  f"kubeconfig {n.kubeconfig}", file=sys.stderr)
    except (AssetError, NodeError) as e:
        n.stop()
        pytest.fail(f"the one-node cluster did not start: {e}", pytrace=False)
    try:
        yield n
    finally:
        n.stop()  # raises when anything (process, netns, mount, veth, cgroup) is left
