"""The engine's verbs: current, history, plan, apply, verify.

Thin, like Alembic's ``command.py``: each verb gathers its inputs and calls
the machinery (:mod:`graph`, :mod:`planning`, :mod:`policy` for deciding;
:mod:`db`, :mod:`runner`, :mod:`worker` for doing).  The CLI and the
operator both call these and nothing below them.

:func:`plan_against` is the one plan: ``dbrev plan``, ``dbrev check`` and the run itself
(:mod:`runner`, under the lock) make it, so they agree on stored copies, conflicts and the hash.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ..pg import integrity, state
from . import rehearse
from ..core import log as L
from ..pg.db import connection, read_heads, safe_url
from ..core.options import DbOptions
from ..core.errors import DbrevError
from ..core.planning import Plan, StoredCopies, build_plan, check_conflicts, sort_stored
from ..core.options import DEFAULT_RUN_TIMEOUT, RunRequest
from ..core.results import RunResult
from .scripts import ScriptSet, load_folder, render


def open_scripts(migrations: str, pythonpath: Iterable[str] = ()) -> ScriptSet:
    with L.timed("load_scripts", migrations=str(migrations)):
        return load_folder(migrations, pythonpath=pythonpath)


def stored_copies(conn, db: DbOptions, scripts: ScriptSet | None = None) -> StoredCopies:
    """The scripts the database keeps, sorted against ``scripts`` (:func:`dbrev.core.planning.sort_stored`); without
    ``scripts`` every intact copy is ``usable`` (a verb that only reads them)."""
    rows = state.stored_scripts(conn, db.state_schema, state.vt_key(db.version_table, db.version_table_schema))
    return sort_stored(scripts.infos if scripts is not None else {}, rows)


def with_stored(scripts: ScriptSet, stored: StoredCopies) -> ScriptSet:
    """``scripts`` plus the stored copies of revisions no declared script defines."""
    return scripts.with_extra(state.stored_sources(stored.usable))


def plan_steps(scripts: ScriptSet, current, target, *, target_spec: str, version_table: str,
               version_table_schema: str | None, conflicts: Iterable[str] = ()) -> Plan:
    """The steps from ``current`` to ``target`` (resolved ids) and the stored-script conflict rule."""
    with L.timed("plan", from_revision=L.revs(current), to_revision=L.revs(target)):
        p = build_plan(scripts.graph, scripts.infos, {r: s.source for r, s in scripts.sources.items()}, current,
                       target, lambda rev, up: render(scripts, rev, up, version_table, version_table_schema),
                       target_spec=target_spec, version_table=version_table,
                       version_table_schema=version_table_schema)
    return check_conflicts(p, conflicts)


def plan_against(scripts: ScriptSet, current, target: str, *, version_table: str, version_table_schema: str | None,
                 stored: StoredCopies | None = None, recorded: list[dict] | None = None) -> tuple[Plan, ScriptSet]:
    """The one plan of ``dbrev plan``, ``dbrev apply`` and the operator's runs: the declared scripts plus the
    usable stored copies, the live revision checked, ``target`` resolved, the steps planned, a changed script
    warned about (refused when its downgrade would run), and a revert's recorded readiness attached.

    Returns the plan and the script set it was planned over (what the run executes)."""
    stored = stored or StoredCopies()
    scripts = with_stored(scripts, stored)
    g = scripts.graph
    g.check_live(current)
    target_revs = g.resolve(target, current)
    p = plan_steps(scripts, current, target_revs, target_spec=target, version_table=version_table,
                   version_table_schema=version_table_schema, conflicts=stored.conflicts)
    p.warnings[:0] = stored.warnings
    if recorded is not None:
        rehearse.attach_recorded(p, recorded, g)  # a revert's plan: the readiness recorded when it was applied
    return p, scripts


def drift_finding(conn, state_schema: str, vt: str, heads, fp: str, facts: list[str]
                  ) -> tuple[bool, integrity.Finding | None]:
    """Drift: the schema now (``fp``/``facts``) against the fingerprint recorded at ``heads``.

    Returns whether one is recorded, and the warning when it differs (the one drift check of the run and
    of ``dbrev verify``)."""
    rec = state.recorded_fingerprint(conn, state_schema, vt, heads)
    if rec is None or rec[0] == fp:
        return rec is not None, None
    diff = integrity.diff_facts(rec[1], facts)
    return True, integrity.Finding(
        "drift", state.revisions_key(heads), len(diff), "warning",
        f"the schema at {state.revisions_key(heads)} differs from when the database was last at this "
        f"revision ({len(diff)} difference(s): {'; '.join(diff[:3])})")


def observe(db: DbOptions, scripts: ScriptSet | None = None) -> dict:
    """The live revision(s), and how they relate to the scripts if given."""
    with connection(db) as conn:
        heads = read_heads(conn, db.version_table, db.version_table_schema)
        stored = stored_copies(conn, db) if scripts is not None else None
        conn.commit()
    out: dict = {"revisions": list(heads), "database": safe_url(db.url),
                 "version_table": state.vt_key(db.version_table, db.version_table_schema)}
    if scripts is not None:
        scripts = with_stored(scripts, stored)
        g = scripts.graph
        unknown = [r for r in heads if r not in g.nodes]
        out["unknown"] = unknown
        out["heads"] = list(g.heads)
        if not unknown:
            undo, apply = g.diff(heads, g.heads)
            out["at_head"] = not undo and not apply
            out["pending"] = apply
        out["docs"] = {r: g.nodes[r].doc for r in heads if r in g.nodes}
    return out


def plan(migrations: str, target: str, db: DbOptions | None = None, from_revisions: Iterable[str] | None = None,
         pythonpath: Iterable[str] = (), version_table: str = "alembic_version",
         version_table_schema: str | None = None) -> Plan:
    """Plan without changing anything; reads the live revision from ``db`` unless ``from_revisions`` is given.

    From the database it is the run's own plan (:func:`plan_against`): the same stored copies, conflicts and hash.
    """
    scripts = open_scripts(migrations, pythonpath)
    if db is not None:
        version_table, version_table_schema = db.version_table, db.version_table_schema
    stored, recorded = None, None
    if from_revisions is None:
        if db is None:
            raise DbrevError("planning needs the current revision: give a database URL or --from")
        with connection(db) as conn:
            current = read_heads(conn, db.version_table, db.version_table_schema)
            stored = stored_copies(conn, db, scripts)
            recorded = state.recorded_readiness(conn, db.state_schema, state.vt_key(db.version_table,
                                                                                    db.version_table_schema))
            conn.commit()
    else:
        g0 = scripts.graph
        current = tuple(r for part in from_revisions for r in (g0.resolve(part) if part else ()))
    p, scripts = plan_against(scripts, current, target, version_table=version_table,
                              version_table_schema=version_table_schema, stored=stored, recorded=recorded)
    if scripts.is_script_location:
        p.warnings.append("apply runs the steps through env.py (use --builtin-env for dbrev's own environment); "
                          "the SQL shown is rendered without it, so names that its naming convention gives "
                          "constraints and indexes may differ")
    return p


def apply(req: RunRequest, *, timeout: float | None = DEFAULT_RUN_TIMEOUT, on_event: Callable[[dict], None] | None = None,
          log_level: str = "INFO", log_context: dict | None = None,
          stderr_sink: Callable[[str], None] | None = None, in_process: bool = False,
          isolate: bool = True) -> RunResult:
    """Bring the database to ``req.target``.  Runs in a worker process with a hard timeout.

    ``isolate`` (the operator): a fresh interpreter that gets only the request; otherwise (the CLI) a
    fork of this process, which saves a second interpreter start and import of the engine.
    """
    if in_process:
        from .runner import run

        return run(req, on_event or (lambda e: None))
    from .worker import run_in_worker

    progress = _Progress(on_event)
    result = run_in_worker(req, timeout=timeout, on_event=progress, log_level=log_level, log_context=log_context,
                           stderr_sink=stderr_sink, isolate=isolate)
    return progress.name_lost_step(result)


class _Progress:
    """Follows the worker's events: which step (and script file) was running when the worker vanished.

    A script that calls ``os._exit()`` or is killed leaves no traceback; the step it was in is the best
    location there is, so a dead worker's error names it.
    """

    def __init__(self, on_event: Callable[[dict], None] | None):
        self.on_event = on_event
        self.workers = 0
        self.scripts: dict[tuple[str, str], str] = {}
        self.running: dict | None = None

    def __call__(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "backend":
            self.workers += 1
        elif self.workers <= 1:  # the first worker; a rollback run after its death is another
            if kind == "plan":
                self.scripts = {(s.get("revision"), s.get("direction")): s.get("script")
                                for s in ev["plan"].get("steps", [])}
            elif kind in ("step_started", "rollback_step_started"):
                self.running = ev
            elif kind in ("step_done", "rollback_step_done"):
                self.running = None
        if self.on_event:
            self.on_event(ev)

    def name_lost_step(self, result: RunResult) -> RunResult:
        err = result.error
        ev = self.running
        if not err or ev is None or err.error_type not in ("WorkerDied", "WorkerTimeout") or err.step:
            return result
        script = self.scripts.get((ev.get("revision"), ev.get("direction")))
        where = f"{ev.get('direction')} {ev.get('revision')}" + (f", {script}" if script else "")
        phase = "rollback step" if str(ev.get("event")).startswith("rollback_") else "step"
        err.message = f"{err.message or ''} during {phase} {ev.get('index')}/{ev.get('total')} ({where})"
        err.step, err.direction, err.location = ev.get("revision"), ev.get("direction"), script
        err.shown = tuple(dict.fromkeys((*err.shown, "step", "direction", "location")))
        return result


def verify(db: DbOptions, checks: Iterable[str] = integrity.ALL_CHECKS, migrations: str | None = None,
           expect: str | None = None, accept_drift: bool = False, pythonpath: Iterable[str] = ()) -> dict:
    """Integrity checks on demand: catalog checks, drift against the fingerprint recorded at this revision."""
    checks = tuple(checks)
    scripts = open_scripts(migrations, pythonpath) if migrations else None
    exclude_schemas = (db.state_schema, "dbrev_archive")
    exclude_tables = ((db.version_table_schema or "public", db.version_table),)
    vt = state.vt_key(db.version_table, db.version_table_schema)
    with L.timed("verify"):
        with connection(db) as conn:
            heads = read_heads(conn, db.version_table, db.version_table_schema)
            findings = integrity.catalog_findings(conn, checks, exclude_schemas=exclude_schemas)
            fp = None
            if scripts is not None:
                scripts = with_stored(scripts, stored_copies(conn, db))
                unknown = [r for r in heads if r not in scripts.graph.nodes]
                if unknown:
                    findings.append(integrity.Finding("version", vt, len(unknown), "error",
                                                      f"the database is at {', '.join(unknown)}, which no script "
                                                      f"defines"))
                elif expect:
                    want = scripts.graph.resolve(expect, heads)
                    if not scripts.graph.same_state(heads, want):
                        findings.append(integrity.Finding(
                            "version", vt, 1, "error",
                            f"the database is at {state.revisions_key(heads)}, not {state.revisions_key(want)}"))
            if "fingerprint" in checks:
                facts = integrity.fingerprint_facts(conn, exclude_schemas=exclude_schemas,
                                                    exclude_tables=exclude_tables)
                fp = integrity.fingerprint_of(facts)
                has_state = conn.execute(__import__("sqlalchemy").text("SELECT to_regclass(:t) IS NOT NULL"),
                                         {"t": f'"{db.state_schema}".fingerprints'}).scalar()
                if has_state:
                    recorded, drift = drift_finding(conn, db.state_schema, vt, heads, fp, facts)
                    if drift is not None and accept_drift:
                        state.record_fingerprint(conn, db.state_schema, vt, heads, fp, facts, replace=True)
                    elif drift is not None:
                        findings.append(drift)
                    elif not recorded:
                        state.record_fingerprint(conn, db.state_schema, vt, heads, fp, facts)
            conn.commit()
    report = integrity.IntegrityReport.of(findings, fp).to_dict()
    report["revisions"] = list(heads)
    return report


def history(migrations: str, db: DbOptions | None = None, pythonpath: Iterable[str] = (),
            runs: int = 0) -> dict:
    """The scripts in order (newest first), marking the live revision(s) and what the database keeps."""
    scripts = open_scripts(migrations, pythonpath)
    heads: tuple[str, ...] = ()
    stored_revs: set[str] = set()
    recent: list[dict] = []
    if db is not None:
        with connection(db) as conn:
            heads = read_heads(conn, db.version_table, db.version_table_schema)
            stored = stored_copies(conn, db)
            stored_revs = {r["revision"] for r in stored.usable}
            if runs:
                recent = state.recent_runs(conn, db.state_schema,
                                           state.vt_key(db.version_table, db.version_table_schema), runs)
            conn.commit()
        scripts = with_stored(scripts, stored)
    g = scripts.graph
    applied = g.closure(r for r in heads if r in g.nodes)
    entries = []
    for rev in reversed(g.topological(g.nodes)):
        info = scripts.infos[rev]
        entries.append({
            "revision": rev, "down_revisions": list(info.down_revisions), "doc": info.doc,
            "branch_labels": list(info.branch_labels), "depends_on": list(info.dependencies),
            "script": info.name, "origin": info.origin, "is_head": rev in g.heads,
            "is_merge": len(info.down_revisions) > 1, "is_branch_point": len(g.children[rev]) > 1,
            "current": rev in heads, "applied": rev in applied if db is not None else None,
            "stored_in_database": rev in stored_revs if db is not None else None,
        })
    return {"revisions": entries, "heads": list(g.heads), "current": list(heads) if db is not None else None,
            "runs": recent}
