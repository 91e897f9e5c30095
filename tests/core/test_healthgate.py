"""The health gate's core: a rollout's health from the API objects, the window, and rollout undo (pure)."""

from __future__ import annotations

import pytest

from dbrev.controller.healthgate import (FAILED, HEALTHY, PASSED, PROGRESSING, WAITING, Health,
                                         NoPreviousRevision, deployment_undo, gate, statefulset_undo,
                                         workload_health)

UID = "dep-uid"


def template(image, hash_=None):
    labels = {"app": "shop"}
    if hash_:
        labels["pod-template-hash"] = hash_
    return {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": image}]}}


def dep(image="shop:v2", gen=2, observed=2, replicas=2, updated=2, available=2, total=None, conditions=()):
    return {"kind": "Deployment", "metadata": {"name": "shop", "generation": gen, "uid": UID},
            "spec": {"replicas": replicas, "template": template(image)},
            "status": {"observedGeneration": observed, "replicas": updated if total is None else total,
                       "updatedReplicas": updated, "availableReplicas": available, "readyReplicas": available,
                       "conditions": list(conditions)}}


def rs(image, hash_, revision):
    return {"metadata": {"name": f"shop-{hash_}", "labels": {"pod-template-hash": hash_},
                         "annotations": {"deployment.kubernetes.io/revision": str(revision)},
                         "ownerReferences": [{"uid": UID, "controller": True, "kind": "Deployment"}]},
            "spec": {"template": template(image, hash_)}}


def pod(name, hash_, waiting=None, label="pod-template-hash"):
    cs = {"name": "app", "ready": False, "restartCount": 3, "state": {"waiting": {"reason": waiting}} if waiting
          else {"running": {}}}
    return {"metadata": {"name": name, "labels": {label: hash_}}, "status": {"containerStatuses": [cs]}}


RSS = [rs("shop:v1", "aaa", 1), rs("shop:v2", "bbb", 2)]


def test_deployment_healthy_when_all_updated_replicas_are_available():
    h = workload_health(dep(), [], RSS)
    assert h.state == HEALTHY and h.ref == "Deployment/shop"


def test_deployment_progressing_while_generation_unobserved_or_old_pods_remain():
    assert workload_health(dep(observed=1), [], RSS).state == PROGRESSING
    assert workload_health(dep(available=1), [], RSS).state == PROGRESSING
    assert workload_health(dep(total=3), [], RSS).state == PROGRESSING  # an old replica still there


def test_deployment_progress_deadline_exceeded_fails():
    h = workload_health(dep(available=0, conditions=[{"type": "Progressing", "status": "False",
                                                      "reason": "ProgressDeadlineExceeded",
                                                      "message": 'ReplicaSet "shop-bbb" has timed out progressing.'}]),
                        [], RSS)
    assert h.state == FAILED and "ProgressDeadlineExceeded" in h.message and "timed out" in h.message


def test_a_crash_looping_pod_of_the_new_revision_fails_but_not_one_of_the_old():
    h = workload_health(dep(available=1), [pod("shop-bbb-x", "bbb", "CrashLoopBackOff")], RSS)
    assert h.state == FAILED and "shop-bbb-x" in h.message and "CrashLoopBackOff" in h.message
    h = workload_health(dep(available=1), [pod("shop-aaa-x", "aaa", "CrashLoopBackOff")], RSS)
    assert h.state == PROGRESSING


def test_statefulset_health_by_update_revision():
    sts = {"kind": "StatefulSet", "metadata": {"name": "db", "generation": 3, "uid": "s"},
           "spec": {"replicas": 2},
           "status": {"observedGeneration": 3, "currentRevision": "db-1", "updateRevision": "db-2",
                      "updatedReplicas": 1, "readyReplicas": 1, "availableReplicas": 1}}
    assert workload_health(sts).state == PROGRESSING
    bad = [pod("db-1", "db-2", "ImagePullBackOff", label="controller-revision-hash")]
    assert workload_health(sts, bad).state == FAILED
    sts["status"].update({"currentRevision": "db-2", "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2})
    assert workload_health(sts).state == HEALTHY


def test_gate_over_the_window():
    ok = Health("Deployment", "a", HEALTHY, "2/2")
    slow = Health("Deployment", "b", PROGRESSING, "0 available (pods Pending)")
    bad = Health("StatefulSet", "c", FAILED, "CrashLoopBackOff")
    assert gate([ok], 5, 600).state == PASSED
    v = gate([ok, slow], 5, 600)
    assert v.state == WAITING and "Deployment/b" in v.message
    v = gate([ok, slow], 600, 600)
    assert (v.state, v.workload) == (FAILED, "Deployment/b") and "within 600s" in v.message
    v = gate([ok, slow, bad], 1, 600)
    assert (v.state, v.workload) == (FAILED, "StatefulSet/c")


def test_deployment_undo_is_the_previous_replicasets_template_without_its_hash():
    patch = deployment_undo(dep(), RSS + [rs("shop:v0", "zzz", 0)])
    assert patch == {"spec": {"template": template("shop:v1")}}


def test_deployment_undo_needs_a_previous_replicaset():
    with pytest.raises(NoPreviousRevision):
        deployment_undo(dep(), [rs("shop:v2", "bbb", 2)])
    other = rs("x:v1", "ccc", 1)
    other["metadata"]["ownerReferences"][0]["uid"] = "someone-else"
    with pytest.raises(NoPreviousRevision):
        deployment_undo(dep(), [rs("shop:v2", "bbb", 2), other])


def test_statefulset_undo_is_the_previous_controllerrevisions_data():
    sts = {"metadata": {"name": "db", "uid": "s"}, "status": {"updateRevision": "db-2"}}

    def cr(name, n, image):
        return {"metadata": {"name": name, "ownerReferences": [{"uid": "s", "controller": True}]}, "revision": n,
                "data": {"spec": {"template": {"spec": {"containers": [{"name": "db", "image": image}]}}}}}
    patch = statefulset_undo(sts, [cr("db-1", 1, "pg:1"), cr("db-2", 2, "pg:2")])
    assert patch["spec"]["template"]["spec"]["containers"][0]["image"] == "pg:1"
    with pytest.raises(NoPreviousRevision):
        statefulset_undo(sts, [cr("db-2", 2, "pg:2")])
