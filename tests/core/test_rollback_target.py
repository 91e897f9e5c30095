"""The rollback's target, chosen from the live revision and dbrev's journal (pure)."""

from __future__ import annotations

import pytest

from dbrev.core.results import RunResult
from dbrev.core import errors as E
from dbrev.engine.rollback import (SOURCE_JOURNAL, SOURCE_REQUESTED, check_direction, choose_target, losses,
                            succeeded)


def run(i, frm, to, direction="upgrade", status="applied"):
    return {"id": i, "from_revisions": frm, "to_revisions": to, "direction": direction, "status": status}


def test_default_is_the_revision_before_the_newest_applied_run():
    runs = [run(2, ["b"], ["c"]), run(1, [], ["b"])]  # newest first
    c = choose_target(["c"], runs)
    assert (c.target, c.source, c.undoes_run["id"]) == ("b", SOURCE_JOURNAL, 2)


def test_first_run_undone_goes_to_base():
    assert choose_target(["b"], [run(1, [], ["b"])]).target == "base"


def test_a_previous_rollback_is_skipped_so_rolling_back_twice_goes_two_releases_back():
    runs = [run(3, ["c"], ["b"], "downgrade"), run(2, ["b"], ["c"]), run(1, ["a"], ["b"])]
    c = choose_target(["b"], runs)
    assert (c.target, c.undoes_run["id"]) == ("a", 1)


def test_failed_and_rolled_back_runs_are_not_undone():
    runs = [run(3, ["c"], ["d"], status="rolled_back"), run(2, ["c"], ["d"], status="failed"),
            run(1, ["b"], ["c"])]
    assert choose_target(["c"], runs).target == "b"


def test_several_heads_compare_as_sets_and_the_target_lists_them_all():
    runs = [run(1, ["y", "x"], ["m"], "upgrade")]
    assert choose_target(["m"], runs).target == "x,y"
    runs = [run(1, ["a"], ["q", "p"])]
    assert choose_target(["p", "q"], runs).target == "a"


def test_database_moved_outside_dbrev_has_no_default_and_says_how_to_name_one():
    with pytest.raises(E.BadInput) as ei:
        choose_target(["z"], [run(1, ["a"], ["b"])])
    assert ei.value.exit_code == 2
    assert "--to" in ei.value.hint


def test_at_base_there_is_nothing_to_roll_back():
    c = choose_target([], [])
    assert c.target is None and "nothing to roll back" in c.message


def test_requested_target_is_passed_as_written():
    for to in ("abc123", "-1", "base"):
        c = choose_target(["c"], [], to)
        assert (c.target, c.source) == (to, SOURCE_REQUESTED)
    with pytest.raises(E.BadInput):
        choose_target(["c"], [], "  ")


def test_a_running_newest_run_is_noted():
    c = choose_target(["b"], [run(2, ["b"], ["c"], status="running"), run(1, ["a"], ["b"])])
    assert c.target == "a" and "running" in c.notes[0]


def test_direction_rule():
    check_direction("downgrade", SOURCE_REQUESTED)
    check_direction("mixed", SOURCE_JOURNAL)
    for d, s in (("upgrade", SOURCE_JOURNAL), ("upgrade", SOURCE_REQUESTED), ("mixed", SOURCE_REQUESTED)):
        with pytest.raises(E.BadInput):
            check_direction(d, s)


def test_losses_list_destructive_effects_only():
    plan = {"steps": [{"revision": "c", "direction": "downgrade", "effects": [
        {"kind": "drop_table", "object": "t3", "destructive": True, "detail": "DROP TABLE t3"},
        {"kind": "create_index", "object": "i", "destructive": False}]},
        {"revision": "b", "direction": "downgrade", "effects": []}]}
    assert losses(plan) == [{"revision": "c", "direction": "downgrade", "kind": "drop_table", "object": "t3",
                             "detail": "DROP TABLE t3"}]


def test_success_needs_applied_integrity_and_the_target():
    ok = {"result": "applied", "integrity": {"passed": True}, "current_revisions": ["b"]}
    assert succeeded(RunResult.from_dict(ok), ["b"])
    assert not succeeded(RunResult.from_dict({**ok, "current_revisions": ["c"]}), ["b"])
    assert not succeeded(RunResult.from_dict({**ok, "integrity": {"passed": False}}), ["b"])
    assert not succeeded(RunResult.from_dict({**ok, "result": "rolled_back"}), ["b"])
    assert succeeded(RunResult.from_dict({"result": "applied", "integrity": None, "current_revisions": []}), [])


# -- in the cluster: from status.history ----------------------------------------------------------

from dbrev.cli.rollback import cluster_plan  # noqa: E402


def dbrev_obj(current, history, labels=None, annotations=None, revision="head"):
    return {"metadata": {"labels": labels or {}, "annotations": annotations or {}}, "spec": {"revision": revision},
            "status": {"currentRevision": current, "history": history}}


H = [{"from": "e5f6", "to": "f1a2", "direction": "upgrade", "result": "applied"},
     {"from": "base", "to": "e5f6", "direction": "upgrade", "result": "applied"}]


def test_cluster_target_from_status_history():
    p = cluster_plan(dbrev_obj("f1a2", H), None)
    assert (p["current"], p["target"], p["gitops"]) == ("f1a2", "e5f6", None)
    assert cluster_plan(dbrev_obj("e5f6", H), None)["target"] == "base"
    assert cluster_plan(dbrev_obj("f1a2", H), "-1")["target"] == "-1"


def test_cluster_gitops_managed_is_named_with_the_revision_to_put_back():
    p = cluster_plan(dbrev_obj("f1a2", H, labels={"kustomize.toolkit.fluxcd.io/name": "db",
                                                  "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}), None)
    assert (p["gitops"], p["target"], p["managed_by"]) == ("Flux", "e5f6", "flux:kustomization/flux-system/db")
    p = cluster_plan(dbrev_obj("f1a2", H, annotations={"argocd.argoproj.io/tracking-id": "shop:x/y:ns/n"}), None)
    assert p["gitops"] == "Argo CD"


def test_cluster_without_a_current_revision_or_with_several_target_heads():
    with pytest.raises(E.BadInput):
        cluster_plan(dbrev_obj(None, []), None)
    with pytest.raises(E.BadInput):
        cluster_plan(dbrev_obj("m", [{"from": "a,b", "to": "m", "direction": "upgrade", "result": "applied"}]), None)
