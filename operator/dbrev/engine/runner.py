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
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..pg import integrity, state
from . import rehearse
from . import log as L
from ..pg.db import acquire_lock, connect, is_lock_timeout, quote_ident, read_heads, server_info, unlock
from ..core.errors import fk_hint, BadInput, Busy, DbrevError, PlanChanged, PolicyRefused
from .verbs import drift_finding, plan_against, plan_steps, stored_copies
from ..core.planning import Plan, StoredCopies, hash_matches
from ..core.options import RunRequest  # noqa: F401
from ..core.policy import Decision, Facts, effect_table_key, evaluate, lossless
from .scripts import EnvPyFailed, ScriptSet, alembic_config, env_py_failure, load_folder, revision_step

Emit = Callable[[dict], None]

from ..core import conditions as C  # noqa: E402
from ..core import results as R  # noqa: E402
from ..core.results import (  # noqa: E402
    RESULT_APPLIED,
    RESULT_FAILED,
    RESULT_NOOP,
    RESULT_REFUSED,
    RESULT_ROLLED_BACK,
    Rollback,
    RunError,
    RunResult,
    StepRecord,
)


def OnlineDataLoss(message: str, **kw) -> PolicyRefused:
    """A step classified online removed data the policy does not allow (raised before it commits).
    A plain PolicyRefused (so it crosses the worker boundary as one), marked ``online``."""
    e = PolicyRefused(message, **kw)
    e.online = True  # type: ignore[attr-defined]
    return e


def _quietly_failed(message: str, e: BaseException) -> None:
    """A clean-up step failed while another failure is being reported: one log line, not silence."""
    L.logger.warning(message, extra={"error_type": type(e).__name__,
                                     "error_message": L.redact(str(e).splitlines()[0] if str(e) else "")})


def _rollback_quietly(conn: Connection) -> None:
    """End the failed transaction; a session already gone (the failure itself) is logged, not raised."""
    try:
        conn.rollback()
    except Exception as e:  # noqa: BLE001 - the failure being handled is the one to report
        _quietly_failed("Could not roll back the failed transaction", e)


def _online_refusal(e: BaseException) -> bool:
    return isinstance(e, PolicyRefused) and getattr(e, "online", False)


