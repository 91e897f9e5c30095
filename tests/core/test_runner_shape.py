"""The runner's state is declared: every attribute a Runner has is set in ``__init__``, and nothing
reads one back through ``getattr(self, name, default)`` (a default hides a phase that did not run)."""

from __future__ import annotations

import ast
from pathlib import Path

RUNNER = Path(__file__).resolve().parents[2] / "operator" / "dbrev" / "engine" / "runner.py"


def _runner_class() -> ast.ClassDef:
    tree = ast.parse(RUNNER.read_text())
    return next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Runner")


def _stored(fn) -> set[str]:
    return {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
            and isinstance(n.value, ast.Name) and n.value.id in ("self", "runner", "sub")}


def test_every_runner_attribute_is_declared_in_init():
    cls = _runner_class()
    methods = [f for f in cls.body if isinstance(f, ast.FunctionDef)]
    declared = _stored(next(f for f in methods if f.name == "__init__"))
    later = set().union(*(_stored(f) for f in methods if f.name != "__init__"))
    assert later - declared == set(), f"set outside __init__: {sorted(later - declared)}"


def test_no_getattr_with_a_default_on_the_runner():
    calls = [n for n in ast.walk(_runner_class()) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id == "getattr" and n.args and isinstance(n.args[0], ast.Name)
             and n.args[0].id in ("self", "sub")]
    assert not calls, [ast.unparse(c) for c in calls]
