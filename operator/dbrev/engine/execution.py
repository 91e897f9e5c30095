"""Running a plan's steps through Alembic, with what that needs and what it learns declared.

Three things run steps: the forward run (:mod:`runner`), the inverse steps of a rollback
(:mod:`undo`), and the rehearsal of the way back (:mod:`rehearse`).  All three use one
:class:`StepExecution`: its inputs are its constructor's arguments, its outputs are its
attributes (the step running or last run, what env.py did) and the :class:`~dbrev.core.results.RunResult`
it is given (step records, archives, online classification, warnings).  Nothing builds a second
:class:`~dbrev.engine.runner.Runner` to run steps, and nothing sets another object's private state.

:class:`Checks` holds what every phase asks of the database the run is about (its heads, the catalog
checks, the fingerprint, drift) and depends only on the request.
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

from ..core import conditions as C
from ..pg import integrity, state
from ..core import log as L
from ..core import results as R
from ..pg.db import read_heads
from .verbs import drift_finding, plan_steps
from ..core.errors import BadInput, PolicyRefused, fk_hint
from ..core.options import ALLOW, RunRequest
from ..core.planning import Plan
from ..core.policy import Facts, effect_table_key, lossless
from ..core.results import RunError, RunResult, StepRecord
from .scripts import EnvPyFailed, ScriptSet, alembic_config, env_py_failure, revision_step

Emit = Callable[[dict], None]


def OnlineDataLoss(message: str, **kw) -> PolicyRefused:
    """A step classified online removed data the policy does not allow (raised before it commits).
    A plain PolicyRefused (so it crosses the worker boundary as one), marked ``online``."""
    e = PolicyRefused(message, **kw)
    e.online = True  # type: ignore[attr-defined]
    return e


def online_refusal(e: BaseException) -> bool:
    return isinstance(e, PolicyRefused) and getattr(e, "online", False)


class Checks:
    """The run's view of its database, from the request alone: heads, catalog checks, fingerprint, drift."""

    def __init__(self, req: RunRequest):
        self.req = req
        self.db = req.db
        self.vt = state.vt_key(req.db.version_table, req.db.version_table_schema)
        self.schema = req.db.state_schema

    def heads(self, conn: Connection) -> tuple[str, ...]:
        return read_heads(conn, self.db.version_table, self.db.version_table_schema)

    def exclude_tables(self):
        return ((self.db.version_table_schema or "public", self.db.version_table),)

    def exclude_schemas(self):
        return (self.schema, "dbrev_archive")

    def enabled(self) -> tuple[str, ...]:
        return tuple(c for c in self.req.policy.verify if c in integrity.ALL_CHECKS)

    def catalog(self, conn: Connection) -> list[integrity.Finding]:
        return integrity.catalog_findings(conn, self.enabled(), exclude_schemas=self.exclude_schemas())

    def fingerprint(self, conn: Connection) -> tuple[str, list[str]]:
        facts = integrity.fingerprint_facts(conn, exclude_schemas=self.exclude_schemas(),
                                            exclude_tables=self.exclude_tables())
        return integrity.fingerprint_of(facts), facts

    def drift(self, conn: Connection, heads, fp: str, facts: list[str]) -> list[integrity.Finding]:
        if "fingerprint" not in self.enabled():
            return []
        finding = drift_finding(conn, self.schema, self.vt, heads, fp, facts)[1]
        return [finding] if finding else []

    def catalog_and_drift(self, conn: Connection, heads) -> tuple[list[integrity.Finding], str | None, list | None]:
        """The catalog checks, and drift at ``heads`` when the fingerprint check is on: (findings, fp, facts)."""
        findings = self.catalog(conn)
        if "fingerprint" not in self.enabled():
            return findings, None, None
        fp, facts = self.fingerprint(conn)
        return findings + self.drift(conn, heads, fp, facts), fp, facts

    def verify_now(self, conn: Connection, heads, record: bool) -> dict:
        """The catalog checks and drift at ``heads`` (``record``: the fingerprint is recorded there)."""
        with L.timed("verify", from_revision=L.revs(heads), to_revision=L.revs(heads)):
            findings, fp, facts = self.catalog_and_drift(conn, heads)
            if record and fp is not None:
                state.record_fingerprint(conn, self.schema, self.vt, heads, fp, facts)
        return integrity.IntegrityReport.of(findings, fp).to_dict()

    def plan_between(self, scripts: ScriptSet, current, target, conflicts) -> Plan:
        """A plan over the run's scripts between resolved revisions (a rollback's inverse, a rehearsal):
        the same planning and conflict rule as the run's own plan."""
        return plan_steps(scripts, current, target, target_spec=self.req.target,
                          version_table=self.db.version_table, version_table_schema=self.db.version_table_schema,
                          conflicts=conflicts)


