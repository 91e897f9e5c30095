"""Run one apply in a migration Job and wait for its result (the imperative shell of :mod:`.jobs`).

The operator never executes a migration script: :func:`run` creates the Job that
:func:`dbrev.controller.jobs.job_manifest` builds (``dbrev apply`` with exactly the operator's request,
in dbrev's own image or the application's), watches it, and returns the CLI's result as a
:class:`~dbrev.core.results.RunResult`, the same one the in-process worker returns, so that the operator
decides on it through the same functions (``decide.from_result`` / ``decide.from_error``).

What comes back, and how:

* the result: the CLI writes its document (with the run's plan) to the pod's termination message, read
  from the pod's status; no log access, no credential in the pod;
* a pod that cannot run (image pull, no ``dbrev`` in the image, a container that cannot start) raises a
  :class:`~dbrev.core.errors.MigrationJobError` with the reason :func:`.jobs.observe` names, before anything
  touched the database;
* a pod that dies after it started (OOM-killed, evicted, deleted, past its deadline): its database
  sessions are ended (they carry the Job's own ``application_name``), the run it journaled is looked up by
  the pod's name, and :func:`dbrev.engine.undo.recover_after_death` returns the database to where the run
  began, as after a killed worker (a per-step run's way back runs in another Job);
* a Job a previous operator started and that still runs is adopted, never run twice.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from ..engine.extras import require_operator

require_operator(__name__)

from kubernetes.client.rest import ApiException

from ..core import conditions as C
from ..core import log as L
from ..core.errors import DbrevError, MigrationJobError
from ..core.options import RunRequest
from ..core.redact import redact, register_secret
from ..core.results import RESULT_BUSY, RESULT_REFUSED, RunResult
from . import jobs as J
from . import kube
from .spec import Spec

POLL_S = 0.5
JOURNAL_EVERY = 2  # polls between two looks at the run's journal row (its progress)
OWNER_EVERY = 10  # polls between two looks at the DatabaseRevision (deleted: the Job is deleted too)
#: past the Job's own activeDeadlineSeconds (plus this), the operator stops waiting and deletes it
WATCH_MARGIN_S = 120.0
_RESULT_KEYS = frozenset(RunResult.ORDER)


def _api_error(what: str, e: ApiException) -> DbrevError:
    if e.status in (401, 403):
        return MigrationJobError(f"{what}: the operator is not allowed to ({e.status} {e.reason})",
                                 reason=C.MIGRATION_POD_FAILED,
                                 hint="apply the operator's RBAC from manifests/ (jobs, pods, serviceaccounts)")
    return MigrationJobError(f"{what}: the Kubernetes API answered {e.status} {e.reason}",
                             reason=C.KUBERNETES_UNAVAILABLE)


def ensure_service_account(namespace: str) -> None:
    try:
        kube.core().create_namespaced_service_account(namespace, J.service_account_manifest(namespace))
        L.logger.info("Created the migration pods' ServiceAccount", extra={"namespace": namespace,
                                                                         "service_account": J.SERVICE_ACCOUNT})
    except ApiException as e:
        if e.status != 409:
            raise _api_error(f"cannot create ServiceAccount {namespace}/{J.SERVICE_ACCOUNT}", e) from None


def _active(job: dict) -> bool:
    """Still running: no Complete/Failed condition yet, and no pod of it has ended (the Job controller counts an
    ended pod before it sets the condition)."""
    st = job.get("status") or {}
    conds = {c.get("type") for c in st.get("conditions") or [] if c.get("status") == "True"}
    return not conds & {"Complete", "Failed"} and not (st.get("succeeded") or st.get("failed")) \
        and not (job.get("metadata") or {}).get("deletionTimestamp")


def _get_job(ns: str, name: str) -> dict | None:
    try:
        return kube.api_client().sanitize_for_serialization(kube.batch().read_namespaced_job(name, ns))
    except ApiException as e:
        if e.status == 404:
            return None
        raise _api_error(f"cannot read Job {ns}/{name}", e) from None


def _pods(ns: str, job: str) -> list[dict]:
    try:
        items = kube.core().list_namespaced_pod(ns, label_selector=f"job-name={job}").items
    except ApiException as e:
        raise _api_error(f"cannot list the pods of Job {ns}/{job}", e) from None
    return [kube.api_client().sanitize_for_serialization(p) for p in items]


def _delete(ns: str, name: str) -> None:
    try:
        kube.batch().delete_namespaced_job(name, ns, propagation_policy="Background")
    except ApiException as e:
        if e.status != 404:
            L.logger.warning("Could not delete the migration Job", extra={"job": name, "status_code": e.status})


def _owner_gone(owner: J.Owner) -> bool:
    try:
        obj = kube.get(owner.namespace, owner.name)
    except Exception:  # noqa: BLE001 - an API hiccup is not a deletion
        return False
    return obj is None or (obj.get("metadata") or {}).get("uid") != owner.uid \
        or bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _args(job: dict) -> tuple:
    """What a Job runs: its image and its command line (the same request in the same image is the same run)."""
    c = (((job.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers", [{}])[0]
    return c.get("image"), c.get("args", [])


def _wait_gone_or_done(ns: str, job: dict) -> None:
    """Wait until ``job`` (a run of another request) has finished: the database's lock would refuse ours."""
    name = job["metadata"]["name"]
    limit = time.monotonic() + (job["spec"].get("activeDeadlineSeconds") or 3600) + WATCH_MARGIN_S
    while time.monotonic() < limit:
        cur = _get_job(ns, name)
        if cur is None or not _active(cur):
            return
        time.sleep(POLL_S * 4)
    _delete(ns, name)


