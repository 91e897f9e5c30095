"""What a run returns: :class:`RunResult` and its parts (pure: no database, no Kubernetes).

One shape for every layer.  The runner builds it, the worker carries it across the process
boundary (``to_dict`` on one side, ``from_dict`` on the other), ``dbrev apply --json`` prints its
``to_dict()`` (README, "--json documents"), and the operator's decisions (``controller/decide``)
and status (``status``) read its attributes.

``to_dict`` gives exactly the documented document: an optional field is left out while it is
``None``, unless it is named in ``shown`` (a key the document carries even when it is null, e.g.
the ``step`` of a failure outside any step).  ``from_dict(d).to_dict() == d`` for every document
dbrev writes.  The parts a run only passes on (``integrity``, ``decision``,
``rollback_readiness``, archive and classification records) stay dicts: they are made by their
own modules' ``to_dict`` and are not read here.

Reasons come from :mod:`dbrev.core.conditions`; the rollback triggers are the labels of
``metrics.ROLLBACK_TRIGGERS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import conditions as C

# results (the `result` of apply --json)
RESULT_APPLIED = "applied"
RESULT_NOOP = "noop"
RESULT_ROLLED_BACK = "rolled_back"
RESULT_FAILED = "failed"
RESULT_REFUSED = "refused"
RESULT_BUSY = "busy"

# rollback triggers (the `reason` of a rollback; the labels of metrics.ROLLBACK_TRIGGERS)
MIGRATION_FAILURE = "migration_failure"
INTEGRITY_CHECK_FAILURE = "integrity_check_failure"
TIMEOUT = "timeout"
WORKER_DIED = "worker_died"
# policy.rehearse Require refusing an upgrade whose way back is Broken or Irreversible (dbrev.engine.rehearse)
REHEARSAL_FAILURE = "rehearsal_failure"
# the health gate's onFailure: Rollback, or `dbrev rollback --reason health_check_failure`
HEALTH_CHECK_FAILURE = "health_check_failure"
ROLLBACK_TRIGGERS = (MIGRATION_FAILURE, INTEGRITY_CHECK_FAILURE, TIMEOUT, WORKER_DIED, REHEARSAL_FAILURE,
                     HEALTH_CHECK_FAILURE)

# rollback methods
TRANSACTION = "transaction"
INVERSE_STEPS = "inverse_steps"

# step statuses
APPLIED = "applied"
FAILED = "failed"
ROLLED_BACK = "rolled_back"


class _Document:
    """A part of the document: ``to_dict`` in ``ORDER``, ``from_dict`` the inverse.

    ``_REQUIRED``: keys written even when None; ``_PARTS``: how a key's document becomes its type."""

    ORDER: tuple[str, ...] = ()
    _REQUIRED: tuple[str, ...] = ()
    _PARTS: dict = {}
    shown: tuple[str, ...]

    def to_dict(self) -> dict:
        out: dict = {}
        for name in self.ORDER:
            v = getattr(self, name)
            if v is None and name not in self._REQUIRED and name not in self.shown:
                continue
            if isinstance(v, list):
                v = [x.to_dict() if isinstance(x, _Document) else x for x in v]
            elif isinstance(v, _Document):
                v = v.to_dict()
            out[name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict | None):
        if d is None:
            return None
        unknown = set(d) - set(cls.ORDER)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown key(s) {', '.join(sorted(unknown))}")
        shown = tuple(k for k, v in d.items() if v is None and k not in cls._REQUIRED)
        kw = {k: cls._PARTS[k](v) if k in cls._PARTS and v is not None else v for k, v in d.items()}
        return cls(**kw, shown=shown)


def _steps(docs: list[dict]) -> list["StepRecord"]:
    return [StepRecord.from_dict(s) for s in docs]


@dataclass
class StepRecord(_Document):
    """One step as it ran: ``status`` applied, failed or rolled_back."""

    revision: str
    direction: str
    status: str
    duration_seconds: float | None = None
    shown: tuple[str, ...] = field(default=(), compare=False)

    ORDER = ("revision", "direction", "duration_seconds", "status")
    _REQUIRED = ("revision", "direction", "status")


