"""The one place that rolls a run back, and proves it.

Every way back goes through here and ends in the run's :class:`~dbrev.core.results.Rollback`:

* :meth:`Undo.transaction`: a single-transaction run is undone by ``ROLLBACK`` (a failed step, a failed
  check, a rehearsal that refuses the way back);
* :meth:`Undo.inverse_steps`: a per-step run (or one whose steps env.py committed) is undone by running the
  inverse steps back to the starting revision, with one :class:`~dbrev.engine.execution.StepExecution` (no second
  runner), putting archived rows back in the step that re-makes their table;
* :func:`recover_after_death` (:func:`after_timeout`): the process that ran the apply (a worker, a migration
  Job's pod) is gone without a result: close its journal row, drop what an interrupted concurrent index build
  left, and bring the database back to the start, by running the inverse as a new apply the way the first ran
  (``rerun``: the worker or the Job is only the transport).

Inside a run every rollback proves its rows (:meth:`Undo.prove`: exact counts of the tables the plan touches
against the pre-run snapshot), and logs ``rollback_triggered`` / ``rollback_executed``.  The ``dbrev rollback``
verb (:mod:`dbrev.engine.rollback`) is a different thing: a person's downgrade, run as an apply.
"""

from __future__ import annotations

import time
from typing import Callable

from sqlalchemy.engine import Connection

from ..core import conditions as C
from ..pg import integrity, state
from ..core import log as L
from ..core import results as R
from ..core.errors import DbrevError, PolicyRefused
from .execution import Checks, Emit, StepExecution, plan_facts
from ..core.options import ALLOW, Policy, RunRequest
from ..core.planning import Plan
from ..core.policy import evaluate
from ..core.results import RESULT_FAILED, RESULT_ROLLED_BACK, Rollback, RunError, RunResult, StepRecord
from .scripts import ScriptSet
from ..core.text import revisions_text


def quietly_failed(message: str, e: BaseException) -> None:
    """A clean-up step failed while another failure is being reported: one log line, not silence."""
    L.logger.warning(message, extra={"error_type": type(e).__name__,
                                     "error_message": L.redact(str(e).splitlines()[0] if str(e) else "")})


def rollback_quietly(conn: Connection) -> None:
    """End the failed transaction; a session already gone (the failure itself) is logged, not raised."""
    try:
        conn.rollback()
    except Exception as e:  # noqa: BLE001 - the failure being handled is the one to report
        quietly_failed("Could not roll back the failed transaction", e)


def _first_line(e: BaseException) -> str:
    return L.redact(str(e).splitlines()[0] if str(e) else "")