def start(owner: J.Owner, manifest: dict) -> str:
    """Create ``manifest``'s Job, or adopt the one a previous operator started for ``owner`` that still runs the
    same request (a Job of another request, e.g. of the spec before the last change, is waited for first)."""
    ns = owner.namespace
    try:
        running = [j for j in kube.batch().list_namespaced_job(
            ns, label_selector=f"{J.UID_LABEL}={owner.uid},{J.VERB_LABEL}={J.APPLY}").items]
    except ApiException as e:
        raise _api_error(f"cannot list the Jobs in {ns}", e) from None
    running = [kube.api_client().sanitize_for_serialization(j) for j in running]
    # a Job whose pod has ended is done even before the Job controller says so (its counts lag by a moment)
    running = sorted((j for j in running if _active(j) and J.observe(j, _pods(ns, j["metadata"]["name"])).phase
                      == J.RUNNING), key=lambda j: j["metadata"].get("creationTimestamp", ""))
    for job in running:
        if _args(job) == _args(manifest):
            name = job["metadata"]["name"]
            L.logger.warning("A migration Job started earlier for this request still runs: waiting for it instead "
                             "of starting another", extra={"job": name})
            return name
        L.logger.warning("A migration Job of an earlier request still runs: waiting for it to end first",
                         extra={"job": job["metadata"]["name"]})
        _wait_gone_or_done(ns, job)
    ensure_service_account(ns)
    try:
        kube.batch().create_namespaced_job(ns, manifest)
    except ApiException as e:
        if e.status != 409:
            raise _api_error(f"cannot create Job {ns}/{manifest['metadata']['name']}", e) from None
    name = manifest["metadata"]["name"]
    L.logger.info("Started the migration Job", extra={"job": name, "image": J.image_of(manifest)})
    return name


#: at most this much of a migration pod's log is relayed into the operator's log
RELAY_LIMIT_BYTES = 4 * 1024 * 1024


def relay_log(ns: str, pod: str | None) -> None:
    """The migration pod's log, re-logged here, redacted, within this pass's context (namespace, name, deployment
    id): the run's records (plan, steps, rollback_triggered/executed, ...) are in the operator's log as when it
    ran them itself. Best effort: a log the kubelet no longer has is said so, never fatal."""
    if not pod:
        return
    try:
        text = kube.core().read_namespaced_pod_log(pod, ns, container=J.CONTAINER, limit_bytes=RELAY_LIMIT_BYTES)
    except ApiException as e:
        L.logger.warning("Cannot read the migration pod's log", extra={"pod": pod, "status_code": e.status})
        return
    for line in (text or "").splitlines():
        if line.strip():
            L.relay(line)


def parse_result(text: str) -> tuple[RunResult, dict | None]:
    """The CLI's result file: (the result, the plan it ran). A refused or busy run, or an error before any run,
    is raised as the :class:`~dbrev.core.errors.DbrevError` it was, as the in-process worker raises it."""
    from ..engine.worker import raise_reported

    import json

    try:
        doc = json.loads(text)
    except ValueError:
        raise MigrationJobError(f"the migration pod's result is not JSON: {redact(text)[:300]!r}",
                                reason=C.MIGRATION_POD_FAILED) from None
    plan = doc.pop("plan", None)
    # raised where the in-process run raises: an error before any plan (the CLI's "error" document), a busy
    # lock, a refusal raised as an exception (the CLI's of_error documents carry no plan hash); a plan the policy
    # refused (awaiting approval, denied) is a result, as in process
    raised = doc.get("result") == "error" or (doc.get("result") in (RESULT_REFUSED, RESULT_BUSY)
                                              and not doc.get("plan_hash"))
    if raised and isinstance(doc.get("error"), dict):
        raise_reported(doc["error"])
    truncated = doc.pop("truncated", False)
    body = {k: v for k, v in doc.items() if k in _RESULT_KEYS}
    if not truncated:
        unknown = set(doc) - _RESULT_KEYS - {"from_revision", "to_revision"}
        if unknown:
            raise MigrationJobError(f"the migration pod's result has unknown key(s) {', '.join(sorted(unknown))}: "
                                    f"is the image's dbrev the operator's version?", reason=C.MIGRATION_POD_FAILED)
    result = RunResult.from_dict(body)
    if truncated:
        result.warn("the result was longer than a termination message: the Job's log has all of it")
    return result, plan


