"""How dbrev writes revisions and plans in text: one formatter each (pure).

Two ways to write a set of revisions, each used everywhere it fits:

* :func:`revisions_text`, the key: sorted ids joined by ``,`` (``base`` when empty) — status fields,
  Events, the state tables' keys, log fields, a target given back to the run;
* :func:`revisions_shown`, for people reading the CLI: ``a, b`` (``base (empty)``; ``unknown`` for None).

:func:`plan_summary` is the one line that names a plan (Events, status, the CLI's progress).
"""

from __future__ import annotations

from typing import Callable, Iterable

BASE = "base"


def revisions_text(revs: Iterable[str] | str | None) -> str:
    """``('b', 'a')`` -> ``'a,b'``; ``()`` -> ``'base'``; ``None`` -> ``''``; text already written is kept."""
    if revs is None:
        return ""
    if isinstance(revs, str):
        return revs
    return ",".join(sorted(revs)) or BASE


def parse_revisions(text: str | None) -> list[str]:
    """The inverse of :func:`revisions_text`: ``'a,b'`` -> ``['a', 'b']``; ``'base'`` or nothing -> ``[]``."""
    return [] if not text or text == BASE else text.split(",")


def revisions_shown(revs: Iterable[str] | None) -> str:
    """``['a', 'b']`` -> ``'a, b'``; ``[]`` -> ``'base (empty)'``; ``None`` -> ``'unknown'``."""
    if revs is None:
        return "unknown"
    revs = list(revs)
    return ", ".join(revs) if revs else "base (empty)"


def plan_summary(direction: str | None, from_revisions, to_revisions, steps: int,
                 transaction: str | None = None, shown: Callable = revisions_text) -> str:
    """``upgrade base -> b7c8d9e0f1a2, 2 step(s)`` (``, transaction single`` when given)."""
    return (f"{direction} {shown(from_revisions)} -> {shown(to_revisions)}, {steps} step(s)"
            + (f", transaction {transaction}" if transaction else ""))


def plan_dict_summary(plan: dict, transaction: bool = True, shown: Callable = revisions_text) -> str:
    """:func:`plan_summary` of a plan document (``Plan.to_dict()``, the run's ``plan`` event)."""
    return plan_summary(plan.get("direction"), plan.get("from_revisions"), plan.get("to_revisions"),
                        len(plan.get("steps") or []), plan.get("transaction") if transaction else None, shown)
