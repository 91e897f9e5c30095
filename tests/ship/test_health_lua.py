"""The Argo CD health check (operator/dbrev/controller/health.lua) run through a real Lua 5.1 interpreter.

Test cases follow Argo CD's own layout (tests/ship/lua/health_test.yaml + testdata/*.yaml, as in
resource_customizations/<group>/<Kind>/ upstream). The test objects are generated from dbrev's own
status functions (dbrev_states.py), so they cannot drift from what the operator writes; the
expected status/message are written down in health_test.yaml. lua/driver.lua runs the script the
way Argo CD does: a chunk, the object in the global ``obj``, only base and table visible (Argo CD
opens no string/math library for argocd-cm scripts). The same cases also run in GopherLua, Argo CD's
Lua, set up as Argo CD's VM sets it up (lua/gopherlua/, built once into the cache outside the repo).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import pytest
import yaml

import dbrev_states
from dbrev.controller import argocd
from shiptools import ROOT, SHIP, go_tool, in_namespace, kustomize, load_docs, require_tool, server_dry_run

LUA_DIR = SHIP / "lua"
HEALTH_LUA = ROOT / "operator" / "dbrev" / "controller" / "health.lua"
CASES = yaml.safe_load((LUA_DIR / "health_test.yaml").read_text())["tests"]
ARGOCD = ROOT / "examples" / "argocd"

# What the brief asks the cases to cover at least (state -> Argo CD status).
REQUIRED = {
    "no_status": "Progressing",
    "initializing": "Progressing",
    "applying": "Progressing",
    "ready": "Healthy",
    "ready_stale_generation": "Progressing",
    "awaiting_approval": "Suspended",
    "stalled_downgrade_denied": "Degraded",
    "rolled_back": "Degraded",
    "database_unavailable": "Progressing",
    "suspended": "Suspended",
    "deleting": "Progressing",
    "health_gate_rolling_back": "Progressing",  # onFailure: Rollback under way: later sync waves wait
    "health_gate_rolled_back": "Degraded",  # both rolled back; spec.revision still the failed release
}


def lua_literal(v) -> str:
    """A Lua 5.1 table constructor for a JSON-like value (what Argo CD hands the script as ``obj``:
    maps are string-keyed tables, lists are 1-based arrays, null is nil)."""
    if v is None:
        return "nil"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # Decimal escapes, three digits each, for anything but plain printable ASCII.
        return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}"
                             for b in v.encode()) + '"'
    if isinstance(v, dict):
        return "{" + ",".join(f"[{lua_literal(str(k))}]={lua_literal(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "{" + ",".join(lua_literal(x) for x in v) + "}"
    raise TypeError(f"cannot express {type(v).__name__} in Lua")


def run_health(objects: list[dict], script: Path = HEALTH_LUA, allow_errors: bool = False) -> list[tuple[str, str]]:
    lua = require_tool("lua5.1", "apt-get install lua5.1 (Argo CD's health checks are Lua 5.1)")
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write("return {\n" + ",\n".join(lua_literal(o) for o in objects) + "\n}\n")
        cases = f.name
    try:
        proc = subprocess.run([lua, str(LUA_DIR / "driver.lua"), str(script), cases], capture_output=True,
                              timeout=60)
    finally:
        Path(cases).unlink()
    assert proc.returncode == 0, proc.stderr.decode()
    parts = proc.stdout.decode().split("\0")[:-1]
    results = list(zip(parts[0::2], parts[1::2]))
    assert len(results) == len(objects)
    for status, message in results:
        assert allow_errors or status != "ERROR", message
    return results


@pytest.fixture(scope="session")
def argocd_vm() -> Path:
    return go_tool(LUA_DIR / "gopherlua", "argocd-health")


def run_gopherlua(binary: Path, objects: list[dict], script: Path = HEALTH_LUA) -> list[dict]:
    proc = subprocess.run([str(binary), str(script)], input=json.dumps(objects), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines()]


@pytest.fixture(scope="module")
def results() -> dict[str, tuple[str, str]]:
    objs = [yaml.safe_load((LUA_DIR / c["inputPath"]).read_text()) for c in CASES]
    return dict(zip((c["inputPath"] for c in CASES), run_health(objs)))


@pytest.mark.parametrize("expr", ["7 // 2", "6 & 3", "1 << 2"], ids=["floor-division", "bitwise-and", "shift"])
def test_a_check_using_lua_5_3_fails_in_both_interpreters_as_in_argocd(argocd_vm, tmp_path, expr):
    """Argo CD's Lua is 5.1: syntax of a later Lua fails there, and fails here in both interpreters (a check
    that passed only on a newer interpreter would break in Argo CD)."""
    script = tmp_path / "lua53.lua"
    script.write_text(f'local hs = {{}}\nhs.status = "Healthy"\nhs.message = tostring({expr})\nreturn hs\n')
    lua = require_tool("lua5.1", "apt-get install lua5.1")
    load = subprocess.run([lua, "-e", f"assert(loadfile([[{script}]]))"], capture_output=True, text=True)
    assert load.returncode != 0 and f"{script.name}:3:" in load.stderr, load.stderr  # a syntax error, line 3
    assert "error" in run_gopherlua(argocd_vm, [{"a": 1}], script)[0]
    plain = tmp_path / "lua51.lua"
    plain.write_text('local hs = {}\nhs.status = "Healthy"\nhs.message = tostring(7 % 2)\nreturn hs\n')
    assert run_health([{"a": 1}], plain) == [("Healthy", "1")]
    assert run_gopherlua(argocd_vm, [{"a": 1}], plain)[0] == {"status": "Healthy", "message": "1"}


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_health(case, results):
    status, message = results[case["inputPath"]]
    assert {"status": status, "message": message} == case["healthStatus"]


def test_health_in_gopherlua_as_argocd_runs_it(argocd_vm):
    objs = [yaml.safe_load((LUA_DIR / c["inputPath"]).read_text()) for c in CASES]
    for case, got in zip(CASES, run_gopherlua(argocd_vm, objs)):
        assert not got.get("error"), f"{case['inputPath']}: {got['error']}"
        assert {"status": got["status"], "message": got["message"]} == case["healthStatus"], case["inputPath"]


def test_both_interpreters_refuse_what_argocd_does_not_open(argocd_vm, tmp_path):
    """string/math are not there for an argocd-cm script: a check that used them would break in Argo CD."""
    script = tmp_path / "uses_string.lua"
    script.write_text('local hs = {}\nhs.status = "Healthy"\nhs.message = string.lower("X")\nreturn hs\n')
    assert run_health([{"a": 1}], script, allow_errors=True)[0][0] == "ERROR"
    assert "error" in run_gopherlua(argocd_vm, [{"a": 1}], script)[0]


def test_required_cases_are_covered():
    got = {Path(c["inputPath"]).stem: c["healthStatus"]["status"] for c in CASES}
    for name, status in REQUIRED.items():
        assert got.get(name) == status, f"case {name}: want {status}, health_test.yaml says {got.get(name)}"


def test_testdata_is_what_the_operator_writes():
    """testdata/ is generated by dbrev_states.py from decide/status; regenerate when they change."""
    built = dbrev_states.build()
    on_disk = {p.stem for p in (LUA_DIR / "testdata").glob("*.yaml")}
    assert on_disk == set(built), "run: python tests/ship/dbrev_states.py --write"
    for name, obj in built.items():
        path = LUA_DIR / "testdata" / f"{name}.yaml"
        assert path.read_text() == dbrev_states.testdata_yaml(obj), \
            f"{path} is stale: run python tests/ship/dbrev_states.py --write"
    assert {f"testdata/{n}.yaml" for n in built} == {c["inputPath"] for c in CASES}


def test_degraded_only_for_the_observed_generation():
    """A failure of an older generation is not Degraded (the fix may already be in the spec)."""
    states = dbrev_states.build()
    older = {name: obj for name, obj in states.items()
             if any(c["type"] == "Stalled" and c["status"] == "True"
                    for c in (obj.get("status") or {}).get("conditions", []))
             and obj["status"]["observedGeneration"] != obj["metadata"]["generation"]}
    assert "stalled_stale_generation" in older  # the case exists, so the loop below checks something
    got = run_health(list(older.values()))
    assert [s for s, _ in got] == ["Progressing"] * len(older), dict(zip(older, got))
    # the same failure, observed at the current generation, is Degraded
    current = states["stalled_downgrade_denied"]
    assert current["status"]["observedGeneration"] == current["metadata"]["generation"]
    assert run_health([current])[0][0] == "Degraded"


def test_awaiting_approval_message_says_how_to_approve(results):
    status, message = results["testdata/awaiting_approval.yaml"]
    assert status == "Suspended"
    assert dbrev_states.HASH_DOWN in message and "dbrev.io/approve=" in message


def test_tolerates_odd_objects():
    """Whatever the cluster holds, the script returns a status (a Lua error shows as Unknown in Argo CD)."""
    base = dbrev_states.build()["ready"]
    odd = [
        {"apiVersion": "dbrev.io/v1alpha1", "kind": "DatabaseRevision", "metadata": {"name": "x"}},
        {**base, "status": {}},
        {**base, "status": {"conditions": []}},
        {**base, "status": {"observedGeneration": 1}},
        {**base, "status": {"conditions": [{"type": "Ready", "status": "True"}]}},  # no observedGeneration
        {**base, "status": {"observedGeneration": 1, "conditions": [{"type": "Other", "status": "True"}]}},
    ]
    got = run_health(odd)
    assert [s for s, _ in got] == ["Progressing", "Progressing", "Progressing", "Progressing", "Progressing",
                                   "Progressing"]
    # A Ready condition without observedGeneration falls back to it being unknown: not Healthy.
    assert "generation 1" in got[4][1]


def test_shipped_in_the_package_and_in_argocd_cm():
    text = resources.files("dbrev.controller").joinpath("health.lua").read_text()
    assert text == HEALTH_LUA.read_text()
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["data"] == {"resource.customizations.health.dbrev.io_DatabaseRevision": text}
    assert (ARGOCD / "argocd-cm.yaml").read_text() == argocd.argocd_cm("argocd"), "run: python -m dbrev_dev.docs"


def test_example_app_orders_waves():
    docs_ = {d["kind"]: d for f in ("orders-migrations.yaml", "databaserevision.yaml", "deployment.yaml")
             for d in load_docs((ARGOCD / "shop" / f).read_text())}
    wave = {k: int(d["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0"))
            for k, d in docs_.items()}
    assert wave["DatabaseRevision"] == -1 and wave["ConfigMap"] == -1 and wave["Deployment"] == 0
    app = yaml.safe_load((ARGOCD / "application.yaml").read_text())
    assert app["spec"]["source"]["path"] == "examples/argocd/shop"


@pytest.mark.cluster
def test_argocd_examples_are_accepted_by_the_api_server(control_plane, argocd_crds, dbrev_crd, namespace):
    objs = kustomize(control_plane, ARGOCD / "shop") + load_docs((ARGOCD / "application.yaml").read_text()) \
        + load_docs((ARGOCD / "argocd-cm.yaml").read_text())
    assert sorted(o["kind"] for o in objs) == ["Application", "ConfigMap", "ConfigMap", "DatabaseRevision",
                                               "Deployment"]
    out = server_dry_run(control_plane, in_namespace(objs, namespace))
    for what in ("databaserevision.dbrev.io/orders", "deployment.apps/shop", "application.argoproj.io/shop",
                 "configmap/argocd-cm", "configmap/orders-migrations"):
        assert f"{what} created (server dry run)" in out


@pytest.mark.cluster
def test_argocd_cm_patch_keeps_other_keys(control_plane, namespace):
    """The documented install (a merge patch) adds dbrev's key and leaves Argo CD's own settings."""
    control_plane.kubectl("create", "configmap", "argocd-cm", "-n", namespace, "--from-literal=url=https://argocd.example")
    patch = argocd.argocd_cm(namespace)
    control_plane.kubectl("-n", namespace, "patch", "configmap", "argocd-cm", "--type", "merge",
                          "--patch-file", "/dev/stdin", input=patch)
    data = yaml.safe_load(control_plane.kubectl("get", "configmap", "argocd-cm", "-n", namespace,
                                                "-o", "yaml").stdout)["data"]
    assert data["url"] == "https://argocd.example"
    assert data["resource.customizations.health.dbrev.io_DatabaseRevision"] == HEALTH_LUA.read_text()
