"""RunResult and its parts: the one shape of a run, and the ``dbrev apply --json`` document it prints."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dbrev.core import conditions as C
from dbrev.core import metric_labels
from dbrev.core.results import (
    ROLLBACK_TRIGGERS,
    Rollback,
    RunError,
    RunResult,
    StepRecord,
    apply_document,
)

README = Path(__file__).resolve().parents[2] / "README.md"

INTEGRITY = {"passed": True, "findings": [], "new_findings": [], "fingerprint": "sha256:f", "checked_at": "t"}
DECISION = {"allowed": True, "reason": "Progressing", "message": "ok", "archive": False, "archive_reason": None,
            "not_data_loss": []}

# one document of each shape the runner, the worker and the CLI write
DOCUMENTS = {
    "applied": {"result": "applied", "steps": [{"revision": "b2", "direction": "upgrade", "duration_seconds": 0.1,
                                                "status": "applied"}],
                "warnings": [], "from_revisions": ["a1"], "plan_hash": "sha256:p", "direction": "upgrade",
                "transaction": "single", "to_revisions": ["b2"], "decision": DECISION,
                "rollback_readiness": {"status": "Proven", "message": "ok", "steps": ["downgrade b2"]},
                "integrity": INTEGRITY, "current_revisions": ["b2"], "duration_seconds": 1.5},
    "refused": {"result": "refused", "steps": [], "warnings": [], "from_revisions": [], "plan_hash": "sha256:p",
                "direction": "downgrade", "transaction": "single", "to_revisions": [], "decision": DECISION,
                "error": {"error_type": "PolicyRefused", "reason": "DowngradeDenied", "message": "no"},
                "current_revisions": [], "duration_seconds": 0.2},
    "rolled back in one transaction": {
        "result": "rolled_back", "steps": [{"revision": "b2", "direction": "upgrade", "duration_seconds": 0.1,
                                            "status": "failed"}], "warnings": [],
        "error": {"error_type": "ZeroDivisionError", "reason": "MigrationFailed", "message": "division by zero",
                  "detail": "division by zero", "step": "b2", "direction": "upgrade", "location": "b2.py:12"},
        "integrity": INTEGRITY, "current_revisions": ["a1"],
        "rollback": {"triggered": True, "reason": "migration_failure", "method": "transaction", "success": True,
                     "integrity": INTEGRITY}},
    "a failure outside any step keeps its null step": {
        "result": "rolled_back", "warnings": [], "steps": [],
        "error": {"error_type": "EnvPyFailed", "reason": "MigrationFailed", "message": "env.py", "detail": "env.py",
                  "step": None, "direction": None, "location": None}},
    "per-step rollback that failed": {
        "result": "failed", "steps": [{"revision": "b2", "direction": "upgrade", "duration_seconds": 0.1,
                                       "status": "applied"}], "warnings": ["w"],
        "archived": [{"id": 1, "revision": "b2"}],
        "error": {"reason": "RollbackFailed", "error_type": "IntegrityCheckFailed", "message": "m"},
        "current_revisions": ["b2"],
        "rollback": {"triggered": True, "reason": "integrity_check_failure", "method": "inverse_steps",
                     "transaction": "single", "success": False,
                     "steps": [{"revision": "b2", "direction": "downgrade", "status": "failed"}],
                     "integrity": INTEGRITY, "restored": [{"table": "t"}], "message": "the inverse steps failed",
                     "error": {"error_type": "PolicyRefused", "reason": "DataLossDenied", "message": "x"}}},
    "a dead worker, the database unreachable": {
        "result": "failed", "current_revisions": None, "duration_seconds": 3.0, "warnings": [],
        "error": {"error_type": "WorkerDied", "reason": "MigrationFailed", "message": "died",
                  "details": {"output_tail": ["a line"]}}},
    "a timed-out per-step run undone by another worker": {
        "result": "rolled_back", "current_revisions": ["a1"], "duration_seconds": 9.0, "warnings": [],
        "error": {"error_type": "WorkerTimeout", "reason": "TimedOut", "message": "the run passed its 8s timeout"},
        "from_revisions": ["a1"], "to_revisions": ["c3"], "direction": "upgrade", "plan_hash": "sha256:p",
        "transaction": "per-step", "steps": [],
        "rollback": {"triggered": True, "reason": "timeout", "method": "inverse_steps", "success": True,
                     "steps": [{"revision": "b2", "direction": "downgrade", "duration_seconds": 0.1,
                                "status": "applied"}], "integrity": None}},
    "busy": {"result": "busy", "error": {"error_type": "Busy", "reason": "LockBusy", "message": "m", "exit_code": 4,
                                         "hint": "retry later"}},
}


@pytest.mark.parametrize("doc", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_every_document_survives_the_process_boundary_unchanged(doc):
    r = RunResult.from_dict(doc)
    assert r.to_dict() == doc
    assert RunResult.from_dict(r.to_dict()) == r


def test_the_parts_are_typed():
    r = RunResult.from_dict(DOCUMENTS["per-step rollback that failed"])
    assert isinstance(r.error, RunError) and r.error.reason == C.ROLLBACK_FAILED
    assert isinstance(r.rollback, Rollback) and r.rollback.success is False and r.rollback_triggered
    assert isinstance(r.rollback.error, RunError) and r.rollback.error.reason == C.DATA_LOSS_DENIED
    assert all(isinstance(s, StepRecord) for s in r.steps + r.rollback.steps)


def test_an_unknown_key_is_refused_not_dropped():
    with pytest.raises(ValueError, match="forged"):
        RunResult.from_dict({"result": "applied", "forged": True})


def test_the_rollback_triggers_are_the_metric_labels():
    assert metric_labels.ROLLBACK_TRIGGERS == ROLLBACK_TRIGGERS
    assert ROLLBACK_TRIGGERS == ("migration_failure", "integrity_check_failure", "timeout", "worker_died",
                                 "rehearsal_failure", "health_check_failure")


def _documented_keys(paragraph_start: str) -> list[str]:
    text = README.read_text()
    start = text.index(paragraph_start)
    para = text[start:text.index("\n\n", start)]
    return re.findall(r"`([a-z_]+)`", para)


# what README's "--json documents" lists for `apply --json`, by part (the documented interface)
DOCUMENTED_TOP = {"result", "from_revision", "to_revision", "from_revisions", "to_revisions", "current_revisions",
                  "direction", "transaction", "plan_hash", "steps", "integrity", "rollback", "rollback_readiness",
                  "recorded_readiness", "archived", "decision", "classified_online", "repaired_sequences", "error", "warnings",
                  "duration_seconds"}
DOCUMENTED_STEP = {"revision", "direction", "duration_seconds", "status"}
DOCUMENTED_ROLLBACK = {"triggered", "reason", "method", "success", "integrity", "steps", "restored", "archived",
                       "message", "error"}
DOCUMENTED_ERROR = {"reason", "message", "step", "location"}


def test_the_documented_apply_document_is_the_shape_of_run_result():
    keys = set(_documented_keys("`apply --json` prints one object"))
    for part in (DOCUMENTED_TOP, DOCUMENTED_STEP, DOCUMENTED_ROLLBACK, DOCUMENTED_ERROR):
        assert part <= keys, part - keys
    # every top-level key of the document is documented, and every documented one can appear
    assert set(RunResult.ORDER) | {"from_revision", "to_revision"} == DOCUMENTED_TOP
    assert set(StepRecord.ORDER) == DOCUMENTED_STEP
    # a rollback also says which transaction mode its inverse steps ran in, and what a dead worker left
    assert set(Rollback.ORDER) == DOCUMENTED_ROLLBACK | {"transaction", "cleanup"}
    assert DOCUMENTED_ERROR <= set(RunError.ORDER)


def test_the_apply_document_always_has_its_fixed_keys():
    doc = apply_document(RunResult.from_dict(DOCUMENTS["busy"]))
    assert doc == {**DOCUMENTS["busy"], "from_revision": None, "to_revision": None, "steps": [], "integrity": None,
                   "direction": None}
    doc = apply_document(RunResult.from_dict(DOCUMENTS["applied"]))
    assert (doc["from_revision"], doc["to_revision"]) == ("a1", "b2")
    merged = apply_document(RunResult(result="applied", from_revisions=["a1", "a2"], to_revisions=["b"]))
    assert merged["from_revision"] == "a1,a2"


def test_integrity_failure_errors_take_their_reason_from_conditions():
    e = RunError.integrity_failed(["one", "two", "three", "four"], rollback=True)
    assert e.reason == C.INTEGRITY_CHECK_FAILED
    assert e.message == "verification failed after the migration: one; two; three"
    off = RunError.integrity_failed(["one"], rollback=False)
    assert off.message == "verification failed and rollbackOnFailure is off: one"
