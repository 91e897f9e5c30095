"""Prometheus metrics: the one place their names, types and labels are spelled.

Naming follows Prometheus conventions (``dbrev_`` prefix, base units,
``_total`` counters, ``_info`` with value 1) and controller-runtime's
familiar shapes.  Labels are bounded: namespace/name of a resource, result,
direction, trigger, check; revision ids appear only in ``dbrev_revision_info``.
"""

from __future__ import annotations

import platform

from ..engine.extras import require_operator

require_operator(__name__)  # before the import below: a clear error on a lean install

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics  # noqa: E402

from .. import __version__
from ..core.metric_labels import (  # noqa: F401 - the label values, spelled once (pure)
    ERROR_RESULTS,
    RESULT_APPLIED,
    RESULT_ERROR,
    RESULT_FAILED,
    RESULT_NOOP,
    RESULT_REFUSED,
    RESULT_ROLLED_BACK,
    RESULT_TRANSIENT,
    RESULT_WAITING,
    ROLLBACK_RESULTS,
    ROLLBACK_TRIGGERS,
)
from ..engine.rehearse import READINESS_VALUES

disable_created_metrics()  # no *_created series: they double the output and nothing alerts on them
REGISTRY = CollectorRegistry(auto_describe=True)


reconcile_total = Counter(
    "dbrev_reconcile_total", "Reconcile passes by result.", ["result"], registry=REGISTRY)
reconcile_errors_total = Counter(
    "dbrev_reconcile_errors_total", "Reconcile passes that ended in an error of any kind.", registry=REGISTRY)
