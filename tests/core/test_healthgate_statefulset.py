"""The StatefulSet's forced rollback (pure): which pods the undo deletes, and which it never touches."""

from __future__ import annotations

from dbrev.controller.healthgate import undo_plan, stuck_pods


def sts(gen=3, observed=3, update="web-1", policy=None, strategy=None):
    spec = {"selector": {"matchLabels": {"app": "web"}}}
    if policy:
        spec["podManagementPolicy"] = policy
    if strategy:
        spec["updateStrategy"] = strategy
    return {"kind": "StatefulSet", "metadata": {"name": "web", "uid": "s", "generation": gen}, "spec": spec,
            "status": {"observedGeneration": observed, "updateRevision": update, "currentRevision": "web-1"}}


def pod(name, revision, ready=False, owner="s", terminating=False):
    meta = {"name": name, "uid": f"u-{name}", "labels": {"app": "web", "controller-revision-hash": revision},
            "ownerReferences": [{"kind": "StatefulSet", "uid": owner, "controller": True}]}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def names(pods):
    return [p["metadata"]["name"] for p in pods]


def test_the_not_ready_pods_of_the_broken_revision_are_stuck_under_ordered_ready():
    pods = [pod("web-0", "web-1", ready=True), pod("web-1", "web-1"), pod("web-2", "web-2"),
            pod("web-3", "web-2", ready=True)]
    # web-1 is of the revision it goes back to (starting: left alone); web-3 is Ready (the controller replaces it)
    assert names(stuck_pods(sts(), pods, "web-1")) == ["web-2"]
    assert names(stuck_pods(sts(policy="OrderedReady", strategy={"type": "RollingUpdate"}), pods, "web-1")) == \
        ["web-2"]


def test_nothing_is_stuck_before_the_controller_has_taken_the_undo():
    pods = [pod("web-0", "web-2")]
    assert stuck_pods(sts(gen=4, observed=3), pods, "web-1") == []  # the undone template not observed yet
    assert stuck_pods(sts(update="web-2"), pods, "web-1") == []  # it still rolls towards the broken revision
    assert names(stuck_pods(sts(), pods, "web-1")) == ["web-0"]


def test_parallel_and_on_delete_statefulsets_and_other_pods_are_never_deleted():
    pods = [pod("web-0", "web-2")]
    assert stuck_pods(sts(policy="Parallel"), pods, "web-1") == []
    assert stuck_pods(sts(strategy={"type": "OnDelete"}), pods, "web-1") == []
    # a pod the StatefulSet does not control, one already terminating, one whose name has no ordinal
    others = [pod("web-0", "web-2", owner="other"), pod("web-1", "web-2", terminating=True), pod("web-x", "web-2"),
              pod("webapp-0", "web-2")]
    assert stuck_pods(sts(), others, "web-1") == []


def test_the_pods_below_the_partition_are_not_the_rolling_updates():
    pods = [pod("web-0", "web-2"), pod("web-1", "web-2"), pod("web-2", "web-2")]
    s = sts(strategy={"type": "RollingUpdate", "rollingUpdate": {"partition": 2}})
    assert names(stuck_pods(s, pods, "web-1")) == ["web-2"]


def test_the_undo_of_a_statefulset_names_the_controllerrevision_it_goes_back_to():
    def cr(name, rev, image):
        return {"metadata": {"name": name, "ownerReferences": [{"uid": "s", "controller": True}]}, "revision": rev,
                "data": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": image}]},
                                               "$patch": "replace"}}}}

    s = {**sts(update="web-2"), "kind": "StatefulSet"}
    (u,) = undo_plan([(s, [cr("web-1", 1, "v1"), cr("web-2", 2, "v2")])])
    assert (u.revision, u.to) == ("web-1", "ControllerRevision web-1 (revision 1)")
