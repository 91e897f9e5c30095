"""Migrations from an application's image on a real node (issue 12): the test application of
tests/appimage (ordersapp: models, custom column types, a naming convention in env.py, scripts that
import it) built into images from the local base with ``pip install dbrev`` (dbrev_dev.envtest.images
.app_archive), loaded into the node.

* Without the operator: a Job running plain ``alembic upgrade head`` in the image, as a Helm hook or an
  Argo CD PreSync Job does, and dbrev's own Jobs (the pure builder's plan Job, then the apply Job of
  that plan) in the same image on another database give the same schema (dbrev's state schema aside).
* With the operator: a DatabaseRevision naming the image upgrades to head through the operator's Job;
  a GitOps revert to the older tag (fewer scripts) downgrades from the copies the database keeps and
  ends Ready, the rows kept; a tag whose newest step fails is rolled back (Stalled, the database where it
  was); a downgrade that policy makes wait for an approval waits with the plan the Job made and runs
  once approved; the database password appears in no status, Event, Job, pod or log.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dbhelp import heads
from dbrev.controller import jobs as J
from dbrev.controller.spec import parse_spec
from dbrev_dev.envtest import images
from dbrev.pg.ephemeral import drop_database
from appschema import CONVENTION_NAMES, V1_HEAD, V2_HEAD, constraint_names, counts, diff, schema
from opharness import Kube, condition, is_state, ready_at, run_job, wait_for

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.cluster

CRD = ROOT / "crds" / "dbrev.io_databaserevisions.yaml"
V1, V2, BROKEN = (f"{images.ORDERSAPP_IMAGE}:{t}" for t in ("v1", "v2", "broken"))
JOB_SELECTOR = "app.kubernetes.io/managed-by=dbrev,dbrev.io/name={name}"


def load_app_images(node, *tags: str) -> None:
    """Build (cached) and import the tags into the node's containerd, once per node."""
    loaded = node.__dict__.setdefault("_dbrev_app_images", set())
    for tag in tags:
        if tag not in loaded:
            node.load_image(images.app_archive(tag))
            loaded.add(tag)


class AppDatabases:
    """Databases of their own role with a password (the node's server trusts every login, but the URL
    carries the password everywhere dbrev carries the URL: that is what the leak checks look for)."""

    def __init__(self, node, kube: Kube, ns: str):
        self.admin, self.kube, self.ns = node.database_url(), kube, ns
        self.made: list[tuple[str, str]] = []

    def new(self, secret: str) -> str:
        tag = uuid.uuid4().hex[:10]
        role, db, password = f"app_{tag}", f"orders_{tag}", f"pw-{uuid.uuid4().hex}"
        eng = sa.create_engine(self.admin, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        try:
            with eng.connect() as c:
                c.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
                c.execute(sa.text(f'CREATE DATABASE "{db}" OWNER {role}'))
        finally:
            eng.dispose()
        self.made.append((role, db))
        url = make_url(self.admin).set(username=role, password=password, database=db) \
            .render_as_string(hide_password=False)
        self.kube.secret_url(self.ns, secret, url)
        return url

    def drop(self) -> None:
        for role, db in self.made:
            drop_database(self.admin, db)
            eng = sa.create_engine(self.admin, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
            try:
                with eng.connect() as c:
                    c.execute(sa.text(f"DROP ROLE IF EXISTS {role}"))
            finally:
                eng.dispose()


@pytest.fixture
def appns(node):
    kube = Kube(node)
    kube("apply", "--server-side", "--force-conflicts", "--field-manager=dbrev-tests", "-f", str(CRD))
    kube("wait", "--for=condition=Established", "crd/databaserevisions.dbrev.io", "--timeout=60s")
    ns = node.create_namespace(f"appimg-{uuid.uuid4().hex[:6]}")
    dbs = AppDatabases(node, kube, ns)
    yield kube, ns, dbs
    kube("delete", "namespace", ns, "--wait=false", check=False)
    dbs.drop()


def app_resource(ns: str, name: str, revision: str, image: str, secret: str = "db", policy: dict | None = None,
                 **spec) -> dict:
    body = {"apiVersion": "dbrev.io/v1alpha1", "kind": "DatabaseRevision", "metadata": {"name": name, "namespace": ns},
            "spec": {"revision": revision, "database": {"urlSecretRef": {"name": secret}},
                     "migrations": {"image": {"name": image, "path": images.APP_MIGRATIONS,
                                              "imagePullPolicy": "IfNotPresent"}}}}
    if policy:
        body["spec"]["policy"] = policy
    body["spec"].update(spec)
    return body


def alembic_job(ns: str, name: str, image: str, secret: str) -> dict:
    """What an application's team runs today (a Helm hook, an Argo CD PreSync Job): ``alembic upgrade
    head`` in the app's image, in its folder, the URL from a Secret."""
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns},
            "spec": {"backoffLimit": 0, "template": {"spec": {
                "restartPolicy": "Never", "automountServiceAccountToken": False,
                "containers": [{"name": "migrate", "image": image, "imagePullPolicy": "IfNotPresent",
                                "command": ["alembic", "upgrade", "head"], "workingDir": images.APP_ROOT,
                                "env": [{"name": "DATABASE_URL",
                                         "valueFrom": {"secretKeyRef": {"name": secret, "key": "url"}}}]}]}}}}


