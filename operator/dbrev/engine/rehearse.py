"""Rehearsed downgrades: prove the way back inside the run, before the upgrade commits.

On a single-transaction run, after the steps and their verification and before
``COMMIT``: ``SAVEPOINT``, run the inverse plan (the downgrade back to the
starting revision) on the same connection, in the same transaction, through the
same Alembic machinery the run used; compare the schema fingerprint with the one
taken before the run; see which tables and columns the downgrade removed and,
after ``ROLLBACK TO SAVEPOINT``, count the rows and values they held.  The same
locks, the real data: the rollback is proven on exactly what it would meet.

The result is a :class:`Readiness`:

* ``Proven``: the downgrade restores the starting schema and loses nothing;
* ``Lossy``: it restores the schema, losing the rows/values named in ``losses``;
* ``Broken``: it fails, or does not restore the schema (the differences, the step, file and line);
* ``Irreversible``: a step of the way back has no usable ``downgrade()``;
* ``Unproven``: not rehearsed (per-step runs, env.py's own connection, ``rehearse: Never``), and why.

:func:`classify` is pure (an :class:`Outcome` in, a :class:`Readiness` out);
:func:`rehearse_in_run` is the I/O shell the runner calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

PROVEN = "Proven"
LOSSY = "Lossy"
BROKEN = "Broken"
IRREVERSIBLE = "Irreversible"
UNPROVEN = "Unproven"
READINESS_VALUES = (PROVEN, LOSSY, BROKEN, IRREVERSIBLE, UNPROVEN)

NEVER = "Never"
REPORT = "Report"
REQUIRE = "Require"
REHEARSE_VALUES = (NEVER, REPORT, REQUIRE)

# Rows/values counted per removed table or column at most (a count beyond is reported as "at least").
COUNT_CAP = 1_000_000


@dataclass(frozen=True)
class Loss:
    """What the downgrade removes: a table's rows (column None), a column's non-null values, or deleted rows."""

    table: str
    column: str | None
    rows: int
    kind: str  # "table" (dropped), "column" (dropped), "rows" (deleted from a table that stays)
    capped: bool = False

    def to_dict(self) -> dict:
        d = {"table": self.table, "column": self.column, "rows": self.rows, "kind": self.kind}
        if self.capped:
            d["at_least"] = True
        return d

    def describe(self) -> str:
        n = f"{'at least ' if self.capped else ''}{self.rows}"
        if self.kind == "table":
            return f"{n} row(s) of table {self.table} (dropped)"
        if self.kind == "column":
            return f"{n} value(s) of column {self.table}.{self.column} (dropped)"
        return f"{n} row(s) deleted from {self.table}"


@dataclass(frozen=True)
class Outcome:
    """What a rehearsal saw (or why there was none).  Plain data, for :func:`classify`."""

    steps: tuple[str, ...] = ()  # "downgrade <rev>" of the way back, in order
    unproven: str | None = None  # why it was not rehearsed
    irreversible: tuple[tuple[str, str, str], ...] = ()  # (revision, script, why)
    error: dict | None = None  # the way back failed: message, step, direction, location
    before_facts: tuple[str, ...] = ()
    after_facts: tuple[str, ...] = ()
    heads_after: tuple[str, ...] | None = None  # the version table after the way back
    start: tuple[str, ...] = ()
    heads_ok: bool = True
    losses: tuple[Loss, ...] = ()
    archived: tuple[str, ...] = ()  # "schema.table[.column]" the Archive policy would keep a copy of
    data_loss_policy: str = "Deny"
    scripts: dict = field(default_factory=dict)  # revision -> script file name
    duration_seconds: float = 0.0
    steps_seconds: float = 0.0  # of which running the downgrade's own statements


@dataclass(frozen=True)
class Readiness:
    status: str
    message: str
    details: dict

    def to_dict(self) -> dict:
        return {"status": self.status, "message": self.message, **self.details}

    @property
    def blocks(self) -> bool:
        """Require refuses to commit an upgrade whose way back is one of these."""
        return self.status in (BROKEN, IRREVERSIBLE)


from ..core.text import revisions_shown as _revs  # noqa: E402


def classify(o: Outcome) -> Readiness:
    """The readiness of the way back from what the rehearsal saw.  PURE."""
    from ..pg.integrity import diff_facts

    details: dict = {"steps": list(o.steps), "duration_seconds": round(o.duration_seconds, 3),
                     "steps_seconds": round(o.steps_seconds, 3)}
    if o.unproven is not None:
        return Readiness(UNPROVEN, f"not rehearsed: {o.unproven}", {**details, "reason": o.unproven})
    if o.irreversible:
        rev, script, why = o.irreversible[0]
        details["irreversible"] = [{"revision": r, "script": s, "reason": w} for r, s, w in o.irreversible]
        details.update({"step": rev, "location": script})
        return Readiness(IRREVERSIBLE, f"the way back cannot run: {rev} ({script}) {why}", details)
    losses = [loss.to_dict() for loss in o.losses]
    if o.error is not None:
        e = o.error
        loc = f" at {e['location']}" if e.get("location") else ""
        details.update({"step": e.get("step"), "location": e.get("location"), "error": e.get("message")})
        return Readiness(BROKEN, f"the downgrade fails{loc} ({e.get('direction') or 'downgrade'} "
                                 f"{e.get('step') or '?'}): {e.get('message')}", details)
    diff = diff_facts(list(o.before_facts), list(o.after_facts), limit=20)
    heads_ok = o.heads_ok and (o.heads_after is None or sorted(o.heads_after) == sorted(o.start))
    if diff or not heads_ok:
        details["differences"] = diff
        if losses:
            details["losses"] = losses
        last = o.steps[-1].split(" ", 1)[-1] if o.steps else None
        if diff:
            # the first step of the way back that should have undone it: the last one run (one step plans name it)
            culprit = _culprit(o, diff)
            details.update({"step": culprit, "location": o.scripts.get(culprit) if culprit else None})
            where = f" ({culprit}, {o.scripts.get(culprit)})" if culprit else ""
            return Readiness(BROKEN, f"the downgrade does not restore the starting schema{where}: "
                                     f"{len([d for d in diff if d[:1] in '+-'])} difference(s): "
                                     + "; ".join(diff[:3]), details)
        details.update({"step": last, "version_table": list(o.heads_after or ())})
        return Readiness(BROKEN, f"after the downgrade the version table holds {_revs(o.heads_after or ())}, "
                                 f"not the starting {_revs(o.start)}", details)
    if losses:
        details["losses"] = losses
        msg = "restores the starting schema, losing " + "; ".join(loss.describe() for loss in o.losses[:5])
        if len(o.losses) > 5:
            msg += f"; and {len(o.losses) - 5} more"
        if o.data_loss_policy == "Archive":
            kept = list(o.archived)
            details["archive_keeps"] = kept
            msg += (f" (dataLoss: Archive would keep a copy of {', '.join(kept)})" if kept
                    else " (dataLoss: Archive keeps none of it: no step of the way back is classified destructive)")
        return Readiness(LOSSY, msg, details)
    return Readiness(PROVEN, "the downgrade restores the starting schema and loses nothing", details)


def _culprit(o: Outcome, diff: list[str]) -> str | None:
    """The step of the way back that leaves the difference, when the way back is one step."""
    revs = [s.split(" ", 1)[-1] for s in o.steps]
    return revs[0] if len(revs) == 1 else None  # several: `dbrev check`'s stairway names the step


def script_location(scripts, revision: str, direction: str) -> str:
    """``file:line`` of the step's ``def downgrade()`` (or ``upgrade()``) in its script."""
    src = scripts.sources[revision]
    for i, line in enumerate(src.source.splitlines(), 1):
        if line.lstrip().startswith(f"def {direction}("):
            return f"{src.name}:{i}"
    return src.name


