"""Load Alembic version scripts into plain data and Alembic objects.

Scripts come from a folder (``--migrations DIR``: either the version scripts
themselves or an Alembic ``script_location`` holding ``env.py`` and
``versions/``), from ConfigMaps (materialized into a folder), or from the
copies dbrev keeps in the database.  Every one becomes a
:class:`ScriptSource` (name, text, origin); loading never needs
``alembic.ini`` or ``env.py``.

Errors name the file and line: a syntax error, an import error, a missing
``revision``, a duplicate id, a ``down_revision`` that no script defines.
"""

from __future__ import annotations

import ast
import hashlib
import io
import linecache
import os
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from .errors import ScriptError
from .graph import Graph, Node, graph_from_nodes

ORIGIN_FILES = "files"
ORIGIN_DATABASE = "database"


@dataclass(frozen=True)
class ScriptSource:
    name: str  # path relative to the versions folder (or a ConfigMap key)
    source: str
    filename: str  # what tracebacks show: an absolute path, or dbrev-db://<rev>/<name>
    origin: str = ORIGIN_FILES

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ScriptInfo:
    revision: str
    down_revisions: tuple[str, ...]
    dependencies: tuple[str, ...]
    branch_labels: tuple[str, ...]
    doc: str
    name: str
    sha256: str
    origin: str

    def node(self) -> Node:
        return Node(self.revision, self.down_revisions, self.dependencies, self.branch_labels, self.doc)


@dataclass
class ScriptSet:
    """A loaded history: plain :class:`ScriptInfo` records plus the Alembic objects."""

    location: Path | None  # folder on disk (None when every script came from elsewhere)
    infos: dict[str, ScriptInfo]
    sources: dict[str, ScriptSource]  # by revision
    modules: dict[str, types.ModuleType] = field(repr=False, default_factory=dict)
    env_py: Path | None = None
    _graph: Graph | None = field(default=None, repr=False)
    _script_directory: object | None = field(default=None, repr=False)

    @property
    def is_script_location(self) -> bool:
        """An Alembic script_location (env.py beside versions/): Alembic would run it through env.py."""
        return self.env_py is not None and self.location is not None \
            and self.location.parent == self.env_py.parent and self.location != self.env_py.parent

    @property
    def graph(self) -> Graph:
        if self._graph is None:
            self._graph = graph_from_nodes(i.node() for i in self.infos.values())
        return self._graph

    def script_directory(self):
        """An Alembic ScriptDirectory over exactly these scripts."""
        if self._script_directory is None:
            from alembic.script import Script, ScriptDirectory

            scripts = [Script(self.modules[r], r, self.sources[r].filename) for r in self.infos]

            class _Loaded(ScriptDirectory):
                def _load_revisions(self_inner):  # noqa: N805
                    yield from scripts

            versions = str(self.location or Path.cwd())
            base = str(self.env_py.parent) if self.env_py else versions
            self._script_directory = _Loaded(base, version_locations=[versions])
        return self._script_directory

    def with_extra(self, extra: Iterable[ScriptSource]) -> "ScriptSet":
        """A new set adding scripts (e.g. from the database) for revisions not declared here."""
        extra = [s for s in extra]
        if not extra:
            return self
        merged = list(self.sources.values()) + extra
        return _build(merged, self.location, self.env_py, existing=self.modules)


# ---------------------------------------------------------------------------


