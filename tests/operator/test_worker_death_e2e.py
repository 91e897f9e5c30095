"""A worker that dies without a result says why, through the operator (issue 10), in both shapes.

In a Pod the memory-limit case is real (test_pod.py kills the worker with the kernel's OOM killer);
here the migration SIGKILLs its own worker, which is what the OOM killer does, so the same message can
be checked in process mode too, with the worker's last output in the operator's log, redacted.
"""

from __future__ import annotations

import json

import pytest

from dbhelp import heads
from opharness import condition, dbrev_resource, is_state, json_lines, wait_for
from scriptgen import write_script

pytestmark = pytest.mark.cluster

PASSWORD = "Wk3rD1esPw"


def test_a_worker_killed_mid_migration_is_explained_not_blamed_on_the_migration(
        kube, namespace, database_url, start_operator, tmp_path, operator_mode):
    d = tmp_path / "m"
    write_script(d, "w001aaaa", None, '''
        import os, signal, sys
        op.create_table("w1", sa.Column("id", sa.Integer, primary_key=True))
        print("about to allocate a lot, url password " + str(op.get_bind().engine.url.password), file=sys.stderr,
              flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    ''', 'op.drop_table("w1")')
    kube.configmap_from(namespace, "migrations", d)
    # the server trusts every local connection, so the password only has to be in the URL to be a secret
    kube.secret_url(namespace, "db", database_url.replace("://postgres@", f"://postgres:{PASSWORD}@"))
    op = start_operator([namespace])
    kube.apply(dbrev_resource(namespace, "w", "head"))

    def failed():
        st = kube.status(namespace, "w")
        return is_state(st, "False") and condition(st, "Reconciling").get("status") != "True" and st
    st = wait_for(failed, 120, "the run to fail")
    ready = condition(st, "Ready")
    # in-process: "the worker process died (...)"; in a Job: "the migration pod NAME died (...)"
    assert "died (killed by SIGKILL) without a result" in ready["message"], ready
    assert "OOM" in ready["message"] and "fix the failing migration" not in ready["message"]
    assert heads(database_url) == []  # one transaction: nothing of the step is left
    # the last lines the worker wrote are in the log of what ran it (the operator in process; the migration
    # Job's pod, where dbrev apply ran the worker, in Pod mode), the password masked
    def records():
        if operator_mode == "process":
            return op.logs()
        return json_lines(kube("logs", "-n", namespace, "-l", "app.kubernetes.io/managed-by=dbrev", "--tail=-1"))
    ended = wait_for(lambda: [r for r in records() if r.get("message") == "The worker ended without a result"],
                     30, "the record of the dead worker")
    tail = ended[-1]["output_tail"]
    assert any("about to allocate a lot" in ln for ln in tail), tail
    everything = json.dumps(kube.get(namespace, "w")) + json.dumps(kube.events(namespace)) + op.tail(400)
    if operator_mode != "process":
        everything += kube("logs", "-n", namespace, "-l", "app.kubernetes.io/managed-by=dbrev", "--tail=-1")
    assert PASSWORD not in everything
