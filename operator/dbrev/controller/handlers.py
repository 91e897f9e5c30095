"""Kopf handlers: thin.  They gather inputs, call the engine and the core, write what it returns.

One reconcile pass (:func:`reconcile`) serves create, resume, spec and
annotation changes (approvals, referenced ConfigMap/Secret changes) and
out-of-band changes found by the timer.  The timer (:func:`check`) costs one
query when nothing is due and verifies integrity every driftCheckInterval.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
from datetime import datetime, timezone

from ..engine.extras import require_operator

require_operator(__name__)  # before kopf/kubernetes: a clear error on a lean install

import kopf

from ..core import conditions as C
from ..core import log as L
from . import metrics as M
from .crd import APPROVE_ANNOTATION, GROUP, VERSION
from .deployment import deployment_id, stamp_history, with_deployment
from ..core.options import DbOptions
from ..core.errors import BadInput, DatabaseUnavailable, DbrevError
from ..core.options import RunRequest
from ..core.results import RunResult
from .status import condition, initial_conditions, metric_states, is_ready, now_iso, revisions_text, status_patch
from ..core.text import plan_summary
from . import decide, kube
from . import healthgate as HG
from .inputs import Inputs, gather, identity_key
from .spec import Spec, SpecError, parse_spec

TIMER_INTERVAL = float(os.environ.get("DBREV_TIMER_INTERVAL", "30"))
# The timer's cheap check gives up connecting after this long (spec.database.connectTimeoutSeconds is for
# runs, which may wait for a cold start): an outage is reported within a tick, not after a minute.
TIMER_CONNECT_TIMEOUT = float(os.environ.get("DBREV_TIMER_CONNECT_TIMEOUT", "5"))
STATUS_RETRY_DELAY = 5.0

_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _object_lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


# ---------------------------------------------------------------------------
# Events (core/v1, posted directly so they work from any thread)

def post_event(body, etype: str, reason: str, message: str) -> bool:
    meta = body["metadata"]
    now = datetime.now(timezone.utc)
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "DatabaseRevision", "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta.get("uid"),
                           "resourceVersion": meta.get("resourceVersion")},
        # healthgate: the deployment id of the pass (log context) in every Event it posts
        "reason": reason, "message": with_deployment(L.redact(message), L.current_context().get("deployment_id")),
        "type": etype,
        "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "count": 1, "source": {"component": "dbrev", "host": socket.gethostname()},
        "reportingComponent": "dbrev.io/operator", "reportingInstance": socket.gethostname(),
    }
    try:
        kube.core().create_namespaced_event(meta["namespace"], event)
        return True
    except Exception as e:  # noqa: BLE001 - an Event is never worth failing a pass for
        L.logger.warning("Could not post an Event", extra={"reason": reason, "error_type": type(e).__name__})
        return False


# ---------------------------------------------------------------------------
# Outcomes whose status write failed (the API server was down): kept, and written when it answers

_pending: dict[tuple[str, str], dict] = {}


def _remember(ns: str, name: str, body, fields: dict, events: list) -> None:
    with _locks_guard:
        old = _pending.get((ns, name)) or {"fields": {}, "events": []}
        _pending[(ns, name)] = {"body": body, "fields": {**old["fields"], **fields},
                                "events": old["events"] + list(events)}


def forget_pending(ns: str, name: str) -> None:
    with _locks_guard:
        _pending.pop((ns, name), None)


def flush_pending(ns: str, name: str) -> bool:
    """Write a remembered outcome (status, then its Events).  True when nothing is left to write."""
    with _locks_guard:
        p = _pending.get((ns, name))
    if not p:
        return True
    try:
        kube.patch_status(ns, name, p["fields"])
    except Exception as e:  # noqa: BLE001
        if not kube.api_unreachable(e):  # gone (404) or refused: there is nothing left to write it to
            L.logger.error("Dropping the status of a run the API server refused", extra={
                "error_type": type(e).__name__, "error_message": L.redact(str(e))[:300]})
            forget_pending(ns, name)
            return True
        L.logger.warning("Still cannot write the status of the last run; keeping it", extra={
            "error_type": type(e).__name__, "error_message": L.redact(str(e))[:300]})
        return False
    with _locks_guard:
        _pending.pop((ns, name), None)
    for ev in p["events"]:
        post_event(p["body"], *ev)
    L.logger.info("Wrote the status of a run the API server missed",
                  extra={"events": [e[1] for e in p["events"]], "fields": sorted(p["fields"])})
    return True


# ---------------------------------------------------------------------------
# Carrying out a verdict

def carry_out(body, prev: dict, verdict: decide.Verdict, started: float, extra: dict | None = None,
              count: bool = True, raise_unwritten: bool = True) -> dict:
    """Write the verdict: status (what differs from ``prev``, the status as last written), Events, metrics.

    When the API server does not take the status, the outcome and its Events are remembered and written
    by the next pass or timer tick (:func:`flush_pending`); a reconcile pass then asks Kopf to retry.
    """
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    new = dict(verdict.status)
    new.update(extra or {})
    patch = status_patch(prev, new)
    unwritten = False
    if patch:
        try:
            kube.patch_status(ns, name, patch)
        except Exception as e:  # noqa: BLE001 - the record must survive an API outage
            if not kube.api_unreachable(e):
                raise
            unwritten = True
            _remember(ns, name, body, new, verdict.events)
            L.logger.error("Could not write the status; keeping the outcome to write it when the API answers",
                           extra={"error_type": type(e).__name__, "error_message": L.redact(str(e))[:300],
                                  "reason": verdict.outcome.reason})
    if not unwritten:
        for etype, reason, message in verdict.events:
            post_event(body, etype, reason, message)
    if count:
        M.observe_reconcile(verdict.metric_result, time.monotonic() - started)
    for direction, result in verdict.steps:
        M.migration_steps_total.labels(direction=direction, result=result).inc()
    if verdict.rollback:
        M.rollbacks_total.labels(namespace=ns, name=name, trigger=verdict.rollback[0],
                                 result=verdict.rollback[1]).inc()
    merged = {**prev, **new}
    ready, stalled, waiting = metric_states(merged.get("conditions"))
    M.set_resource(ns, name, is_ready=ready, is_stalled=stalled,
                   current=merged.get("currentRevision"), target=merged.get("targetRevision"),
                   findings=verdict.findings, drift=verdict.drift, is_waiting=waiting, reachable=verdict.reachable,
                   readiness=(merged.get("rollbackReadiness") or {}).get("status"))
    if new.get("lastAppliedTime") and patch.get("lastAppliedTime"):
        M.last_applied_timestamp_seconds.labels(ns, name).set(time.time())
    level = L.logger.warning if verdict.outcome.kind in ("stalled", "transient") else L.logger.info
    level(f"Reconcile outcome: {verdict.outcome.reason}",
          extra={"status": verdict.outcome.kind, "reason": verdict.outcome.reason,
                 "from_revision": prev.get("currentRevision"), "to_revision": merged.get("currentRevision"),
                 "result": verdict.metric_result, "wrote_status": bool(patch) and not unwritten})
    if unwritten and raise_unwritten:
        raise kopf.TemporaryError("the status could not be written; retrying", delay=STATUS_RETRY_DELAY)
    return merged


def _db_options(spec: Spec, url: str) -> DbOptions:
    return DbOptions(url=url, connect_timeout=spec.connect_timeout, lock_timeout=spec.lock_timeout,
                     statement_timeout=spec.statement_timeout, version_table=spec.version_table,
                     version_table_schema=spec.version_table_schema)


def reconcile(body, cause: str, retry: int = 0, diff=None, index=None) -> None:
    meta = body["metadata"]
    ns, name, gen = meta["namespace"], meta["name"], meta.get("generation") or 0
    trigger = decide.trigger_of(cause, diff)
    dep = deployment_id(meta).value  # healthgate: what deployed this pass, in its records and Events
    with L.log_context(namespace=ns, name=name, trigger=trigger, deployment_id=dep), _object_lock(ns, name):
        started = time.monotonic()
        if not flush_pending(ns, name):
            raise kopf.TemporaryError("the status of the last run is not written yet", delay=STATUS_RETRY_DELAY)
        prev = dict(kube.get(ns, name) or body).get("status") or {}
        now = now_iso()
        if not prev.get("conditions"):
            first = {"observedGeneration": gen, "conditions": initial_conditions(gen, now)}
            kube.patch_status(ns, name, first)
            prev = {**prev, **first}
        try:
            spec = parse_spec(dict(body["spec"]))
        except SpecError as e:
            carry_out(body, prev, decide.from_error({"reason": C.INVALID_SPEC, "message": str(e)}, prev, gen, now),
                      started)
            return
        if spec.suspend:
            carry_out(body, prev, decide.suspended(prev, gen, now), started)
            return
        if spec.image is not None and _in_process():
            carry_out(body, prev, decide.from_error({"reason": C.INVALID_SPEC, "message": IMAGE_IN_PROCESS}, prev,
                                                    gen, now), started)
            return
        try:
            inputs = gather(kube.core(), ns, spec)
            inputs, live = _probe(spec, inputs)
        except DbrevError as e:
            verdict = decide.from_error(e.to_dict(), prev, gen, now, retry, transient=e.transient)
            carry_out(body, prev, verdict, started)
            if verdict.retry_in:
                raise kopf.TemporaryError(verdict.outcome.message, delay=verdict.retry_in)
            return
        extra = {"databaseKey": inputs.database_key, "inputsHash": inputs.inputs_hash}
        other = decide.conflicting_owner(index, inputs.database_key, ns, name, meta.get("creationTimestamp"))
        if other:
            err = {"reason": C.CONFLICT, "message": f"DatabaseRevision {other} already manages this database and "
                                                    f"version table"}
            carry_out(body, prev, decide.from_error(err, prev, gen, now), started, extra)
            return
        if decide.previous_outcome_stands(prev, gen, inputs.inputs_hash, trigger):
            stalled = condition(prev, C.STALLED) or {}
            L.logger.info("The last outcome stands: same spec, same inputs; not running the plan again", extra={
                "reason": stalled.get("reason"), "status": "stalled",
                "hint": "change the spec or the scripts, or annotate dbrev.io/reconcile-requested-at to retry"})
            M.observe_reconcile(M.RESULT_NOOP, time.monotonic() - started)
            return
        if HG.phase(prev, gen) == HG.AWAITING_APPROVAL and trigger == "approval" and spec.health_gate:
            # healthgate: the approval is for the schema downgrade of a health-gate rollback
            _health_gate_schema(body, prev, spec, meta, started)
            return
        if HG.holding(prev, gen) and prev.get("inputsHash") == inputs.inputs_hash:
            # healthgate: the timer is watching (or rolling back) the rollout that followed the last run; a pass
            # with the same spec and inputs (a resume, a ConfigMap event that changed nothing) would end it
            L.logger.info("The health gate holds: same spec, same inputs; not running the plan again",
                          extra={"status": (prev.get("healthGate") or {}).get("phase")})
            M.observe_reconcile(M.RESULT_NOOP, time.monotonic() - started)
            return
        if _nothing_to_do(prev, gen, inputs, live):
            M.observe_reconcile(M.RESULT_NOOP, time.monotonic() - started)
            return
        approval = (meta.get("annotations") or {}).get(APPROVE_ANNOTATION)
        _run(body, prev, spec, inputs, approval, trigger, retry, started, extra)


def _probe(spec: Spec, inputs: Inputs) -> tuple[Inputs, tuple[str, ...]]:
    """One connection: which database this is (by the server's identity, not the URL) and its live revision."""
    from sqlalchemy.exc import DBAPIError

    from ..pg.db import connection, database_identity, read_heads

    with connection(_db_options(spec, inputs.url)) as conn:
        heads = read_heads(conn, spec.version_table, spec.version_table_schema)
        conn.commit()
        try:
            ident = database_identity(conn, spec.version_table, spec.version_table_schema)
            conn.commit()
        except DBAPIError as e:
            conn.rollback()
            L.logger.warning("Cannot read the server's identity; telling databases apart by their URL", extra={
                "error_message": L.redact(str(getattr(e, "orig", e))).splitlines()[0][:300]})
            return inputs, heads
    return dataclasses.replace(inputs, database_key=identity_key(ident)), heads


def _nothing_to_do(prev: dict, gen: int, inputs: Inputs, live) -> bool:
    """The one cheap query (made by :func:`_probe`): same spec, same inputs, the database still where status says."""
    if not (is_ready({"conditions": prev.get("conditions")}) and prev.get("observedGeneration") == gen
            and prev.get("inputsHash") == inputs.inputs_hash):
        return False
    return revisions_text(live) == prev.get("currentRevision")


def _post_archived(body, ev: dict) -> None:
    post_event(body, decide.NORMAL, decide.EV_ARCHIVED,
               f"kept {ev['rows']} row(s) of {ev['object']} in {ev['archive_table']} (archive {ev['id']}) "
               f"before {ev.get('revision', '')} dropped them; restore with: dbrev archive restore {ev['id']}")


IMAGE_IN_PROCESS = ("spec.migrations.image: the operator runs migrations in its own process (DBREV_MIGRATIONS_IN_PROCESS, "
                    "a development switch) and cannot run an application image's; unset it so that it runs them "
                    "in Jobs")


def _in_process() -> bool:
    from .jobrun import in_process

    return in_process()


def execute(body, spec: Spec, inputs: Inputs, req: RunRequest, on_event, log_context: dict,
            run_key: str) -> RunResult:
    """Run ``req``: in a migration Job (:mod:`.jobrun`), or, with the development switch
    ``DBREV_MIGRATIONS_IN_PROCESS``, in a worker process of the operator's own."""
    from . import jobrun

    if _in_process():
        if spec.image is not None:
            raise BadInput(IMAGE_IN_PROCESS, reason=C.INVALID_SPEC)
        from ..engine.verbs import apply

        return apply(req, timeout=spec.timeout, on_event=on_event,
                     log_level=os.environ.get("DBREV_LOG_LEVEL", "INFO"), log_context=log_context)
    meta = body["metadata"]
    owner = jobrun.J.Owner(meta["name"], meta["namespace"], meta["uid"])
    return jobrun.run(req, owner=owner, spec=spec, settings=jobrun.settings(), timeout=spec.timeout,
                      configmap_files=dict(inputs.configmap_files), on_event=on_event, run_key=run_key,
                      scripts_sha256=inputs.scripts_hash if spec.image is None else None)


def _run(body, prev, spec: Spec, inputs: Inputs, approval, trigger, retry, started, extra) -> None:
    meta = body["metadata"]
    ns, name, gen = meta["namespace"], meta["name"], meta.get("generation") or 0
    started_at = now_iso()
    seen: dict = {}
    # What the status says now: the final write is diffed against this, not against what the pass read
    # (a progress write in between would otherwise hide a final status equal to the old one).
    written = dict(prev)

    def on_event(ev: dict) -> None:
        kind = ev.get("event")
        if kind == "plan":
            seen["plan"] = ev["plan"]
            planned = decide.planned_event(ev["plan"], prev)
            if planned:
                post_event(body, *planned)
        elif kind == "archived":
            _post_archived(body, ev)
        elif kind == "job_created":  # Reconciling from now on, not the last outcome while the pod starts
            progress(f"started migration Job {ev['job']}; waiting for its pod to plan", None)
        elif kind == "job_started":  # a migration Job's pod runs: the status changes once its journal says the plan
            L.logger.info("The migration Job's pod runs", extra={"job": ev["job"], "pod": ev.get("pod")})
        elif kind == "step_started" and ev.get("index") == 1:
            plan = seen.get("plan") or {}
            msg = (f"applying plan {plan.get('hash', '')[:19]}: "
                   + plan_summary(plan.get("direction"), plan.get("from_revisions"), plan.get("to_revisions"),
                                  ev["total"]))
            progress(msg, plan)
            post_event(body, decide.NORMAL, decide.EV_APPLYING, msg)

    def progress(msg: str, plan: dict | None) -> None:
        try:
            patch = status_patch(written, {**decide.progressing(written, gen, now_iso(), msg, plan), **extra})
            kube.patch_status(ns, name, patch)
            written.update(patch)
        except Exception as e:  # noqa: BLE001
            L.logger.warning("Could not write progress", extra={"error_type": type(e).__name__})

    def run_info() -> dict | None:
        if "plan" not in seen:
            return None
        return {"plan": seen["plan"], "trigger": trigger, "started_at": started_at,
                "duration_seconds": time.monotonic() - started}

    dep = L.current_context().get("deployment_id")
    if dep is None and spec.health_gate is not None:  # healthgate: else the images of the gated workloads
        try:
            dep = deployment_id(meta, HG.images(ns, spec.health_gate.workloads)).value
        except Exception as e:  # noqa: BLE001 - an id is never worth failing a run for
            L.logger.warning("Cannot read the gated workloads' images", extra={"error_type": type(e).__name__})
        if dep:
            L.bind_context(deployment_id=dep)
    req = RunRequest(db=_db_options(spec, inputs.url), migrations=str(inputs.migrations or ""),
                     target=spec.revision, policy=spec.policy, approval=approval, actor=f"operator:{ns}/{name}")
    M.active_workers.inc()
    result = None
    try:
        result = execute(body, spec, inputs, req, on_event, {"namespace": ns, "name": name, "deployment_id": dep},
                         run_key=f"{started_at}/{retry}")
        verdict = decide.from_result(result, written, gen, now_iso(), trigger, started_at, seen.get("plan"), retry,
                                     name=name)
    except DbrevError as e:
        verdict = decide.from_error(e.to_dict(), written, gen, now_iso(), retry, transient=e.transient,
                                    run=run_info())
    except Exception as e:  # noqa: BLE001 - an unexpected failure is still a run with an outcome to report
        L.logger.error("The run failed with an unexpected error", exc_info=True,
                       extra={"error_type": type(e).__name__, "error_message": L.redact(str(e))[:500]})
        verdict = decide.from_error({"reason": C.MIGRATION_FAILED,
                                     "message": f"dbrev failed unexpectedly: {type(e).__name__}: "
                                                f"{L.redact(str(e))[:500]}",
                                     "hint": "the operator log has the stack trace"},
                                    written, gen, now_iso(), retry, transient=False, run=run_info())
    finally:
        M.active_workers.dec()
    stamp_history(verdict.status, started_at, dep)
    _health_gate_begin(verdict, spec, result, written, gen)
    if "plan" in seen and verdict.status.get("plan") is None:
        from .status import plan_status

        verdict.status["plan"] = plan_status(seen["plan"], now_iso())
    carry_out(body, written, verdict, started, extra)
    if verdict.retry_in:
        raise kopf.TemporaryError(verdict.outcome.message, delay=verdict.retry_in)


# ---------------------------------------------------------------------------
# The timer: out-of-band changes and drift

def check(body) -> None:
    meta = body["metadata"]
    ns, name, gen = meta["namespace"], meta["name"], meta.get("generation") or 0
    status = dict(body.get("status") or {})
    lock = _object_lock(ns, name)
    if not lock.acquire(blocking=False):
        return  # a pass is running
    try:
        dep = (status.get("healthGate") or {}).get("deploymentId")  # healthgate: the run the gate watches
        with L.log_context(namespace=ns, name=name, trigger="timer", deployment_id=dep):
            if not flush_pending(ns, name):
                return
            _check(body, ns, name, gen, status)
    finally:
        lock.release()


def _check(body, ns, name, gen, status) -> None:
    from ..engine.verbs import observe, verify

    try:
        spec = parse_spec(dict(body["spec"]))
    except SpecError as e:  # the pass reports it (InvalidSpec); the timer has nothing to check
        L.logger.debug("Drift check skipped: the spec is invalid", extra={"error_message": str(e)})
        return
    if spec.suspend or status.get("observedGeneration") != gen:
        return
    if HG.holding(status, gen) and spec.health_gate is not None:
        _health_gate_tick(body, ns, name, gen, status, spec)
        return
    if decide.needs_heal(status, gen):
        # No pass holds the lock, yet the conditions say one is under way: a final write went missing.
        fresh = (kube.get(ns, name) or {}).get("status") or {}
        if decide.needs_heal(fresh, gen) and fresh.get("observedGeneration") == gen:
            L.logger.warning("The conditions say a pass is under way but none is; starting one",
                             extra={"reason": (condition(fresh, C.RECONCILING) or {}).get("reason")})
            kube.request_reconcile(ns, name, "heal")
        return
    ready = is_ready(status)
    stalled_on_integrity = any(c.get("type") == C.STALLED and c.get("status") == "True"
                               and c.get("reason") == C.INTEGRITY_CHECK_FAILED
                               for c in status.get("conditions") or [])
    if not (ready or stalled_on_integrity):
        return
    started = time.monotonic()
    try:
        url = gather_url(spec, ns)
        db = dataclasses.replace(_db_options(spec, url),
                                 connect_timeout=min(spec.connect_timeout, TIMER_CONNECT_TIMEOUT))
        live = observe(db)["revisions"]
    except DatabaseUnavailable as e:
        verdict = decide.database_unreachable(status, gen, now_iso(), e.message)
        was_down = (condition(status, C.DATABASE_REACHABLE) or {}).get("status") == "False"
        (L.logger.info if was_down else L.logger.warning)(
            "Drift check: the database does not answer", extra={"error_type": type(e).__name__,
                                                                "error_message": e.message, "reason": e.reason})
        carry_out(body, status, verdict, started, count=False, raise_unwritten=False)
        return
    except DbrevError as e:
        L.logger.warning("Drift check failed", extra={"error_type": type(e).__name__, "error_message": e.message,
                                                      "reason": e.reason})
        return
    back = decide.database_reachable_again(status, gen, now_iso(), f"the database answers again at revision "
                                                                   f"{revisions_text(live)}")
    if back:
        L.logger.info("Drift check: the database answers again")
        status = carry_out(body, status, back, started, count=False, raise_unwritten=False)
    if revisions_text(live) != status.get("currentRevision"):
        L.logger.warning("The database changed outside dbrev", extra={
            "from_revision": status.get("currentRevision"), "to_revision": revisions_text(live)})
        kube.request_reconcile(ns, name, "drift")
        return
    last = status.get("lastCheckedTime") or status.get("lastAppliedTime")
    if last:
        age = (datetime.now(timezone.utc) - datetime.fromisoformat(last.replace("Z", "+00:00"))).total_seconds()
        if age < spec.drift_check_interval and not stalled_on_integrity:
            return
    try:
        report = verify(db, spec.verify)
    except DbrevError as e:
        L.logger.warning("Drift check: verification could not run", extra={
            "error_type": type(e).__name__, "error_message": e.message, "reason": e.reason})
        return
    verdict = decide.from_check(report, live, status, gen, now_iso())
    carry_out(body, status, verdict, started, raise_unwritten=False)


# ---------------------------------------------------------------------------
# healthgate (issue 13 §1): after a schema change, watch the rollout of spec.healthGate's workloads

EV_AWAITING_WORKLOADS = "AwaitingWorkloads"
EV_HEALTH_GATE_PASSED = "HealthGatePassed"
EV_WORKLOAD_UNHEALTHY = C.WORKLOAD_UNHEALTHY


def _health_gate_begin(verdict: decide.Verdict, spec: Spec, result: RunResult | None, prev: dict,
                       gen: int) -> None:
    """A run that changed the schema starts the gate: Ready=Unknown, Reconciling=True (AwaitingWorkloads)."""
    from .status import PROGRESSING_KIND, READY_KIND, Outcome, compute_conditions

    now = now_iso()
    g = spec.health_gate
    hg = HG.begin(result, g.workloads, g.window, gen, now) if g else None
    if hg and verdict.outcome.kind == READY_KIND:
        out = Outcome(PROGRESSING_KIND, C.AWAITING_WORKLOADS, HG.awaiting_message(hg, hg["message"]))
        dep = L.current_context().get("deployment_id")
        if dep:
            hg["deploymentId"] = dep
        verdict.status["healthGate"] = hg
        verdict.status["conditions"] = compute_conditions(out, gen, verdict.status.get("conditions"), now)
        verdict.outcome = out
        verdict.events.append((decide.NORMAL, EV_AWAITING_WORKLOADS, out.message))
    elif (prev.get("healthGate") or {}).get("phase") in HG.HOLDING:
        verdict.status["healthGate"] = {**prev["healthGate"], "phase": HG.SUPERSEDED, "finishedAt": now}


def _health_gate_tick(body, ns: str, name: str, gen: int, status: dict, spec: Spec) -> None:
    from .status import PROGRESSING_KIND, READY_KIND, STALLED_KIND, Outcome, compute_conditions

    started = time.monotonic()
    hg = status["healthGate"]
    if hg.get("phase") == HG.AWAITING_APPROVAL:
        return  # an approval (a pass) runs the schema downgrade
    now = now_iso()
    try:
        healths = HG.observe(ns, spec.health_gate.workloads)
    except Exception as e:  # noqa: BLE001 - the next tick tries again; the window still runs
        L.logger.warning("Health gate: cannot read the workloads", extra={
            "error_type": type(e).__name__, "error_message": L.redact(str(e))[:300]})
        return
    window = float(hg.get("windowSeconds") or spec.health_gate.window)
    if hg.get("phase") == HG.ROLLING_BACK:
        _health_gate_rolling_back(body, ns, name, gen, status, spec, healths, window, started)
        return
    v = HG.gate(healths, _elapsed(hg["startedAt"]), window)
    if v.state == HG.FAILED and spec.health_gate.on_failure == "Rollback":
        M.health_gate_total.labels(namespace=ns, name=name, result="failed").inc()
        _health_gate_roll_back(body, ns, name, gen, status, spec, v, started)
        return
    st: dict = {"observedGeneration": gen, "healthGate": HG.conclude(hg, v, now)}
    events: list = []
    if v.state == HG.WAITING:
        out = Outcome(PROGRESSING_KIND, C.AWAITING_WORKLOADS, HG.awaiting_message(hg, v.message))
    elif v.state == HG.PASSED:
        out = Outcome(READY_KIND, C.AT_REVISION, f"at revision {hg.get('toRevision')}; the rollout is healthy: "
                                                 f"{v.message}")
        events.append((decide.NORMAL, EV_HEALTH_GATE_PASSED, out.message))
        M.health_gate_total.labels(namespace=ns, name=name, result="passed").inc()
        L.state_transition(hg.get("fromRevision"), hg.get("toRevision"), "health_gate_passed", out.message)
    else:
        out = Outcome(STALLED_KIND, C.WORKLOAD_UNHEALTHY, HG.unhealthy_message(hg, v))
        st["lastError"] = {"reason": C.WORKLOAD_UNHEALTHY, "message": out.message[:4096], "time": now}
        events.append((decide.WARNING, EV_WORKLOAD_UNHEALTHY, out.message))
        M.health_gate_total.labels(namespace=ns, name=name, result="failed").inc()
        L.logger.error("Health gate failed: a workload is unhealthy after the schema change", extra={
            "reason": C.WORKLOAD_UNHEALTHY, "workload": v.workload, "error_message": v.message,
            "from_revision": hg.get("fromRevision"), "to_revision": hg.get("toRevision"), "status": "failed"})
    st["conditions"] = compute_conditions(out, gen, status.get("conditions"), now)
    verdict = decide.Verdict(out, st, events, metric_result=M.RESULT_NOOP)
    carry_out(body, status, verdict, started, count=False, raise_unwritten=False)


def _elapsed(since: str) -> float:
    begun = datetime.fromisoformat(since.replace("Z", "+00:00"))
    return (datetime.now(timezone.utc) - begun).total_seconds()


def _health_gate_roll_back(body, ns, name, gen, status, spec: Spec, v: HG.GateVerdict, started) -> None:
    """onFailure: Rollback, step 1 (application first): patch every named workload back to its previous revision."""
    hg = status["healthGate"]
    frm, to = hg.get("toRevision"), hg.get("fromRevision")  # the schema goes from where the run left it back
    L.logger.error("Health gate failed: a workload is unhealthy after the schema change; rolling back", extra={
        "reason": C.WORKLOAD_UNHEALTHY, "workload": v.workload, "error_message": v.message,
        "from_revision": to, "to_revision": frm, "status": "failed"})
    L.rollback_triggered(HG.TRIGGER, frm, to, trigger="health_gate", workload=v.workload,
                         deployment_id=L.current_context().get("deployment_id"))
    now = now_iso()
    try:
        undos = HG.roll_back_workloads(ns, spec.health_gate.workloads)
    except HG.NoPreviousRevision as e:
        verdict = HG.workloads_not_rolled_back(status, gen, str(e), now, name, ns, patched=False)
    except HG.UndoRefused as e:
        verdict = HG.workloads_not_rolled_back(status, gen, str(e), now, name, ns, patched=False,
                                               partly=[d.text for d in e.done])
    else:
        for u in undos:
            L.logger.warning(f"Rolled back {u.text}", extra={"workload": u.ref, "status": "rolling_back"})
        verdict = HG.rollback_started(status, gen, v, undos, now)
    if verdict.rollback:  # it ended here: the runbook's record of the failure
        L.rollback_executed(frm, to, False, trigger="health_gate", result=verdict.outcome.reason,
                            deployment_id=L.current_context().get("deployment_id"))
    carry_out(body, status, verdict, started, count=False, raise_unwritten=False)


def _health_gate_rolling_back(body, ns, name, gen, status, spec: Spec, healths, window, started) -> None:
    """Step 2: the rolled-back workloads become available (then step 3, the schema), or fail, or run out of time."""
    hg = status["healthGate"]
    now = now_iso()
    v = HG.gate(healths, _elapsed(hg.get("rollbackStartedAt") or hg["startedAt"]), window)
    if v.state == HG.WAITING:
        verdict = HG.rolling_back(status, gen, v.message, now)
        if (verdict.status.get("healthGate") or {}).get("message") == hg.get("message"):
            return
        carry_out(body, status, verdict, started, count=False, raise_unwritten=False)
        return
    if v.state == HG.FAILED:
        verdict = HG.workloads_not_rolled_back(status, gen, f"on their previous revision {v.message}", now, name, ns,
                                               patched=True)
        L.rollback_executed(hg.get("toRevision"), hg.get("fromRevision"), False, trigger="health_gate",
                            result=verdict.outcome.reason, deployment_id=L.current_context().get("deployment_id"))
        carry_out(body, status, verdict, started, count=False, raise_unwritten=False)
        return
    ev = HG.workloads_back(status, v)
    if hg.get("message") != "available":
        post_event(body, *ev)
        L.state_transition(hg.get("toRevision"), hg.get("fromRevision"), "workloads_rolled_back", ev[2])
    meta = (kube.get(ns, name) or body)["metadata"]
    _health_gate_schema(body, {**status, "healthGate": {**hg, "message": "available"}}, spec, meta, started)


def _health_gate_schema(body, status: dict, spec: Spec, meta: dict, started) -> None:
    """Step 3: downgrade the schema to the revision before the run, through the run every pass uses.

    ``engine.apply`` with spec.policy as it is (data loss Deny / Archive, approvals), the approval
    annotation as a normal pass passes it; the verdict of the run (``decide.from_result``) decides the rest.
    """
    ns, name, gen = meta["namespace"], meta["name"], meta.get("generation") or 0
    hg = status["healthGate"]
    frm = hg.get("toRevision")
    dep = L.current_context().get("deployment_id") or hg.get("deploymentId")
    now = now_iso()
    try:
        target = HG.schema_target(status)
        inputs = gather(kube.core(), ns, spec)
    except (HG.NoSchemaTarget, DbrevError) as e:
        why = e.message if isinstance(e, DbrevError) else str(e)
        verdict = HG.schema_not_rolled_back(status, gen, why, now, name, ns)
        L.rollback_executed(frm, hg.get("fromRevision"), False, trigger="health_gate", result=verdict.outcome.reason,
                            deployment_id=dep)
        carry_out(body, status, verdict, started, count=False, raise_unwritten=False)
        return
    approval = (meta.get("annotations") or {}).get(APPROVE_ANNOTATION)
    seen: dict = {}

    def on_event(ev: dict) -> None:
        if ev.get("event") == "plan":
            seen["plan"] = ev["plan"]
            planned = decide.planned_event(ev["plan"], status)
            if planned:
                post_event(body, *planned)
        elif ev.get("event") == "archived":  # dataLoss: Archive — where the dropped rows are kept
            _post_archived(body, ev)

    started_at = now_iso()
    req = RunRequest(db=_db_options(spec, inputs.url), migrations=str(inputs.migrations or ""), target=target,
                     policy=spec.policy, approval=approval, actor=f"operator:{ns}/{name} (health gate rollback)")
    M.active_workers.inc()
    try:
        result = execute(body, spec, inputs, req, on_event, {"namespace": ns, "name": name, "deployment_id": dep,
                                                             "rollback_reason": HG.TRIGGER},
                         run_key=f"{started_at}/health-gate")
        run = decide.from_result(result, status, gen, now_iso(), "health_gate", started_at, seen.get("plan"),
                                 name=name)
    except DbrevError as e:
        from ..core.errors import PolicyRefused

        result = {"result": "refused" if isinstance(e, PolicyRefused) else "failed", "error": e.to_dict()}
        run = decide.from_error(e.to_dict(), status, gen, now_iso(), transient=e.transient)
    finally:
        M.active_workers.dec()
    stamp_history(run.status, started_at, dep)
    verdict = HG.schema_rolled_back(run, result, status, gen, now_iso(), target, spec.revision, name, ns)
    if verdict.rollback:
        L.rollback_executed(frm, target, verdict.rollback[1] == "success", trigger="health_gate",
                            result=verdict.outcome.reason, deployment_id=dep)
    carry_out(body, status, verdict, started, count=False, raise_unwritten=False)


def gather_url(spec: Spec, namespace: str) -> str:
    from .inputs import read_url

    return read_url(kube.core(), namespace, spec)[0]
