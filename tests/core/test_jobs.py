"""The migration Job builder (dbrev.controller.jobs): every security property, asserted one by one.

Pure: plain data in, a manifest out. The last test has the real API server validate the manifests
(server-side dry run), so that what is asserted here is also what Kubernetes accepts."""

from __future__ import annotations

import dataclasses

import json

import pytest
from sqlalchemy.engine import make_url

from dbrev.controller import jobs as J
from dbrev.controller.spec import parse_spec

OWNER = J.Owner("orders", "shop", "0b8f5c1e-5f4e-4c3a-9d7e-1a2b3c4d5e6f")
SETTINGS = J.Settings(image="ghcr.io/dbrev/dbrev:dev")
HASH = "sha256:" + "ab" * 32
FILES = {"orders-migrations": ["a1_create.py", "b2_add.py"], "orders-more": ["c3_more.py"]}
PASSWORD = "Sup3r-S3cret-pw%/@x"


def cm_spec(**extra) -> dict:
    return {"revision": "head", "database": {"urlSecretRef": {"name": "orders-db", "key": "uri"}},
            "migrations": {"configMapRefs": [{"name": "orders-migrations"}, {"name": "orders-more"}]},
            "policy": {"timeoutSeconds": 600}, **extra}


def image_spec(**image) -> dict:
    return {"revision": "head", "database": {"credentials": {
                "host": "pg.shop.svc", "port": 5432, "database": "orders", "user": "app", "sslMode": "require",
                "passwordSecretRef": {"name": "orders-pw", "key": "password"}}},
            "migrations": {"image": {"name": "registry.example.com/orders-api:1.4.2", "path": "/app/migrations",
                                     **image}}}


def build(spec: dict, verb: str = J.APPLY, **kw) -> dict:
    s = parse_spec(spec)
    return J.job_manifest(OWNER, s, verb, kw.pop("settings", SETTINGS), HASH if verb == J.APPLY else None,
                          configmap_files=FILES, **kw)


def pod(job):
    return job["spec"]["template"]["spec"]


def ctr(job):
    (c,) = pod(job)["containers"]
    return c


ALL = [pytest.param(cm_spec(), J.PLAN, id="configmap-plan"), pytest.param(cm_spec(), J.APPLY, id="configmap-apply"),
       pytest.param(image_spec(), J.PLAN, id="image-plan"), pytest.param(image_spec(), J.APPLY, id="image-apply")]