def secret_parts(url: str) -> list[str]:
    return [url, make_url(url).password]


def assert_nowhere(kube: Kube, ns: str, secrets: list[str], extra: dict[str, str] | None = None) -> None:
    """None of ``secrets`` in what the API server serves of the namespace (resources with their status,
    Events, Jobs, pods with their termination messages) nor in any pod's log, nor in ``extra``."""
    served = {kind: kube("get", kind, "-n", ns, "-o", "json")
              for kind in ("databaserevisions", "events", "jobs", "pods")}
    for pod in json.loads(served["pods"])["items"]:
        code, out, err = kube("logs", pod["metadata"]["name"], "-n", ns, "--all-containers", check=False)
        served[f"log of {pod['metadata']['name']}"] = out + err
    served.update(extra or {})
    leaks = {where: [s[:12] + "..." for s in secrets if s and s in text] for where, text in served.items()}
    assert not {k: v for k, v in leaks.items() if v}, leaks
    assert json.loads(served["jobs"])["items"], "no Job to look into"


def test_the_job_path_gives_the_schema_plain_alembic_gives_in_the_same_image(node, appns):
    kube, ns, dbs = appns
    load_app_images(node, V2)
    url_a, url_b = dbs.new("db-a"), dbs.new("db-b")

    # A: the Helm-hook practice
    job, term, log = run_job(kube, alembic_job(ns, "alembic-upgrade", V2, "db-a"))
    assert term["exitCode"] == 0, (term, log[-3000:])
    assert heads(url_a) == [V2_HEAD]

    # B: dbrev's Jobs in the same image: the pure builder's plan Job, then the apply Job of exactly that plan
    kube.apply(J.service_account_manifest(ns))
    kube.apply(app_resource(ns, "orders", "head", V2, secret="db-b", suspend=True))  # owns the Jobs; no operator
    obj = json.loads(kube("get", "databaserevision", "orders", "-n", ns, "-o", "json"))
    owner = J.Owner("orders", ns, obj["metadata"]["uid"])
    spec = parse_spec(obj["spec"])
    settings = J.Settings(image=images.OPERATOR_IMAGE, image_pull_policy="Never", ttl_seconds=600)
    plan_job = J.job_manifest(owner, spec, J.PLAN, settings)
    assert plan_job["spec"]["template"]["spec"]["containers"][0]["image"] == V2
    job, term, log = run_job(kube, plan_job)
    assert term["exitCode"] == 0, (term, log[-3000:])
    plan = json.loads(term["message"])
    assert plan["direction"] == "upgrade" and plan["to_revisions"] == [V2_HEAD], plan
    assert heads(url_b) == []
    apply_job = J.job_manifest(owner, spec, J.APPLY, settings, plan["hash"])
    job, term, log = run_job(kube, apply_job)
    assert term["exitCode"] == 0, (term, log[-3000:])
    assert json.loads(term["message"])["result"] == "applied", term["message"]
    assert heads(url_b) == [V2_HEAD]

    # the same schema (dbrev's own state schema aside), named by env.py's convention, the same rows
    assert diff(schema(url_a), schema(url_b)) == {}
    assert set(CONVENTION_NAMES) <= constraint_names(url_b)
    assert counts(url_a) == counts(url_b) == {"customer": 3, "orders": 4, "shipment": 0}
    assert_nowhere(kube, ns, secret_parts(url_a) + secret_parts(url_b))


def _patch(kube: Kube, ns: str, name: str, spec: dict) -> None:
    kube("patch", "dbrev", name, "-n", ns, "--type", "merge", "-p", json.dumps({"spec": spec}))


def _image(tag: str) -> dict:
    return {"migrations": {"image": {"name": tag, "path": images.APP_MIGRATIONS, "imagePullPolicy": "IfNotPresent"}}}


def _jobs(kube: Kube, ns: str, name: str) -> list[dict]:
    return json.loads(kube("get", "jobs", "-n", ns, "-l", JOB_SELECTOR.format(name=name), "-o", "json"))["items"]


def _stalled(kube: Kube, ns: str, name: str, generation: int):
    s = kube.status(ns, name)
    return s if s.get("observedGeneration") == generation and condition(s, "Stalled").get("status") == "True" \
        else None


