"""Policy: may this plan run, must it wait for an approval, must data be archived first?

Pure: a :class:`Plan` and a :class:`Policy` in, a :class:`Decision` out.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import conditions as C
from .options import ARCHIVE, DENY, REQUIRE_APPROVAL, Policy
from .planning import DOWNGRADE, MIXED, Plan, hash_matches

# What the Archive policy can preserve; other destructive effects are refused under it.
ARCHIVABLE = frozenset({"drop_table", "drop_column", "truncate", "delete_rows", "alter_column_type"})


@dataclass
class Decision:
    allowed: bool
    reason: str
    message: str
    awaiting_approval: bool = False
    archive: bool = False

    def to_dict(self) -> dict:
        return {"allowed": self.allowed, "reason": self.reason, "message": self.message,
                "awaiting_approval": self.awaiting_approval, "archive": self.archive}


def _effects_text(plan: Plan, limit: int = 6) -> str:
    items = [f"{s.revision}: {e.detail or e.kind + ' ' + e.object}"
             for s in plan.destructive_steps for e in s.effects if e.destructive]
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


def evaluate(plan: Plan, policy: Policy, approval: str | None = None) -> Decision:
    """Decide whether ``plan`` may run under ``policy``, given an approval (a plan hash) if any."""
    if plan.is_noop:
        return Decision(True, C.AT_REVISION, "nothing to do")
    irreversible = [s for s in plan.steps if s.irreversible]
    if irreversible:
        s = irreversible[0]
        return Decision(False, C.IRREVERSIBLE_STEP,
                        f"step {s.revision} cannot be undone: {s.render_error}")
    needs_approval: list[str] = []
    archive = False
    if plan.direction in (DOWNGRADE, MIXED):
        if policy.downgrade == DENY:
            return Decision(False, C.DOWNGRADE_DENIED,
                            f"the plan downgrades from {_revs(plan.from_revisions)} to {_revs(plan.to_revisions)} "
                            f"({len(plan.steps)} step(s)) and the downgrade policy is Deny")
        if policy.downgrade == REQUIRE_APPROVAL:
            needs_approval.append("downgrade")
    if plan.destructive_steps:
        if policy.data_loss == DENY:
            return Decision(False, C.DATA_LOSS_DENIED,
                            f"the plan would lose data and the dataLoss policy is Deny: {_effects_text(plan)}")
        if policy.data_loss == ARCHIVE:
            unarchivable = [f"{s.revision}: {e.detail or e.kind}" for s in plan.destructive_steps
                            for e in s.effects if e.destructive and e.kind not in ARCHIVABLE]
            if unarchivable:
                return Decision(False, C.DATA_LOSS_DENIED,
                                "the dataLoss policy is Archive but these effects cannot be archived: "
                                + "; ".join(unarchivable))
            archive = True
        if policy.data_loss == REQUIRE_APPROVAL:
            needs_approval.append("data loss")
    if needs_approval:
        if hash_matches(plan.hash, approval):
            return Decision(True, C.PROGRESSING, f"approved plan {plan.hash}", archive=archive)
        what = " and ".join(needs_approval)
        stale = f" (the approval {approval} is for a different plan)" if approval else ""
        return Decision(False, C.AWAITING_APPROVAL,
                        f"the plan involves {what} and needs an approval of {plan.hash}{stale}",
                        awaiting_approval=True, archive=archive)
    return Decision(True, C.PROGRESSING, f"{plan.direction} of {len(plan.steps)} step(s) allowed",
                    archive=archive)


def _revs(revs) -> str:
    return ",".join(revs) if revs else "base"