@pytest.mark.parametrize("spec, verb", ALL)
def test_in_the_namespace_owned_by_the_resource_and_labelled(spec, verb):
    job = build(spec, verb)
    md = job["metadata"]
    assert md["namespace"] == "shop"
    assert md["ownerReferences"] == [{"apiVersion": "dbrev.io/v1alpha1", "kind": "DatabaseRevision",
                                      "name": "orders", "uid": OWNER.uid, "controller": True,
                                      "blockOwnerDeletion": False}]
    for labels in (md["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["app.kubernetes.io/managed-by"] == "dbrev"
        assert labels["dbrev.io/name"] == "orders" and labels["dbrev.io/verb"] == verb
    assert len(md["name"]) <= 63 and md["name"].startswith(f"orders-{verb}-")


@pytest.mark.parametrize("spec, verb", ALL)
def test_no_kubernetes_credentials(spec, verb):
    p = pod(build(spec, verb))
    assert p["automountServiceAccountToken"] is False
    assert p["serviceAccountName"] == J.SERVICE_ACCOUNT
    assert p["enableServiceLinks"] is False
    sa = J.service_account_manifest("shop")
    assert sa["metadata"] == {"name": J.SERVICE_ACCOUNT, "namespace": "shop", "labels": {
        "app.kubernetes.io/managed-by": "dbrev", "app.kubernetes.io/component": "migrations"}}
    assert sa["automountServiceAccountToken"] is False
    assert not any(v.get("projected", {}).get("sources", [{}])[0].get("serviceAccountToken") for v in p["volumes"])


@pytest.mark.parametrize("spec, verb", ALL)
def test_no_privileges(spec, verb):
    job = build(spec, verb)
    p, c = pod(job), ctr(job)
    assert p["securityContext"]["runAsNonRoot"] is True and p["securityContext"]["runAsUser"] == 65532
    assert p["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0 and sc["runAsGroup"] != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not any(k in p for k in ("hostNetwork", "hostPID", "hostIPC", "shareProcessNamespace"))
    # the only writable place: an emptyDir at /tmp (HOME too)
    writable = [m for m in c["volumeMounts"] if not m.get("readOnly")]
    assert writable == [{"name": "tmp", "mountPath": "/tmp"}]
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in p["volumes"]
    assert {"name": "HOME", "value": "/tmp"} in c["env"]


@pytest.mark.parametrize("spec, verb", ALL)
def test_bounded_once_and_cleaned_up(spec, verb):
    job = build(spec, verb)
    s = parse_spec(spec)
    assert job["spec"]["backoffLimit"] == 0
    assert pod(job)["restartPolicy"] == "Never"
    assert job["spec"]["activeDeadlineSeconds"] == int(s.timeout + s.connect_timeout + SETTINGS.deadline_margin)
    assert job["spec"]["activeDeadlineSeconds"] > s.timeout  # the CLI's own --timeout stops the run cleanly first
    assert job["spec"]["ttlSecondsAfterFinished"] == SETTINGS.ttl_seconds
    c = ctr(job)
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["terminationMessagePath"] == "/dev/termination-log"
    assert c["args"][c["args"].index("--result-file") + 1] == "/dev/termination-log"


def test_the_url_comes_only_from_a_secret_key_ref():
    c = ctr(build(cm_spec()))
    (url,) = [e for e in c["env"] if e["name"] == "DBREV_DATABASE_URL"]
    assert url == {"name": "DBREV_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": "orders-db", "key": "uri"}}}
    assert "--database-url" not in c["args"] and not any("postgresql" in a for a in c["args"])


def test_credentials_give_a_url_without_password_and_the_password_from_its_secret():
    c = ctr(build(image_spec()))
    env = {e["name"]: e for e in c["env"]}
    url = make_url(env["DBREV_DATABASE_URL"]["value"])
    assert url.password is None and url.username == "app" and url.host == "pg.shop.svc"
    assert url.database == "orders" and url.query == {"sslmode": "require"}
    assert env["DBREV_DATABASE_PASSWORD"] == {"name": "DBREV_DATABASE_PASSWORD", "valueFrom": {
        "secretKeyRef": {"name": "orders-pw", "key": "password"}}}


@pytest.mark.parametrize("spec, verb", ALL)
def test_no_secret_value_can_appear(spec, verb):
    """The builder takes no secret value at all; every Secret the pod reads is a reference."""
    import inspect

    params = set(inspect.signature(J.job_manifest).parameters)
    assert not params & {"url", "password", "database_url", "secret"}
    job = build(spec, verb)
    text = json.dumps(job)
    assert PASSWORD not in text and "password=" not in text.lower() and ":***@" not in text

    def walk(o, path=""):
        if isinstance(o, dict):
            if "secretKeyRef" in o or "secretRef" in o:
                ref = o.get("secretKeyRef") or o.get("secretRef")
                assert set(ref) <= {"name", "key", "optional"}
            for k, v in o.items():
                walk(v, f"{path}.{k}")
        elif isinstance(o, list):
            for v in o:
                walk(v, path)
    walk(job)
    for e in ctr(job)["env"]:
        if e["name"] in ("DBREV_DATABASE_URL", "DBREV_DATABASE_PASSWORD") and "value" in e:
            assert make_url(e["value"]).password is None


def test_configmap_scripts_mounted_read_only_in_dbrevs_image():
    job = build(cm_spec())
    c = ctr(job)
    assert c["image"] == "ghcr.io/dbrev/dbrev:dev" and c["command"] == ["dbrev"]
    assert {"name": "scripts", "mountPath": "/dbrev/migrations", "readOnly": True} in c["volumeMounts"]
    (vol,) = [v for v in pod(job)["volumes"] if v["name"] == "scripts"]
    assert vol["projected"]["defaultMode"] == 0o444
    assert vol["projected"]["sources"] == [
        {"configMap": {"name": "orders-migrations", "items": [{"key": "a1_create.py", "path": "a1_create.py"},
                                                              {"key": "b2_add.py", "path": "b2_add.py"}]}},
        {"configMap": {"name": "orders-more", "items": [{"key": "c3_more.py", "path": "c3_more.py"}]}}]
    assert c["args"][c["args"].index("--migrations") + 1] == "/dbrev/migrations"


def test_a_configmap_env_py_makes_a_script_location_as_the_operator_does():
    s = parse_spec(cm_spec())
    job = J.job_manifest(OWNER, s, J.PLAN, SETTINGS, configmap_files={
        "orders-migrations": ["env.py", "a1_create.py"], "orders-more": ["c3_more.py"]})
    (vol,) = [v for v in pod(job)["volumes"] if v["name"] == "scripts"]
    paths = [i["path"] for src in vol["projected"]["sources"] for i in src["configMap"]["items"]]
    assert paths == ["versions/a1_create.py", "env.py", "versions/c3_more.py"]


@pytest.mark.parametrize("files, message", [
    ({"orders-migrations": ["a.py"]}, "file names of ConfigMap\\(s\\) orders-more are not given"),
    ({"orders-migrations": ["a.py"], "orders-more": ["a.py"]}, "a.py appear in more than one ConfigMap"),
    ({"orders-migrations": ["../a.py"], "orders-more": []}, "invalid script name"),
])
def test_bad_configmap_layouts_are_refused(files, message):
    with pytest.raises(J.JobSpecError, match=message):
        J.job_manifest(OWNER, parse_spec(cm_spec()), J.PLAN, SETTINGS, configmap_files=files)


def test_the_app_image_with_its_path_and_pod_settings():
    job = build(image_spec(
        imagePullPolicy="Always", imagePullSecrets=[{"name": "regcred"}],
        env=[{"name": "APP_ENV", "value": "prod"},
             {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}}],
        envFrom=[{"configMapRef": {"name": "app-config"}}],
        resources={"limits": {"memory": "1Gi"}, "requests": {"cpu": "250m"}},
        nodeSelector={"pool": "batch"}, tolerations=[{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}]))
    c, p = ctr(job), pod(job)
    assert c["image"] == "registry.example.com/orders-api:1.4.2" and c["imagePullPolicy"] == "Always"
    assert c["args"][c["args"].index("--migrations") + 1] == "/app/migrations"
    assert not any(v["name"] == "scripts" for v in p["volumes"])
    names = [e["name"] for e in c["env"]]
    assert names[:2] == ["APP_ENV", "API_KEY"] and names[-2:] == ["DBREV_DATABASE_URL", "DBREV_DATABASE_PASSWORD"]
    assert c["envFrom"] == [{"configMapRef": {"name": "app-config", "optional": False}}]
    assert c["resources"] == {"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}}
    assert p["imagePullSecrets"] == [{"name": "regcred"}] and p["nodeSelector"] == {"pool": "batch"}
    assert p["tolerations"] == [{"operator": "Exists", "key": "batch", "effect": "NoSchedule"}]


def test_plan_and_apply_command_lines():
    plan = ctr(build(cm_spec(), J.PLAN))["args"]
    assert plan[:3] == ["plan", "--revision", "head"] and "--json" in plan and "--plan-hash" not in plan
    spec = cm_spec(policy={"downgrade": "RequireApproval", "dataLoss": "Archive", "rollbackOnFailure": False,
                           "repairSequences": True, "verify": ["constraints", "indexes"], "timeoutSeconds": 900,
                           "rehearse": "Require"},
                   migrations={"configMapRefs": [{"name": "orders-migrations"}, {"name": "orders-more"}],
                               "versionTable": "orders_version", "versionTableSchema": "app"})
    apply = ctr(build(spec, J.APPLY))["args"]
    assert apply[:3] == ["apply", "--revision", "head"]
    for flag, value in (("--timeout", "900"), ("--verify", "constraints,indexes"), ("--rehearse", "require"),
                        ("--version-table", "orders_version"), ("--version-table-schema", "app"),
                        ("--lock-timeout", "10"), ("--connect-timeout", "60"), ("--plan-hash", HASH),
                        ("--downgrade", "RequireApproval"), ("--data-loss", "Archive")):
        assert apply[apply.index(flag) + 1] == value
    assert {"--no-rollback-on-failure", "--repair-sequences"} <= set(apply)
    # the policy goes as spec.policy says it, never widened: approvals are checked in the pod against the hash
    assert not {"--allow-downgrade", "--allow-data-loss", "--archive", "--approve"} & set(apply)
    deny = ctr(build(cm_spec(policy={"downgrade": "Deny", "dataLoss": "Deny"}), J.APPLY))["args"]
    assert deny[deny.index("--downgrade") + 1] == "Deny" and deny[deny.index("--data-loss") + 1] == "Deny"


def _request(spec, **kw):
    base = J.request_of(parse_spec(spec))
    return dataclasses.replace(base, **kw)


@pytest.mark.parametrize("req", [
    pytest.param(_request(cm_spec()), id="defaults"),
    pytest.param(_request(cm_spec(policy={"downgrade": "RequireApproval", "dataLoss": "RequireApproval",
                                          "rollbackOnFailure": False, "repairSequences": True, "rehearse": "Never",
                                          "verify": ["orphans"]}),
                          approval="sha256:" + "ef" * 32, expected_hash="sha256:" + "ef" * 32,
                          actor="operator:shop/orders", exact_counts=True, use_env_py=False), id="everything"),
    pytest.param(_request(cm_spec(), target="base", use_env_py=True,
                          db=dataclasses.replace(J.request_of(parse_spec(cm_spec())).db, state_schema="ops",
                                                 version_table_schema="app")), id="downgrade-to-base"),
])
def test_the_cli_parses_the_jobs_arguments_back_into_the_operators_request(req, monkeypatch):
    """One request, two transports: what the in-process worker gets is what the Job's `dbrev apply` builds."""
    from dbrev.cli import apply_request, build_parser

    monkeypatch.setenv("DBREV_DATABASE_URL", "postgresql://u@db/app")
    args = build_parser().parse_args(J.request_args(req, 900, "/dbrev/migrations"))
    back = apply_request(args)
    assert back.db == dataclasses.replace(req.db, url="postgresql://u@db/app")
    assert dataclasses.replace(back, db=req.db, migrations="") == req


def test_a_request_a_job_cannot_carry_is_refused():
    req = J.request_of(parse_spec(cm_spec()))
    with pytest.raises(J.JobSpecError, match="pythonpath"):
        J.request_args(dataclasses.replace(req, pythonpath=("/x",)), 60, "/m")
    with pytest.raises(J.JobSpecError, match="stores"):
        J.request_args(dataclasses.replace(req, use_stored_scripts=False), 60, "/m")


def test_every_flag_the_job_passes_exists_in_the_cli():
    from dbrev.cli import build_parser

    parser = build_parser()
    for spec, verb in [(cm_spec(), J.PLAN), (image_spec(), J.APPLY)]:
        args = ctr(build(spec, verb))["args"]
        ns = parser.parse_args(args)
        assert ns.command == verb and ns.json and ns.result_file == "/dev/termination-log"


def test_names_are_deterministic_and_fit_a_label():
    a, b = build(cm_spec()), build(cm_spec())
    assert a == b  # the same run is the same Job: created twice, it is AlreadyExists, not a second run
    other = J.job_manifest(OWNER, parse_spec(cm_spec()), J.APPLY, SETTINGS, "sha256:" + "cd" * 32,
                           configmap_files=FILES)
    assert other["metadata"]["name"] != a["metadata"]["name"]
    long = J.Owner("x" * 253, "shop", OWNER.uid)
    job = J.job_manifest(long, parse_spec(cm_spec()), J.PLAN, SETTINGS, configmap_files=FILES)
    assert len(job["metadata"]["name"]) <= 63
    assert len(job["metadata"]["labels"]["dbrev.io/name"]) <= 63


def test_configmap_scripts_are_pinned_to_what_the_operator_read():
    """The pod checks its ConfigMap volume against the operator's hash (``--scripts-sha256``, parsed by the CLI's own
    parser); another content is another Job; an application image's scripts are the image's, nothing to pin."""
    from dbrev.cli import build_parser

    pinned = build(cm_spec(), scripts_sha256="ef" * 32)
    args = ctr(pinned)["args"]
    assert args[args.index("--scripts-sha256") + 1] == "ef" * 32
    assert build_parser().parse_args(args).scripts_sha256 == "ef" * 32
    assert build(cm_spec(), scripts_sha256="01" * 32)["metadata"]["name"] != pinned["metadata"]["name"]
    assert "--scripts-sha256" not in ctr(build(cm_spec()))["args"]
    assert "--scripts-sha256" not in ctr(build(image_spec(), scripts_sha256="ef" * 32))["args"]


@pytest.mark.cluster
def test_the_api_server_accepts_the_manifests(control_plane, namespace):
    docs = [J.service_account_manifest(namespace)]
    for spec, verb in [(cm_spec(), J.PLAN), (cm_spec(), J.APPLY), (image_spec(), J.APPLY)]:
        s = parse_spec(spec)
        job = J.job_manifest(J.Owner("orders", namespace, OWNER.uid), s, verb, SETTINGS,
                             HASH if verb == J.APPLY else None, configmap_files=FILES)
        docs.append(job)
    for d in docs:
        p = control_plane.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", check=False,
                                  input=json.dumps(d))
        assert p.returncode == 0, p.stderr
        if d["kind"] == "Job":  # what the server defaulted and kept: the security settings are intact
            served = json.loads(p.stdout)["spec"]["template"]["spec"]
            assert served["automountServiceAccountToken"] is False
            assert served["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
