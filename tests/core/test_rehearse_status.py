"""The operator's side of rehearsed downgrades (issue 14): status.rollbackReadiness, the Event, the
Stalled reason when Require refused, the CRD field and printer column.  Pure."""

from dbrev.core import conditions as C
from dbrev.controller import decide
from dbrev.core.results import RunResult
from dbrev.controller.spec import parse_spec  # noqa: F401 - the spec parser takes policy.rehearse
from dbrev.controller.crd import crd


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


# -- the metric (a real prometheus_client registry, dbrev's own) ---------------------------------

def _sample(metric, **labels):
    from dbrev.controller import metrics as M

    for fam in M.REGISTRY.collect():
        for s in fam.samples:
            if s.name == metric and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def test_readiness_metric_follows_the_status_and_goes_with_the_resource():
    from dbrev.controller import metrics as M
    from dbrev.engine import rehearse

    kw = dict(is_ready=True, is_stalled=False, current="b2", target="b2")
    M.set_resource("ns-rr", "orders", **kw)  # no rehearsal recorded yet: no series
    assert _sample("dbrev_rollback_readiness", namespace="ns-rr", name="orders") is None
    M.set_resource("ns-rr", "orders", readiness="Lossy", **kw)
    vals = {v: _sample("dbrev_rollback_readiness", namespace="ns-rr", name="orders", readiness=v)
            for v in rehearse.READINESS_VALUES}
    assert vals == {"Proven": 0, "Lossy": 1, "Broken": 0, "Irreversible": 0, "Unproven": 0}
    M.set_resource("ns-rr", "orders", readiness="Broken", **kw)
    assert _sample("dbrev_rollback_readiness", namespace="ns-rr", name="orders", readiness="Broken") == 1
    assert _sample("dbrev_rollback_readiness", namespace="ns-rr", name="orders", readiness="Lossy") == 0
    assert "dbrev_rollback_readiness" in M.NAMES
    M.forget_resource("ns-rr", "orders")
    assert _sample("dbrev_rollback_readiness", namespace="ns-rr", name="orders") is None


def test_a_require_refusal_counts_its_rollback_under_a_declared_trigger():
    """decide passes the run's rollback.reason to dbrev_rollbacks_total{trigger}: it must be a declared one
    (the series are created at 0 for every declared trigger, and alerts read them)."""
    from dbrev.controller import metrics as M

    res = {"result": "refused", "from_revisions": ["a1"], "to_revisions": ["b2"], "current_revisions": ["a1"],
           "rollback": {"triggered": True, "reason": "rehearsal_failure", "method": "transaction", "success": True},
           "error": {"reason": C.ROLLBACK_NOT_READY, "message": "rehearse: Require refuses ..."}}
    v = decide.from_result(RunResult.from_dict(res), {}, 1, NOW, "spec", NOW, PLAN)
    assert v.rollback == ("rehearsal_failure", "success")
    assert v.rollback[0] in M.ROLLBACK_TRIGGERS
    M.set_resource("ns-rt", "orders", is_ready=False, is_stalled=True, current="a1", target="b2")
    assert _sample("dbrev_rollbacks_total", namespace="ns-rt", name="orders", trigger="rehearsal_failure",
                   result="success") == 0
    M.forget_resource("ns-rt", "orders")


def test_a_reverts_status_plan_shows_the_recorded_readiness():
    from dbrev.controller.status import plan_status

    rec = [{"status": "Lossy", "message": "restores the starting schema, losing 4 value(s) of column public.t.nick",
            "from": ["b2"], "to": ["a1"], "recorded_at": "2026-11-24T09:00:00+00:00", "run_id": 7,
            "losses": [{"table": "public.t", "column": "nick", "rows": 4, "kind": "column"}], "unrecorded": []}]
    down = {**PLAN, "direction": "downgrade", "from_revisions": ["b2"], "to_revisions": ["a1"],
            "recorded_readiness": rec}
    st = plan_status(down, NOW)
    assert st["recordedReadiness"] == [{"status": "Lossy", "message": rec[0]["message"], "from": "b2", "to": "a1",
                                        "step": "", "location": "", "recordedAt": "2026-11-24T09:00:00Z"}]
    assert "recordedReadiness" not in plan_status(PLAN, NOW)
    # the CRD keeps the field (the API server prunes what its schema does not declare)
    props = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(props["plan"]["properties"]["recordedReadiness"]["items"]["properties"]) == set(
        st["recordedReadiness"][0])


# -- which recorded readiness a plan shows (pure) --------------------------------------------

def _graph():
    from dbrev.core.graph import Node, graph_from_nodes

    # a1 -> b2 -> c3 -> d4
    return graph_from_nodes([Node("a1", (), (), ()), Node("b2", ("a1",), (), ()), Node("c3", ("b2",), (), ()),
                             Node("d4", ("c3",), (), ())])


def _run(i, frm, to, status):
    return {"id": i, "from_revisions": frm, "to_revisions": to, "finished_at": None,
            "readiness": {"status": status, "message": status.lower()}}


def test_recorded_for_walks_the_way_back_newest_first_and_names_the_rest():
    from dbrev.engine.rehearse import recorded_for, recorded_lines

    g = _graph()
    runs = [_run(4, ["b2"], ["d4"], "Broken"), _run(3, ["c3"], ["d4"], "Proven"),  # newest first
            _run(2, ["a1"], ["b2"], "Lossy"), _run(1, [], ["a1"], "Proven"), _run(0, ["zz"], ["d4"], "Proven")]
    rec = recorded_for(("d4",), ("a1",), runs, g)
    assert [(r["run_id"], r["from"], r["to"]) for r in rec] == [(4, ["d4"], ["b2"]), (2, ["b2"], ["a1"])]
    assert rec[-1]["unrecorded"] == []
    # further than anything recorded: what remains is named
    short = recorded_for(("d4",), ("a1",), runs[:1], g)
    assert short[-1]["unrecorded"] == ["b2"]
    assert "nothing recorded for undoing b2" in recorded_lines(short)[-1]
    # a run that overshoots the target (d4 -> b2 when the plan stops at c3) is not what this plan undoes
    assert [r["run_id"] for r in recorded_for(("d4",), ("c3",), runs, g)] == [3]
    # an upgrade's plan, and runs naming revisions no script defines, give nothing
    assert recorded_for(("a1",), ("d4",), runs, g) == []
    assert recorded_for(("d4",), ("c3",), [runs[-1]], g) == []