def journal_row(req: RunRequest, pod: str | None) -> dict | None:
    """The newest run the pod ``pod`` journaled in dbrev's ``runs`` (its plan, the step in progress), or None.
    A catalog query: no user code runs."""
    import sqlalchemy as sa

    from ..pg.db import connection
    from ..pg.state import running_run_of, vt_key

    if not pod:
        return None
    try:
        with connection(req.db) as conn:
            row = running_run_of(conn, req.db.state_schema, vt_key(req.db.version_table, req.db.version_table_schema),
                                 pod)
            conn.commit()
    except (DbrevError, sa.exc.SQLAlchemyError):  # e.g. an older image's dbrev journals without the plan column
        return None
    return row


def journaled_state(req: RunRequest, pod: str | None) -> dict:
    """What the database's journal says of the run the pod ``pod`` started: the ``state`` of
    :func:`dbrev.engine.undo.recover_after_death` (empty when it journaled nothing: it never began)."""
    row = journal_row(req, pod)
    if row is None:
        return {}
    plan = _plan_of(row)
    return {"plan": plan, "journal": {"schema": req.db.state_schema, "run_id": row["id"]},
            "steps_started": row["step_index"] or 0}


def _plan_of(row: dict) -> dict:
    import json

    plan = row.get("plan")
    if isinstance(plan, str):
        plan = json.loads(plan)
    if isinstance(plan, dict) and plan.get("hash"):
        return plan
    return {"from_revisions": list(row["from_revisions"]), "to_revisions": list(row["to_revisions"]),
            "direction": row["direction"], "hash": row["plan_hash"], "transaction": row["txn"], "steps": []}


def run(req: RunRequest, *, owner: J.Owner, spec: Spec, settings: J.Settings, timeout: float,
        configmap_files: dict | None = None, on_event: Callable[[dict], None] | None = None,
        run_key: str = "", scripts_sha256: str | None = None, _rerun: bool = True) -> RunResult:
    """Run ``req`` (an apply) in a migration Job; its :class:`RunResult` (see the module's docstring)."""
    from ..pg.db import end_sessions, url_password
    from ..engine.undo import recover_after_death

    register_secret(url_password(req.db.url))
    emit = on_event or (lambda ev: None)
    manifest = J.job_manifest(owner, spec, J.APPLY, settings, configmap_files=configmap_files, request=req,
                              run_key=run_key, scripts_sha256=scripts_sha256)
    name = start(owner, manifest)
    emit({"event": "job_created", "job": name})
    ns = owner.namespace
    t0 = time.monotonic()
    limit = t0 + manifest["spec"]["activeDeadlineSeconds"] + WATCH_MARGIN_S
    seen_pod = announced = planned = applying = False
    polls = 0
    with L.log_context(job=name):
        while True:
            polls += 1
            if polls % OWNER_EVERY == 0 and _owner_gone(owner):
                _delete(ns, name)
                raise MigrationJobError(f"the DatabaseRevision {ns}/{owner.name} was deleted while its migration "
                                        f"Job {name} ran; the Job is deleted", reason=C.JOB_DELETED)
            job = _get_job(ns, name)
            pods = _pods(ns, name) if job is not None else []
            obs = J.observe(job, pods, seen_pod)
            seen_pod = seen_pod or bool(pods)
            if obs.phase == J.RUNNING:
                if obs.started and not announced:
                    announced = True
                    emit({"event": "job_started", "job": name, "pod": obs.pod})
                if obs.started and not applying and polls % JOURNAL_EVERY == 0:
                    # progress from dbrev's journal in the database: the plan, then the first step
                    row = journal_row(req, obs.pod)
                    if row is not None and not planned:
                        planned = True
                        emit({"event": "plan", "plan": _plan_of(row)})
                    if row is not None:  # journaled: the steps are under way (a single transaction records no index)
                        applying = True
                        emit({"event": "step_started", "index": 1, "total": row.get("step_count") or 0,
                              "revision": row.get("step_revision")})
                if time.monotonic() > limit:
                    _delete(ns, name)
                    obs = J.Observation(J.FAILED, C.TIMED_OUT, f"the migration Job {name} ran past its deadline and "
                                                               f"the operator deleted it", started=True, pod=obs.pod)
                else:
                    time.sleep(POLL_S)
                    continue
            break
        relay_log(ns, obs.pod)
        if obs.phase == J.FINISHED:
            result, plan = parse_result(obs.result_text or "")
            if plan and not planned:
                emit({"event": "plan", "plan": plan})
            if result.steps and not applying:  # a run quicker than a look at its journal: the same Events, in order
                emit({"event": "step_started", "index": 1, "total": len((plan or {}).get("steps") or result.steps),
                      "revision": result.steps[0].revision})
            for a in result.archived or []:
                emit({"event": "archived", **a})
            L.logger.info("The migration Job finished", extra={"result": result.result, "exit_code": obs.exit_code,
                                                               "pod": obs.pod})
            return result
        message = redact(obs.message)
        L.logger.error("The migration Job failed", extra={"reason": obs.reason, "error_message": message,
                                                          "pod": obs.pod, "exit_code": obs.exit_code})
        _delete(ns, name)
        if not obs.started:
            raise MigrationJobError(message, reason=obs.reason or C.MIGRATION_POD_FAILED)
        end_sessions(req.db, application_name=J.session_name(name))
        state = journaled_state(req, obs.pod)
        if state.get("plan") and not planned:
            emit({"event": "plan", "plan": state["plan"]})

        def rerun(back: RunRequest) -> RunResult:
            return run(back, owner=owner, spec=spec, settings=settings, timeout=timeout,
                       configmap_files=configmap_files, run_key=f"{run_key}-back", scripts_sha256=scripts_sha256,
                       _rerun=False)

        return recover_after_death(req, state, message, time.monotonic() - t0, rerun if _rerun else None,
                                   reason=obs.reason or C.MIGRATION_POD_FAILED,
                                   tail=[redact(ln) for ln in obs.tail])