def unproven(reason: str) -> Readiness:
    return classify(Outcome(unproven=reason))


def refusal_message(r: Readiness) -> str:
    return f"rehearse: Require refuses to commit an upgrade whose way back is {r.status}: {r.message}"


# ---------------------------------------------------------------------------
# The I/O shell: run by the runner inside its single transaction.

_COLUMNS = """
    SELECT c.oid::bigint, a.attnum::int, format('%I.%I', n.nspname, c.relname), a.attname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    WHERE c.relkind IN ('r', 'p') AND {ns} AND {rel}"""


def catalog_objects(conn, exclude_schemas, exclude_tables) -> dict[tuple[int, int], tuple[str, str | None]]:
    """Tables (attnum 0) and their columns, keyed by OID and attnum: a rename keeps the key."""
    from sqlalchemy import text

    from ..pg import integrity as I

    rows = conn.execute(text(_COLUMNS.format(ns=I.ns_filter("n"), rel=I.rel_filter("n", "c"))),
                        I.exclusion_params(exclude_schemas, exclude_tables)).all()
    out: dict = {}
    for oid, attnum, table, col in rows:
        out[(int(oid), 0)] = (table, None)
        if attnum is not None:
            out[(int(oid), int(attnum))] = (table, col)
    return out


def _xact_by_oid(conn) -> dict[int, tuple[int, int]]:
    from sqlalchemy import text

    rows = conn.execute(text("SELECT relid::bigint, n_tup_ins, n_tup_del FROM pg_stat_xact_user_tables")).all()
    return {int(o): (int(i), int(d)) for o, i, d in rows}