def plan_facts(conn: Connection, plan: Plan, before: dict | None = None) -> Facts:
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


def _failure_location(exc: BaseException, scripts: ScriptSet) -> str | None:
    files = {s.filename: s.name for s in scripts.sources.values()}
    loc = None
    for fr in traceback.extract_tb(exc.__traceback__):
        if fr.filename in files:
            loc = f"{files[fr.filename]}:{fr.lineno}"
    return loc


def step_error(exc: BaseException, scripts: ScriptSet, current: tuple | None) -> RunError:
    """The error of a failed step: ``current`` is the (revision, direction) that was running."""
    step = current or (None, None)
    loc = _failure_location(exc, scripts)
    orig = getattr(exc, "orig", None)
    msg = str(orig or exc).strip()
    hint = fk_hint(exc)  # a foreign key blocks the step: name the constraint and the dependent table
    return RunError(reason=C.MIGRATION_FAILED, error_type=type(orig or exc).__name__,
                    message=L.redact(msg.splitlines()[0] if msg else ""), detail=L.redact(msg),
                    step=step[0], direction=step[1], location=loc, hint=L.redact(hint) if hint else None,
                    shown=("step", "direction", "location"))


class StepExecution:
    """One execution of ``plan``'s steps.

    Inputs: the request; ``emit`` (the step events); the scripts and the plan; ``journal`` (each step is
    recorded there unless ``single``: one transaction, nothing of it survives a crash); ``single`` (steps are
    stored in one INSERT at the end, :attr:`to_store`); ``archive`` and ``facts`` (the policy's decision:
    copy what destructive steps remove; the facts it was decided on); ``snap`` (the pre-run snapshot:
    online classification compares with it).

    Outputs: ``result`` (given: the step records, archives, online classification and warnings go there);
    :attr:`current` and :attr:`step_t0` (the step running or last run, and when it began);
    :attr:`external_connection` and :attr:`env_py_ran` (what env.py did); :attr:`online_declared`,
    :attr:`online_dropped` (data loss seen online and allowed); :attr:`run_inserted` (tables the run
    filled); :attr:`to_store` (a single transaction's scripts to store).
    """

    def __init__(self, req: RunRequest, emit: Emit, scripts: ScriptSet, plan: Plan, result: RunResult, *,
                 journal: state.Journal | None, single: bool, archive: bool = False, facts: Facts | None = None,
                 snap: dict | None = None):
        self.req = req
        self.db = req.db
        self.checks = Checks(req)
        self.emit = emit
        self.scripts = scripts
        self.plan = plan
        self.result = result
        self.journal = journal
        self.single = single
        self.archive = archive
        self.facts = facts
        self.snap = snap
        self.current: tuple | None = None  # (revision, direction) of the step running or last run
        self.step_t0: float | None = None
        self.external_connection = False  # env.py ran the steps on a connection (or transaction) not dbrev's
        self.env_py_ran = False
        self.to_store: list = []
        self.online_declared: set[str] = set()
        self.online_dropped: set[str] = set()
        self.run_inserted: set[str] = set()
        self._env_configured = False
        self._online_state: tuple | None = None  # (revision, live state) before a step classified online

    def warn_once(self, text: str) -> None:
        if text not in self.result.warnings:
            self.result.warn(text)

    def failed_record(self) -> StepRecord | None:
        """The record of the step that was running when the execution failed (None: it was recorded)."""
        done = [(s.revision, s.direction) for s in self.result.steps]
        if self.current and self.current not in done:
            return StepRecord(self.current[0], self.current[1], R.FAILED)
        return None

    # -- the steps ---------------------------------------------------------------------
    def steps(self) -> list:
        """Alembic's steps of the plan, each wrapped to record, announce and protect itself as it starts."""
        scripts, plan, journal = self.scripts, self.plan, self.journal
        sd = scripts.script_directory()
        rm = sd.revision_map
        total = len(plan.steps)
        steps = []
        for i, ps in enumerate(plan.steps, 1):
            rstep = revision_step(rm, sd.get_revision(ps.revision), ps.direction == "upgrade",
                                  scripts.sources[ps.revision])
            orig = rstep.migration_fn

            def fn(_orig=orig, _i=i, _ps=ps, **kw):
                self.current = (_ps.revision, _ps.direction)
                self.step_t0 = time.monotonic()
                if not self.single:  # one transaction: nothing of it survives a crash, no step to record
                    journal.step(_i, _ps.revision, _ps.direction)
                self.emit({"event": "step_started", "index": _i, "total": total, "revision": _ps.revision,
                           "direction": _ps.direction, "doc": _ps.doc})
                L.logger.debug("Starting migration step", extra={
                    "from_revision": L.revs(_ps.from_revisions), "to_revision": L.revs(_ps.to_revisions),
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
        facts = self.facts
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
            if canon in self.run_inserted:
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

        effects = [e for e in ps.effects if lossless(e, self.facts) is None]
        rows = archive.preserve(op.get_bind(), self.checks.schema, self.checks.vt, ps.revision, ps.direction,
                                effects)
        self.result.archived = (self.result.archived or []) + rows
        for r in rows:
            self.emit({"event": "archived", **r})

    def on_step_done(self, per_step_deleted: list | None):
        """Alembic's ``on_version_apply``: store the script, classify online, count, record the step.
        ``per_step_deleted``: per-step transactions get each step's row counters appended there."""
        scripts, plan, ex_s, ex_t = self.scripts, self.plan, self.checks.exclude_schemas(), self.checks.exclude_tables()

        def callback(ctx, step, heads, run_args):
            conn = ctx.connection
            rev, direction = self.current
            info = scripts.infos[rev]
            if direction == "upgrade":
                if self.single:
                    self.to_store.append((info, scripts.sources[rev].source))  # one INSERT at the end
                else:
                    state.store_script(conn, self.checks.schema, self.checks.vt, [(info, scripts.sources[rev].source)])
            self._online_after(conn, rev, direction)
            changes = integrity.xact_row_changes(conn, exclude_schemas=ex_s, exclude_tables=ex_t)
            self.run_inserted |= {t for t, v in changes.items() if v[0] > 0}  # rows of the run's own
            if per_step_deleted is not None:  # per-step transactions: each step's own counters, summed later
                per_step_deleted.append(changes)
            dur = time.monotonic() - self.step_t0
            rec = StepRecord(rev, direction, R.APPLIED, round(dur, 3))
            self.result.steps.append(rec)
            self.emit({"event": "step_done", **rec.to_dict(), "index": len(self.result.steps),
                       "total": len(plan.steps)})
            ps = next(s for s in plan.steps if s.revision == rev)
            L.logger.debug("Finished migration step", extra={
                "from_revision": L.revs(ps.from_revisions), "to_revision": L.revs(ps.to_revisions),
                "operation": direction, "duration_ms": round(dur * 1000, 2)})
            if dur > L.SLOW_OPERATION_MS / 1000:
                L.logger.warning("Slow migration step", extra={"duration_ms": round(dur * 1000, 2),
                                                              "operation": direction, "revision": rev})
        return callback

    # -- running them ------------------------------------------------------------------
    def uses_env_py(self) -> bool:
        """The project's env.py (a script location holds one; ``--env-py``), or the built-in environment."""
        scripts = self.scripts
        choice = self.req.use_env_py
        if choice is None:  # like Alembic: a script location runs through its env.py
            return scripts.is_script_location
        if choice and scripts.env_py is None:
            raise BadInput("--env-py was asked for, but there is no env.py next to the versions folder",
                           hint="point --migrations at the folder holding env.py and versions/")
        return bool(choice)

    def execute(self, steps, callback, per_step: bool, conn: Connection) -> None:
        """Run ``steps`` through Alembic: dbrev's built-in environment, or the project's env.py.

        Either way the steps run inside ``with env:``, as Alembic runs env.py, so ``alembic.context``
        is established.  What env.py does with dbrev's connection is watched: a connection of its own
        makes dbrev end its snapshot transaction at once (it must hold no locks while another session
        migrates) and recover from failures by inverse steps (:attr:`external_connection`); ending
        dbrev's transaction is found after the run (by the runner).
        """
        from alembic.config import Config
        from alembic.runtime.environment import EnvironmentContext

        scripts = self.scripts
        ours = {"version_table": self.db.version_table, "version_table_schema": self.db.version_table_schema,
                "transaction_per_migration": per_step, "on_version_apply": callback}
        sd = scripts.script_directory()
        if not self.uses_env_py():
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
                self._run_env_py(conn, sd, cfg, steps, ours)

    def _run_env_py(self, conn, sd, cfg, steps, ours) -> None:
        """Run the project's env.py as Alembic would, with dbrev's connection and options."""
        from alembic.runtime.environment import EnvironmentContext

        self.env_py_ran = True

        env = EnvironmentContext(cfg, sd, fn=lambda heads, ctx: steps)
        project_configure = env.configure

        def configure(connection=None, url=None, **kw):
            if connection is not None and connection is not conn:
                self.external_connection = True
                self.warn_once(
                    "env.py opened its own database connection instead of using config.attributes['connection']: "
                    "the steps ran in a transaction that is not dbrev's, so a failed check is undone by inverse "
                    "steps (not ROLLBACK), and the row-count check cannot see that transaction's deletes")
                if conn.in_transaction():
                    # dbrev's snapshot transaction may hold locks (catalog reads, orphan scans) that the
                    # other session's DDL would wait for while dbrev waits for env.py: end it now.
                    conn.commit()
            for key in ("version_table", "version_table_schema"):
                if kw.get(key) not in (None, ours[key]):
                    self.warn_once(f"env.py configures {key}={kw[key]!r}; dbrev uses {ours[key]!r}")
            kw.update(ours)
            self._env_configured = True
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
            raise EnvPyFailed(env_py_failure(e, str(self.scripts.env_py))).with_traceback(e.__traceback__) from None

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

    # -- online classification (steps that cannot render offline) -------------------------
    def _online_classify(self, ps) -> bool:
        """Steps that could not be rendered offline are classified by what they do, as they run."""
        return not ps.renderable and not ps.irreversible

    def _online_before(self, ps) -> None:
        from alembic import op

        self._online_state = (ps.revision, integrity.live_state(
            op.get_bind(), exclude_schemas=self.checks.exclude_schemas(), exclude_tables=self.checks.exclude_tables()))

    def _online_after(self, conn: Connection, rev: str, direction: str) -> None:
        """Before the step commits: what did it remove that existed before the run?  Decide on that."""
        pending = self._online_state
        if not pending or pending[0] != rev:
            return
        self._online_state = None
        after = integrity.live_state(conn, exclude_schemas=self.checks.exclude_schemas(),
                                     exclude_tables=self.checks.exclude_tables())
        snap = self.snap or {"tables": {}}
        effects = integrity.live_effects(pending[1], after, snap["tables"].keys())
        record = {"revision": rev, "direction": direction, "effects": [e.to_dict() for e in effects]}
        self.result.classified_online = (self.result.classified_online or []) + [record]
        if not effects:
            return
        what = "; ".join(e.detail for e in effects)
        pol = self.req.policy.data_loss
        if pol == ALLOW:
            self.online_declared |= {e.object for e in effects}
            self.online_dropped |= {e.object for e in effects if e.kind == "drop_table"}
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
