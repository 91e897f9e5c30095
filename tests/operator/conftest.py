"""Operator end-to-end fixtures: real PostgreSQL, a real cluster, and the operator in one of two shapes.

**Pod mode** (the default where a one-node cluster can run, and always under ``CI=true``): the operator
is the Deployment of ``manifests/overlays/cluster-wide``, applied unmodified on the one-node cluster
(``node``) from the image — its ServiceAccount and RBAC, in-cluster config, securityContext, probes and
resource limits. The env and args a test passes to ``start_operator`` become a patch of the Deployment
(one shared Deployment: a rollout only when they differ from the running shape); metrics and liveness
are read through the API server's pod proxy, logs with ``kubectl logs``. The test's namespace, its
databases (``database_url``, ``pg_admin_url``, ``new_postgres``) and ``control_plane`` are the node's,
so pods reach them.

**Process mode** (``DBREV_TEST_OPERATOR=process``, the quick local option, and the default where no
node can run outside CI): ``dbrev operator`` as a host process against the bare control plane, as the
ServiceAccount of manifests/ with exactly the RBAC of ``manifests/overlays/cluster-wide`` (a real
TokenRequest token), so a verb the manifests miss fails these tests. ``DBREV_TEST_OPERATOR_AS=admin``
runs it as the cluster admin instead (to tell an RBAC problem from another one).

A few tests are only meaningful for a host process; ``PROCESS_ONLY`` names them with the reason, and
they run in process mode in every session (never skipped).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from opharness import Kube, Operator, PodOperators

ROOT = Path(__file__).resolve().parents[2]
OVERLAY = ROOT / "manifests" / "overlays" / "cluster-wide"
# What the operator's identity is made of; the Deployment, Service, CRDs and peering object are not
# needed here (there is no kubelet, and the tests run the operator standalone as a local process).
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")

MODE_ENV = "DBREV_TEST_OPERATOR"  # "pod" or "process"
# file, or file::test -> why it runs the operator as a host process in every mode
PROCESS_ONLY = {
    "test_ha.py::test_peered_replicas_never_both_work_and_fail_over":
        "two operators of different peering priorities side by side, one of them SIGKILLed: the Deployment "
        "has one shape; through a real rollout, peering is test_pod.py::test_a_rollout_never_runs_two_peers...",
    "test_faults_e2e.py::test_a_run_that_ends_while_the_api_server_is_unreachable_is_recorded_when_it_is_back":
        "it cuts the operator's way to the API server with a relay on the host's loopback, which needs "
        "the operator to run with a kubeconfig naming that relay",
    "test_healthgate_e2e.py":
        "it plays the deployment controller by writing the gated Deployment's status subresource; on the node "
        "the real deployment controller owns that status",
}


def session_mode(config) -> str:
    cached = getattr(config, "_dbrev_operator_mode", None)
    if cached:
        return cached
    chosen = os.environ.get(MODE_ENV, "").strip().lower()
    if chosen not in ("", "pod", "process"):
        raise pytest.UsageError(f"{MODE_ENV}={chosen!r}: use 'pod' or 'process'")
    if not chosen and os.environ.get("DBREV_TEST_KUBECONFIG"):
        chosen = "process"  # an existing cluster (kind...): its pods cannot reach these tests' databases
    if not chosen:
        from fixtures_cluster import node_or_skip_reason

        # CI=true: Pod mode, and the node fixture fails (never skips) when a node cannot run
        chosen = "pod" if os.environ.get("CI") == "true" or node_or_skip_reason() is None else "process"
    config._dbrev_operator_mode = chosen
    return chosen


def process_only_reason(item) -> str | None:
    path = Path(str(item.fspath)).name
    return PROCESS_ONLY.get(f"{path}::{item.originalname}") or PROCESS_ONLY.get(path)


def mode_of(item) -> str:
    if process_only_reason(item):
        return "process"
    return session_mode(item.config)


def pytest_report_header(config):
    return f"tests/operator: the operator runs as a {'Pod' if session_mode(config) == 'pod' else 'host process'} " \
           f"({MODE_ENV}={session_mode(config)})"


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    long = [i for i in items if Path(str(i.fspath)).parent == here and "long_migration" in getattr(i, "fixturenames", ())]
    config._dbrev_long_migration = bool(long)
    # the test that waits for the ten-minute migration goes last in the session: everything else overlaps it
    items[:] = [i for i in items if i not in long] + long


@pytest.fixture
def operator_mode(request) -> str:
    return mode_of(request.node)


@pytest.fixture
def control_plane(request, operator_mode):
    """The cluster this test's operator runs against: the node (Pod mode) or the bare control plane."""
    if operator_mode == "pod":
        return request.getfixturevalue("node")
    return request.getfixturevalue("session_control_plane")


@pytest.fixture
def pg_admin_url(request, operator_mode):
    """Pod mode: the PostgreSQL inside the node (pods reach it, and so does the host)."""
    if operator_mode == "pod":
        return request.getfixturevalue("node").database_url()
    return request.getfixturevalue("session_pg_admin_url")


