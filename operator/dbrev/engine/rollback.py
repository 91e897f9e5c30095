"""``dbrev rollback``: the rollback runbook (``rollback-directive.md``) as one command.

1. assess: the live revision(s) and dbrev's journal of runs (``dbrev.runs``);
2. choose the target (:func:`choose_target`, pure): by default the revision the
   database was at before the newest applied run that brought it to where it is
   now; or ``--to REV`` / ``-1`` / ``base``;
3. show the plan and what it would lose (:func:`losses`, pure);
4. execute through the same path as ``dbrev apply`` (:func:`dbrev.engine.verbs.apply`,
   the worker), pinned to the plan shown (``expected_hash``), under the policy
   flags (``--allow-data-loss`` / ``--archive``); the downgrade itself is what was
   asked for, so the downgrade policy is Allow;
5. validate: the run's integrity report, and that the database is at the target;
6. log: ``rollback_triggered(reason, from_version, to_version)`` before the run,
   ``rollback_executed(from_version, to_version, success)`` after, both with the
   ``deployment_id``; every record of the run carries ``deployment_id`` and
   ``rollback_reason`` (log context).

Nothing to roll back: when the database is at base, or already at the requested
target, the result is ``noop`` (exit 0, like ``apply``); when it is at a revision
that no applied run of dbrev's journal ended at and no ``--to`` was given, there is
no safe default: exit 2 with the hint to name the target.

This module holds the runbook's steps; the command (its options, the printing, and
``dbrev rollback NAME`` in the cluster) is :mod:`dbrev.cli.rollback`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from ..core import errors as E
from ..core.results import RunResult
from ..core.text import revisions_text

REASONS = ("migration_failure", "integrity_check_failure", "health_check_failure", "critical_bug")
JOURNAL_RUNS = 500  # how far back the journal is read for the default target

SOURCE_JOURNAL = "journal"
SOURCE_REQUESTED = "requested"


@dataclass(frozen=True)
class Choice:
    """Where a rollback goes, and why."""

    target: str | None  # a target spec for the run; None: nothing to roll back
    source: str  # journal | requested
    undoes_run: dict | None = None  # the journal row of the run being undone (default target)
    message: str = ""
    runs_considered: int = 0
    notes: list[str] = field(default_factory=list)


def _key(revs: Iterable[str]) -> frozenset:
    return frozenset(r for r in (revs or ()) if r)


def _spec(revs: Iterable[str]) -> str:
    return revisions_text(_key(revs))


def choose_target(current: Iterable[str], runs: list[dict], to: str | None = None) -> Choice:
    """The rollback's target from the live revision(s) and the journal (newest run first).

    ``to`` given: that target, as the user wrote it (``REV``, ``-1``, ``base``), resolved by the
    run against the live revision.  Otherwise the journal is read as a stack: the newest run that
    was applied, went up (upgrade or mixed), and ended exactly where the database is now is the run
    being undone, and its starting revision(s) are the target.  A run that was itself a rollback
    (a downgrade) is skipped, so rolling back twice goes two releases back, not forth again.
    """
    current = _key(current)
    if to is not None:
        to = to.strip()
        if not to:
            raise E.BadInput("--to needs a revision", hint="a revision id or unique prefix, -1, or base")
        return Choice(to, SOURCE_REQUESTED, message=f"the requested target {to}", runs_considered=len(runs))
    notes = []
    newest = runs[0] if runs else None
    if newest is not None and newest.get("status") == "running":
        notes.append(f"run {newest.get('id')} is still marked running (in progress, or interrupted)")
    for run in runs:
        if run.get("status") != "applied" or run.get("direction") not in ("upgrade", "mixed"):
            continue
        if _key(run.get("to_revisions")) != current:
            continue
        frm = _spec(run.get("from_revisions"))
        return Choice(frm, SOURCE_JOURNAL, undoes_run=run, runs_considered=len(runs), notes=notes,
                      message=f"the revision before run {run.get('id')} ({_spec(run.get('from_revisions'))} -> "
                              f"{_spec(run.get('to_revisions'))}, the newest applied run that ended at "
                              f"{_spec(current)})")
    if not current:
        return Choice(None, SOURCE_JOURNAL, runs_considered=len(runs), notes=notes,
                      message="nothing to roll back: the database is at base (no revision applied)")
    raise E.BadInput(
        f"no default rollback target: none of dbrev's {len(runs)} journaled run(s) ended at "
        f"{_spec(current)}, where the database is (it was brought there outside dbrev, or by an older "
        f"dbrev journal)",
        hint="name the target: --to REV, --to -1 (one step down) or --to base")


def check_direction(direction: str, source: str) -> None:
    """A rollback goes down: an upgrade is refused; a branch switch (mixed) only when undoing a journal run."""
    if direction == "upgrade" or (direction == "mixed" and source == SOURCE_REQUESTED):
        raise E.BadInput(f"a rollback goes down, but reaching this target would {direction}",
                         hint="use `dbrev apply -r TARGET` to move the database forward")


def losses(plan: dict) -> list[dict]:
    """What the plan would destroy, step by step (from the plan's classified effects)."""
    out = []
    for s in plan.get("steps", []):
        for e in s.get("effects", []):
            if e.get("destructive"):
                out.append({"revision": s.get("revision"), "direction": s.get("direction"),
                            "kind": e.get("kind"), "object": e.get("object"),
                            "detail": e.get("detail") or e.get("kind")})
    return out


def succeeded(result: RunResult, target) -> bool:
    """The runbook's validation: applied (or already there: a run resumed after the downgrade committed),
    integrity passed, and the database at the target."""
    if result.result not in ("applied", "noop"):
        return False
    integ = result.integrity
    if integ is not None and not integ.get("passed", False):
        return False
    return _key(result.current_revisions) == _key(target)


# -- the imperative shell ------------------------------------------------------------------------

def assess(db, migrations: str, to: str | None = None, pythonpath: Iterable[str] = ()) -> dict:
    """Read the live revision and the journal; choose the target and plan the way there."""
    from ..core import log as L
    from ..pg import state
    from ..pg.db import connection, read_heads
    from .verbs import plan as make_plan

    with L.timed("rollback_assess"):
        with connection(db) as conn:
            heads = read_heads(conn, db.version_table, db.version_table_schema)
            runs = state.recent_runs(conn, db.state_schema, state.vt_key(db.version_table, db.version_table_schema),
                                     JOURNAL_RUNS)
            conn.commit()
    choice = choose_target(heads, runs, to)
    out = {"current_revisions": list(heads), "runs": runs[:10], "target": choice.target,
           "target_source": choice.source, "target_reason": choice.message, "notes": list(choice.notes),
           "undoes_run": (choice.undoes_run or {}).get("id"), "plan": None, "loses": []}
    if choice.target is None:
        return out
    p = make_plan(migrations, choice.target, db, pythonpath=pythonpath)
    check_direction(p.direction, choice.source)
    out["plan"] = p.to_dict(include_sql=False)
    out["to_revisions"] = list(p.to_revisions)
    out["loses"] = losses(out["plan"])
    out["_plan"] = p
    return out


def history_runs(history: list[dict]) -> list[dict]:
    """status.history entries (newest first) as journal rows, for :func:`choose_target`."""
    def revs(text):
        return [] if not text or text == "base" else text.split(",")
    return [{"id": i, "status": h.get("result"), "direction": h.get("direction"),
             "from_revisions": revs(h.get("from")), "to_revisions": revs(h.get("to"))}
            for i, h in enumerate(history or [], 1)]
