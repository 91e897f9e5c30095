"""Helpers of the "ship it" tests (fixtures: conftest.py): real tools, real CRDs of the ecosystem, server-side dry runs.

The third-party CRDs come from the projects' own Go modules through the Go module proxy (cached in
Go's module cache, outside the repository), never hand-written:

* ServiceMonitor, PrometheusRule: github.com/prometheus-operator/prometheus-operator
  (example/prometheus-operator-crd/);
* Application: github.com/argoproj/argo-cd/v3 (manifests/crds/);
* Kustomization: github.com/fluxcd/kustomize-controller (config/crd/bases/), the release whose
  github.com/fluxcd/pkg/runtime tests/ship/kstatus/go.mod builds against.

Tools (promtool, lua5.1, go) are required: a missing one fails with what to install, never skips.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SHIP = Path(__file__).resolve().parent

PROMETHEUS_OPERATOR = ("github.com/prometheus-operator/prometheus-operator", "v0.85.0")
ARGO_CD = ("github.com/argoproj/argo-cd/v3", "v3.5.7")
FLUX_KUSTOMIZE_CONTROLLER = ("github.com/fluxcd/kustomize-controller", "v1.9.6")

CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}


def require_tool(name: str, how: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} is not installed: {how} (CI installs it: .ci/run)", pytrace=False)
    return path


def go_env() -> dict[str, str]:
    env = dict(os.environ)
    # Only the module proxy (no VCS fallback); an explicit GOPROXY (a mirror) is respected.
    env.setdefault("GOPROXY", "https://proxy.golang.org")
    env.setdefault("GOWORK", "off")
    env.setdefault("CGO_ENABLED", "0")
    return env


def go_module_dir(module: str, version: str) -> Path:
    """The extracted module (Go's module cache), downloaded through the module proxy if needed."""
    go = require_tool("go", "install Go (it also builds the control plane)")
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([go, "mod", "download", "-json", f"{module}@{version}"], cwd=tmp, env=go_env(),
                              capture_output=True, text=True, timeout=900)
    try:
        info = json.loads(proc.stdout)
    except ValueError:
        info = {}
    if proc.returncode != 0 or info.get("Error") or not info.get("Dir"):
        pytest.fail(f"go mod download {module}@{version} failed: {info.get('Error') or proc.stderr[-2000:]}",
                    pytrace=False)
    return Path(info["Dir"])


def load_docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def in_namespace(docs: list[dict], namespace: str) -> list[dict]:
    """The same objects, moved into ``namespace`` (each test gets a fresh one)."""
    out = []
    for d in docs:
        d = json.loads(json.dumps(d))
        if d.get("kind") not in CLUSTER_SCOPED:
            d.setdefault("metadata", {})["namespace"] = namespace
        out.append(d)
    return out


def server_dry_run(control_plane, docs: list[dict]) -> str:
    """``kubectl apply --dry-run=server`` of the objects: the API server validates them against the
    installed CRDs' schemas (and CEL rules) and admission, and stores nothing."""
    text = yaml.safe_dump_all(docs, sort_keys=False)
    proc = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)
    assert proc.returncode == 0, f"the API server refused:\n{proc.stderr}\n--- objects ---\n{text}"
    return proc.stdout


def kustomize(control_plane, folder: Path) -> list[dict]:
    proc = control_plane.kubectl("kustomize", str(folder), check=False)
    assert proc.returncode == 0, f"kubectl kustomize {folder}: {proc.stderr}"
    return load_docs(proc.stdout)


def install_crds(control_plane, files: list[Path]) -> None:
    for f in files:
        assert f.is_file(), f"missing CRD file {f}"
        # Server-side: some of these CRDs are too big for the last-applied annotation.
        control_plane.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=dbrev-tests",
                              "-f", str(f), timeout=300)
    for f in files:
        for d in load_docs(f.read_text()):
            if d.get("kind") == "CustomResourceDefinition":
                control_plane.wait_established(d["metadata"]["name"])


def go_tool(src: Path, name: str) -> Path:
    """Build the Go program in ``src`` (main.go + go.mod + go.sum) once, into the cache outside the
    repository, keyed by a hash of its sources; later sessions reuse the binary."""
    from dbrev_dev.envtest.assets import cache_root

    h = hashlib.sha256()
    for f in ("go.mod", "go.sum", "main.go"):
        h.update(f.encode() + b"\0" + (src / f).read_bytes())
    out = cache_root() / f"{name}-{h.hexdigest()[:12]}" / name
    if out.is_file():
        return out
    go = require_tool("go", "install Go (it also builds the control plane)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{name}.{os.getpid()}")
    proc = subprocess.run([go, "build", "-mod=readonly", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp), "."],
                          cwd=src, env=go_env(), capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"building {src.relative_to(ROOT)} failed:\n{proc.stderr[-4000:]}", pytrace=False)
    tmp.replace(out)  # atomic: a concurrent session sees no binary or a whole one
    return out


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to dashes."""
    out = set()
    for line in markdown.splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*$", line)
        if m:
            out.add(re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-"))
    return out