class Undo:
    """A rollback inside a run.

    Inputs: the request and the event sink; ``checks`` (the run's view of its database); the scripts and
    their graph; ``journal`` (the inverse steps are recorded in the run's row); ``snap`` (the pre-run
    snapshot: what the rollback proves it put back); ``conflicts`` (the stored-script conflicts the run's
    plan was made with, for the inverse plan).  Output: ``result``, the run's, which gets the
    :class:`Rollback`, the final revisions, the outcome and, when the proof fails, RollbackFailed.
    """

    def __init__(self, req: RunRequest, emit: Emit, checks: Checks, scripts: ScriptSet, result: RunResult, *,
                 journal: state.Journal | None, snap: dict | None, conflicts):
        self.req = req
        self.emit = emit
        self.checks = checks
        self.scripts = scripts
        self.graph = scripts.graph
        self.result = result
        self.journal = journal
        self.snap = snap
        self.conflicts = conflicts

    # -- the proof -------------------------------------------------------------------
    def prove(self, conn: Connection, start) -> tuple[dict, list[str]]:
        """Verify the database after a rollback: (the report, the tables rows are missing from).

        Only findings new since the pre-run snapshot count (what was already there is reported, never
        blamed on the rollback), and the rows are proven back: exact counts of the tables the plan touches
        against the snapshot's."""
        ck = self.checks
        conn.commit()
        snap = self.snap or {"findings": [], "touched_exact": {}}
        with conn.begin():
            heads = ck.heads(conn)
            with L.timed("verify", from_revision=L.revs(heads), to_revision=L.revs(start)):
                findings, fp, _ = ck.catalog_and_drift(conn, heads)
                if not self.graph.same_state(heads, start):
                    findings.append(integrity.Finding(
                        "version", ck.vt, 1, "error",
                        f"after the rollback the version table holds {state.revisions_key(heads)}, not the "
                        f"starting {state.revisions_key(start)}"))
                before = snap.get("touched_exact") or {}
                missing = integrity.rollback_row_findings(before, integrity.exact_counts(conn, before.keys()))
                findings += missing
        new = integrity.new_findings(snap["findings"], findings)
        report = integrity.IntegrityReport.of(findings, fp).to_dict()
        report["new_findings"] = [f.to_dict() for f in new]
        report["passed"] = not any(f.severity == "error" for f in new)
        report["rows_checked"] = len(before)
        return report, [f.object for f in missing]

    def _failed(self) -> None:
        r = self.result
        r.result = RESULT_FAILED
        if r.error is None:
            r.error = RunError()
        r.error.reason = C.ROLLBACK_FAILED

    @staticmethod
    def _message(rollback: Rollback, left: list[dict], missing: list[str]) -> str:
        parts = []
        if rollback.error:
            parts.append(f"the inverse steps failed: {rollback.error.message}")
        if missing:
            parts.append(f"rows that existed before the run are missing from {', '.join(missing)}")
        if left:
            parts.append("archived data was not put back: " + ", ".join(
                f"{e['archive_schema']}.{e['archive_table']} ({e['rows']} rows of {e['source_schema']}."
                f"{e['source_table']})" for e in left))
        errs = [f["message"] for f in (rollback.integrity or {}).get("new_findings", [])
                if f["severity"] == "error" and f["check"] != "rowCounts"]
        if errs:
            parts.append("verification after the rollback failed: " + "; ".join(errs[:3]))
        return "; ".join(parts) or "the rollback did not reach the starting revision"

    # -- one transaction ---------------------------------------------------------------
    def transaction(self, conn: Connection, trans, plan: Plan, trigger: str, result: str, error: RunError, *,
                    step_t0: float | None, integrity: dict | None = None, verdict: bool = True,
                    **log) -> RunResult:
        """Undo a single-transaction run by ROLLBACK (``trans``, unless it is already rolled back) and prove it.

        The steps that ran are rolled back; the one that failed (``error.step``, begun at ``step_t0``) is
        recorded as failed; ``integrity``: the report the run ends with (the check that failed), else the
        proof's.  ``verdict``: a proof that fails makes the run failed (RollbackFailed)."""
        start, target = plan.from_revisions, plan.to_revisions
        if trans is not None:
            trans.rollback()
        L.rollback_triggered(trigger, target, start, **log)
        r = self.result
        for s in r.steps:
            s.status = R.ROLLED_BACK
        if trigger == R.MIGRATION_FAILURE and error.step:
            r.steps.append(StepRecord(error.step, error.direction, R.FAILED, round(
                time.monotonic() - step_t0 if step_t0 is not None else time.monotonic(), 3)))
        after, missing = self.prove(conn, start)
        L.rollback_executed(target, start, after["passed"], method=R.TRANSACTION)
        r.result, r.error, r.current_revisions = result, error, list(self.checks.heads(conn))
        r.integrity = integrity if integrity is not None else after
        r.rollback = Rollback(reason=trigger, method=R.TRANSACTION, success=after["passed"], integrity=after)
        if verdict and not r.rollback.success:
            # a ROLLBACK whose proof failed (rows missing, new errors: someone else's writes) is not a success
            r.rollback.message = self._message(r.rollback, [], missing)
            self._failed()
        conn.commit()
        return r

    # -- inverse steps -------------------------------------------------------------------
    def inverse_steps(self, conn: Connection, start, target, reason: str, report: dict | None) -> RunResult:
        """Undo a run whose steps were committed by running the inverse steps back to ``start``, and prove it.

        ``report``: the failed verification that triggered it (None: a failed step).  The rows the run's
        steps archived are restored in the transaction of the inverse step that re-makes their table."""
        ck, r = self.checks, self.result
        heads = ck.heads(conn)
        conn.commit()
        r.current_revisions = list(heads)
        if report is not None:
            r.integrity = report
        self._settle_archived(conn)
        if not self.req.policy.rollback_on_failure:
            L.state_transition(start, heads, "failed", message="Migration failed; rollback disabled by policy")
            r.result = RESULT_FAILED
            if not r.integrity:
                with conn.begin():
                    r.integrity = ck.verify_now(conn, heads, record=False)
            return r
        L.rollback_triggered(reason, heads, start, failed_revision=r.error.step if r.error else None)
        rollback = Rollback(reason=reason, method=R.INVERSE_STEPS, steps=[])
        ex: StepExecution | None = None
        restored: list[dict] = []
        pending: dict[str, list[dict]] = {}
        if self.graph.same_state(heads, start):
            rollback.success = True
        else:
            try:
                inverse = ck.plan_between(self.scripts, heads, start, self.conflicts)
                rollback.transaction = inverse.transaction
                refusal, facts, archive = self._policy(conn, inverse)
                if refusal is not None:
                    raise refusal
                pending = self._restorable(conn)
                ex = StepExecution(self.req, self._emit_rollback, self.scripts, inverse, RunResult.started(),
                                   journal=self.journal, single=False, archive=archive, facts=facts, snap=self.snap)
                steps = ex.steps()
                step_done = ex.on_step_done([])

                def callback(ctx, step, heads, run_args):
                    step_done(ctx, step, heads, run_args)
                    # put back what the forward step removed, in the transaction of the step that re-made it
                    from ..pg import archive

                    for entry in pending.pop(ex.current[0], []):
                        restored.append(archive.restore(ctx.connection, entry, ck.schema))

                conn.commit()
                with L.timed("rollback", from_revision=L.revs(heads), to_revision=L.revs(start)):
                    if inverse.transaction == "single":
                        with conn.begin():
                            ex.execute(steps, callback, False, conn)
                    else:
                        ex.execute(steps, callback, True, conn)
                conn.commit()
                rollback.success = True
            except BaseException as e:  # noqa: BLE001
                rollback_quietly(conn)
                L.log_error("Rollback failed", e, from_revision=L.revs(heads), to_revision=L.revs(start))
                rollback.success = False
                rollback.error = RunError(error_type=type(e).__name__, message=_first_line(e),
                                          reason=e.reason if isinstance(e, DbrevError) else None)
                if ex is not None:
                    rec = ex.failed_record()
                    if rec is not None:
                        ex.result.steps.append(rec)
            if ex is not None:
                rollback.steps = ex.result.steps  # what ran, not what was planned
                if ex.result.archived:
                    rollback.archived = ex.result.archived
        if restored:
            rollback.restored = restored
        left = [e for entries in pending.values() for e in entries]
        after, missing = self.prove(conn, start)
        rollback.integrity = after
        rollback.success = bool(rollback.success) and after["passed"] and not left
        if not rollback.success:
            rollback.message = self._message(rollback, left, missing)
        now = ck.heads(conn)
        conn.commit()
        L.rollback_executed(heads, start, rollback.success, method=R.INVERSE_STEPS)
        for s in r.steps:
            if s.status == R.APPLIED and rollback.success:
                s.status = R.ROLLED_BACK
        r.rollback, r.current_revisions = rollback, list(now)
        r.result = RESULT_ROLLED_BACK if rollback.success else RESULT_FAILED
        if r.integrity is None:
            r.integrity = after
        if not rollback.success:
            self._failed()
        return r

    def _emit_rollback(self, ev: dict) -> None:
        """The inverse steps report as rollback_step_*, not as a new apply."""
        if str(ev.get("event", "")).startswith("step_"):
            ev = {**ev, "event": "rollback_" + ev["event"]}
        self.emit(ev)

    def _settle_archived(self, conn: Connection) -> None:
        """Archives taken in a step whose transaction rolled back never existed: report only the others."""
        if not self.result.archived:
            return
        from ..pg import archive

        with conn.begin():
            kept = {e["id"] for e in archive.list_archives(conn, self.checks.schema, self.checks.vt)}
        self.result.archived = [a for a in self.result.archived if a["id"] in kept] or None

    def _restorable(self, conn: Connection) -> dict[str, list[dict]]:
        """This run's archives, by the revision whose inverse step re-makes what they hold (newest first)."""
        ids = {a["id"] for a in self.result.archived or []}
        if not ids:
            return {}
        from ..pg import archive

        with conn.begin():
            entries = [e for e in archive.list_archives(conn, self.checks.schema, self.checks.vt) if e["id"] in ids]
        out: dict[str, list[dict]] = {}
        for e in sorted(entries, key=lambda e: e["id"], reverse=True):
            out.setdefault(e["revision"], []).append(e)
        return out

    def _policy(self, conn: Connection, inverse: Plan):
        """A rollback never escalates the data-loss policy: the inverse steps run under the run's own.
        What they would remove that existed before the run is archived (Archive), or refused (Deny,
        RequireApproval: a person decides; the database stays where it is).

        Returns (the refusal or None, the facts decided on, whether to archive)."""
        with conn.begin():
            facts = plan_facts(conn, inverse, before=self.snap)
        pol = self.req.policy
        d = evaluate(inverse, Policy(downgrade=ALLOW, data_loss=pol.data_loss, rollback_on_failure=False,
                                     verify=pol.verify), None, facts)
        if d.allowed:
            return None, facts, d.archive
        return PolicyRefused(f"the rollback would remove data that existed before the run ({d.message})",
                             reason=d.reason,
                             hint="the database is left where the failure left it; restore or allow by hand"), \
            facts, d.archive


