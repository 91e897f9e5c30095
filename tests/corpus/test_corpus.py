"""dbrev equals plain Alembic on histories that do what real projects do, and no rollback loses a row.

The rule of issue 9: for any history that ``alembic upgrade`` / ``downgrade`` runs on PostgreSQL
with the project's own env.py, ``dbrev apply`` on the same scripts ends at the same revision with
the same schema (``pg_dump --schema-only`` identical, dbrev's own schemas aside) — up to head,
down to base and back up — and a run that fails and rolls back leaves every row that existed
before it.  Failures are forced through the scripts' ``CORPUS_FAIL`` hook, after a step's work.
"""

from __future__ import annotations

import json

import pytest

import gen
from dbhelp import heads
from harness import (add_user_rows, alembic_ok, dbrev_apply, document, explain, missing_rows, row_counts, schema,
                     schema_diff)

NAMES = [s.name for s in gen.SPECS]
UP = ("--allow-data-loss",)
DOWN = ("--allow-downgrade", "--allow-data-loss")

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", NAMES)
def test_up_down_up_ends_where_alembic_ends_with_the_same_schema(name, corpus, database_url,
                                                                 second_database_url):
    h = corpus[name]
    ours, theirs = database_url, second_database_url
    for phase, target, flags in (("up to head", "heads", UP), ("down to base", "base", DOWN),
                                 ("up again", "heads", UP)):
        alembic_ok(h.location, theirs, "upgrade" if target == "heads" else "downgrade", target)
        r = dbrev_apply(h.location, ours, target, *flags)
        assert r.code == 0 and document(r).get("result") == "applied", f"{name}, {phase}: {explain(r)}"
        assert heads(ours) == heads(theirs), f"{name}, {phase}: dbrev at {heads(ours)}, Alembic at {heads(theirs)}"
        expected, actual = schema(theirs), schema(ours)
        assert actual == expected, f"{name}, {phase}: pg_dump differs\n{schema_diff(expected, actual)}"
    assert heads(ours) == sorted(h.heads)


@pytest.mark.parametrize("name", NAMES)
def test_a_fresh_install_runs_under_the_default_policy_and_stdout_is_the_document(name, corpus, database_url):
    h = corpus[name]
    r = dbrev_apply(h.location, database_url, "heads")
    assert r.code == 0, f"{name}: {explain(r)}"
    doc = json.loads(r.stdout)  # nothing but dbrev's document on stdout, though the scripts print
    assert doc["result"] == "applied" and sorted(doc["current_revisions"]) == sorted(h.heads)
    assert "backfilled" not in r.stdout
    assert heads(database_url) == sorted(h.heads)


def _assert_rolled_back(name: str, r, url: str, at: list[str], counts: dict, dump: list[str]) -> None:
    doc = document(r)
    assert r.code == 1 and doc.get("result") == "rolled_back", f"{name}: {explain(r)}"
    assert heads(url) == at, f"{name}: after the rollback at {heads(url)}, not {at}"
    after = row_counts(url)
    lost = missing_rows(counts, after)
    assert not lost, f"{name}: rows lost by the rollback (table: before, after): {lost}; {explain(r)}"
    assert after == counts, f"{name}: row counts changed by the rollback: {counts} -> {after}"
    now = schema(url)
    assert now == dump, f"{name}: the schema after the rollback is not the one before\n" + schema_diff(
        dump, now, "before", "after")
    assert (doc.get("rollback") or {}).get("success") is True, f"{name}: {explain(r)}"


@pytest.mark.parametrize("name", NAMES)
def test_a_failed_upgrade_rolls_back_with_every_row(name, corpus, database_url):
    h = corpus[name]
    mid = h.middle()
    r0 = dbrev_apply(h.location, database_url, mid, *UP)
    assert r0.code == 0, f"{name}: setting up at {mid}: {explain(r0)}"
    assert add_user_rows(database_url) > 3
    counts, dump = row_counts(database_url), schema(database_url)
    assert sum(counts.values()) > 0
    fail = f"up:{h.late_upgrade_step()}"
    r = dbrev_apply(h.location, database_url, "heads", *UP, fail=fail)
    _assert_rolled_back(name, r, database_url, [mid], counts, dump)
    # the same upgrade without the failure goes through, over the application's rows (guarded drops in
    # loops among its steps drop tables that hold rows: allowed, so they must not be refused or rolled back)
    again = dbrev_apply(h.location, database_url, "heads", *UP)
    assert again.code == 0 and document(again).get("result") == "applied", f"{name}: {explain(again)}"
    assert heads(database_url) == sorted(h.heads)


@pytest.mark.parametrize("name,keep", [(n, "allow-data-loss") for n in NAMES] +
                         [(s.name, "archive") for s in gen.SPECS if s.env in ("template", "shared")])
def test_a_failed_downgrade_to_base_rolls_back_with_every_row(name, keep, corpus, database_url):
    h = corpus[name]
    r0 = dbrev_apply(h.location, database_url, "heads", *UP)
    assert r0.code == 0, f"{name}: setting up at head: {explain(r0)}"
    assert add_user_rows(database_url) > 3
    counts, dump = row_counts(database_url), schema(database_url)
    fail = f"down:{h.late_downgrade_step()}"
    r = dbrev_apply(h.location, database_url, "base", "--allow-downgrade", f"--{keep}", fail=fail)
    _assert_rolled_back(name, r, database_url, sorted(h.heads), counts, dump)


def test_the_corpus_does_what_real_projects_do(corpus):
    """The generator keeps its promises: merges, branch points and every kind of step are there."""
    all_ops = {r.op for h in corpus.values() for r in h.revs}
    assert all_ops >= {"create_table", "seed_lookup", "enum_table", "legacy_create", "guarded_drop", "orm_backfill",
                       "batch_print", "context_stats", "naming", "widen", "concurrent_index", "fk_lookup", "merge"}
    for h in corpus.values():
        merges = [r for r in h.revs if len(r.down) > 1]
        parents = [p for r in h.revs for p in r.down]
        branch_points = {p for p in parents if parents.count(p) > 1}
        assert len(h.revs) >= 24 and len(merges) >= 3 and len(branch_points) >= 3, h.spec.name
        texts = [p.read_text() for p in (h.location / "versions").glob("*.py")]
        assert any("Mapped[int]" in t for t in texts) and any("from shopapp" in t for t in texts)
        assert any("context.get_bind()" in t for t in texts) and any("print(" in t for t in texts)
    assert any(s.concurrent for s in gen.SPECS) and {s.env for s in gen.SPECS} == set(gen.ENV_PY)
