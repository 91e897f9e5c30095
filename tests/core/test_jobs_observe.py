"""Reading a migration Job (pure): what its pod's status says, as a reason the operator reports.

The shapes are the ones the kubelet and the Job controller write (the node tests,
tests/operator/test_jobs_faults_node.py, produce each of them for real).
"""

from __future__ import annotations

import json

import pytest

from dbrev.core import conditions as C
from dbrev.controller import jobs as J
from dbrev.controller.decide import TRANSIENT_REASONS
from dbrev.core.errors import MigrationJobError

IMAGE = "registry.example.com/orders-api:1.4.2"


def job(*conditions, deleting=False) -> dict:
    meta = {"name": "orders-apply-1", "namespace": "shop"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-03T10:00:00Z"
    return {"metadata": meta, "spec": {"template": {"spec": {"containers": [{"name": "dbrev", "image": IMAGE}]}}},
            "status": {"conditions": [{"type": t, "status": "True", "reason": r, "message": m}
                                      for t, r, m in conditions]}}


def pod(state: dict | None = None, *, phase="Pending", reason=None, message=None, deleting=False,
        disruption=None, last=None) -> dict:
    meta = {"name": "orders-apply-1-x7k2p", "creationTimestamp": "2026-12-03T10:00:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-03T10:01:00Z"
    st: dict = {"phase": phase, "conditions": []}
    if reason:
        st["reason"], st["message"] = reason, message
    if disruption:
        st["conditions"].append({"type": "DisruptionTarget", "status": "True", "reason": disruption,
                                 "message": "Taint manager: deleting due to NoExecute taint"})
    if state is not None:
        cs = {"name": "dbrev", "state": state}
        if last:
            cs["lastState"] = last
        st["containerStatuses"] = [cs]
    return {"metadata": meta, "status": st}


def terminated(code, reason="Error", message=None) -> dict:
    t = {"exitCode": code, "reason": reason}
    if message is not None:
        t["message"] = message
    return {"terminated": t}


RESULT = json.dumps({"result": "applied", "steps": [], "plan": {"hash": "sha256:ab"}})


def test_no_pod_yet_is_running_and_nothing_started():
    o = J.observe(job(), [])
    assert o.phase == J.RUNNING and not o.started


def test_a_running_container_has_started():
    o = J.observe(job(), [pod({"running": {"startedAt": "x"}}, phase="Running")])
    assert o.phase == J.RUNNING and o.started and o.pod == "orders-apply-1-x7k2p"


@pytest.mark.parametrize("code", [0, 1, 3])
def test_a_result_document_is_finished_whatever_the_exit_code(code):
    o = J.observe(job(("Complete", "", "")), [pod(terminated(code, "Completed", RESULT), phase="Succeeded")])
    assert o.phase == J.FINISHED and o.result_text == RESULT and o.exit_code == code and o.started


@pytest.mark.parametrize("reason", ["ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"])
def test_an_image_that_cannot_be_pulled(reason):
    o = J.observe(job(), [pod({"waiting": {"reason": reason, "message": "pull access denied"}})])
    assert (o.phase, o.reason, o.started) == (J.FAILED, C.IMAGE_PULL_FAILED, False)
    assert IMAGE in o.message and reason in o.message


def test_the_first_pull_error_is_waited_for_kubernetes_retries_it():
    assert J.observe(job(), [pod({"waiting": {"reason": "ErrImagePull", "message": "x"}})]).phase == J.RUNNING


@pytest.mark.parametrize("state", [
    {"waiting": {"reason": "RunContainerError", "message": 'exec: "dbrev": executable file not found in $PATH'}},
    terminated(128, "StartError", 'failed to create containerd task: exec: "dbrev": executable file not found'),
    terminated(127, "Error", "/bin/sh: dbrev: not found"),
])
def test_an_image_without_dbrev(state):
    o = J.observe(job(), [pod(state)])
    assert (o.phase, o.reason) == (J.FAILED, C.NO_DBREV_IN_IMAGE)
    assert "pip install dbrev" in o.message and IMAGE in o.message and not o.started


def test_oom_killed_after_it_started():
    o = J.observe(job(("Failed", "BackoffLimitExceeded", "")), [pod(terminated(137, "OOMKilled"), phase="Failed")])
    assert (o.phase, o.reason, o.started, o.exit_code) == (J.FAILED, C.OUT_OF_MEMORY, True, 137)


def test_the_deadline_passed():
    o = J.observe(job(("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")),
                  [pod(terminated(137, "Error", "log tail"), phase="Failed")])
    assert (o.phase, o.reason, o.started) == (J.FAILED, C.TIMED_OUT, True)


def test_evicted():
    o = J.observe(job(), [pod(None, phase="Failed", reason="Evicted", message="The node was low on memory")])
    assert (o.phase, o.reason) == (J.FAILED, C.POD_EVICTED) and "low on memory" in o.message
    o = J.observe(job(), [pod({"running": {}}, phase="Running", disruption="DeletionByTaintManager")])
    assert o.reason == C.POD_EVICTED and o.started


def test_deleted_job_or_pod():
    assert J.observe(None, [], seen_pod=True).reason == C.JOB_DELETED
    assert J.observe(job(deleting=True), []).reason == C.JOB_DELETED
    assert J.observe(job(), [pod({"running": {}}, phase="Running", deleting=True)]).reason == C.JOB_DELETED
    stopped = J.observe(job(), [pod(terminated(143, "Error", "Terminated"), phase="Failed", deleting=True)])
    assert stopped.reason == C.JOB_DELETED and stopped.started and "exit code 143" in stopped.message
    gone = J.observe(job(), [], seen_pod=True)
    assert gone.reason == C.JOB_DELETED and gone.started


def test_a_crash_without_a_result_quotes_the_log_tail():
    o = J.observe(job(), [pod(terminated(1, "Error", "Traceback\nImportError: no module named orders"),
                              phase="Failed")])
    assert (o.phase, o.reason, o.started) == (J.FAILED, C.MIGRATION_POD_FAILED, True)
    assert "died (exit code 1) without a result" in o.message
    assert o.tail == ("Traceback", "ImportError: no module named orders")
    killed = J.observe(job(), [pod(terminated(137, "Error", "about to allocate"), phase="Failed")])
    assert "killed by SIGKILL" in killed.message and "OOM" in killed.message and killed.reason != C.OUT_OF_MEMORY


def test_a_config_error_names_it():
    o = J.observe(job(), [pod({"waiting": {"reason": "CreateContainerConfigError",
                                           "message": 'secret "db" not found'}})])
    assert o.reason == C.MIGRATION_POD_FAILED and 'secret "db" not found' in o.message and not o.started


def test_which_job_failures_are_retried():
    assert set(C.JOB_TRANSIENT_REASONS) <= TRANSIENT_REASONS
    for reason in (C.NO_DBREV_IN_IMAGE, C.MIGRATIONS_NOT_FOUND, C.OUT_OF_MEMORY, C.MIGRATION_POD_FAILED):
        assert reason not in TRANSIENT_REASONS
        assert not MigrationJobError("x", reason=reason).transient
    assert MigrationJobError("x", reason=C.IMAGE_PULL_FAILED).transient