# ---------------------------------------------------------------------------------------------
# After the process that ran the apply is gone (a dead or timed-out worker, a migration Job's pod)

def after_timeout(req: RunRequest, state: dict, timeout: float, elapsed: float,
                  rerun: Callable[[RunRequest], RunResult] | None, tail=None) -> RunResult:
    """dbrev killed the worker when the run passed ``timeout``: :func:`recover_after_death`, reason TimedOut."""
    L.logger.error("Worker timed out and was killed", extra={"timeout_s": timeout, "duration_ms": round(elapsed * 1000, 2),
                                                            "operation": "apply"})
    return recover_after_death(req, state, f"the run passed its {timeout:g}s timeout and was killed by dbrev", elapsed,
                               rerun, reason=C.TIMED_OUT, tail=tail)


def way_back(req: RunRequest, start) -> RunRequest:
    """The apply that takes the database from where a dead run left it back to ``start``."""
    return RunRequest(db=req.db, migrations=req.migrations, target=revisions_text(start),
                      # a rollback never escalates the data-loss policy
                      policy=Policy(downgrade="Allow", data_loss=req.policy.data_loss, rollback_on_failure=False,
                                    verify=req.policy.verify, repair_sequences=req.policy.repair_sequences,
                                    rehearse="Never"),
                      actor=f"{req.actor} (rollback)", pythonpath=req.pythonpath, use_env_py=req.use_env_py)


