"""The migration Job: what runs one ``dbrev plan`` or ``dbrev apply`` in a Pod of its own (pure).

The operator decides, reports and watches; it never executes a migration script. Every plan and
every apply runs in a Kubernetes Job built here from plain data — the DatabaseRevision's identity,
its parsed :class:`~dbrev.controller.spec.Spec`, the verb, the plan hash and the operator's
:class:`Settings` — and nothing else: no Kubernetes client, no I/O, no secret *value* (the builder
never sees one; the database URL reaches the pod only through a ``secretKeyRef``).

What the pod can reach, and what it cannot:

* the database, with the URL from the DatabaseRevision's Secret (env ``DBREV_DATABASE_URL`` from a
  ``secretKeyRef``; with ``database.credentials``, the URL without its password plus
  ``DBREV_DATABASE_PASSWORD`` from a ``secretKeyRef``) — never on a command line, never in the Job;
* no Kubernetes credentials: ``automountServiceAccountToken: false`` and the ServiceAccount
  :data:`SERVICE_ACCOUNT`, which no Role binds (:func:`service_account_manifest`); no service links;
* no privileges: non-root (uid/gid :attr:`Settings.run_as_user`), read-only root filesystem with a
  writable ``emptyDir`` at ``/tmp``, every capability dropped, no privilege escalation, seccomp
  ``RuntimeDefault``;
* bounded: ``activeDeadlineSeconds`` from ``policy.timeoutSeconds`` (plus the time to connect and a
  margin, so the CLI's own ``--timeout`` stops the run cleanly first), ``backoffLimit: 0`` (a retry
  is the operator's decision, with a new plan), ``ttlSecondsAfterFinished``.

The scripts: ConfigMaps mounted read-only in dbrev's own image (:attr:`Settings.image`), laid out as
the operator's :func:`~dbrev.engine.scripts.materialize` lays them out (``env.py`` beside ``versions/``); or
the application's image (``spec.migrations.image``) with the migrations at its ``path``.

The result: the CLI writes its JSON document to ``/dev/termination-log`` (``--result-file``) as well
as stdout, so the operator reads it from the pod's status, with no access to the pod's log needed;
``terminationMessagePolicy: FallbackToLogsOnError`` gives the log's tail when dbrev never started
(no dbrev in the image, a crash).
"""

from __future__ import annotations

import hashlib
import signal
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..core import conditions as C
from .crd import GROUP, VERSION
from ..core.options import APPLICATION_NAME_ENV, DbOptions, RunRequest
from .spec import ImageSource, Spec

PLAN, APPLY = "plan", "apply"
VERBS = (PLAN, APPLY)

#: the ServiceAccount of every migration pod: no Role or ClusterRole binds it, and its token is never mounted
SERVICE_ACCOUNT = "dbrev-migrations"
MANAGED_BY = "app.kubernetes.io/managed-by"
NAME_LABEL = f"{GROUP}/name"
VERB_LABEL = f"{GROUP}/verb"
UID_LABEL = f"{GROUP}/resource-uid"
PLAN_HASH_ANNOTATION = f"{GROUP}/plan-hash"
CONTAINER = "dbrev"
RESULT_FILE = "/dev/termination-log"
SCRIPTS_MOUNT = "/dbrev/migrations"  # ConfigMap scripts, read-only
TMP = "/tmp"
URL_ENV, PASSWORD_ENV = "DBREV_DATABASE_URL", "DBREV_DATABASE_PASSWORD"


class JobSpecError(ValueError):
    """The inputs cannot make a Job (a bug in the caller, or a spec the operator should have refused)."""


@dataclass(frozen=True)
class Owner:
    """The DatabaseRevision a Job belongs to."""
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class Settings:
    """The operator's configuration of migration pods."""
    image: str  # dbrev's own image: the operator's, or one set in its configuration
    image_pull_policy: str = "IfNotPresent"
    run_as_user: int = 65532  # the uid/gid of dbrev's image (numeric, so runAsNonRoot can verify it)
    ttl_seconds: int = 3600  # the finished Job stays this long (the operator reads its result first)
    deadline_margin: int = 60  # seconds beyond timeout + connect timeout before Kubernetes kills the pod
    tmp_size: str = "256Mi"  # the writable emptyDir at /tmp
    log_level: str = "info"
    # dbrev's own image (ConfigMap scripts): what a run of the engine needs; an app image takes spec's
    requests: tuple[tuple[str, str], ...] = (("cpu", "100m"), ("memory", "128Mi"))
    limits: tuple[tuple[str, str], ...] = (("memory", "512Mi"),)
    termination_grace_seconds: int = 30
    extra_labels: tuple[tuple[str, str], ...] = field(default=())


