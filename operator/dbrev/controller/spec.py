"""A DatabaseRevision's spec as plain data, with the defaults the CRD declares."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import durations
from ..options import (ALL_CHECKS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOCK_TIMEOUT, DEFAULT_RUN_TIMEOUT,
                       DEFAULT_STATEMENT_TIMEOUT, Policy)


@dataclass(frozen=True)
class SecretKeyRef:
    name: str
    key: str


@dataclass(frozen=True)
class Credentials:
    host: str
    port: int
    database: str
    user: str
    password: SecretKeyRef
    ssl_mode: str | None = None


@dataclass(frozen=True)
class Spec:
    revision: str
    url_secret: SecretKeyRef | None
    credentials: Credentials | None
    connect_timeout: float
    lock_timeout: float
    statement_timeout: float
    configmaps: tuple[str, ...]
    version_table: str
    version_table_schema: str | None
    policy: Policy
    timeout: float
    suspend: bool
    drift_check_interval: float
    verify: tuple[str, ...] = field(default=ALL_CHECKS)
    health_gate: HealthGate | None = None


class SpecError(ValueError):
    pass


@dataclass(frozen=True)
class HealthGate:  # healthgate (issue 13 §1)
    workloads: tuple[tuple[str, str], ...]  # (kind, name)
    window: float
    on_failure: str = "Report"


def parse_duration(text: str) -> float:
    """'10m', '1h30m', '45s', '30d' -> seconds (the one grammar: :mod:`dbrev.durations`)."""
    try:
        return durations.parse_duration(text)
    except ValueError as e:
        raise SpecError(str(e)) from None


def parse_spec(spec: dict) -> Spec:
    """Defaults match the CRD's; the API server has already applied them, this covers old objects."""
    try:
        db = spec.get("database") or {}
        url_ref = db.get("urlSecretRef")
        creds = db.get("credentials")
        if bool(url_ref) == bool(creds):
            raise SpecError("give exactly one of database.urlSecretRef or database.credentials")
        credentials = None
        if creds:
            pw = creds["passwordSecretRef"]
            credentials = Credentials(creds["host"], int(creds.get("port", 5432)), creds["database"], creds["user"],
                                      SecretKeyRef(pw["name"], pw.get("key", "password")), creds.get("sslMode"))
        mig = spec.get("migrations") or {}
        cms = tuple(ref["name"] for ref in mig.get("configMapRefs") or [])
        if not cms:
            raise SpecError("migrations.configMapRefs names no ConfigMap")
        pol = spec.get("policy") or {}
        verify = tuple(pol.get("verify") or ALL_CHECKS)
        policy = Policy(downgrade=pol.get("downgrade", "Allow"), data_loss=pol.get("dataLoss", "Deny"),
                        rollback_on_failure=bool(pol.get("rollbackOnFailure", True)), verify=verify,
                        repair_sequences=bool(pol.get("repairSequences", False)),
                        rehearse=pol.get("rehearse", "Report"))
        revision = str(spec["revision"]).strip()
        if not revision:
            raise SpecError("spec.revision is empty")
        return Spec(
            revision=revision,
            url_secret=SecretKeyRef(url_ref["name"], url_ref.get("key", "url")) if url_ref else None,
            credentials=credentials,
            connect_timeout=float(db.get("connectTimeoutSeconds", DEFAULT_CONNECT_TIMEOUT)),
            lock_timeout=float(db.get("lockTimeoutSeconds", DEFAULT_LOCK_TIMEOUT)),
            statement_timeout=float(db.get("statementTimeoutSeconds", DEFAULT_STATEMENT_TIMEOUT)),
            configmaps=cms,
            version_table=mig.get("versionTable", "alembic_version"),
            version_table_schema=mig.get("versionTableSchema"),
            policy=policy,
            timeout=float(pol.get("timeoutSeconds", DEFAULT_RUN_TIMEOUT)),
            suspend=bool(spec.get("suspend", False)),
            drift_check_interval=parse_duration(spec.get("driftCheckInterval", "10m")),
            verify=verify,
            health_gate=_health_gate(spec.get("healthGate"), policy.downgrade),
        )
    except (KeyError, TypeError) as e:
        raise SpecError(f"incomplete spec: missing {e}") from None
    except ValueError as e:
        raise SpecError(str(e)) from None


ON_FAILURE = ("Report", "Rollback")


def _health_gate(hg: dict | None, downgrade: str = "Allow") -> HealthGate | None:
    if not hg:
        return None
    workloads = tuple((str(w["kind"]), str(w["name"])) for w in hg.get("workloads") or [])
    if not workloads:
        raise SpecError("healthGate.workloads names no workload")
    bad = [k for k, _ in workloads if k not in ("Deployment", "StatefulSet")]
    if bad:
        raise SpecError(f"healthGate.workloads: kind {bad[0]!r} is not Deployment or StatefulSet")
    on_failure = hg.get("onFailure", "Report")
    if on_failure not in ON_FAILURE:
        raise SpecError(f"healthGate.onFailure {on_failure!r} is not one of {', '.join(ON_FAILURE)}")
    if on_failure == "Rollback" and downgrade == "Deny":
        raise SpecError("healthGate.onFailure Rollback downgrades the schema after rolling the workloads back, but "
                        "spec.policy.downgrade is Deny: set it to Allow or RequireApproval, or use onFailure Report")
    return HealthGate(workloads, parse_duration(hg.get("window", "10m")), on_failure)
