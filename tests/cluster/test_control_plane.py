"""The local control plane is a real Kubernetes API server.

CRD schema validation and pruning, the status subresource, watches, Events and
RBAC are all enforced by kube-apiserver itself — nothing here is mocked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from dbrev_dev.envtest import assets
from dbrev_dev.envtest.controlplane import port_is_listening
from fixtures_cluster import local_control_plane_only

pytestmark = pytest.mark.cluster

GROUP, VERSION, PLURAL, KIND = "envtest.dbrev.io", "v1", "widgets", "Widget"

WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": KIND, "listKind": "WidgetList"},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "phase": {"type": "string"},
                                    "observedGeneration": {"type": "integer"},
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def eventually(fn, timeout=30.0, interval=0.1):
    """Retry ``fn`` until it returns without AssertionError/ApiException."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except (AssertionError, ApiException):
            if time.monotonic() > deadline:
                raise
            time.sleep(interval)


@pytest.fixture(scope="module")
def widget_crd(control_plane):
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(WIDGET_CRD))
    control_plane.wait_established(f"{PLURAL}.{GROUP}")
    return WIDGET_CRD


def widget(name, **spec):
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


# --------------------------------------------------------------------------- basics


def test_readyz_answers_ok_through_cached_kubectl(control_plane):
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    versions = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    if not os.environ.get("KUBEBUILDER_ASSETS") and not os.environ.get("DBREV_TEST_KUBECONFIG"):
        # kubectl and kube-apiserver come from the same build
        assert versions["serverVersion"]["gitVersion"] == assets.KUBERNETES_VERSION
        assert versions["clientVersion"]["gitVersion"] == assets.KUBERNETES_VERSION


@local_control_plane_only
def test_kubeconfig_is_self_contained(kubeconfig):
    doc = json.loads(Path(kubeconfig).read_text())
    cluster = doc["clusters"][0]["cluster"]
    user = doc["users"][0]["user"]
    assert re.fullmatch(r"https://127\.0\.0\.1:\d+", cluster["server"])
    assert "certificate-authority-data" in cluster and "certificate-authority" not in cluster
    assert {"client-certificate-data", "client-key-data"} <= set(user)
    assert oct(Path(kubeconfig).stat().st_mode & 0o777) == "0o600"


def test_kubernetes_client_loads_kubeconfig_as_admin(kubeconfig):
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    with client.ApiClient(cfg) as api:
        names = {ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items}
        assert {"default", "kube-system"} <= names
        review = client.AuthenticationV1Api(api).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
        assert "system:masters" in review.status.user_info.groups


@local_control_plane_only
def test_apiserver_listens_on_loopback_only(control_plane):
    # --bind-address=127.0.0.1: the port is not reachable on other local addresses
    import socket

    hostname_ips = set()
    try:
        hostname_ips = {
            info[4][0]
            for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
        } - {"127.0.0.1"}
    except OSError:
        pass
    assert port_is_listening(control_plane.port)
    for ip in hostname_ips:
        if not ip.startswith("127."):
            assert not port_is_listening(control_plane.port, ip)


# --------------------------------------------------------------------------- CRDs, status, watch, Events


