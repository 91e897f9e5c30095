"""``pip install dbrev`` is the engine and the CLI only; the operator's dependencies are an extra.

A fresh virtual environment gets this checkout installed the way an application image adds it
(``pip install dbrev``, no extra): none of kopf, kubernetes, prometheus-client arrives, ``dbrev plan``
and ``dbrev apply`` run against a real PostgreSQL, and every verb that needs the extra says how to
get it instead of failing on a bare import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dbhelp import heads

ROOT = Path(__file__).resolve().parents[2]
EXTRA = ("kopf", "kubernetes", "prometheus_client")
INSTALL_LINE = "pip install 'dbrev[operator]'"

pytestmark = pytest.mark.slow


def _run(cmd, timeout=600, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def lean(tmp_path_factory) -> Path:
    """The ``bin`` folder of a new venv holding ``pip install dbrev`` (this checkout, as a wheel)."""
    work = tmp_path_factory.mktemp("lean")
    wheels = work / "wheels"
    p = _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheels), str(ROOT)])
    assert p.returncode == 0, p.stderr
    (wheel,) = wheels.glob("dbrev-*.whl")
    venv = work / "venv"
    p = _run([sys.executable, "-m", "venv", str(venv)])
    assert p.returncode == 0, p.stderr
    p = _run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)])
    assert p.returncode == 0, f"pip install dbrev failed: {p.stderr}"
    return venv / "bin"


def _dbrev(bin_dir: Path, *args, url: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBREV_", "PYTHON", "KUBE"))}
    if url:
        env["DBREV_DATABASE_URL"] = url
    return _run([str(bin_dir / "dbrev"), *args], env=env, cwd="/", timeout=300)


def test_the_lean_install_has_none_of_the_operator_dependencies(lean):
    probe = "import importlib.util, json; print(json.dumps({m: importlib.util.find_spec(m) is not None for m in %r}))"
    p = _run([str(lean / "python"), "-c", probe % (EXTRA,)], cwd="/")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {m: False for m in EXTRA}
    listed = _run([str(lean / "pip"), "list", "--format", "json", "--disable-pip-version-check"])
    names = {d["name"].lower().replace("_", "-") for d in json.loads(listed.stdout)}
    assert {"dbrev", "alembic", "sqlalchemy", "pglast", "psycopg", "pyyaml"} <= names
    assert not names & {"kopf", "kubernetes", "prometheus-client"}


def test_plan_and_apply_run_on_the_lean_install(lean, database_url, examples_dir):
    plan = _dbrev(lean, "plan", "--migrations", str(examples_dir), "-r", "head", "--json", url=database_url)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    doc = json.loads(plan.stdout)
    assert doc["direction"] == "upgrade" and doc["steps"]
    applied = _dbrev(lean, "apply", "--migrations", str(examples_dir), "-r", "head", "--plan-hash", doc["hash"],
                     "--json", url=database_url)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert json.loads(applied.stdout)["result"] == "applied"
    assert heads(database_url) == sorted(doc["to_revisions"])
    current = _dbrev(lean, "current", "--migrations", str(examples_dir), "--json", url=database_url)
    assert current.returncode == 0 and json.loads(current.stdout)["at_head"] is True


@pytest.mark.parametrize("argv", [["operator", "-A"], ["approve", "orders", "-n", "shop"],
                                  ["rollback", "orders", "-n", "shop"]])
def test_operator_verbs_name_the_extra(lean, argv):
    p = _dbrev(lean, *argv)
    assert p.returncode == 2, p.stdout + p.stderr
    assert INSTALL_LINE in p.stderr
    assert "Traceback" not in p.stderr and "No module named" not in p.stderr
    j = _dbrev(lean, *argv, "--json")
    assert j.returncode == 2
    err = json.loads(j.stdout)["error"]
    assert err["error_type"] == "MissingExtra" and INSTALL_LINE in err["hint"]


@pytest.mark.parametrize("module", ["dbrev.controller.metrics", "dbrev.controller.main", "dbrev.controller.kube",
                                    "dbrev.controller.handlers", "dbrev.controller.inputs"])
def test_importing_an_operator_module_names_the_extra(lean, module):
    code = (f"try:\n    import {module}\nexcept ImportError as e:\n    print(type(e).__name__, str(e))\n"
            "else:\n    print('imported')")
    p = _run([str(lean / "python"), "-c", code], cwd="/")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("MissingExtra ") and INSTALL_LINE in p.stdout


def test_the_pure_modules_import_on_the_lean_install(lean):
    """What the CLI, the engine and a migration pod load must not need the extra."""
    mods = ["dbrev.cli", "dbrev.engine.verbs", "dbrev.engine.runner", "dbrev.engine.worker", "dbrev.engine.rollback",
            "dbrev.engine.check", "dbrev.cli.ext", "dbrev.cli.rollback", "dbrev.cli.check", "dbrev.controller.crd",
            "dbrev.controller.status", "dbrev.controller.spec", "dbrev.controller.healthgate",
            # the pure core deciding the operator's outcomes (its metric labels are dbrev.core.metric_labels)
            "dbrev.controller.decide", "dbrev.controller.jobs", "dbrev.core.results", "dbrev.core.metric_labels"]
    p = _run([str(lean / "python"), "-c", "; ".join(f"import {m}" for m in mods)], cwd="/")
    assert p.returncode == 0, p.stderr
