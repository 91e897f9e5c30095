"""Container images for the one-node cluster, built locally (no image registry is reachable).

* the **pause** (sandbox) image: a tiny static Go binary that sleeps and reaps children;
* a **Debian base** image: ``debootstrap --variant=minbase`` of the machine's own Debian suite with
  Python 3 and venv, from the apt mirror the machine is configured with (read from its apt sources at
  run time, never written down here);
* the **operator** image: the project's Dockerfile built with buildah (daemonless; no BuildKit) on
  that base, from wheels built on the host (so the build needs no network).

Each is kept as an image archive under ``<cache>/images`` (keyed by what it is built from) and
imported into the node's containerd with ``ctr images import``.  buildah keeps its own storage under
``<cache>/buildah`` and leaves no working container behind.

Run as ``python -m dbrev.envtest.images`` to build (or confirm) all three.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .assets import AssetError, _log, cache_root

PAUSE_IMAGE = "dbrev.local/pause:3.10"
BASE_IMAGE = "dbrev.local/debian-python:bookworm"
OPERATOR_IMAGE = "ghcr.io/dbrev/dbrev:dev"  # what a build is tagged
MANIFESTS_IMAGE = "ghcr.io/dbrev/dbrev:0.1.0"  # what manifests/ name: the node tags the build so too
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")

REPO_ROOT = Path(__file__).resolve().parents[3]

PAUSE_GO = """\
// pause: the pod sandbox's process. Sleeps, reaps children, exits on SIGINT/SIGTERM.
package main

import (
\t"os"
\t"os/signal"
\t"syscall"
)

func main() {
\tsigs := make(chan os.Signal, 8)
\tsignal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
\tfor s := range sigs {
\t\tif s != syscall.SIGCHLD {
\t\t\tos.Exit(0)
\t\t}
\t\tfor {
\t\t\tvar ws syscall.WaitStatus
\t\t\tpid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
\t\t\tif pid <= 0 || err != nil {
\t\t\t\tbreak
\t\t\t}
\t\t}
\t}
}
"""


def images_dir() -> Path:
    return cache_root() / "images"


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _run(cmd: list[str], *, cwd: Path | None = None, env: dict | None = None, input: str | None = None,
         timeout: float | None = 1800) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, input=input, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        raise AssetError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


class Buildah:
    """buildah with its storage in the cache folder (never the machine's default store)."""

    def __init__(self, root: Path | None = None):
        if not shutil.which("buildah"):
            raise AssetError("no 'buildah' on PATH: install Debian's buildah (apt-get install buildah)")
        self.root = root or cache_root() / "buildah"
        # one run root per storage: two stores sharing one would trample each other's mounts
        tag = _short(str(self.root.resolve()))
        self.runroot = Path(f"/run/dbrev-buildah/{tag}") if os.access("/run", os.W_OK) else self.root / "run"

    def __call__(self, *args: str, timeout: float | None = 1800) -> str:
        return _run(["buildah", "--root", str(self.root / "storage"), "--runroot", str(self.runroot),
                     "--storage-driver", "overlay", *args], timeout=timeout)

    def from_rootfs_tar(self, tar: Path, name: str, config: list[str]) -> None:
        ctr = self("from", "scratch").strip()
        try:
            self("add", ctr, str(tar), "/")
            if config:
                self("config", *config, ctr)
            self("commit", "--rm", ctr, name)
        except BaseException:
            subprocess.run(["buildah", "--root", str(self.root / "storage"), "--runroot",
                            str(self.runroot), "rm", ctr], capture_output=True)
            raise

    def save(self, name: str, dest: Path) -> None:
        tmp = dest.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        self("push", name, f"docker-archive:{tmp}:{name}")
        tmp.rename(dest)

    def has(self, name: str) -> bool:
        proc = subprocess.run(["buildah", "--root", str(self.root / "storage"), "--runroot",
                               str(self.runroot), "inspect", "--type", "image", name],
                              capture_output=True)
        return proc.returncode == 0


# ---- pause

def pause_archive() -> Path:
    """The pause image as an archive (built once from PAUSE_GO)."""
    dest = images_dir() / f"pause-{_short(PAUSE_GO)}.tar"
    if dest.is_file():
        return dest
    if not shutil.which("go"):
        raise AssetError("no 'go' on PATH: Go builds the pause (sandbox) image")
    t0 = time.monotonic()
    work = cache_root() / "images" / "build" / "pause"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text("module dbrev.local/pause\n\ngo 1.21\n")
    (work / "main.go").write_text(PAUSE_GO)
    env = dict(os.environ, CGO_ENABLED="0", GOWORK="off", GOFLAGS="")
    root = Path(tempfile.mkdtemp(prefix="pause-", dir=work))
    try:
        _run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(root / "pause"), "."], cwd=work, env=env)
        tar = work / "pause-rootfs.tar"
        _run(["tar", "-C", str(root), "--owner=0", "--group=0", "-cf", str(tar), "pause"])
        b = Buildah()
        b.from_rootfs_tar(tar, PAUSE_IMAGE, ["--entrypoint", '["/pause"]', "--user", "65535:65535"])
        b.save(PAUSE_IMAGE, dest)
        b("rmi", PAUSE_IMAGE)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _log(f"built the pause image in {time.monotonic() - t0:.0f}s")
    return dest


# ---- Debian base

