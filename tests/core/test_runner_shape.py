"""The run's state is declared, and it rolls back in one place.

* every attribute a Runner (and a StepExecution, an Undo) has is set in ``__init__``, and nothing reads
  one back through ``getattr(self, name, default)`` (a default hides a phase that did not run);
* steps run in a :class:`dbrev.engine.execution.StepExecution`: nothing builds a second Runner (a rollback's
  inverse, a rehearsal) and no module of the run sets or reads another object's private attributes;
* the run's rollbacks (ROLLBACK, inverse steps, after a dead or timed-out worker) are all in
  :mod:`dbrev.engine.undo`: it alone logs ``rollback_triggered`` / ``rollback_executed`` among the run's modules,
  and the worker is process transport only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "operator" / "dbrev"
RUN_MODULES = ("engine/runner.py", "engine/execution.py", "engine/undo.py", "engine/rehearse.py", "engine/worker.py",
               "controller/jobrun.py")
#: the modules that run steps or roll back (jobrun, the Job transport, reads a results constant of its own)
STEP_MODULES = ("engine/runner.py", "engine/execution.py", "engine/undo.py", "engine/rehearse.py", "engine/worker.py")


def _tree(name: str) -> ast.Module:
    return ast.parse((PKG / name).read_text())


def _class(module: str, name: str) -> ast.ClassDef:
    return next(n for n in _tree(module).body if isinstance(n, ast.ClassDef) and n.name == name)


def _stored(fn) -> set[str]:
    return {n.attr for n in ast.walk(fn) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
            and isinstance(n.value, ast.Name) and n.value.id == "self"}


def _calls(tree) -> list[str]:
    return [ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)]


@pytest.mark.parametrize("module,cls", [("engine/runner.py", "Runner"), ("engine/execution.py", "StepExecution"),
                                        ("engine/undo.py", "Undo"), ("engine/execution.py", "Checks")])
def test_every_attribute_is_declared_in_init(module, cls):
    methods = [f for f in _class(module, cls).body if isinstance(f, ast.FunctionDef)]
    declared = _stored(next(f for f in methods if f.name == "__init__"))
    later = set().union(*(_stored(f) for f in methods if f.name != "__init__"))
    assert later - declared == set(), f"{cls}: set outside __init__: {sorted(later - declared)}"


@pytest.mark.parametrize("module,cls", [("engine/runner.py", "Runner"), ("engine/execution.py", "StepExecution"),
                                        ("engine/undo.py", "Undo")])
def test_no_getattr_with_a_default_on_self(module, cls):
    calls = [n for n in ast.walk(_class(module, cls)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
             and n.func.id == "getattr" and n.args and isinstance(n.args[0], ast.Name) and n.args[0].id == "self"]
    assert not calls, [ast.unparse(c) for c in calls]


def test_only_the_run_entry_point_builds_a_runner():
    """A rollback's inverse steps and a rehearsal run in a StepExecution, not in a second Runner."""
    builders = []
    for f in sorted(PKG.rglob("*.py")):
        tree = ast.parse(f.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for call in _calls(fn):
                if call == "Runner" or call.endswith(".Runner") or call.startswith("type("):
                    builders.append(f"{f.relative_to(PKG)}:{fn.name}: {call}")
    assert builders == ["engine/runner.py:run: Runner"], builders


@pytest.mark.parametrize("module", STEP_MODULES)
def test_no_private_attribute_of_another_object_is_set_or_read(module):
    """``sub._snap = ...``, ``runner._plan(...)``: the run's modules touch only their own private state."""
    bad = []
    for n in ast.walk(_tree(module)):
        if not (isinstance(n, ast.Attribute) and n.attr.startswith("_") and not n.attr.startswith("__")):
            continue
        owner = n.value
        if isinstance(owner, ast.Name) and (owner.id in ("self", "cls") or owner.id.isupper() or owner.id == "L"):
            continue  # its own, or a module's helper (L.revs)
        if isinstance(owner, ast.Name) and owner.id in ("os", "sys", "signal"):
            continue
        bad.append(f"{n.lineno}: {ast.unparse(n)}")
    assert not bad, bad


def test_the_runs_rollbacks_are_logged_only_by_undo():
    logs = {"L.rollback_triggered", "L.rollback_executed"}
    where = {m: sorted(logs & set(_calls(_tree(m)))) for m in RUN_MODULES}
    assert where["engine/undo.py"] == sorted(logs)
    assert {m: v for m, v in where.items() if v and m != "engine/undo.py"} == {}


def test_runner_has_no_rollback_or_step_machinery_of_its_own():
    names = {f.name for f in _class("engine/runner.py", "Runner").body if isinstance(f, ast.FunctionDef)}
    gone = {"_steps_for", "_on_step_done", "_execute", "_undo_per_step", "_transaction_rollback",
            "_after_rollback", "_undo_policy", "_restorable", "_settle_archived", "_rollback_verdict"}
    assert names & gone == set()


def test_worker_is_transport_only():
    tree = _tree("engine/worker.py")
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert {"recover_after_death", "_after_death", "_after_timeout", "_interrupted_builds"} & defined == set()
    assert {"run_in_worker", "oom_kills", "death_cause"} <= defined
    from dbrev.engine import undo, worker

    assert not hasattr(worker, "recover_after_death")
    assert callable(undo.recover_after_death) and callable(undo.after_timeout)


def test_the_run_is_its_phases_in_order():
    """Runner.run reads as the run: load, lock, observe, plan, decide, then refuse, do nothing or run the plan; each
    phase a method of its own (its inputs and outputs visible), not inline code."""
    run = next(f for f in _class("engine/runner.py", "Runner").body if isinstance(f, ast.FunctionDef) and f.name == "run")
    phases = ["self._load", "self._lock", "self._observe", "self._plan", "self._decide", "self._run_plan"]
    calls = [c for c in _calls(run) if c in phases + ["self._refused", "self._noop"]]
    assert [c for c in calls if c in phases] == phases
    assert len(run.body) < 15 and sum(isinstance(n, ast.stmt) for n in ast.walk(run)) < 45
