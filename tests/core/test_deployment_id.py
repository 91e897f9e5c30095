"""Which deployment a run belongs to, from the DatabaseRevision's metadata (pure)."""

from __future__ import annotations

from dbrev.controller.deployment import deployment_id, stamp_history, with_deployment


def meta(annotations=None, labels=None):
    return {"annotations": annotations or {}, "labels": labels or {}}


ARGO = {"argocd.argoproj.io/tracking-id": "shop:dbrev.io/DatabaseRevision:shop/orders"}
FLUX = {"kustomize.toolkit.fluxcd.io/name": "database", "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}


def test_the_annotation_wins_over_everything():
    d = deployment_id(meta({"dbrev.io/deployment-id": " ci-1234 ", **ARGO}, {**FLUX}), ["app:v2"])
    assert (d.value, d.source) == ("ci-1234", "annotation")


def test_argocd_tracking_id_names_the_application():
    d = deployment_id(meta(ARGO, {"app.kubernetes.io/instance": "other"}))
    assert (d.value, d.source) == ("argocd:shop", "argocd")


def test_flux_kustomization_and_helmrelease():
    assert deployment_id(meta(labels=FLUX)).value == "flux:kustomization/flux-system/database"
    helm = {"helm.toolkit.fluxcd.io/name": "shop", "helm.toolkit.fluxcd.io/namespace": "apps",
            "app.kubernetes.io/instance": "shop"}
    d = deployment_id(meta(labels=helm))
    assert (d.value, d.source) == ("flux:helmrelease/apps/shop", "flux")


def test_instance_label_then_images_then_nothing():
    assert deployment_id(meta(labels={"app.kubernetes.io/instance": "shop"})).value == "app:shop"
    d = deployment_id(meta(), ["reg/app:v2", "reg/worker:v2", "reg/app:v2"])
    assert (d.value, d.source) == ("images:reg/app:v2,reg/worker:v2", "images")
    assert deployment_id(meta({"dbrev.io/deployment-id": "  "})) .source == "none"
    assert deployment_id(None).value is None


def test_long_values_are_bounded():
    assert len(deployment_id(meta({"dbrev.io/deployment-id": "x" * 1000})).value) == 253


def test_event_message_names_the_deployment_once_within_the_limit():
    assert with_deployment("applied", "ci-1") == "applied (deployment ci-1)"
    assert with_deployment("applied (deployment ci-1)", "ci-1") == "applied (deployment ci-1)"
    assert with_deployment("applied", None) == "applied"
    long = with_deployment("m" * 2000, "ci-1")
    assert len(long) == 1024 and long.endswith("(deployment ci-1)")


def test_history_entry_of_this_run_only():
    st = {"history": [{"startedAt": "t2"}, {"startedAt": "t1"}]}
    assert stamp_history(st, "t2", "ci-9")["history"] == [{"startedAt": "t2", "deploymentId": "ci-9"},
                                                          {"startedAt": "t1"}]
    st = {"history": [{"startedAt": "t1"}]}
    assert stamp_history(st, "t2", "ci-9")["history"] == [{"startedAt": "t1"}]  # an older run: untouched
    assert stamp_history({}, "t2", "ci-9") == {}