def _h(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def label_value(text: str) -> str:
    """A valid label value (at most 63 characters): ``text``, or a prefix of it and a hash when longer."""
    return text if len(text) <= 63 else f"{text[:52].rstrip('-._')}-{_h(text)[:10]}"


def job_name(owner: Owner, verb: str, plan_hash: str | None, spec_key: str) -> str:
    """Deterministic (the same run is the same Job: creating it twice is AlreadyExists, never two runs) and
    at most 63 characters (pods inherit it in a label)."""
    suffix = f"-{verb}-{_h(owner.uid, verb, plan_hash or '', spec_key)[:10]}"
    return owner.name[:63 - len(suffix)].rstrip("-.") + suffix


def labels(owner: Owner, verb: str) -> dict[str, str]:
    """What ``kubectl get jobs -l app.kubernetes.io/managed-by=dbrev,dbrev.io/name=NAME`` finds."""
    return {MANAGED_BY: "dbrev", NAME_LABEL: label_value(owner.name), VERB_LABEL: verb, UID_LABEL: owner.uid}


def service_account_manifest(namespace: str) -> dict:
    """The migration pods' ServiceAccount in ``namespace``: no token mounted, no Role binds it."""
    return {"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": namespace,
                         "labels": {MANAGED_BY: "dbrev", "app.kubernetes.io/component": "migrations"}},
            "automountServiceAccountToken": False}


def _database_env(spec: Spec) -> list[dict]:
    if spec.url_secret is not None:
        return [{"name": URL_ENV, "valueFrom": {"secretKeyRef": {"name": spec.url_secret.name,
                                                                  "key": spec.url_secret.key}}}]
    cr = spec.credentials
    if cr is None:
        raise JobSpecError("the spec names no database (neither urlSecretRef nor credentials)")
    from sqlalchemy.engine import URL

    query = {"sslmode": cr.ssl_mode} if cr.ssl_mode else {}
    url = URL.create("postgresql+psycopg", username=cr.user, host=cr.host, port=cr.port, database=cr.database,
                     query=query).render_as_string(hide_password=False)
    return [{"name": URL_ENV, "value": url},  # no password in it: that one comes from the Secret
            {"name": PASSWORD_ENV, "valueFrom": {"secretKeyRef": {"name": cr.password.name,
                                                                   "key": cr.password.key}}}]


def _user_env(img: ImageSource) -> list[dict]:
    out = []
    for e in img.env:
        if e.secret is not None:
            out.append({"name": e.name, "valueFrom": {"secretKeyRef": {
                "name": e.secret.name, "key": e.secret.key, "optional": e.secret.optional}}})
        elif e.config_map is not None:
            out.append({"name": e.name, "valueFrom": {"configMapKeyRef": {
                "name": e.config_map.name, "key": e.config_map.key, "optional": e.config_map.optional}}})
        elif e.field_path is not None:
            out.append({"name": e.name, "valueFrom": {"fieldRef": {"fieldPath": e.field_path}}})
        else:
            out.append({"name": e.name, "value": e.value or ""})
    return out


def _user_env_from(img: ImageSource) -> list[dict]:
    out = []
    for e in img.env_from:
        ref = {"name": e.name, "optional": e.optional}
        d = {"configMapRef": ref} if e.kind == "configMap" else {"secretRef": ref}
        if e.prefix:
            d["prefix"] = e.prefix
        out.append(d)
    return out


def _tolerations(img: ImageSource) -> list[dict]:
    out = []
    for t in img.tolerations:
        d: dict = {"operator": t.operator}
        for k, v in (("key", t.key), ("value", t.value), ("effect", t.effect), ("tolerationSeconds", t.seconds)):
            if v is not None:
                d[k] = v
        out.append(d)
    return out


