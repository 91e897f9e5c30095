"""The operator's functional core: outcomes to conditions, events, metrics; triggers from diffs."""

from dbrev.core import conditions as C
from dbrev.controller import decide
from dbrev.core.results import RunResult
from dbrev.controller.spec import SpecError, parse_duration, parse_spec
from dbrev.controller.status import compute_conditions, initial_conditions, status_patch, Outcome

import pytest


def from_result(result: dict, *args, **kw):
    """decide.from_result on the RunResult the worker would hand over (the document, parsed)."""
    return decide.from_result(RunResult.from_dict(result), *args, **kw)

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
    v = from_result(result, {}, 2, NOW, "spec", NOW, PLAN)
    assert conds(v.status) == {"Ready": ("True", "AtRevision"), "Reconciling": ("False", "AtRevision"),
                               "Stalled": ("False", "AtRevision")}
    assert v.status["currentRevision"] == "b2" and v.status["observedGeneration"] == 2
    assert v.status["history"][0]["trigger"] == "spec" and v.status["history"][0]["durationSeconds"] == 1.5
    assert [e[1] for e in v.events] == ["Applied"] and v.metric_result == "applied"
    assert v.steps == [("upgrade", "applied")]


def test_history_keeps_the_last_ten():
    prev = {"history": [{"result": "applied"}] * 10}
    v = from_result({"result": "applied", "current_revisions": ["b2"], "steps": []}, prev, 1, NOW, "spec",
                           NOW, None)
    assert len(v.status["history"]) == 10


def test_awaiting_approval_is_not_a_failure():
    result = {"result": "refused", "decision": {"reason": C.AWAITING_APPROVAL, "awaiting_approval": True,
                                                "message": "needs an approval"}, "current_revisions": ["a1"],
              "to_revisions": ["b2"], "error": {"reason": C.AWAITING_APPROVAL, "message": "needs an approval"}}
    v = from_result(result, {}, 1, NOW, "spec", NOW, PLAN)
    assert conds(v.status)["Ready"] == ("False", "AwaitingApproval")
    assert conds(v.status)["Stalled"][0] == "False" and conds(v.status)["Reconciling"][0] == "False"
    assert PLAN["hash"] in v.outcome.message and "dbrev approve" in v.outcome.message
    assert v.metric_result == "waiting"


def test_refusal_is_stalled_with_what_to_do():
    result = {"result": "refused", "decision": {"reason": C.DOWNGRADE_DENIED, "message": "downgrade denied"},
              "error": {"reason": C.DOWNGRADE_DENIED, "message": "downgrade denied"}, "current_revisions": ["b2"]}
    v = from_result(result, {}, 1, NOW, "spec", NOW, PLAN)
    assert conds(v.status)["Stalled"] == ("True", "DowngradeDenied")
    assert "spec.policy.downgrade" in v.outcome.message and v.events[0][1] == "Blocked"
    # the same refusal again posts no new Event
    v2 = from_result(result, v.status | {"plan": {"hash": PLAN["hash"]}}, 1, LATER, "resume", LATER, PLAN)
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
    v = from_result(result, {}, 1, NOW, "spec", NOW, PLAN)
    assert conds(v.status)["Stalled"] == ("True", "RolledBack")
    assert "c3.py:12" in v.outcome.message and "rolled back to a1" in v.outcome.message
    assert [e[1] for e in v.events] == ["MigrationFailed", "RollbackTriggered", "RollbackExecuted"]
    assert v.rollback == ("migration_failure", "success") and v.metric_result == "rolled_back"
    assert v.status["lastError"]["location"] == "c3.py:12"


def test_failed_rollback_says_the_database_is_between_revisions():
    result = {"result": "failed", "current_revisions": ["b2"], "error": {"reason": "MigrationFailed", "message": "x"},
              "rollback": {"triggered": True, "reason": "migration_failure", "method": "inverse_steps",
                           "success": False}}
    v = from_result(result, {}, 1, NOW, "spec", NOW, None)
    assert conds(v.status)["Stalled"] == ("True", "RollbackFailed")
    assert "between revisions" in v.outcome.message and v.rollback == ("migration_failure", "failure")


