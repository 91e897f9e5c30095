"""The operator's functional core: outcomes to conditions, events, metrics; triggers from diffs."""

from dbrev import conditions as C
from dbrev.controller import decide
from dbrev.controller.handlers import _conflict, _trigger
from dbrev.controller.spec import SpecError, parse_duration, parse_spec
from dbrev.status import compute_conditions, initial_conditions, status_patch, Outcome

import pytest

NOW = "2026-11-25T10:00:00Z"
LATER = "2026-11-25T11:00:00Z"
PLAN = {"hash": "sha256:" + "ab" * 32, "direction": "upgrade", "transaction": "single", "from_revisions": ["a1"],
        "to_revisions": ["b2"], "destructive": [], "steps": [{"revision": "b2", "direction": "upgrade"}],
        "warnings": []}


def conds(status):
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_initial_conditions_are_unknown_and_reconciling():
    c = {x["type"]: x for x in initial_conditions(3, NOW)}
    assert c["Ready"]["status"] == "Unknown" and c["Reconciling"]["status"] == "True"
    assert c["Stalled"]["status"] == "False" and c["Ready"]["observedGeneration"] == 3


def test_last_transition_time_changes_only_with_status():
    first = compute_conditions(Outcome("stalled", C.DOWNGRADE_DENIED, "x"), 1, None, NOW)
    again = compute_conditions(Outcome("stalled", C.DATA_LOSS_DENIED, "y"), 2, first, LATER)
    by = {c["type"]: c for c in again}
    assert by["Stalled"]["lastTransitionTime"] == NOW and by["Stalled"]["reason"] == C.DATA_LOSS_DENIED
    ok = {c["type"]: c for c in compute_conditions(Outcome("ready", C.AT_REVISION, "z"), 2, again, LATER)}
    assert ok["Stalled"]["lastTransitionTime"] == LATER and ok["Ready"]["lastTransitionTime"] == LATER


def test_applied_result_is_ready_with_history_and_events():
    result = {"result": "applied", "from_revisions": ["a1"], "to_revisions": ["b2"], "current_revisions": ["b2"],
              "direction": "upgrade", "steps": [{"revision": "b2", "direction": "upgrade", "status": "applied"}],
              "integrity": {"passed": True, "findings": [], "fingerprint": "sha256:x", "checked_at": NOW},
              "plan_hash": PLAN["hash"], "duration_seconds": 1.5}
    v = decide.from_result(result, {}, 2, NOW, "spec", NOW, PLAN)
    assert conds(v.status) == {"Ready": ("True", "AtRevision"), "Reconciling": ("False", "AtRevision"),
                               "Stalled": ("False", "AtRevision")}
    assert v.status["currentRevision"] == "b2" and v.status["observedGeneration"] == 2
    assert v.status["history"][0]["trigger"] == "spec" and v.status["history"][0]["durationSeconds"] == 1.5
    assert [e[1] for e in v.events] == ["Applied"] and v.metric_result == "applied"
    assert v.steps == [("upgrade", "applied")]


def test_history_keeps_the_last_ten():
    prev = {"history": [{"result": "applied"}] * 10}
    v = decide.from_result({"result": "applied", "current_revisions": ["b2"], "steps": []}, prev, 1, NOW, "spec",
                           NOW, None)
    assert len(v.status["history"]) == 10


def test_awaiting_approval_is_not_a_failure():
    result = {"result": "refused", "decision": {"reason": C.AWAITING_APPROVAL, "awaiting_approval": True,
                                                "message": "needs an approval"}, "current_revisions": ["a1"],
              "to_revisions": ["b2"], "error": {"reason": C.AWAITING_APPROVAL, "message": "needs an approval"}}
    v = decide.from_result(result, {}, 1, NOW, "spec", NOW, PLAN)
    assert conds(v.status)["Ready"] == ("False", "AwaitingApproval")
    assert conds(v.status)["Stalled"][0] == "False" and conds(v.status)["Reconciling"][0] == "False"
    assert PLAN["hash"] in v.outcome.message and "dbrev approve" in v.outcome.message
    assert v.metric_result == "waiting"


def test_refusal_is_stalled_with_what_to_do():
    result = {"result": "refused", "decision": {"reason": C.DOWNGRADE_DENIED, "message": "downgrade denied"},
              "error": {"reason": C.DOWNGRADE_DENIED, "message": "downgrade denied"}, "current_revisions": ["b2"]}
    v = decide.from_result(result, {}, 1, NOW, "spec", NOW, PLAN)
    assert conds(v.status)["Stalled"] == ("True", "DowngradeDenied")
    assert "spec.policy.downgrade" in v.outcome.message and v.events[0][1] == "Blocked"
    # the same refusal again posts no new Event
    v2 = decide.from_result(result, v.status | {"plan": {"hash": PLAN["hash"]}}, 1, LATER, "resume", LATER, PLAN)
    assert not v2.events