def test_crd_validation_status_subresource_watch_and_events(control_plane, k8s_api, widget_crd, namespace):
    custom = client.CustomObjectsApi(k8s_api)
    core = client.CoreV1Api(k8s_api)
    args = (GROUP, VERSION, namespace, PLURAL)

    # Schema validation is the real apiserver's: wrong type and below minimum -> 422.
    for bad in ({"size": "big"}, {"size": 0}, {}):
        exc = eventually(lambda: _refused(custom, args, widget("bad", **bad)), timeout=10)
        assert exc.status == 422, exc.body
        assert "spec.size" in exc.body

    # Unknown fields are pruned; status sent on create is ignored (status subresource).
    body = widget("w1", size=3, colour="red")
    body["status"] = {"phase": "Bogus"}
    obj = custom.create_namespaced_custom_object(*args, body)
    assert obj["spec"] == {"size": 3}
    assert "status" not in obj
    uid, rv = obj["metadata"]["uid"], obj["metadata"]["resourceVersion"]

    # Watch from the created resourceVersion in the background.
    seen: list[dict] = []
    got_status = threading.Event()

    def watcher():
        w = watch.Watch()
        for ev in w.stream(
            custom.list_namespaced_custom_object, *args,
            resource_version=rv, timeout_seconds=30,
        ):
            seen.append(ev)
            if (ev["object"].get("status") or {}).get("phase") == "Ready":
                got_status.set()
                w.stop()

    t = threading.Thread(target=watcher, daemon=True)
    t.start()

    patched = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, "w1",
        {"status": {"phase": "Ready", "observedGeneration": obj["metadata"]["generation"]}},
    )
    assert patched["status"] == {"phase": "Ready", "observedGeneration": 1}
    assert got_status.wait(30), f"watch saw {[e['type'] for e in seen]}"
    t.join(5)
    assert seen[-1]["type"] == "MODIFIED"
    assert seen[-1]["object"]["metadata"]["uid"] == uid

    # A status change through the main resource is ignored; spec changes bump generation.
    obj = custom.patch_namespaced_custom_object(
        *args[:3], PLURAL, "w1", {"spec": {"size": 4}, "status": {"phase": "Ignored"}}
    )
    assert obj["spec"]["size"] == 4
    assert obj["metadata"]["generation"] == 2
    assert obj["status"]["phase"] == "Ready"

    # An Event about the custom resource, written and read back.
    ev = core.create_namespaced_event(
        namespace,
        client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name="w1."),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind=KIND, name="w1",
                namespace=namespace, uid=uid,
            ),
            reason="Migrated",
            message="at revision abc123",
            type="Normal",
            source=client.V1EventSource(component="dbrev"),
            count=1,
        ),
    )
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.uid={uid}").items
    assert [(e.reason, e.message) for e in events] == [("Migrated", "at revision abc123")]
    assert events[0].metadata.name == ev.metadata.name
    # The same Event through events.k8s.io/v1 and kubectl.
    status, new_api = control_plane.request(
        "GET", f"/apis/events.k8s.io/v1/namespaces/{namespace}/events/{ev.metadata.name}"
    )
    assert status == 200, new_api
    assert new_api["regarding"]["uid"] == uid and new_api["reason"] == "Migrated"
    out = control_plane.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=w1", "-o", "json"
    ).stdout
    assert [i["reason"] for i in json.loads(out)["items"]] == ["Migrated"]


def _refused(custom, args, body) -> ApiException:
    """The error creating ``body``; a 404 right after Established (the CRD's
    handler not yet installed) is retried by ``eventually``."""
    try:
        custom.create_namespaced_custom_object(*args, body)
    except ApiException as e:
        if e.status == 404:
            raise AssertionError("CRD endpoint not served yet") from e
        return e
    raise AssertionError(f"accepted {body}")


# --------------------------------------------------------------------------- RBAC


def _roles(namespace):
    return {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "read-configmaps", "namespace": namespace},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "probe-reads-configmaps", "namespace": namespace},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "read-configmaps",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "probe", "namespace": namespace}],
            },
        ],
    }


def test_service_account_is_refused_until_a_role_grants_it(control_plane, namespace):
    cp = control_plane
    sa = (namespace, "probe")
    token_kubeconfig = cp.service_account_kubeconfig(*sa)  # real TokenRequest token
    impersonating = client.CoreV1Api(cp.api_client(as_service_account=sa))
    with_token = client.CoreV1Api(cp.api_client(kubeconfig=token_kubeconfig))

    # Before: 403 for the token, for impersonation, and for kubectl either way.
    for api in (impersonating, with_token):
        with pytest.raises(ApiException) as exc:
            api.list_namespaced_config_map(namespace)
        assert exc.value.status == 403
    r = cp.kubectl("get", "configmaps", kubeconfig=token_kubeconfig, check=False)
    assert r.returncode != 0 and "forbidden" in r.stderr.lower(), r.stderr
    assert f"system:serviceaccount:{namespace}:probe" in r.stderr
    r = cp.kubectl("auth", "can-i", "list", "configmaps", "-n", namespace,
                   as_service_account=sa, check=False)
    assert r.stdout.strip() == "no"

    cp.kubectl("apply", "-f", "-", input=json.dumps(_roles(namespace)))

    # After: allowed — exactly what the Role grants, nothing more.
    eventually(lambda: impersonating.list_namespaced_config_map(namespace), timeout=15)
    with_token.list_namespaced_config_map(namespace)
    assert cp.kubectl("get", "configmaps", kubeconfig=token_kubeconfig).returncode == 0
    assert cp.kubectl("auth", "can-i", "list", "configmaps", "-n", namespace,
                      as_service_account=sa).stdout.strip() == "yes"
    with pytest.raises(ApiException) as exc:
        with_token.create_namespaced_config_map(
            namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="x"))
        )
    assert exc.value.status == 403
    with pytest.raises(ApiException) as exc:
        with_token.list_namespaced_config_map("default")
    assert exc.value.status == 403


# --------------------------------------------------------------------------- Kopf


OPERATOR = textwrap.dedent(
    """
    import os
    import kopf

    if os.environ["LOGIN"] == "kubeconfig":
        # Kopf's own minimal kubeconfig reader (no paths resolved, data only).
        @kopf.on.login()
        def login(**kwargs):
            return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create("{group}", "{version}", "{plural}")
    def created(body, patch, **_):
        patch.status["phase"] = "SeenByKopf"
        kopf.info(body, reason="Seen", message="created handler ran")
    """
).format(group=GROUP, version=VERSION, plural=PLURAL)


