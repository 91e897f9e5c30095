"""Module boundaries hold: no module (nor test) uses another's private names, and the layers import downwards.

Read from the source (the AST of every module of ``dbrev`` and ``dbrev_dev``, imports inside
functions included), so a module added later is checked without editing this file.

* **Private names.** A name with one leading underscore is its module's own. Another module may not
  import it (``from dbrev.x import _name``) nor reach it through an imported dbrev module or name
  (``x._name``, ``Class._name``); ``__dunder__`` names are not private.
* **Layers.** ``core`` <- ``pg`` <- ``engine`` <- ``controller`` / ``cli``: a layer imports only
  the layers before it (and itself). ``cli`` may also import ``controller``, inside a function only
  (the cluster verbs: the CLI loads without the operator's extra); ``controller`` imports nothing of
  ``cli``. ``dbrev_dev`` is development tooling and may import anything of ``dbrev``; nothing in
  ``dbrev`` imports ``dbrev_dev``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dbrev
import dbrev_dev

ROOTS = {"dbrev": Path(dbrev.__file__).parent, "dbrev_dev": Path(dbrev_dev.__file__).parent}

#: what each layer of ``dbrev`` may import from ``dbrev`` (besides itself)
LAYERS = {
    "core": set(),
    "pg": {"core"},
    "engine": {"core", "pg"},
    "controller": {"core", "pg", "engine"},
    "cli": {"core", "pg", "engine", "controller"},
}
#: what a layer may import only inside a function
LAZY = {"cli": {"controller"}}
#: ``dbrev/__init__.py`` and ``dbrev/__main__.py`` are the package's entry: they may start the CLI
TOP = {"": {"core", "pg", "engine", "controller", "cli"}}


def modules() -> dict[str, Path]:
    """Every module of both packages: dotted name -> file."""
    found = {}
    for pkg, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            parts = (pkg,) + path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against ``module``)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, source: str, is_package: bool = False) -> list[tuple[str, str | None, str, int]]:
    """``(imported module, imported name or None, bound local name, line)`` for every import."""
    return [i[:4] for i in _imports(module, source, is_package)]


def _imports(module: str, source: str, is_package: bool) -> list[tuple[str, str | None, str, int, bool]]:
    """As :func:`imports`, each with whether it is inside a function."""
    tree = ast.parse(source)
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    out = []
    for node in ast.walk(tree):
        lazy = id(node) in in_function
        if isinstance(node, ast.Import):
            for a in node.names:
                out.append((a.name, None, a.asname or a.name.split(".")[0], node.lineno, lazy))
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(module, is_package, node)
            for a in node.names:
                out.append((target, a.name, a.asname or a.name, node.lineno, lazy))
    return out


def _ours(name: str) -> bool:
    return name.split(".")[0] in ROOTS


def private_uses(module: str, source: str, is_package: bool = False) -> list[str]:
    """Where ``module`` uses a private name of another dbrev module."""
    found = []
    bound = set()  # local names bound to a dbrev module or to a name imported from one
    for target, name, local, line in imports(module, source, is_package):
        if not _ours(target):
            continue
        if name is not None and is_private(name) and target != module:
            found.append(f"{module}:{line} imports {target}.{name}")
        if name is None and local != target.split(".")[0]:
            bound.add(local)  # import dbrev.x as y
        elif name is not None and name != "*":
            bound.add(local)
    dotted = {t for t, n, _, _ in imports(module, source, is_package) if n is None and _ours(t)}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            owner = node.value  # x._y where x is a dbrev module or name; import dbrev.a.b: dbrev.a.b._y
            if (isinstance(owner, ast.Name) and owner.id in bound) or ast.unparse(owner) in dotted:
                found.append(f"{module}:{node.lineno} uses {ast.unparse(node)}")
    return found


def layer_of(module: str) -> str | None:
    """``dbrev.engine.runner`` -> ``engine``; ``dbrev`` / ``dbrev.__main__`` -> ``''``; dbrev_dev -> None."""
    parts = module.split(".")
    if parts[0] != "dbrev":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else ""


def layer_breaks(module: str, source: str, is_package: bool = False) -> list[str]:
    """Where a dbrev module imports a layer it may not (or dbrev_dev)."""
    mine = layer_of(module)
    if mine is None:
        return []
    allowed = {**LAYERS, **TOP}[mine] | {mine}
    found = []
    for target, name, _, line, lazy in _imports(module, source, is_package):
        parts = target.split(".")
        if parts[0] == "dbrev_dev":
            found.append(f"{module}:{line} imports {target} (development tooling)")
        elif parts[0] == "dbrev":
            theirs = parts[1] if len(parts) > 1 else (name if name in LAYERS else "")
            if theirs in LAYERS and theirs not in allowed:
                found.append(f"{module}:{line} ({mine}) imports {target}" + (f".{name}" if name else ""))
            elif theirs in LAZY.get(mine, ()) and not lazy:
                found.append(f"{module}:{line} ({mine}) imports {target} outside a function")
    return found


def _scan(check) -> list[str]:
    found = []
    for module, path in modules().items():
        found += check(module, path.read_text(), path.name == "__init__.py")
    return found


def test_the_walk_finds_both_packages():
    found = modules()
    assert {"dbrev.core.planning", "dbrev.pg.db", "dbrev.engine.runner", "dbrev.controller.jobrun",
            "dbrev.cli", "dbrev_dev.envtest.node"} <= set(found)


def test_no_module_uses_another_modules_private_names():
    assert _scan(private_uses) == []


def test_no_test_uses_a_private_name_of_dbrev():
    """The tests use what the modules offer: a function worth testing on its own is public."""
    tests = Path(__file__).resolve().parents[1]
    found = []
    for path in sorted(tests.rglob("*.py")):
        module = ".".join(("tests",) + path.relative_to(tests).with_suffix("").parts)
        found += private_uses(module, path.read_text())
    assert found == []


def test_the_layers_import_downwards():
    assert _scan(layer_breaks) == []


def test_the_scan_sees_a_private_import_and_attribute():
    """Each kind of violation, planted in a source string, is reported; a module's own names and dunders are not."""
    source = ("from ..pg.integrity import _quote_ident, quote_ok\n"
              "from . import log as L\n"
              "from .worker import Worker\n"
              "import dbrev.core.text\n"
              "import os\n"
              "def f():\n"
              "    from dbrev.engine.runner import _inner\n"
              "    return L._rev(1), Worker._ORDER, dbrev.core.text._x, L.__name__, os._exit, self._own\n")
    found = private_uses("dbrev.engine.example", source)
    assert {f.split(" ", 1)[1] for f in found} == {
        "imports dbrev.pg.integrity._quote_ident", "imports dbrev.engine.runner._inner",
        "uses L._rev", "uses Worker._ORDER", "uses dbrev.core.text._x"}
    assert private_uses("dbrev.engine.log", "from .log import _rev\n") == []  # its own name


def test_the_scan_sees_an_upward_import():
    """core importing engine (at the top or inside a function), pg importing engine, anything importing
    dbrev_dev: each is reported; importing downwards is not."""
    assert layer_breaks("dbrev.core.planning", "from ..engine.scripts import Rendered\n")
    assert layer_breaks("dbrev.pg.db", "def f():\n    from dbrev.engine import log\n")
    assert layer_breaks("dbrev.pg.seed", "from dbrev import engine\n")
    assert layer_breaks("dbrev.controller.jobs", "from ..cli import main\n")
    assert layer_breaks("dbrev.engine.runner", "import dbrev_dev.envtest\n")
    assert layer_breaks("dbrev.cli", "from ..controller import kube\n", is_package=True)  # at the top
    assert layer_breaks("dbrev.cli", "def f():\n    from ..controller import kube\nfrom ..engine import verbs\n",
                        is_package=True) == []
    assert layer_breaks("dbrev.engine.runner", "from ..pg import db\nfrom ..core import text\n") == []