@pytest.fixture
def new_postgres(request, operator_mode):
    """A factory of (unstarted) PostgreSQL servers of the test's own, where its operator reaches them."""
    from dbrev.pg.ephemeral import PostgresServer, free_port

    if operator_mode != "pod":
        return PostgresServer
    from dbrev_dev.envtest import node as N

    request.getfixturevalue("node")

    def inside_the_node() -> PostgresServer:
        port = free_port()
        # under the node's run folder: its teardown removes it, also after a crash
        return PostgresServer(host=N.NODE_IP, port=port, netns=N.NETNS, root=N.RUN_DIR / f"pg-{port}")
    return inside_the_node


@pytest.fixture
def second_host_name(request, operator_mode, kube):
    """``(namespace, url) -> url``: the same database under another host name, as the operator sees it.

    Process mode: ``localhost`` for ``127.0.0.1``. Pod mode: a Service without a selector whose
    EndpointSlice is the node's PostgreSQL, i.e. its ClusterIP (kube-proxy forwards it)."""
    def process(ns: str, url: str) -> str:
        assert "@127.0.0.1:" in url
        return url.replace("@127.0.0.1:", "@localhost:")

    def pod(ns: str, url: str) -> str:
        from sqlalchemy.engine import make_url

        u = make_url(url)
        name = f"pg-{uuid.uuid4().hex[:6]}"
        kube.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                    "spec": {"ports": [{"name": "pg", "port": 5432, "targetPort": u.port or 5432}]}})
        kube.apply({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4", "ports": [{"name": "pg", "port": u.port or 5432, "protocol": "TCP"}],
                    "endpoints": [{"addresses": [u.host]}]})
        ip = kube("get", "service", name, "-n", ns, "-o", "jsonpath={.spec.clusterIP}").strip()
        assert ip and ip != u.host
        return u.set(host=ip, port=5432).render_as_string(hide_password=False)
    return pod if operator_mode == "pod" else process


@pytest.fixture(scope="session")
def crd_installed(session_control_plane):
    kube = Kube(session_control_plane)
    kube("apply", "-f", str(ROOT / "crds"))
    session_control_plane.wait_established("databaserevisions.dbrev.io")
    return True


@pytest.fixture(scope="session")
def operator_identity(session_control_plane, crd_installed) -> tuple[str, str] | None:
    """(namespace, name) of the manifests' ServiceAccount, its RBAC applied; None when running as admin."""
    if os.environ.get("DBREV_TEST_OPERATOR_AS") == "admin":
        return None
    built = subprocess.run([str(session_control_plane.kubectl_path), "kustomize", str(OVERLAY)],
                           capture_output=True, text=True, check=True).stdout
    every = [o for o in yaml.safe_load_all(built) if o]
    objs = [o for o in every if o["kind"] in RBAC_KINDS]
    Kube(session_control_plane).apply("---\n".join(yaml.safe_dump(o) for o in objs))
    # the Deployment's ServiceAccount (the overlay has another one: its peering Job's)
    (dep,) = [o for o in every if o["kind"] == "Deployment"]
    return dep["metadata"]["namespace"], dep["spec"]["template"]["spec"]["serviceAccountName"]


@pytest.fixture
def operator_kubeconfig(request, control_plane, operator_mode) -> str:
    """The kubeconfig a host-process operator runs with: a fresh token of the manifests' ServiceAccount.
    (Pod mode: the admin's; the pod itself uses its in-cluster config.)"""
    if operator_mode == "pod":
        return str(control_plane.kubeconfig)
    identity = request.getfixturevalue("operator_identity")
    if identity is None:
        return str(control_plane.kubeconfig)
    return str(control_plane.service_account_kubeconfig(*identity, expiration_seconds=3600))


@pytest.fixture
def kube(request, control_plane, operator_mode) -> Kube:
    if operator_mode == "pod":
        request.getfixturevalue("pod_operators").install()  # the CRDs come with the overlay
    else:
        request.getfixturevalue("crd_installed")
    return Kube(control_plane)


@pytest.fixture(scope="session")
def pod_operators(request, node) -> PodOperators:
    """The session's operator Deployment on the node (installed on first use)."""
    if getattr(request.config, "_dbrev_long_migration", False):
        # first: the ten-minute migration holds its database's lock before the cluster-wide operator
        # exists, so that operator (which watches every namespace, dbrev-long too) only ever finds the
        # lock held (LockBusy, retrying) and the pod under test is the one that runs it
        request.getfixturevalue("long_migration")
    runner = PodOperators(node)
    request.config._dbrev_pod_operators = runner  # for _shared_operator_only_where_used
    return runner


@pytest.fixture(autouse=True)
def _shared_operator_only_where_used(request):
    """A test on the node that does not use the shared operator Deployment (it runs an operator of its own,
    or needs none) runs with that Deployment scaled to 0, which watches every namespace and would serve
    the test's resources too. The next test that uses it scales it back (PodOperators.ensure)."""
    names = request.fixturenames
    if "node" not in names or "pod_operators" in names or (
            mode_of(request.node) == "pod" and ("start_operator" in names or "kube" in names)):
        return
    runner = getattr(request.config, "_dbrev_pod_operators", None)
    if runner is not None:
        runner.suspend()


