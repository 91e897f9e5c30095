"""A DatabaseRevision's spec as plain data, with the defaults the CRD declares."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core import durations
from ..core.options import (ALL_CHECKS, DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOCK_TIMEOUT, DEFAULT_RUN_TIMEOUT,
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
class EnvVar:
    """One ``env`` entry of a migration container: a literal ``value`` or exactly one reference."""
    name: str
    value: str | None = None
    secret: KeyRef | None = None  # valueFrom.secretKeyRef
    config_map: KeyRef | None = None  # valueFrom.configMapKeyRef
    field_path: str | None = None  # valueFrom.fieldRef.fieldPath


@dataclass(frozen=True)
class KeyRef:
    name: str
    key: str
    optional: bool = False


@dataclass(frozen=True)
class EnvFrom:
    kind: str  # "configMap" or "secret"
    name: str
    prefix: str = ""
    optional: bool = False


@dataclass(frozen=True)
class Toleration:
    key: str | None = None
    operator: str = "Equal"
    value: str | None = None
    effect: str | None = None
    seconds: int | None = None


@dataclass(frozen=True)
class ImageSource:
    """``spec.migrations.image``: the scripts are in an application's image, at ``path``."""
    name: str
    path: str
    pull_policy: str | None = None
    pull_secrets: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    env_from: tuple[EnvFrom, ...] = ()
    limits: tuple[tuple[str, str], ...] = ()  # resources.limits, sorted by name
    requests: tuple[tuple[str, str], ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()


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
    image: ImageSource | None = None  # migrations.image (then configmaps is empty)


class SpecError(ValueError):
    pass


@dataclass(frozen=True)
class HealthGate:  # healthgate (issue 13 §1)
    workloads: tuple[tuple[str, str], ...]  # (kind, name)
    window: float
    on_failure: str = "Report"


def parse_duration(text: str) -> float:
    """'10m', '1h30m', '45s', '30d' -> seconds (the one grammar: :mod:`dbrev.core.durations`)."""
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
        image = _image_source(mig["image"]) if mig.get("image") else None
        if bool(cms) == bool(image):
            raise SpecError("give exactly one of migrations.configMapRefs (naming at least one ConfigMap) or "
                            "migrations.image")
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
            image=image,
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


PULL_POLICIES = ("Always", "IfNotPresent", "Never")


def _key_ref(d: dict, where: str) -> KeyRef:
    if not d.get("name") or not d.get("key"):
        raise SpecError(f"{where} needs a name and a key")
    return KeyRef(str(d["name"]), str(d["key"]), bool(d.get("optional", False)))


def _env_var(e: dict, i: int) -> EnvVar:
    from .crd import RESERVED_ENV_PREFIX

    where = f"migrations.image.env[{i}]"
    name = str(e.get("name") or "")
    if not name:
        raise SpecError(f"{where} has no name")
    if name.startswith(RESERVED_ENV_PREFIX):
        raise SpecError(f"{where}: {name} starts with {RESERVED_ENV_PREFIX}, which names dbrev's own variables "
                        "(the database URL, the scripts' path); the migration pod sets them itself")
    vf = e.get("valueFrom") or {}
    refs = [k for k in ("secretKeyRef", "configMapKeyRef", "fieldRef") if vf.get(k)]
    if vf and len(refs) != 1:
        raise SpecError(f"{where}.valueFrom: give exactly one of secretKeyRef, configMapKeyRef or fieldRef")
    if refs and "value" in e:
        raise SpecError(f"{where}: give value or valueFrom, not both")
    if not refs:
        return EnvVar(name, str(e.get("value", "")))
    if refs[0] == "fieldRef":
        path = str(vf["fieldRef"].get("fieldPath") or "")
        if not path:
            raise SpecError(f"{where}.valueFrom.fieldRef needs a fieldPath")
        return EnvVar(name, field_path=path)
    ref = _key_ref(vf[refs[0]], f"{where}.valueFrom.{refs[0]}")
    return EnvVar(name, secret=ref) if refs[0] == "secretKeyRef" else EnvVar(name, config_map=ref)


def _env_from(e: dict, i: int) -> EnvFrom:
    where = f"migrations.image.envFrom[{i}]"
    refs = [k for k in ("configMapRef", "secretRef") if e.get(k)]
    if len(refs) != 1:
        raise SpecError(f"{where}: give exactly one of configMapRef or secretRef")
    ref = e[refs[0]]
    if not ref.get("name"):
        raise SpecError(f"{where}.{refs[0]} has no name")
    return EnvFrom("configMap" if refs[0] == "configMapRef" else "secret", str(ref["name"]),
                   str(e.get("prefix") or ""), bool(ref.get("optional", False)))


def _quantities(d: dict | None, where: str) -> tuple[tuple[str, str], ...]:
    out = []
    for k, v in sorted((d or {}).items()):
        if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).strip():
            raise SpecError(f"migrations.image.resources.{where}.{k}: {v!r} is not a quantity (e.g. 500m, 256Mi)")
        out.append((str(k), str(v)))
    return tuple(out)


def _image_source(img: dict) -> ImageSource:
    name = str(img.get("name") or "").strip()
    if not name:
        raise SpecError("migrations.image.name is empty: give the image reference, e.g. "
                        "registry.example.com/orders-api:1.4.2")
    path = str(img.get("path") or "")
    if not path.startswith("/") or "\x00" in path or path == "/":
        raise SpecError(f"migrations.image.path {path!r} is not an absolute folder in the image (e.g. "
                        "/app/migrations: a script location with env.py, or a folder of version scripts)")
    policy = img.get("imagePullPolicy")
    if policy is not None and policy not in PULL_POLICIES:
        raise SpecError(f"migrations.image.imagePullPolicy {policy!r} is not one of {', '.join(PULL_POLICIES)}")
    secrets = tuple(str(s["name"]) for s in img.get("imagePullSecrets") or [])
    res = img.get("resources") or {}
    tolerations = []
    for t in img.get("tolerations") or []:
        op = t.get("operator", "Equal")
        if op not in ("Equal", "Exists"):
            raise SpecError(f"migrations.image.tolerations: operator {op!r} is not Equal or Exists")
        secs = t.get("tolerationSeconds")
        tolerations.append(Toleration(t.get("key"), op, t.get("value"), t.get("effect") or None,
                                      int(secs) if secs is not None else None))
    return ImageSource(
        name=name, path=path.rstrip("/"), pull_policy=policy, pull_secrets=secrets,
        env=tuple(_env_var(e, i) for i, e in enumerate(img.get("env") or [])),
        env_from=tuple(_env_from(e, i) for i, e in enumerate(img.get("envFrom") or [])),
        limits=_quantities(res.get("limits"), "limits"), requests=_quantities(res.get("requests"), "requests"),
        node_selector=tuple(sorted((str(k), str(v)) for k, v in (img.get("nodeSelector") or {}).items())),
        tolerations=tuple(tolerations),
    )
