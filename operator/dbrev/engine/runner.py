"""One apply, start to finish, against a live database (runs inside the worker process).

Under the advisory lock: observe the live revision, plan, apply the policy,
snapshot integrity, run the steps, verify, and roll back by itself when a
step or a check fails.

* ``single`` transaction (the default on PostgreSQL): the steps *and the
  verification* run in one transaction, so a failed step or a failed check is
  undone by ``ROLLBACK`` and the database is exactly where it started.
* ``per-step`` (a step needs autocommit): each step commits; a failure is
  undone by running the inverse steps back to the starting revision, which is
  then verified again.

The steps run in a :class:`~dbrev.engine.execution.StepExecution`; both ways back (and the
one after a dead worker) are :mod:`dbrev.engine.undo`'s.
"""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..core import conditions as C
from ..core import log as L
from ..core import results as R
from ..core.errors import Busy, DbrevError, PlanChanged
from ..core.options import RunRequest
from ..core.planning import Plan, StoredCopies, hash_matches
from ..core.policy import Decision, Facts, evaluate
from ..core.results import (RESULT_APPLIED, RESULT_FAILED, RESULT_NOOP, RESULT_REFUSED, RESULT_ROLLED_BACK, RunError,
                            RunResult, StepRecord)
from ..pg import integrity, state
from ..pg.db import acquire_lock, connect, is_lock_timeout, quote_ident, server_info, unlock
from . import rehearse
from .execution import Checks, Emit, StepExecution, online_refusal, plan_facts, step_error
from .scripts import ScriptSet, load_folder
from .undo import Undo, quietly_failed, rollback_quietly
from .verbs import plan_against, stored_copies