def _configmap_volume(files: Mapping[str, Sequence[str]], configmaps: Sequence[str]) -> dict:
    """One read-only folder of every ConfigMap's keys, laid out as :func:`dbrev.engine.scripts.materialize` does:
    with an ``env.py`` key, ``env.py`` beside ``versions/`` holding the other files (a script location)."""
    missing = [c for c in configmaps if c not in files]
    if missing:
        raise JobSpecError(f"the file names of ConfigMap(s) {', '.join(missing)} are not given")
    names = [n for c in configmaps for n in files[c]]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise JobSpecError(f"file(s) {', '.join(dup)} appear in more than one ConfigMap")
    bad = [n for n in names if "/" in n or n.startswith(".")]
    if bad:
        raise JobSpecError(f"invalid script name(s) {', '.join(bad)}")
    location = "env.py" in names
    sources = []
    for c in configmaps:
        items = [{"key": n, "path": n if (n == "env.py" or not location) else f"versions/{n}"}
                 for n in sorted(files[c])]
        sources.append({"configMap": {"name": c, "items": items}})
    return {"name": "scripts", "projected": {"sources": sources, "defaultMode": 0o444}}


def _common_args(db, migrations: str) -> list[str]:
    """``db``: the run's :class:`~dbrev.core.options.DbOptions` (its URL is never used: it reaches the pod from a Secret)."""
    args = ["--migrations", migrations, "--json", "--result-file", RESULT_FILE,
            "--connect-timeout", _num(db.connect_timeout), "--lock-timeout", _num(db.lock_timeout),
            "--statement-timeout", _num(db.statement_timeout), "--version-table", db.version_table]
    if db.version_table_schema:
        args += ["--version-table-schema", db.version_table_schema]
    if db.state_schema != "dbrev":
        args += ["--state-schema", db.state_schema]
    return args


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def request_of(spec: Spec, plan_hash: str | None = None, approval: str | None = None,
               actor: str = "operator") -> RunRequest:
    """The run the operator asks for from ``spec``, as :func:`dbrev.controller.handlers` builds it (no URL)."""
    db = DbOptions(url="", connect_timeout=spec.connect_timeout, lock_timeout=spec.lock_timeout,
                   statement_timeout=spec.statement_timeout, version_table=spec.version_table,
                   version_table_schema=spec.version_table_schema)
    return RunRequest(db=db, migrations="", target=spec.revision, policy=spec.policy, approval=approval,
                      expected_hash=plan_hash, actor=actor)


def request_args(req: RunRequest, timeout: float, migrations: str, log_level: str = "info") -> list[str]:
    """``dbrev apply``'s arguments for exactly ``req``: the same request the in-process worker would get (policy in
    spec.policy's words, the approval, the plan hash), with no secret (``tests/core/test_jobs.py`` parses them back
    with the CLI's own parser and compares the request)."""
    if req.pythonpath:
        raise JobSpecError("a migration Job has no --pythonpath: the image's own Python path applies")
    if not req.use_stored_scripts:
        raise JobSpecError("a migration Job always uses the scripts the database stores")
    pol = req.policy
    args = [APPLY, "--revision", req.target, *_common_args(req.db, migrations), "--timeout", _num(timeout),
            "--verify", ",".join(pol.verify), "--rehearse", pol.rehearse.lower(),
            "--downgrade", pol.downgrade, "--data-loss", pol.data_loss, "--actor", req.actor,
            "--log-level", log_level]
    if req.expected_hash:
        args += ["--plan-hash", req.expected_hash]
    if req.approval:
        args += ["--approve", req.approval]
    if not pol.rollback_on_failure:
        args.append("--no-rollback-on-failure")
    if pol.repair_sequences:
        args.append("--repair-sequences")
    if req.exact_counts:
        args.append("--exact-counts")
    if req.use_env_py is True:
        args.append("--env-py")
    elif req.use_env_py is False:
        args.append("--builtin-env")
    return args


def command_args(spec: Spec, verb: str, plan_hash: str | None, migrations: str, log_level: str = "info",
                 request: RunRequest | None = None) -> list[str]:
    """The CLI's arguments: the same verbs a person runs, the operator's decisions as flags, no secret.

    An apply runs ``request`` (the operator's, :func:`request_of` of the spec when not given)."""
    if verb == PLAN:
        return [PLAN, "--revision", spec.revision, *_common_args(request_of(spec).db, migrations),
                "--log-level", log_level]
    if verb != APPLY:
        raise JobSpecError(f"verb {verb!r} is not one of {', '.join(VERBS)}")
    req = request or request_of(spec, plan_hash)
    return request_args(req, spec.timeout, migrations, log_level)


