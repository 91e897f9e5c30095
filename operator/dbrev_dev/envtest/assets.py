"""Find or build the control-plane binaries (etcd, kube-apiserver, kubectl).

Order of preference:

1. ``KUBEBUILDER_ASSETS`` (envtest's layout: a folder holding ``etcd``,
   ``kube-apiserver`` and optionally ``kubectl``);
2. a cache folder outside the repository, keyed by version
   (``$DBREV_CACHE_DIR`` or ``$XDG_CACHE_HOME/dbrev`` or ``~/.cache/dbrev``);
3. a build from Go modules through the Go module proxy into that cache.

``k8s.io/kubernetes`` cannot be ``go install``-ed: its go.mod requires every
staging module at ``v0.0.0`` with ``=> ./staging/...`` replaces.  We create a
throwaway module that requires ``k8s.io/kubernetes vX`` and replaces each
staging module (read from the cached ``.mod`` file, never a hard-coded list)
with its published ``v0.X.Y``.  etcd gets a module of its own so the two
dependency graphs never mix.

Run as ``python -m dbrev_dev.envtest.assets`` to build (or confirm) the cache; ``--node`` also builds
kubelet, kube-controller-manager, kube-scheduler and kube-proxy (the one-node cluster's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = os.environ.get("DBREV_KUBERNETES_VERSION", "v1.34.4")
ETCD_VERSION = os.environ.get("DBREV_ETCD_VERSION", "v3.6.16")

BINARIES = ("etcd", "kube-apiserver", "kubectl")
# The one-node cluster (dbrev_dev.envtest.node): built from the same pinned module, into the same folder.
NODE_BINARIES = ("kubelet", "kube-controller-manager", "kube-scheduler", "kube-proxy")


class AssetError(RuntimeError):
    """The binaries could not be found or built; the message says what to do."""


@dataclass(frozen=True)
class Assets:
    etcd: Path
    kube_apiserver: Path
    kubectl: Path
    source: str  # "KUBEBUILDER_ASSETS", "cache" or "built"


def cache_root() -> Path:
    if os.environ.get("DBREV_CACHE_DIR"):
        return Path(os.environ["DBREV_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dbrev"


def bin_dir(kube_version: str = KUBERNETES_VERSION, etcd_version: str = ETCD_VERSION) -> Path:
    return cache_root() / "control-plane" / f"k8s-{kube_version}_etcd-{etcd_version}" / "bin"


def build_log(msg: str) -> None:
    print(f"[dbrev-envtest] {msg}", file=sys.stderr, flush=True)


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssetError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"in {cwd}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc.stdout


def _go_env() -> dict[str, str]:
    if not shutil.which("go"):
        raise AssetError(
            "no 'go' on PATH: install Go, or set KUBEBUILDER_ASSETS to a folder holding "
            "etcd and kube-apiserver (e.g. from `setup-envtest use -p path`)"
        )
    env = dict(os.environ)
    env.setdefault("CGO_ENABLED", "0")
    env["GOFLAGS"] = " ".join(f for f in (env.get("GOFLAGS", ""), "-mod=mod") if f)
    env.setdefault("GOWORK", "off")
    # Only the Go module proxy: Go's default ("...,direct") would fall back to
    # fetching from VCS hosts.  The checksum database is reached through the
    # proxy too.  An explicit GOPROXY (e.g. a company mirror) is respected.
    env.setdefault("GOPROXY", "https://proxy.golang.org")
    return env


def _staging_modules(go_mod_text: str) -> list[str]:
    """Module paths that k8s.io/kubernetes replaces with ./staging/src/..."""
    mods = re.findall(r"^\s*(\S+)\s+=>\s+\./staging/src/\S+\s*$", go_mod_text, re.M)
    if not mods:
        raise AssetError("found no staging replaces in k8s.io/kubernetes's go.mod")
    return sorted(set(mods))


def _download_json(module: str, version: str, cwd: Path, env: dict[str, str]) -> dict:
    out = _run(["go", "mod", "download", "-json", f"{module}@{version}"], cwd, env)
    return json.loads(out)


def _ldflags(version: str) -> str:
    m = re.match(r"v(\d+)\.(\d+)\.", version)
    major, minor = (m.group(1), m.group(2)) if m else ("1", "0")
    pkg = "k8s.io/component-base/version"
    return " ".join(
        [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            "-X k8s.io/client-go/pkg/version.gitVersion=" + version,
            "-s -w",
        ]
    )


def build_kubernetes(dest: Path, version: str = KUBERNETES_VERSION,
                     names: tuple[str, ...] = ("kube-apiserver", "kubectl")) -> None:
    env = _go_env()
    work = cache_root() / "control-plane" / "build" / f"kubernetes-{version}"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "go.mod").exists():
        _run(["go", "mod", "init", "dbrev.local/kubebuild"], work, env)
    info = _download_json("k8s.io/kubernetes", version, work, env)
    staging = _staging_modules(Path(info["GoMod"]).read_text())
    staging_version = "v0." + version[len("v1."):]
    build_log(f"kubernetes {version}: pinning {len(staging)} staging modules at {staging_version}")
    for mod in staging:
        _run(["go", "mod", "edit", f"-replace={mod}={mod}@{staging_version}"], work, env)
    _run(["go", "mod", "edit", f"-require=k8s.io/kubernetes@{version}"], work, env)
    # A blank import keeps `go mod tidy`-style resolution anchored on the commands we build.
    every = ("kube-apiserver", "kubectl", *NODE_BINARIES)
    (work / "tools.go").write_text(
        "//go:build tools\n\npackage tools\n\nimport (\n"
        + "".join(f'\t_ "k8s.io/kubernetes/cmd/{n}"\n' for n in every) + ")\n"
    )
    _run(["go", "get", f"k8s.io/kubernetes@{version}"], work, env)
    dest.mkdir(parents=True, exist_ok=True)
    for name in names:
        pkg = f"cmd/{name}"
        t0 = time.monotonic()
        build_log(f"building {name} {version} (cold, all of them: about 12 min on 2 cores, downloads included)")
        tmp = dest / f".{name}.tmp"
        _run(
            ["go", "build", "-p", str(os.cpu_count() or 2), "-trimpath",
             "-ldflags", _ldflags(version), "-o", str(tmp), f"k8s.io/kubernetes/{pkg}"],
            work, env,
        )
        tmp.rename(dest / name)
        build_log(f"built {name} in {time.monotonic() - t0:.0f}s")


def build_etcd(dest: Path, version: str = ETCD_VERSION) -> None:
    env = _go_env()
    work = cache_root() / "control-plane" / "build" / f"etcd-{version}"
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "go.mod").exists():
        _run(["go", "mod", "init", "dbrev.local/etcdbuild"], work, env)
    (work / "tools.go").write_text(
        '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n'
    )
    _run(["go", "get", f"go.etcd.io/etcd/server/v3@{version}"], work, env)
    dest.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    build_log(f"building etcd {version}")
    tmp = dest / ".etcd.tmp"
    _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(tmp),
          "go.etcd.io/etcd/server/v3"], work, env)
    tmp.rename(dest / "etcd")
    build_log(f"built etcd in {time.monotonic() - t0:.0f}s")


def _from_kubebuilder_assets(folder: str) -> Assets:
    d = Path(folder).expanduser()
    missing = [b for b in ("etcd", "kube-apiserver") if not (d / b).is_file()]
    if missing:
        raise AssetError(
            f"KUBEBUILDER_ASSETS={folder} lacks {', '.join(missing)} "
            "(expected envtest's layout, e.g. from `setup-envtest use -p path`)"
        )
    # Prefer a kubectl of the same release: the folder's own, then ours, then PATH's.
    for candidate in (d / "kubectl", bin_dir() / "kubectl"):
        if candidate.is_file():
            kubectl = str(candidate)
            break
    else:
        kubectl = shutil.which("kubectl")
    if not kubectl:
        raise AssetError(f"KUBEBUILDER_ASSETS={folder} has no kubectl and none is on PATH")
    return Assets(d / "etcd", d / "kube-apiserver", Path(kubectl), "KUBEBUILDER_ASSETS")


def find(build: bool = True) -> Assets:
    """Locate the binaries, building them into the cache when ``build`` is true."""
    if os.environ.get("KUBEBUILDER_ASSETS"):
        return _from_kubebuilder_assets(os.environ["KUBEBUILDER_ASSETS"])
    dest = bin_dir()
    have = {b: (dest / b).is_file() for b in BINARIES}
    source = "cache"
    if not all(have.values()):
        if not build:
            raise AssetError(
                f"control-plane binaries missing from {dest}: run `make cluster-assets` "
                "(builds them from Go modules) or set KUBEBUILDER_ASSETS"
            )
        lock = BuildLock(dest.parent / ".build.lock")
        with lock:
            if not (dest / "etcd").is_file():
                build_etcd(dest)
            if not ((dest / "kube-apiserver").is_file() and (dest / "kubectl").is_file()):
                build_kubernetes(dest)
        source = "built"
    return Assets(dest / "etcd", dest / "kube-apiserver", dest / "kubectl", source)


@dataclass(frozen=True)
class NodeAssets:
    kubelet: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kube_proxy: Path
    source: str


def find_node(build: bool = True) -> NodeAssets:
    """kubelet, kube-controller-manager, kube-scheduler, kube-proxy of the control plane's version.

    With ``KUBEBUILDER_ASSETS`` they are looked for in that folder, then in the cache (envtest's
    layout has none of them: the error says how to get them); otherwise built into the cache."""
    folders = [bin_dir()]
    if os.environ.get("KUBEBUILDER_ASSETS"):
        folders.insert(0, Path(os.environ["KUBEBUILDER_ASSETS"]).expanduser())
    for d in folders:
        if all((d / b).is_file() for b in NODE_BINARIES):
            return NodeAssets(*(d / b for b in NODE_BINARIES), source="cache")
    if os.environ.get("KUBEBUILDER_ASSETS") or not build:
        where = " or ".join(str(d) for d in folders)
        raise AssetError(
            f"node binaries ({', '.join(NODE_BINARIES)}) not found in {where}: run "
            "`make node-assets` (builds them from Go modules into the cache: about 9 min on 2 cores "
            "after the control plane's build) or put them next to kube-apiserver"
        )
    dest = bin_dir()
    with BuildLock(dest.parent / ".build.lock"):
        missing = tuple(b for b in NODE_BINARIES if not (dest / b).is_file())
        if missing:
            build_kubernetes(dest, names=missing)
    return NodeAssets(*(dest / b for b in NODE_BINARIES), source="built")


class BuildLock:
    """An flock so two concurrent builds (CI and a developer) do not trample each other."""

    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def __enter__(self):
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "w")
        fcntl.flock(self.fh, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    t0 = time.monotonic()
    try:
        assets = find(build=True)
        node = find_node(build=True) if "--node" in argv else None
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"etcd:           {assets.etcd}")
    print(f"kube-apiserver: {assets.kube_apiserver}")
    print(f"kubectl:        {assets.kubectl}")
    if node:
        for b in NODE_BINARIES:
            print(f"{b + ':':<16}{getattr(node, b.replace('-', '_'))}")
    print(f"source:         {assets.source} ({time.monotonic() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
