"""The health gate (issue 13 §1) through the real kube-apiserver, `onFailure: Report`.

The bare control plane has no kube-controller-manager and no kubelet: nothing rolls a Deployment
out. Where a rollout must succeed, the test writes the Deployment's status subresource as the
deployment controller would (observedGeneration, updated/available replicas). Real rollouts with
failing readiness probes, and ``onFailure: Rollback``, run on the one-node cluster:
tests/operator/test_healthgate_node.py.
"""

from __future__ import annotations

import json

import pytest

from dbhelp import heads
from opharness import condition, dbrev_resource, wait_for

pytestmark = pytest.mark.cluster

MERGE = "e5f6a7b8c9d0"


@pytest.fixture
def shop(kube, namespace, database_url, examples_dir):
    kube.secret_url(namespace, "db", database_url)
    kube.configmap_from(namespace, "migrations", examples_dir)
    kube.apply({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": namespace},
                "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                         "template": {"metadata": {"labels": {"app": "web"}},
                                      "spec": {"containers": [{"name": "web", "image": "shop:v2"}]}}}})
    return namespace


def gated(ns, window):
    return dbrev_resource(ns, "orders", MERGE, policy={"dataLoss": "Allow"},
                          healthGate={"workloads": [{"kind": "Deployment", "name": "web"}], "window": window})


def cond(st, ctype):
    return condition(st, ctype) or {}


def test_a_window_that_passes_while_the_rollout_is_not_available_fails_the_gate(kube, shop, database_url,
                                                                                start_operator):
    op = start_operator([shop])
    kube.apply(gated(shop, "8s"))
    # right after the schema change: the gate watches
    st = wait_for(lambda: (s := kube.status(shop, "orders")).get("healthGate", {}).get("phase") == "Watching" and s,
                  90, "the gate watching")
    assert heads(database_url) == [MERGE]
    # no deployment-id annotation, no GitOps labels: the run is known by the gated workloads' images
    assert st["history"][0]["deploymentId"] == "images:shop:v2"
    assert cond(st, "Reconciling")["status"] == "True" and cond(st, "Reconciling")["reason"] == "AwaitingWorkloads"
    assert cond(st, "Ready")["status"] == "Unknown"
    # nothing rolls the Deployment out: the window passes
    st = wait_for(lambda: (s := kube.status(shop, "orders")).get("healthGate", {}).get("phase") == "Failed" and s,
                  60, "the gate failed")
    ready, stalled = cond(st, "Ready"), cond(st, "Stalled")
    assert ready["status"] == "False" and ready["reason"] == "WorkloadUnhealthy"
    assert stalled["status"] == "True" and "Deployment/web not healthy within 8s" in stalled["message"]
    assert st["healthGate"]["workload"] == "Deployment/web"
    ev = [e for e in kube.events(shop, "orders") if e["reason"] == "WorkloadUnhealthy"]
    assert ev and ev[0]["type"] == "Warning" and "Deployment/web" in ev[0]["message"]
    assert op.metric("dbrev_health_gate_total", namespace=shop, name="orders", result="failed") == 1
    assert op.metric("dbrev_stalled", namespace=shop, name="orders") == 1
    # no loop: an operator restart resumes the resource and neither re-runs the plan nor clears the failure
    runs = len(st["history"])
    op.kill()
    op = start_operator([shop])
    wait_for(lambda: any(r.get("message", "").startswith("The last outcome stands") for r in op.logs()), 60,
             "the restarted operator to leave the outcome standing")
    st = kube.status(shop, "orders")
    assert len(st["history"]) == runs and cond(st, "Ready")["reason"] == "WorkloadUnhealthy"


def test_a_rollout_that_becomes_available_passes_the_gate(kube, shop, database_url, start_operator):
    op = start_operator([shop])
    kube.apply(gated(shop, "10m"))
    wait_for(lambda: kube.status(shop, "orders").get("healthGate", {}).get("phase") == "Watching", 90,
             "the gate watching")
    # the deployment controller's report of a finished rollout
    kube("patch", "deployment", "web", "-n", shop, "--subresource=status", "--type=merge", "-p", json.dumps(
        {"status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                    "availableReplicas": 1}}))
    st = wait_for(lambda: (s := kube.status(shop, "orders")).get("healthGate", {}).get("phase") == "Passed" and s,
                  60, "the gate passed")
    assert cond(st, "Ready")["status"] == "True" and cond(st, "Ready")["reason"] == "AtRevision"
    assert cond(st, "Reconciling")["status"] == "False"
    assert "HealthGatePassed" in kube.reasons(shop, "orders")
    assert op.metric("dbrev_health_gate_total", namespace=shop, name="orders", result="passed") == 1
