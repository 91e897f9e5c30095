"""Migration Jobs that cannot give a result, on the real node (issue 12): each ends in its documented state,
named by its reason, with nothing lost and nothing left running.

The operator is the shared Deployment of manifests/overlays/cluster-wide (Pod mode), so every run here is a
Job it creates in the test's namespace. The OOM-killed pod is in test_pod.py; the app image's own cases are in
test_appimage_node.py.
"""

from __future__ import annotations

import json

import pytest

from dbhelp import heads, q
from dbrev_dev.envtest import images
from opharness import condition, dbrev_resource, is_state, ready_at, wait_for
from scriptgen import write_script

pytestmark = pytest.mark.cluster

SELECTOR = "app.kubernetes.io/managed-by=dbrev,dbrev.io/name={}"


def jobs(kube, ns: str, name: str) -> list[dict]:
    return json.loads(kube("get", "jobs", "-n", ns, "-l", SELECTOR.format(name), "-o", "json"))["items"]


def reconciling(st: dict, reason: str) -> bool:
    c = condition(st, "Reconciling")
    return c.get("status") == "True" and c.get("reason") == reason


def image_spec(name: str, path: str = "/app/migrations", **kw) -> dict:
    return {"image": {"name": name, "path": path, "imagePullPolicy": "Never", **kw}}


def test_an_image_that_cannot_be_pulled_is_retried_and_changes_nothing(deployed, app):
    ns, url = app
    kube = deployed
    kube.apply(dbrev_resource(ns, "nopull", "head", migrations=image_spec("dbrev-test/absent:v1")))
    st = wait_for(lambda: (s := kube.status(ns, "nopull")) and reconciling(s, "ImagePullFailed") and s, 120,
                  "ImagePullFailed")
    msg = condition(st, "Reconciling")["message"]
    assert "dbrev-test/absent:v1" in msg and "cannot be pulled" in msg and "retrying in" in msg, msg
    assert heads(url) == [] and not q(url, "SELECT to_regclass('dbrev.runs')")[0][0]  # nothing ran
    assert "Retrying" in kube.reasons(ns, "nopull")
    # the failed Job is deleted: no pod is left pulling for ever
    wait_for(lambda: all(j["metadata"].get("deletionTimestamp") for j in jobs(kube, ns, "nopull"))
             or not jobs(kube, ns, "nopull") or None, 60, "the failed Job deleted")


def test_an_image_without_dbrev_is_stalled_with_the_line_to_add(deployed, app):
    ns, url = app
    kube = deployed
    kube.apply(dbrev_resource(ns, "nodbrev", "head", migrations=image_spec(images.PAUSE_IMAGE, "/migrations")))
    st = wait_for(lambda: (s := kube.status(ns, "nodbrev")) and is_state(s, "False", "DbrevNotInImage") and s, 120,
                  "DbrevNotInImage")
    ready = condition(st, "Ready")
    assert "pip install dbrev" in ready["message"] and images.PAUSE_IMAGE in ready["message"], ready
    assert condition(st, "Stalled")["status"] == "True" and condition(st, "Reconciling")["status"] == "False"
    assert heads(url) == []


def test_the_run_timeout_stops_the_job_and_rolls_back(deployed, app, tmp_path):
    ns, url = app
    kube = deployed
    d = tmp_path / "m"
    write_script(d, "d001aaaa", None, 'op.create_table("d1", sa.Column("id", sa.Integer, primary_key=True))\n'
                 'op.execute("SELECT pg_sleep(60)")', 'op.drop_table("d1")')
    kube.configmap_from(ns, "migrations", d)
    kube.apply(dbrev_resource(ns, "slow", "head", policy={"timeoutSeconds": 10}))
    st = wait_for(lambda: (s := kube.status(ns, "slow")) and is_state(s, "False", "TimedOut") and s, 180,
                  "TimedOut")
    assert heads(url) == [] and not q(url, "SELECT to_regclass('public.d1')")[0][0]
    assert st["history"][0]["result"] in ("rolled_back", "failed")
    (job,) = jobs(kube, ns, "slow")
    assert job["spec"]["activeDeadlineSeconds"] >= 10 and job["spec"]["backoffLimit"] == 0
    # no session of the run is left behind
    assert not q(url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(60)%' "
                      "AND pid <> pg_backend_pid()")[0][0]


def test_the_migration_pod_deleted_mid_run_is_recovered_and_retried(deployed, app, tmp_path):
    ns, url = app
    kube = deployed
    d = tmp_path / "m"
    write_script(d, "p001aaaa", None, 'op.create_table("p1", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("p1")')
    write_script(d, "p002aaaa", "p001aaaa", 'op.create_table("p2", sa.Column("id", sa.Integer, primary_key=True))\n'
                 'if op.get_bind().exec_driver_sql("SELECT count(*) FROM dbrev.runs").scalar() < 2:  # first try\n'
                 '    op.execute("SELECT pg_sleep(60) -- podkill-marker")', 'op.drop_table("p2")')
    kube.configmap_from(ns, "migrations", d)
    kube.apply(dbrev_resource(ns, "gone", "head"))
    wait_for(lambda: q(url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%podkill-marker%' "
                            "AND pid <> pg_backend_pid()")[0][0] or None, 120, "the slow step to start")
    (first,) = jobs(kube, ns, "gone")
    kube("delete", "pods", "-n", ns, "-l", f"job-name={first['metadata']['name']}", "--wait=false")
    st = ready_at(kube, ns, "gone", "p002aaaa", timeout=240)
    runs = [r[0] for r in q(url, "SELECT status FROM dbrev.runs ORDER BY id")]
    assert runs[-1] == "applied" and set(runs[:-1]) <= {"died", "interrupted"} and len(runs) >= 2, runs
    assert heads(url) == ["p002aaaa"]
    assert any(h["result"] == "applied" for h in st["history"])
    events = [e for e in kube.events(ns) if e["involvedObject"].get("name") == "gone"]
    assert any(e["reason"] == "MigrationFailed" and "deleted while it ran" in e["message"] for e in events), \
        [(e["reason"], e["message"]) for e in events]
    assert any(h.get("result") in ("rolled_back", "failed") for h in st["history"]), st["history"]
