"""Planning and policy decisions over plain data (a fake renderer, no database)."""

import pytest

from dbrev.core import conditions as C
from dbrev.core.graph import Node, graph_from_nodes
from dbrev.core.planning import build_plan, hash_matches
from dbrev.core.options import Policy
from dbrev.core.policy import evaluate
from dbrev.engine.scripts import Rendered, ScriptInfo

NODES = [Node("a1", ()), Node("b2", ("a1",)), Node("c3", ("b2",))]
SQL = {
    ("a1", True): "CREATE TABLE customers (id int primary key)",
    ("a1", False): "DROP TABLE customers",
    ("b2", True): "ALTER TABLE customers ADD COLUMN phone text",
    ("b2", False): "ALTER TABLE customers DROP COLUMN phone",
    ("c3", True): "CREATE INDEX CONCURRENTLY ix ON customers (phone)",
    ("c3", False): "DROP INDEX CONCURRENTLY ix",
}


def infos(shas=None):
    shas = shas or {}
    return {n.id: ScriptInfo(n.id, n.parents, (), (), f"doc {n.id}", f"{n.id}.py", shas.get(n.id, "0" * 64), "files")
            for n in NODES}


def make(current, target, sql=SQL, shas=None):
    graph = graph_from_nodes(NODES)
    render = lambda rev, up: Rendered(sql[(rev, up)], True)  # noqa: E731
    return build_plan(graph, infos(shas), {n.id: "" for n in NODES}, current, target, render)


def test_upgrade_plan_is_single_transaction_unless_a_step_needs_autocommit():
    p = make((), ("b2",))
    assert p.direction == "upgrade" and [s.revision for s in p.steps] == ["a1", "b2"]
    assert p.transaction == "single" and not p.destructive_steps
    p = make((), ("c3",))
    assert p.transaction == "per-step" and p.warnings


def test_downgrade_plan_marks_destructive_steps():
    p = make(("b2",), ("a1",))
    assert p.direction == "downgrade"
    assert [s.revision for s in p.destructive_steps] == ["b2"]
    assert p.declared_loss_tables == {"customers"}


def test_hash_is_stable_and_binds_content():
    h1 = make((), ("b2",)).hash
    assert h1 == make((), ("b2",)).hash and h1.startswith("sha256:")
    assert make((), ("b2",), shas={"b2": "1" * 64}).hash != h1
    sql2 = dict(SQL)
    sql2[("b2", True)] = "ALTER TABLE customers ADD COLUMN phone varchar(20)"
    assert make((), ("b2",), sql=sql2).hash != h1
    assert make((), ("a1",)).hash != h1


def test_hash_prefix_matching():
    h = make((), ("b2",)).hash
    assert hash_matches(h, h) and hash_matches(h, h[7:19])
    assert not hash_matches(h, h[7:15])  # too short to bind
    assert not hash_matches(h, None) and not hash_matches(h, "sha256:" + "0" * 64)


def test_noop_is_allowed():
    d = evaluate(make(("b2",), ("b2",)), Policy())
    assert d.allowed and d.reason == C.AT_REVISION


def test_downgrade_denied():
    d = evaluate(make(("a1",), ()), Policy(downgrade="Deny", data_loss="Allow"))
    assert not d.allowed and d.reason == C.DOWNGRADE_DENIED and "a1" in d.message


def test_data_loss_denied_names_the_effects():
    d = evaluate(make(("b2",), ("a1",)), Policy(downgrade="Allow", data_loss="Deny"))
    assert not d.allowed and d.reason == C.DATA_LOSS_DENIED
    assert "DROP COLUMN phone" in d.message


def test_data_loss_archive_allows_and_asks_for_archiving():
    d = evaluate(make(("b2",), ("a1",)), Policy(downgrade="Allow", data_loss="Archive"))
    assert d.allowed and d.archive


def test_archive_refuses_what_it_cannot_keep():
    sql = dict(SQL)
    sql[("b2", False)] = "DROP SCHEMA billing CASCADE"
    d = evaluate(make(("b2",), ("a1",), sql=sql), Policy(downgrade="Allow", data_loss="Archive"))
    assert not d.allowed and d.reason == C.DATA_LOSS_DENIED and "cannot be archived" in d.message


