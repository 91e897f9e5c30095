"""The wheel (what ``pip install dbrev`` and the image install) carries the product and nothing else.

Built like the image's wheelhouse (``dbrev_dev.envtest.images.wheelhouse``: ``pip wheel``), from a copy
of what the Dockerfile copies (pyproject.toml, README.md, operator/), so the checkout is left as it is:

* every file of ``operator/dbrev/`` (its modules and ``health.lua``) is in it, under the same path, and
  each of the packages core, pg, engine, controller and cli;
* nothing of the development tooling (``operator/dbrev_dev/``: envtest, demo, docs) and no test file;
* the console script is ``dbrev = dbrev.cli:main``.

And the development tooling is importable in a checkout after ``make setup`` without PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from shiptools import ROOT

PACKAGES = ("core", "pg", "engine", "controller", "cli")
DEV = ROOT / "operator" / "dbrev_dev"


def _product_files() -> set[str]:
    pkg = ROOT / "operator" / "dbrev"
    return {p.relative_to(pkg.parent).as_posix() for p in pkg.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix in (".py", ".lua")}


def _dev_modules() -> set[str]:
    """The development tooling's module names (``envtest``, ``assets``, ``demo``, ``docs``, ...)."""
    return {p.stem for p in DEV.rglob("*.py") if p.stem != "__init__"} | {p.name for p in DEV.rglob("*")
                                                                          if p.is_dir() and p.name != "__pycache__"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "operator", src / "operator",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(src)],
                   check=True, capture_output=True, text=True, timeout=600)
    (whl,) = out.glob("dbrev-*.whl")
    return zipfile.ZipFile(whl)


def _shipped(wheel: zipfile.ZipFile) -> set[str]:
    return {n for n in wheel.namelist() if ".dist-info/" not in n}


def test_the_wheel_carries_every_product_file_and_each_package(wheel):
    shipped = _shipped(wheel)
    assert _product_files() <= shipped, f"missing from the wheel: {sorted(_product_files() - shipped)}"
    for pkg in PACKAGES:
        assert f"dbrev/{pkg}/__init__.py" in shipped, f"dbrev.{pkg} is not in the wheel"
    assert "dbrev/controller/health.lua" in shipped


def test_the_wheel_carries_no_development_tooling_and_no_test(wheel):
    shipped = _shipped(wheel)
    assert {n.split("/")[0] for n in shipped} == {"dbrev"}, sorted(shipped)
    assert shipped == _product_files(), f"not product files: {sorted(shipped - _product_files())}"
    dev = _dev_modules()
    assert {"envtest", "demo", "docs", "assets", "controlplane", "node", "images"} <= dev  # the check sees them
    stems = {Path(n).stem for n in shipped} | {d for n in shipped for d in Path(n).parts[:-1]}
    assert stems & dev == set(), f"development tooling in the wheel: {sorted(stems & dev)}"
    tests = [n for n in shipped if Path(n).name.startswith("test_") or Path(n).name == "conftest.py"
             or "tests" in Path(n).parts]
    assert tests == []
    top = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/top_level.txt"))).decode().split()
    assert top == ["dbrev"]


def test_the_console_script_is_the_cli(wheel):
    eps = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "dbrev = dbrev.cli:main" in eps.splitlines()


def test_the_development_tooling_imports_in_the_checkout_without_pythonpath(tmp_path):
    """``make setup``'s editable install puts ``operator/`` on sys.path: ``python -m dbrev_dev.…`` (Makefile,
    .ci/run) works from any folder, with no PYTHONPATH, and finds this checkout's copy."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", "import dbrev, dbrev_dev.envtest.assets, dbrev_dev.docs, dbrev_dev.demo;"
                          "print(dbrev.__file__); print(dbrev_dev.__file__)"],
                         cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert [Path(p).resolve() for p in out.stdout.split()] == [ROOT / "operator" / "dbrev" / "__init__.py",
                                                                DEV / "__init__.py"]
