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

Run as ``python -m dbrev_dev.envtest.images`` to build (or confirm) all three; ``... images apps`` builds
the test application's images (:func:`app_archive`: ``tests/appimage``, dbrev added with ``pip install
dbrev`` as an application's image adds it).
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

from .assets import AssetError, build_log, cache_root

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
    build_log(f"built the pause image in {time.monotonic() - t0:.0f}s")
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
        build_log(f"debootstrap {suite} (minbase + {', '.join(BASE_PACKAGES)})")
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
    build_log(f"built the Debian base image in {time.monotonic() - t0:.0f}s")
    return dest


# ---- the operator image

def _context_key(repo: Path) -> str:
    h = hashlib.sha256()
    files = [repo / "Dockerfile", repo / "pyproject.toml", repo / "README.md"]
    # operator/dbrev_dev (the development tooling, this module included) is not in the wheel nor the
    # image: editing it does not force a rebuild.
    files += sorted(p for p in (repo / "operator").rglob("*") if p.is_file() and "__pycache__" not in p.parts
                    and not p.name.endswith(".pyc") and ".egg-info" not in str(p)
                    and "dbrev_dev" not in p.relative_to(repo).parts)
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
    from .assets import BuildLock

    with BuildLock(images_dir() / ".build.lock"):  # one build at a time on one store
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
    build_log(f"wheels built in {time.monotonic() - t0:.0f}s; building the image")
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
    build_log(f"built the operator image in {time.monotonic() - t0:.0f}s")
    return dest


# ---- application images (tests/appimage): an app's image with its migrations, dbrev added the documented way

APP_SOURCE = REPO_ROOT / "tests" / "appimage"  # ordersapp/ (the package, alembic.ini, migrations/), broken/
ORDERSAPP_IMAGE = "dbrev-test/ordersapp"
NODBREV_IMAGE = "dbrev-test/noddbrev"
APP_ROOT = "/app"  # where the application is in its image: /app/alembic.ini, /app/ordersapp, /app/migrations
APP_MIGRATIONS = f"{APP_ROOT}/migrations"  # the script location (env.py + versions/): spec.migrations.image.path
#: what an application needs of its own, before dbrev is added (the requirements of a typical Alembic app)
APP_REQUIREMENTS = ("alembic", "sqlalchemy", "psycopg[binary]")
#: tag -> (how many of ordersapp's version scripts it carries, oldest first; extra scripts from broken/;
#: dbrev installed)
APP_TAGS: dict[str, tuple[int, tuple[str, ...], bool]] = {
    f"{ORDERSAPP_IMAGE}:v1": (3, (), True),
    f"{ORDERSAPP_IMAGE}:v2": (5, (), True),
    f"{ORDERSAPP_IMAGE}:broken": (5, ("c0de00000006_one_order_per_customer.py",), True),
    f"{NODBREV_IMAGE}:v1": (3, (), False),
}

# The application's own Containerfile, as its team would write it; `RUN pip install dbrev` is the one
# line docs/install.md gives (the lean install: engine + CLI, not the operator's extra). The wheels
# are only the build's package index (no network here): ARG, so nothing of them stays in the image.
APP_DEPS_CONTAINERFILE = """\
FROM {base}
ARG PIP_NO_INDEX=1
ARG PIP_FIND_LINKS=/wheels
ARG PIP_DISABLE_PIP_VERSION_CHECK=1
ARG PIP_NO_CACHE_DIR=1
COPY wheels/ /wheels/
RUN python3 -m venv /opt/app
ENV PATH=/opt/app/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN pip install {requirements}
{dbrev}RUN rm -rf /wheels
"""
APP_DBREV_LINE = "RUN pip install dbrev\n"
APP_CONTAINERFILE = """\
FROM {deps}
COPY app/ /app/
WORKDIR /app
USER 65532:65532
CMD ["alembic", "upgrade", "head"]
"""


def app_files(tag: str, source: Path = APP_SOURCE) -> dict[str, bytes]:
    """What goes into /app for ``tag``: path in the image (relative to /app) -> bytes."""
    count, extra, _with_dbrev = APP_TAGS[tag]
    app = source / "ordersapp"
    out: dict[str, bytes] = {}
    for p in sorted(app.rglob("*")):
        rel = p.relative_to(app)
        if not p.is_file() or "__pycache__" in rel.parts or p.suffix == ".pyc" or rel.parts[:2] == ("migrations", "versions"):
            continue
        out[str(rel)] = p.read_bytes()
    versions = sorted((app / "migrations" / "versions").glob("*.py"))
    if count > len(versions):
        raise AssetError(f"{tag}: wants {count} version scripts, {app / 'migrations' / 'versions'} has {len(versions)}")
    for p in versions[:count]:
        out[f"migrations/versions/{p.name}"] = p.read_bytes()
    for name in extra:
        out[f"migrations/versions/{name}"] = (source / "broken" / name).read_bytes()
    return out


def app_deps_containerfile(with_dbrev: bool) -> str:
    return APP_DEPS_CONTAINERFILE.format(base=BASE_IMAGE, requirements=" ".join(f"'{r}'" for r in APP_REQUIREMENTS),
                                         dbrev=APP_DBREV_LINE if with_dbrev else "")