# ---------------------------------------------------------------------------
# The operator's configuration of migration pods (environment; the operator's own pod)

#: the development switch: run migrations as the operator's child process (they can read its credentials)
IN_PROCESS_ENV = "DBREV_MIGRATIONS_IN_PROCESS"
IMAGE_ENV = "DBREV_MIGRATION_IMAGE"
PULL_POLICY_ENV = "DBREV_MIGRATION_IMAGE_PULL_POLICY"
MEMORY_ENV = "DBREV_MIGRATION_MEMORY_LIMIT"
_settings: J.Settings | None = None


def in_process() -> bool:
    return (os.environ.get(IN_PROCESS_ENV) or "").strip().lower() in ("1", "true", "yes", "on")


def _own_image() -> tuple[str, str] | None:
    """The image (and pull policy) of the operator's own container, read from its pod (POD_ID, POD_NAMESPACE)."""

    pod, ns = os.environ.get("POD_ID"), os.environ.get("POD_NAMESPACE")
    if not (pod and ns):
        return None
    try:
        obj = kube.core().read_namespaced_pod(pod, ns)
    except ApiException as e:
        L.logger.warning("Cannot read the operator's own pod for its image", extra={"status_code": e.status})
        return None
    c = obj.spec.containers[0]
    return c.image, c.image_pull_policy or "IfNotPresent"


def settings() -> J.Settings:
    """Migration pods' settings: dbrev's own image from ``DBREV_MIGRATION_IMAGE``, else the operator's."""

    global _settings
    if _settings is not None:
        return _settings
    image, policy = os.environ.get(IMAGE_ENV), os.environ.get(PULL_POLICY_ENV)
    if not image:
        own = _own_image()
        if own is None:
            raise MigrationJobError(
                "the operator does not know which image runs ConfigMap migrations: it is not in a pod it can read",
                reason=C.MIGRATION_POD_FAILED,
                hint=f"set {IMAGE_ENV} (dbrev's image), or {IN_PROCESS_ENV}=true for local development")
        image, policy = own[0], policy or own[1]
    limits = (("memory", os.environ.get(MEMORY_ENV) or "512Mi"),)
    _settings = J.Settings(image=image, image_pull_policy=policy or "IfNotPresent", limits=limits,
                           log_level=(os.environ.get("DBREV_LOG_LEVEL") or "info").lower())
    L.logger.info("Migrations run in Jobs", extra={"image": image, "image_pull_policy": _settings.image_pull_policy})
    return _settings
