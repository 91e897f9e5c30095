"""What dbrev knows of a version script, as plain data: its source, its header, its rendered SQL (pure).

:class:`ScriptSource` is a script's text and where it came from (a folder, a ConfigMap, the copy
kept in the database); :class:`ScriptInfo` what its header declares; :class:`Rendered` the SQL
one step would run. :mod:`dbrev.engine.scripts` makes them from files and Alembic;
:mod:`dbrev.core.planning` plans with them and :mod:`dbrev.pg.state` stores them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .graph import Node

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
class Rendered:
    sql: str
    ok: bool
    error: str | None = None
    irreversible: bool = False
