"""The migration Job on a real node: dbrev's own image, ConfigMap scripts, a plan Job then an apply
Job of exactly that plan, each result read from the pod's termination message (no pod log, no
credentials) — and the attack of issue 12 as a regression: a migration script looking for
Kubernetes credentials (the ServiceAccount token, KUBE* variables, /proc/*/environ) and trying the
API server finds nothing it can use.

The Jobs come from the pure builder (dbrev.controller.jobs), created here with kubectl: the operator
does not run them yet. The DatabaseRevision exists (its uid owns the Jobs) but no operator watches it.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from dbhelp import heads, q
from dbrev.controller import jobs as J
from dbrev.controller.spec import parse_spec
from dbrev_dev.envtest import images
from dbrev.pg.ephemeral import create_database, drop_database
from opharness import Kube, dbrev_resource, run_job
from scriptgen import linear_history, write_script

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "crds" / "dbrev.io_databaserevisions.yaml"

# Runs inside the migration pod, as the migration script of an attacker would (offline in the plan Job
# too). It records what it found in the database it is migrating; it never prints a value it finds.
PROBE = r'''
import glob, json, os, ssl, urllib.request, urllib.error
found = {"uid": os.getuid(), "gid": os.getgid()}
found["token_files"] = sorted(glob.glob("/var/run/secrets/kubernetes.io/serviceaccount/*")
                              + glob.glob("/run/secrets/kubernetes.io/serviceaccount/*")
                              + glob.glob("/var/run/secrets/**/token", recursive=True))
found["kube_env"] = sorted(k for k in os.environ if k.startswith("KUBE"))
found["kubeconfig_env"] = "KUBECONFIG" in os.environ
environs = {}
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        environs[path] = open(path, "rb").read().decode("utf-8", "replace")
    except OSError:
        pass
found["proc_environs_read"] = sorted(environs)
found["proc_names"] = sorted({kv.split("=", 1)[0] for e in environs.values() for kv in e.split("\0") if kv})
found["jwt_in_proc"] = any("eyJ" in e for e in environs.values())
found["kubeconfig_in_proc"] = any("KUBECONFIG=" in e for e in environs.values())
try:
    open("/probe-root-write", "w").close()
    found["root_writable"] = True
except OSError:
    found["root_writable"] = False
host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
found["api"] = None
if host:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        urllib.request.urlopen(f"https://{host}:{port}/api/v1/namespaces/kube-system/secrets", timeout=5,
                               context=ctx)
        found["api"] = 200
    except urllib.error.HTTPError as e:
        found["api"] = e.code
    except Exception as e:  # noqa: BLE001
        found["api"] = type(e).__name__
from alembic import context
# the plan renders this offline and the apply checks the same plan: offline, the SQL must not vary
doc = "offline" if context.is_offline_mode() else json.dumps(found).replace("'", "''")
op.execute("CREATE TABLE IF NOT EXISTS probe (doc text)")
op.execute("INSERT INTO probe VALUES ('" + doc + "')")
'''


@pytest.fixture
def app(node):
    kube = Kube(node)
    kube("apply", "--server-side", "--force-conflicts", "--field-manager=dbrev-tests", "-f", str(CRD))
    kube("wait", "--for=condition=Established", "crd/databaserevisions.dbrev.io", "--timeout=60s")
    ns = node.create_namespace(f"jobs-{uuid.uuid4().hex[:6]}")
    admin = node.database_url()
    url = create_database(admin)
    kube.secret_url(ns, "db", url)
    yield kube, ns, url
    kube("delete", "namespace", ns, "--wait=false", check=False)
    drop_database(admin, url.rsplit("/", 1)[1])


def test_plan_then_apply_in_jobs_and_the_attack_finds_nothing(node, app, tmp_path):
    kube, ns, url = app
    d = tmp_path / "m"
    revs = linear_history(d, 2)
    write_script(d, "r003aaaa", revs[-1], PROBE, 'op.execute("DROP TABLE probe")', doc="probe")
    files = {p.name: p.read_text() for p in sorted(d.glob("*.py"))}
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "migrations", "namespace": ns},
                "data": files})
    kube.apply(J.service_account_manifest(ns))
    kube.apply(dbrev_resource(ns, "orders", "head", suspend=True))  # owns the Jobs; no operator runs here
    obj = json.loads(kube("get", "databaserevision", "orders", "-n", ns, "-o", "json"))
    owner = J.Owner("orders", ns, obj["metadata"]["uid"])
    spec = parse_spec(obj["spec"])
    settings = J.Settings(image=images.OPERATOR_IMAGE, image_pull_policy="Never", ttl_seconds=600)
    cm_files = {"migrations": sorted(files)}

    plan_job = J.job_manifest(owner, spec, J.PLAN, settings, configmap_files=cm_files)
    job, term, _ = run_job(kube, plan_job)
    assert term["exitCode"] == 0, term
    plan = json.loads(term["message"])
    assert plan["direction"] == "upgrade" and plan["to_revisions"] == ["r003aaaa"]
    assert heads(url) == []  # planning changed nothing

    apply_job = J.job_manifest(owner, spec, J.APPLY, settings, plan["hash"], configmap_files=cm_files)
    job, term, _ = run_job(kube, apply_job)
    assert term["exitCode"] == 0, term
    result = json.loads(term["message"])
    assert result["result"] == "applied", result
    assert heads(url) == ["r003aaaa"]

    # the Jobs are found by their labels, owned by the resource
    listed = json.loads(kube("get", "jobs", "-n", ns, "-l", "app.kubernetes.io/managed-by=dbrev,dbrev.io/name=orders",
                             "-o", "json"))["items"]
    assert sorted(j["metadata"]["labels"]["dbrev.io/verb"] for j in listed) == ["apply", "plan"]
    assert all(j["metadata"]["ownerReferences"][0]["uid"] == owner.uid for j in listed)

    # the attack, run by the apply (online): nothing usable
    (doc,) = [json.loads(r[0]) for r in q(url, "SELECT doc FROM probe")]
    assert doc["uid"] == 65532 and doc["gid"] == 65532
    assert doc["token_files"] == [], doc
    assert doc["kubeconfig_env"] is False and doc["kubeconfig_in_proc"] is False
    assert doc["jwt_in_proc"] is False
    # only the API server's address is left (Kubernetes always sets it): no credential among them
    assert set(doc["kube_env"]) <= {"KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT",
                                    "KUBERNETES_SERVICE_PORT_HTTPS", "KUBERNETES_PORT", "KUBERNETES_PORT_443_TCP",
                                    "KUBERNETES_PORT_443_TCP_ADDR", "KUBERNETES_PORT_443_TCP_PORT",
                                    "KUBERNETES_PORT_443_TCP_PROTO"}, doc["kube_env"]
    assert not {n for n in doc["proc_names"] if "TOKEN" in n.upper() or n.upper().startswith("KUBECONFIG")}
    assert doc["root_writable"] is False
    assert doc["api"] != 200  # anonymous: 401/403, or no route at all
    # the URL (and its password) is nowhere in the Jobs or their pods as the API server keeps them
    from sqlalchemy.engine import make_url

    secret_parts = [url] + ([make_url(url).password] if make_url(url).password else [])
    for m in (plan_job, apply_job):
        for kind in ("job", "pods"):
            args = ("get", kind, m["metadata"]["name"]) if kind == "job" else (
                "get", "pods", "-l", f"job-name={m['metadata']['name']}")
            served = kube(*args, "-n", ns, "-o", "json")
            assert not [s for s in secret_parts if s in served]
