"""Reasons come from dbrev.core.conditions only: no module outside it writes a reason as a literal."""

from __future__ import annotations

import ast
from pathlib import Path

import dbrev
from dbrev.core import conditions as C

PACKAGE = Path(dbrev.__file__).parent
# reasons Kubernetes writes (a container's last state, a Deployment's Progressing condition), read by the gate
KUBERNETES_REASONS = {"OOMKilled", "ProgressDeadlineExceeded", "DeadlineExceeded", "Evicted"}  # the kubelet's and the controllers' own


def _is_reason(node: ast.AST) -> bool:
    """``x["reason"]`` or ``x.get("reason")``."""
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "reason"
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            and bool(node.args) and isinstance(node.args[0], ast.Constant) and node.args[0].value == "reason")


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    return []


def literal_reasons(source: str) -> list[tuple[int, str]]:
    """Literal strings used as a reason: ``{"reason": "X"}``, ``reason="X"``, ``d.get("reason") == "X"``,
    ``d["reason"] in ("X", "Y")``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "reason":
                    found += [(node.lineno, s) for s in _strings(v)]
        elif isinstance(node, ast.keyword) and node.arg == "reason":
            found += [(node.value.lineno, s) for s in _strings(node.value)]
        elif isinstance(node, ast.Compare) and any(_is_reason(x) for x in (node.left, *node.comparators)):
            found += [(node.lineno, s) for x in (node.left, *node.comparators) for s in _strings(x)]
    return sorted(found)


def test_no_module_spells_a_reason_itself():
    found = [f"{p.relative_to(PACKAGE)}:{line}: {s!r}" for p in sorted(PACKAGE.rglob("*.py"))
             if p.name != "conditions.py" for line, s in literal_reasons(p.read_text()) if s not in KUBERNETES_REASONS]
    assert found == [], "use the constants of dbrev.core.conditions"


def test_the_search_sees_each_form():
    src = ('a = {"reason": "ManagedByGitOps"}\nb = E(reason="LockBusy")\nc = d.get("reason") == "AwaitingApproval"\n'
           'e = d["reason"] in ("DowngradeDenied", "DataLossDenied")\nf = {"reason": C.LOCK_BUSY}\n')
    assert literal_reasons(src) == [(1, "ManagedByGitOps"), (2, "LockBusy"), (3, "AwaitingApproval"),
                                    (4, "DataLossDenied"), (4, "DowngradeDenied")]


def test_the_cli_reasons_are_reasons_of_no_condition():
    assert C.MANAGED_BY_GITOPS in C.CLI_REASONS
    assert not set(C.CLI_REASONS) & set(C.CONDITION_TYPES)