def test_approval_binds_to_the_plan_hash():
    p = make(("b2",), ("a1",))
    pol = Policy(downgrade="RequireApproval", data_loss="Allow")
    d = evaluate(p, pol)
    assert not d.allowed and d.awaiting_approval and d.reason == C.AWAITING_APPROVAL and p.hash in d.message
    stale = make(("c3",), ("a1",)).hash
    d = evaluate(p, pol, approval=stale)
    assert not d.allowed and d.awaiting_approval and "different plan" in d.message
    d = evaluate(p, pol, approval=p.hash)
    assert d.allowed


def test_data_loss_require_approval():
    p = make(("b2",), ("a1",))
    d = evaluate(p, Policy(downgrade="Allow", data_loss="RequireApproval"))
    assert d.awaiting_approval and "data loss" in d.message
    assert evaluate(p, Policy(downgrade="Allow", data_loss="RequireApproval"), p.hash).allowed


def test_irreversible_step_is_refused_whatever_the_policy():
    graph = graph_from_nodes(NODES)

    def render(rev, up):
        if rev == "b2" and not up:
            return Rendered("", False, "downgrade() raises NotImplementedError", irreversible=True)
        return Rendered(SQL[(rev, up)], True)

    p = build_plan(graph, infos(), {n.id: "" for n in NODES}, ("b2",), ("a1",), render)
    d = evaluate(p, Policy(downgrade="Allow", data_loss="Allow"))
    assert not d.allowed and d.reason == C.IRREVERSIBLE_STEP


def test_invalid_policy_values():
    with pytest.raises(ValueError):
        Policy(downgrade="Sometimes")


def test_dropping_what_the_same_plan_created_is_not_data_loss():
    nodes = [Node("a1", ()), Node("b2", ("a1",)), Node("c3", ("b2",))]
    sql = {("a1", True): "CREATE TABLE staging (id int)", ("b2", True): "ALTER TABLE users ADD COLUMN nick text",
           ("c3", True): "DROP TABLE staging; ALTER TABLE users DROP COLUMN nick; ALTER TABLE users DROP COLUMN old"}
    graph = graph_from_nodes(nodes)
    infos_ = {n.id: ScriptInfo(n.id, n.parents, (), (), "", f"{n.id}.py", "0" * 64, "files") for n in nodes}
    p = build_plan(graph, infos_, {n.id: "" for n in nodes}, (), ("c3",), lambda r, up: Rendered(sql[(r, up)], True))
    effects = {e.object: e.destructive for e in p.steps[-1].effects}
    assert effects == {"staging": False, "users.nick": False, "users.old": True}
    # from b2 on, staging existed before the run: dropping it is data loss
    p2 = build_plan(graph, infos_, {n.id: "" for n in nodes}, ("b2",), ("c3",),
                    lambda r, up: Rendered(sql[(r, up)], True))
    assert {e.object: e.destructive for e in p2.steps[-1].effects}["staging"] is True


# -- data loss means rows: decisions on live facts (issue 9.8) ------------------------------

from dbrev.core.classify import is_widening  # noqa: E402
from dbrev.core.policy import Facts  # noqa: E402


@pytest.mark.parametrize("old,new,widens", [
    ("character varying(255)", "VARCHAR(500)", True), ("integer", "BIGINT", True), ("smallint", "int", True),
    ("character varying(40)", "TEXT", True), ("numeric(10,2)", "numeric(12,2)", True),
    ("character varying(500)", "varchar(255)", False), ("bigint", "integer", False),
    ("numeric(10,3)", "numeric(10,0)", False), ("double precision", "integer", False),
    ("timestamp with time zone", "date", False), ("text", "varchar(5)", False), ("character(3)", "text", False),
    (None, "text", False), ("mood", "text", False),
])
def test_widenings_are_recognised_and_nothing_else(old, new, widens):
    assert is_widening(old, new) is widens


def test_a_drop_of_an_empty_table_is_allowed_and_the_decision_says_why():
    p = make(("b2",), ("a1",))  # drops customers.phone
    assert evaluate(p, Policy(downgrade="Allow")).reason == C.DATA_LOSS_DENIED
    d = evaluate(p, Policy(downgrade="Allow"), facts=Facts(empty_tables=frozenset({"customers"})))
    assert d.allowed and d.not_data_loss == [{"revision": "b2", "effect": "ALTER TABLE customers DROP COLUMN phone",
                                              "why": "customers is empty"}]
    assert evaluate(p, Policy(downgrade="Allow"), facts=Facts(missing_tables=frozenset({"customers"}))).allowed