class Runner:
    def __init__(self, req: RunRequest, emit: Emit):
        self._single = False  # set while a single-transaction run executes
        self._to_store: list = []
        self.req = req
        self.emit = emit
        self.db = req.db
        self.vt = state.vt_key(req.db.version_table, req.db.version_table_schema)
        self.schema = req.db.state_schema
        self.result = RunResult.started()
        self._undo_facts = None
        self._undo_archive = False
        # what the run learns as it goes (read back by the later phases and by a rollback's sub-runner)
        self.graph = None  # the scripts' graph, once loaded
        self.plan: Plan | None = None
        self.journal: state.Journal | None = None
        self.archive = False  # the policy's Archive decision: copy what destructive steps remove
        self.conflicts: list[str] = []  # declared scripts that differ from the stored copies
        self.external_connection = False  # env.py ran the steps on a connection (or transaction) not dbrev's
        self._facts_of_plan: Facts | None = None
        self._snap: dict | None = None  # the pre-run snapshot
        self._new_fp: tuple | None = None  # the fingerprint after the steps, recorded when they verify
        self._current_step: tuple | None = None  # (revision, direction) of the step running or last run
        self._step_t0: float | None = None
        self._own_trans = None  # dbrev's own transaction of a single-transaction run
        self._env_py_ran = False
        self._env_configured = False
        self._online_state: tuple | None = None  # (revision, live state) before a step classified online
        self._rows_missing: list[str] = []  # tables a rollback did not put all rows back into
        self._online_declared: set[str] = set()
        self._online_dropped: set[str] = set()
        self._run_inserted: set[str] = set()

    # -- helpers ---------------------------------------------------------------
    def _heads(self, conn: Connection) -> tuple[str, ...]:
        return read_heads(conn, self.db.version_table, self.db.version_table_schema)

    def _exclude_tables(self):
        return ((self.db.version_table_schema or "public", self.db.version_table),)

    def _exclude_schemas(self):
        return (self.schema, "dbrev_archive")

    def _checks(self) -> tuple[str, ...]:
        return tuple(c for c in self.req.policy.verify if c in integrity.ALL_CHECKS)

    def _catalog(self, conn: Connection) -> list[integrity.Finding]:
        return integrity.catalog_findings(conn, self._checks(), exclude_schemas=self._exclude_schemas())

    def _fingerprint(self, conn: Connection) -> tuple[str, list[str]]:
        facts = integrity.fingerprint_facts(conn, exclude_schemas=self._exclude_schemas(),
                                            exclude_tables=self._exclude_tables())
        return integrity.fingerprint_of(facts), facts

    def _drift(self, conn: Connection, heads, fp: str, facts: list[str]) -> list[integrity.Finding]:
        if "fingerprint" not in self._checks():
            return []
        finding = drift_finding(conn, self.schema, self.vt, heads, fp, facts)[1]
        return [finding] if finding else []

    # -- the run ---------------------------------------------------------------
    def run(self) -> RunResult:
        t0 = time.monotonic()
        req = self.req
        self.emit({"event": "phase", "phase": "load_scripts"})
        scripts = load_folder(req.migrations, pythonpath=req.pythonpath)
        engine, conn = connect(self.db)
        jengine, jconn = None, None
        locked = False
        try:
            info = server_info(conn)
            conn.commit()
            if info["v"] >= 140000:
                # notice a vanished client within a second, even mid-statement (PostgreSQL 14+)
                conn.execute(sa.text("SET client_connection_check_interval = 1000"))
                conn.commit()
            self.emit({"event": "backend", "pid": info["pid"]})
            state.ensure_schema(conn, self.schema)
            acquire_lock(conn, self.db)
            locked = True
            self.emit({"event": "phase", "phase": "locked"})
            stored = stored_copies(conn, self.db, scripts) if req.use_stored_scripts else StoredCopies()
            self.conflicts = stored.conflicts
            current = self._heads(conn)
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
            # the one plan (as `dbrev plan` makes it): stored copies, conflicts, hash, recorded readiness
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
            facts = self._facts(conn, plan)
            conn.commit()
            decision = evaluate(plan, req.policy, req.approval, facts)
            self.result.decision = decision.to_dict()
            self.archive = decision.archive
            self._facts_of_plan = facts
            if decision.archive_reason == "rollback":
                self.result.warn(
                    "the plan runs one transaction per step and removes data: dbrev archives what each "
                    "destructive step removes, so that a rollback can put it back")
            if not decision.allowed:
                return self._refused(decision, t0)
            if plan.is_noop:
                return self._noop(conn, current, t0)
            jengine, jconn = connect(self.db, autocommit=True)
            journal = self.journal = state.Journal(jconn, self.schema)
            run_id = journal.start(self.vt, plan, req.actor)
            # whoever outlives this process (a timeout, a crash) closes the row with what happened
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
            out.duration_seconds = round(time.monotonic() - t0, 3)
            return out
        finally:
            if locked:
                try:
                    conn.rollback()
                    unlock(conn, self.db.lock_key)
                    conn.commit()
                except Exception as e:  # noqa: BLE001 - the lock dies with the session anyway
                    _quietly_failed("Could not release the migration lock; it goes with the session", e)
            conn.close()
            engine.dispose()
            if jconn is not None:
                jconn.close()
                jengine.dispose()

    def _facts(self, conn: Connection, plan: Plan, before: dict | None = None) -> Facts:
        """What the live catalog says about the tables the plan's destructive effects name (under the lock).

        ``before``: the pre-run snapshot, when planning the undo of a run: objects it does not have were
        created by the run, and tables it counted empty held only the run's rows."""
        empty, types, new_t, new_c, missing = set(), {}, set(), set(), set()
        from ..pg.archive import resolve

        unused = set()
        for s in plan.steps:
            for e in s.effects:
                if e.destructive and e.name and e.kind in ("drop_schema", "drop_type"):
                    q = ("SELECT NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                         "WHERE n.nspname = :n AND c.relkind IN ('r', 'p'))" if e.kind == "drop_schema" else
                         "SELECT to_regtype(:n) IS NULL OR NOT EXISTS (SELECT 1 FROM pg_attribute a JOIN pg_class c "
                         "ON c.oid = a.attrelid WHERE a.atttypid = to_regtype(:n) AND NOT a.attisdropped "
                         "AND c.relkind IN ('r', 'p'))")
                    if conn.execute(sa.text(q), {"n": e.name}).scalar():
                        unused.add(e.name)
                if not e.destructive or not e.table:
                    continue
                key = effect_table_key(e)
                rel = resolve(conn, e.schema, e.table)
                if rel is None:
                    missing.add(key)  # made by an earlier step of the run, or not there at all: no rows yet
                    continue
                canon = conn.execute(sa.text("SELECT format('%I.%I', CAST(:s AS text), CAST(:t AS text))"),
                                     {"s": rel.schema, "t": rel.table}).scalar()
                if before is not None:
                    if canon not in before["tables"]:
                        new_t.add(key)
                        continue
                    if e.column and f"{canon}.{e.column}" not in before["columns"]:
                        new_c.add(f"{key}.{e.column}")
                    if before.get("touched_exact", {}).get(canon) == 0:
                        empty.add(key)  # whatever it holds now, the run put there
                elif not conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {rel.sql})")).scalar():
                    empty.add(key)
                if e.kind == "alter_column_type" and e.column:
                    t = conn.execute(sa.text(
                        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                        "to_regclass(:t) AND attname = :c AND NOT attisdropped"), {"t": rel.sql, "c": e.column}).scalar()
                    if t:
                        types[f"{key}.{e.column}"] = t
        return Facts(frozenset(empty), types, frozenset(new_t), frozenset(new_c), frozenset(missing),
                     frozenset(unused))

    def _plan(self, scripts: ScriptSet, current, target) -> Plan:
        """A plan over the run's scripts between resolved revisions (a rollback's inverse, a rehearsal):
        the same planning and conflict rule as the run's own plan."""
        return plan_steps(scripts, current, target, target_spec=self.req.target,
                          version_table=self.db.version_table, version_table_schema=self.db.version_table_schema,
                          conflicts=self.conflicts)

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
            report = self._verify_now(conn, current, record=True)
        r = self.result
        r.result, r.current_revisions, r.integrity = RESULT_NOOP, list(current), report
        r.duration_seconds = round(time.monotonic() - t0, 3)
        L.state_transition(current, current, "noop", message="Database already at target revision")
        return self.result

    def _verify_now(self, conn: Connection, heads, record: bool) -> dict:
        with L.timed("verify", from_revision=L._rev(heads), to_revision=L._rev(heads)):
            findings = self._catalog(conn)
            fp = None
            if "fingerprint" in self._checks():
                fp, facts = self._fingerprint(conn)
                findings += self._drift(conn, heads, fp, facts)
                if record:
                    state.record_fingerprint(conn, self.schema, self.vt, heads, fp, facts)
        return integrity.IntegrityReport.of(findings, fp).to_dict()

    # -- protecting, running, verifying ------------------------------------------
    def _snapshot(self, conn: Connection, plan: Plan) -> dict:
        with L.timed("snapshot", from_revision=L._rev(plan.from_revisions), to_revision=L._rev(plan.to_revisions)):
            snap = {"findings": self._catalog(conn), "tables": integrity.table_stats(
                conn, exclude_schemas=self._exclude_schemas(), exclude_tables=self._exclude_tables())}
            if "fingerprint" in self._checks():
                fp, facts = self._fingerprint(conn)
                snap["fingerprint"] = fp
                snap["findings"] += self._drift(conn, plan.from_revisions, fp, facts)
                state.record_fingerprint(conn, self.schema, self.vt, plan.from_revisions, fp, facts)
                snap["facts"] = facts  # the starting schema, for the rehearsed downgrade
            elif self.req.policy.rehearse != rehearse.NEVER:
                snap["facts"] = self._fingerprint(conn)[1]  # the starting schema, for the rehearsal
            if self.req.exact_counts:
                snap["exact"] = integrity.exact_counts(conn, snap["tables"].keys())
            # what every rollback proves it put back: exact counts of the tables the plan touches
            touched = plan.touched_tables | plan.declared_loss_tables
            snap["touched_exact"] = integrity.exact_counts(conn, touched)
            snap["columns"] = integrity.column_set(conn, exclude_schemas=self._exclude_schemas())
            snap["sequences"] = integrity.sequence_oids(conn)
        self._snap = snap
        return snap

    def _post_verify(self, conn: Connection, plan: Plan, snap: dict, deleted: dict, target) -> tuple[dict, list]:
        """Checks after the steps; returns (report dict, new error findings)."""
        with L.timed("verify", from_revision=L._rev(plan.from_revisions), to_revision=L._rev(target)):
            findings: list[integrity.Finding] = []
            heads = self._heads(conn)
            if not self.graph.same_state(heads, target):
                findings.append(integrity.Finding(
                    "version", self.vt, 1, "error",
                    f"the version table holds {state.revisions_key(heads)}, not the target "
                    f"{state.revisions_key(target)}"))
            catalog = self._catalog(conn)
            behind = [f for f in integrity.new_findings(snap["findings"], catalog)
                      if f.check == "sequences" and f.severity == "error"]
            if behind and self.req.policy.repair_sequences:
                repaired = integrity.repair_sequences(conn, [f.object for f in behind])
                for r in repaired:
                    L.logger.warning("Repaired a sequence the run left behind its column", extra={
                        "sequence": r["sequence"], "column": r["column"], "from": r["from"], "to": r["to"]})
                self.result.repaired_sequences = repaired
                catalog = self._catalog(conn)
            if "sequences" in snap:
                catalog = integrity.created_by_run(conn, catalog, snap["sequences"])
            findings += catalog
            fp = None
            if "fingerprint" in self._checks():
                fp, facts = self._fingerprint(conn)
                findings += self._drift(conn, target, fp, facts)
                self._new_fp = (fp, facts)
            if "rowCounts" in self._checks():
                after = integrity.table_stats(conn, exclude_schemas=self._exclude_schemas(),
                                              exclude_tables=self._exclude_tables())
                exact_after = integrity.exact_counts(conn, after.keys()) if self.req.exact_counts else None
                # dropped by a step, or renamed away (its rows live on under the new name)
                dropped_ok = {f"{e.schema}.{e.table}" if e.schema else e.table
                              for s in plan.steps for e in s.effects if e.kind == "drop_table"}
                dropped_ok |= plan.renamed_tables
                dropped_ok |= self._online_dropped  # seen online and allowed by the policy
                # a downgrade that undoes a CREATE TABLE drops it: declared by construction
                findings += integrity.row_count_findings(
                    snap["tables"], after, deleted, plan.declared_loss_tables | self._online_declared, dropped_ok,
                    exact_before=snap.get("exact"), exact_after=exact_after)
        new = integrity.new_findings(snap["findings"], findings)
        new_errors = [f for f in new if f.severity == "error"]
        report = integrity.IntegrityReport.of(findings, fp).to_dict()
        report["new_findings"] = [f.to_dict() for f in new]
        report["passed"] = not new_errors
        return report, new_errors

    def _steps_for(self, scripts: ScriptSet, plan: Plan, journal):
        sd = scripts.script_directory()
        rm = sd.revision_map
        total = len(plan.steps)
        steps = []
        for i, ps in enumerate(plan.steps, 1):
            rstep = revision_step(rm, sd.get_revision(ps.revision), ps.direction == "upgrade",
                                  scripts.sources[ps.revision])
            orig = rstep.migration_fn

            def fn(_orig=orig, _i=i, _ps=ps, **kw):
                self._current_step = (_ps.revision, _ps.direction)
                self._step_t0 = time.monotonic()
                if not self._single:  # one transaction: nothing of it survives a crash, no step to record
                    journal.step(_i, _ps.revision, _ps.direction)
                self.emit({"event": "step_started", "index": _i, "total": total, "revision": _ps.revision,
                           "direction": _ps.direction, "doc": _ps.doc})
                L.logger.debug("Starting migration step", extra={
                    "from_revision": L._rev(_ps.from_revisions), "to_revision": L._rev(_ps.to_revisions),
                    "operation": _ps.direction, "step": _i})
                if _ps.destructive:
                    self._recheck_empty(_ps)
                if self.archive and _ps.destructive:
                    self._archive(_ps)
                if self._online_classify(_ps):
                    self._online_before(_ps)
                return _orig(**kw)

            rstep.migration_fn = fn
            steps.append(rstep)
        return steps

    def _recheck_empty(self, ps) -> None:
        """A table judged empty when the policy was decided must still be empty when its step runs
        (rows may have arrived since): otherwise the step would lose them unseen."""
        from ..core.options import ALLOW

        facts = self._facts_of_plan
        if facts is None or not facts.empty_tables or self.req.policy.data_loss == ALLOW:
            return
        from alembic import op

        from ..pg.archive import resolve

        conn = op.get_bind()
        for e in ps.effects:
            key = effect_table_key(e)
            if not e.destructive or key not in facts.empty_tables:
                continue
            rel = resolve(conn, e.schema, e.table)
            if rel is None:
                continue
            canon = conn.execute(sa.text("SELECT format('%I.%I', CAST(:s AS text), CAST(:t AS text))"),
                                 {"s": rel.schema, "t": rel.table}).scalar()
            if canon in self._run_inserted:
                continue  # an earlier step of this run filled it: its rows are the run's own
            if conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM {rel.sql})")).scalar():
                raise OnlineDataLoss(
                    f"step {ps.revision} ({ps.direction}): {key} was empty when the plan was decided and holds rows "
                    f"now, and the dataLoss policy ({self.req.policy.data_loss}) was not asked about them: "
                    f"{e.detail or e.kind}", reason=C.DATA_LOSS_DENIED, hint="run the apply again: it decides on "
                                                                           "the rows there are now")

    def _archive(self, ps) -> None:
        """Dataloss policy Archive: copy what the step removes, in the step's own transaction."""
        from alembic import op

        from ..pg import archive

        facts = self._facts_of_plan
        effects = [e for e in ps.effects if lossless(e, facts) is None]
        rows = archive.preserve(op.get_bind(), self.schema, self.vt, ps.revision, ps.direction, effects)
        self.result.archived = (self.result.archived or []) + rows
        for r in rows:
            self.emit({"event": "archived", **r})

    def _on_step_done(self, scripts: ScriptSet, plan: Plan, per_step_deleted: list):
        def callback(ctx, step, heads, run_args):
            conn = ctx.connection
            rev, direction = self._current_step
            info = scripts.infos[rev]
            if direction == "upgrade":
                if self._single:
                    self._to_store.append((info, scripts.sources[rev].source))  # one INSERT at the end
                else:
                    state.store_script(conn, self.schema, self.vt, [(info, scripts.sources[rev].source)])
            self._online_after(conn, rev, direction)
            changes = integrity.xact_row_changes(conn, exclude_schemas=self._exclude_schemas(),
                                                 exclude_tables=self._exclude_tables())
            self._run_inserted |= {t for t, v in changes.items() if v[0] > 0}  # rows of the run's own
            if per_step_deleted is not None:  # per-step transactions: each step's own counters, summed later
                per_step_deleted.append(changes)
            dur = time.monotonic() - self._step_t0
            rec = StepRecord(rev, direction, R.APPLIED, round(dur, 3))
            self.result.steps.append(rec)
            self.emit({"event": "step_done", **rec.to_dict(), "index": len(self.result.steps),
                       "total": len(plan.steps)})
            ps = next(s for s in plan.steps if s.revision == rev)
            L.logger.debug("Finished migration step", extra={
                "from_revision": L._rev(ps.from_revisions), "to_revision": L._rev(ps.to_revisions),
                "operation": direction, "duration_ms": round(dur * 1000, 2)})
            if dur > L.SLOW_OPERATION_MS / 1000:
                L.logger.warning("Slow migration step", extra={"duration_ms": round(dur * 1000, 2),
                                                              "operation": direction, "revision": rev})
        return callback

    def _uses_env_py(self, scripts: ScriptSet) -> bool:
        """The project's env.py (a script location holds one; ``--env-py``), or the built-in environment."""
        choice = self.req.use_env_py
        if choice is None:  # like Alembic: a script location runs through its env.py
            return scripts.is_script_location
        if choice and scripts.env_py is None:
            raise BadInput("--env-py was asked for, but there is no env.py next to the versions folder",
                           hint="point --migrations at the folder holding env.py and versions/")
        return bool(choice)

    def _warn_once(self, text: str) -> None:
        if text not in self.result.warnings:
            self.result.warn(text)

    def _execute(self, scripts: ScriptSet, steps, callback, per_step: bool, conn: Connection) -> None:
        """Run ``steps`` through Alembic: dbrev's built-in environment, or the project's env.py.

        Either way the steps run inside ``with env:``, as Alembic runs env.py, so ``alembic.context``
        is established.  What env.py does with dbrev's connection is watched: a connection of its own
        makes dbrev end its snapshot transaction at once (it must hold no locks while another session
        migrates) and recover from failures by inverse steps; ending dbrev's transaction is found
        after the run (:meth:`_env_transaction`).
        """
        from alembic.config import Config
        from alembic.runtime.environment import EnvironmentContext

        ours = {"version_table": self.db.version_table, "version_table_schema": self.db.version_table_schema,
                "transaction_per_migration": per_step, "on_version_apply": callback}
        sd = scripts.script_directory()
        if not self._uses_env_py(scripts):
            cfg = Config()
            cfg.set_main_option("script_location", sd.dir)
            env = EnvironmentContext(cfg, sd, fn=lambda heads, ctx: steps)
            with env:  # as Alembic runs env.py: `alembic.context` is this environment
                env.configure(connection=conn, **ours)
                with env.begin_transaction():
                    env.run_migrations()
            return
        with tempfile.TemporaryDirectory(prefix="dbrev-ini-") as scratch:
            cfg = alembic_config(scripts.env_py.parent, sd.dir, Path(scratch))
            with _logging_restored():
                self._run_env_py(conn, scripts, sd, cfg, steps, ours)

    def _run_env_py(self, conn, scripts, sd, cfg, steps, ours) -> None:
        """Run the project's env.py as Alembic would, with dbrev's connection and options."""
        from alembic.runtime.environment import EnvironmentContext

        runner = self
        self._env_py_ran = True

        env = EnvironmentContext(cfg, sd, fn=lambda heads, ctx: steps)
        project_configure = env.configure

        def configure(connection=None, url=None, **kw):
            if connection is not None and connection is not conn:
                runner.external_connection = True
                runner._warn_once(
                    "env.py opened its own database connection instead of using config.attributes['connection']: "
                    "the steps ran in a transaction that is not dbrev's, so a failed check is undone by inverse "
                    "steps (not ROLLBACK), and the row-count check cannot see that transaction's deletes")
                if conn.in_transaction():
                    # dbrev's snapshot transaction may hold locks (catalog reads, orphan scans) that the
                    # other session's DDL would wait for while dbrev waits for env.py: end it now.
                    conn.commit()
            for key in ("version_table", "version_table_schema"):
                if kw.get(key) not in (None, ours[key]):
                    runner._warn_once(f"env.py configures {key}={kw[key]!r}; dbrev uses {ours[key]!r}")
            kw.update(ours)
            runner._env_configured = True
            return project_configure(connection=connection, url=url, **kw)

        # An instance attribute, so the `alembic.context` proxy env.py sees hands out this one.
        env.configure = configure  # type: ignore[method-assign]
        # the cookbook's "sharing a connection" pattern: env.py should use config.attributes["connection"]
        cfg.attributes["connection"] = conn
        cfg.set_main_option("sqlalchemy.url", self._env_url().replace("%", "%%"))
        self._env_configured = False
        try:
            with env:
                sd.run_env()
        except Exception as e:
            if self._env_configured:
                raise  # a step's failure (or env.py's after it configured Alembic): reported as such
            raise EnvPyFailed(env_py_failure(e, str(scripts.env_py))).with_traceback(e.__traceback__) from None

    def _env_url(self) -> str:
        """The URL env.py gets as sqlalchemy.url: the run's, with dbrev's lock and statement timeouts.

        A session env.py opens itself then waits for table locks no longer than dbrev's own would.
        """
        from sqlalchemy.engine import make_url

        try:
            u = make_url(self.db.url)
            if u.get_driver_name() not in ("psycopg", "psycopg2") or "options" in u.query:
                return self.db.url
        except Exception:  # noqa: BLE001 - a URL only dbrev understands (postgres://): leave it as given
            return self.db.url
        opts = f"-c lock_timeout={int(self.db.lock_timeout * 1000)}"
        if self.db.statement_timeout:
            opts += f" -c statement_timeout={int(self.db.statement_timeout * 1000)}"
        return u.update_query_dict({"options": opts}).render_as_string(hide_password=False)

    def _committed_heads(self, conn: Connection):
        """The revisions other sessions see now (what is committed), or None when that cannot be read."""
        if not conn.in_transaction():
            try:
                heads = self._heads(conn)
                conn.commit()
                return heads
            except Exception:  # noqa: BLE001
                return None
        journal = self.journal
        if journal is None:
            return None
        try:
            return self._heads(journal.conn)
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
                self.external_connection = True
                self._warn_once(
                    "env.py ended dbrev's transaction (it committed it) and the steps were committed as env.py "
                    "ran them: a failed check is undone by inverse steps, not ROLLBACK")
            else:
                self._warn_once("env.py ended dbrev's transaction and began its own; dbrev verified and finished "
                                "the run in env.py's transaction")
        return conn.get_transaction() if conn.in_transaction() else conn.begin()

    def _env_failed(self, conn: Connection, start) -> None:
        """A single-transaction run failed after env.py ran: roll back what it left open, see what it committed."""
        if not self._env_py_ran:
            return
        try:
            if conn.in_transaction():
                conn.rollback()
            if not self.external_connection:
                committed = self._committed_heads(conn)
                if committed is None or not self.graph.same_state(committed, start):
                    self.external_connection = True
                    self._warn_once("env.py committed part of the run before it failed: the committed steps "
                                    "are undone by inverse steps")
        except Exception as e:  # noqa: BLE001 - the caller reports the original failure
            _quietly_failed("Could not see what env.py committed before the run failed", e)

    # -- online classification (steps that cannot render offline) -------------------------
    def _online_classify(self, ps) -> bool:
        """Steps that could not be rendered offline are classified by what they do, as they run."""
        return not ps.renderable and not ps.irreversible

    def _online_before(self, ps) -> None:
        from alembic import op

        self._online_state = (ps.revision, integrity.live_state(
            op.get_bind(), exclude_schemas=self._exclude_schemas(), exclude_tables=self._exclude_tables()))

    def _online_after(self, conn: Connection, rev: str, direction: str) -> None:
        """Before the step commits: what did it remove that existed before the run?  Decide on that."""
        pending = self._online_state
        if not pending or pending[0] != rev:
            return
        self._online_state = None
        after = integrity.live_state(conn, exclude_schemas=self._exclude_schemas(),
                                     exclude_tables=self._exclude_tables())
        snap = self._snap or {"tables": {}}
        effects = integrity.live_effects(pending[1], after, snap["tables"].keys())
        record = {"revision": rev, "direction": direction, "effects": [e.to_dict() for e in effects]}
        self.result.classified_online = (self.result.classified_online or []) + [record]
        if not effects:
            return
        what = "; ".join(e.detail for e in effects)
        pol = self.req.policy.data_loss
        from ..core.options import ALLOW

        if pol == ALLOW:
            self._online_declared |= {e.object for e in effects}
            self._online_dropped |= {e.object for e in effects if e.kind == "drop_table"}
            L.logger.warning("A step classified online removed data", extra={"revision": rev, "effects": what})
            return
        why = {"Archive": "it could not be archived first, because its offline rendering failed and so did not "
                          "show it",
               "RequireApproval": "the approved plan did not show it (its offline rendering failed)"}.get(
            pol, "the dataLoss policy is Deny")
        raise OnlineDataLoss(f"step {rev} ({direction}) removed data that existed before the run, and {why}: "
                             f"{what}", reason=C.DATA_LOSS_DENIED,
                             hint="allow the data loss (--allow-data-loss / dataLoss: Allow), or make the step "
                                  "renderable offline so the plan shows what it removes")

    def _ensure_version_schema(self, conn: Connection) -> None:
        if self.db.version_table_schema:
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(self.db.version_table_schema)}"))

    def _failure_location(self, exc: BaseException, scripts: ScriptSet) -> str | None:
        files = {s.filename: s.name for s in scripts.sources.values()}
        loc = None
        for fr in traceback.extract_tb(exc.__traceback__):
            if fr.filename in files:
                loc = f"{files[fr.filename]}:{fr.lineno}"
        return loc

    def _error(self, exc: BaseException, scripts: ScriptSet) -> RunError:
        step = self._current_step or (None, None)
        loc = self._failure_location(exc, scripts)
        orig = getattr(exc, "orig", None)
        msg = str(orig or exc).strip()
        hint = fk_hint(exc)  # a foreign key blocks the step: name the constraint and the dependent table
        return RunError(reason=C.MIGRATION_FAILED, error_type=type(orig or exc).__name__,
                        message=L.redact(msg.splitlines()[0] if msg else ""), detail=L.redact(msg),
                        step=step[0], direction=step[1], location=loc, hint=L.redact(hint) if hint else None,
                        shown=("step", "direction", "location"))

    # -- single transaction --------------------------------------------------------
    def _run_single(self, conn: Connection, scripts: ScriptSet, plan: Plan, decision: Decision,
                    journal) -> RunResult:
        self.graph = scripts.graph
        self._single = True
        conn.commit()
        start, target = plan.from_revisions, plan.to_revisions
        trans = conn.begin()
        self._own_trans = trans  # the rehearsal (issue 14) runs only inside dbrev's own transaction
        try:
            self._ensure_version_schema(conn)
            snap = self._snapshot(conn, plan)
            steps = self._steps_for(scripts, plan, journal)
            with L.timed("migrate", from_revision=L._rev(start), to_revision=L._rev(target)):
                self._execute(scripts, steps, self._on_step_done(scripts, plan, None), False, conn)
            trans = self._env_transaction(conn, trans, start)
            state.store_script(conn, self.schema, self.vt, self._to_store)
            # one transaction: its counters cover every step
            deleted = {t: v[2] for t, v in integrity.xact_row_changes(
                conn, exclude_schemas=self._exclude_schemas(), exclude_tables=self._exclude_tables()).items()}
            report, new_errors = self._post_verify(conn, plan, snap, deleted, target)
        except BaseException as e:  # noqa: BLE001
            trans.rollback()
            self._env_failed(conn, start)
            if self.external_connection and not isinstance(e, DbrevError):
                self.result.error = self._error(e, scripts)
                return self._undo_per_step(conn, scripts, start, target, R.MIGRATION_FAILURE, None)
            return self._single_failed(conn, scripts, plan, e)
        messages = [f.message for f in new_errors]
        if new_errors and self.req.policy.rollback_on_failure and self.external_connection:
            trans.rollback()
            self.result.error = RunError.integrity_failed(messages, rollback=True)
            return self._undo_per_step(conn, scripts, start, target, R.INTEGRITY_CHECK_FAILURE, report)
        if new_errors and self.req.policy.rollback_on_failure:
            return self._transaction_rollback(
                conn, trans, plan, R.INTEGRITY_CHECK_FAILURE, RESULT_ROLLED_BACK, RunError.integrity_failed(
                    messages, rollback=True), integrity=report,
                findings=[f"{f.check}:{f.object}" for f in new_errors])
        # --- rehearsal of the way back (issue 14): see dbrev/rehearse.py ---------------------
        if not new_errors:
            refused = self._rehearse(conn, scripts, plan, snap, trans)
            if refused is not None:
                return refused
        # --- end of rehearsal --------------------------------------------------------------
        if "fingerprint" in self._checks() and self._new_fp:
            state.record_fingerprint(conn, self.schema, self.vt, target, *self._new_fp)
        trans.commit()
        return self._finished(conn, plan, report, new_errors)

    def _finished(self, conn: Connection, plan: Plan, report: dict, new_errors: list) -> RunResult:
        """The steps are committed: applied, or failed verification with rollbackOnFailure off."""
        r = self.result
        r.result = RESULT_APPLIED if not new_errors else RESULT_FAILED
        r.integrity, r.current_revisions = report, list(self._heads(conn))
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
        return self._transaction_rollback(conn, trans, plan, R.REHEARSAL_FAILURE, RESULT_REFUSED, error,
                                          verdict=False)

    def _single_failed(self, conn: Connection, scripts: ScriptSet, plan: Plan, e: BaseException) -> RunResult:
        start, target = plan.from_revisions, plan.to_revisions
        if is_lock_timeout(e):
            raise self._lock_busy() from None
        if isinstance(e, DbrevError):
            raise e
        err = self._error(e, scripts)
        L.log_error("Migration failed", e, from_revision=L._rev(start), to_revision=L._rev(target),
                    step=err.step, location=err.location)
        return self._transaction_rollback(conn, None, plan, R.MIGRATION_FAILURE, RESULT_ROLLED_BACK, err,
                                          failed_revision=err.step)

    def _transaction_rollback(self, conn: Connection, trans, plan: Plan, trigger: str, result: str,
                              error: RunError, *, integrity: dict | None = None, verdict: bool = True,
                              **log) -> RunResult:
        """Undo a single-transaction run by ROLLBACK (``trans``, unless it is already rolled back) and prove it.

        The steps that ran are rolled back; the one that failed (``error.step``) is recorded as failed;
        ``integrity``: the report the run ends with (the check that failed), else the proof's.  ``verdict``:
        a proof that fails makes the run failed (RollbackFailed)."""
        start, target = plan.from_revisions, plan.to_revisions
        if trans is not None:
            trans.rollback()
        L.rollback_triggered(trigger, target, start, **log)
        r = self.result
        for s in r.steps:
            s.status = R.ROLLED_BACK
        if trigger == R.MIGRATION_FAILURE and error.step:
            r.steps.append(StepRecord(error.step, error.direction, R.FAILED, round(
                time.monotonic() - self._step_t0 if self._step_t0 is not None else time.monotonic(), 3)))
        after = self._after_rollback(conn, start)
        L.rollback_executed(target, start, after["passed"], method=R.TRANSACTION)
        r.result, r.error, r.current_revisions = result, error, list(self._heads(conn))
        r.integrity = integrity if integrity is not None else after
        r.rollback = Rollback(reason=trigger, method=R.TRANSACTION, success=after["passed"], integrity=after)
        if verdict:
            self._rollback_verdict()
        conn.commit()
        return r

    def _lock_busy(self) -> Busy:
        """A table lock did not come within lock_timeout: busy (exit 4), whatever the transaction mode."""
        return Busy(f"a table lock was not granted within {self.db.lock_timeout:g}s "
                    f"(lock_timeout) during {(self._current_step or ('?',))[0]}",
                    hint="another session holds a lock on a table the migration alters; retry later")

    def _back_at_start(self, out: RunResult, start) -> bool:
        """A per-step run that failed is where it started, proven (its rollback, if any, succeeded)."""
        rb = out.rollback
        return (out.current_revisions is not None and self.graph.same_state(out.current_revisions, start)
                and (rb is None or bool(rb.success)))

    def _rollback_verdict(self) -> None:
        """A ROLLBACK whose proof failed (rows missing, new errors: someone else's writes) is not a success."""
        rb = self.result.rollback
        if rb.success:
            return
        rb.message = self._rollback_message(rb, [])
        self._rollback_failed()

    def _rollback_failed(self) -> None:
        self.result.result = RESULT_FAILED
        if self.result.error is None:
            self.result.error = RunError()
        self.result.error.reason = C.ROLLBACK_FAILED

    def _after_rollback(self, conn: Connection, start) -> dict:
        """Verify the database after a rollback.  Only findings new since the pre-run snapshot count
        (what was already there is reported, never blamed on the rollback), and the rows are proven
        back: exact counts of the tables the plan touches against the snapshot's."""
        conn.commit()
        snap = self._snap or {"findings": [], "touched_exact": {}}
        with conn.begin():
            heads = self._heads(conn)
            with L.timed("verify", from_revision=L._rev(heads), to_revision=L._rev(start)):
                findings = self._catalog(conn)
                fp = None
                if "fingerprint" in self._checks():
                    fp, facts = self._fingerprint(conn)
                    findings += self._drift(conn, heads, fp, facts)
                if not self.graph.same_state(heads, start):
                    findings.append(integrity.Finding(
                        "version", self.vt, 1, "error",
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
        self._rows_missing = [f.object for f in missing]
        return report

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
        steps = self._steps_for(scripts, plan, journal)
        failure = None
        try:
            with L.timed("migrate", from_revision=L._rev(start), to_revision=L._rev(target)):
                self._execute(scripts, steps, self._on_step_done(scripts, plan, deleted_steps), True, conn)
        except BaseException as e:  # noqa: BLE001
            _rollback_quietly(conn)
            if isinstance(e, DbrevError) and not _online_refusal(e):
                raise
            failure = e
        conn.commit()
        if failure is not None:
            err = self._error(failure, scripts)
            if is_lock_timeout(failure):
                err.reason = C.LOCK_BUSY
            if _online_refusal(failure):
                err.reason, err.error_type, err.hint = C.DATA_LOSS_DENIED, "PolicyRefused", failure.hint
            L.log_error("Migration failed", failure, from_revision=L._rev(start), to_revision=L._rev(target),
                        step=err.step, location=err.location)
            if err.step:
                self.result.steps.append(StepRecord(err.step, err.direction, R.FAILED,
                                                    round(time.monotonic() - self._step_t0, 3)))
            self.result.error = err
            busy = self._lock_busy() if is_lock_timeout(failure) else None
            out = self._undo_per_step(conn, scripts, start, target, R.MIGRATION_FAILURE, None)
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
            return self._undo_per_step(conn, scripts, start, target, R.INTEGRITY_CHECK_FAILURE, report)
        return self._finished(conn, plan, report, new_errors)

    def _undo_per_step(self, conn: Connection, scripts: ScriptSet, start, target, reason: str,
                       report: dict | None) -> RunResult:
        r = self.result
        heads = self._heads(conn)
        conn.commit()
        r.current_revisions = list(heads)
        if report is not None:
            r.integrity = report
        self._settle_archived(conn)
        if not self.req.policy.rollback_on_failure:
            L.state_transition(start, heads, "failed", message="Migration failed; rollback disabled by policy")
            r.result = RESULT_FAILED
            r.integrity = r.integrity or self._after_rollback_report(conn, heads)
            return r
        L.rollback_triggered(reason, heads, start, failed_revision=r.error.step if r.error else None)
        rollback = Rollback(reason=reason, method=R.INVERSE_STEPS, steps=[])
        sub = None
        restored: list[dict] = []
        pending: dict[str, list[dict]] = {}
        if self.graph.same_state(heads, start):
            rollback.success = True
        else:
            try:
                inverse = self._plan(scripts, heads, start)
                rollback.transaction = inverse.transaction
                refusal = self._undo_policy(conn, inverse)
                if refusal is not None:
                    raise refusal
                pending = self._restorable(conn)

                def emit_rollback(ev: dict) -> None:
                    # the inverse steps report as rollback_step_*, not as a new apply
                    if str(ev.get("event", "")).startswith("step_"):
                        ev = {**ev, "event": "rollback_" + ev["event"]}
                    self.emit(ev)

                sub = Runner(self.req, emit_rollback)
                sub.graph = self.graph
                sub.archive = self._undo_archive
                sub._facts_of_plan = self._undo_facts
                sub._snap = self._snap  # what existed before the run: the undo's online checks compare with it
                steps = sub._steps_for(scripts, inverse, self.journal)
                step_done = sub._on_step_done(scripts, inverse, [])

                def callback(*args, **kw):
                    step_done(*args, **kw)
                    ctx = kw["ctx"] if "ctx" in kw else args[0]
                    # put back what the forward step removed, in the transaction of the step that re-made it
                    from ..pg import archive

                    for entry in pending.pop(sub._current_step[0], []):
                        restored.append(archive.restore(ctx.connection, entry, self.schema))

                conn.commit()
                with L.timed("rollback", from_revision=L._rev(heads), to_revision=L._rev(start)):
                    if inverse.transaction == "single":
                        with conn.begin():
                            sub._execute(scripts, steps, callback, False, conn)
                    else:
                        sub._execute(scripts, steps, callback, True, conn)
                conn.commit()
                rollback.success = True
            except BaseException as e:  # noqa: BLE001
                _rollback_quietly(conn)
                L.log_error("Rollback failed", e, from_revision=L._rev(heads), to_revision=L._rev(start))
                rollback.success = False
                rollback.error = RunError(error_type=type(e).__name__,
                                          message=L.redact(str(e).splitlines()[0] if str(e) else ""),
                                          reason=e.reason if isinstance(e, DbrevError) else None)
                if sub is not None:
                    cur = sub._current_step
                    done = [(s.revision, s.direction) for s in sub.result.steps]
                    if cur and cur not in done:
                        sub.result.steps.append(StepRecord(cur[0], cur[1], R.FAILED))
            if sub is not None:
                rollback.steps = sub.result.steps  # what ran, not what was planned
                if sub.result.archived:
                    rollback.archived = sub.result.archived
        if restored:
            rollback.restored = restored
        left = [e for entries in pending.values() for e in entries]
        after = self._after_rollback(conn, start)
        rollback.integrity = after
        rollback.success = bool(rollback.success) and after["passed"] and not left
        if not rollback.success:
            rollback.message = self._rollback_message(rollback, left)
        now = self._heads(conn)
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
            self._rollback_failed()
        return r

    def _rollback_message(self, rollback: Rollback, left: list[dict]) -> str:
        parts = []
        if rollback.error:
            parts.append(f"the inverse steps failed: {rollback.error.message}")
        missing = self._rows_missing
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

    def _settle_archived(self, conn: Connection) -> None:
        """Archives taken in a step whose transaction rolled back never existed: report only the others."""
        if not self.result.archived:
            return
        from ..pg import archive

        with conn.begin():
            kept = {e["id"] for e in archive.list_archives(conn, self.schema, self.vt)}
        self.result.archived = [a for a in self.result.archived if a["id"] in kept] or None

    def _restorable(self, conn: Connection) -> dict[str, list[dict]]:
        """This run's archives, by the revision whose inverse step re-makes what they hold (newest first)."""
        ids = {a["id"] for a in self.result.archived or []}
        if not ids:
            return {}
        from ..pg import archive

        with conn.begin():
            entries = [e for e in archive.list_archives(conn, self.schema, self.vt) if e["id"] in ids]
        out: dict[str, list[dict]] = {}
        for e in sorted(entries, key=lambda e: e["id"], reverse=True):
            out.setdefault(e["revision"], []).append(e)
        return out

    def _undo_policy(self, conn: Connection, inverse: Plan) -> DbrevError | None:
        """A rollback never escalates the data-loss policy: the inverse steps run under the run's own.
        What they would remove that existed before the run is archived (Archive), or refused (Deny,
        RequireApproval: a person decides; the database stays where it is)."""
        from ..core.errors import PolicyRefused
        from ..core.options import ALLOW, Policy

        with conn.begin():
            facts = self._facts(conn, inverse, before=self._snap)
        pol = self.req.policy
        d = evaluate(inverse, Policy(downgrade=ALLOW, data_loss=pol.data_loss, rollback_on_failure=False,
                                     verify=pol.verify), None, facts)
        self._undo_facts = facts
        self._undo_archive = d.archive
        if d.allowed:
            return None
        return PolicyRefused(f"the rollback would remove data that existed before the run ({d.message})",
                             reason=d.reason,
                             hint="the database is left where the failure left it; restore or allow by hand")

    def _after_rollback_report(self, conn: Connection, heads) -> dict:
        with conn.begin():
            return self._verify_now(conn, heads, record=False)



def run(req: RunRequest, emit: Emit) -> RunResult:
    """Run one apply; errors that are the user's (bad input, busy, refused) raise DbrevError."""
    return Runner(req, emit).run()


@contextlib.contextmanager
def _logging_restored():
    """Undo what env.py's ``fileConfig(...)`` did to logging once it returns.

    ``fileConfig`` replaces the root logger's handlers and disables every logger it does not
    name (dbrev's own among them); dbrev's log lines after the run must still appear.
    """
    root = logging.getLogger()
    loggers = [root] + [lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    saved = [(lg, lg.disabled, lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    try:
        yield
    finally:
        for lg, disabled, level, propagate, handlers in saved:
            lg.disabled, lg.level, lg.propagate = disabled, level, propagate
            for h in list(lg.handlers):
                if h not in handlers:
                    lg.removeHandler(h)
            for h in handlers:
                if h not in lg.handlers:
                    lg.addHandler(h)