def test_the_operator_upgrades_from_the_image_rolls_back_a_failing_tag_and_reverts_to_an_older_one(
        node, appns, pod_operators):
    kube, ns, dbs = appns
    load_app_images(node, V1, V2, BROKEN)
    url = dbs.new("db")
    op = pod_operators.start([ns])

    kube.apply(app_resource(ns, "orders", "head", V2, policy={"downgrade": "Allow", "dataLoss": "Allow"}))
    st = ready_at(kube, ns, "orders", V2_HEAD, timeout=240)
    assert heads(url) == [V2_HEAD] and st["history"][0]["result"] == "applied"
    assert set(CONVENTION_NAMES) <= constraint_names(url)  # the app's env.py ran, in the app's image
    jobs = _jobs(kube, ns, "orders")
    assert jobs and {j["spec"]["template"]["spec"]["containers"][0]["image"] for j in jobs} == {V2}, \
        [j["metadata"]["name"] for j in jobs]
    uid = kube.get(ns, "orders")["metadata"]["uid"]
    assert all(j["metadata"]["ownerReferences"][0]["uid"] == uid for j in jobs)
    rows, at_v2 = counts(url), schema(url)
    assert rows == {"customer": 3, "orders": 4, "shipment": 0}

    # a tag whose newest step fails on the data: rolled back, the database where it was
    _patch(kube, ns, "orders", _image(BROKEN))
    st = wait_for(lambda: _stalled(kube, ns, "orders", 2), 240, "Stalled after the failing step")
    assert condition(st, "Stalled")["reason"] in ("RolledBack", "MigrationFailed"), st
    assert condition(st, "Ready")["status"] == "False"
    assert heads(url) == [V2_HEAD] and diff(schema(url), at_v2) == {}
    said = json.dumps(st.get("lastError")) + condition(st, "Ready")["message"]
    assert "c0de00000006" in said and "uq_orders_customer_id" in said, said  # the step and its cause
    assert {j["spec"]["template"]["spec"]["containers"][0]["image"] for j in _jobs(kube, ns, "orders")} >= {BROKEN}

    # the GitOps revert to the older tag: its image lacks scripts 4 and 5, the database keeps their copies
    _patch(kube, ns, "orders", {**_image(V1), "revision": V1_HEAD})
    st = ready_at(kube, ns, "orders", V1_HEAD, timeout=240)
    assert st["history"][0]["direction"] == "downgrade" and st["history"][0]["result"] == "applied", st["history"][0]
    assert heads(url) == [V1_HEAD]
    assert counts(url) == {**rows, "shipment": None}  # what the downgrade does not drop is kept
    assert "country" not in {c[2] for c in schema(url)["columns"] if c[1] == "customer"}
    assert_nowhere(kube, ns, secret_parts(url), {"the operator's log": json.dumps(op.logs())})


def test_a_downgrade_that_needs_an_approval_waits_with_the_jobs_plan_and_runs_once_approved(
        node, appns, pod_operators):
    kube, ns, dbs = appns
    load_app_images(node, V1, V2)
    url = dbs.new("db")
    op = pod_operators.start([ns])

    kube.apply(app_resource(ns, "orders", "head", V2, policy={"downgrade": "RequireApproval", "dataLoss": "Allow"}))
    ready_at(kube, ns, "orders", V2_HEAD, timeout=240)
    rows = counts(url)

    _patch(kube, ns, "orders", {**_image(V1), "revision": V1_HEAD})
    st = wait_for(lambda: (s := kube.status(ns, "orders")) and s.get("observedGeneration") == 2
                  and is_state(s, "False", "AwaitingApproval") and s, 240, "AwaitingApproval")
    plan = st["plan"]
    assert plan["direction"] == "downgrade" and len(plan["steps"]) == 2, plan
    assert plan["hash"].startswith("sha256:") and plan["hash"] in condition(st, "Ready")["message"]
    assert condition(st, "Stalled")["status"] == "False"
    assert heads(url) == [V2_HEAD]  # nothing ran
    assert {j["spec"]["template"]["spec"]["containers"][0]["image"] for j in _jobs(kube, ns, "orders")} >= {V1}

    kube("annotate", "dbrev", "orders", "-n", ns, "--overwrite", f"dbrev.io/approve={plan['hash']}")
    st = ready_at(kube, ns, "orders", V1_HEAD, timeout=240)
    assert st["history"][0]["planHash"] == plan["hash"] and st["history"][0]["trigger"] == "approval"
    assert heads(url) == [V1_HEAD] and counts(url) == {**rows, "shipment": None}
    assert_nowhere(kube, ns, secret_parts(url), {"the operator's log": json.dumps(op.logs())})
