"""Nothing lost, end to end: a GitOps revert whose ConfigMap lost the newer scripts, and the Archive policy."""

from __future__ import annotations

import json

import pytest

from dbhelp import q
from opharness import dbrev_resource, ready_at, wait_for

pytestmark = pytest.mark.cluster

HEAD = "f1a2b3c4d5e6"
MERGE = "e5f6a7b8c9d0"
NEWER = ("0a1b2c3d4e5f", "f1a2b3c4d5e6")



def test_gitops_revert_without_the_newer_scripts_downgrades_from_the_stored_ones(
        kube, namespace, database_url, examples_dir, start_operator):
    kube.secret_url(namespace, "db", database_url)
    kube.configmap_from(namespace, "migrations", examples_dir)
    start_operator([namespace])
    kube.apply(dbrev_resource(namespace, "orders", HEAD, policy={"dataLoss": "Archive"}))
    ready_at(kube, namespace, "orders", HEAD)
    q(database_url, "INSERT INTO customers (email, name) VALUES ('Ann+x@Example.com', 'Ann'), ('bo@ex.org', 'Bo')")
    q(database_url, "UPDATE customers SET email_normalized = lower(email)")
    # git revert: the app, spec.revision and the ConfigMap of scripts go back together
    older = [p.name for p in sorted(examples_dir.glob("*.py")) if not p.name.startswith(NEWER)]
    kube.configmap_from(namespace, "migrations", examples_dir, only=older)
    kube("patch", "dbrev", "orders", "-n", namespace, "--type", "merge", "-p",
         json.dumps({"spec": {"revision": MERGE}}))
    st = ready_at(kube, namespace, "orders", MERGE)
    from_db = [s["revision"] for s in st["plan"]["steps"] if s["fromDatabase"]]
    assert from_db == ["f1a2b3c4d5e6", "0a1b2c3d4e5f"]
    assert st["history"][0]["direction"] == "downgrade"
    assert sorted(r[0] for r in q(database_url, "SELECT version_num FROM alembic_version")) == [MERGE]
    # the dropped column's values were archived, and the Event says how to restore them
    rows = q(database_url, "SELECT source_table, source_column, rows FROM dbrev.archive_manifest")
    assert ("customers", "email_normalized", 2) in [tuple(r) for r in rows]
    archived = [e for e in kube.events(namespace, "orders") if e["reason"] == "Archived"]
    assert archived and "dbrev archive restore" in archived[0]["message"]
