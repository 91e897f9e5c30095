"""The label values of dbrev's metrics (pure: the decisions name them without building a registry).

:mod:`dbrev.controller.metrics` declares the metrics themselves; the rollback triggers are the rollback
reasons of :mod:`dbrev.core.results`.
"""

from __future__ import annotations

from .results import ROLLBACK_TRIGGERS  # noqa: F401 - a label set of dbrev_rollbacks_total

# Results of one reconcile pass (label values of dbrev_reconcile_total).
RESULT_APPLIED = "applied"
RESULT_NOOP = "noop"
RESULT_WAITING = "waiting"  # awaiting approval, suspended
RESULT_REFUSED = "refused"
RESULT_ROLLED_BACK = "rolled_back"
RESULT_FAILED = "failed"
RESULT_TRANSIENT = "transient_error"
RESULT_ERROR = "error"
ERROR_RESULTS = frozenset({RESULT_REFUSED, RESULT_ROLLED_BACK, RESULT_FAILED, RESULT_TRANSIENT, RESULT_ERROR})
ROLLBACK_RESULTS = ("success", "failure")
