"""From what happened in a pass to what the resource shows: pure functions.

Input: the engine's result (or the error that stopped the pass), the previous
status, the generation.  Output: a :class:`Verdict` — the outcome (and so the
conditions), the status fields, the Events to post, the metric updates and,
for transient failures, when to retry.  Handlers only carry it out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core import conditions as C
from ..core import metric_labels as M
from ..core import results as R
from .crd import APPROVE_ANNOTATION, RECONCILE_ANNOTATION
from ..core.results import RunResult
from ..core.text import plan_dict_summary
from .status import (
    PROGRESSING_KIND,
    READY_KIND,
    STALLED_KIND,
    SUSPENDED_KIND,
    TRANSIENT_KIND,
    WAITING_KIND,
    Outcome,
    compute_conditions,
    findings_by_check,
    history_entry,
    integrity_status,
    plan_status,
    push_history,
    revisions_text,
    with_reachability,
)

MAX_BACKOFF = 300.0
BASE_BACKOFF = 5.0

NORMAL = "Normal"
WARNING = "Warning"

# Event reasons (what `kubectl get events` shows).
EV_PLANNED = "Planned"
EV_BLOCKED = "Blocked"
EV_AWAITING_APPROVAL = "AwaitingApproval"
EV_APPLYING = "Applying"
EV_APPLIED = "Applied"
EV_VERIFICATION_FAILED = "VerificationFailed"
EV_MIGRATION_FAILED = "MigrationFailed"
EV_ROLLBACK_TRIGGERED = "RollbackTriggered"
EV_ROLLBACK_EXECUTED = "RollbackExecuted"
EV_ROLLBACK_FAILED = "RollbackFailed"
EV_RETRYING = "Retrying"
EV_INVALID = "InvalidInput"
EV_DRIFT = "DriftDetected"
EV_RECOVERED = "Recovered"
EV_ARCHIVED = "Archived"
EV_DATABASE_UNREACHABLE = "DatabaseUnreachable"
EV_DATABASE_REACHABLE = "DatabaseReachable"
EV_ROLLBACK_NOT_READY = "RollbackNotReady"  # applied, but the rehearsed way back is Broken or Irreversible

# What a human should do, by reason (appended to the condition message).
TODO = {
    C.DOWNGRADE_DENIED: "set spec.policy.downgrade to Allow or RequireApproval, or set spec.revision back",
    C.DATA_LOSS_DENIED: "set spec.policy.dataLoss to Archive (keeps a copy), Allow or RequireApproval, "
                        "or set spec.revision back",
    C.ROLLBACK_NOT_READY: "fix the downgrade() the message names (run `dbrev check` on the scripts), or set "
                          "spec.policy.rehearse to Report",
    C.IRREVERSIBLE_STEP: "the step cannot be undone: write its downgrade() or choose another target",
    C.ROLLED_BACK: "fix the failing migration (update its ConfigMap) or set spec.revision back to the current "
                   "revision",
    C.ROLLBACK_FAILED: "the database is between revisions: inspect it (dbrev current / dbrev verify), fix it by "
                       "hand, then set spec.revision to the revision it is at",
    C.MIGRATION_FAILED: "fix the failing migration (update its ConfigMap) or set spec.revision back",
    C.INTEGRITY_CHECK_FAILED: "fix the findings listed in status.integrity (each says how), or remove the check "
                              "from spec.policy.verify",
    C.REVISION_NOT_FOUND: "set spec.revision to an id that exists in the migrations ConfigMaps",
    C.AMBIGUOUS_REVISION: "use more characters of the revision id",
    C.MULTIPLE_HEADS: "add a merge revision, or target one head (or heads) explicitly",
    C.UNKNOWN_DATABASE_REVISION: "add the scripts for the database's revision to the ConfigMaps",
    C.INVALID_SCRIPTS: "fix the script named in the message and update its ConfigMap",
    C.SCRIPT_CONFLICT: "restore the script that was applied, or remove the changed one so the stored copy is used",
    C.INVALID_DATABASE_URL: "fix the database URL in the Secret",
    C.DATABASE_AUTH_FAILED: "fix the user or password in the Secret",
    C.DATABASE_NOT_FOUND: "create the database, or fix its name in the Secret",
    C.PERMISSION_DENIED: "grant the database user the privilege named in the message",
    C.SECRET_NOT_FOUND: "create the Secret (in this namespace) or fix spec.database",
    C.CONFIGMAP_NOT_FOUND: "create the ConfigMap (in this namespace) or fix spec.migrations.configMapRefs",
    C.CONFLICT: "point only one DatabaseRevision at a database and version table; delete or change the other",
    C.INVALID_SPEC: "fix the spec",
    C.PLAN_CHANGED: "review the new plan",
    C.TIMED_OUT: "raise spec.policy.timeoutSeconds, or make the migration faster (e.g. batch it)",
    C.NO_DBREV_IN_IMAGE: "add dbrev to the application's image (`RUN pip install dbrev`, next to alembic), or "
                         "fix spec.migrations.image.name",
    C.MIGRATIONS_NOT_FOUND: "set spec.migrations.image.path to the image's Alembic script location (the folder "
                            "with env.py) or versions folder",
    C.OUT_OF_MEMORY: "raise the migration pod's memory limit (spec.migrations.image.resources, or the operator's "
                     "DBREV_MIGRATION_MEMORY_LIMIT for ConfigMap scripts), or make the migration use less",
    C.MIGRATION_POD_FAILED: "read the message and the Job's pod (kubectl describe/logs), fix the cause",
}

TRANSIENT_REASONS = frozenset({C.DATABASE_UNAVAILABLE, C.LOCK_BUSY, C.KUBERNETES_UNAVAILABLE,
                               *C.JOB_TRANSIENT_REASONS})

# What started a pass that may run a plan again although the last run's outcome needs a human:
# a changed spec (a new generation), an approval, a changed ConfigMap/Secret (new inputs), the drift
# timer, or someone asking (`dbrev.io/reconcile-requested-at`).  A restart of the operator ("resume")
# or an unrelated edit ("update": labels, other annotations) is none of these.
NOT_A_RETRY = frozenset({"resume", "update"})
# a watched ConfigMap or Secret changed: a retry only when what the plan reads changed (the inputs hash);
# a label or another key changing must not run a standing failed plan again (e.g. after a health-gate rollback)
INPUT_TRIGGERS = ("configmap/", "secret/")
# Outcomes of a run that changed (or tried to change) the database: running the same plan again would
# repeat it.  Other Stalled reasons (a Conflict whose rival is gone, a refusal, bad input) are re-checked.
STANDING_REASONS = frozenset({C.ROLLED_BACK, C.TIMED_OUT, C.MIGRATION_FAILED, C.ROLLBACK_FAILED,
                              # healthgate: a failed gate (and what its Rollback did) is not re-run in a loop
                              C.WORKLOAD_UNHEALTHY, C.ROLLED_BACK_AFTER_HEALTH_CHECK, C.WORKLOAD_ROLLBACK_FAILED,
                              C.SCHEMA_ROLLBACK_BLOCKED})


@dataclass
class Verdict:
    outcome: Outcome
    status: dict
    events: list[tuple[str, str, str]] = field(default_factory=list)
    retry_in: float | None = None
    metric_result: str = M.RESULT_NOOP
    steps: list[tuple[str, str]] = field(default_factory=list)
    rollback: tuple[str, str] | None = None
    findings: dict[str, int] | None = None
    drift: bool | None = None
    reachable: bool | None = None  # whether this pass reached the database (None: it did not try)


def backoff(retry: int) -> float:
    """Capped exponential backoff: 5 s, 10 s, 20 s ... 300 s, forever."""
    return min(MAX_BACKOFF, BASE_BACKOFF * (2 ** max(0, retry)))


def _with_todo(reason: str, message: str) -> str:
    todo = TODO.get(reason)
    return f"{message}. To fix: {todo}" if todo else message


def _base(prev: dict, generation: int) -> dict:
    return {"observedGeneration": generation}


def _finish(outcome: Outcome, prev: dict, generation: int, now: str, status: dict,
            reachable: bool | None = None, reach_message: str = "") -> dict:
    conds = compute_conditions(outcome, generation, prev.get("conditions"), now)
    status["conditions"] = with_reachability(conds, reachable, generation, now, reach_message)
    status.setdefault("observedGeneration", generation)
    return status


def previous_outcome_stands(prev: dict, generation: int, inputs_hash: str, trigger: str) -> bool:
    """True when a pass must not run the plan again: the last run needs a human and nothing changed.

    Same generation, same inputs (scripts, Secret, database) and a Stalled outcome: running it again
    would repeat what failed (a RolledBack or TimedOut plan would be applied and undone once more).
    A spec change, an approval, changed inputs, drift or an explicit request still run.
    """
    if trigger not in NOT_A_RETRY and not trigger.startswith(INPUT_TRIGGERS):
        return False
    stalled = any(c.get("type") == C.STALLED and c.get("status") == "True" and c.get("reason") in STANDING_REASONS
                  for c in prev.get("conditions") or [])
    return (stalled and prev.get("observedGeneration") == generation and bool(inputs_hash)
            and prev.get("inputsHash") == inputs_hash)


def needs_heal(status: dict, generation: int) -> bool:
    """Conditions that say a pass is under way (Progressing/Initializing) when none is: a pass must finish them."""
    rec = [c for c in status.get("conditions") or [] if c.get("type") == C.RECONCILING]
    return bool(rec) and rec[0].get("status") == "True" and rec[0].get("reason") in (C.PROGRESSING, C.INITIALIZING)


def database_unreachable(prev: dict, generation: int, now: str, message: str) -> Verdict | None:
    """The timer could not reach a database whose resource has nothing to do.

    Ready keeps describing the revision; the detail condition, one Warning Event (on the change only,
    so an outage that lasts does not repeat it) and ``dbrev_database_reachable`` report the outage.
    """
    was = [c for c in prev.get("conditions") or [] if c.get("type") == C.DATABASE_REACHABLE]
    conds = with_reachability(prev.get("conditions"), False, generation, now, message)
    events = [] if was and was[0].get("status") == "False" else [(WARNING, EV_DATABASE_UNREACHABLE, message)]
    out = Outcome(TRANSIENT_KIND, C.DATABASE_UNAVAILABLE, message)
    return Verdict(out, {"conditions": conds}, events, None, M.RESULT_TRANSIENT, reachable=False)


def database_reachable_again(prev: dict, generation: int, now: str, message: str) -> Verdict | None:
    """The timer reached the database after it had reported an outage (None when there was none)."""
    was = [c for c in prev.get("conditions") or [] if c.get("type") == C.DATABASE_REACHABLE]
    if not was or was[0].get("status") == "True":
        return None
    conds = with_reachability(prev.get("conditions"), True, generation, now, message)
    out = Outcome(READY_KIND, C.DATABASE_REACHABLE_REASON, message)
    return Verdict(out, {"conditions": conds}, [(NORMAL, EV_DATABASE_REACHABLE, message)], None, M.RESULT_NOOP,
                   reachable=True)


def planned_event(plan: dict, prev: dict) -> tuple[str, str, str] | None:
    """The Event for a newly computed plan (None when it is the plan status already shows)."""
    if not plan.get("steps") or plan.get("hash") == (prev.get("plan") or {}).get("hash"):
        return None
    return (NORMAL, EV_PLANNED,
            f"plan {plan['hash'][:19]}: {plan_dict_summary(plan)}"
            + (f", destructive: {', '.join(plan['destructive'])}" if plan.get("destructive") else ""))


def progressing(prev: dict, generation: int, now: str, message: str, plan: dict | None = None) -> dict:
    """Status to write while a run is under way."""
    st = {"observedGeneration": generation}
    if plan:
        st["plan"] = plan_status(plan, now)
    return _finish(Outcome(PROGRESSING_KIND, C.PROGRESSING, message), prev, generation, now, st)


def suspended(prev: dict, generation: int, now: str) -> Verdict:
    out = Outcome(SUSPENDED_KIND, C.SUSPENDED, "spec.suspend is true: dbrev does not plan or change anything")
    return Verdict(out, _finish(out, prev, generation, now, _base(prev, generation)), metric_result=M.RESULT_WAITING)


def from_error(err: dict, prev: dict, generation: int, now: str, retry: int = 0,
               transient: bool | None = None, run: dict | None = None) -> Verdict:
    """A pass stopped by an error before or instead of a run (bad input, unavailable, busy...).

    ``run`` (``{"plan", "trigger", "started_at", "duration_seconds"}``) when the error ended a run that had
    begun: it is recorded in status.history and a MigrationFailed Event like any failed run.
    """
    reason = err.get("reason") or C.MIGRATION_FAILED
    message = err.get("message") or "failed"
    if err.get("hint"):
        message = f"{message} ({err['hint']})"
    is_transient = reason in TRANSIENT_REASONS if transient is None else transient
    st = _base(prev, generation)
    reachable = False if reason == C.DATABASE_UNAVAILABLE else None
    run_events: list[tuple[str, str, str]] = []
    if run and run.get("plan"):
        plan = run["plan"]
        entry = history_entry(RunResult(from_revisions=plan.get("from_revisions"),
                                        to_revisions=plan.get("to_revisions"), direction=plan.get("direction"),
                                        result=R.RESULT_FAILED, plan_hash=plan.get("hash"),
                                        duration_seconds=run.get("duration_seconds")),
                              run.get("trigger") or "", run.get("started_at") or now)
        st["history"] = push_history(prev.get("history"), entry)
        st["plan"] = plan_status(plan, now)
        run_events.append((WARNING, EV_MIGRATION_FAILED, f"the run of plan {str(plan.get('hash', ''))[:19]} "
                                                         f"stopped: {message}"))
    if is_transient:
        delay = backoff(retry)
        out = Outcome(TRANSIENT_KIND, reason, f"{message}; retrying in {delay:g}s")
        v = Verdict(out, _finish(out, prev, generation, now, st, reachable, message), retry_in=delay,
                    metric_result=M.RESULT_TRANSIENT, reachable=reachable)
        v.events.extend(run_events)
        v.events.append((WARNING, EV_RETRYING, out.message))
        return v
    st["lastError"] = {"reason": reason, "message": message[:4096], "time": now}
    out = Outcome(STALLED_KIND, reason, _with_todo(reason, message))
    v = Verdict(out, _finish(out, prev, generation, now, st), metric_result=M.RESULT_ERROR)
    v.events.extend(run_events)
    if not run_events:
        v.events.append((WARNING, EV_INVALID if reason not in (C.CONFLICT,) else C.CONFLICT, out.message))
    return v


def from_result(result: RunResult, prev: dict, generation: int, now: str, trigger: str, started_at: str,
                plan: dict | None, retry: int = 0, name: str = "<name>") -> Verdict:
    """A run's result (``engine.apply``) to the resource's status, events and metrics."""
    v = _from_result(result, prev, generation, now, trigger, started_at, plan, retry, name)
    if v.reachable is None:
        v.reachable = True  # a result came back: the database answered
    return v


def _from_result(result: RunResult, prev: dict, generation: int, now: str, trigger: str, started_at: str,
                 plan: dict | None, retry: int, name: str) -> Verdict:
    res = result.result
    err = result.error or R.RunError()
    st = _base(prev, generation)
    if result.current_revisions is not None:
        st["currentRevision"] = revisions_text(result.current_revisions)
    if result.to_revisions is not None:
        st["targetRevision"] = revisions_text(result.to_revisions)
    if plan:
        st["plan"] = plan_status(plan, now)
    integ = integrity_status(result.integrity)
    if integ:
        st["integrity"] = integ
    events: list[tuple[str, str, str]] = []
    prev_hash = (prev.get("plan") or {}).get("hash")
    steps = [(s.direction, s.status) for s in result.steps or []]
    rb = result.rollback if result.rollback_triggered else None
    rollback = (rb.reason, "success" if rb.success else "failure") if rb else None
    if res in (R.RESULT_APPLIED, R.RESULT_ROLLED_BACK, R.RESULT_FAILED):
        st["history"] = push_history(prev.get("history"), history_entry(result, trigger, started_at))
    findings = findings_by_check(result.integrity)
    drift = bool(findings.get("drift"))

    if res in (R.RESULT_APPLIED, R.RESULT_NOOP):
        cur = revisions_text(result.current_revisions)
        if res == R.RESULT_APPLIED:
            st["lastAppliedTime"] = now
            msg = (f"at revision {cur}: {result.direction} of {len(result.steps or [])} step(s) in "
                   f"{float(result.duration_seconds or 0):.1f}s, verified")
            events.append((NORMAL, EV_APPLIED, msg))
            rr = result.rollback_readiness
            if rr:  # rehearsed before commit (dbrev.engine.rehearse)
                st["rollbackReadiness"] = {
                    "status": rr.get("status", ""), "message": str(rr.get("message", ""))[:1024],
                    "revision": cur, "from": revisions_text(result.from_revisions),
                    "step": rr.get("step") or "", "location": rr.get("location") or "", "time": now}
                if rr.get("status") in ("Broken", "Irreversible"):
                    events.append((WARNING, EV_ROLLBACK_NOT_READY,
                                   f"the way back from {cur} is {rr['status']}: {str(rr.get('message'))[:900]}"))
        else:
            msg = f"at revision {cur}, verified"
            was = (prev.get("conditions") and [c for c in prev["conditions"] if c.get("type") == C.READY]) or []
            if was and was[0].get("status") != "True" and was[0].get("reason") not in (C.INITIALIZING,):
                events.append((NORMAL, EV_RECOVERED, msg))
        if drift:
            d = [f for f in result.integrity["findings"] if f["check"] == "drift"][0]
            events.append((WARNING, EV_DRIFT, d["message"]))
        st["lastError"] = None
        out = Outcome(READY_KIND, C.AT_REVISION, msg)
        return Verdict(out, _finish(out, prev, generation, now, st, True), events, None,
                       M.RESULT_APPLIED if res == R.RESULT_APPLIED else M.RESULT_NOOP, steps, rollback, findings, drift,
                       reachable=True)

    if res == R.RESULT_REFUSED:
        decision = result.decision or {}
        reason = err.reason or decision.get("reason") or C.DOWNGRADE_DENIED
        message = err.message or decision.get("message") or "refused by policy"
        if decision.get("awaiting_approval"):
            h = (plan or {}).get("hash", "")
            out = Outcome(WAITING_KIND, C.AWAITING_APPROVAL,
                          f"{message}. To approve: kubectl annotate databaserevision {name} --overwrite "
                          f"dbrev.io/approve={h} (or: dbrev approve {name})")
            if prev_hash != h or not _was(prev, C.READY, C.AWAITING_APPROVAL):
                events.append((NORMAL, EV_AWAITING_APPROVAL, out.message))
            return Verdict(out, _finish(out, prev, generation, now, st, True), events, None, M.RESULT_WAITING,
                           steps, rollback, findings or None, None)
        st["lastError"] = {"reason": reason, "message": message[:4096], "time": now}
        out = Outcome(STALLED_KIND, reason, _with_todo(reason, message))
        if not _was(prev, C.STALLED, reason) or prev_hash != (plan or {}).get("hash"):
            events.append((WARNING, EV_BLOCKED, out.message))
        return Verdict(out, _finish(out, prev, generation, now, st, True), events, None, M.RESULT_REFUSED,
                       steps, rollback, findings or None, None)

    # rolled_back or failed
    reason = err.reason or C.MIGRATION_FAILED
    where = f" at {err.location}" if err.location else ""
    step = f" in {err.direction or ''} {err.step}" if err.step else ""
    what = f"{err.message if err.message is not None else 'the run failed'}{step}{where}"
    integrity_failed = reason == C.INTEGRITY_CHECK_FAILED
    if integrity_failed:
        events.append((WARNING, EV_VERIFICATION_FAILED, what))
    else:
        events.append((WARNING, EV_MIGRATION_FAILED, what))
    if rb:
        events.append((WARNING, EV_ROLLBACK_TRIGGERED,
                       f"rolling back to {revisions_text(result.from_revisions)} ({rb.reason})"))
        if rb.success:
            events.append((NORMAL, EV_ROLLBACK_EXECUTED,
                           f"rolled back to {revisions_text(result.current_revisions)} by "
                           f"{'transaction rollback' if rb.method == R.TRANSACTION else 'inverse steps'}, "
                           f"verified"))
        else:
            events.append((WARNING, EV_ROLLBACK_FAILED, f"rollback failed; the database is at "
                           f"{revisions_text(result.current_revisions)}"))
    st["lastError"] = {"reason": reason, "message": what[:4096], "step": err.step or "",
                       "location": err.location or "", "time": now}
    if reason in TRANSIENT_REASONS:
        delay = backoff(retry)
        cur = result.current_revisions
        where = (f"the database is at {revisions_text(cur)}" if cur is not None
                 else "where the database is will be read on the next try")
        out = Outcome(TRANSIENT_KIND, reason, f"{what}; {where}; retrying in {delay:g}s")
        lost = reason == C.DATABASE_UNAVAILABLE
        return Verdict(out, _finish(out, prev, generation, now, st, False if lost else True, what), events, delay,
                       M.RESULT_TRANSIENT, steps, rollback, findings or None, drift, reachable=not lost)
    if res == R.RESULT_ROLLED_BACK:
        # a run stopped from outside (its deadline, its pod's memory limit) names that cause, not RolledBack
        cond_reason = reason if reason in (C.TIMED_OUT, C.OUT_OF_MEMORY, C.MIGRATION_POD_FAILED) else C.ROLLED_BACK
        msg = (f"{what}; rolled back to {revisions_text(result.current_revisions)}"
               + (" (verification failed)" if integrity_failed else ""))
        # a worker that died says its own cause and hint: no migration failed, so no "fix the migration"
        out = Outcome(STALLED_KIND, cond_reason, _with_todo(cond_reason, msg) if cond_reason == C.OUT_OF_MEMORY
                      else msg if err.error_type == "WorkerDied" else _with_todo(cond_reason, msg))
        metric = M.RESULT_ROLLED_BACK
    else:
        cond_reason = C.ROLLBACK_FAILED if (rb and not rb.success) else reason
        msg = f"{what}; the database is at {revisions_text(result.current_revisions)}"
        out = Outcome(STALLED_KIND, cond_reason, msg if err.error_type == "WorkerDied"
                      else _with_todo(cond_reason, msg))
        metric = M.RESULT_FAILED
    return Verdict(out, _finish(out, prev, generation, now, st, True), events, None, metric, steps, rollback,
                   findings or None, drift)


def from_check(report: dict, heads, prev: dict, generation: int, now: str) -> Verdict:
    """A drift/integrity check on the timer (no migration ran)."""
    st = _base(prev, generation)
    st["integrity"] = integrity_status(report)
    st["lastCheckedTime"] = now
    findings = findings_by_check(report)
    drift = bool(findings.get("drift"))
    events = []
    prev_findings = {(f.get("check"), f.get("object")) for f in (prev.get("integrity") or {}).get("findings", [])}
    new = [f for f in report.get("findings", []) if (f["check"], f["object"]) not in prev_findings]
    for f in new[:5]:
        events.append((WARNING, EV_DRIFT if f["check"] == "drift" else EV_VERIFICATION_FAILED, f["message"]))
    if report.get("passed"):
        out = Outcome(READY_KIND, C.AT_REVISION, f"at revision {revisions_text(heads)}, verified"
                      + ("; the schema drifted from the one recorded at this revision" if drift else ""))
        result = M.RESULT_NOOP
    else:
        errors = [f for f in report.get("findings", []) if f.get("severity") == "error"]
        msg = f"verification of {revisions_text(heads)} found {len(errors)} problem(s): " + "; ".join(
            f["message"] for f in errors[:3])
        st["lastError"] = {"reason": C.INTEGRITY_CHECK_FAILED, "message": msg[:4096], "time": now}
        out = Outcome(STALLED_KIND, C.INTEGRITY_CHECK_FAILED, _with_todo(C.INTEGRITY_CHECK_FAILED, msg))
        result = M.RESULT_FAILED
    return Verdict(out, _finish(out, prev, generation, now, st, True), events, None, result, [], None, findings,
                   drift, reachable=True)


def _was(prev: dict, ctype: str, reason: str) -> bool:
    for c in prev.get("conditions") or []:
        if c.get("type") == ctype:
            return c.get("reason") == reason and (ctype != C.STALLED or c.get("status") == "True")
    return False


# -- what started a pass, and who owns a database (from Kopf's diff and index; pure) ------------

def changed_annotations(diff) -> dict[str, str | None]:
    """Annotation keys whose value a Kopf diff changed, with their new values."""
    out: dict[str, str | None] = {}
    for _op, path, old, new in diff or ():
        path = tuple(path)
        old_map, new_map = {}, {}
        if path[:2] == ("metadata", "annotations") and len(path) == 3:
            old_map, new_map = {path[2]: old}, {path[2]: new}
        elif path in ((), ("metadata",), ("metadata", "annotations")):
            depth = {(): 2, ("metadata",): 1, ("metadata", "annotations"): 0}[path]

            def pick(v):
                for key in ("metadata", "annotations")[2 - depth:]:
                    v = (v or {}).get(key) if isinstance(v, dict) else None
                return v or {}
            old_map, new_map = pick(old), pick(new)
        for k in set(old_map) | set(new_map):
            if old_map.get(k) != new_map.get(k):
                out[k] = new_map.get(k)
    return out


def trigger_of(cause: str, diff) -> str:
    """What started this pass: create, resume, spec, approval, configmap/<name>, secret/<name>, drift..."""
    if cause != "update":
        return cause
    if any(tuple(path)[:1] == ("spec",) or (tuple(path) == () and (old or {}).get("spec") != (new or {}).get("spec"))
           for _op, path, old, new in diff or ()):
        return "spec"
    changed = changed_annotations(diff)
    if APPROVE_ANNOTATION in changed:
        return "approval"
    if changed.get(RECONCILE_ANNOTATION):
        return changed[RECONCILE_ANNOTATION].split(" ", 1)[-1] or "requested"
    return "update"


def conflicting_owner(index, key: str, namespace: str, name: str, created: str) -> str | None:
    """The older resource (namespace/name) that manages the database ``key`` too, if any: the oldest one wins."""
    if not key or index is None:
        return None
    mine = (created or "", namespace, name)
    for other in index.get(key, []):
        if (other[1], other[2]) == (namespace, name):
            continue
        if (other[0] or "", other[1], other[2]) < mine:
            return f"{other[1]}/{other[2]}"
    return None