reconcile_duration_seconds = Histogram(
    "dbrev_reconcile_duration_seconds", "Duration of reconcile passes.", registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
migration_steps_total = Counter(
    "dbrev_migration_steps_total", "Migration steps run, by direction and result.", ["direction", "result"],
    registry=REGISTRY)
rollbacks_total = Counter(
    "dbrev_rollbacks_total", "Automatic rollbacks, by resource, what triggered them and whether they succeeded.",
    ["namespace", "name", "trigger", "result"], registry=REGISTRY)
health_gate_total = Counter(  # healthgate (issue 13 §1)
    "dbrev_health_gate_total", "Health gates after a schema change, by resource and result (passed, failed).",
    ["namespace", "name", "result"], registry=REGISTRY)
rollback_readiness = Gauge(  # rehearsed downgrades (issue 14): status.rollbackReadiness.status
    "dbrev_rollback_readiness", "1 for the readiness of the way back the last applied run rehearsed before it "
    "committed (Proven, Lossy, Broken, Irreversible, Unproven), 0 for the other values.",
    ["namespace", "name", "readiness"], registry=REGISTRY)
integrity_findings = Gauge(
    "dbrev_integrity_findings", "Findings of the last verification, by check.", ["namespace", "name", "check"],
    registry=REGISTRY)
drift_detected = Gauge(
    "dbrev_drift_detected", "1 when the live schema differs from the fingerprint recorded at its revision.",
    ["namespace", "name"], registry=REGISTRY)
ready = Gauge(
    "dbrev_ready", "1 when the DatabaseRevision is Ready (at its revision and verified).", ["namespace", "name"],
    registry=REGISTRY)
waiting = Gauge(
    "dbrev_waiting", "1 when the DatabaseRevision waits on purpose (an approval, or spec.suspend): not Ready, "
    "but nothing is wrong.", ["namespace", "name"], registry=REGISTRY)
stalled = Gauge(
    "dbrev_stalled", "1 when the DatabaseRevision is Stalled (a human must act).", ["namespace", "name"],
    registry=REGISTRY)
database_reachable = Gauge(
    "dbrev_database_reachable", "1 when dbrev reached the DatabaseRevision's database on its last try, 0 when it "
    "could not (it retries by itself).", ["namespace", "name"], registry=REGISTRY)
revision_info = Gauge(
    "dbrev_revision_info", "Current and target revision of each DatabaseRevision (value 1).",
    ["namespace", "name", "current", "target"], registry=REGISTRY)
last_applied_timestamp_seconds = Gauge(
    "dbrev_last_applied_timestamp_seconds", "When the database last changed.", ["namespace", "name"],
    registry=REGISTRY)
active_workers = Gauge(
    "dbrev_active_workers", "Migration worker processes running now.", registry=REGISTRY)
build_info = Gauge(
    "dbrev_build_info", "dbrev build information (value 1).", ["version", "python"], registry=REGISTRY)
build_info.labels(version=__version__, python=platform.python_version()).set(1)

NAMES = (
    "dbrev_reconcile_total", "dbrev_reconcile_errors_total", "dbrev_reconcile_duration_seconds",
    "dbrev_migration_steps_total", "dbrev_rollbacks_total", "dbrev_integrity_findings", "dbrev_drift_detected",
    "dbrev_ready", "dbrev_waiting", "dbrev_stalled", "dbrev_database_reachable", "dbrev_revision_info", "dbrev_last_applied_timestamp_seconds",
    "dbrev_active_workers", "dbrev_build_info", "dbrev_health_gate_total", "dbrev_rollback_readiness",
)


def observe_reconcile(result: str, seconds: float) -> None:
    reconcile_total.labels(result=result).inc()
    if result in ERROR_RESULTS:
        reconcile_errors_total.inc()
    reconcile_duration_seconds.observe(seconds)


_revision_labels: dict[tuple[str, str], tuple[str, str]] = {}


def set_resource(namespace: str, name: str, *, is_ready: bool, is_stalled: bool, current: str | None,
                 target: str | None, findings: dict[str, int] | None = None, drift: bool | None = None,
                 is_waiting: bool = False, reachable: bool | None = None, readiness: str | None = None) -> None:
    """``readiness``: status.rollbackReadiness.status as the status now says (None: no rehearsal recorded)."""
    ready.labels(namespace, name).set(1 if is_ready else 0)
    if reachable is not None:
        database_reachable.labels(namespace, name).set(1 if reachable else 0)
    stalled.labels(namespace, name).set(1 if is_stalled else 0)
    waiting.labels(namespace, name).set(1 if is_waiting else 0)
    key = (namespace, name)
    if key not in _revision_labels:
        # every rollback series exists from the start at 0, so increase() sees the first rollback
        for trig in ROLLBACK_TRIGGERS:
            for res in ROLLBACK_RESULTS:
                rollbacks_total.labels(namespace, name, trig, res)
    new = (current or "", target or "")
    old = _revision_labels.get(key)
    if old != new:
        if old is not None:
            revision_info.remove(namespace, name, *old)
        revision_info.labels(namespace, name, *new).set(1)
        _revision_labels[key] = new
    if findings is not None:
        from ..pg.integrity import ALL_CHECKS

        for check in (*ALL_CHECKS, "version", "drift"):
            integrity_findings.labels(namespace, name, check).set(findings.get(check, 0))
    if drift is not None:
        drift_detected.labels(namespace, name).set(1 if drift else 0)
    if readiness:
        set_rollback_readiness(namespace, name, readiness)


def set_rollback_readiness(namespace: str, name: str, readiness: str) -> None:
    """One series per readiness value: 1 for ``readiness``, 0 for the others (a value dbrev does not know
    would be a label outside the declared set: it sets none of them to 1)."""
    for value in READINESS_VALUES:
        rollback_readiness.labels(namespace, name, value).set(1 if value == readiness else 0)


def forget_resource(namespace: str, name: str) -> None:
    """Drop every series of a deleted resource."""
    for g in (ready, waiting, stalled, database_reachable, drift_detected, last_applied_timestamp_seconds):
        try:
            g.remove(namespace, name)
        except KeyError:
            pass
    old = _revision_labels.pop((namespace, name), None)
    if old:
        try:
            revision_info.remove(namespace, name, *old)
        except KeyError:
            pass
    from ..pg.integrity import ALL_CHECKS

    for check in (*ALL_CHECKS, "version", "drift"):
        try:
            integrity_findings.remove(namespace, name, check)
        except KeyError:
            pass
    for value in READINESS_VALUES:
        try:
            rollback_readiness.remove(namespace, name, value)
        except KeyError:
            pass
    for trig in ROLLBACK_TRIGGERS:
        for res in ROLLBACK_RESULTS:
            try:
                rollbacks_total.remove(namespace, name, trig, res)
            except KeyError:
                pass
