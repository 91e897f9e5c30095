"""Errors the engine raises: each carries a CLI exit code and a condition reason.

Exit codes (a stable interface, documented in README):
0 success or nothing to do; 1 failed (rolled back where it could);
2 bad input; 3 refused by policy; 4 busy (lock held); 5 database unavailable.
"""

from __future__ import annotations

import re

from . import conditions as C
from .redact import redact

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_REFUSED = 3
EXIT_BUSY = 4
EXIT_UNAVAILABLE = 5


class DbrevError(Exception):
    """Base error.  ``str()`` is always safe to show: secrets are redacted."""

    exit_code = EXIT_FAILED
    reason = C.MIGRATION_FAILED
    transient = False

    def __init__(self, message: str, *, reason: str | None = None, hint: str | None = None,
                 details: dict | None = None):
        message = redact(message)
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason
        self.hint = redact(hint) if hint else None
        self.details = details or {}

    def __str__(self) -> str:
        return self.message + (f" ({self.hint})" if self.hint else "")

    def to_dict(self) -> dict:
        d = {"error_type": type(self).__name__, "reason": self.reason,
             "message": self.message, "exit_code": self.exit_code}
        if self.hint:
            d["hint"] = self.hint
        if self.details:
            d["details"] = self.details
        return d


class BadInput(DbrevError):
    exit_code = EXIT_BAD_INPUT
    reason = C.INVALID_SPEC


class ScriptError(BadInput):
    """A version script cannot be loaded: syntax, import, duplicate id, broken chain."""

    reason = C.INVALID_SCRIPTS

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None, **kw):
        where = f"{path}:{line}: " if path and line else (f"{path}: " if path else "")
        super().__init__(where + message, **kw)
        self.path = path
        self.line = line
        self.details.update({k: v for k, v in (("path", path), ("line", line)) if v})


class RevisionNotFound(BadInput):
    reason = C.REVISION_NOT_FOUND


class AmbiguousRevision(BadInput):
    reason = C.AMBIGUOUS_REVISION


class MultipleHeads(BadInput):
    reason = C.MULTIPLE_HEADS


class UnknownDatabaseRevision(BadInput):
    reason = C.UNKNOWN_DATABASE_REVISION


class ScriptConflict(BadInput):
    reason = C.SCRIPT_CONFLICT


class DatabaseConfigError(BadInput):
    """Wrong URL, wrong password, missing database, missing privilege."""

    reason = C.INVALID_DATABASE_URL


class DatabaseUnavailable(DbrevError):
    exit_code = EXIT_UNAVAILABLE
    reason = C.DATABASE_UNAVAILABLE
    transient = True


class SessionLost(DatabaseUnavailable):
    """The run's database session went away mid-run (restart, terminated backend): transient, retried."""


class Busy(DbrevError):
    exit_code = EXIT_BUSY
    reason = C.LOCK_BUSY
    transient = True


class MigrationJobError(DbrevError):
    """A migration Job could not give a result: its image, its pod, Kubernetes (controller/jobrun).

    Transient (retried with backoff) for the reasons of :data:`dbrev.core.conditions.JOB_TRANSIENT_REASONS`."""

    def __init__(self, message: str, *, reason: str, **kw):
        super().__init__(message, reason=reason, **kw)

    @property
    def transient(self) -> bool:  # a property: a reported error re-made without __init__ (worker) has it too
        return self.reason in C.JOB_TRANSIENT_REASONS or self.reason == C.KUBERNETES_UNAVAILABLE


class ScriptsOutOfDate(DbrevError):
    """The migrations folder does not hold the scripts the operator read (``dbrev apply --scripts-sha256``): the
    ConfigMap volume of a migration pod lags an update. Raised before anything touches the database; transient."""

    reason = C.SCRIPTS_OUT_OF_DATE
    transient = True


class PolicyRefused(DbrevError):
    exit_code = EXIT_REFUSED
    reason = C.DOWNGRADE_DENIED


class PlanChanged(PolicyRefused):
    """The plan differs from the one that was reviewed or approved."""

    reason = C.PLAN_CHANGED


_FK_DEPENDS = re.compile(r'constraint "?([^"\s]+)"? on table "?([^"\s]+)"? depends on table "?([^"\s]+)"?')
_FK_VIOLATES = re.compile(r'(?:update or delete on|insert or update on) table "([^"]+)" violates foreign key '
                          r'constraint "([^"]+)" on table "([^"]+)"')


def fk_hint(exc: BaseException) -> str | None:
    """What to do when a foreign key blocks a step: the constraint and the dependent table, by name."""
    orig = getattr(exc, "orig", None) or exc
    diag = getattr(orig, "diag", None)
    text = f"{orig}\n{getattr(diag, 'message_detail', None) or ''}"
    m = _FK_DEPENDS.search(text)
    if m:
        con, dependent, table = m.groups()
        return (f"the foreign key {con} on table {dependent} still references {table}: downgrade (or drop) what "
                f"depends on {table} first, e.g. the revision that added {con}, or drop that constraint")
    m = _FK_VIOLATES.search(text)
    if m:
        table, con, dependent = m.groups()
        if text.startswith("insert") or "insert or update on" in text:
            return (f"rows of {table} point at rows that do not exist in {dependent} (foreign key {con}): insert "
                    f"the referenced rows first")
        return (f"rows in table {dependent} still reference the rows of {table} through the foreign key {con}: "
                f"delete or re-point those rows of {dependent} first (or downgrade the revision that created "
                f"{dependent})")
    return None
