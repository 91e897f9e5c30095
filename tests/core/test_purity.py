"""The functional core imports no database driver, no SQLAlchemy, no Kopf and no Kubernetes client.

The core is every module under ``dbrev/core/`` (found by walking the folder, so that a module added
there is probed without editing this file) and the pure modules of the controller. Each module is
imported in a fresh interpreter (a module imported earlier in this process would hide a leak) and
``sys.modules`` is inspected after the import.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import dbrev

PACKAGE = Path(dbrev.__file__).parent
#: the controller's pure modules: what the operator decides, parses and writes, without the cluster
PURE_CONTROLLER = ("dbrev.controller.decide", "dbrev.controller.spec", "dbrev.controller.jobs",
                   "dbrev.controller.status", "dbrev.controller.crd")
FORBIDDEN = ("sqlalchemy", "psycopg", "psycopg2", "asyncpg", "kopf", "kubernetes", "prometheus_client")


def core_modules() -> list[str]:
    """``dbrev.core`` and every module below it, from the files on disk."""
    found = []
    for path in sorted((PACKAGE / "core").rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


CORE = tuple(core_modules()) + PURE_CONTROLLER

PROBE = """
import json, sys
import {module}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({forbidden!r}))))
"""


def test_the_walk_finds_the_core():
    """The walk sees the folder: the package, its graph and planning, and nothing outside dbrev.core."""
    found = core_modules()
    assert {"dbrev.core", "dbrev.core.graph", "dbrev.core.planning", "dbrev.core.policy"} <= set(found)
    assert all(m == "dbrev.core" or m.startswith("dbrev.core.") for m in found)


@pytest.mark.parametrize("module", CORE)
def test_a_core_module_imports_no_shell(module):
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module, forbidden=FORBIDDEN)],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [], f"{module} pulls in {out.stdout.strip()}"


def test_the_probe_sees_a_leak():
    """The probe itself can fail: a shell module is reported."""
    out = subprocess.run([sys.executable, "-c", PROBE.format(module="dbrev.pg.integrity", forbidden=FORBIDDEN)],
                         capture_output=True, text=True, check=True)
    assert "sqlalchemy" in json.loads(out.stdout)