@pytest.fixture
def start_operator(request, operator_mode, tmp_path):
    started: list = []
    if operator_mode == "pod":
        runner = request.getfixturevalue("pod_operators")

        def start(namespaces, env=None, args=None, kubeconfig=None, wait=True):
            op = runner.start(namespaces, env, args, kubeconfig, wait)
            started.append(op)
            return op
    else:
        default_kubeconfig = request.getfixturevalue("operator_kubeconfig")

        def start(namespaces, env=None, args=None, kubeconfig=None, wait=True):
            op = Operator(kubeconfig or default_kubeconfig, list(namespaces), tmp_path, env, args).start(wait)
            started.append(op)
            return op

    yield start
    for op in started:
        op.release()


# ---------------------------------------------------------------------------------------------------
# The ten-minute migration (issue 10: "a 10-minute migration must not get the pod restarted").
# Ten real minutes, without adding ten minutes to the suite: the first Pod-mode test of a session that
# includes test_zz_long_migration.py starts it (this fixture), every other test runs meanwhile, and
# that module's test, which sorts last (by name, and pytest_collection_modifyitems moves it to the end
# of the session), waits for the rest of it and checks the outcome. It has its own
# namespace, database and operator Deployment (the namespaced overlay, installed into LONG_NS), so
# the pod kills, rollouts and patches of the shared operator never touch the pod under test.

LONG_NS = "dbrev-long"
LONG_SECONDS = 600
LONG_REV = "x001aaaa"


@pytest.fixture(scope="session")
def long_migration(request, tmp_path_factory):
    import time

    if session_mode(request.config) == "process" and os.environ.get("CI") != "true":
        pytest.skip(f"{MODE_ENV}=process, the quick local option: the ten-minute Pod test runs in Pod mode")
    node = request.getfixturevalue("node")

    from dbrev.pg.ephemeral import create_database
    from opharness import dbrev_resource, ready_pods, wait_for
    from scriptgen import write_script

    kube = Kube(node)
    node.create_namespace(LONG_NS)
    d = tmp_path_factory.mktemp("long-overlay")
    (d / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "namespace": LONG_NS,
        "resources": [os.path.relpath(ROOT / "manifests" / "overlays" / "namespaced", d)],
        # as docs/install.md, "Another namespace": the namespace is not the overlay's to create
        "patches": [{"patch": "$patch: delete\napiVersion: v1\nkind: Namespace\nmetadata: {name: dbrev-system}\n"}],
    }))
    kube("apply", "-k", str(d))
    kube("-n", LONG_NS, "rollout", "status", "deployment/dbrev-operator", "--timeout=110s")
    wait_for(lambda: kube("get", "kopfpeering", "dbrev", "-n", LONG_NS, check=False)[0] == 0, 90,
             "the namespaced peering object")
    url = create_database(node.database_url())
    kube.secret_url(LONG_NS, "db", url)
    m = tmp_path_factory.mktemp("long-migrations")
    write_script(m, LONG_REV, None, f'op.execute("SELECT pg_sleep({LONG_SECONDS}) -- ten-minute-marker")')
    kube.configmap_from(LONG_NS, "migrations", m)
    (pod,) = wait_for(lambda: ready_pods(kube, LONG_NS), 60, "the namespaced operator pod")
    started = time.monotonic()  # before the run can start: the run's ten minutes end after started + 600
    kube.apply(dbrev_resource(LONG_NS, "long", "head"))
    from dbhelp import q

    wait_for(lambda: q(url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%ten-minute-marker%' "
                            "AND pid <> pg_backend_pid()")[0][0], 120, "the ten-minute step to start")
    yield {"kube": kube, "url": url, "pod": pod, "started": started, "ns": LONG_NS, "name": "long",
           "revision": LONG_REV, "seconds": LONG_SECONDS}


@pytest.fixture(scope="module")
def deployed(pod_operators):
    """The unmodified overlay's operator Deployment, applied once with one command, as docs/install.md says; the
    session's other Pod-mode tests share it and may have patched it: back to the overlay's own shape."""
    pod_operators.ensure(pristine=True)
    return pod_operators.kube


@pytest.fixture
def app(request, node, deployed):
    """A fresh namespace with a fresh database of the node's PostgreSQL in the Secret ``db``."""
    from dbrev.pg.ephemeral import create_database, drop_database

    prefix = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")[:8].replace("_", "-")
    ns = node.create_namespace(f"{prefix}-{uuid.uuid4().hex[:6]}")
    admin = node.database_url()
    url = create_database(admin)
    deployed.secret_url(ns, "db", url)
    yield ns, url
    deployed("delete", "dbrev", "--all", "-n", ns, "--wait=false", check=False)
    drop_database(admin, url.rsplit("/", 1)[1])