def test_transient_errors_retry_with_capped_backoff():
    assert [decide.backoff(r) for r in range(8)] == [5, 10, 20, 40, 80, 160, 300, 300]
    v = decide.from_error({"reason": C.DATABASE_UNAVAILABLE, "message": "cannot connect"}, {}, 1, NOW, retry=2)
    assert conds(v.status) == {"Ready": ("False", "DatabaseUnavailable"), "Reconciling": ("True",
                                                                                         "DatabaseUnavailable"),
                               "Stalled": ("False", "DatabaseUnavailable"),
                               "DatabaseReachable": ("False", "DatabaseUnavailable")}
    assert v.retry_in == 20 and v.metric_result == "transient_error" and v.reachable is False


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
    v = from_result({"result": "noop", "current_revisions": ["b2"], "to_revisions": ["b2"]}, {}, 1, NOW,
                           "resume", NOW, None)
    again = from_result({"result": "noop", "current_revisions": ["b2"], "to_revisions": ["b2"]}, v.status, 1,
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
    assert decide.trigger_of("update", diff) == expected
    assert decide.trigger_of("create", diff) == "create"


def test_conflict_goes_to_the_younger_resource():
    index = {"k": [("2026-01-01T00:00:00Z", "ns", "first"), ("2026-02-01T00:00:00Z", "ns", "second")]}
    assert decide.conflicting_owner(index, "k", "ns", "second", "2026-02-01T00:00:00Z") == "ns/first"
    assert decide.conflicting_owner(index, "k", "ns", "first", "2026-01-01T00:00:00Z") is None
    assert decide.conflicting_owner(index, "", "ns", "first", "x") is None


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


# --- issue 15 -----------------------------------------------------------------------------------------

APPLIED = {"result": "applied", "from_revisions": ["a1"], "to_revisions": ["b2"], "current_revisions": ["b2"],
           "direction": "downgrade", "steps": [{"revision": "b2", "direction": "downgrade", "status": "applied"}],
           "plan_hash": PLAN["hash"], "duration_seconds": 0.3}


def test_heal_only_conditions_that_claim_a_pass():
    prog = decide.progressing({}, 1, NOW, "applying")
    assert decide.needs_heal(prog, 1)
    assert decide.needs_heal({"conditions": initial_conditions(1, NOW)}, 1)
    ready = from_result(APPLIED, {}, 1, NOW, "spec", NOW, PLAN).status
    assert not decide.needs_heal(ready, 1)
    transient = decide.from_error({"reason": C.DATABASE_UNAVAILABLE, "message": "down"}, {}, 1, NOW).status
    assert not decide.needs_heal(transient, 1)  # Kopf retries it; nothing to heal


ROLLED_BACK = {"result": "rolled_back", "from_revisions": ["a1"], "to_revisions": ["c3"], "current_revisions": ["a1"],
               "direction": "upgrade", "steps": [], "error": {"reason": "MigrationFailed", "message": "boom"},
               "rollback": {"triggered": True, "reason": "migration_failure", "method": "transaction",
                            "success": True}}


@pytest.mark.parametrize("trigger,stands", [("resume", True), ("update", True), ("spec", False), ("approval", False),
                                            ("configmap/m", True), ("secret/db", True), ("drift", False),
                                            ("requested", False)])
def test_a_stalled_outcome_stands_across_a_restart(trigger, stands):
    """15.11: same generation + same inputs + Stalled: no new run unless something a human did asks for one."""
    st = {**from_result(ROLLED_BACK, {}, 2, NOW, "spec", NOW, PLAN).status, "inputsHash": "sha256:i"}
    assert decide.previous_outcome_stands(st, 2, "sha256:i", trigger) is stands
    assert not decide.previous_outcome_stands(st, 3, "sha256:i", "resume")  # a new spec
    assert not decide.previous_outcome_stands(st, 2, "sha256:j", "resume")  # new scripts or Secret
    assert not decide.previous_outcome_stands(st, 2, "sha256:j", "configmap/m")  # the scripts did change
    timed_out = {**ROLLED_BACK, "error": {"reason": C.TIMED_OUT, "message": "took too long"}}
    st2 = {**from_result(timed_out, {}, 2, NOW, "spec", NOW, PLAN).status, "inputsHash": "sha256:i"}
    assert conds(st2)["Stalled"] == ("True", "TimedOut") and decide.previous_outcome_stands(st2, 2, "sha256:i", "resume")
    ready = {**from_result(APPLIED, {}, 2, NOW, "spec", NOW, PLAN).status, "inputsHash": "sha256:i"}
    assert not decide.previous_outcome_stands(ready, 2, "sha256:i", "resume")
    conflict = {**decide.from_error({"reason": C.CONFLICT, "message": "ns/a manages it"}, {}, 2, NOW).status,
                "inputsHash": "sha256:i"}
    assert not decide.previous_outcome_stands(conflict, 2, "sha256:i", "resume")  # the rival may be gone


def test_a_run_stopped_by_an_exception_is_in_history_with_an_event():
    """15.12: an error that ended a started run still leaves its record."""
    run = {"plan": PLAN, "trigger": "spec", "started_at": NOW, "duration_seconds": 2.0}
    v = decide.from_error({"reason": C.MIGRATION_FAILED, "message": "worker crashed"}, {}, 1, LATER, run=run)
    h = v.status["history"][0]
    assert (h["from"], h["to"], h["result"], h["trigger"], h["planHash"]) == ("a1", "b2", "failed", "spec",
                                                                              PLAN["hash"])
    assert [e[1] for e in v.events] == ["MigrationFailed"] and conds(v.status)["Stalled"][0] == "True"
    t = decide.from_error({"reason": C.DATABASE_UNAVAILABLE, "message": "connection lost"}, {}, 1, LATER, run=run)
    assert t.status["history"][0]["result"] == "failed" and [e[1] for e in t.events] == ["MigrationFailed",
                                                                                         "Retrying"]
    assert t.retry_in == 5


def test_a_lost_connection_mid_run_is_transient_and_says_where_the_database_is():
    """15.3: DatabaseUnavailable in a result: retried with backoff, never Stalled; the message says where it is."""
    lost = {"result": "failed", "from_revisions": ["a1"], "to_revisions": ["c3"], "current_revisions": ["b2"],
            "direction": "upgrade", "steps": [{"revision": "b2", "direction": "upgrade", "status": "applied"}],
            "error": {"reason": C.DATABASE_UNAVAILABLE, "message": "the connection to the database was lost",
                      "step": "c3"}}
    v = from_result(lost, {}, 1, NOW, "spec", NOW, PLAN, retry=1)
    assert conds(v.status)["Stalled"][0] == "False" and conds(v.status)["Reconciling"] == ("True",
                                                                                          "DatabaseUnavailable")
    assert v.retry_in == 10 and "the database is at b2" in v.outcome.message and "undone" not in v.outcome.message
    assert v.status["currentRevision"] == "b2" and v.reachable is False
    unknown = from_result({**lost, "current_revisions": None}, {}, 1, NOW, "spec", NOW, PLAN)
    assert "read on the next try" in unknown.outcome.message


def test_an_outage_while_ready_is_a_detail_condition_an_event_once_and_clears():
    """15.13: Ready stays (the revision did not change); DatabaseReachable says the rest; no flapping Events."""
    ready = from_result(APPLIED, {}, 1, NOW, "spec", NOW, PLAN).status
    assert decide.database_reachable_again(ready, 1, NOW, "fine") is None  # no outage, nothing to say
    down = decide.database_unreachable(ready, 1, LATER, "cannot connect")
    st = {**ready, **down.status}
    assert conds(st)["Ready"] == ("True", "AtRevision")
    assert conds(st)["DatabaseReachable"] == ("False", "DatabaseUnavailable")
    assert [e[1] for e in down.events] == ["DatabaseUnreachable"] and down.reachable is False
    again = decide.database_unreachable(st, 1, "2026-11-25T12:00:00Z", "cannot connect")
    assert not again.events and status_patch(st, again.status) == {}  # a lasting outage writes nothing new
    # a later pass keeps the detail condition; the timer clears it
    back = decide.database_reachable_again(st, 1, "2026-11-25T13:00:00Z", "answers again")
    st2 = {**st, **back.status}
    assert conds(st2)["DatabaseReachable"] == ("True", "DatabaseReachable") and conds(st2)["Ready"][0] == "True"
    assert [e[1] for e in back.events] == ["DatabaseReachable"] and back.reachable is True
    kept = compute_conditions(Outcome("progressing", C.PROGRESSING, "x"), 1, st["conditions"], LATER)
    assert [c["type"] for c in kept] == ["Ready", "Reconciling", "Stalled", "DatabaseReachable"]
    # a run that reaches the database marks it reachable again
    ran = from_result(APPLIED, st, 1, LATER, "drift", LATER, PLAN)
    assert conds(ran.status)["DatabaseReachable"][0] == "True" and ran.reachable is True


def test_metrics_follow_the_conditions_while_suspended():
    """15.13: a suspended resource whose Ready is True counts as ready."""
    from dbrev.controller.status import metric_states

    ready = from_result(APPLIED, {}, 1, NOW, "spec", NOW, PLAN).status
    sus = decide.suspended(ready, 2, LATER).status
    assert conds(sus)["Ready"] == ("True", "AtRevision") and metric_states(sus["conditions"]) == (True, False, False)
    fresh = decide.suspended({}, 1, NOW).status
    assert metric_states(fresh["conditions"]) == (False, False, True)


def test_a_kubernetes_api_outage_is_not_a_database_outage():
    """Issue 11: a 5xx from the API server reading a Secret is transient, and names the API, not the database."""
    from kubernetes.client.rest import ApiException

    from dbrev.controller.inputs import read_error

    err = read_error(ApiException(status=503, reason="Service Unavailable"), "Secret", "ns", "db")
    assert err.transient and err.reason == C.KUBERNETES_UNAVAILABLE and "Kubernetes API" in err.message
    v = decide.from_error(err.to_dict(), {}, 1, NOW, transient=err.transient)
    assert conds(v.status)["Reconciling"] == ("True", "KubernetesAPIUnavailable") and v.retry_in == 5
    assert "DatabaseReachable" not in conds(v.status)
    assert read_error(ApiException(status=404), "Secret", "ns", "db").reason == C.SECRET_NOT_FOUND


def test_only_an_absent_api_server_keeps_an_outcome_for_later():
    """15.12: an outage (5xx, 429, no answer) keeps the record; a refusal (422, 404) is not retried forever."""
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import MaxRetryError

    from dbrev.controller.kube import api_unreachable

    assert api_unreachable(ApiException(status=503)) and api_unreachable(ApiException(status=429))
    assert api_unreachable(MaxRetryError(None, "/apis", "refused")) and api_unreachable(ConnectionRefusedError())
    assert not api_unreachable(ApiException(status=422)) and not api_unreachable(ApiException(status=404))