@dataclass
class RunError(_Document):
    """Why a run (or its rollback) did not succeed.  ``reason`` is a :mod:`dbrev.core.conditions` reason."""

    reason: str | None = None
    message: str | None = None
    error_type: str | None = None
    detail: str | None = None
    step: str | None = None
    direction: str | None = None
    location: str | None = None
    hint: str | None = None
    details: dict | None = None
    exit_code: int | None = None
    shown: tuple[str, ...] = field(default=(), compare=False)

    ORDER = ("error_type", "reason", "message", "detail", "step", "direction", "location", "hint", "details",
              "exit_code")

    @classmethod
    def of(cls, exc) -> "RunError":
        """A :class:`dbrev.core.errors.DbrevError` as its document (``DbrevError.to_dict``)."""
        return cls.from_dict(exc.to_dict())  # type: ignore[return-value]

    @classmethod
    def integrity_failed(cls, messages: list[str], rollback: bool) -> "RunError":
        """Verification after the steps found new errors (rolled back, or left as is by policy)."""
        why = "verification failed after the migration: " if rollback else \
            "verification failed and rollbackOnFailure is off: "
        return cls(reason=C.INTEGRITY_CHECK_FAILED, error_type="IntegrityCheckFailed",
                   message=why + "; ".join(messages[:3]))


@dataclass
class Rollback(_Document):
    """How a run was undone: ``method`` transaction or inverse_steps; ``reason`` one of the triggers."""

    reason: str
    method: str
    success: bool | None = None
    triggered: bool = True
    transaction: str | None = None
    steps: list[StepRecord] | None = None
    integrity: dict | None = None
    restored: list[dict] | None = None
    archived: list[dict] | None = None
    cleanup: dict | None = None
    message: str | None = None
    error: RunError | None = None
    shown: tuple[str, ...] = field(default=(), compare=False)

    ORDER = ("triggered", "reason", "method", "transaction", "success", "steps", "integrity", "restored",
              "archived", "cleanup", "message", "error")
    _REQUIRED = ("triggered", "reason", "method", "success")
    _PARTS = {"steps": _steps, "error": lambda d: RunError.from_dict(d)}


@dataclass
class RunResult(_Document):
    """One apply's outcome: the ``dbrev apply --json`` document (README) and what the operator reads."""

    result: str | None = None
    from_revisions: list[str] | None = None
    to_revisions: list[str] | None = None
    current_revisions: list[str] | None = None
    direction: str | None = None
    transaction: str | None = None
    plan_hash: str | None = None
    steps: list[StepRecord] | None = None
    warnings: list[str] | None = None
    decision: dict | None = None
    integrity: dict | None = None
    rollback: Rollback | None = None
    rollback_readiness: dict | None = None
    recorded_readiness: list[dict] | None = None  # what earlier runs proved of the way back this run takes
    archived: list[dict] | None = None
    classified_online: list[dict] | None = None
    repaired_sequences: list[dict] | None = None
    error: RunError | None = None
    duration_seconds: float | None = None
    shown: tuple[str, ...] = field(default=(), compare=False)

    ORDER = ("result", "steps", "warnings", "from_revisions", "plan_hash", "direction", "transaction",
              "to_revisions", "decision", "rollback_readiness", "recorded_readiness", "archived", "classified_online",
              "repaired_sequences", "error", "integrity", "current_revisions", "rollback", "duration_seconds")
    _PARTS = {"steps": _steps, "error": lambda d: RunError.from_dict(d), "rollback": lambda d: Rollback.from_dict(d)}

    @classmethod
    def started(cls) -> "RunResult":
        """The result a run fills in as it goes."""
        return cls(steps=[], warnings=[])

    @classmethod
    def of_error(cls, result: str, exc) -> "RunResult":
        """A run that ended with a DbrevError before it had a result: busy, refused."""
        return cls(result=result, error=RunError.of(exc))

    # -- reading it ------------------------------------------------------------------------
    @property
    def rollback_triggered(self) -> bool:
        return self.rollback is not None and self.rollback.triggered

    def warn(self, text: str) -> None:
        if self.warnings is None:
            self.warnings = []
        self.warnings.append(text)


def apply_document(r: RunResult) -> dict:
    """``dbrev apply --json``: the result, with the comma-joined revisions and the keys always there."""
    doc: dict[str, Any] = r.to_dict()
    frm, to = r.from_revisions, r.to_revisions
    doc["from_revision"] = ",".join(frm) if frm else None
    doc["to_revision"] = ",".join(to) if to else None
    doc.setdefault("steps", [])
    doc.setdefault("integrity", None)
    doc.setdefault("direction", None)
    return doc
