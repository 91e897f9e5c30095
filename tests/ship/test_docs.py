"""The shipped docs and examples are generated from, or checked against, dbrev's sources.

* docs/crd-reference.md, the metrics and alerts tables of docs/operations.md, examples/argocd/argocd-cm.yaml
  and the examples' migrations ConfigMaps are what ``python -m dbrev_dev.docs`` writes (stale -> fail);
* docs/operations.md has a troubleshooting entry for every condition reason in dbrev.core.conditions;
* relative links and anchors in the docs resolve.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import yaml

from dbrev.core import conditions as C
from dbrev.controller import argocd, crd
from dbrev_dev import docs
from dbrev.controller import metrics as M
from shiptools import ROOT, anchors, in_namespace, load_docs, server_dry_run

OPERATIONS = ROOT / "docs" / "operations.md"
DOC_FILES = [ROOT / "docs" / n for n in ("operations.md", "crd-reference.md", "walkthrough.md")] + [
    ROOT / "examples" / "argocd" / "README.md", ROOT / "examples" / "flux" / "README.md"]


def reasons() -> set[str]:
    """Every reason a condition can carry (not the condition types, not the CLI's own refusals)."""
    not_reasons = set(C.CONDITION_TYPES) | set(C.CLI_REASONS)
    return {v for k, v in vars(C).items() if k.isupper() and isinstance(v, str) and v not in not_reasons}


def section(markdown: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    assert m, f"no section '## {title}'"
    return m.group(1)


def test_generated_files_are_current():
    stale = docs.stale(ROOT)
    assert not stale, f"stale: {', '.join(map(str, stale))}: run `python -m dbrev_dev.docs`"


def test_every_condition_reason_has_a_troubleshooting_entry():
    entries = set(re.findall(r"^### (\w+)\s*$", section(OPERATIONS.read_text(), "Troubleshooting by condition reason"),
                             re.M))
    assert len(reasons()) > 25
    missing = reasons() - entries
    assert not missing, f"docs/operations.md has no troubleshooting entry for {sorted(missing)}"
    assert not entries - reasons(), f"entries for reasons dbrev does not have: {sorted(entries - reasons())}"


# what a hint can name for the user to change or run: a field of the resource, a dbrev command
FIELD = re.compile(r"\b(?:spec|status)(?:\.[a-zA-Z]+)+")
COMMAND = re.compile(r"\bdbrev (?:apply|approve|check|current|plan|rollback|verify)\b")


def named(text: str) -> set[str]:
    return set(FIELD.findall(text)) | set(COMMAND.findall(text))


def test_every_stalled_reason_with_a_todo_is_explained():
    """The long entry of a reason says what decide.TODO's short "To fix" says: each field and command the hint
    names is in the entry, and each field either names is one the CRD has."""
    from dbrev.controller.decide import TODO

    text = section(OPERATIONS.read_text(), "Troubleshooting by condition reason")
    fields = (ROOT / "docs" / "crd-reference.md").read_text()
    assert named(TODO[C.DOWNGRADE_DENIED]) == {"spec.policy.downgrade", "spec.revision"}
    for reason, hint in TODO.items():
        m = re.search(rf"^### {reason}\n(.*?)(?=^### |\Z)", text, re.S | re.M)
        assert m, f"no troubleshooting entry for {reason}"
        missing = {n for n in named(hint) if not re.search(rf"\b{re.escape(n)}\b", m.group(1))}
        assert not missing, f"### {reason} does not say what its hint says: {sorted(missing)}"
        for field in FIELD.findall(hint) + FIELD.findall(m.group(1)):
            assert f"| `{field}` |" in fields, f"{reason} names {field}, which the CRD does not have"


def test_every_event_reason_is_listed():
    from dbrev.controller import decide

    events = section(OPERATIONS.read_text(), "Reading a DatabaseRevision")
    for name, value in vars(decide).items():
        if name.startswith("EV_"):
            assert f"`{value}`" in events, f"Event reason {value} is not listed in docs/operations.md"


def test_metrics_and_alerts_are_documented():
    text = OPERATIONS.read_text()
    for name in M.NAMES:
        assert f"`{name}`" in text
    rule = yaml.safe_load((ROOT / "manifests" / "monitoring" / "prometheusrule.yaml").read_text())
    for r in rule["spec"]["groups"][0]["rules"]:
        assert f"### {r['alert']}" in text, f"no runbook section for {r['alert']}"


def test_crd_reference_lists_every_field():
    text = (ROOT / "docs" / "crd-reference.md").read_text()
    schema = crd.crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def walk(s, path):
        yield path
        for k, sub in (s.get("properties") or {}).items():
            yield from walk(sub, f"{path}.{k}")
        for k, sub in ((s.get("items") or {}).get("properties") or {}).items():
            yield from walk(sub, f"{path}[].{k}")

    for part in ("spec", "status"):
        for path in walk(schema["properties"][part], part):
            assert f"| `{path}` |" in text, f"{path} missing from docs/crd-reference.md"


def test_relative_links_and_anchors_resolve():
    checked = 0
    for doc in DOC_FILES:
        text = re.sub(r"`[^`\n]*`", "", re.sub(r"```.*?```", "", doc.read_text(), flags=re.S))  # not code
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            assert dest.exists(), f"{doc.name}: broken link {target}"
            if anchor and dest.suffix == ".md":
                assert anchor in anchors(dest.read_text()), f"{doc.name}: no anchor #{anchor} in {dest.name}"
            checked += 1
    assert checked > 20  # the docs link to each other: a search that found none would check nothing


def test_cli_prints_the_health_check_and_the_argocd_cm_patch():
    py = [sys.executable, "-m", "dbrev.controller.argocd"]
    lua = subprocess.run(py + ["--health-lua"], capture_output=True, text=True, check=True).stdout
    assert lua == (ROOT / "operator" / "dbrev" / "controller" / "health.lua").read_text()
    cm = yaml.safe_load(subprocess.run(py + ["--argocd-cm", "gitops"], capture_output=True, text=True,
                                       check=True).stdout)
    assert cm["metadata"] == {"name": "argocd-cm", "namespace": "gitops",
                              "labels": {"app.kubernetes.io/name": "argocd-cm", "app.kubernetes.io/part-of": "argocd"}}
    assert cm["data"] == {argocd.HEALTH_KEY: lua}
    check = subprocess.run([sys.executable, "-m", "dbrev_dev.docs", "--check", str(ROOT)], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr


def test_check_reports_a_stale_file(tmp_path):
    """--check fails (and names the file) when a generated file differs."""
    for rel in (docs.OPERATIONS, docs.PROMETHEUS_RULE):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    (tmp_path / docs.MIGRATIONS).mkdir(parents=True)
    for p in (ROOT / docs.MIGRATIONS).glob("*.py"):
        (tmp_path / docs.MIGRATIONS / p.name).write_text(p.read_text())
    assert set(docs.stale(tmp_path)) == {docs.CRD_REFERENCE, docs.ARGOCD_CM, *docs.MIGRATIONS_CONFIGMAPS}
    assert docs.main([str(tmp_path)]) == 0 and docs.stale(tmp_path) == []
    assert docs.main(["--check", str(tmp_path)]) == 0
    crd_ref = tmp_path / docs.CRD_REFERENCE
    crd_ref.write_text(crd_ref.read_text().replace("Target Alembic revision", "Target revision"))
    assert docs.main(["--check", str(tmp_path)]) == 1


def test_walkthrough_uses_the_examples_revisions():
    """Every revision the walkthrough sets exists: in examples/migrations or in a script it shows."""
    text = (ROOT / "docs" / "walkthrough.md").read_text()
    examples = {p.name.split("_", 1)[0] for p in (ROOT / "examples" / "migrations").glob("*.py")}
    shown = dict(re.findall(r'^revision = "(\w+)"\ndown_revision = "(\w+)"', text, re.M))
    assert set(shown.values()) <= examples
    targets = set(re.findall(r'"revision":"(\w+)"', text))
    assert targets and targets <= examples | set(shown), f"unknown revisions: {targets - examples - set(shown)}"
    db = yaml.safe_load((ROOT / "examples" / "flux" / "shop" / "database" / "databaserevision.yaml").read_text())
    assert f"asks for `{db['spec']['revision']}`" in text


@pytest.mark.cluster
def test_walkthrough_manifests_are_accepted_by_the_api_server(control_plane, namespace):
    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "walkthrough.md").read_text(), re.S)
    objs = [d for b in blocks for d in load_docs(b)]
    assert sorted(o["kind"] for o in objs) == ["Deployment", "Service"]
    out = server_dry_run(control_plane, in_namespace(objs, namespace))
    assert "deployment.apps/postgres created (server dry run)" in out
