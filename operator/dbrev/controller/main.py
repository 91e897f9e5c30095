"""``dbrev operator``: Kopf's registrations and settings, and the process around them."""

from __future__ import annotations

import os

from ..engine.extras import require_operator

require_operator(__name__)  # before kopf/kubernetes: a clear error on a lean install

import kopf
from kubernetes.client.rest import ApiException

from . import metrics as M
from .crd import GROUP, PLURAL, VERSION
from ..core.log import log_context, logger
from . import handlers, kube

KOPF_PREFIX = f"operator.{GROUP}"
# What run() was asked to serve; read by _startup (Kopf runs startup handlers after run() began).
_serving: dict = {"globs": False, "clusterwide": False, "peering": None}


@kopf.on.startup()
def _startup(settings: kopf.OperatorSettings, **_) -> None:
    # Our own prefix from day one: changing storage later re-handles every object.  A sub-domain of
    # dbrev.io, because Kopf leaves every annotation under its storage prefix out of the diff, and the
    # user-facing ones (dbrev.io/approve, dbrev.io/reconcile-requested-at) must trigger a pass.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration")
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.enabled = False  # dbrev posts its own Events, with reasons a user can act on
    settings.execution.max_workers = int(os.environ.get("DBREV_MAX_WORKERS", "8"))
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 30
    # how long a silent peer is still believed alive (Kopf's default: 60 s)
    settings.peering.lifetime = int(os.environ.get("DBREV_PEERING_LIFETIME", "60"))
    # (settings.peering.mandatory is left as kopf.run sets it: with --peering the operator waits for its
    # peering object rather than running unpeered next to another replica.)
    # Kopf's "scanning" lists and watches CustomResourceDefinitions and Namespaces cluster-wide, only to
    # follow CRDs installed after the start and namespaces matching a glob in -n.  Exact names and -A
    # need neither, and without it the operator needs no cluster-wide read access to CRDs or namespaces
    # (manifests/ grants none).  Kopf then serves what exists at start: check that, and fail fast.
    from .jobrun import IN_PROCESS_ENV, in_process

    if in_process():
        logger.warning("Migrations run in the operator's own process: a development switch. Their scripts can "
                       "read the operator's credentials; unset it in any shared cluster",
                       extra={"setting": IN_PROCESS_ENV})
    settings.scanning.disabled = not _serving["globs"]
    if settings.scanning.disabled:
        _require_served()


def _require_served() -> None:
    """Refuse to start (the pod restarts) rather than idle when a CRD dbrev needs is not served."""
    needed = [[(GROUP, VERSION, PLURAL)]]
    if _serving["peering"]:
        plural = "clusterkopfpeerings" if _serving["clusterwide"] else "kopfpeerings"
        needed.append([("kopf.dev", "v1", plural), ("zalando.org", "v1", plural)])  # Kopf accepts either
    for alternatives in needed:
        if not any(_served(*gvr) for gvr in alternatives):
            group, version, plural = alternatives[0]
            raise kopf.PermanentError(f"the cluster does not serve {plural}.{group}/{version}: install the CRDs "
                                      f"(kubectl apply -k crds/, or manifests/) and restart the operator")


def _served(group: str, version: str, plural: str) -> bool:
    try:  # discovery: every authenticated user may read it
        return any(r.name == plural for r in kube.custom().get_api_resources(group, version).resources)
    except ApiException as e:
        if e.status == 404:
            return False
        raise


@kopf.index(GROUP, VERSION, PLURAL)
def dbrev_by_database(body, **_):
    key = (body.get("status") or {}).get("databaseKey")
    meta = body["metadata"]
    return {key: (meta.get("creationTimestamp"), meta["namespace"], meta["name"])} if key else None


@kopf.index(GROUP, VERSION, PLURAL)
def dbrev_by_configmap(body, **_):
    meta = body["metadata"]
    refs = ((body.get("spec") or {}).get("migrations") or {}).get("configMapRefs") or []
    return {(meta["namespace"], r.get("name")): meta["name"] for r in refs if r.get("name")}


@kopf.index(GROUP, VERSION, PLURAL)
def dbrev_by_secret(body, **_):
    meta = body["metadata"]
    db = (body.get("spec") or {}).get("database") or {}
    names = []
    if db.get("urlSecretRef"):
        names.append(db["urlSecretRef"].get("name"))
    if (db.get("credentials") or {}).get("passwordSecretRef"):
        names.append(db["credentials"]["passwordSecretRef"].get("name"))
    return {(meta["namespace"], n): meta["name"] for n in names if n}


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile_dbrev(body, reason, retry, diff, dbrev_by_database, **_):
    handlers.reconcile(body, str(reason), retry, diff, dbrev_by_database)


def _referenced(kind: str, index, event, namespace: str, name: str) -> None:
    if not event or event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
        return  # None: the initial listing when the watch starts
    for dbrev_name in set(index.get((namespace, name), [])):
        with log_context(namespace=namespace, name=dbrev_name):
            logger.info(f"Referenced {kind} changed", extra={kind.lower(): name, "event_type": event["type"]})
        kube.request_reconcile(namespace, dbrev_name, f"{kind.lower()}/{name}")


@kopf.on.event("", "v1", "configmaps")
def configmap_changed(event, namespace, name, dbrev_by_configmap, **_):
    _referenced("ConfigMap", dbrev_by_configmap, event, namespace, name)


@kopf.on.event("", "v1", "secrets")
def secret_changed(event, namespace, name, dbrev_by_secret, **_):
    _referenced("Secret", dbrev_by_secret, event, namespace, name)


@kopf.timer(GROUP, VERSION, PLURAL, interval=handlers.TIMER_INTERVAL, initial_delay=handlers.TIMER_INTERVAL)
def drift_check(body, **_):
    handlers.check(body)


@kopf.on.delete(GROUP, VERSION, PLURAL, optional=True)
def forget(namespace, name, **_):
    """Deleting a DatabaseRevision never touches the database: only its metrics go."""
    M.forget_resource(namespace, name)
    handlers.forget_pending(namespace, name)
    with log_context(namespace=namespace, name=name):
        logger.info("DatabaseRevision deleted; the database is left as it is")


def run(*, namespaces: list[str], all_namespaces: bool, standalone: bool, peering: str | None, priority: int,
        metrics_address: str, metrics_port: int, liveness_address: str, liveness_port: int) -> None:
    from prometheus_client import start_http_server

    clusterwide = all_namespaces or not namespaces  # Kopf serves the whole cluster when given no namespace
    _serving.update(globs=not clusterwide and any(set(ns) & set("*?!,") for ns in namespaces),
                    clusterwide=clusterwide, peering=None if standalone else peering)
    if metrics_port:
        start_http_server(metrics_port, addr=metrics_address, registry=M.REGISTRY)
        logger.info("Serving metrics", extra={"address": metrics_address, "port": metrics_port})
    kopf.run(
        clusterwide=all_namespaces,
        namespaces=namespaces,
        standalone=standalone or not peering,
        peering_name=peering,
        priority=priority,
        liveness_endpoint=f"http://{liveness_address}:{liveness_port}/healthz" if liveness_port else None,
    )