def versions_folder(directory: Path) -> tuple[Path, Path | None]:
    """(folder holding the version scripts, env.py if this is a script_location)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ScriptError(f"migrations folder {directory} does not exist or is not a folder")
    env = directory / "env.py"
    if env.is_file() and (directory / "versions").is_dir():
        return directory / "versions", env
    return directory, (env if env.is_file() else None)


def read_folder(directory: Path) -> tuple[list[ScriptSource], Path, Path | None]:
    versions, env = versions_folder(directory)
    out = []
    for path in sorted(versions.rglob("*.py")):
        rel = path.relative_to(versions)
        if any(part.startswith((".", "__")) for part in rel.parts) or path == env:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ScriptError(f"not UTF-8 text ({e})", path=str(rel)) from None
        out.append(ScriptSource(str(rel), text, str(path.resolve()), ORIGIN_FILES))
    return out, versions, env


def load_folder(directory: Path | str, extra: Iterable[ScriptSource] = (),
                pythonpath: Iterable[str] = ()) -> ScriptSet:
    """Load every version script under ``directory`` (plus ``extra`` ones)."""
    for p in pythonpath:
        if p and p not in sys.path:
            sys.path.insert(0, p)
    sources, versions, env = read_folder(Path(directory))
    declared = {s.name for s in sources}
    extra = [s for s in extra if s.name not in declared]
    return _build(sources + list(extra), versions, env)


def _build(sources: list[ScriptSource], location: Path | None, env: Path | None,
           existing: dict[str, types.ModuleType] | None = None) -> ScriptSet:
    statics: list[tuple[ScriptSource, dict]] = []
    infos: dict[str, ScriptInfo] = {}
    by_rev: dict[str, ScriptSource] = {}
    modules: dict[str, types.ModuleType] = {}
    file_rev_conflicts: dict[str, list[ScriptSource]] = {}
    for src in sources:
        statics.append((src, _static_parse(src)))
    static_of = {id(src): static for src, static in statics}
    # Files first, then stored copies for revisions no file declares.
    for src, static in sorted(statics, key=lambda t: (t[0].origin != ORIGIN_FILES, t[0].name)):
        rev_static = static.get("revision")
        if src.origin != ORIGIN_FILES and rev_static in by_rev:
            continue
        module = (existing or {}).get(rev_static) if rev_static else None
        if module is None or getattr(module, "__dbrev_sha256__", None) != src.sha256:
            module = _exec_module(src)
        rev = getattr(module, "revision", None)
        if not isinstance(rev, str) or not rev:
            raise ScriptError("no `revision = \"...\"` string at module level; every version script "
                              "must declare its revision id", path=src.name, line=1)
        if rev in by_rev:
            if src.origin != ORIGIN_FILES:
                continue
            file_rev_conflicts.setdefault(rev, [by_rev[rev]]).append(src)
            continue
        down = _tuple(getattr(module, "down_revision", None))
        deps = _tuple(getattr(module, "depends_on", None))
        labels = _tuple(getattr(module, "branch_labels", None))
        doc = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else ""
        infos[rev] = ScriptInfo(rev, down, deps, labels, doc, src.name, src.sha256, src.origin)
        by_rev[rev] = src
        modules[rev] = module
    if file_rev_conflicts:
        rev, srcs = next(iter(file_rev_conflicts.items()))
        line = static_of[id(srcs[1])].get("revision_line")
        raise ScriptError(f"revision id {rev} is defined more than once: "
                          f"{', '.join(s.name for s in srcs)}", path=srcs[1].name, line=line,
                          details={"revision": rev, "files": [s.name for s in srcs]})
    for rev, info in infos.items():
        for ref in info.down_revisions:
            if ref not in infos:
                line = static_of[id(by_rev[rev])].get("down_revision_line")
                raise ScriptError(
                    f"down_revision {ref!r} of revision {rev} is not defined by any script",
                    path=info.name, line=line,
                    hint="add the missing script, or correct down_revision",
                    details={"revision": rev, "missing": ref})
    ss = ScriptSet(location, infos, by_rev, modules, env)
    _ = ss.graph  # validates cycles, labels, dependencies
    return ss


def _tuple(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _static_parse(src: ScriptSource) -> dict:
    try:
        tree = ast.parse(src.source, filename=src.filename)
    except SyntaxError as e:
        raise ScriptError(f"syntax error: {e.msg}", path=src.name, line=e.lineno,
                          details={"text": (e.text or "").strip()}) from None
    out: dict = {}
    for node in tree.body:
        targets = []
        if isinstance(node, ast.Assign):
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)]
            value = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            targets = [node.target.id]
            value = node.value
        for t in targets:
            if t in ("revision", "down_revision"):
                out[f"{t}_line"] = node.lineno
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    out[t] = value.value
    return out


def module_id_for(filename: str) -> str:
    """The module name Alembic gives a script (``alembic.util.pyfiles.load_python_file``)."""
    import re

    return re.sub(r"\W", "_", Path(filename.replace("dbrev-db://", "", 1)).name)


def _new_module(src: ScriptSource) -> types.ModuleType:
    """A module object as ``alembic.util.pyfiles.load_module_py`` makes it (not put in sys.modules)."""
    import importlib.util

    module_id = module_id_for(src.filename)
    if src.origin == ORIGIN_FILES and os.path.isabs(src.filename):
        spec = importlib.util.spec_from_file_location(module_id, src.filename)
        if spec is not None:
            return importlib.util.module_from_spec(spec)
    module = types.ModuleType(module_id)
    module.__file__ = src.filename
    return module


def compile_script(source: str, filename: str):
    """Compile like importlib's source loader does: none of dbrev's own ``__future__`` flags leak in."""
    return compile(source, filename, "exec", dont_inherit=True)


def _exec_module(src: ScriptSource) -> types.ModuleType:
    module = _new_module(src)
    module.__dbrev_sha256__ = src.sha256  # type: ignore[attr-defined]
    lines = src.source.splitlines(keepends=True)
    linecache.cache[src.filename] = (len(src.source), None, lines, src.filename)
    try:
        code = compile_script(src.source, src.filename)
        exec(code, module.__dict__)  # noqa: S102 - running migration scripts is the job
    except SyntaxError as e:
        raise ScriptError(f"syntax error: {e.msg}", path=src.name, line=e.lineno) from None
    except BaseException as e:  # noqa: BLE001 - any failure while importing is the script's
        line = _line_in(e, src.filename)
        hint = None
        if isinstance(e, ImportError):
            hint = ("the script imports a module that is not installed where dbrev runs: install the "
                    "application package, or add its folder with --pythonpath")
        raise ScriptError(f"cannot import: {type(e).__name__}: {e}", path=src.name, line=line,
                          hint=hint) from None
    return module


def raised_in(exc: BaseException, filename: str) -> bool:
    """Whether ``exc`` was raised by the code of ``filename`` itself (its innermost frame)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and frames[-1].filename == filename


