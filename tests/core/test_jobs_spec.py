"""``spec.migrations.image``: exactly one of configMapRefs or image; typed plain data; clear errors.

The pure parser here; the CRD's CEL rules on the real API server in the test at the end (cluster)."""

from __future__ import annotations

import json

import pytest

from dbrev.controller.spec import (EnvFrom, EnvVar, ImageSource, KeyRef, SpecError, Toleration,
                                   parse_spec)

IMAGE = {
    "name": "registry.example.com/orders-api:1.4.2",
    "path": "/app/migrations/",
    "imagePullPolicy": "IfNotPresent",
    "imagePullSecrets": [{"name": "regcred"}],
    "env": [{"name": "APP_SETTINGS", "value": "prod"},
            {"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "api", "key": "token"}}},
            {"name": "REGION", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "region", "optional": True}}},
            {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}],
    "envFrom": [{"configMapRef": {"name": "app-config"}}, {"secretRef": {"name": "app-secrets"}, "prefix": "S_"}],
    "resources": {"limits": {"memory": "256Mi", "cpu": 1}, "requests": {"cpu": "100m"}},
    "nodeSelector": {"pool": "batch"},
    "tolerations": [{"key": "batch", "operator": "Exists", "effect": "NoSchedule"}],
}


def spec(**migrations) -> dict:
    return {"revision": "head", "database": {"urlSecretRef": {"name": "db"}}, "migrations": migrations}


def test_an_image_source_parses_to_typed_plain_data():
    s = parse_spec(spec(image=IMAGE))
    assert s.configmaps == ()
    assert s.image == ImageSource(
        name="registry.example.com/orders-api:1.4.2", path="/app/migrations", pull_policy="IfNotPresent",
        pull_secrets=("regcred",),
        env=(EnvVar("APP_SETTINGS", "prod"), EnvVar("API_KEY", secret=KeyRef("api", "token")),
             EnvVar("REGION", config_map=KeyRef("cfg", "region", True)),
             EnvVar("POD_NS", field_path="metadata.namespace")),
        env_from=(EnvFrom("configMap", "app-config"), EnvFrom("secret", "app-secrets", "S_")),
        limits=(("cpu", "1"), ("memory", "256Mi")), requests=(("cpu", "100m"),),
        node_selector=(("pool", "batch"),), tolerations=(Toleration("batch", "Exists", None, "NoSchedule"),))


def test_configmap_specs_are_unchanged():
    s = parse_spec(spec(configMapRefs=[{"name": "a"}, {"name": "b"}]))
    assert s.configmaps == ("a", "b") and s.image is None


@pytest.mark.parametrize("migrations", [{}, {"configMapRefs": []},
                                        {"configMapRefs": [{"name": "a"}], "image": IMAGE}])
def test_exactly_one_of_configmaps_or_image(migrations):
    with pytest.raises(SpecError, match="exactly one of migrations.configMapRefs .* or migrations.image"):
        parse_spec(spec(**migrations))


@pytest.mark.parametrize("change, message", [
    ({"name": ""}, "migrations.image.name is empty"),
    ({"path": "app/migrations"}, "is not an absolute folder"),
    ({"path": "/"}, "is not an absolute folder"),
    ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy 'Sometimes' is not one of"),
    ({"env": [{"name": "DBREV_DATABASE_URL", "value": "postgresql://x"}]}, "starts with DBREV_"),
    ({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"},
                                          "fieldRef": {"fieldPath": "x"}}}]}, "exactly one of secretKeyRef"),
    ({"env": [{"name": "A", "value": "v", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}, "not both"),
    ({"env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "s"}}}]}, "needs a name and a key"),
    ({"envFrom": [{"prefix": "X"}]}, "envFrom\\[0\\]: give exactly one of configMapRef or secretRef"),
    ({"resources": {"limits": {"memory": True}}}, "is not a quantity"),
    ({"tolerations": [{"key": "k", "operator": "In"}]}, "operator 'In' is not Equal or Exists"),
])
def test_bad_image_fields_are_named(change, message):
    with pytest.raises(SpecError, match=message):
        parse_spec(spec(image={**IMAGE, **change}))


def test_missing_path_is_an_incomplete_spec_not_a_crash():
    img = {k: v for k, v in IMAGE.items() if k != "path"}
    with pytest.raises(SpecError, match="not an absolute folder"):
        parse_spec(spec(image=img))


# -- the CRD's rules, on the real API server -----------------------------------------------------------

def _resource(ns: str, name: str, migrations: dict) -> dict:
    return {"apiVersion": "dbrev.io/v1alpha1", "kind": "DatabaseRevision",
            "metadata": {"name": name, "namespace": ns}, "spec": spec(**migrations)}


@pytest.mark.cluster
def test_the_crd_accepts_one_source_and_refuses_both_or_neither(control_plane, namespace):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=dbrev-tests", "-f",
                          str(root / "crds" / "dbrev.io_databaserevisions.yaml"), timeout=300)
    control_plane.kubectl("wait", "--for=condition=Established", "crd/databaserevisions.dbrev.io", "--timeout=120s")

    def dry_run(migrations):
        import time

        for _ in range(60):  # Established is not yet "served": kubectl's discovery can lag the CRD by a moment
            p = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", check=False,
                                      input=json.dumps(_resource(namespace, "orders", migrations)))
            if "no matches for kind" not in p.stderr and "the server could not find the requested resource" \
                    not in p.stderr:
                break
            time.sleep(0.5)
        return p.returncode, p.stderr

    assert dry_run({"image": IMAGE}) == (0, "")
    assert dry_run({"configMapRefs": [{"name": "a"}]}) == (0, "")
    for bad in ({}, {"configMapRefs": [{"name": "a"}], "image": IMAGE}):
        code, err = dry_run(bad)
        assert code != 0 and "give exactly one of migrations.configMapRefs or migrations.image" in err
    for change, message in [
            ({"env": [{"name": "DBREV_DATABASE_URL", "value": "x"}]}, "names starting with DBREV_ are dbrev's own"),
            ({"env": [{"name": "A", "value": "v", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]}, "not both"),
            ({"envFrom": [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]},
             "exactly one of configMapRef or secretRef"),
            ({"path": "relative/path"}, "spec.migrations.image.path"),
            ({"imagePullPolicy": "Sometimes"}, "imagePullPolicy")]:
        code, err = dry_run({"image": {**IMAGE, **change}})
        assert code != 0 and message in err, (change, err)