def _count(conn, table: str, column: str | None) -> tuple[int, bool]:
    from sqlalchemy import text

    from ..pg.db import quote_ident

    where = f" WHERE {quote_ident(column)} IS NOT NULL" if column else ""
    n = conn.execute(text(f"SELECT count(*) FROM (SELECT 1 FROM {table}{where} LIMIT {COUNT_CAP + 1}) s")).scalar()
    return min(int(n), COUNT_CAP), int(n) > COUNT_CAP


class LeftTransaction(RuntimeError):
    """Raised when env.py tries to end dbrev's transaction during the rehearsal (it would commit the upgrade)."""


def _guard_transaction(conn):
    """While the way back is rehearsed, ``commit()``/``rollback()`` on dbrev's connection refuse: an env.py
    that ends the transaction would commit the upgrade (and part of the downgrade) before it is proven."""

    def refuse(*_a, **_k):
        raise LeftTransaction("env.py tried to end dbrev's transaction while the way back was rehearsed")

    conn.commit = refuse  # instance attributes: the class's methods come back when they are deleted
    conn.rollback = refuse

    def restore():
        for name in ("commit", "rollback"):
            conn.__dict__.pop(name, None)
    return restore


def rehearse_in_run(runner, conn, scripts, plan, before_facts: list[str]) -> Readiness:
    """Rehearse the way back from ``plan.to_revisions`` to ``plan.from_revisions`` inside the run's
    open transaction on ``conn``, and undo the rehearsal (``ROLLBACK TO SAVEPOINT``).  Returns the
    readiness; the transaction is left as it was before the call."""
    from ..core import log as L

    t0 = time.monotonic()
    start, target = tuple(plan.from_revisions), tuple(plan.to_revisions)
    try:
        inverse = runner.checks.plan_between(scripts, target, start, runner.conflicts)
    except Exception as e:  # noqa: BLE001 - e.g. a stored script conflict: the way back cannot be planned
        return classify(Outcome(error={"message": L.redact(str(e).splitlines()[0]), "step": None}))
    names = {s.revision: script_location(scripts, s.revision, s.direction) for s in inverse.steps}
    steps_desc = tuple(f"{s.direction} {s.revision}" for s in inverse.steps)
    irreversible = tuple((s.revision, s.script, s.render_error or "declares no downgrade")
                         for s in inverse.steps if s.irreversible)
    if irreversible:
        return classify(Outcome(steps=steps_desc, irreversible=irreversible, scripts=names))
    if inverse.transaction != "single" and inverse.steps:
        need = ", ".join(s.revision for s in inverse.steps if s.needs_autocommit)
        return unproven(f"the way back needs autocommit ({need}), so it cannot run inside the upgrade's "
                        f"transaction to be rehearsed")
    ex_s, ex_t = runner.checks.exclude_schemas(), runner.checks.exclude_tables()
    objs_before = catalog_objects(conn, ex_s, ex_t)
    xact_before = _xact_by_oid(conn)
    events: list = []
    from .execution import StepExecution, step_error
    from ..core.results import RunResult

    ex = StepExecution(runner.req, events.append, scripts, inverse, RunResult.started(), journal=None, single=True)
    error = None
    after_facts: list[str] = []
    heads_after = None
    steps_seconds = 0.0
    sp = conn.begin_nested()
    restore = _guard_transaction(conn)
    try:
        try:
            steps = ex.steps()
            t1 = time.monotonic()
            with L.timed("rehearse", from_revision=L.revs(target), to_revision=L.revs(start)):
                ex.execute(steps, ex.on_step_done(None), False, conn)
            steps_seconds = time.monotonic() - t1
            if ex.external_connection or not sp.is_active:
                raise RuntimeError("env.py left dbrev's transaction while rehearsing the way back")
            _, after_facts = runner.checks.fingerprint(conn)
            heads_after = tuple(runner.checks.heads(conn))
            objs_after = catalog_objects(conn, ex_s, ex_t)
            xact_after = _xact_by_oid(conn)
        except LeftTransaction as e:
            restore()
            if sp.is_active:
                sp.rollback()
            return unproven(f"{e}, so it cannot be rehearsed inside the upgrade's transaction")
        except (Exception, SystemExit) as e:  # noqa: BLE001 - a failing downgrade is the finding, not the run's
            if isinstance(getattr(e, "__context__", None), LeftTransaction):
                restore()
                if sp.is_active:
                    sp.rollback()
                return unproven("env.py tried to end dbrev's transaction while the way back was rehearsed")
            error = step_error(e, scripts, ex.current).to_dict()
            error["step"] = error.get("step") or (ex.current or (None,))[0]
    finally:
        restore()
        if sp.is_active:
            sp.rollback()
    losses: list[Loss] = []
    if error is None:
        try:
            with conn.begin_nested():  # a failing count must not abort the upgrade's transaction
                losses = _losses(conn, objs_before, objs_after, xact_before, xact_after)
        except Exception as e:  # noqa: BLE001
            return unproven(f"the rows the downgrade removes could not be counted: "
                            f"{L.redact(str(e).splitlines()[0] if str(e) else type(e).__name__)}")
    kept = []
    if runner.req.policy.data_loss == "Archive":
        destructive = {(f"{e.schema}.{e.table}" if e.schema else e.table)
                       for s in inverse.steps for e in s.effects if e.destructive and e.table}
        for loss in losses:
            short = loss.table.split(".", 1)[-1]
            if loss.table in destructive or short in destructive:
                kept.append(loss.table + (f".{loss.column}" if loss.column else ""))
    return classify(Outcome(
        steps=steps_desc, error=error, before_facts=tuple(before_facts), after_facts=tuple(after_facts),
        heads_after=heads_after, start=start,
        heads_ok=error is not None or runner.graph.same_state(heads_after or (), start),
        losses=tuple(losses), archived=tuple(kept), data_loss_policy=runner.req.policy.data_loss,
        scripts=names, duration_seconds=time.monotonic() - t0, steps_seconds=steps_seconds))


