"""Two replicas with Kopf peering: only the higher priority works; the other takes over when it dies."""

from __future__ import annotations

import json

import pytest

from dbhelp import heads
from opharness import dbrev_resource, is_state, wait_for

pytestmark = pytest.mark.cluster

MERGE, HEAD = "e5f6a7b8c9d0", "f1a2b3c4d5e6"


def outcomes(op) -> list[dict]:
    return [r for r in op.logs() if str(r.get("message", "")).startswith("Reconcile outcome")]


def test_peered_replicas_never_both_work_and_fail_over(kube, namespace, database_url, examples_dir,
                                                      start_operator, control_plane):
    # The peering RBAC of both overlays is proven by tests/ship/test_rbac.py; here the replicas run as admin.
    kube.apply({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                "metadata": {"name": "dbrev", "namespace": namespace}})
    kube.secret_url(namespace, "db", database_url)
    kube.configmap_from(namespace, "migrations", examples_dir)
    env = {"DBREV_PEERING_LIFETIME": "8"}
    admin = str(control_plane.kubeconfig)
    active = start_operator([namespace], env=env, args=["--peering", "dbrev", "--priority", "20"],
                            kubeconfig=admin)
    standby = start_operator([namespace], env=env, args=["--peering", "dbrev", "--priority", "10"],
                             kubeconfig=admin)
    kube.apply(dbrev_resource(namespace, "orders", MERGE, policy={"dataLoss": "Allow"}))
    wait_for(lambda: is_state(kube.status(namespace, "orders"), "True", "AtRevision"), 90, "Ready")
    assert outcomes(active) and not outcomes(standby)
    peering = json.loads(kube("get", "kopfpeering", "dbrev", "-n", namespace, "-o", "json"))
    assert len(peering.get("status") or {}) == 2  # both replicas keep their keep-alive there

    active.kill()  # a crashed pod: no goodbye in the peering object
    kube("patch", "dbrev", "orders", "-n", namespace, "--type", "merge", "-p",
         json.dumps({"spec": {"revision": "head"}}))
    st = wait_for(lambda: (s := kube.status(namespace, "orders")) and s.get("currentRevision") == HEAD
                  and is_state(s, "True", "AtRevision") and s, 120, "the standby to take over")
    assert outcomes(standby)
    assert heads(database_url) == [HEAD] and st["observedGeneration"] == 2
