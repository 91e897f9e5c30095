"""What deployed a run: the deployment id of the rollback runbook's inputs (pure).

Chosen from a DatabaseRevision's metadata, first match wins:

1. ``dbrev.io/deployment-id`` (annotation): set by CI or by the GitOps tool's templating, e.g. a
   kustomize ``commonAnnotations`` or a Helm value carrying the commit or pipeline id;
2. Argo CD: the ``argocd.argoproj.io/tracking-id`` annotation (annotation tracking:
   ``APP:GROUP/KIND:NAMESPACE/NAME``) gives ``argocd:APP``;
3. Flux: ``kustomize.toolkit.fluxcd.io/name`` + ``/namespace`` labels give
   ``flux:kustomization/NS/NAME``; ``helm.toolkit.fluxcd.io/name`` + ``/namespace`` give
   ``flux:helmrelease/NS/NAME``;
4. the ``app.kubernetes.io/instance`` label (Argo CD's default label tracking, or a Helm release)
   gives ``app:INSTANCE``;
5. the images of the workloads the health gate names (``images:IMG[,IMG…]``);
6. none.

Argo CD and Flux name the application, not the sync: neither stamps the git revision on the objects
it applies.  For an id per release, set ``dbrev.io/deployment-id``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

DEPLOYMENT_ID_ANNOTATION = "dbrev.io/deployment-id"
ARGOCD_TRACKING_ID = "argocd.argoproj.io/tracking-id"
INSTANCE_LABEL = "app.kubernetes.io/instance"
FLUX_KUSTOMIZE = "kustomize.toolkit.fluxcd.io"
FLUX_HELM = "helm.toolkit.fluxcd.io"
MAX_LENGTH = 253


@dataclass(frozen=True)
class DeploymentId:
    value: str | None
    source: str  # annotation | argocd | flux | instance | images | none


def _clean(v) -> str:
    return str(v).strip()[:MAX_LENGTH] if v is not None else ""


def deployment_id(metadata: dict | None, images: Iterable[str] = ()) -> DeploymentId:
    meta = metadata or {}
    ann = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    explicit = _clean(ann.get(DEPLOYMENT_ID_ANNOTATION))
    if explicit:
        return DeploymentId(explicit, "annotation")
    tracking = _clean(ann.get(ARGOCD_TRACKING_ID))
    if tracking:
        return DeploymentId(_clean(f"argocd:{tracking.split(':', 1)[0]}"), "argocd")
    for group, kind in ((FLUX_KUSTOMIZE, "kustomization"), (FLUX_HELM, "helmrelease")):
        name, ns = _clean(labels.get(f"{group}/name")), _clean(labels.get(f"{group}/namespace"))
        if name:
            return DeploymentId(_clean(f"flux:{kind}/{ns + '/' if ns else ''}{name}"), "flux")
    instance = _clean(labels.get(INSTANCE_LABEL))
    if instance:
        return DeploymentId(_clean(f"app:{instance}"), "instance")
    imgs = sorted({_clean(i) for i in images if _clean(i)})
    if imgs:
        return DeploymentId(_clean("images:" + ",".join(imgs)), "images")
    return DeploymentId(None, "none")


def with_deployment(message: str, dep: str | None, limit: int = 1024) -> str:
    """An Event message naming the deployment (once), within the Event's length."""
    if not dep or f"deployment {dep}" in message:
        return message[:limit]
    suffix = f" (deployment {dep})"
    return message[:max(0, limit - len(suffix))] + suffix


def stamp_history(status: dict, started_at: str, dep: str | None) -> dict:
    """Record the deployment id in the history entry this run added (the newest, started at ``started_at``)."""
    hist = status.get("history")
    if dep and hist and hist[0].get("startedAt") == started_at and "deploymentId" not in hist[0]:
        status["history"] = [{**hist[0], "deploymentId": dep}] + list(hist[1:])
    return status
