"""Graph.diff orders steps exactly as Alembic does (graph.py reproduces its algorithm over plain data).

Alembic is imported here only, to compare: random histories with branch points, merges,
several heads and depends_on, random current/target states, both directions.
"""

import random

import pytest
from alembic.script.revision import Revision, RevisionMap

from dbrev.core.graph import Node, graph_from_nodes


def random_history(rng: random.Random, n: int):
    nodes: list[Node] = []
    ids = [f"{rng.randrange(16**6):06x}" for _ in range(n)]
    ids = list(dict.fromkeys(ids))
    for i, rid in enumerate(ids):
        earlier = ids[:i]
        r = rng.random()
        if not earlier or r < 0.08:
            parents: tuple[str, ...] = ()
        elif r < 0.3 and len(earlier) >= 2:
            parents = tuple(rng.sample(earlier, 2))
        else:
            parents = (rng.choice(earlier[-4:]),)
        deps: tuple[str, ...] = ()
        if earlier and rng.random() < 0.1:
            d = rng.choice(earlier)
            if d not in parents:
                deps = (d,)
        nodes.append(Node(rid, parents, deps))
    rng.shuffle(nodes)  # load order is not id order nor creation order
    return nodes


def alembic_map(nodes):
    return RevisionMap(lambda: [Revision(n.id, n.parents if len(n.parents) != 1 else n.parents[0],
                                         dependencies=n.dependencies or None) for n in nodes])


def alembic_sort(rm: RevisionMap, todo, heads):
    return list(rm._topological_sort([rm.get_revision(r) for r in todo], rm.get_revisions(tuple(heads))))


@pytest.mark.parametrize("seed", range(60))
def test_diff_orders_like_alembic_on_random_histories(seed):
    rng = random.Random(seed)
    nodes = random_history(rng, rng.randrange(4, 25))
    g, rm = graph_from_nodes(nodes), alembic_map(nodes)
    for _ in range(8):
        current = g.normalize_heads(rng.sample(list(g.nodes), rng.randrange(0, 3)))
        target = g.normalize_heads(rng.sample(list(g.nodes), rng.randrange(0, 3)))
        undo, apply = g.diff(current, target)
        have, want = g.closure(current), g.closure(target)
        assert undo == alembic_sort(rm, have - want, current)
        assert apply == list(reversed(alembic_sort(rm, want - have, target)))


@pytest.mark.parametrize("seed", range(20))
def test_upgrade_and_downgrade_of_the_whole_history_match_alembics_own_step_lists(seed):
    rng = random.Random(1000 + seed)
    nodes = random_history(rng, rng.randrange(4, 25))
    g, rm = graph_from_nodes(nodes), alembic_map(nodes)
    _, apply = g.diff((), g.heads)
    ups = [r.revision for r in rm.iterate_revisions("heads", "base", implicit_base=True)]
    assert apply == list(reversed(ups))
    undo, _ = g.diff(g.heads, ())
    # a downgrade starts from the live heads: every head, also one another revision depends on
    downs = [r.revision for r in rm.iterate_revisions(g.heads, "base", select_for_downgrade=True)]
    assert undo == downs


def test_a_merge_of_two_branches_upgrades_the_last_listed_parent_first():
    # the corpus repro: root, two branches each adding a column, a merge
    nodes = [Node("a0aaaa"), Node("b1aaaa", ("a0aaaa",)), Node("c1aaaa", ("a0aaaa",)),
             Node("ee0000", ("b1aaaa", "c1aaaa"))]
    _, apply = graph_from_nodes(nodes).diff((), ("ee0000",))
    assert apply == list(reversed(alembic_sort(alembic_map(nodes), set(apply), ("ee0000",))))
    assert apply == ["a0aaaa", "c1aaaa", "b1aaaa", "ee0000"]
