"""`dbrev rollback NAME -n NS` (issue 13 §2): the rollback of a DatabaseRevision, through the operator."""

from __future__ import annotations

import json

import pytest

from clihelp import dbrev
from dbhelp import heads, json_lines
from opharness import dbrev_resource, ready_at, wait_for

pytestmark = pytest.mark.cluster

HEAD = "f1a2b3c4d5e6"
MERGE = "e5f6a7b8c9d0"


@pytest.fixture
def shop(kube, namespace, database_url, examples_dir):
    kube.secret_url(namespace, "db", database_url)
    kube.configmap_from(namespace, "migrations", examples_dir)
    return namespace



def test_rollback_of_a_databaserevision_undoes_its_last_run(kube, control_plane, shop, database_url,
                                                            start_operator):
    start_operator([shop])
    kube.apply(dbrev_resource(shop, "orders", MERGE, policy={"dataLoss": "Allow"}))
    ready_at(kube, shop, "orders", MERGE)
    kube("patch", "dbrev", "orders", "-n", shop, "--type", "merge", "-p", json.dumps({"spec": {"revision": "head"}}))
    ready_at(kube, shop, "orders", HEAD)

    env = control_plane.env()
    dry = dbrev("rollback", "orders", "-n", shop, "--dry-run", env=env)
    assert dry.code == 0 and dry.json["to_revision"] == MERGE and heads(database_url) == [HEAD]
    res = dbrev("rollback", "orders", "-n", shop, "--reason", "critical_bug", "--deployment-id", "rel-7",
                "--timeout", "120", env=env)
    assert res.code == 0, res.stdout + res.stderr
    assert res.json["success"] is True and res.json["from_revision"] == HEAD and res.json["to_revision"] == MERGE
    assert heads(database_url) == [MERGE]
    obj = kube.get(shop, "orders")
    assert obj["spec"]["revision"] == MERGE
    ann = obj["metadata"]["annotations"]
    assert ann["dbrev.io/rollback-reason"] == "critical_bug" and "@" in ann["dbrev.io/rollback-requested-by"]
    assert obj["status"]["history"][0]["direction"] == "downgrade"
    assert obj["status"]["history"][0]["deploymentId"] == "rel-7"
    recs = {r["event"]: r for r in json_lines(res.stderr) if r.get("event", "").startswith("rollback_")}
    assert recs["rollback_triggered"]["reason"] == "critical_bug"
    assert (recs["rollback_triggered"]["from_version"], recs["rollback_triggered"]["to_version"]) == (HEAD, MERGE)
    assert recs["rollback_executed"]["success"] is True and recs["rollback_executed"]["deployment_id"] == "rel-7"


def test_a_gitops_managed_databaserevision_is_reverted_in_git(kube, control_plane, shop, database_url,
                                                              start_operator):
    start_operator([shop])
    body = dbrev_resource(shop, "orders", MERGE, policy={"dataLoss": "Allow"})
    body["metadata"]["labels"] = {"kustomize.toolkit.fluxcd.io/name": "database",
                                  "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}
    kube.apply(body)
    ready_at(kube, shop, "orders", MERGE)
    kube("patch", "dbrev", "orders", "-n", shop, "--type", "merge", "-p", json.dumps({"spec": {"revision": "head"}}))
    ready_at(kube, shop, "orders", HEAD)
    res = dbrev("rollback", "orders", "-n", shop, env=control_plane.env(), json_out=False)
    assert res.code == 3
    assert "managed by Flux" in res.stdout and f"set spec.revision to {MERGE}" in res.stdout
    assert kube.get(shop, "orders")["spec"]["revision"] == "head" and heads(database_url) == [HEAD]
