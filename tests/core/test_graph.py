"""The revision graph and target resolution: pure, no files, no database."""

import pytest

from dbrev.core.errors import AmbiguousRevision, MultipleHeads, RevisionNotFound, ScriptError, UnknownDatabaseRevision
from dbrev.core.graph import Node, graph_from_nodes


def g(*specs):
    """specs: (id, parents, labels=(), deps=())"""
    nodes = []
    for s in specs:
        rid, parents, *rest = s
        labels = rest[0] if rest else ()
        deps = rest[1] if len(rest) > 1 else ()
        nodes.append(Node(rid, tuple(parents), tuple(deps), tuple(labels)))
    return graph_from_nodes(nodes)


# a1 -> b2 -> (c3 | d4) -> e5 (merge) -> f6
SHOP = g(("a1aaaa", []), ("b2bbbb", ["a1aaaa"]), ("c3cccc", ["b2bbbb"]), ("d4dddd", ["b2bbbb"], ["status"]),
         ("e5eeee", ["c3cccc", "d4dddd"]), ("f6ffff", ["e5eeee"]))


def test_heads_and_bases():
    assert SHOP.heads == ("f6ffff",)
    assert SHOP.bases == ("a1aaaa",)


def test_upgrade_from_empty_is_topological():
    undo, apply = SHOP.diff((), ("f6ffff",))
    assert undo == []
    # Alembic's order: the merge's last-listed parent's branch runs first
    assert apply == ["a1aaaa", "b2bbbb", "d4dddd", "c3cccc", "e5eeee", "f6ffff"]


def test_downgrade_to_one_parent_of_a_merge_unwinds_the_other_branch():
    undo, apply = SHOP.diff(("f6ffff",), ("c3cccc",))
    assert apply == []
    assert undo == ["f6ffff", "e5eeee", "d4dddd"]


def test_cross_branch_move_undoes_then_applies():
    undo, apply = SHOP.diff(("c3cccc",), ("d4dddd",))
    assert undo == ["c3cccc"] and apply == ["d4dddd"]


def test_noop_when_states_are_equal():
    assert SHOP.diff(("f6ffff",), ("f6ffff",)) == ([], [])
    # two branch heads vs. the merge's parents: same closure
    assert SHOP.same_state(("c3cccc", "d4dddd"), ("d4dddd", "c3cccc"))


@pytest.mark.parametrize("target,expected", [
    ("head", ("f6ffff",)), ("heads", ("f6ffff",)), ("base", ()), ("a1aaaa", ("a1aaaa",)), ("e5", ("e5eeee",)),
    ("status", ("d4dddd",)), ("status@head", ("f6ffff",)), ("c3cccc,d4dddd", ("c3cccc", "d4dddd")),
    ("f6ffff-1", ("e5eeee",)), ("a1aaaa+1", ("b2bbbb",)),
])
def test_resolve(target, expected):
    assert SHOP.resolve(target, ("f6ffff",)) == expected


def test_relative_to_current():
    assert SHOP.resolve("-1", ("f6ffff",)) == ("e5eeee",)
    assert SHOP.resolve("-2", ("b2bbbb",)) == ()
    assert SHOP.resolve("+1", ()) == ("a1aaaa",)
    assert SHOP.resolve("+1", ("a1aaaa",)) == ("b2bbbb",)


def test_relative_through_a_merge_is_ambiguous():
    with pytest.raises(AmbiguousRevision, match="merge"):
        SHOP.resolve("-2", ("f6ffff",))
    with pytest.raises(AmbiguousRevision, match="branches"):
        SHOP.resolve("+1", ("b2bbbb",))


def test_relative_needs_one_current_revision():
    with pytest.raises(AmbiguousRevision, match="exactly one current revision"):
        SHOP.resolve("-1", ("c3cccc", "d4dddd"))


def test_relative_past_base_is_an_error():
    with pytest.raises(RevisionNotFound, match="base reached"):
        SHOP.resolve("-3", ("b2bbbb",))


def test_unknown_revision_lists_nearest_ids():
    with pytest.raises(RevisionNotFound) as e:
        SHOP.resolve("c3ccdd", ())
    assert "c3cccc" in str(e.value)
    assert e.value.details["nearest"][0] == "c3cccc"
    assert e.value.exit_code == 2


def test_ambiguous_prefix_lists_matches():
    gg = g(("abc111", []), ("abc222", ["abc111"]))
    with pytest.raises(AmbiguousRevision) as e:
        gg.resolve("abc", ())
    assert "abc111" in str(e.value) and "abc222" in str(e.value)


def test_head_with_several_heads_names_them():
    gg = g(("a1", []), ("b1", ["a1"]), ("c1", ["a1"]))
    with pytest.raises(MultipleHeads) as e:
        gg.resolve("head", ())
    assert "b1" in str(e.value) and "c1" in str(e.value)
    assert gg.resolve("heads", ()) == ("b1", "c1")


def test_missing_parent_and_cycles_are_script_errors():
    with pytest.raises(ScriptError, match="no script defines"):
        g(("a1", ["zz"]))
    with pytest.raises(ScriptError, match="cycle"):
        g(("a1", ["b1"]), ("b1", ["a1"]))


def test_duplicate_label_is_an_error():
    with pytest.raises(ScriptError, match="branch label"):
        g(("a1", [], ["x"]), ("b1", ["a1"], ["x"]))


def test_dependencies_count_as_ancestry():
    gg = g(("a1", []), ("b1", ["a1"]), ("x1", []), ("c1", ["b1"], (), ["x1"]))
    undo, apply = gg.diff((), ("c1",))
    assert set(apply) == {"a1", "b1", "x1", "c1"} and apply.index("x1") < apply.index("c1")
    # Alembic keeps the dependency's branch head in the version table: same state
    assert gg.same_state(("c1", "x1"), ("c1",))


def test_live_revision_unknown_to_scripts():
    with pytest.raises(UnknownDatabaseRevision) as e:
        SHOP.check_live(("deadbeef",))
    assert "deadbeef" in str(e.value) and e.value.hint