def test_rolled_back_run_is_stalled_with_rollback_events_and_metrics():
    result = {"result": "rolled_back", "from_revisions": ["a1"], "to_revisions": ["c3"],
              "current_revisions": ["a1"], "direction": "upgrade",
              "steps": [{"revision": "b2", "direction": "upgrade", "status": "rolled_back"},
                        {"revision": "c3", "direction": "upgrade", "status": "failed"}],
              "error": {"reason": "MigrationFailed", "message": "division by zero", "step": "c3",
                        "direction": "upgrade", "location": "c3.py:12"},
              "rollback": {"triggered": True, "reason": "migration_failure", "method": "transaction",
                           "success": True}}
    v = decide.from_result(result, {}, 1, NOW, "spec", NOW, PLAN)
    assert conds(v.status)["Stalled"] == ("True", "RolledBack")
    assert "c3.py:12" in v.outcome.message and "rolled back to a1" in v.outcome.message
    assert [e[1] for e in v.events] == ["MigrationFailed", "RollbackTriggered", "RollbackExecuted"]
    assert v.rollback == ("migration_failure", "success") and v.metric_result == "rolled_back"
    assert v.status["lastError"]["location"] == "c3.py:12"


def test_failed_rollback_says_the_database_is_between_revisions():
    result = {"result": "failed", "current_revisions": ["b2"], "error": {"reason": "MigrationFailed", "message": "x"},
              "rollback": {"triggered": True, "reason": "migration_failure", "success": False}}
    v = decide.from_result(result, {}, 1, NOW, "spec", NOW, None)
    assert conds(v.status)["Stalled"] == ("True", "RollbackFailed")
    assert "between revisions" in v.outcome.message and v.rollback == ("migration_failure", "failure")


def test_transient_errors_retry_with_capped_backoff():
    assert [decide.backoff(r) for r in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]
    v = decide.from_error({"reason": C.DATABASE_UNAVAILABLE, "message": "cannot connect"}, {}, 1, NOW, retry=2)
    assert conds(v.status) == {"Ready": ("False", "DatabaseUnavailable"), "Reconciling": ("True",
                                                                                         "DatabaseUnavailable"),
                               "Stalled": ("False", "DatabaseUnavailable")}
    assert v.retry_in == 20 and v.metric_result == "transient_error"


def test_bad_input_is_stalled():
    v = decide.from_error({"reason": C.SECRET_NOT_FOUND, "message": "Secret ns/db not found"}, {}, 1, NOW)
    assert conds(v.status)["Stalled"] == ("True", "SecretNotFound") and v.retry_in is None
    assert "create the Secret" in v.outcome.message


def test_timer_check_with_findings_is_stalled_and_clears():
    bad = {"passed": False, "findings": [{"check": "indexes", "object": "public.ix", "count": 1, "severity": "error",
                                          "message": "index public.ix is INVALID"}], "checked_at": NOW}
    v = decide.from_check(bad, ["b2"], {}, 1, NOW)
    assert conds(v.status)["Stalled"] == ("True", "IntegrityCheckFailed") and v.findings == {"indexes": 1}
    good = decide.from_check({"passed": True, "findings": [], "checked_at": LATER}, ["b2"], v.status, 1, LATER)
    assert conds(good.status)["Ready"] == ("True", "AtRevision")


def test_status_patch_is_empty_when_nothing_changed():
    v = decide.from_result({"result": "noop", "current_revisions": ["b2"], "to_revisions": ["b2"]}, {}, 1, NOW,
                           "resume", NOW, None)
    again = decide.from_result({"result": "noop", "current_revisions": ["b2"], "to_revisions": ["b2"]}, v.status, 1,
                               LATER, "resume", LATER, None)
    assert status_patch(v.status, again.status) == {}


@pytest.mark.parametrize("diff,expected", [
    ([("change", ("spec", "revision"), "a", "b")], "spec"),
    ([("add", ("metadata", "annotations", "dbrev.io/approve"), None, "sha256:x")], "approval"),
    ([("add", ("metadata",), None, {"annotations": {"dbrev.io/reconcile-requested-at": "t configmap/m"}})],
     "configmap/m"),
    ([("change", ("metadata", "annotations"), {"x": "1"},
       {"x": "1", "dbrev.io/reconcile-requested-at": "t secret/db"})], "secret/db"),
    ([("change", ("metadata", "labels", "team"), "a", "b")], "update"),
])
def test_trigger_from_diff(diff, expected):
    assert _trigger("update", diff) == expected
    assert _trigger("create", diff) == "create"


def test_conflict_goes_to_the_younger_resource():
    index = {"k": [("2026-01-01T00:00:00Z", "ns", "first"), ("2026-02-01T00:00:00Z", "ns", "second")]}
    assert _conflict(index, "k", "ns", "second", "2026-02-01T00:00:00Z") == "ns/first"
    assert _conflict(index, "k", "ns", "first", "2026-01-01T00:00:00Z") is None
    assert _conflict(index, "", "ns", "first", "x") is None


def test_spec_parsing_and_durations():
    s = parse_spec({"revision": "head", "database": {"urlSecretRef": {"name": "db"}},
                    "migrations": {"configMapRefs": [{"name": "m1"}, {"name": "m2"}]}})
    assert s.configmaps == ("m1", "m2") and s.url_secret.key == "url" and s.policy.data_loss == "Deny"
    assert s.drift_check_interval == 600 and s.connect_timeout == 60
    assert parse_duration("1h30m") == 5400 and parse_duration("45s") == 45
    with pytest.raises(SpecError):
        parse_duration("10 minutes")
    with pytest.raises(SpecError, match="exactly one"):
        parse_spec({"revision": "head", "database": {}, "migrations": {"configMapRefs": [{"name": "m"}]}})
