"""The one rule for the scripts the database keeps (dbrev.core.planning.sort_stored / check_conflicts), pure."""

from __future__ import annotations

import hashlib

import pytest

from dbrev.core.errors import ScriptConflict
from dbrev.core.graph import Node, graph_from_nodes
from dbrev.core.planning import build_plan, check_conflicts, sort_stored
from dbrev.engine.scripts import Rendered, ScriptInfo

NODES = [Node("a1", ()), Node("b2", ("a1",))]


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _row(rev: str, source: str, sha: str | None = None) -> dict:
    return {"revision": rev, "source": source, "sha256": sha or _sha(source), "name": f"{rev}.py"}


def _plan(current, target):
    infos = {n.id: ScriptInfo(n.id, n.parents, (), (), "", f"{n.id}.py", "0" * 64, "files") for n in NODES}
    return build_plan(graph_from_nodes(NODES), infos, {n.id: "" for n in NODES}, current, target,
                      lambda rev, up: Rendered("SELECT 1", True))


def test_stored_copies_are_usable_conflicting_or_corrupt():
    declared = {"a1": ScriptInfo("a1", (), (), (), "", "a1.py", _sha("same"), "files"),
                "b2": ScriptInfo("b2", ("a1",), (), (), "", "b2.py", _sha("edited"), "files")}
    rows = [_row("a1", "same"), _row("b2", "original"), _row("c3", "only stored"),
            _row("d4", "tampered", sha=_sha("before tampering"))]
    s = sort_stored(declared, rows)
    assert [r["revision"] for r in s.usable] == ["c3"]
    assert s.conflicts == ["b2"] and s.corrupt == ["d4"]
    assert s.warnings == ["the stored copy of d4 fails its sha256 check and is ignored"]
    # a verb that only reads the copies: every intact one is usable
    assert [r["revision"] for r in sort_stored({}, rows).usable] == ["a1", "b2", "c3"]


def test_a_conflict_warns_on_an_upgrade_and_refuses_a_downgrade_through_it():
    p = check_conflicts(_plan(("a1",), ("b2",)), ["a1"])
    assert p.warnings == ["scripts a1 differ from the copies stored when they were applied"]
    with pytest.raises(ScriptConflict, match="the downgrade would run b2"):
        check_conflicts(_plan(("b2",), ()), ["b2"])
    assert check_conflicts(_plan(("b2",), ()), []).warnings == []
