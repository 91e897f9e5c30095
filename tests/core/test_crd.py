"""The CRD in crds/ is generated from operator/dbrev/controller/crd.py and must not drift from it."""

from pathlib import Path

import yaml

from dbrev.core import conditions as C
from dbrev.controller import crd

ROOT = Path(__file__).resolve().parents[2]


def test_crds_folder_matches_the_source_of_truth():
    on_disk = (ROOT / crd.CRD_FILE).read_text()
    assert on_disk == crd.crd_yaml(), "crds/ is stale: run `python -m dbrev.controller.crd` (or `make crds`)"


def _walk(schema, path="spec"):
    yield path, schema
    for k, sub in (schema.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{k}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")


def test_every_field_has_a_description():
    root = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in ("spec", "status"):
        for path, schema in _walk(root["properties"][part], part):
            assert schema.get("description"), f"{path} has no description"


def test_status_subresource_printer_columns_and_conditions_list_map():
    v = crd.crd()["spec"]["versions"][0]
    assert v["subresources"] == {"status": {}}
    cols = [c["name"] for c in v["additionalPrinterColumns"] if not c.get("priority")]
    assert cols == ["Target", "Current", "Ready", "Reason", "Age"]
    conds = v["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]["conditions"]
    assert conds["x-kubernetes-list-type"] == "map" and conds["x-kubernetes-list-map-keys"] == ["type"]
    spec = v["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "x-kubernetes-preserve-unknown-fields" not in spec


def test_condition_reasons_match_the_crd_pattern():
    import re

    pattern = crd.status_schema()["properties"]["conditions"]["items"]["properties"]["reason"]["pattern"]
    names = [v for k, v in vars(C).items() if k.isupper() and isinstance(v, str)]
    assert len(names) > 20
    for n in names:
        assert re.fullmatch(pattern, n), n


def test_yaml_is_loadable():
    doc = yaml.safe_load((ROOT / crd.CRD_FILE).read_text())
    assert doc["metadata"]["name"] == "databaserevisions.dbrev.io"
