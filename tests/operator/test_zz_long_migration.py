"""Liveness and readiness under a ten-minute migration: the operator pod is not restarted (issue 10).

Arranged so that ten real minutes cost the suite little: the session fixture ``long_migration``
(tests/operator/conftest.py) starts the migration — a single step of ``pg_sleep(600)`` — with the first
Pod-mode test, in its own namespace, database and operator Deployment (the namespaced overlay), and the
rest of the suite runs meanwhile. This module sorts last and its test is moved to the end of the
session (tests/operator/conftest.py), so by the time it runs most of the ten minutes have passed; it
waits for the rest and checks what a restart or a failed probe would have shown: the same pod, no
container restart, no Unhealthy event (the kubelet records every failed liveness or readiness
probe), Ready at the end, the revision reached, and exactly one run.
(The probes: liveness fails after 4 x 15 s without an answer, so a migration that blocked them would
have had the pod restarted about nine times over.) The session's cluster-wide operator sees this
namespace too, as it would in a cluster with both installs: it finds the database's advisory lock
held and reports LockBusy, retrying — which is why exactly one run is also a check that two operators
never run one migration twice.
"""

from __future__ import annotations

import json
import time

import pytest

from dbhelp import heads, q
from opharness import is_state, ready_pods, restarts, wait_for

pytestmark = pytest.mark.cluster


def test_a_ten_minute_migration_does_not_get_the_pod_restarted(long_migration):
    lm = long_migration
    kube, ns, url = lm["kube"], lm["ns"], lm["url"]
    before = lm["pod"]
    left = lm["seconds"] - (time.monotonic() - lm["started"])

    def done():
        st = kube.status(ns, lm["name"])
        return is_state(st, "True", "AtRevision") and st.get("currentRevision") == lm["revision"] and st
    st = wait_for(done, max(left, 0) + 180, f"{ns}/long Ready at {lm['revision']}", interval=2)
    assert time.monotonic() - lm["started"] >= lm["seconds"]  # it really took the ten minutes
    assert heads(url) == [lm["revision"]]
    assert st["history"][0]["result"] == "applied" and len(st["history"]) == 1
    assert st["history"][0]["durationSeconds"] >= lm["seconds"]
    # exactly one run, never interrupted and redone
    assert [r[0] for r in q(url, "SELECT status FROM dbrev.runs ORDER BY id")] == ["applied"]
    pods = json.loads(kube("get", "pods", "-n", ns, "-l", "app.kubernetes.io/component=operator",
                           "-o", "json"))["items"]
    assert [p["metadata"]["uid"] for p in pods] == [before["metadata"]["uid"]]  # the same pod
    (now,) = ready_pods(kube, ns)
    assert restarts(now) == 0
    events = json.loads(kube("get", "events", "-n", ns, "-o", "json"))["items"]
    # (the startup probe may fail while the operator boots: that is what it is for)
    probes = [e["message"] for e in events if e["involvedObject"].get("name") == now["metadata"]["name"]
              and e["reason"] in ("Unhealthy", "Killing", "BackOff") and not e["message"].startswith("Startup")]
    assert probes == []