def _line_in(exc: BaseException, filename: str) -> int | None:
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return line


class ScriptAborted(Exception):
    """A script stopped the run itself (sys.exit, KeyboardInterrupt) or lacks upgrade()/downgrade().

    An ordinary exception, so the run treats it as the step's failure (rolled back, file and line named)
    instead of letting it end the worker with an exit code for a message.
    """


class EnvPyFailed(Exception):
    """The project's env.py failed before it configured Alembic (no step ran)."""


def env_py_failure(exc: BaseException, env_py: str) -> str:
    line = _line_in(exc, env_py)
    hint = ("install the application package or add its folder with --pythonpath"
            if isinstance(exc, ImportError) else "fix env.py")
    return (f"env.py failed before configuring Alembic (env.py:{line}): {type(exc).__name__}: {exc}; {hint}, "
            f"or run through dbrev's built-in environment with --builtin-env")


def revision_step(revision_map, script, is_upgrade: bool, src: ScriptSource):
    """An Alembic ``RevisionStep`` whose ``migration_fn`` is :func:`guarded_migration_fn`.

    Built without ``RevisionStep.__init__``, which fails at once (naming an internal module) when the
    script lacks the function; the step then fails when it runs, naming the file.
    """
    from alembic.runtime.migration import RevisionStep

    step = RevisionStep.__new__(RevisionStep)
    step.revision_map = revision_map
    step.revision = script
    step.is_upgrade = is_upgrade
    step.migration_fn = guarded_migration_fn(step, src)
    return step


def guarded_migration_fn(step, src: ScriptSource):
    """The function an Alembic RevisionStep runs, failing as the script's own error.

    A missing ``upgrade()``/``downgrade()`` names the script file (Alembic's AttributeError names an
    internal module); ``sys.exit(n)`` and a KeyboardInterrupt the script raised become a
    :class:`ScriptAborted` with the script's traceback, so the failure's file and line are found.
    """
    kind = "upgrade" if step.is_upgrade else "downgrade"
    fn = getattr(step.revision.module, kind, None)

    def run(**kw):
        if not callable(fn):
            raise ScriptAborted(f"{src.name} has no {kind}() function")
        try:
            return fn(**kw)
        except SystemExit as e:
            raise ScriptAborted(f"{kind}() {describe_exit(e)}").with_traceback(e.__traceback__) from None
        except KeyboardInterrupt as e:
            if not raised_in(e, src.filename):
                raise
            raise ScriptAborted(f"{kind}() {describe_exit(e)}").with_traceback(e.__traceback__) from None

    run.__name__ = kind
    return run


# ---------------------------------------------------------------------------
# Offline rendering