@pytest.mark.slow
@pytest.mark.parametrize("login", ["default", "kubeconfig"])
def test_kopf_operator_accepts_the_kubeconfig(control_plane, k8s_api, widget_crd, namespace, tmp_path, login):
    script = tmp_path / "op.py"
    script.write_text(OPERATOR)
    log = tmp_path / "kopf.log"
    custom = client.CustomObjectsApi(k8s_api)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, widget("k", size=1))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "-n", namespace, str(script)],
            env={**control_plane.env(), "LOGIN": login},
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        def handled():
            assert proc.poll() is None, log.read_text()
            obj = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "k")
            assert (obj.get("status") or {}).get("phase") == "SeenByKopf"

        eventually(handled, timeout=60, interval=0.3)
        # Kopf posts an Event about the object through the same credentials.
        events = eventually(
            lambda: _nonempty(client.CoreV1Api(k8s_api).list_namespaced_event(
                namespace, field_selector="involvedObject.name=k").items),
            timeout=20,
        )
        assert [(e.reason, e.message) for e in events] == [("Seen", "created handler ran")]
    except BaseException:
        print(log.read_text())
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _nonempty(items):
    assert items
    return items


# --------------------------------------------------------------------------- CLI lifecycle


def _cli(*args, check=True):
    import dbrev

    pythonpath = os.pathsep.join(
        p for p in (str(Path(dbrev.__file__).parent.parent), os.environ.get("PYTHONPATH")) if p
    )
    r = subprocess.run(
        [sys.executable, "-m", "dbrev_dev.envtest.controlplane", *args],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": pythonpath},
    )
    if check and r.returncode != 0:
        raise AssertionError(f"{args}: rc={r.returncode}\n{r.stdout}\n{r.stderr}")
    return r


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(")")[-1].split()[0] != "Z"


@local_control_plane_only
@pytest.mark.slow
def test_cli_up_survives_a_crashed_run_and_down_leaves_nothing_listening(control_plane, tmp_path):
    d = tmp_path / "cluster"
    up = _cli("up", "--dir", str(d)).stdout
    assert f"export KUBECONFIG={d / 'kubeconfig'}" in up
    started = re.search(r"started in ([\d.]+)s", up)
    assert started, up
    state = json.loads((d / "state.json").read_text())
    first = dict(state["pids"])
    kc = d / "kubeconfig"
    assert control_plane.kubectl("get", "--raw", "/readyz", kubeconfig=kc).stdout.strip() == "ok"

    # Crash: etcd dies, the apiserver is orphaned, the pid files and state vanish.
    os.kill(first["etcd"], 9)
    for f in ("etcd.pid", "kube-apiserver.pid", "state.json"):
        (d / f).unlink()
    assert _cli("status", "--dir", str(d), check=False).returncode == 1

    up = _cli("up", "--dir", str(d)).stdout
    assert "stopped leftover kube-apiserver" in up, up
    state = json.loads((d / "state.json").read_text())
    assert not _alive(first["kube-apiserver"])
    assert control_plane.kubectl("get", "--raw", "/readyz", kubeconfig=kc).stdout.strip() == "ok"
    assert _cli("status", "--dir", str(d)).returncode == 0

    down = _cli("down", "--dir", str(d)).stdout
    assert "stopped" in down
    for pid in state["pids"].values():
        assert not _alive(pid)
    for port in (state["port"], state["etcd_port"], state["etcd_peer_port"]):
        assert not port_is_listening(port)
    assert "nothing running" in _cli("down", "--dir", str(d)).stdout


@local_control_plane_only
@pytest.mark.slow
def test_in_process_control_plane_dies_with_its_owner(control_plane, tmp_path):
    """A killed test run (CI timeout, SIGKILL) leaves no etcd/kube-apiserver behind."""
    import dbrev

    d = tmp_path / "owned"
    owner = textwrap.dedent(
        f"""
        import json, os, sys
        sys.path.insert(0, {str(Path(dbrev.__file__).parent.parent)!r})
        from dbrev_dev.envtest.controlplane import ControlPlane
        cp = ControlPlane({str(d)!r}, die_with_parent=True).start()
        print(json.dumps({{"pids": [p.pid for p in cp._procs.values()],
                           "ports": [cp.port, cp.etcd_port, cp.etcd_peer_port]}}), flush=True)
        os.kill(os.getpid(), 9)
        """
    )
    r = subprocess.run([sys.executable, "-c", owner], capture_output=True, text=True, timeout=300)
    assert r.returncode == -9, r.stderr
    info = json.loads(r.stdout)
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in info["pids"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in info["pids"])
    assert not any(port_is_listening(p) for p in info["ports"])