def _losses(conn, objs_before, objs_after, xact_before, xact_after) -> list[Loss]:
    """Rows of the tables, values of the columns the downgrade removed (counted on the upgraded
    state, after ROLLBACK TO SAVEPOINT), and rows it deleted from tables that stay."""
    losses: list[Loss] = []
    gone = {k: v for k, v in objs_before.items() if k not in objs_after}
    gone_tables = {k[0] for k in gone if k[1] == 0}
    for (oid, attnum), (table, col) in sorted(gone.items(), key=lambda kv: (kv[1][0], kv[1][1] or "")):
        if attnum != 0 and oid in gone_tables:
            continue  # counted with its table
        n, capped = _count(conn, table, col)
        if n:
            losses.append(Loss(table, col, n, "table" if attnum == 0 else "column", capped))
    for oid, (ins, dele) in xact_after.items():
        if oid in gone_tables or (oid, 0) not in objs_after:
            continue
        i0, d0 = xact_before.get(oid, (0, 0))
        net = (dele - d0) - (ins - i0)
        if net > 0:
            losses.append(Loss(objs_after[(oid, 0)][0], None, net, "rows"))
    return losses


# ---------------------------------------------------------------------------
# The readiness recorded when an upgrade ran, shown when a later plan undoes it (a GitOps revert).

