"""Policy: may this plan run, must it wait for an approval, must data be archived first?

Pure: a :class:`Plan`, a :class:`Policy` and the :class:`Facts` the runner read from the
live catalog (under the lock) in, a :class:`Decision` out.

Data loss means rows that existed before the run: a destructive effect on a table that
is empty, or that the run itself created, or a type change that only widens the column,
loses nothing and is not refused (:func:`lossless`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import conditions as C
from .classify import Effect, is_widening
from .options import ARCHIVE, DENY, REQUIRE_APPROVAL, Policy
from .planning import DOWNGRADE, MIXED, TX_PER_STEP, Plan, PlanStep, hash_matches

# What the Archive policy can preserve; other destructive effects are refused under it.
ARCHIVABLE = frozenset({"drop_table", "drop_column", "truncate", "delete_rows", "alter_column_type"})
# ...and what a per-step rollback can put back (a sequence holds no rows: the sequences check covers it)
ROLLBACK_RESTORABLE = ARCHIVABLE | {"drop_sequence"}


def effect_table_key(e: Effect) -> str | None:
    """How facts name an effect's table: as the effect spells it (``schema.table`` or ``table``)."""
    if not e.table:
        return None
    return f"{e.schema}.{e.table}" if e.schema else e.table


@dataclass(frozen=True)
class Facts:
    """What the live catalog says about the objects a plan's destructive effects name.

    Keys are :func:`effect_table_key` (columns: ``key + "." + column``).  ``new_*``: objects
    that did not exist before the run (a rollback dropping them loses only the run's own rows)."""
    empty_tables: frozenset = frozenset()
    column_types: dict = field(default_factory=dict)  # "t.c" -> format_type of the live column
    new_tables: frozenset = frozenset()
    new_columns: frozenset = frozenset()
    missing_tables: frozenset = frozenset()  # named by an effect, absent from the live catalog
    unused_objects: frozenset = frozenset()  # schemas without tables, types no column uses (by effect name)


def lossless(e: Effect, facts: Facts | None) -> str | None:
    """Why a destructive effect loses no pre-existing row (None when it may)."""
    if not e.destructive:
        return "not destructive"
    if e.kind == "drop_type" and not e.cascade:
        # PostgreSQL refuses to drop a type a column still uses: its values went with those columns,
        # whose removal is an effect of its own (archived, restored or refused on its own)
        return "a type no column uses any more holds no rows"
    if e.kind == "drop_sequence":
        # a sequence is a counter, not rows: with CASCADE PostgreSQL drops the column defaults that use
        # it, never a column or a row (ckan's history drops sequences it replaces with identity columns)
        return "a sequence holds no rows"
    if facts is None:
        return None
    if not e.table:
        if e.name and e.name in facts.unused_objects:
            return f"{e.name} holds no table or column"
        return None
    key = effect_table_key(e)
    if key in facts.missing_tables:
        return f"{key} does not exist (a guarded drop): no rows to lose"
    if key in facts.new_tables:
        return f"{key} was created by this run"
    if e.column and f"{key}.{e.column}" in facts.new_columns:
        return f"{key}.{e.column} was created by this run"
    if key in facts.empty_tables:
        return f"{key} is empty"
    if e.kind == "alter_column_type" and e.column and is_widening(facts.column_types.get(f"{key}.{e.column}"),
                                                                    e.new_type):
        return f"{facts.column_types[f'{key}.{e.column}']} -> {e.new_type} only widens {key}.{e.column}"
    return None


def lossy_effects(plan: Plan, facts: Facts | None) -> list[tuple[PlanStep, Effect]]:
    return [(s, e) for s in plan.steps for e in s.effects if e.destructive and lossless(e, facts) is None]


@dataclass
class Decision:
    allowed: bool
    reason: str
    message: str
    awaiting_approval: bool = False
    archive: bool = False
    #: "policy" (dataLoss Archive) or "rollback" (a per-step run archives so its rollback can restore)
    archive_reason: str | None = None
    #: destructive-looking effects that lose no pre-existing row, and why
    not_data_loss: list = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {"allowed": self.allowed, "reason": self.reason, "message": self.message,
             "awaiting_approval": self.awaiting_approval, "archive": self.archive}
        if self.archive_reason:
            d["archive_reason"] = self.archive_reason
        if self.not_data_loss:
            d["not_data_loss"] = self.not_data_loss
        return d