def session_name(job: str) -> str:
    """The PostgreSQL application_name of a Job's sessions (unique per Job, within the 63 characters allowed)."""
    return f"dbrev-job-{_h(job)[:16]}"


def _spec_key(spec: Spec) -> str:
    return _h(repr(spec))[:16]


def job_manifest(owner: Owner, spec: Spec, verb: str, settings: Settings, plan_hash: str | None = None,
                 configmap_files: Mapping[str, Sequence[str]] | None = None, *, request: RunRequest | None = None,
                 run_key: str = "", scripts_sha256: str | None = None) -> dict:
    """The Job running ``dbrev <verb>`` for ``owner``.

    ``configmap_files``: for ConfigMap scripts, each ConfigMap's file names (the operator reads them;
    the Job mounts exactly those keys). Ignored for ``spec.migrations.image``. ``request``: the run an apply
    Job carries out (:func:`request_args`). ``run_key``: what tells this run's Job from an earlier one of the
    same request (the operator's pass), part of the name. ``scripts_sha256``: the hash of the ConfigMap scripts
    the operator read (``dbrev.engine.scripts.files_sha256``); the pod refuses to run others (``--scripts-sha256``: the
    kubelet's copy of a ConfigMap can lag an update)."""
    img = spec.image
    if img is None and not spec.configmaps:
        raise JobSpecError("the spec names no migrations (neither configMapRefs nor image)")
    volumes: list[dict] = [{"name": "tmp", "emptyDir": {"sizeLimit": settings.tmp_size}}]
    mounts: list[dict] = [{"name": "tmp", "mountPath": TMP}]
    if img is None:
        volumes.append(_configmap_volume(configmap_files or {}, spec.configmaps))
        mounts.append({"name": "scripts", "mountPath": SCRIPTS_MOUNT, "readOnly": True})
        migrations, image, pull_policy = SCRIPTS_MOUNT, settings.image, settings.image_pull_policy
        requests, limits = settings.requests, settings.limits
    else:
        migrations, image, pull_policy = img.path, img.name, img.pull_policy
        requests, limits = img.requests, img.limits
    args = command_args(spec, verb, plan_hash, migrations, settings.log_level, request)
    if img is None and scripts_sha256:
        args += ["--scripts-sha256", scripts_sha256]
    name = job_name(owner, verb, plan_hash, _spec_key(spec) + run_key + "\0".join(args))
    env = (_user_env(img) if img else []) + [
        {"name": "HOME", "value": TMP}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "DBREV_LOG_FORMAT", "value": "json"},
        {"name": APPLICATION_NAME_ENV, "value": session_name(name)},
        *_database_env(spec)]  # dbrev's own last: env wins over envFrom, and spec cannot name DBREV_*
    container: dict = {
        "name": CONTAINER, "image": image,
        "command": ["dbrev"], "args": args,
        "env": env, "volumeMounts": mounts, "workingDir": TMP,
        "terminationMessagePath": RESULT_FILE, "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"runAsNonRoot": True, "runAsUser": settings.run_as_user,
                            "runAsGroup": settings.run_as_user, "allowPrivilegeEscalation": False,
                            "privileged": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if pull_policy:
        container["imagePullPolicy"] = pull_policy
    if img and img.env_from:
        container["envFrom"] = _user_env_from(img)
    resources = {k: dict(v) for k, v in (("requests", requests), ("limits", limits)) if v}
    if resources:
        container["resources"] = resources
    pod_spec: dict = {
        "restartPolicy": "Never", "serviceAccountName": SERVICE_ACCOUNT, "automountServiceAccountToken": False,
        "enableServiceLinks": False, "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "securityContext": {"runAsNonRoot": True, "runAsUser": settings.run_as_user,
                            "runAsGroup": settings.run_as_user, "fsGroup": settings.run_as_user,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container], "volumes": volumes,
    }
    if img:
        if img.pull_secrets:
            pod_spec["imagePullSecrets"] = [{"name": s} for s in img.pull_secrets]
        if img.node_selector:
            pod_spec["nodeSelector"] = dict(img.node_selector)
        if img.tolerations:
            pod_spec["tolerations"] = _tolerations(img)
    lab = {**dict(settings.extra_labels), **labels(owner, verb)}
    annotations = {PLAN_HASH_ANNOTATION: plan_hash} if plan_hash else {}
    deadline = int(spec.timeout + spec.connect_timeout + settings.deadline_margin)
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {
            "name": name, "namespace": owner.namespace,
            "labels": lab, "annotations": annotations,
            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseRevision",
                                 "name": owner.name, "uid": owner.uid, "controller": True,
                                 "blockOwnerDeletion": False}],
        },
        "spec": {
            "backoffLimit": 0, "activeDeadlineSeconds": deadline, "ttlSecondsAfterFinished": settings.ttl_seconds,
            "template": {"metadata": {"labels": lab, "annotations": annotations}, "spec": pod_spec},
        },
    }


