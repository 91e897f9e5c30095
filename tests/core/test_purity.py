"""The functional core imports no database driver, no SQLAlchemy, no Kopf and no Kubernetes client.

Each module is imported in a fresh interpreter (a module imported earlier in this process would hide a
leak) and ``sys.modules`` is inspected after the import.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

CORE = ("dbrev.core.graph", "dbrev.core.planning", "dbrev.core.text", "dbrev.core.policy", "dbrev.core.classify",
        "dbrev.core.conditions", "dbrev.core.results", "dbrev.core.metric_labels", "dbrev.controller.status",
        "dbrev.core.errors", "dbrev.core.options", "dbrev.core.redact",
        "dbrev.controller.decide", "dbrev.controller.spec", "dbrev.controller.jobs", "dbrev.controller.crd")
FORBIDDEN = ("sqlalchemy", "psycopg", "psycopg2", "asyncpg", "kopf", "kubernetes", "prometheus_client")

PROBE = """
import json, sys
import {module}
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({forbidden!r}))))
"""


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
