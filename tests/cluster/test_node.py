"""The one-node cluster (dbrev_dev.envtest.node): it runs pods, keeps traffic local, and leaves nothing behind.

The crash test comes first in this file on purpose: it needs the machine's one node slot, so it runs
before the session's ``node`` fixture takes it (tests/cluster runs before tests/operator).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixtures_cluster import node_or_skip_reason

pytestmark = pytest.mark.cluster


def _require_node_support():
    reason = node_or_skip_reason()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: the one-node cluster tests must run, but: {reason}", pytrace=False)
        pytest.skip(f"no one-node cluster here: {reason}")


def _wait(fn, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = fn()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_teardown_after_a_crashed_run_leaves_nothing(tmp_path):
    _require_node_support()
    import fcntl

    from dbrev_dev.envtest import assets, node as N
    from dbrev_dev.envtest.images import PAUSE_IMAGE

    with open(N.LOCK, "a") as fh:  # the session's node must not be up yet (see the module docstring)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fh, fcntl.LOCK_UN)
        except BlockingIOError:
            pytest.fail("another one-node cluster holds the machine's slot; run this test first")
    d = tmp_path / "crashed"
    up = subprocess.run([sys.executable, "-m", "dbrev_dev.envtest.node", "up", "--dir", str(d)],
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        kubectl = [str(assets.find(build=False).kubectl), "--kubeconfig", str(d / "kubeconfig")]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper", "namespace": "default"},
               "spec": {"containers": [{"name": "c", "image": PAUSE_IMAGE}],
                        "volumes": [{"name": "scratch", "emptyDir": {}}]}}
        pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "scratch", "mountPath": "/scratch"}]
        # (its ServiceAccount token is a tmpfs mount: one of the things teardown must remove)
        _wait(lambda: subprocess.run([*kubectl, "get", "serviceaccount", "default"], capture_output=True
                                     ).returncode == 0, 60, "the default ServiceAccount")
        p = subprocess.run([*kubectl, "apply", "-f", "-"], input=json.dumps(pod), capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        _wait(lambda: subprocess.run([*kubectl, "get", "pod", "sleeper", "-o", "jsonpath={.status.phase}"],
                                     capture_output=True, text=True).stdout == "Running", 90, "the pod to run")
        # The crash: the owner is long gone (`up` returned); now kubelet and containerd die by SIGKILL,
        # leaving the shim, the pod's processes, its network namespace, mounts and cgroups.
        state = json.loads((d / "state.json").read_text())
        for name in ("kubelet", "containerd"):
            os.kill(state["pids"][name], signal.SIGKILL)
        time.sleep(1)
        before = N.leftovers(d)
        assert before["processes"] and before["netns"] and before["mounts"] and before["cgroups"], before
        assert before["veth"] == [N.VETH_HOST]
        assert len(before["routes"]) == 1 and "blackhole" in before["routes"][0]  # the host never routes NODE_IP out
    finally:
        # what a user (and .ci/run) does after a crash: `down`
        down = subprocess.run([sys.executable, "-m", "dbrev_dev.envtest.node", "down", "--dir", str(d)],
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stdout + down.stderr
    nothing = {"processes": [], "netns": [], "veth": [], "mounts": [], "cgroups": [], "routes": []}
    assert N.leftovers(d) == nothing and N.leftovers() == nothing
    lo = subprocess.run([sys.executable, "-m", "dbrev_dev.envtest.node", "leftovers"], capture_output=True, text=True)
    assert lo.returncode == 0, lo.stdout
    # and as the machine's own tools see it
    assert N.NETNS not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
                if str(d) in ln or "/run/dbrev-node" in ln]
    assert subprocess.run(["ip", "link", "show", N.VETH_HOST], capture_output=True).returncode != 0


def test_node_is_ready_and_its_network_stays_local(node):
    from dbrev_dev.envtest import node as N

    got = json.loads(node.kubectl("get", "node", N.NODE_NAME, "-o", "json").stdout)
    assert {c["type"]: c["status"] for c in got["status"]["conditions"]}["Ready"] == "True"
    addresses = {a["type"]: a["address"] for a in got["status"]["addresses"]}
    assert addresses["InternalIP"] == N.NODE_IP
    inside = lambda *c: subprocess.run(N.in_node(*c), capture_output=True, text=True, check=True).stdout  # noqa: E731
    assert inside("ip", "route", "show", "default").strip() == ""  # no way out of the node
    assert "-A FORWARD -j DBREV-ISOLATE" in inside("iptables", "-S", "FORWARD")
    assert f"-A DBREV-ISOLATE -i {N.VETH_NODE} -j DROP" in inside("iptables", "-S", "DBREV-ISOLATE")
    assert Path(f"/proc/sys/net/ipv4/conf/{N.VETH_HOST}/forwarding").read_text().strip() == "0"
    # PostgreSQL runs inside the node, on its address
    assert node.database_url().startswith(f"postgresql+psycopg://postgres@{N.NODE_IP}:5432/")


def test_a_stray_down_leaves_a_held_node_alone_and_the_host_never_routes_to_it_elsewhere(node, tmp_path):
    """``down`` from another shell while a test session holds the node refuses and changes nothing; and the host's
    way to NODE_IP is the veth, with the blackhole behind it (were the veth gone, no packet would leave the host)."""
    from dbrev_dev.envtest import node as N

    down = subprocess.run([sys.executable, "-m", "dbrev_dev.envtest.node", "down", "--dir", str(node.dir)],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode == 3 and "holds the one-node cluster" in down.stderr, down.stdout + down.stderr
    # a second session's node (a test run beside this one) cannot start, and its clean-up leaves ours alone
    other = N.NodeCluster(tmp_path / "second")
    with pytest.raises(N.NodeError, match="another one-node cluster"):
        other.start()
    other.stop()
    got = json.loads(node.kubectl("get", "node", N.NODE_NAME, "-o", "json").stdout)
    assert {c["type"]: c["status"] for c in got["status"]["conditions"]}["Ready"] == "True"
    route = subprocess.run(["ip", "route", "get", N.NODE_IP], capture_output=True, text=True, check=True).stdout
    assert f"dev {N.VETH_HOST}" in route, route
    assert len(N.leftovers()["routes"]) == 1