# ---------------------------------------------------------------------------
# Reading a Job: what its pod says, as a reason (pure; the operator's controller/jobrun watches)

RUNNING, FINISHED, FAILED = "running", "finished", "failed"
#: a container waiting for these will not start: its image cannot be had (ErrImagePull is the first try; Kubernetes
#: retries it as ImagePullBackOff, which is where dbrev stops waiting)
PULL_FAILURES = ("ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable")
#: the container runtime could not start the command
START_FAILURES = ("CreateContainerError", "RunContainerError", "StartError", "ContainerCannotRun")
_NOT_FOUND = ("executable file not found", "no such file or directory", "not found")


@dataclass(frozen=True)
class Observation:
    """Where a migration Job stands. ``phase``: running (wait), finished (``result_text`` holds the
    CLI's result document) or failed (``reason``, a :mod:`dbrev.core.conditions` reason, and ``message``).
    ``started``: dbrev's container has run (a failure after that may have changed the database)."""
    phase: str
    reason: str | None = None
    message: str = ""
    result_text: str | None = None
    exit_code: int | None = None
    started: bool = False
    pod: str | None = None
    tail: tuple[str, ...] = ()  # the log's last lines, when the pod ended without a result


def image_of(job: dict) -> str:
    """The image of a migration Job's container."""
    return (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers", [{}])[0] \
        .get("image", "")


def _cond(obj: dict, type_: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def _container(pod: dict) -> dict:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return cs
    return {}


def _no_dbrev(image: str, detail: str) -> str:
    return (f"the image {image} has no `dbrev` command ({detail.strip()[:300]}): the Job runs `dbrev apply` in "
            f"it; add `RUN pip install dbrev` to the image")


def observe(job: dict | None, pods: Sequence[dict], seen_pod: bool = False) -> Observation:
    """What ``job`` and its ``pods`` (``job-name`` label) say. ``seen_pod``: a pod of it was seen before, so one
    missing now was deleted."""
    if job is None:
        return Observation(FAILED, C.JOB_DELETED, "the migration Job was deleted while it ran", started=seen_pod)
    if (job.get("metadata") or {}).get("deletionTimestamp"):
        return Observation(FAILED, C.JOB_DELETED, "the migration Job is being deleted", started=seen_pod)
    image = image_of(job)
    pods = sorted(pods, key=lambda p: (p.get("metadata") or {}).get("creationTimestamp") or "")
    pod = pods[-1] if pods else None
    deadline = _cond(job, "Failed")
    if deadline and deadline.get("reason") == "DeadlineExceeded":
        cs = _container(pod) if pod else {}
        return Observation(FAILED, C.TIMED_OUT, "the migration Job passed its activeDeadlineSeconds and Kubernetes "
                                                "stopped its pod", started=bool(cs.get("state", {}).get("terminated")
                                                                                 or cs.get("lastState")) or seen_pod,
                           pod=(pod or {}).get("metadata", {}).get("name"))
    if pod is None:
        if seen_pod:
            return Observation(FAILED, C.JOB_DELETED, "the migration pod was deleted while it ran", started=True)
        if deadline:
            return Observation(FAILED, C.MIGRATION_POD_FAILED, f"the migration Job failed before its pod ran: "
                                                               f"{deadline.get('reason')}: {deadline.get('message')}")
        return Observation(RUNNING)
    name = pod["metadata"]["name"]
    st = pod.get("status") or {}
    cs = _container(pod)
    state = cs.get("state") or {}
    term = state.get("terminated")
    started = "terminated" in state or "running" in state or "terminated" in (cs.get("lastState") or {})
    if st.get("reason") == "Evicted" or (_cond(pod, "DisruptionTarget") and not (term and term.get("exitCode") == 0)):
        why = _cond(pod, "DisruptionTarget") or {}
        return Observation(FAILED, C.POD_EVICTED, f"the node evicted the migration pod {name}: "
                                                  f"{st.get('message') or why.get('message') or why.get('reason')}",
                           started=started, pod=name)
    if term is not None:
        code = term.get("exitCode")
        text = term.get("message") or ""
        reason = term.get("reason") or ""
        if text.lstrip().startswith("{"):
            return Observation(FINISHED, result_text=text, exit_code=code, started=True, pod=name)
        if (pod.get("metadata") or {}).get("deletionTimestamp") and reason != "OOMKilled":
            return Observation(FAILED, C.JOB_DELETED, f"the migration pod {name} was deleted while it ran (it ended "
                                                      f"with exit code {code}, without a result)", exit_code=code,
                               started=True, pod=name, tail=tuple(text.strip().splitlines()[-12:]))
        if reason == "OOMKilled":
            return Observation(FAILED, C.OUT_OF_MEMORY, f"the migration pod {name} was OOM-killed (exit code {code}): "
                                                        f"it used more than its memory limit", exit_code=code,
                               started=True, pod=name)
        if (reason in START_FAILURES or code in (126, 127)) and any(n in text.lower() for n in _NOT_FOUND):
            return Observation(FAILED, C.NO_DBREV_IN_IMAGE, _no_dbrev(image, text or reason), exit_code=code,
                               pod=name)
        if reason in START_FAILURES:
            return Observation(FAILED, C.MIGRATION_POD_FAILED, f"the migration pod {name} could not start its "
                                                               f"container ({reason}: {text.strip()[:500]})",
                               exit_code=code, pod=name)
        tail = tuple(ln for ln in text.strip().splitlines()[-12:] if ln.strip())
        if isinstance(code, int) and code > 128:
            try:
                why = f"killed by {signal.Signals(code - 128).name}"
            except ValueError:
                why = f"exit code {code}"
            hint = ("SIGKILL from outside dbrev: most often the kernel's OOM killer (check the pod's memory limit), "
                    "or something that killed the process" if code - 128 == signal.SIGKILL
                    else "a signal from outside dbrev stopped it")
        else:
            why, hint = f"exit code {code}", ("its last output lines are in the error details" if tail
                                              else "it printed nothing")
        return Observation(FAILED, C.MIGRATION_POD_FAILED,
                           f"the migration pod {name} died ({why}) without a result; {hint}; no migration reported "
                           f"a failure", exit_code=code, started=True, pod=name, tail=tail)
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return Observation(FAILED, C.JOB_DELETED, f"the migration pod {name} was deleted while it ran",
                           started=started, pod=name)
    waiting = state.get("waiting") or {}
    wreason, wmsg = waiting.get("reason") or "", waiting.get("message") or ""
    if wreason in PULL_FAILURES:
        return Observation(FAILED, C.IMAGE_PULL_FAILED, f"the image {image} cannot be pulled ({wreason}: "
                                                        f"{wmsg.strip()[:500]})", pod=name)
    if wreason in START_FAILURES:
        if any(n in wmsg.lower() for n in _NOT_FOUND):
            return Observation(FAILED, C.NO_DBREV_IN_IMAGE, _no_dbrev(image, wmsg), pod=name)
        return Observation(FAILED, C.MIGRATION_POD_FAILED, f"the migration pod {name} cannot start its container "
                                                           f"({wreason}: {wmsg.strip()[:500]})", pod=name)
    if wreason == "CreateContainerConfigError":
        return Observation(FAILED, C.MIGRATION_POD_FAILED, f"the migration pod {name} cannot be configured "
                                                           f"({wmsg.strip()[:500]})", pod=name)
    if st.get("phase") == "Failed":
        return Observation(FAILED, C.MIGRATION_POD_FAILED, f"the migration pod {name} failed: "
                                                           f"{st.get('reason')}: {st.get('message')}",
                           started=started, pod=name)
    return Observation(RUNNING, started=started, pod=name)
