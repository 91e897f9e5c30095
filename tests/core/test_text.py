"""One formatter each for revisions and plans (dbrev.core.text), and no module writing its own."""

from __future__ import annotations

import re
from pathlib import Path

import dbrev
from dbrev.core.text import parse_revisions, plan_dict_summary, plan_summary, revisions_shown, revisions_text

PACKAGE = Path(dbrev.__file__).parent


def test_revisions_as_a_key_and_as_shown():
    assert revisions_text(("b2", "a1")) == "a1,b2" and revisions_text([]) == "base"
    assert revisions_text(None) == "" and revisions_text("a1,b2") == "a1,b2"
    assert parse_revisions(revisions_text(("b2", "a1"))) == ["a1", "b2"]
    assert parse_revisions("base") == [] and parse_revisions(None) == [] and parse_revisions("") == []
    assert revisions_shown(["a1", "b2"]) == "a1, b2" and revisions_shown([]) == "base (empty)"
    assert revisions_shown(None) == "unknown"


def test_the_plan_line_is_the_one_the_events_show():
    assert plan_summary("upgrade", (), ("b7c8d9e0f1a2",), 2, "single") == \
        "upgrade base -> b7c8d9e0f1a2, 2 step(s), transaction single"
    plan = {"direction": "downgrade", "from_revisions": ["c3"], "to_revisions": ["b2"], "steps": [{}],
            "transaction": "single"}
    assert plan_dict_summary(plan) == "downgrade c3 -> b2, 1 step(s), transaction single"
    assert plan_dict_summary(plan, transaction=False, shown=revisions_shown) == "downgrade c3 -> b2, 1 step(s)"


def test_the_planned_and_applying_events_use_it():
    from dbrev.controller.decide import planned_event

    plan = {"hash": "sha256:" + "e" * 64, "direction": "upgrade", "from_revisions": [], "to_revisions": ["b7"],
            "steps": [{}, {}], "transaction": "single", "destructive": []}
    assert planned_event(plan, {})[2] == f"plan sha256:{'e' * 12}: upgrade base -> b7, 2 step(s), transaction single"


# a revisions formatter of its own: `", ".join(...) or "base..."`, `... if revs else "base"`, "base (empty)"
OWN_FORMATTER = re.compile(r"""join\([^()]*(\([^()]*\))?[^()]*\)\s*(or|if [^:]+ else)\s*["']base|["']base \(empty\)["']""")


def test_no_module_formats_revisions_itself():
    found = [f"{p.relative_to(PACKAGE)}:{i}" for p in PACKAGE.rglob("*.py") if p.name != "text.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if OWN_FORMATTER.search(line)]
    assert found == []


def test_the_formatter_search_finds_a_copy():
    assert OWN_FORMATTER.search('frm = ",".join(sorted(result.from_revisions or [])) or "base"')
    assert OWN_FORMATTER.search('return ", ".join(revs) if revs else "base (empty)"')
    assert OWN_FORMATTER.search("return ','.join(revs) if revs else 'base'")
