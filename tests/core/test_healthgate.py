"""The health gate's core: a rollout's health from the API objects, the window, and rollout undo (pure)."""

from __future__ import annotations

import pytest

from dbrev.core.results import RunResult
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


def test_a_pod_of_the_new_revision_failing_its_readiness_probe_fails_once_the_probe_has_had_its_chances():
    """Running but not ready: failed only after initialDelay + failureThreshold periods (+ one period and
    a timeout); a pod without a readiness probe, or judged without a clock, is only progressing."""
    from datetime import datetime, timedelta, timezone

    now = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)

    def running(seconds, probe=True, startup=None):
        p = pod("shop-bbb-r", "bbb")
        p["status"]["containerStatuses"][0]["state"] = {
            "running": {"startedAt": (now - timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")}}
        c = {"name": "app"}
        if probe:
            c["readinessProbe"] = {"exec": {"command": ["check"]}, "initialDelaySeconds": 5, "periodSeconds": 2,
                                   "failureThreshold": 3}
        if startup:
            c["startupProbe"] = startup
        p["spec"] = {"containers": [c]}
        return p

    # allowance: 5 + 2 * 3 + 2 + 1 (default timeout) = 14 s
    assert workload_health(dep(available=1), [running(13)], RSS, now).state == PROGRESSING
    h = workload_health(dep(available=1), [running(15)], RSS, now)
    assert h.state == FAILED and "shop-bbb-r" in h.message and "readiness probe" in h.message
    assert workload_health(dep(available=1), [running(15)], RSS).state == PROGRESSING  # no clock
    assert workload_health(dep(available=1), [running(900, probe=False)], RSS, now).state == PROGRESSING
    # a startup probe's own allowance comes first: 10 * 6 = 60 s more
    slow = {"exec": {"command": ["up"]}, "periodSeconds": 10, "failureThreshold": 6}
    assert workload_health(dep(available=1), [running(60, startup=slow)], RSS, now).state == PROGRESSING
    assert workload_health(dep(available=1), [running(75, startup=slow)], RSS, now).state == FAILED
    # a pod of the old revision is not judged
    old = running(900)
    old["metadata"]["labels"]["pod-template-hash"] = "aaa"
    assert workload_health(dep(available=1), [old], RSS, now).state == PROGRESSING


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


# -- onFailure: Rollback (application first, then schema) -------------------------------------------

from dbrev.core import conditions as C  # noqa: E402
from dbrev.controller import decide  # noqa: E402
from dbrev.controller import healthgate as HG  # noqa: E402
from dbrev.controller.spec import SpecError, parse_spec  # noqa: E402

NOW = "2026-01-01T00:00:10Z"
DOWN_PLAN = {"hash": "sha256:" + "cd" * 32, "direction": "downgrade", "transaction": "single",
             "from_revisions": ["b2"], "to_revisions": ["a1"], "steps": [{"revision": "b2", "direction": "downgrade"}]}


def watched(phase=HG.WATCHING, **hg):
    """The status the gate's run left: the database at b2 (from a1), the gate watching Deployment/shop."""
    return {"observedGeneration": 3, "currentRevision": "b2", "targetRevision": "b2",
            "history": [{"from": "a1", "to": "b2", "direction": "upgrade", "result": "applied"},
                        {"from": "base", "to": "a1", "direction": "upgrade", "result": "applied"}],
            "healthGate": {"phase": phase, "generation": 3, "fromRevision": "a1", "toRevision": "b2",
                           "startedAt": "2026-01-01T00:00:00Z", "windowSeconds": 60.0, **hg},
            "conditions": []}


def cond(status, ctype):
    return next(c for c in status["conditions"] if c["type"] == ctype)


def test_undo_plan_replaces_a_deployments_template_whole_and_names_what_it_goes_back_to():
    (u,) = HG.undo_plan([(dep(), RSS)])
    assert u.ref == "Deployment/shop" and u.content_type == HG.JSON_PATCH
    assert u.patch == [{"op": "replace", "path": "/spec/template", "value": template("shop:v1")}]
    assert u.to == "ReplicaSet shop-aaa (revision 1)"


def test_undo_plan_is_all_or_none():
    sts = {"kind": "StatefulSet", "metadata": {"name": "db", "uid": "s"}, "status": {"updateRevision": "db-2"}}
    cr = {"metadata": {"name": "db-2", "ownerReferences": [{"uid": "s", "controller": True}]}, "revision": 2,
          "data": {"spec": {"template": {"spec": {"containers": [{"name": "db", "image": "pg:2"}]}}}}}
    with pytest.raises(NoPreviousRevision, match="StatefulSet db"):
        HG.undo_plan([(dep(), RSS), (sts, [cr])])
    old = {**cr, "metadata": {**cr["metadata"], "name": "db-1"}, "revision": 1,
           "data": {"spec": {"template": {"spec": {"containers": [{"name": "db", "image": "pg:1"}]}}}}}
    d, s = HG.undo_plan([(dep(), RSS), (sts, [cr, old])])
    assert s.content_type == HG.STRATEGIC_MERGE_PATCH and s.patch == old["data"]
    assert s.text == "StatefulSet/db to ControllerRevision db-1 (revision 1)"


def test_a_failed_gate_under_rollback_patches_the_workloads_first_and_says_the_schema_comes_next():
    v = HG.gate([Health("Deployment", "shop", FAILED, "ProgressDeadlineExceeded")], 5, 60)
    (u,) = HG.undo_plan([(dep(), RSS)])
    out = HG.rollback_started(watched(), 3, v, [u], NOW)
    assert out.outcome.reason == C.ROLLING_BACK_WORKLOADS
    assert cond(out.status, C.RECONCILING)["status"] == "True" and cond(out.status, C.READY)["status"] == "Unknown"
    hg = out.status["healthGate"]
    assert hg["phase"] == HG.ROLLING_BACK and hg["rollbackStartedAt"] == NOW and "finishedAt" not in hg
    assert hg["rolledBack"] == ["Deployment/shop to ReplicaSet shop-aaa (revision 1)"]
    assert "the schema goes back b2 -> a1" in out.outcome.message
    reasons = [e[1] for e in out.events]
    assert reasons == ["WorkloadUnhealthy", "RollbackTriggered"]
    assert out.rollback is None  # counted when it ends


def test_workloads_that_cannot_go_back_leave_the_schema_and_stall():
    st = watched(HG.WATCHING, failure="Deployment/shop failed: CrashLoopBackOff")
    out = HG.workloads_not_rolled_back(st, 3, "Deployment shop has no previous ReplicaSet", NOW, "orders", "shop",
                                       patched=False)
    assert out.outcome.reason == C.WORKLOAD_ROLLBACK_FAILED and cond(out.status, C.STALLED)["status"] == "True"
    assert "The schema stays at b2" in out.outcome.message and "--to a1" in out.outcome.message
    assert out.status["healthGate"]["phase"] == HG.ROLLBACK_INCOMPLETE
    assert out.rollback == (HG.TRIGGER, "failure")
    assert C.WORKLOAD_ROLLBACK_FAILED in decide.STANDING_REASONS


def test_the_schema_target_is_the_revision_before_the_run_from_dbrevs_history():
    assert HG.schema_target(watched()) == "a1"
    moved = {**watched(), "currentRevision": "c3"}
    with pytest.raises(HG.NoSchemaTarget, match="not at b2"):
        HG.schema_target(moved)
    other = watched()
    other["healthGate"]["fromRevision"] = "z9"
    with pytest.raises(HG.NoSchemaTarget, match="z9"):
        HG.schema_target(other)


def rolling(**kw):
    return watched(HG.ROLLING_BACK, failure="Deployment/shop not healthy within 60s: 0 available",
                   rolledBack=["Deployment/shop to ReplicaSet shop-aaa (revision 1)"], **kw)


def run_of(result, status):
    return decide.from_result(RunResult.from_dict(result), status, 3, NOW, "health_gate", NOW, DOWN_PLAN, name="orders")


def test_a_verified_schema_downgrade_ends_rolled_back_and_standing():
    st = rolling()
    result = {"result": "applied", "direction": "downgrade", "from_revisions": ["b2"], "to_revisions": ["a1"],
              "current_revisions": ["a1"], "steps": [{"revision": "b2", "direction": "downgrade", "status": "applied"}],
              "integrity": {"passed": True, "findings": []}, "plan_hash": DOWN_PLAN["hash"]}
    out = HG.schema_rolled_back(run_of(result, st), RunResult.from_dict(result), st, 3, NOW, "a1", "b2", "orders", "shop")
    assert out.outcome.reason == C.ROLLED_BACK_AFTER_HEALTH_CHECK
    assert cond(out.status, C.STALLED)["status"] == "True" and cond(out.status, C.READY)["status"] == "False"
    assert out.status["currentRevision"] == "a1" and out.status["history"][0]["direction"] == "downgrade"
    assert out.status["healthGate"]["phase"] == HG.ROLLED_BACK
    assert "spec.revision still names b2" in out.outcome.message and "b2 -> a1, verified" in out.outcome.message
    assert out.rollback == ("health_check_failure", "success")
    assert [e[1] for e in out.events][-1] == "RollbackExecuted"
    # no loop: a resume of the same generation and inputs runs nothing
    out.status["inputsHash"] = "h"
    assert decide.previous_outcome_stands(out.status, 3, "h", "resume")
    assert not decide.previous_outcome_stands(out.status, 4, "h", "spec")


def test_a_schema_downgrade_that_loses_data_under_deny_leaves_the_schema_and_says_so():
    st = rolling()
    result = {"result": "refused", "direction": "downgrade", "from_revisions": ["b2"], "to_revisions": ["a1"],
              "current_revisions": ["b2"], "steps": [],
              "decision": {"reason": C.DATA_LOSS_DENIED, "message": "downgrade b2 drops column orders.note"}}
    out = HG.schema_rolled_back(run_of(result, st), RunResult.from_dict(result), st, 3, NOW, "a1", "b2", "orders", "shop")
    assert out.outcome.reason == C.SCHEMA_ROLLBACK_BLOCKED and cond(out.status, C.STALLED)["status"] == "True"
    msg = out.outcome.message
    assert "Rolled back Deployment/shop to ReplicaSet shop-aaa (revision 1); the schema stays at b2" in msg
    assert "refused by the policy" in msg and "drops column orders.note" in msg
    assert "spec.policy.dataLoss to Archive" in msg and "dbrev rollback orders -n shop --to a1" in msg
    assert out.status["healthGate"]["phase"] == HG.ROLLBACK_INCOMPLETE and out.rollback == (HG.TRIGGER, "failure")
    assert C.SCHEMA_ROLLBACK_BLOCKED in decide.STANDING_REASONS


def test_a_schema_downgrade_that_needs_an_approval_waits_for_it():
    st = rolling()
    result = {"result": "refused", "decision": {"reason": C.AWAITING_APPROVAL, "awaiting_approval": True,
                                                "message": "needs approval"}, "steps": []}
    out = HG.schema_rolled_back(run_of(result, st), RunResult.from_dict(result), st, 3, NOW, "a1", "b2", "orders", "shop")
    assert out.outcome.reason == C.AWAITING_APPROVAL and out.status["healthGate"]["phase"] == HG.AWAITING_APPROVAL
    assert DOWN_PLAN["hash"] in out.outcome.message and out.status["plan"]["hash"] == DOWN_PLAN["hash"]
    assert HG.holding(out.status, 3) and out.rollback is None


def test_rollback_needs_a_downgrade_policy_that_can_downgrade():
    base = {"revision": "head", "database": {"urlSecretRef": {"name": "db"}},
            "migrations": {"configMapRefs": [{"name": "m"}]},
            "healthGate": {"workloads": [{"kind": "Deployment", "name": "web"}], "onFailure": "Rollback"}}
    assert parse_spec(base).health_gate.on_failure == "Rollback"
    with pytest.raises(SpecError, match="downgrade is Deny"):
        parse_spec({**base, "policy": {"downgrade": "Deny"}})
    with pytest.raises(SpecError, match="not one of Report, Rollback"):
        parse_spec({**base, "healthGate": {**base["healthGate"], "onFailure": "Retry"}})


def test_the_cluster_rollback_rolls_the_gated_workloads_back_first_unless_the_gate_already_did():
    from dbrev.cli.rollback import gated_workloads

    obj = {"spec": {"healthGate": {"workloads": [{"kind": "Deployment", "name": "web"},
                                                 {"kind": "StatefulSet", "name": "cache"}]}}}
    names, why = gated_workloads(obj)
    assert names == [("Deployment", "web"), ("StatefulSet", "cache")] and why.startswith("application first")
    assert gated_workloads({"spec": {}}) == ([], "no health gate names workloads: only the schema goes back")
    done = {**obj, "status": {"healthGate": {"phase": HG.ROLLBACK_INCOMPLETE,
                                             "rolledBack": ["Deployment/web to ReplicaSet web-1 (revision 1)"]}}}
    names, why = gated_workloads(done)
    assert names == [] and "already rolled the workloads back" in why and "web-1" in why
    # a gate that failed to patch anything (rolledBack empty) leaves them to the command
    failed = {**obj, "status": {"healthGate": {"phase": HG.ROLLBACK_INCOMPLETE, "rolledBack": []}}}
    assert gated_workloads(failed)[0] == names + [("Deployment", "web"), ("StatefulSet", "cache")]


def test_a_downgrade_that_finds_the_schema_already_back_counts_as_done():
    # the operator died after the downgrade committed and before the status was written: the next
    # tick's run finds the database at the target (noop, verified) and finishes the rollback
    st = rolling()
    result = {"result": "noop", "from_revisions": ["a1"], "to_revisions": ["a1"], "current_revisions": ["a1"],
              "steps": [], "integrity": {"passed": True, "findings": []}}
    out = HG.schema_rolled_back(run_of(result, st), RunResult.from_dict(result), st, 3, NOW, "a1", "b2", "orders", "shop")
    assert out.outcome.reason == C.ROLLED_BACK_AFTER_HEALTH_CHECK and out.status["currentRevision"] == "a1"
