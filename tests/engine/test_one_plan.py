"""`dbrev plan` and `dbrev apply` make one plan (dbrev.engine.verbs.plan_against): same stored copies, same
conflicts, same hash."""

from __future__ import annotations

from dbhelp import heads, q
from clihelp import dbrev
from scriptgen import write_script


def _three(d):
    write_script(d, "h001aaaa", None, 'op.create_table("t", sa.Column("id", sa.Integer))', 'op.drop_table("t")')
    write_script(d, "h002aaaa", "h001aaaa", 'op.add_column("t", sa.Column("x", sa.Integer))',
                 'op.drop_column("t", "x")')
    return write_script(d, "h003aaaa", "h002aaaa", 'op.create_index("t_x", "t", ["x"])',
                        'op.drop_index("t_x", table_name="t")')


def test_plan_and_apply_agree_on_the_hash_of_a_plan_through_a_stored_copy(database_url, tmp_path):
    d = tmp_path / "m"
    third = _three(d)
    up = dbrev("plan", "--migrations", str(d), "-r", "head", url=database_url)
    assert up.code == 0, up.stdout + up.stderr
    a = dbrev("apply", "--migrations", str(d), "-r", "head", "--plan-hash", up.json["hash"], url=database_url)
    assert a.code == 0 and a.json["plan_hash"] == up.json["hash"], a.stdout + a.stderr
    third.unlink()  # the way back runs the copy the database keeps
    p = dbrev("plan", "--migrations", str(d), "-r", "h001aaaa", url=database_url)
    assert p.code == 0, p.stdout + p.stderr
    assert p.json["scripts_from_database"] == ["h003aaaa"]
    assert [(s["revision"], s["direction"]) for s in p.json["steps"]] == [("h003aaaa", "downgrade"),
                                                                           ("h002aaaa", "downgrade")]
    a = dbrev("apply", "--migrations", str(d), "-r", "h001aaaa", "--allow-downgrade", "--allow-data-loss",
              "--plan-hash", p.json["hash"], url=database_url)
    assert a.code == 0 and a.json["result"] == "applied", a.stdout + a.stderr
    assert a.json["plan_hash"] == p.json["hash"]
    assert heads(database_url) == ["h001aaaa"]


def test_plan_and_apply_ignore_a_corrupt_stored_copy_alike(database_url, tmp_path):
    d = tmp_path / "m"
    third = _three(d)
    assert dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url).code == 0
    q(database_url, "UPDATE dbrev.scripts SET source = source || '# edited' WHERE revision = 'h003aaaa'")
    third.unlink()  # with the copy ignored, no script defines the live revision
    p = dbrev("plan", "--migrations", str(d), "-r", "h001aaaa", url=database_url)
    a = dbrev("apply", "--migrations", str(d), "-r", "h001aaaa", "--allow-downgrade", "--allow-data-loss",
              url=database_url)
    assert p.code == a.code == 2, p.stdout + a.stdout
    assert p.json["error"]["error_type"] == a.json["error"]["error_type"]
    assert p.json["error"]["message"] == a.json["error"]["message"]
    assert "h003aaaa" in p.json["error"]["message"]
    assert heads(database_url) == ["h003aaaa"]


def test_a_corrupt_stored_copy_is_named_by_plan_and_apply(database_url, tmp_path):
    d = tmp_path / "m"
    _three(d)
    assert dbrev("apply", "--migrations", str(d), "-r", "h002aaaa", url=database_url).code == 0
    q(database_url, "UPDATE dbrev.scripts SET source = source || '# edited' WHERE revision = 'h002aaaa'")
    p = dbrev("plan", "--migrations", str(d), "-r", "head", url=database_url)
    a = dbrev("apply", "--migrations", str(d), "-r", "head", "--plan-hash", p.json["hash"], url=database_url)
    assert p.code == 0 and a.code == 0, p.stdout + a.stdout + a.stderr
    warning = "the stored copy of h002aaaa fails its sha256 check and is ignored"
    assert warning in p.json["warnings"] and warning in a.json["warnings"]
    assert a.json["plan_hash"] == p.json["hash"]