def recover_after_death(req: RunRequest, state: dict, message: str, elapsed: float,
                        rerun: Callable[[RunRequest], RunResult] | None, reason: str = C.MIGRATION_FAILED,
                        tail=None, error_type: str | None = None) -> RunResult:
    """The process that ran ``req`` (a worker, a migration Job's pod) is gone without a result: stop its
    session, look where the database is, return it to the start if needed.

    ``state``: what is known of the run (``plan``, ``journal``, ``backend_pid``, ``invalid_indexes``,
    ``steps_started``). ``rerun`` runs the way back (a per-step run that had committed steps) the way
    ``req`` ran, or None to leave the database where it is. Nothing is claimed before it is checked: what an
    interrupted ``CREATE INDEX CONCURRENTLY`` left (an INVALID index that was not there before the run) is
    dropped, or reported when it cannot be.
    """
    from ..pg.db import connection, read_heads
    from ..pg.db import end_sessions

    end_sessions(req.db, pid=state.get("backend_pid"))
    plan = state.get("plan")
    L.logger.error("The worker ended without a result", extra={"reason": reason, "error_message": message,
                                                               "output_tail": list(tail or [])})
    try:
        with connection(req.db) as conn:
            heads = read_heads(conn, req.db.version_table, req.db.version_table_schema)
            conn.commit()
            if state.get("journal"):  # the journal row says how the run ended, not "running"
                from ..pg.state import close_run

                try:
                    close_run(conn, state["journal"]["schema"], state["journal"]["run_id"],
                              "timed_out" if reason == C.TIMED_OUT else "died", message)
                    conn.commit()
                except Exception:  # noqa: BLE001 - the next run then reports it as interrupted
                    conn.rollback()
    except DbrevError:
        heads = None
    error = RunError(reason=reason, error_type=error_type or ("WorkerTimeout" if reason == C.TIMED_OUT else "WorkerDied"),
                     message=message, details={"output_tail": list(tail)} if tail else None)
    result = RunResult(result=RESULT_FAILED, current_revisions=list(heads) if heads is not None else None,
                       duration_seconds=round(elapsed, 3), error=error, warnings=[], shown=("current_revisions",))
    leftovers = _interrupted_builds(req.db, state) if heads is not None else {"dropped": [], "left": []}
    if leftovers["dropped"]:
        result.warn("dropped the INVALID index(es) an interrupted concurrent build left: "
                    + ", ".join(leftovers["dropped"]))
    if leftovers["left"]:
        result.warn("INVALID index(es) left by an interrupted concurrent build could not be "
                    "dropped: " + ", ".join(leftovers["left"]) + " (DROP INDEX CONCURRENTLY them)")
    if plan:
        result.from_revisions, result.to_revisions = plan["from_revisions"], plan["to_revisions"]
        result.direction, result.plan_hash, result.transaction = plan["direction"], plan["hash"], plan["transaction"]
        result.steps = []
    if plan is None or heads is None:
        return result
    start = sorted(plan["from_revisions"])
    trigger = R.TIMEOUT if reason == C.TIMED_OUT else R.WORKER_DIED
    if sorted(heads) == start:
        # single transaction, or nothing committed yet: PostgreSQL rolled it back
        ok = not leftovers["left"]
        L.rollback_executed(plan["to_revisions"], start, ok, method=R.TRANSACTION)
        result.rollback = Rollback(reason=trigger, method=R.TRANSACTION, success=ok,
                                   cleanup=leftovers if leftovers["dropped"] or leftovers["left"] else None)
        result.result = RESULT_ROLLED_BACK if ok else RESULT_FAILED
        return result
    if not (rerun and req.policy.rollback_on_failure):
        return result
    L.rollback_triggered(trigger, heads, start)
    try:
        sub = rerun(way_back(req, start))
        ok = sub.result in (R.RESULT_APPLIED, R.RESULT_NOOP)
        result.rollback = Rollback(reason=trigger, method=R.INVERSE_STEPS, success=ok, steps=sub.steps or [],
                                   integrity=sub.integrity, shown=("integrity",),
                                   # e.g. DataLossDenied: the undo would lose data
                                   error=sub.error if not ok else None)
        result.current_revisions = sub.current_revisions
        if ok:
            result.result = RESULT_ROLLED_BACK
    except DbrevError as e:
        result.rollback = Rollback(reason=trigger, method=R.INVERSE_STEPS, success=False, error=RunError.of(e))
    L.rollback_executed(heads, start, result.rollback.success, method=R.INVERSE_STEPS)
    return result


