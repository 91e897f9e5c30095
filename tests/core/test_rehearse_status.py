"""The operator's side of rehearsed downgrades (issue 14): status.rollbackReadiness, the Event, the
Stalled reason when Require refused, the CRD field and printer column.  Pure."""

from dbrev import conditions as C
from dbrev.controller import decide
from dbrev.results import RunResult
from dbrev.controller.spec import parse_spec  # noqa: F401 - the spec parser takes policy.rehearse
from dbrev.crd import crd


def from_result(result: dict, *args, **kw):
    """decide.from_result on the RunResult the worker would hand over (the document, parsed)."""
    return decide.from_result(RunResult.from_dict(result), *args, **kw)

NOW = "2026-11-25T10:00:00Z"
PLAN = {"hash": "sha256:" + "ab" * 32, "direction": "upgrade", "transaction": "single", "from_revisions": ["a1"],
        "to_revisions": ["b2"], "destructive": [], "steps": [{"revision": "b2", "direction": "upgrade"}],
        "warnings": []}


def _applied(rr):
    return {"result": "applied", "from_revisions": ["a1"], "to_revisions": ["b2"], "current_revisions": ["b2"],
            "direction": "upgrade", "steps": [{"revision": "b2", "direction": "upgrade", "status": "applied"}],
            "integrity": {"passed": True, "findings": [], "fingerprint": "sha256:x", "checked_at": NOW},
            "plan_hash": PLAN["hash"], "duration_seconds": 1.0, "rollback_readiness": rr}


def test_applied_run_records_its_readiness():
    v = from_result(_applied({"status": "Proven", "message": "ok", "steps": ["downgrade b2"]}),
                           {}, 1, NOW, "spec", NOW, PLAN)
    assert v.status["rollbackReadiness"]["status"] == "Proven"
    assert v.status["rollbackReadiness"]["revision"] == "b2" and v.status["rollbackReadiness"]["from"] == "a1"
    assert [e[1] for e in v.events] == ["Applied"]


def test_broken_way_back_warns():
    v = from_result(_applied({"status": "Broken", "message": "leaves + index public.ix", "step": "b2",
                                     "location": "b2.py:14"}), {}, 1, NOW, "spec", NOW, PLAN)
    assert v.status["rollbackReadiness"]["location"] == "b2.py:14"
    ev = [e for e in v.events if e[1] == "RollbackNotReady"]
    assert ev and ev[0][0] == "Warning" and "Broken" in ev[0][2]


def test_require_refusal_is_stalled_with_its_reason_and_hint():
    res = {"result": "refused", "from_revisions": ["a1"], "to_revisions": ["b2"], "current_revisions": ["a1"],
           "error": {"reason": C.ROLLBACK_NOT_READY, "message": "rehearse: Require refuses ..."}}
    v = from_result(res, {}, 1, NOW, "spec", NOW, PLAN)
    st = {c["type"]: (c["status"], c["reason"]) for c in v.status["conditions"]}
    assert st["Stalled"] == ("True", "RollbackNotReady")
    assert v.status["lastError"]["reason"] == "RollbackNotReady"
    stalled = [c for c in v.status["conditions"] if c["type"] == "Stalled"][0]
    assert "To fix:" in stalled["message"] and "dbrev check" in stalled["message"]


def test_crd_has_the_policy_field_and_the_wide_column():
    doc = crd()
    ver = doc["spec"]["versions"][0]
    pol = ver["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["policy"]["properties"]
    assert pol["rehearse"]["enum"] == ["Never", "Report", "Require"] and pol["rehearse"]["default"] == "Report"
    cols = {c["name"]: c for c in ver["additionalPrinterColumns"]}
    assert cols["Rollback"]["jsonPath"] == ".status.rollbackReadiness.status" and cols["Rollback"]["priority"] == 1
