"""The Kubernetes API at the edge: clients, status writes, annotations."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

from ..engine.extras import require_operator

require_operator(__name__)  # before kopf/kubernetes: a clear error on a lean install

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from .crd import GROUP, PLURAL, RECONCILE_ANNOTATION, VERSION
from ..core.log import logger

MERGE_PATCH = "application/merge-patch+json"
_lock = threading.Lock()
_api: client.ApiClient | None = None


def api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig ($KUBECONFIG)."""
    global _api
    with _lock:
        if _api is None:
            cfg = client.Configuration()
            try:
                config.load_incluster_config(client_configuration=cfg)
            except config.ConfigException:
                config.load_kube_config(client_configuration=cfg)
            cfg.retries = 3
            _api = client.ApiClient(cfg)
        return _api


def api_unreachable(e: BaseException) -> bool:
    """An error that says the API server is not there (or not coping), not that the request was wrong."""
    if isinstance(e, ApiException):
        return e.status is None or e.status >= 500 or e.status in (408, 429)
    return True  # urllib3 / socket errors: no answer at all


def core() -> client.CoreV1Api:
    return client.CoreV1Api(api_client())


def batch() -> client.BatchV1Api:
    return client.BatchV1Api(api_client())


def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client())


def patch_status(namespace: str, name: str, fields: dict) -> None:
    """JSON merge patch of the status subresource: lists (conditions, history) are replaced whole."""
    if not fields:
        return
    custom().patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": fields},
                                                   _content_type=MERGE_PATCH)


def request_reconcile(namespace: str, name: str, why: str) -> None:
    """Ask for a pass by touching an annotation: Kopf's update handler then runs."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    try:
        custom().patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name,
                                                {"metadata": {"annotations": {RECONCILE_ANNOTATION: f"{stamp} {why}"}}},
                                                _content_type=MERGE_PATCH)
    except ApiException as e:
        if e.status != 404:
            logger.warning("Could not request a reconcile", extra={"namespace": namespace, "name": name,
                                                                  "error_message": f"HTTP {e.status}"})


def get(namespace: str, name: str) -> dict | None:
    try:
        return custom().get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