@dataclass
class Rendered:
    sql: str
    ok: bool
    error: str | None = None
    irreversible: bool = False


def render(scripts: ScriptSet, revision: str, upgrade: bool, version_table: str = "alembic_version",
           version_table_schema: str | None = None) -> Rendered:
    """The SQL one step would run, from Alembic's offline mode (no database).

    The step runs inside an offline ``EnvironmentContext`` (``with env:``, as ``alembic upgrade --sql``
    does), so ``alembic.context`` works: ``is_offline_mode()`` is true, ``get_bind()`` is Alembic's
    mock connection that only writes SQL.  No URL and no connection are reachable from it: a script
    that needs a result from the database cannot render, and nothing it does reaches the server.
    Its Python side effects (files written, prints) do happen.
    """
    from alembic.config import Config
    from alembic.operations import Operations
    from alembic.runtime.environment import EnvironmentContext

    kind = "upgrade" if upgrade else "downgrade"
    module = scripts.modules[revision]
    fn = getattr(module, kind, None)
    src = scripts.sources[revision]
    if not callable(fn):
        return Rendered("", False, f"{src.name} has no {kind}() function", irreversible=not upgrade)
    buf = io.StringIO()
    sd = scripts.script_directory()
    cfg = Config()  # no sqlalchemy.url: offline rendering must not be able to find the database
    cfg.set_main_option("script_location", sd.dir)
    env = EnvironmentContext(cfg, sd, as_sql=True, fn=lambda heads, ctx: [])
    try:
        with env:
            env.configure(dialect_name="postgresql", output_buffer=buf, literal_binds=True,
                          version_table=version_table, version_table_schema=version_table_schema)
            with Operations.context(env.get_context()):
                fn()
    except NotImplementedError as e:
        return Rendered(buf.getvalue(), False, f"{kind}() raises "
                        f"NotImplementedError{': ' + str(e) if str(e) else ''} ({src.name}:"
                        f"{_line_in(e, src.filename)})", irreversible=True)
    except ImportError as e:
        raise ScriptError(f"cannot import: {type(e).__name__}: {e}", path=src.name, line=_line_in(e, src.filename),
                          hint="the script imports a module that is not installed where dbrev runs: install the "
                               "application package, or add its folder with --pythonpath") from None
    except (SystemExit, KeyboardInterrupt) as e:
        line = _line_in(e, src.filename)
        if isinstance(e, KeyboardInterrupt) and not raised_in(e, src.filename):
            raise  # a Ctrl-C from the user, not one the script raised
        return Rendered(buf.getvalue(), False,
                        f"cannot render offline at {src.name}:{line}: {kind}() {describe_exit(e)}")
    except Exception as e:  # noqa: BLE001
        line = _line_in(e, src.filename)
        return Rendered(buf.getvalue(), False,
                        f"cannot render offline at {src.name}:{line}: {type(e).__name__}: {e}")
    return Rendered(buf.getvalue(), True)


def describe_exit(e: BaseException) -> str:
    """Words for a SystemExit / KeyboardInterrupt a script raised (their str() is "0", "3" or "")."""
    if isinstance(e, SystemExit):
        return f"called sys.exit({e.code!r})"
    if isinstance(e, KeyboardInterrupt):
        return "raised KeyboardInterrupt"
    return f"{type(e).__name__}: {e}"


def materialize(files: dict[str, str], root: Path) -> Path:
    """Write ConfigMap-style {file name: text} into a folder keyed by content hash.

    With an ``env.py`` key the folder is an Alembic script location (``env.py`` beside ``versions/``
    holding the other scripts), so the run goes through the project's env.py, as Alembic's would.
    """
    h = hashlib.sha256()
    script_location = "env.py" in files
    if script_location:
        h.update(b"script-location\0")
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    folder = root / h.hexdigest()[:24]
    if not folder.is_dir():
        tmp = root / f".tmp-{os.getpid()}-{h.hexdigest()[:8]}"
        tmp.mkdir(parents=True, exist_ok=True)
        versions = tmp / "versions" if script_location else tmp
        versions.mkdir(exist_ok=True)
        for name, text in files.items():
            if "/" in name or name.startswith("."):
                raise ScriptError(f"invalid script name {name!r}", path=name)
            (tmp if name == "env.py" else versions).joinpath(name).write_text(text, encoding="utf-8")
        try:
            tmp.rename(folder)
        except OSError:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return folder
