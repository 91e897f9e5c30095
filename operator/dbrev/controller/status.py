"""Status of a DatabaseRevision, computed from an outcome: pure functions.

The states table (design.md), as code:

=================  =======  ===========  =======  ======================
situation          Ready    Reconciling  Stalled  reason (example)
=================  =======  ===========  =======  ======================
at target          True     False        False    AtRevision
applying           Unknown  True         False    Progressing
transient failure  False    True         False    DatabaseUnavailable
awaiting approval  False    False        False    AwaitingApproval
needs a human      False    False        True     DowngradeDenied, ...
suspended          (kept)   False        False    Suspended
=================  =======  ===========  =======  ======================

``lastTransitionTime`` changes only when a condition's status changes;
:func:`status_patch` returns only what differs, so a pass with nothing new
writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from ..core import conditions as C
from ..core.results import RESULT_FAILED, RunResult
from ..core.text import revisions_text  # noqa: F401 - the controller's revisions formatter, imported from here

READY_KIND = "ready"
PROGRESSING_KIND = "progressing"
TRANSIENT_KIND = "transient"
WAITING_KIND = "waiting"
STALLED_KIND = "stalled"
SUSPENDED_KIND = "suspended"

HISTORY_LIMIT = 10
FINDINGS_LIMIT = 20
MESSAGE_LIMIT = 32768


@dataclass(frozen=True)
class Outcome:
    kind: str
    reason: str
    message: str


def now_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cond(ctype: str, status: str, reason: str, message: str, generation: int, previous: dict | None,
          now: str) -> dict:
    message = message[:MESSAGE_LIMIT]
    if previous and previous.get("status") == status:
        ltt = previous.get("lastTransitionTime") or now
    else:
        ltt = now
    return {"type": ctype, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": ltt, "observedGeneration": generation}


def compute_conditions(outcome: Outcome, generation: int, previous: list[dict] | None,
                       now: str | None = None) -> list[dict]:
    now = now or now_iso()
    prev = {c.get("type"): c for c in (previous or [])}
    k, reason, msg = outcome.kind, outcome.reason, outcome.message
    if k == READY_KIND:
        ready = ("True", reason, msg)
        reconciling = ("False", reason, "")
        stalled = ("False", reason, "")
    elif k == PROGRESSING_KIND:
        ready = ("Unknown", reason, msg)
        reconciling = ("True", reason, msg)
        stalled = ("False", reason, "")
    elif k == TRANSIENT_KIND:
        ready = ("False", reason, msg)
        reconciling = ("True", reason, msg)
        stalled = ("False", reason, "")
    elif k == WAITING_KIND:
        ready = ("False", reason, msg)
        reconciling = ("False", reason, msg)
        stalled = ("False", reason, "")
    elif k == STALLED_KIND:
        ready = ("False", reason, msg)
        reconciling = ("False", reason, "")
        stalled = ("True", reason, msg)
    elif k == SUSPENDED_KIND:
        old = prev.get(C.READY)
        ready = (old["status"], old["reason"], old.get("message", "")) if old else ("Unknown", reason, msg)
        reconciling = ("False", reason, msg)
        stalled = ("False", reason, "")
    else:
        raise ValueError(f"unknown outcome kind {k!r}")
    out = []
    for ctype, (status, r, m) in ((C.READY, ready), (C.RECONCILING, reconciling), (C.STALLED, stalled)):
        out.append(_cond(ctype, status, r, m, generation, prev.get(ctype), now))
    # detail conditions (DatabaseReachable) are kept as they were: only what observes them changes them
    out.extend(c for c in (previous or []) if c.get("type") not in C.CONDITION_TYPES)
    return out


def set_detail(conditions: list[dict] | None, ctype: str, status: str, reason: str, message: str,
               generation: int, now: str) -> list[dict]:
    """The conditions with one detail condition set (added, or updated in place)."""
    conditions = list(conditions or [])
    for i, c in enumerate(conditions):
        if c.get("type") == ctype:
            conditions[i] = _cond(ctype, status, reason, message, generation, c, now)
            return conditions
    return conditions + [_cond(ctype, status, reason, message, generation, None, now)]


def with_reachability(conditions: list[dict] | None, reachable: bool | None, generation: int, now: str,
                      message: str = "") -> list[dict]:
    """Record whether the database answered.  The condition appears with the first outage and then stays.

    Ready keeps saying whether the database is at its revision; ``DatabaseReachable`` says whether dbrev
    can see it now (kstatus and Argo CD ignore detail conditions, so an outage does not flip health).
    """
    have = condition({"conditions": conditions}, C.DATABASE_REACHABLE)
    if reachable is None or (reachable and not have):
        return list(conditions or [])
    if reachable:
        return set_detail(conditions, C.DATABASE_REACHABLE, "True", C.DATABASE_REACHABLE_REASON,
                          message or "the database answers", generation, now)
    return set_detail(conditions, C.DATABASE_REACHABLE, "False", C.DATABASE_UNAVAILABLE,
                      message or "the database does not answer", generation, now)


def initial_conditions(generation: int, now: str | None = None) -> list[dict]:
    """Set on the first visit, before anything is known: Unknown, Reconciling."""
    return compute_conditions(Outcome(PROGRESSING_KIND, C.INITIALIZING, "dbrev is reading the database"),
                              generation, None, now)


def condition(status: dict | None, ctype: str) -> dict | None:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


def is_ready(status: dict | None) -> bool:
    c = condition(status, C.READY)
    return bool(c and c.get("status") == "True")


def is_stalled(status: dict | None) -> bool:
    c = condition(status, C.STALLED)
    return bool(c and c.get("status") == "True")


def metric_states(conditions) -> tuple[bool, bool, bool]:
    """(ready, stalled, waiting) as the conditions say, so that the metrics always agree with them."""
    st = {"conditions": conditions}
    ready, stalled = is_ready(st), is_stalled(st)
    rec = condition(st, C.RECONCILING) or {}
    waiting = not ready and not stalled and rec.get("reason") in (C.AWAITING_APPROVAL, C.SUSPENDED)
    return ready, stalled, waiting


def plan_status(plan: dict, computed_at: str) -> dict:
    """The status.plan block from a plan dict (``Plan.to_dict(include_sql=False)``)."""
    return {
        "hash": plan["hash"],
        "direction": plan["direction"],
        "transaction": plan["transaction"],
        "from": revisions_text(plan["from_revisions"]),
        "to": revisions_text(plan["to_revisions"]),
        "destructive": list(plan.get("destructive", [])),
        "steps": [{
            "revision": s["revision"], "direction": s["direction"], "doc": s.get("doc", ""),
            "destructive": bool(s.get("destructive")), "needsAutocommit": bool(s.get("needs_autocommit")),
            "heavyLocks": bool(s.get("heavy_locks")), "renderable": bool(s.get("renderable", True)),
            "fromDatabase": s.get("script_origin", "files") != "files",
        } for s in plan["steps"]][:500],
        "warnings": list(plan.get("warnings", []))[:50],
        "computedAt": computed_at,
        **({"recordedReadiness": recorded_readiness_status(plan["recorded_readiness"])}
           if plan.get("recorded_readiness") else {}),
    }


def recorded_readiness_status(recorded: list[dict]) -> list[dict]:
    """status.plan.recordedReadiness: for a plan that undoes upgrades, the readiness of their way back
    as rehearsed when they were applied (dbrev.engine.rehearse.recorded_for)."""
    return [{"status": r.get("status", ""), "message": str(r.get("message", ""))[:1024],
             "from": revisions_text(r.get("from") or []), "to": revisions_text(r.get("to") or []),
             "step": r.get("step") or "", "location": r.get("location") or "",
             "recordedAt": _iso(r.get("recorded_at")) if r.get("recorded_at") else ""}
            for r in recorded][:20]


def integrity_status(report: dict | None) -> dict | None:
    if not report:
        return None
    return {
        "checkedAt": _iso(report.get("checked_at")),
        "passed": bool(report.get("passed")),
        "fingerprint": report.get("fingerprint") or "",
        "findings": [{k: f[k] for k in ("check", "object", "count", "severity", "message") if k in f}
                     for f in report.get("findings", [])][:FINDINGS_LIMIT],
    }


def _iso(value: Any) -> str:
    if not value:
        return now_iso()
    if isinstance(value, datetime):
        return now_iso(value)
    try:
        return now_iso(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
    except ValueError:
        return now_iso()


def history_entry(result: RunResult, trigger: str, started_at: str) -> dict:
    return {
        "from": revisions_text(result.from_revisions),
        "to": revisions_text(result.to_revisions),
        "direction": result.direction or "none",
        "result": result.result or RESULT_FAILED,
        "trigger": trigger,
        "planHash": result.plan_hash or "",
        "startedAt": started_at,
        "durationSeconds": float(result.duration_seconds or 0.0),
    }


def push_history(history: list[dict] | None, entry: dict) -> list[dict]:
    return ([entry] + list(history or []))[:HISTORY_LIMIT]


def findings_by_check(report: dict | None) -> dict[str, int]:
    out: dict[str, int] = {}
    for f in (report or {}).get("findings", []):
        out[f["check"]] = out.get(f["check"], 0) + 1
    return out


def status_patch(old: dict | None, new: dict) -> dict:
    """The top-level status fields whose value changed (empty when nothing did)."""
    old = old or {}
    patch = {}
    for k, v in new.items():
        if _strip_volatile(old.get(k)) != _strip_volatile(v):
            patch[k] = v
    return patch


def _strip_volatile(v):
    # computedAt / checkedAt alone changing is not news worth an API write
    if isinstance(v, dict):
        return {k: _strip_volatile(x) for k, x in v.items() if k not in ("computedAt", "checkedAt")}
    if isinstance(v, list):
        return [_strip_volatile(x) for x in v]
    return v
