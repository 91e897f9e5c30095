"""The pure parts of `dbrev check --data`'s seeding (dbrev.engine.seed): table order and what a downgrade removed."""

from dbrev.engine.rehearse import Loss
from dbrev.engine.seed import dependency_order, losses


def test_referenced_tables_are_seeded_first_and_a_cycle_does_not_hang():
    tables = {1: "public.orders", 2: "public.accounts", 3: "public.items", 4: "public.a", 5: "public.b"}
    fks = [(1, 2, [2], [1]), (3, 1, [2], [1]), (3, 3, [3], [1]), (4, 5, [1], [1]), (5, 4, [1], [1])]
    order = [tables[o] for o in dependency_order(tables, fks)]
    assert order.index("public.accounts") < order.index("public.orders") < order.index("public.items")
    assert sorted(order) == sorted(tables.values())


def test_losses_between_inventories():
    before = {"objects": {(1, 0): ("public.t", None), (1, 1): ("public.t", "id"), (1, 2): ("public.t", "nick"),
                          (2, 0): ("public.gone", None), (2, 1): ("public.gone", "id"),
                          (3, 0): ("public.kept", None), (3, 1): ("public.kept", "id")},
              "counts": {(1, 0): 4, (1, 1): 4, (1, 2): 3, (2, 0): 2, (2, 1): 2, (3, 0): 5, (3, 1): 5}}
    after = {"objects": {(1, 0): ("public.t", None), (1, 1): ("public.t", "id"),
                         (3, 0): ("public.kept", None), (3, 1): ("public.kept", "id")},
             "counts": {(1, 0): 4, (1, 1): 4, (3, 0): 1, (3, 1): 1}}
    assert losses(before, after) == [Loss("public.gone", None, 2, "table"), Loss("public.t", "nick", 3, "column"),
                                     Loss("public.kept", None, 4, "rows")]
    assert losses(before, before) == []