def recorded_for(plan_from, plan_to, runs: list[dict], graph) -> list[dict]:
    """The readiness recorded by the applied runs whose way back a plan from ``plan_from`` to
    ``plan_to`` walks: the newest run that reached ``plan_from``, then the newest that reached where
    that one started, and so on while the way back stays above ``plan_to``.  ``runs`` as
    :func:`dbrev.pg.state.recorded_readiness` returns them (newest first).  PURE.

    Each entry: ``from``/``to`` (the way back's own direction: ``from`` is where the upgrade ended),
    ``status``, ``message``, ``recorded_at``, ``run_id``, and the rest of what the run recorded."""
    known = graph.nodes
    usable = [r for r in runs if all(x in known for x in (*r["from_revisions"], *r["to_revisions"]))]
    if not set(plan_from) <= set(known) or not set(plan_to) <= set(known):
        return []
    cur = graph.closure(plan_from)
    floor = cur & graph.closure(plan_to)  # what the plan keeps (a mixed plan: the common ancestors)
    if not floor < cur:
        return []  # the plan undoes nothing
    out: list[dict] = []
    for _ in range(len(usable)):
        seg = next((r for r in usable if graph.closure(r["to_revisions"]) == cur
                    and floor <= graph.closure(r["from_revisions"]) < cur), None)
        if seg is None:
            break
        rr = dict(seg["readiness"])
        at = seg.get("finished_at")
        out.append({**rr, "status": rr.get("status", UNPROVEN), "message": rr.get("message", ""),
                    "from": sorted(seg["to_revisions"]), "to": sorted(seg["from_revisions"]),
                    "recorded_at": at.isoformat() if hasattr(at, "isoformat") else (str(at) if at else None),
                    "run_id": seg.get("id")})
        cur = graph.closure(seg["from_revisions"])
        if cur == floor:
            break
    if out:
        out[-1]["unrecorded"] = sorted(cur - floor)  # undone by the plan, with no rehearsal on record
    return out


def recorded_lines(recorded: list[dict]) -> list[str]:
    """``dbrev plan``'s text for what :func:`recorded_for` found.  PURE."""
    if not recorded:
        return []
    lines = []
    for r in recorded:
        at = _when(r.get("recorded_at"))
        lines.append(f"  rehearsed: {r['status']} {_revs(r['from'])} -> {_revs(r['to'])}: {r['message']} "
                     f"(recorded {at}, run {r.get('run_id')})")
        for d in (r.get("differences") or [])[:5]:
            lines.append(f"        {d}")
    rest = recorded[-1].get("unrecorded") or []
    if rest:
        lines.append(f"  rehearsed: nothing recorded for undoing {', '.join(rest)}")
    return lines


def _when(iso: str | None) -> str:
    from datetime import datetime, timezone

    try:
        return datetime.fromisoformat(str(iso)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return str(iso or "?")


def attach_recorded(plan, runs: list[dict], graph) -> list[dict]:
    """Attach to ``plan`` the readiness recorded for the upgrades it undoes (``runs``: from
    :func:`dbrev.pg.state.recorded_readiness`); returns it (empty when it undoes nothing or nothing was recorded)."""
    if any(s.direction == "downgrade" for s in plan.steps):
        plan.recorded_readiness = recorded_for(plan.from_revisions, plan.to_revisions, runs, graph)
    return plan.recorded_readiness