class Runner:
    """One apply's phases over the state declared here; the steps run in a :class:`StepExecution`, every
    way back goes through :class:`~dbrev.engine.undo.Undo`."""

    def __init__(self, req: RunRequest, emit: Emit):
        self.req = req
        self.emit = emit
        self.db = req.db
        self.checks = Checks(req)
        self.vt = self.checks.vt
        self.schema = self.checks.schema
        self.result = RunResult.started()
        # what the run learns as it goes (read back by the later phases)
        self.graph = None  # the scripts' graph, once loaded
        self.plan: Plan | None = None
        self.journal: state.Journal | None = None
        self.archive = False  # the policy's Archive decision: copy what destructive steps remove
        self.conflicts: list[str] = []  # declared scripts that differ from the stored copies
        self.execution: StepExecution | None = None  # the run's steps, once they are about to run
        self._facts_of_plan: Facts | None = None
        self._snap: dict | None = None  # the pre-run snapshot
        self._new_fp: tuple | None = None  # the fingerprint after the steps, recorded when they verify
        self._own_trans = None  # dbrev's own transaction of a single-transaction run

    @property
    def external_connection(self) -> bool:
        """env.py ran the steps on a connection (or transaction) not dbrev's."""
        return self.execution is not None and self.execution.external_connection

    def _execution(self, scripts: ScriptSet, plan: Plan, single: bool) -> StepExecution:
        self.execution = StepExecution(self.req, self.emit, scripts, plan, self.result, journal=self.journal,
                                       single=single, archive=self.archive, facts=self._facts_of_plan,
                                       snap=self._snap)
        return self.execution

    def _undo(self, scripts: ScriptSet) -> Undo:
        """The one way back of this run: its request, checks, scripts, result, journal and snapshot."""
        return Undo(self.req, self.emit, self.checks, scripts, self.result, journal=self.journal, snap=self._snap,
                    conflicts=self.conflicts)

    def _current_step(self) -> tuple | None:
        return self.execution.current if self.execution is not None else None

    # -- the run ---------------------------------------------------------------
    def run(self) -> RunResult:
        """load → lock → observe → plan → decide → (refuse | nothing to do | execute: protect, steps, verify,
        roll back) → report (see _run_plan); each phase below is a method whose inputs and outputs are its arguments and result."""
        t0 = time.monotonic()
        scripts = self._load()
        engine, conn = connect(self.db)
        jengine, jconn = None, None
        locked = False
        try:
            self._lock(conn)
            locked = True
            stored, current, recorded = self._observe(conn, scripts)
            plan, scripts = self._plan(scripts, current, stored, recorded)
            decision = self._decide(conn, plan)
            if not decision.allowed:
                return self._refused(decision, t0)
            if plan.is_noop:
                return self._noop(conn, current, t0)
            jengine, jconn = connect(self.db, autocommit=True)
            out = self._run_plan(conn, jconn, scripts, plan, decision)
            out.duration_seconds = round(time.monotonic() - t0, 3)
            return out
        finally:
            if locked:
                try:
                    conn.rollback()
                    unlock(conn, self.db.lock_key)
                    conn.commit()
                except Exception as e:  # noqa: BLE001 - the lock dies with the session anyway
                    quietly_failed("Could not release the migration lock; it goes with the session", e)
            conn.close()
            engine.dispose()
            if jconn is not None:
                jconn.close()
                jengine.dispose()

    # -- the phases before any change ---------------------------------------------
    def _load(self) -> ScriptSet:
        """The declared scripts (their modules import here, before any connection)."""
        self.emit({"event": "phase", "phase": "load_scripts"})
        return load_folder(self.req.migrations, pythonpath=self.req.pythonpath)

    def _lock(self, conn: Connection) -> None:
        """The session set up (backend pid reported for a parent that may have to end it), dbrev's schema, the
        database's migration lock held."""
        info = server_info(conn)
        conn.commit()
        if info["v"] >= 140000:
            # notice a vanished client within a second, even mid-statement (PostgreSQL 14+)
            conn.execute(sa.text("SET client_connection_check_interval = 1000"))
            conn.commit()
        self.emit({"event": "backend", "pid": info["pid"]})
        state.ensure_schema(conn, self.schema)
        acquire_lock(conn, self.db)
        self.emit({"event": "phase", "phase": "locked"})

    def _observe(self, conn: Connection, scripts: ScriptSet) -> tuple[StoredCopies, tuple, list[dict]]:
        """Under the lock: the stored copies of the scripts, the live revision, the rehearsals earlier runs
        recorded; runs an earlier process left "running" are reported as interrupted."""
        stored = stored_copies(conn, self.db, scripts) if self.req.use_stored_scripts else StoredCopies()
        self.conflicts = stored.conflicts
        current = self.checks.heads(conn)
        recorded = state.recorded_readiness(conn, self.schema, self.vt)
        conn.commit()
        self.result.from_revisions = list(current)
        for run in state.interrupted_runs(conn, self.schema, self.vt):
            msg = (f"run {run['id']} ({run['txn']} transaction, started {run['started_at']:%Y-%m-%d %H:%M:%S}) "
                   f"was interrupted during step {run['step_index'] or 0}/{run['step_count']} "
                   f"({run['step_direction'] or '-'} {run['step_revision'] or '-'}); the database is at "
                   f"{state.revisions_key(current)}")
            L.logger.warning("Interrupted run found", extra={"run_id": run["id"], "status": "interrupted"})
            self.result.warn(msg)
        return stored, current, recorded

    def _plan(self, scripts: ScriptSet, current, stored: StoredCopies, recorded: list[dict]) -> tuple[Plan, ScriptSet]:
        """The one plan (as `dbrev plan` makes it: stored copies, conflicts, hash, recorded readiness), and the
        scripts it runs; refused when it is not the plan the caller expects (``--plan-hash``)."""
        req = self.req
        plan, scripts = plan_against(scripts, current, req.target, version_table=self.db.version_table,
                                     version_table_schema=self.db.version_table_schema, stored=stored,
                                     recorded=recorded)
        self.plan = plan
        r = self.result
        if plan.recorded_readiness:
            r.recorded_readiness = plan.recorded_readiness  # a revert: what its upgrade proved
        r.plan_hash, r.direction, r.transaction = plan.hash, plan.direction, plan.transaction
        r.to_revisions = list(plan.to_revisions)
        r.warnings.extend(plan.warnings)
        self.emit({"event": "plan", "plan": plan.to_dict(include_sql=False)})
        if req.expected_hash and not hash_matches(plan.hash, req.expected_hash):
            raise PlanChanged(f"the plan is now {plan.hash}, not the expected {req.expected_hash}",
                              hint="run `dbrev plan` again and review the new plan")
        return plan, scripts

    def _decide(self, conn: Connection, plan: Plan) -> Decision:
        """The policy on the plan and the live facts it needs (row counts of what it would remove, ...)."""
        facts = plan_facts(conn, plan)
        conn.commit()
        decision = evaluate(plan, self.req.policy, self.req.approval, facts)
        self.result.decision = decision.to_dict()
        self.archive = decision.archive
        self._facts_of_plan = facts
        if decision.archive_reason == "rollback":
            self.result.warn(
                "the plan runs one transaction per step and removes data: dbrev archives what each "
                "destructive step removes, so that a rollback can put it back")
        return decision

    def _run_plan(self, conn: Connection, jconn: Connection, scripts: ScriptSet, plan: Plan,
                  decision: Decision) -> RunResult:
        """The allowed plan, journaled (on its own autocommit session, so that whoever outlives this process
        closes the row), run in its transaction mode; the journal says how the run ended."""
        req = self.req
        journal = self.journal = state.Journal(jconn, self.schema)
        run_id = journal.start(self.vt, plan, req.actor)
        self.emit({"event": "journal", "run_id": run_id, "schema": self.schema})
        try:
            with L.log_context(run_id=run_id):
                L.state_transition(plan.from_revisions, plan.to_revisions, "started",
                                   direction=plan.direction, steps=len(plan.steps),
                                   transaction=plan.transaction, plan_hash=plan.hash)
                if plan.transaction != "single" and req.policy.rehearse != rehearse.NEVER:
                    self.result.rollback_readiness = rehearse.unproven(
                        "the plan runs one transaction per step (a step needs autocommit): the way back "
                        "cannot be rehearsed inside the upgrade's transaction").to_dict()
                if plan.transaction == "single":
                    out = self._run_single(conn, scripts, plan, decision, journal)
                else:
                    out = self._run_per_step(conn, scripts, plan, decision, journal)
        except BaseException as e:
            # the run ends here (busy, bad input, an error of dbrev's): the journal says how, not "running"
            journal.finish(state.outcome_of(e), L.redact(str(e).splitlines()[0] if str(e) else type(e).__name__))
            raise
        journal.finish(out.result, out.error.message if out.error else None, out.rollback_readiness)
        return out

    def _refused(self, decision: Decision, t0: float) -> RunResult:
        L.logger.warning("Plan refused by policy", extra={"reason": decision.reason,
                                                          "status": "awaiting_approval" if decision.awaiting_approval
                                                          else "refused"})
        r = self.result
        r.result, r.current_revisions = RESULT_REFUSED, r.from_revisions
        r.duration_seconds = round(time.monotonic() - t0, 3)
        r.error = RunError(reason=decision.reason, message=decision.message, error_type="PolicyRefused")
        return r

    def _noop(self, conn: Connection, current, t0: float) -> RunResult:
        conn.commit()
        with conn.begin():
            report = self.checks.verify_now(conn, current, record=True)
        r = self.result
        r.result, r.current_revisions, r.integrity = RESULT_NOOP, list(current), report
        r.duration_seconds = round(time.monotonic() - t0, 3)
        L.state_transition(current, current, "noop", message="Database already at target revision")
        return self.result

    # -- protecting, running, verifying ------------------------------------------
    def _snapshot(self, conn: Connection, plan: Plan) -> dict:
        with L.timed("snapshot", from_revision=L.revs(plan.from_revisions), to_revision=L.revs(plan.to_revisions)):
            snap = {"findings": self.checks.catalog(conn), "tables": integrity.table_stats(
                conn, exclude_schemas=self.checks.exclude_schemas(), exclude_tables=self.checks.exclude_tables())}
            if "fingerprint" in self.checks.enabled():
                fp, facts = self.checks.fingerprint(conn)
                snap["fingerprint"] = fp
                snap["findings"] += self.checks.drift(conn, plan.from_revisions, fp, facts)
                state.record_fingerprint(conn, self.schema, self.vt, plan.from_revisions, fp, facts)
                snap["facts"] = facts  # the starting schema, for the rehearsed downgrade
            elif self.req.policy.rehearse != rehearse.NEVER:
                snap["facts"] = self.checks.fingerprint(conn)[1]  # the starting schema, for the rehearsal
            if self.req.exact_counts:
                snap["exact"] = integrity.exact_counts(conn, snap["tables"].keys())
            # what every rollback proves it put back: exact counts of the tables the plan touches
            touched = plan.touched_tables | plan.declared_loss_tables
            snap["touched_exact"] = integrity.exact_counts(conn, touched)
            snap["columns"] = integrity.column_set(conn, exclude_schemas=self.checks.exclude_schemas())
            snap["sequences"] = integrity.sequence_oids(conn)
        self._snap = snap
        return snap

    def _post_verify(self, conn: Connection, plan: Plan, snap: dict, deleted: dict, target) -> tuple[dict, list]:
        """Checks after the steps; returns (report dict, new error findings)."""
        with L.timed("verify", from_revision=L.revs(plan.from_revisions), to_revision=L.revs(target)):
            findings: list[integrity.Finding] = []
            heads = self.checks.heads(conn)
            if not self.graph.same_state(heads, target):
                findings.append(integrity.Finding(
                    "version", self.vt, 1, "error",
                    f"the version table holds {state.revisions_key(heads)}, not the target "
                    f"{state.revisions_key(target)}"))
            catalog = self.checks.catalog(conn)
            behind = [f for f in integrity.new_findings(snap["findings"], catalog)
                      if f.check == "sequences" and f.severity == "error"]
            if behind and self.req.policy.repair_sequences:
                repaired = integrity.repair_sequences(conn, [f.object for f in behind])
                for r in repaired:
                    L.logger.warning("Repaired a sequence the run left behind its column", extra={
                        "sequence": r["sequence"], "column": r["column"], "from": r["from"], "to": r["to"]})
                self.result.repaired_sequences = repaired
                catalog = self.checks.catalog(conn)
            if "sequences" in snap:
                catalog = integrity.created_by_run(conn, catalog, snap["sequences"])
            findings += catalog
            fp = None
            if "fingerprint" in self.checks.enabled():
                fp, facts = self.checks.fingerprint(conn)
                findings += self.checks.drift(conn, target, fp, facts)
                self._new_fp = (fp, facts)
            if "rowCounts" in self.checks.enabled():
                after = integrity.table_stats(conn, exclude_schemas=self.checks.exclude_schemas(),
                                              exclude_tables=self.checks.exclude_tables())
                exact_after = integrity.exact_counts(conn, after.keys()) if self.req.exact_counts else None
                # dropped by a step, or renamed away (its rows live on under the new name)
                dropped_ok = {f"{e.schema}.{e.table}" if e.schema else e.table
                              for s in plan.steps for e in s.effects if e.kind == "drop_table"}
                dropped_ok |= plan.renamed_tables
                dropped_ok |= self.execution.online_dropped  # seen online and allowed by the policy
                # a downgrade that undoes a CREATE TABLE drops it: declared by construction
                findings += integrity.row_count_findings(
                    snap["tables"], after, deleted, plan.declared_loss_tables | self.execution.online_declared, dropped_ok,
                    exact_before=snap.get("exact"), exact_after=exact_after)
        new = integrity.new_findings(snap["findings"], findings)
        new_errors = [f for f in new if f.severity == "error"]
        report = integrity.IntegrityReport.of(findings, fp).to_dict()
        report["new_findings"] = [f.to_dict() for f in new]
        report["passed"] = not new_errors
        return report, new_errors

    def _committed_heads(self, conn: Connection):
        """The revisions other sessions see now (what is committed), or None when that cannot be read."""
        if not conn.in_transaction():
            try:
                heads = self.checks.heads(conn)
                conn.commit()
                return heads
            except Exception:  # noqa: BLE001
                return None
        journal = self.journal
        if journal is None:
            return None
        try:
            return self.checks.heads(journal.conn)
        except Exception:  # noqa: BLE001 - e.g. a lock env.py's open transaction holds on the version table
            return None

    def _env_transaction(self, conn: Connection, trans, start):
        """After the steps of a single-transaction run: the transaction to verify and finish in.

        dbrev's own transaction unless env.py ended it.  Then the transaction env.py left open on
        dbrev's connection (or a new one) is used, and if the steps were already committed the run
        continues as one whose failures are undone by inverse steps, as with a connection of env.py's own.
        """
        if trans.is_active and conn.in_transaction() and conn.get_transaction() is trans:
            return trans
        if not self.external_connection:
            committed = self._committed_heads(conn)
            if committed is None or not self.graph.same_state(committed, start):
                self.execution.external_connection = True
                self.execution.warn_once(
                    "env.py ended dbrev's transaction (it committed it) and the steps were committed as env.py "
                    "ran them: a failed check is undone by inverse steps, not ROLLBACK")
            else:
                self.execution.warn_once("env.py ended dbrev's transaction and began its own; dbrev verified and finished "
                                "the run in env.py's transaction")
        return conn.get_transaction() if conn.in_transaction() else conn.begin()

    def _env_failed(self, conn: Connection, start) -> None:
        """A single-transaction run failed after env.py ran: roll back what it left open, see what it committed."""
        if self.execution is None or not self.execution.env_py_ran:
            return
        try:
            if conn.in_transaction():
                conn.rollback()
            if not self.external_connection:
                committed = self._committed_heads(conn)
                if committed is None or not self.graph.same_state(committed, start):
                    self.execution.external_connection = True
                    self.execution.warn_once("env.py committed part of the run before it failed: the committed steps "
                                    "are undone by inverse steps")
        except Exception as e:  # noqa: BLE001 - the caller reports the original failure
            quietly_failed("Could not see what env.py committed before the run failed", e)

    def _ensure_version_schema(self, conn: Connection) -> None:
        if self.db.version_table_schema:
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.db.version_table_schema)}"))

    # -- single transaction --------------------------------------------------------
    def _run_single(self, conn: Connection, scripts: ScriptSet, plan: Plan, decision: Decision,
                    journal) -> RunResult:
        self.graph = scripts.graph
        conn.commit()
        start, target = plan.from_revisions, plan.to_revisions
        trans = conn.begin()
        self._own_trans = trans  # the rehearsal (issue 14) runs only inside dbrev's own transaction
        try:
            self._ensure_version_schema(conn)
            snap = self._snapshot(conn, plan)
            ex = self._execution(scripts, plan, single=True)
            steps = ex.steps()
            with L.timed("migrate", from_revision=L.revs(start), to_revision=L.revs(target)):
                ex.execute(steps, ex.on_step_done(None), False, conn)
            trans = self._env_transaction(conn, trans, start)
            state.store_script(conn, self.schema, self.vt, ex.to_store)
            # one transaction: its counters cover every step
            deleted = {t: v[2] for t, v in integrity.xact_row_changes(
                conn, exclude_schemas=self.checks.exclude_schemas(), exclude_tables=self.checks.exclude_tables()).items()}
            report, new_errors = self._post_verify(conn, plan, snap, deleted, target)
        except BaseException as e:  # noqa: BLE001
            trans.rollback()
            self._env_failed(conn, start)
            if self.external_connection and not isinstance(e, DbrevError):
                self.result.error = step_error(e, scripts, self._current_step())
                return self._undo(scripts).inverse_steps(conn, start, target, R.MIGRATION_FAILURE, None)
            return self._single_failed(conn, scripts, plan, e)
        messages = [f.message for f in new_errors]
        if new_errors and self.req.policy.rollback_on_failure and self.external_connection:
            trans.rollback()
            self.result.error = RunError.integrity_failed(messages, rollback=True)
            return self._undo(scripts).inverse_steps(conn, start, target, R.INTEGRITY_CHECK_FAILURE, report)
        if new_errors and self.req.policy.rollback_on_failure:
            return self._undo(scripts).transaction(
                conn, trans, plan, R.INTEGRITY_CHECK_FAILURE, RESULT_ROLLED_BACK, RunError.integrity_failed(
                    messages, rollback=True), step_t0=ex.step_t0, integrity=report,
                findings=[f"{f.check}:{f.object}" for f in new_errors])
        # --- rehearsal of the way back (issue 14): see dbrev/engine/rehearse.py ---------------------
        if not new_errors:
            refused = self._rehearse(conn, scripts, plan, snap, trans)
            if refused is not None:
                return refused
        # --- end of rehearsal --------------------------------------------------------------
        if "fingerprint" in self.checks.enabled() and self._new_fp:
            state.record_fingerprint(conn, self.schema, self.vt, target, *self._new_fp)
        trans.commit()
        return self._finished(conn, plan, report, new_errors)

    def _finished(self, conn: Connection, plan: Plan, report: dict, new_errors: list) -> RunResult:
        """The steps are committed: applied, or failed verification with rollbackOnFailure off."""
        r = self.result
        r.result = RESULT_APPLIED if not new_errors else RESULT_FAILED
        r.integrity, r.current_revisions = report, list(self.checks.heads(conn))
        conn.commit()
        if new_errors:
            r.error = RunError.integrity_failed([f.message for f in new_errors], rollback=False)
        L.state_transition(plan.from_revisions, plan.to_revisions,
                           "completed" if r.result == RESULT_APPLIED else "failed")
        return r

    def _rehearse(self, conn: Connection, scripts: ScriptSet, plan: Plan, snap: dict, trans) -> RunResult | None:
        """Rehearse the downgrade in this transaction (savepoint); with Require, refuse a way back that
        is Broken or Irreversible: roll the upgrade back and return the result, else None."""
        mode = self.req.policy.rehearse
        if mode == rehearse.NEVER:
            return None
        if self.external_connection:
            r = rehearse.unproven("env.py ran the steps on a connection of its own")
        elif trans is not self._own_trans:
            # env.py committed or replaced dbrev's transaction: running it again for the rehearsal could
            # commit the upgrade (and part of the way back) before it is verified
            r = rehearse.unproven("env.py ends or replaces dbrev's transaction, so the way back cannot be "
                                  "rehearsed inside the upgrade's")
        else:
            r = rehearse.rehearse_in_run(self, conn, scripts, plan, snap["facts"])
        self.result.rollback_readiness = r.to_dict()
        self.emit({"event": "rehearsal", "readiness": r.to_dict()})
        level = L.logger.warning if r.status in (rehearse.BROKEN, rehearse.IRREVERSIBLE) else L.logger.info
        level("Rollback rehearsed", extra={"status": r.status, "reason": r.message})
        if mode != rehearse.REQUIRE or not r.blocks:
            return None
        error = RunError(reason=C.ROLLBACK_NOT_READY, error_type="PolicyRefused", message=rehearse.refusal_message(r),
                         step=r.details.get("step"), location=r.details.get("location"), shown=("step", "location"))
        return self._undo(scripts).transaction(conn, trans, plan, R.REHEARSAL_FAILURE, RESULT_REFUSED, error,
                                               step_t0=self.execution.step_t0, verdict=False)

    def _single_failed(self, conn: Connection, scripts: ScriptSet, plan: Plan, e: BaseException) -> RunResult:
        start, target = plan.from_revisions, plan.to_revisions
        if is_lock_timeout(e):
            raise self._lock_busy() from None
        if isinstance(e, DbrevError):
            raise e
        err = step_error(e, scripts, self._current_step())
        L.log_error("Migration failed", e, from_revision=L.revs(start), to_revision=L.revs(target),
                    step=err.step, location=err.location)
        return self._undo(scripts).transaction(
            conn, None, plan, R.MIGRATION_FAILURE, RESULT_ROLLED_BACK, err,
            step_t0=self.execution.step_t0 if self.execution is not None else None, failed_revision=err.step)

    def _lock_busy(self) -> Busy:
        """A table lock did not come within lock_timeout: busy (exit 4), whatever the transaction mode."""
        return Busy(f"a table lock was not granted within {self.db.lock_timeout:g}s "
                    f"(lock_timeout) during {(self._current_step() or ('?',))[0]}",
                    hint="another session holds a lock on a table the migration alters; retry later")

    def _back_at_start(self, out: RunResult, start) -> bool:
        """A per-step run that failed is where it started, proven (its rollback, if any, succeeded)."""
        rb = out.rollback
        return (out.current_revisions is not None and self.graph.same_state(out.current_revisions, start)
                and (rb is None or bool(rb.success)))

    # -- one transaction per step -----------------------------------------------
    def _run_per_step(self, conn: Connection, scripts: ScriptSet, plan: Plan, decision: Decision,
                      journal) -> RunResult:
        self.graph = scripts.graph
        start, target = plan.from_revisions, plan.to_revisions
        conn.commit()
        with conn.begin():
            self._ensure_version_schema(conn)
            snap = self._snapshot(conn, plan)
        deleted_steps: list = []
        ex = self._execution(scripts, plan, single=False)
        steps = ex.steps()
        failure = None
        try:
            with L.timed("migrate", from_revision=L.revs(start), to_revision=L.revs(target)):
                ex.execute(steps, ex.on_step_done(deleted_steps), True, conn)
        except BaseException as e:  # noqa: BLE001
            rollback_quietly(conn)
            if isinstance(e, DbrevError) and not online_refusal(e):
                raise
            failure = e
        conn.commit()
        if failure is not None:
            err = step_error(failure, scripts, ex.current)
            if is_lock_timeout(failure):
                err.reason = C.LOCK_BUSY
            if online_refusal(failure):
                err.reason, err.error_type, err.hint = C.DATA_LOSS_DENIED, "PolicyRefused", failure.hint
            L.log_error("Migration failed", failure, from_revision=L.revs(start), to_revision=L.revs(target),
                        step=err.step, location=err.location)
            if err.step:
                self.result.steps.append(StepRecord(err.step, err.direction, R.FAILED,
                                                    round(time.monotonic() - ex.step_t0, 3)))
            self.result.error = err
            busy = self._lock_busy() if is_lock_timeout(failure) else None
            out = self._undo(scripts).inverse_steps(conn, start, target, R.MIGRATION_FAILURE, None)
            if busy is not None and self._back_at_start(out, start):
                raise busy from None  # as in one transaction: nothing changed, exit 4, retried
            return out
        deleted: dict[str, int] = {}
        for snapshot in deleted_steps:
            for t, v in snapshot.items():
                deleted[t] = deleted.get(t, 0) + v[2]
        with conn.begin():
            report, new_errors = self._post_verify(conn, plan, snap, deleted, target)
            if not new_errors and self._new_fp:
                state.record_fingerprint(conn, self.schema, self.vt, target, *self._new_fp)
        if new_errors and self.req.policy.rollback_on_failure:
            self.result.error = RunError.integrity_failed([f.message for f in new_errors], rollback=True)
            return self._undo(scripts).inverse_steps(conn, start, target, R.INTEGRITY_CHECK_FAILURE, report)
        return self._finished(conn, plan, report, new_errors)


def run(req: RunRequest, emit: Emit) -> RunResult:
    """Run one apply; errors that are the user's (bad input, busy, refused) raise DbrevError."""
    return Runner(req, emit).run()
