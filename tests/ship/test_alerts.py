"""dbrev's monitoring: the PrometheusRule is the one source of the alerts.

* ``promtool check rules`` on the groups extracted from manifests/monitoring/prometheusrule.yaml;
* ``promtool test rules`` with tests/ship/promtool/*.yaml (firing and not-firing cases per alert);
* every alert has a runbook in docs/operations.md, every metric it reads exists in dbrev.controller.metrics;
* the ServiceMonitor and PrometheusRule are accepted by a real API server with the
  prometheus-operator CRDs installed (``kubectl apply --dry-run=server``).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from shiptools import ROOT, SHIP, anchors, in_namespace, kustomize, require_tool, server_dry_run
from dbrev.controller import metrics as M

MONITORING = ROOT / "manifests" / "monitoring"
RULE_FILE = MONITORING / "prometheusrule.yaml"
PROMTOOL_TESTS = sorted((SHIP / "promtool").glob("*.yaml"))
OPERATIONS = ROOT / "docs" / "operations.md"
LABEL_TEMPLATE = re.compile(r"\{\{\s*\$labels\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

REQUIRED_ALERTS = {"DbrevReconcileErrorRatioHigh", "DbrevNotReady", "DbrevRollbackExecuted", "DbrevRollbackFailed",
                   "DbrevIntegrityFindings", "DbrevSchemaDrift", "DbrevRollbackNotReady"}


def promtool() -> str:
    return require_tool("promtool", "apt-get install prometheus (Debian's package ships promtool)")


def prometheus_rule() -> dict:
    return yaml.safe_load(RULE_FILE.read_text())


def rule_groups() -> dict:
    """The plain Prometheus rules file promtool reads: the PrometheusRule's spec (same schema)."""
    return {"groups": prometheus_rule()["spec"]["groups"]}


def alerts() -> dict[str, dict]:
    return {r["alert"]: r for g in rule_groups()["groups"] for r in g["rules"] if "alert" in r}


def render(template: str, labels: dict) -> str:
    return LABEL_TEMPLATE.sub(lambda m: str(labels.get(m.group(1), "")), template)


def with_expected_annotations(test_file: dict) -> dict:
    """Fill in exp_annotations from the rule's templates ({{ $labels.x }} -> exp_labels.x), so promtool
    checks that Prometheus renders each annotation as intended without copying the runbook text."""
    rules = alerts()
    for t in test_file["tests"]:
        for case in t.get("alert_rule_test", []):
            rule = rules[case["alertname"]]
            for exp in case.get("exp_alerts") or []:
                exp.setdefault("exp_annotations", {k: render(v, exp["exp_labels"])
                                                   for k, v in rule["annotations"].items()})
    return test_file


@pytest.fixture
def rules_dir(tmp_path) -> Path:
    (tmp_path / "dbrev-rules.yaml").write_text(yaml.safe_dump(rule_groups(), sort_keys=False, width=1000))
    return tmp_path


def test_promtool_check_rules(rules_dir):
    proc = subprocess.run([promtool(), "check", "rules", str(rules_dir / "dbrev-rules.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {sum(len(g['rules']) for g in rule_groups()['groups'])} rules found" in proc.stdout


@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=[p.stem for p in PROMTOOL_TESTS])
def test_promtool_test_rules(rules_dir, test_file):
    data = with_expected_annotations(yaml.safe_load(test_file.read_text()))
    assert data["rule_files"] == ["dbrev-rules.yaml"]
    target = rules_dir / test_file.name
    target.write_text(yaml.safe_dump(data, sort_keys=False, width=1000))
    proc = subprocess.run([promtool(), "test", "rules", str(target)], capture_output=True, text=True,
                          cwd=rules_dir)
    assert proc.returncode == 0, f"{test_file.name}:\n{proc.stdout}\n{proc.stderr}"


def test_every_alert_has_firing_and_quiet_cases():
    firing: set[str] = set()
    quiet: set[str] = set()
    for f in PROMTOOL_TESTS:
        for t in yaml.safe_load(f.read_text())["tests"]:
            for case in t.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = set(alerts())
    assert REQUIRED_ALERTS <= names
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"


def test_alerts_have_severity_and_runbook_style_annotations():
    known = anchors(OPERATIONS.read_text())
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        ann = rule["annotations"]
        assert set(ann) == {"summary", "description", "runbook_url"}, name
        assert "First:" in ann["description"] and "kubectl" in ann["description"], f"{name}: no first commands"
        url = ann["runbook_url"]
        assert url.startswith("https://github.com/dbrev/dbrev/blob/main/docs/operations.md#"), url
        assert url.split("#", 1)[1] in known, f"{name}: docs/operations.md has no anchor #{url.split('#')[1]}"
        for text in ann.values():
            # Only {{ $labels.x }}: the promtool tests render them exactly (see with_expected_annotations).
            assert "{{" not in LABEL_TEMPLATE.sub("", text), f"{name}: a template the tests cannot render"
    assert alerts()["DbrevRollbackFailed"]["labels"]["severity"] == "critical"


def test_alert_expressions_read_only_metrics_dbrev_exports():
    for name, rule in alerts().items():
        used = set(re.findall(r"\b(dbrev_[a-z_]+)", rule["expr"]))
        assert used <= set(M.NAMES), f"{name} reads unknown metrics {used - set(M.NAMES)}"
    ratio = alerts()["DbrevReconcileErrorRatioHigh"]
    assert ratio["for"] == "10m" and "> 0.1" in ratio["expr"] and ratio["labels"]["severity"] == "warning"
    assert alerts()["DbrevNotReady"]["for"] == "15m"
    assert 'check!="drift"' in alerts()["DbrevIntegrityFindings"]["expr"]
    # the way back: exactly the two readiness values that mean a rollback would not work, both known to dbrev
    (values,) = re.findall(r'readiness=~"([^"]+)"', alerts()["DbrevRollbackNotReady"]["expr"])
    assert values.split("|") == ["Broken", "Irreversible"] and set(values.split("|")) <= set(M.READINESS_VALUES)


@pytest.mark.cluster
def test_monitoring_manifests_are_accepted_by_the_api_server(control_plane, monitoring_crds, namespace):
    docs = kustomize(control_plane, MONITORING)
    assert sorted(d["kind"] for d in docs) == ["PrometheusRule", "ServiceMonitor"]
    out = server_dry_run(control_plane, in_namespace(docs, namespace))
    assert "servicemonitor.monitoring.coreos.com/dbrev-operator created (server dry run)" in out
    assert "prometheusrule.monitoring.coreos.com/dbrev created (server dry run)" in out


@pytest.mark.cluster
def test_the_api_server_rejects_a_broken_rule(control_plane, monitoring_crds, namespace):
    """The dry run is a real check: the CRD's schema refuses what Prometheus could not load."""
    rule = prometheus_rule()
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    rule["metadata"]["namespace"] = namespace
    proc = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(rule), check=False)
    assert proc.returncode != 0 and "for" in proc.stderr
