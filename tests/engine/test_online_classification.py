"""Steps that cannot be rendered offline are classified by what they do, as they run, before they
commit — and the policy is decided on those facts.  Real PostgreSQL server."""

from __future__ import annotations

from dbhelp import heads, q
from clihelp import dbrev
from enginehelp import run_apply
from scriptgen import write_script

# drops behind an inspect() guard, in a loop: offline rendering cannot run inspect()
LOOP_DROP = ('insp = sa.inspect(op.get_bind())\n'
             'for t in insp.get_table_names():\n'
             '    if t.startswith("old_"):\n'
             '        op.drop_table(t)')
GUARDED = ('insp = sa.inspect(op.get_bind())\n'
           'if "legacy" in insp.get_table_names():\n'
           '    op.drop_table("legacy")\n'
           'for col in [c["name"] for c in insp.get_columns("keep") if c["name"] == "v"]:\n'
           '    op.alter_column("keep", col, type_=sa.Text)')


def base(d):
    write_script(d, "o001aaaa", None,
                 'op.create_table("old_a", sa.Column("id", sa.Integer, primary_key=True))\n'
                 'op.create_table("keep", sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.String(20)))',
                 'op.drop_table("keep")\nop.drop_table("old_a")')


def test_a_drop_in_a_loop_behind_inspect_is_seen_online(database_url, tmp_path):
    d = tmp_path / "m"
    base(d)
    assert dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url).code == 0
    q(database_url, "INSERT INTO old_a SELECT g FROM generate_series(1, 25) g")
    write_script(d, "o002aaaa", "o001aaaa", LOOP_DROP, "pass")
    # the policy is Deny: the drop is seen before the step commits, and refused
    r = dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url)
    assert r.code == 3 and r.json["error"]["reason"] == "DataLossDenied", r.stdout
    assert "old_a" in r.json["error"]["message"] and "seen online" in r.json["error"]["message"]
    assert heads(database_url) == ["o001aaaa"] and q(database_url, "SELECT count(*) FROM old_a")[0][0] == 25
    # allowed, the same drop is declared loss: not a rowCounts failure that rolls the apply back
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--allow-data-loss", url=database_url)
    assert r.code == 0 and r.json["result"] == "applied", r.stdout
    (rec,) = r.json["classified_online"]
    assert rec["revision"] == "o002aaaa" and [e["kind"] for e in rec["effects"]] == ["drop_table"]
    assert q(database_url, "SELECT to_regclass('old_a')")[0][0] is None
    # and the plan says which steps are classified this way
    assert dbrev("apply", "--migrations", str(d), "-r", "o001aaaa", "--allow-downgrade",
                 url=database_url).code == 0
    p = dbrev("plan", "--migrations", str(d), "-r", "head", url=database_url)
    assert p.json["steps"][0]["classified"] == "online"


def test_guarded_drops_and_computed_alter_column_are_not_false_positives(database_url, tmp_path):
    d = tmp_path / "m"
    base(d)
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO keep (v) VALUES ('a'), ('b')")
    write_script(d, "o002aaaa", "o001aaaa", GUARDED, "pass")
    r = run_apply(str(d), "head", url=database_url)  # Deny
    assert r.code == 0 and r.json["result"] == "applied", r.stdout
    assert r.json["classified_online"][0]["effects"] == []  # widened varchar(20) -> text, dropped nothing
    assert q(database_url, "SELECT count(*) FROM keep")[0][0] == 2


def test_a_per_step_run_refused_online_undoes_its_earlier_steps(database_url, tmp_path):
    d = tmp_path / "m"
    base(d)
    assert run_apply(str(d), "head", url=database_url).code == 0
    q(database_url, "INSERT INTO old_a SELECT g FROM generate_series(1, 5) g")
    write_script(d, "o002aaaa", "o001aaaa",
                 'with op.get_context().autocommit_block():\n'
                 '    op.create_index("ix_keep_v", "keep", ["v"], postgresql_concurrently=True)',
                 'with op.get_context().autocommit_block():\n'
                 '    op.drop_index("ix_keep_v", table_name="keep", postgresql_concurrently=True)')
    write_script(d, "o003aaaa", "o002aaaa", LOOP_DROP, "pass")
    r = run_apply(str(d), "head", url=database_url)
    doc = r.json
    assert doc["transaction"] == "per-step"
    assert doc["result"] == "rolled_back" and doc["error"]["reason"] == "DataLossDenied", doc
    assert doc["rollback"]["success"] is True
    assert heads(database_url) == ["o001aaaa"] and q(database_url, "SELECT count(*) FROM old_a")[0][0] == 5
    assert q(database_url, "SELECT to_regclass('ix_keep_v')")[0][0] is None
