"""How kstatus and Flux read the status dbrev writes, with the real libraries.

tests/ship/kstatus/ is a tiny Go program over sigs.k8s.io/cli-utils/pkg/kstatus/status (kstatus),
github.com/fluxcd/cli-utils (Flux's fork, what kustomize-controller's wait uses) and
github.com/fluxcd/pkg/runtime/cel (Flux's healthCheckExprs evaluator). It is built once, through
the Go module proxy, into a cache folder outside the repository (keyed by the hash of its sources:
~/.cache/dbrev/kstatus-<cli-utils version>-<hash>/).
The objects come from dbrev's own status functions (dbrev_states.py); the CEL expressions come from
examples/flux/shop-database.yaml, so neither can drift from what ships.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

import dbrev_states
from shiptools import ROOT, SHIP, go_tool, in_namespace, kustomize, load_docs, server_dry_run

SRC = SHIP / "kstatus"
FLUX = ROOT / "examples" / "flux"

# state -> (kstatus, Flux with the example's healthCheckExprs)
EXPECTED = {
    # kstatus calls an object without status Current (kubernetes-sigs/cli-utils#632); the example's
    # expressions cannot be evaluated without status, which Flux reads as Unknown and keeps waiting.
    "no_status": ("Current", "Unknown"),
    "initializing": ("InProgress", "InProgress"),
    "applying": ("InProgress", "InProgress"),
    "ready": ("Current", "Current"),
    "ready_stale_generation": ("InProgress", "InProgress"),
    "deleting": ("Terminating", "Current"),
    "awaiting_approval": ("InProgress", "InProgress"),  # waiting is not a failure
    "stalled_downgrade_denied": ("Failed", "Failed"),
    "stalled_stale_generation": ("InProgress", "InProgress"),
    "reverted": ("Current", "Current"),
    "rolled_back": ("Failed", "Failed"),
    "database_unavailable": ("InProgress", "InProgress"),
    "integrity_check_failed": ("Failed", "Failed"),
    "suspended": ("Current", "Current"),  # Ready is kept (it was True); dbrev changes nothing
    "health_gate_rolling_back": ("InProgress", "InProgress"),
    "health_gate_rolled_back": ("Failed", "Failed"),
}


@pytest.fixture(scope="session")
def kstatus_bin() -> Path:
    version = re.search(r"sigs\.k8s\.io/cli-utils (v\S+)", (SRC / "go.mod").read_text()).group(1)
    return go_tool(SRC, f"kstatus-{version}")


def flux_exprs() -> dict:
    ks = yaml.safe_load((FLUX / "shop-database.yaml").read_text())
    [entry] = [e for e in ks["spec"]["healthCheckExprs"] if e["kind"] == "DatabaseRevision"]
    assert entry["apiVersion"].split("/")[0] == "dbrev.io"
    return entry


def compute(binary: Path, objects: list[dict]) -> list[dict]:
    e = flux_exprs()
    args = [str(binary), "-current", e["current"], "-failed", e.get("failed", ""), "-in-progress",
            e.get("inProgress", "")]
    proc = subprocess.run(args, input=json.dumps(objects), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def computed(kstatus_bin) -> dict[str, dict]:
    states = dbrev_states.build()
    return dict(zip(states, compute(kstatus_bin, list(states.values()))))


def test_every_state_is_expected():
    assert set(EXPECTED) == set(dbrev_states.build())


@pytest.mark.parametrize("state", list(EXPECTED))
def test_kstatus_reads_dbrev_status(state, computed):
    want_kstatus, want_cel = EXPECTED[state]
    got = computed[state]
    assert not got["kstatus"].get("error") and not got["flux"].get("error"), got
    assert got["kstatus"]["status"] == want_kstatus, got
    # Flux's fork of kstatus agrees with kstatus on every state dbrev produces.
    assert got["flux"]["status"] == got["kstatus"]["status"], got
    assert got["cel"]["status"] == want_cel, got


def test_stalled_message_is_the_one_dbrev_wrote(computed):
    """kstatus shows the Stalled condition's message: the cause and what to do."""
    assert "To fix: set spec.policy.downgrade" in computed["stalled_downgrade_denied"]["kstatus"]["message"]
    assert "rolled back to" in computed["rolled_back"]["kstatus"]["message"]


def test_without_status_the_cel_expression_errors_instead_of_passing(computed):
    assert "no such attribute" in computed["no_status"]["cel"]["error"]


def test_flux_example_orders_the_app_after_the_database():
    db = yaml.safe_load((FLUX / "shop-database.yaml").read_text())
    app = yaml.safe_load((FLUX / "shop-app.yaml").read_text())
    assert db["spec"]["wait"] is True
    assert app["spec"]["dependsOn"] == [{"name": db["metadata"]["name"]}]
    assert db["spec"]["path"] == "./examples/flux/shop/database" and app["spec"]["path"] == "./examples/flux/shop/app"
    assert (ROOT / db["spec"]["path"]).is_dir() and (ROOT / app["spec"]["path"]).is_dir()


@pytest.mark.cluster
def test_flux_examples_are_accepted_by_the_api_server(control_plane, flux_crds, dbrev_crd, namespace):
    objs = (load_docs((FLUX / "shop-database.yaml").read_text()) + load_docs((FLUX / "shop-app.yaml").read_text())
            + kustomize(control_plane, FLUX / "shop" / "database") + kustomize(control_plane, FLUX / "shop" / "app"))
    assert sorted(o["kind"] for o in objs) == ["ConfigMap", "DatabaseRevision", "Deployment", "Kustomization",
                                               "Kustomization", "Namespace"]
    out = server_dry_run(control_plane, in_namespace(objs, namespace))
    for what in ("kustomization.kustomize.toolkit.fluxcd.io/shop-database",
                 "kustomization.kustomize.toolkit.fluxcd.io/shop-app", "databaserevision.dbrev.io/orders",
                 "deployment.apps/shop"):
        assert f"{what} created (server dry run)" in out


@pytest.mark.cluster
def test_statuses_are_accepted_by_the_status_subresource(control_plane, dbrev_crd, namespace, kstatus_bin):
    """The objects the tests reason about are real: the API server stores each status as it is
    (nothing pruned by the CRD schema), and kstatus reads the stored object the same way."""
    states = dbrev_states.build()
    for name, obj in states.items():
        if "status" not in obj or "deletionTimestamp" in obj["metadata"]:
            continue
        body = {k: v for k, v in obj.items() if k != "status"}
        body["metadata"] = {"name": name.replace("_", "-"), "namespace": namespace}
        control_plane.kubectl("apply", "-f", "-", input=json.dumps(body))
        patch = json.dumps({"status": obj["status"]})
        control_plane.kubectl("patch", "databaserevision", body["metadata"]["name"], "-n", namespace,
                              "--subresource=status", "--type=merge", "-p", patch)
        stored = json.loads(control_plane.kubectl("get", "databaserevision", body["metadata"]["name"], "-n",
                                                  namespace, "-o", "json").stdout)
        assert stored["status"] == obj["status"], f"{name}: the API server changed the status"
        # Generation on the server is 1; compare kstatus on the stored object with the same generation.
        stored["metadata"]["generation"] = obj["metadata"]["generation"]
        assert compute(kstatus_bin, [stored])[0]["kstatus"]["status"] == EXPECTED[name][0], name