def test_a_per_step_plan_archives_for_its_rollback_or_refuses_what_it_could_not_restore():
    sql = {**SQL, ("b2", False): "ALTER TABLE customers DROP COLUMN phone; DROP SCHEMA old CASCADE",
           ("c3", False): "DROP INDEX CONCURRENTLY ix"}
    p = make(("c3",), ("a1",))  # per-step (CONCURRENTLY), drops a column
    d = evaluate(p, Policy(downgrade="Allow", data_loss="Allow"))
    assert d.allowed and d.archive and d.archive_reason == "rollback"
    assert not evaluate(p, Policy(downgrade="Allow", data_loss="Allow", rollback_on_failure=False)).archive
    p = make(("c3",), ("a1",), sql=sql)
    d = evaluate(p, Policy(downgrade="Allow", data_loss="Allow"))
    assert not d.allowed and d.reason == C.DATA_LOSS_DENIED and "DROP SCHEMA old" in d.message


def test_a_plain_drop_type_is_not_data_loss_but_a_cascading_one_is():
    sql = {**SQL, ("a1", False): "DROP TABLE customers; DROP TYPE mood"}
    p = make(("a1",), ())
    d = evaluate(p, Policy(downgrade="Allow", data_loss="Archive"))
    assert d.allowed and d.archive
    sql = {**SQL, ("a1", False): "DROP TYPE mood CASCADE"}
    d = evaluate(make(("a1",), (), sql=sql), Policy(downgrade="Allow", data_loss="Archive"))
    assert not d.allowed and "cannot be archived" in d.message


def test_rollback_row_proof_and_online_effects_are_pure():
    from dbrev.pg import integrity as I

    f = I.rollback_row_findings({"public.big": 1000, "public.ok": 3, "public.gone": 2, "public.empty": 0},
                                {"public.big": 400, "public.ok": 5})
    assert [(x.object, x.count) for x in f] == [("public.big", 600), ("public.gone", 2)]
    before = I.LiveState({1: ("public.a", 10, True), 2: ("public.b", 20, True), 3: ("public.new", 30, True)},
                         {(2, 1): ("id", "integer"), (2, 2): ("v", "character varying(20)"),
                          (2, 3): ("w", "text")}, {"public.b": 1})
    after = I.LiveState({2: ("public.b", 20, True)}, {(2, 1): ("id", "bigint"), (2, 2): ("v", "text")},
                        {"public.b": 4})
    kinds = [(e.kind, e.object) for e in I.live_effects(before, after, {"public.a", "public.b"})]
    assert kinds == [("drop_table", "public.a"), ("drop_column", "public.b.w"), ("delete_rows", "public.b")]


def test_a_schema_or_type_that_holds_nothing_is_not_data_loss():
    sql = {**SQL, ("a1", False): "DROP SCHEMA old CASCADE; DROP TYPE mood CASCADE"}
    p = make(("a1",), (), sql=sql)
    assert not evaluate(p, Policy(downgrade="Allow")).allowed
    d = evaluate(p, Policy(downgrade="Allow"), facts=Facts(unused_objects=frozenset({"old", "mood"})))
    assert d.allowed and {x["why"] for x in d.not_data_loss} == {"old holds no table or column",
                                                                 "mood holds no table or column"}


def test_a_dropped_sequence_is_not_data_loss():
    # data loss means rows (issue 9.8): ckan's fresh install was refused for DROP SEQUENCE
    for stmt in ("DROP SEQUENCE package_id_seq", "DROP SEQUENCE IF EXISTS package_id_seq CASCADE"):
        sql = {**SQL, ("a1", False): stmt}
        d = evaluate(make(("a1",), (), sql=sql), Policy(downgrade="Allow", data_loss="Deny"))
        assert d.allowed, (stmt, d.message)
    sql = {**SQL, ("a1", False): "DROP SEQUENCE package_id_seq; DROP TABLE customers"}
    d = evaluate(make(("a1",), (), sql=sql), Policy(downgrade="Allow", data_loss="Deny"))
    assert not d.allowed and "customers" in d.message