def _interrupted_builds(db, state: dict) -> dict:
    """Drop the INVALID indexes that appeared during the run (an interrupted concurrent build); report the rest."""
    import sqlalchemy as sa

    from ..pg.db import connection, invalid_indexes, quote_ident
    from ..core.redact import redact

    out: dict = {"dropped": [], "left": []}
    try:
        with connection(db, autocommit=True) as conn:
            now = invalid_indexes(conn)
            before = state.get("invalid_indexes")
            if before is None:
                # no baseline: report them, drop nothing that may have been there before
                out["left"] = [i for i in now if state.get("steps_started")]
                return out
            for name in sorted(set(now) - set(before)):
                schema, _, index = name.partition(".")
                try:
                    conn.execute(sa.text(f"DROP INDEX CONCURRENTLY IF EXISTS {quote_ident(schema)}."
                                         f"{quote_ident(index)}"))
                    out["dropped"].append(name)
                    L.logger.warning("Dropped an INVALID index left by an interrupted concurrent build",
                                     extra={"index": name})
                except Exception as e:  # noqa: BLE001
                    out["left"].append(name)
                    L.logger.error("Could not drop an INVALID index left by an interrupted build",
                                   extra={"index": name, "error_message": redact(str(e))})
    except DbrevError:
        pass
    return out