def apt_mirror(suite: str) -> str:
    """The machine's own Debian mirror for ``suite``, from its apt sources (deb822 or one-line)."""
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", Path(path).read_text()):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.+)$", stanza, re.M))
            if suite in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                return fields["URIs"].split()[0]
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if os.path.isfile(path):
            for line in Path(path).read_text().splitlines():
                m = re.match(r"\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
                if m and m.group(2) == suite:
                    return m.group(1)
    raise AssetError(f"no apt source for Debian {suite} in /etc/apt: cannot debootstrap the base image")


def host_suite() -> str:
    text = Path("/etc/os-release").read_text() if os.path.isfile("/etc/os-release") else ""
    m = re.search(r"^VERSION_CODENAME=(\w+)", text, re.M)
    return m.group(1) if m else "bookworm"


def base_archive(suite: str | None = None) -> Path:
    """A minimal Debian with Python 3 and venv, as an image archive."""
    suite = suite or host_suite()
    key = _short(f"{suite} {' '.join(BASE_PACKAGES)}")
    dest = images_dir() / f"debian-python-{suite}-{key}.tar"
    if dest.is_file():
        return dest
    if not shutil.which("debootstrap"):
        raise AssetError("no 'debootstrap' on PATH: install Debian's debootstrap")
    mirror = apt_mirror(suite)
    t0 = time.monotonic()
    work = images_dir() / "build"
    work.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix=f"debian-{suite}-", dir=work))
    try:
        _log(f"debootstrap {suite} (minbase + {', '.join(BASE_PACKAGES)})")
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite,
              str(root), mirror], timeout=1800)
        for sub in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man",
                    "usr/share/locale"):
            target = root / sub
            if target.is_dir():
                for child in target.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
        # no mirror name inside the image: its apt sources are left empty
        (root / "etc/apt/sources.list").write_text("")
        tar = work / f"debian-{suite}-rootfs.tar"
        _run(["tar", "-C", str(root), "--numeric-owner", "-cf", str(tar), "."])
        b = Buildah()
        b.from_rootfs_tar(tar, BASE_IMAGE, ["--cmd", '["/bin/bash"]',
                                            "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
        b.save(BASE_IMAGE, dest)
        tar.unlink()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _log(f"built the Debian base image in {time.monotonic() - t0:.0f}s")
    return dest


# ---- the operator image

def _context_key(repo: Path) -> str:
    h = hashlib.sha256()
    files = [repo / "Dockerfile", repo / "pyproject.toml", repo / "README.md"]
    # dbrev.envtest (this test tooling) is in the image but never runs there: editing it does not
    # force a rebuild (the image then carries the older copy of these test helpers only).
    files += sorted(p for p in (repo / "operator").rglob("*") if p.is_file() and "__pycache__" not in p.parts
                    and not p.name.endswith(".pyc") and ".egg-info" not in str(p)
                    and "envtest" not in p.relative_to(repo).parts)
    for p in files:
        h.update(str(p.relative_to(repo)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:12]


def wheelhouse(repo: Path, python: str = sys.executable) -> Path:
    """Wheels of dbrev and all its dependencies, built on the host with its own pip settings, in the
    build context's ``.wheelhouse`` (the Dockerfile installs from there when it is not empty).
    Kept while the sources are unchanged (``.wheelhouse/.key``)."""
    dest = repo / ".wheelhouse"
    key = _context_key(repo)
    stamp = dest / ".key"
    if stamp.is_file() and stamp.read_text() == key and any(dest.glob("dbrev-*.whl")):
        return dest
    for old in dest.glob("*.whl"):
        old.unlink()
    dest.mkdir(exist_ok=True)
    _run([python, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(dest), f"{repo}[operator]"], timeout=1800)
    stamp.write_text(key)
    return dest


def operator_archive(repo: Path = REPO_ROOT, name: str = OPERATOR_IMAGE) -> Path:
    """The Dockerfile built on the local Debian base, as an archive (rebuilt when the sources change)."""
    key = _context_key(repo)
    dest = images_dir() / f"operator-{key}.tar"
    if dest.is_file():
        return dest
    from .assets import _BuildLock

    with _BuildLock(images_dir() / ".build.lock"):  # one build at a time on one store
        if dest.is_file():
            return dest
        return _build_operator(repo, name, dest)


def _build_operator(repo: Path, name: str, dest: Path) -> Path:
    base = base_archive()
    b = Buildah()
    b("rm", "--all")  # working containers an interrupted build left in this (private) store
    if not b.has(BASE_IMAGE):
        b("pull", f"docker-archive:{base}")
    t0 = time.monotonic()
    wheelhouse(repo)
    _log(f"wheels built in {time.monotonic() - t0:.0f}s; building the image")
    # runc isolation with no network at all: the wheels are already in the context
    b("bud", "--isolation", "oci", "--network", "none", "--layers=false",
      "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--pull-never", "-t", name, "-f",
      str(repo / "Dockerfile"), str(repo))
    for old in images_dir().glob("operator-*.tar"):
        old.unlink()
    b.save(name, dest)
    b("rmi", name)
    subprocess.run(["buildah", "--root", str(b.root / "storage"), "--runroot", str(b.runroot),
                    "rmi", "--prune"], capture_output=True)
    _log(f"built the operator image in {time.monotonic() - t0:.0f}s")
    return dest


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    which = argv or ["pause", "base", "operator"]
    t0 = time.monotonic()
    try:
        for w in which:
            path = {"pause": pause_archive, "base": base_archive, "operator": operator_archive}[w]()
            print(f"{w}: {path}")
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"({time.monotonic() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