def _slug(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)


def app_archive(tag: str, repo: Path = REPO_ROOT, source: Path = APP_SOURCE) -> Path:
    """The test application's image ``tag`` (one of :data:`APP_TAGS`) as an archive (``ctr images import``).

    The local Debian base + a venv with the app's requirements and (but for ``noddbrev``) ``pip install
    dbrev`` from the wheels of this checkout + /app with the first N version scripts. Kept in
    ``<cache>/images`` under a key of everything it is built from (the Containerfiles, the wheels' source
    key, the app's files); an older archive of the same tag is removed when a new one is built."""
    if tag not in APP_TAGS:
        raise AssetError(f"no test application image {tag!r}: one of {', '.join(APP_TAGS)}")
    with_dbrev = APP_TAGS[tag][2]
    files = app_files(tag, source)
    deps_file = app_deps_containerfile(with_dbrev)
    h = hashlib.sha256()
    suite = host_suite()  # the base archive's name (base_archive's key), without building it here
    base_name = f"debian-python-{suite}-{_short(f'{suite} {chr(32).join(BASE_PACKAGES)}')}.tar"
    for part in (base_name, _context_key(repo), deps_file, APP_CONTAINERFILE):
        h.update(part.encode() + b"\0")
    for rel, data in sorted(files.items()):
        h.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    key = h.hexdigest()[:12]
    dest = images_dir() / f"app-{_slug(tag)}-{key}.tar"
    if dest.is_file():
        return dest
    from .assets import BuildLock

    with BuildLock(images_dir() / ".build.lock"):  # the same lock as the operator image: one store
        if dest.is_file():
            return dest
        return _build_app(repo, tag, files, deps_file, dest)


def app_archives(tags=None, repo: Path = REPO_ROOT) -> dict[str, Path]:
    """Every test application image (or ``tags``): tag -> archive."""
    return {t: app_archive(t, repo) for t in (tags or APP_TAGS)}


def _build_app(repo: Path, tag: str, files: dict[str, bytes], deps_file: str, dest: Path) -> Path:
    t0 = time.monotonic()
    base = base_archive()
    b = Buildah()
    b("rm", "--all")  # working containers an interrupted build left in this (private) store
    if not b.has(BASE_IMAGE):
        b("pull", f"docker-archive:{base}")
    wheels = wheelhouse(repo)
    # the venv with the requirements (and dbrev): built once per (wheels, Containerfile), kept in buildah's
    # store, shared by every tag as its lower layers (containerd then stores them once)
    deps_repo, source_key = "dbrev.local/app-deps", _context_key(repo)
    deps = f"{deps_repo}:{source_key}-{_short(deps_file)}"
    for line in b("images", "--format", "{{.Name}}:{{.Tag}}").split():  # those of older sources
        if line.rsplit(":", 1)[0].endswith(deps_repo) and not line.rsplit(":", 1)[1].startswith(source_key):
            b("rmi", line)
    work = images_dir() / "build"
    work.mkdir(parents=True, exist_ok=True)
    ctx = Path(tempfile.mkdtemp(prefix="app-", dir=work))
    try:
        if not b.has(deps):
            (ctx / "wheels").mkdir()
            for whl in wheels.glob("*.whl"):
                shutil.copy2(whl, ctx / "wheels" / whl.name)
            (ctx / "Containerfile.deps").write_text(deps_file)
            b("bud", "--isolation", "oci", "--network", "none", "--layers=false", "--pull-never", "-t", deps,
              "-f", str(ctx / "Containerfile.deps"), str(ctx))
            shutil.rmtree(ctx / "wheels")
        for rel, data in files.items():
            target = ctx / "app" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        (ctx / "Containerfile").write_text(APP_CONTAINERFILE.format(deps=deps))
        b("bud", "--isolation", "oci", "--network", "none", "--layers=false", "--pull-never", "-t", tag,
          "-f", str(ctx / "Containerfile"), str(ctx))
        for old in images_dir().glob(f"app-{_slug(tag)}-*.tar"):
            old.unlink()
        b.save(tag, dest)
        b("rmi", tag)
    finally:
        shutil.rmtree(ctx, ignore_errors=True)
    build_log(f"built the test application image {tag} in {time.monotonic() - t0:.0f}s")
    return dest


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m dbrev_dev.envtest.images",
                                description="Build (or find cached) the images the one-node cluster loads.")
    p.add_argument("which", nargs="*", metavar="IMAGE",
                   help="pause, base, operator (the default: all three) or apps (the test application's images)")
    which = p.parse_args(sys.argv[1:] if argv is None else argv).which or ["pause", "base", "operator"]
    unknown = [w for w in which if w not in ("pause", "base", "operator", "apps")]
    if unknown:
        p.error(f"unknown image(s) {', '.join(unknown)}: choose from pause, base, operator, apps")
    t0 = time.monotonic()
    try:
        for w in which:
            if w == "apps":  # the test application's images (tests/appimage): not built by default
                for tag, path in app_archives().items():
                    print(f"{tag}: {path}")
                continue
            path = {"pause": pause_archive, "base": base_archive, "operator": operator_archive}[w]()
            print(f"{w}: {path}")
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"({time.monotonic() - t0:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