def _effects_text(lossy: list[tuple[PlanStep, Effect]], limit: int = 6) -> str:
    items = [f"{s.revision}: {e.detail or e.kind + ' ' + e.object}" for s, e in lossy]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def evaluate(plan: Plan, policy: Policy, approval: str | None = None, facts: Facts | None = None) -> Decision:
    """Decide whether ``plan`` may run under ``policy``, given an approval (a plan hash) if any and
    the live ``facts`` about what its destructive effects name."""
    d = _evaluate(plan, policy, approval, facts)
    d.not_data_loss = [{"revision": s.revision, "effect": e.detail or f"{e.kind} {e.object}", "why": why}
                       for s in plan.steps for e in s.effects if e.destructive
                       for why in [lossless(e, facts)] if why]
    return d


def _evaluate(plan: Plan, policy: Policy, approval: str | None, facts: Facts | None) -> Decision:
    if plan.is_noop:
        return Decision(True, C.AT_REVISION, "nothing to do")
    irreversible = [s for s in plan.steps if s.irreversible]
    if irreversible:
        s = irreversible[0]
        return Decision(False, C.IRREVERSIBLE_STEP,
                        f"step {s.revision} cannot be undone: {s.render_error}")
    needs_approval: list[str] = []
    archive = False
    archive_reason = None
    lossy = lossy_effects(plan, facts)
    if plan.direction in (DOWNGRADE, MIXED):
        if policy.downgrade == DENY:
            return Decision(False, C.DOWNGRADE_DENIED,
                            f"the plan downgrades from {_revs(plan.from_revisions)} to {_revs(plan.to_revisions)} "
                            f"({len(plan.steps)} step(s)) and the downgrade policy is Deny")
        if policy.downgrade == REQUIRE_APPROVAL:
            needs_approval.append("downgrade")
    if lossy:
        if policy.data_loss == DENY:
            return Decision(False, C.DATA_LOSS_DENIED,
                            f"the plan would lose data and the dataLoss policy is Deny: {_effects_text(lossy)}")
        if policy.data_loss == ARCHIVE:
            unarchivable = [f"{s.revision}: {e.detail or e.kind}" for s, e in lossy if e.kind not in ARCHIVABLE]
            if unarchivable:
                return Decision(False, C.DATA_LOSS_DENIED,
                                "the dataLoss policy is Archive but these effects cannot be archived: "
                                + "; ".join(unarchivable))
            archive, archive_reason = True, "policy"
        if policy.data_loss == REQUIRE_APPROVAL:
            needs_approval.append("data loss")
        if plan.transaction == TX_PER_STEP and policy.rollback_on_failure and not archive:
            # each step commits: if a later one fails, only a copy taken now can put these rows back
            lost = [f"{s.revision}: {e.detail or e.kind}" for s, e in lossy if e.kind not in ROLLBACK_RESTORABLE]
            if lost:
                return Decision(False, C.DATA_LOSS_DENIED,
                                "the plan runs one transaction per step, so a failure is undone by inverse steps, "
                                "and these effects could not be put back by them: " + "; ".join(lost)
                                + "; to run it anyway turn rollbackOnFailure off (CLI --no-rollback-on-failure): "
                                  "a failure then leaves the database where it stopped")
            archive, archive_reason = True, "rollback"
    if needs_approval:
        if hash_matches(plan.hash, approval):
            return Decision(True, C.PROGRESSING, f"approved plan {plan.hash}", archive=archive,
                            archive_reason=archive_reason)
        what = " and ".join(needs_approval)
        stale = f" (the approval {approval} is for a different plan)" if approval else ""
        return Decision(False, C.AWAITING_APPROVAL,
                        f"the plan involves {what} and needs an approval of {plan.hash}{stale}",
                        awaiting_approval=True, archive=archive, archive_reason=archive_reason)
    return Decision(True, C.PROGRESSING, f"{plan.direction} of {len(plan.steps)} step(s) allowed",
                    archive=archive, archive_reason=archive_reason)


from .text import revisions_text as _revs  # noqa: E402
