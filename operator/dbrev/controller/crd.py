"""The DatabaseRevision CRD: the one source of truth for its schema.

``python -m dbrev.controller.crd`` writes ``crds/dbrev.io_databaserevisions.yaml``;
``tests/core/test_crd.py`` fails when that file drifts from this module.
Every field has a description (``kubectl explain`` reads them), status has
its own subresource, validation is CEL with messages that say what to do.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..core.durations import DURATION_PATTERN
from ..core.options import (ALL_CHECKS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOCK_TIMEOUT, DEFAULT_RUN_TIMEOUT,
                      DEFAULT_STATEMENT_TIMEOUT)

GROUP = "dbrev.io"
VERSION = "v1alpha1"
KIND = "DatabaseRevision"
PLURAL = "databaserevisions"
SINGULAR = "databaserevision"
SHORT_NAMES = ["dbrev"]
CATEGORIES = ["dbrev"]
CRD_NAME = f"{PLURAL}.{GROUP}"
API_VERSION = f"{GROUP}/{VERSION}"

APPROVE_ANNOTATION = f"{GROUP}/approve"
RECONCILE_ANNOTATION = f"{GROUP}/reconcile-requested-at"

REVISION_PATTERN = r"^(head|heads|base|[A-Za-z0-9_]{1,32}(@head)?)$"


def _s(desc: str, **kw) -> dict:
    return {"type": "string", "description": desc, **kw}


def _i(desc: str, **kw) -> dict:
    return {"type": "integer", "description": desc, **kw}


def _b(desc: str, **kw) -> dict:
    return {"type": "boolean", "description": desc, **kw}


def _o(desc: str, props: dict, required: list[str] | None = None, **kw) -> dict:
    d = {"type": "object", "description": desc, "properties": props, **kw}
    if required:
        d["required"] = required
    return d


def _a(desc: str, items: dict, **kw) -> dict:
    return {"type": "array", "description": desc, "items": items, **kw}


def _secret_key_ref(desc: str, default_key: str) -> dict:
    return _o(desc, {
        "name": _s("Name of a Secret in the same namespace as the DatabaseRevision.", minLength=1, maxLength=253),
        "key": _s(f"Key inside the Secret (default {default_key}).", default=default_key, minLength=1,
                  maxLength=253),
    }, required=["name"])


#: environment variables a migration pod sets itself (the database URL, the scripts): never from spec
RESERVED_ENV_PREFIX = "DBREV_"
IMAGE_PATH_PATTERN = r"^/[^\\x00]*$"


def _local_ref(desc: str) -> dict:
    return _o(desc, {"name": _s("Its name, in the same namespace.", minLength=1, maxLength=253)}, required=["name"])


def _key_ref(desc: str, what: str) -> dict:
    return _o(desc, {
        "name": _s(f"Name of a {what} in the same namespace.", minLength=1, maxLength=253),
        "key": _s(f"Key inside the {what}.", minLength=1, maxLength=253),
        "optional": _b(f"Start the pod even when the {what} or its key is missing.", default=False),
    }, required=["name", "key"])


def _quantities(desc: str) -> dict:
    return {"type": "object", "description": desc, "maxProperties": 16,
            "additionalProperties": {"description": "A quantity, e.g. 500m, 256Mi.", "x-kubernetes-int-or-string": True,
                                     "anyOf": [{"type": "integer"}, {"type": "string"}]}}


def image_source_schema() -> dict:
    """``spec.migrations.image``: the scripts live in an application's image (run there, in a Job)."""
    env_var = _o("An environment variable (as in a container spec).", {
        "name": _s(f"Its name (not starting with {RESERVED_ENV_PREFIX}: dbrev sets those).", minLength=1,
                   maxLength=253, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"),
        "value": _s("A literal value.", maxLength=32768),
        "valueFrom": _o("Where the value comes from (exactly one).", {
            "secretKeyRef": _key_ref("A key of a Secret.", "Secret"),
            "configMapKeyRef": _key_ref("A key of a ConfigMap.", "ConfigMap"),
            "fieldRef": _o("A field of the pod.", {"fieldPath": _s("e.g. metadata.namespace.", minLength=1,
                                                                   maxLength=253)}, required=["fieldPath"]),
        }, **{"x-kubernetes-validations": [{
            "rule": "[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef)]"
                    ".filter(x, x).size() == 1",
            "message": "env[].valueFrom: give exactly one of secretKeyRef, configMapKeyRef or fieldRef"}]}),
    }, required=["name"], **{"x-kubernetes-validations": [{
        "rule": "!(has(self.value) && has(self.valueFrom))",
        "message": "env[]: give value or valueFrom, not both"}, {
        "rule": f"!self.name.startsWith('{RESERVED_ENV_PREFIX}')",
        "message": f"env[]: names starting with {RESERVED_ENV_PREFIX} are dbrev's own (the database URL, the "
                   "scripts' path); the migration pod sets them"}]})
    env_from = _o("All the keys of a ConfigMap or a Secret as environment variables (as in a container spec).", {
        "configMapRef": _o("A ConfigMap.", {"name": _s("Its name.", minLength=1, maxLength=253),
                                            "optional": _b("Start the pod even when it is missing.", default=False)},
                           required=["name"]),
        "secretRef": _o("A Secret.", {"name": _s("Its name.", minLength=1, maxLength=253),
                                      "optional": _b("Start the pod even when it is missing.", default=False)},
                        required=["name"]),
        "prefix": _s("Put this before every key's name.", maxLength=253),
    }, **{"x-kubernetes-validations": [{
        "rule": "has(self.configMapRef) != has(self.secretRef)",
        "message": "envFrom[]: give exactly one of configMapRef or secretRef"}]})
    toleration = _o("A toleration (as in a pod spec).", {
        "key": _s("The taint key (empty with operator Exists: every taint).", maxLength=317),
        "operator": _s("Equal or Exists.", enum=["Equal", "Exists"], default="Equal"),
        "value": _s("The taint value (operator Equal).", maxLength=63),
        "effect": _s("NoSchedule, PreferNoSchedule or NoExecute (empty: all).",
                     enum=["", "NoSchedule", "PreferNoSchedule", "NoExecute"]),
        "tolerationSeconds": _i("NoExecute: stay this long after the taint appears.", minimum=0),
    })
    return _o(
        "Run the migrations from an application's image instead of ConfigMaps: plan and apply run in a Job of "
        "that image (its packages, models and env.py), with dbrev installed in it (pip install dbrev). Give "
        "exactly one of configMapRefs or image. A GitOps revert changes the tag; the downgrade then uses the "
        "copies of the scripts the database keeps.",
        {
            "name": _s("The image reference, e.g. registry.example.com/orders-api:1.4.2 (a digest pins it).",
                       minLength=1, maxLength=1024),
            "path": _s("Where the migrations are in the image: an Alembic script location (a folder with env.py "
                       "and versions/, run through its env.py) or a bare folder of version scripts.",
                       minLength=2, maxLength=4096, pattern=IMAGE_PATH_PATTERN),
            "imagePullPolicy": _s("As in a container spec (default: Kubernetes', from the tag).",
                                  enum=["Always", "IfNotPresent", "Never"]),
            "imagePullSecrets": _a("Secrets in the same namespace to pull the image with.",
                                   _local_ref("A Secret reference."), maxItems=16),
            "env": _a("Extra environment variables of the migration container (what the app's env.py reads).",
                      env_var, maxItems=128),
            "envFrom": _a("Extra environment variables from ConfigMaps or Secrets.", env_from, maxItems=32),
            "resources": _o("CPU and memory of the migration container (as in a container spec).", {
                "limits": _quantities("At most this much."),
                "requests": _quantities("Scheduled with this much."),
            }),
            "nodeSelector": {"type": "object", "description": "Run the migration pod on nodes with these labels.",
                             "additionalProperties": {"type": "string", "description": "A label value."},
                             "maxProperties": 32},
            "tolerations": _a("Taints the migration pod tolerates.", toleration, maxItems=32),
        },
        required=["name", "path"],
    )


def spec_schema() -> dict:
    database = _o(
        "How to reach the database. Give exactly one of urlSecretRef or credentials.",
        {
            "urlSecretRef": _secret_key_ref(
                "A Secret key holding the whole SQLAlchemy URL, e.g. "
                "postgresql+psycopg://user:password@host:5432/dbname (CloudNativePG's <cluster>-app Secret: "
                "key uri).", "url"),
            "credentials": _o(
                "The URL built from parts; only the password comes from a Secret.",
                {
                    "host": _s("Database host name.", minLength=1, maxLength=253),
                    "port": _i("Database port.", default=5432, minimum=1, maximum=65535),
                    "database": _s("Database name.", minLength=1, maxLength=63),
                    "user": _s("User name.", minLength=1, maxLength=63),
                    "passwordSecretRef": _secret_key_ref("The Secret key holding the password.", "password"),
                    "sslMode": _s("libpq sslmode.", enum=["disable", "allow", "prefer", "require", "verify-ca",
                                                         "verify-full"]),
                },
                required=["host", "database", "user", "passwordSecretRef"],
            ),
            "connectTimeoutSeconds": _i("Give up connecting after this many seconds, retrying with backoff "
                                        "(cold starts).", default=int(DEFAULT_CONNECT_TIMEOUT), minimum=1, maximum=600),
            "lockTimeoutSeconds": _i("Wait this long for the migration lock and for table locks; when it passes "
                                     "the run stops cleanly and is retried later.", default=int(DEFAULT_LOCK_TIMEOUT), minimum=1,
                                     maximum=3600),
            "statementTimeoutSeconds": _i("Cancel any statement running longer than this; 0 means no limit.",
                                          default=int(DEFAULT_STATEMENT_TIMEOUT), minimum=0, maximum=86400),
        },
        **{"x-kubernetes-validations": [{
            "rule": "has(self.urlSecretRef) != has(self.credentials)",
            "message": "give exactly one of database.urlSecretRef or database.credentials",
        }]},
    )
    migrations = _o(
        "Where the Alembic version scripts come from: ConfigMaps (configMapRefs) or an application image (image); "
        "give exactly one.",
        {
            "configMapRefs": _a(
                "ConfigMaps in the same namespace holding the version scripts, one key per file (e.g. "
                "a1b2c3d4e5f6_create_orders.py). Split long histories over several ConfigMaps (each is limited to "
                "1 MiB); a file name must not appear in two of them.",
                _o("A ConfigMap reference.", {"name": _s("ConfigMap name.", minLength=1, maxLength=253)},
                   required=["name"]),
                minItems=1, maxItems=32),
            "image": image_source_schema(),
            "versionTable": _s("Name of Alembic's version table.", default="alembic_version", minLength=1,
                               maxLength=63),
            "versionTableSchema": _s("Schema of the version table (default: the search_path's first schema, "
                                     "normally public).", minLength=1, maxLength=63),
        },
        **{"x-kubernetes-validations": [{
            "rule": "has(self.configMapRefs) != has(self.image)",
            "message": "give exactly one of migrations.configMapRefs or migrations.image",
        }, {
            "rule": "self.versionTable == oldSelf.versionTable && has(self.versionTableSchema) == "
                    "has(oldSelf.versionTableSchema) && (!has(self.versionTableSchema) || "
                    "self.versionTableSchema == oldSelf.versionTableSchema)",
            "message": "migrations.versionTable and versionTableSchema cannot change: they name the history this "
                       "resource manages; create another DatabaseRevision instead",
        }]},
    )
    policy = _o(
        "What dbrev may do without a human (every field has a default).",
        {
            "downgrade": _s("Allow: downgrade when spec.revision is older than the database. Deny: refuse "
                            "(Stalled, DowngradeDenied). RequireApproval: wait until the plan is approved with "
                            "the annotation dbrev.io/approve=<plan hash>.", enum=["Allow", "Deny", "RequireApproval"],
                            default="Allow"),
            "dataLoss": _s("For steps that drop tables or columns, truncate, delete rows or change a column's "
                           "type. Deny: refuse (Stalled, DataLossDenied). Archive: copy what would be removed into "
                           "the dbrev_archive schema first, in the same transaction. Allow: run them. "
                           "RequireApproval: wait for dbrev.io/approve=<plan hash>.",
                           enum=["Deny", "Archive", "Allow", "RequireApproval"], default="Deny"),
            "rollbackOnFailure": _b("When a step or a verification check fails, return the database to the "
                                    "revision the run started from.", default=True),
            "repairSequences": _b("When the run leaves a sequence behind its column (a seed row inserted with "
                                  "an explicit id), move it past the column's maximum with setval in the same "
                                  "transaction (logged) instead of failing the run.", default=False),
            "verify": _a("Integrity checks after every change and on the drift timer.",
                         {"type": "string", "enum": list(ALL_CHECKS), "description": "A check name."},
                         default=list(ALL_CHECKS),
                         **{"x-kubernetes-list-type": "set"}),
            "rehearse": _s("Single-transaction runs: before committing, rehearse the downgrade back to the starting "
                           "revision inside the same transaction (savepoint, then rolled back) and record the way "
                           "back's readiness (Proven, Lossy, Broken, Irreversible, Unproven). Never: skip it. "
                           "Report: record it, change nothing. Require: refuse to commit an upgrade whose way back "
                           "is Broken or Irreversible (the upgrade rolls back).",
                           enum=["Never", "Report", "Require"], default="Report"),
            "timeoutSeconds": _i("Kill a run that takes longer than this; PostgreSQL rolls back what it had not "
                                 "committed and dbrev returns the database to the starting revision.",
                                 default=int(DEFAULT_RUN_TIMEOUT), minimum=10, maximum=86400),
        },
        default={},
    )
    return _o(
        "The revision the database should be at, and how to get it there safely.",
        {
            "revision": _s("Target Alembic revision: a full id or unique prefix, head, heads, base, a branch label "
                           "or label@head. A GitOps revert of this field is a rollback.", minLength=1, maxLength=64,
                           **{"x-kubernetes-validations": [{
                               "rule": f"self.matches('{REVISION_PATTERN}')",
                               "message": "spec.revision must be a revision id or unique prefix (letters, digits, "
                                          "_; at most 32), head, heads, base, a branch label or label@head",
                           }]}),
            "database": database,
            "migrations": migrations,
            "policy": policy,
            "suspend": _b("Stop reconciling (no plan, no change) until set back to false.", default=False),
            "driftCheckInterval": _s("How often to re-verify the database and compare its schema with the "
                                     "fingerprint recorded at its revision (e.g. 10m, 1h).", default="10m",
                                     pattern=DURATION_PATTERN),
            # healthgate (issue 13 §1)
            "healthGate": _o(
                "After dbrev changes the schema, watch the rollout of the workloads that use this database: "
                "healthy when each one's new generation is observed and all its updated replicas are available; "
                "failed when a rollout reports ProgressDeadlineExceeded, a pod of the new revision cannot run "
                "(CrashLoopBackOff, image pull, container config), or the window passes unhealthy. While it "
                "watches: Ready=Unknown, Reconciling=True (AwaitingWorkloads).",
                {
                    "workloads": _a("The workloads, in this namespace.", _o("A workload.", {
                        "kind": _s("Deployment or StatefulSet.", enum=["Deployment", "StatefulSet"]),
                        "name": _s("Its name.", minLength=1, maxLength=253),
                    }, required=["kind", "name"]), minItems=1, maxItems=16),
                    "window": _s("How long the rollout may take to become healthy (e.g. 10m).", default="10m",
                                 pattern=DURATION_PATTERN),
                    "onFailure": _s("Report: Stalled, reason WorkloadUnhealthy naming the workload and what it "
                                    "reported, a Warning Event and dbrev_health_gate_total{result=\"failed\"}. "
                                    "Rollback: application first, then schema: every named workload goes back to "
                                    "its previous revision (as kubectl rollout undo), and once they are available "
                                    "the schema goes back to the revision before the run, under spec.policy "
                                    "(dataLoss, approvals; downgrade must not be Deny); then Stalled "
                                    "(RolledBackAfterHealthCheck, or WorkloadRollbackFailed / "
                                    "SchemaRollbackBlocked saying what stayed) until the spec changes. With a "
                                    "GitOps tool that self-heals the workloads (Argo CD selfHeal), use Report.",
                                    default="Report", enum=["Report", "Rollback"]),
                },
                required=["workloads"],
            ),
        },
        required=["revision", "database", "migrations"],
    )


def status_schema() -> dict:
    condition = _o("A condition (Kubernetes API conventions).", {
        "type": _s("Ready, Reconciling or Stalled; or the detail condition DatabaseReachable (whether dbrev "
                   "can reach the database now; added with the first outage it sees).", maxLength=316),
        "status": _s("True, False or Unknown.", enum=["True", "False", "Unknown"]),
        "reason": _s("CamelCase cause, e.g. AtRevision, Progressing, DowngradeDenied, RolledBack.",
                     maxLength=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"),
        "message": _s("What happened and, when a human must act, what to do.", maxLength=32768),
        "lastTransitionTime": _s("When status last changed.", format="date-time"),
        "observedGeneration": _i("The generation this condition describes.", format="int64", minimum=0),
    }, required=["type", "status", "lastTransitionTime", "reason", "message"])
    step = _o("One step of a plan.", {
        "revision": _s("Revision id."),
        "direction": _s("upgrade or downgrade."),
        "doc": _s("First line of the script's docstring."),
        "destructive": _b("Drops, truncates, deletes or retypes data."),
        "needsAutocommit": _b("Cannot run inside a transaction (e.g. CREATE INDEX CONCURRENTLY)."),
        "heavyLocks": _b("Holds a table lock beyond an instant."),
        "renderable": _b("Its SQL could be rendered offline."),
        "fromDatabase": _b("Its script came from the copy dbrev keeps in the database."),
    })
    finding = _o("An integrity finding.", {
        "check": _s("The check that found it."),
        "object": _s("The table, index, constraint or sequence."),
        "count": _i("How many rows or objects.", format="int64"),
        "severity": _s("error or warning."),
        "message": _s("What is wrong and what to do."),
    })
    return _o("What dbrev observed and did.", {
        "observedGeneration": _i("The spec generation the status describes.", format="int64", minimum=0),
        "currentRevision": _s("The revision(s) in the version table, comma-separated; base when empty."),
        "targetRevision": _s("spec.revision resolved to full id(s)."),
        "plan": _o("The plan for the current spec and database.", {
            "hash": _s("sha256 over the scripts, the range and the SQL. Approve with "
                       "kubectl annotate dbrev NAME dbrev.io/approve=<hash>."),
            "direction": _s("none, upgrade, downgrade or mixed."),
            "transaction": _s("single, per-step or none."),
            "from": _s("Starting revision(s)."),
            "to": _s("Target revision(s)."),
            "destructive": _a("Revisions whose step loses data.", {"type": "string", "description": "A revision id."}),
            "steps": _a("The steps in order.", step, maxItems=500),
            "warnings": _a("Things to know before it runs.", {"type": "string", "description": "A warning."},
                           maxItems=50),
            "computedAt": _s("When it was computed.", format="date-time"),
            "recordedReadiness": _a(
                "A plan that undoes upgrades (a GitOps revert): the readiness of their way back, as rehearsed "
                "when they were applied (newest first).", _o("The readiness one applied run recorded.", {
                    "status": _s("Proven, Lossy, Broken, Irreversible or Unproven."),
                    "message": _s("What the rehearsal found."),
                    "from": _s("Where the way back starts (the revision the upgrade reached)."),
                    "to": _s("Where it returns to."),
                    "step": _s("The revision whose downgrade is Broken or Irreversible."),
                    "location": _s("file:line of that downgrade."),
                    "recordedAt": _s("When the upgrade ran and rehearsed it."),
                }), maxItems=20),
        }),
        "conditions": _a("Ready, Reconciling and Stalled (and DatabaseReachable once an outage was seen).",
                         condition, maxItems=8,
                         **{"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
        "integrity": _o("The last verification.", {
            "checkedAt": _s("When.", format="date-time"),
            "passed": _b("No error findings."),
            "fingerprint": _s("Hash of the live schema."),
            "findings": _a("What the checks found (at most 20).", finding, maxItems=20),
        }),
        "rollbackReadiness": _o("The way back of the last applied run, rehearsed before it committed "
                                "(policy.rehearse).", {
            "status": _s("Proven, Lossy, Broken, Irreversible or Unproven.",
                         enum=["Proven", "Lossy", "Broken", "Irreversible", "Unproven"]),
            "message": _s("What the rehearsal found (losses, schema differences, the reason it was not run)."),
            "revision": _s("The revision the run reached (where the way back starts)."),
            "from": _s("The revision the way back returns to."),
            "step": _s("The revision whose downgrade is Broken or Irreversible."),
            "location": _s("file:line of that downgrade."),
            "time": _s("When.", format="date-time"),
        }),
        "healthGate": _o("The health gate of the last schema change (spec.healthGate).", {
            "phase": _s("Watching, Passed, Failed, or Superseded (a later run or spec change replaced it); with "
                        "onFailure Rollback: RollingBack, AwaitingApproval (the schema downgrade), RolledBack, "
                        "RollbackIncomplete."),
            "generation": _i("The generation whose run started it."),
            "fromRevision": _s("The revision before the run."),
            "toRevision": _s("The revision the run reached."),
            "startedAt": _s("When the watch began.", format="date-time"),
            "finishedAt": _s("When it passed or failed.", format="date-time"),
            "windowSeconds": {"type": "number", "description": "The window."},
            "workload": _s("The workload that failed it (Kind/name)."),
            "message": _s("What the workloads reported."),
            "deploymentId": _s("The deployment id of the run it watches."),
            "failure": _s("onFailure Rollback: why the gate failed."),
            "rollbackStartedAt": _s("onFailure Rollback: when the workloads were patched back.", format="date-time"),
            "rolledBack": _a("onFailure Rollback: each workload and the revision it went back to.",
                             _s("Kind/name to what it went back to.")),
            "schemaTarget": _s("onFailure Rollback: the revision the schema goes back to."),
        }),
        "lastError": _o("The last failure, cleared on success.", {
            "reason": _s("Condition reason."),
            "message": _s("What failed."),
            "step": _s("The revision whose step failed."),
            "location": _s("file:line in the script."),
            "time": _s("When.", format="date-time"),
        }),
        "history": _a("The last 10 runs, newest first.", _o("A run.", {
            "from": _s("Revision(s) before."),
            "to": _s("Target revision(s)."),
            "direction": _s("upgrade, downgrade or mixed."),
            "result": _s("applied, rolled_back, failed."),
            "trigger": _s("What started it: spec, configmap, secret, retry, drift, resume."),
            "planHash": _s("The plan that ran."),
            "startedAt": _s("When it started.", format="date-time"),
            "durationSeconds": {"type": "number", "description": "How long it took."},
            "deploymentId": _s("What deployed it: the dbrev.io/deployment-id annotation, else the Argo CD "
                               "tracking id or Flux Kustomization/HelmRelease, else the app.kubernetes.io/instance "
                               "label (absent when none is known)."),
        }), maxItems=10),
        "lastAppliedTime": _s("When the database last changed.", format="date-time"),
        "databaseKey": _s("Hash of the database server's identity (its system identifier, the database's oid) "
                          "and the version table (no secret), whatever host name the URL uses: two "
                          "DatabaseRevisions with the same key manage the same history, and the younger one is "
                          "Stalled (Conflict)."),
        "inputsHash": _s("Hash of the scripts and the Secret version this status describes; unchanged inputs and "
                         "an unchanged database make a pass free."),
        "lastCheckedTime": _s("When the database was last observed.", format="date-time"),
    })


def crd() -> dict:
    ready = '.status.conditions[?(@.type=="Ready")]'
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": CRD_NAME, "labels": {"app.kubernetes.io/name": "dbrev",
                                                  "app.kubernetes.io/part-of": "dbrev"}},
        "spec": {
            "group": GROUP,
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": SINGULAR,
                      "shortNames": SHORT_NAMES, "categories": CATEGORIES},
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Target", "type": "string", "jsonPath": ".spec.revision",
                     "description": "Declared revision"},
                    {"name": "Current", "type": "string", "jsonPath": ".status.currentRevision",
                     "description": "Revision in the database"},
                    {"name": "Ready", "type": "string", "jsonPath": f"{ready}.status"},
                    {"name": "Reason", "type": "string", "jsonPath": f"{ready}.reason"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    {"name": "Resolved", "type": "string", "jsonPath": ".status.targetRevision", "priority": 1},
                    {"name": "Direction", "type": "string", "jsonPath": ".status.plan.direction", "priority": 1},
                    {"name": "Plan", "type": "string", "jsonPath": ".status.plan.hash", "priority": 1},
                    {"name": "Rollback", "type": "string", "jsonPath": ".status.rollbackReadiness.status",
                     "priority": 1, "description": "Readiness of the rehearsed way back"},
                    {"name": "Message", "type": "string", "jsonPath": f"{ready}.message", "priority": 1},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "DatabaseRevision keeps one database at a declared Alembic revision: it plans, "
                                   "applies policy, migrates atomically, verifies integrity and rolls back on "
                                   "failure.",
                    "properties": {
                        "apiVersion": _s("APIVersion of this object."),
                        "kind": _s("Kind of this object."),
                        "metadata": {"type": "object"},
                        "spec": spec_schema(),
                        "status": status_schema(),
                    },
                    "required": ["spec"],
                }},
            }],
        },
    }


def crd_yaml() -> str:
    import yaml

    header = "# Generated by `python -m dbrev.controller.crd` from operator/dbrev/controller/crd.py. Do not edit.\n"
    return header + yaml.safe_dump(crd(), sort_keys=False, width=120)


CRD_FILE = Path("crds") / f"{GROUP}_{PLURAL}.yaml"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--stdout":
        sys.stdout.write(crd_yaml())
        return 0
    root = Path(argv[0]) if argv else Path.cwd()
    path = root / CRD_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(crd_yaml())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
