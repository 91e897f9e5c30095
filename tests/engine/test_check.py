"""`dbrev check` (issue 14): the stairway on a scratch database, on a real PostgreSQL server."""

from __future__ import annotations

import os

from clihelp import dbrev
from dbhelp import q
from scriptgen import write_script


def _history(d):
    """r001 ok, r002 ok (populated column, lossy), r003 forgets an index, r004 ok."""
    write_script(d, "r001aaaa", None,
                 'op.create_table("users", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))\n'
                 'op.execute("INSERT INTO users (name) VALUES (\'a\'), (\'b\'), (\'c\')")',
                 'op.drop_table("users")')
    write_script(d, "r002aaaa", "r001aaaa",
                 'op.add_column("users", sa.Column("nick", sa.Text))\nop.execute("UPDATE users SET nick = name")',
                 'op.drop_column("users", "nick")')
    bad = write_script(d, "r003aaaa", "r002aaaa", 'op.create_index("ix_users_name", "users", ["name"])', "pass")
    write_script(d, "r004aaaa", "r003aaaa", 'op.add_column("users", sa.Column("x", sa.Integer))',
                 'op.drop_column("users", "x")')
    return bad


def test_check_names_the_first_breaking_step(database_url, tmp_path):
    d = tmp_path / "m"
    bad = _history(d)
    r = dbrev("check", "--migrations", str(d), url=database_url)
    assert r.code == 1, r.stdout + r.stderr
    doc = r.json
    assert doc["result"] == "failed"
    line = bad.read_text().splitlines().index("def downgrade():") + 1
    assert doc["first_failure"]["revision"] == "r003aaaa"
    assert doc["first_failure"]["location"] == f"{bad.name}:{line}"
    assert "ix_users_name" in doc["first_failure"]["message"]
    by = {x["revision"]: x for x in doc["revisions"]}
    assert by["r001aaaa"]["readiness"] == "Lossy"  # the seeded rows go with the table
    assert by["r002aaaa"]["readiness"] == "Lossy" and by["r002aaaa"]["details"]["losses"][0]["rows"] == 3
    assert by["r003aaaa"]["readiness"] == "Broken"
    assert doc["unchecked"] == ["r004aaaa"]
    md = dbrev("check", "--migrations", str(d), "--format", "markdown", url=_fresh(database_url), json_out=False)
    assert md.code == 1
    assert "### dbrev check: FAILED" in md.stdout and "**First breaking step:** `r003aaaa`" in md.stdout
    assert "<details><summary>SQL of <code>r003aaaa</code>" in md.stdout and "CREATE INDEX ix_users_name" in md.stdout


def _fresh(url):
    from dbrev.pg.ephemeral import create_database

    return create_database(url.rsplit("/", 1)[0] + "/postgres")


def test_check_from_checks_only_the_later_revisions(database_url, tmp_path):
    d = tmp_path / "m"
    _history(d)
    (d / next(p.name for p in d.iterdir() if p.name.startswith("r003"))).unlink()
    write_script(d, "r003aaaa", "r002aaaa", 'op.create_index("ix_users_name", "users", ["name"])',
                 'op.drop_index("ix_users_name", table_name="users")')
    r = dbrev("check", "--migrations", str(d), "--from", "r002aaaa", url=database_url)
    assert r.code == 0, r.stdout + r.stderr
    assert [x["revision"] for x in r.json["revisions"]] == ["r003aaaa", "r004aaaa"]
    assert all(x["readiness"] == "Proven" for x in r.json["revisions"])


def test_check_finds_irreversible_and_a_failing_downgrade(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "r001aaaa", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))',
                 'raise NotImplementedError')
    r = dbrev("check", "--migrations", str(d), url=database_url)
    assert r.code == 1 and r.json["first_failure"]["readiness"] == "Irreversible"
    ok = dbrev("check", "--migrations", str(d), "--allow-irreversible", url=_fresh(database_url))
    assert ok.code == 0, ok.stdout
    d2 = tmp_path / "m2"
    p = write_script(d2, "r001aaaa", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))',
                     'op.drop_table("no_such_table")')
    r = dbrev("check", "--migrations", str(d2), url=_fresh(database_url))
    line = p.read_text().splitlines().index('    op.drop_table("no_such_table")') + 1
    assert r.code == 1 and r.json["first_failure"]["location"] == f"{p.name}:{line}"


def test_check_refuses_a_database_that_is_not_empty_and_changes_nothing(database_url, tmp_path):
    d = tmp_path / "m"
    _history(d)
    q(database_url, "CREATE TABLE precious (id int)")
    r = dbrev("check", "--migrations", str(d), url=database_url)
    assert r.code == 2 and "empty scratch database" in r.json["error"]["message"]
    assert q(database_url, "SELECT to_regclass('users') IS NULL") == [(True,)]


def test_check_two_heads_fail_unless_declared(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "r001aaaa", None, "pass")
    write_script(d, "r002aaaa", "r001aaaa", "pass")
    write_script(d, "r003aaaa", "r001aaaa", "pass")
    r = dbrev("check", "--migrations", str(d), url=database_url)
    assert r.code == 1 and r.json["failures"][0]["check"] == "heads"
    assert dbrev("check", "--migrations", str(d), "--heads", "2", url=_fresh(database_url)).code == 0


def test_check_passes_on_the_examples_and_ephemeral_leaves_nothing_behind(examples_dir):
    import shutil
    import tempfile
    from pathlib import Path

    tmp = Path(tempfile.mkdtemp(prefix="dbrev-check-test-"))  # the server's user must reach it
    tmp.chmod(0o755)
    try:
        _examples_ephemeral(examples_dir, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _examples_ephemeral(examples_dir, tmp):
    r = dbrev("check", "--migrations", str(examples_dir), "--ephemeral", env={"TMPDIR": str(tmp)})
    assert r.code == 0, r.stdout + r.stderr
    assert r.json["result"] == "passed" and len(r.json["revisions"]) == 7
    assert list(tmp.iterdir()) == []  # the server's folder is gone
    # and no server of ours is left running
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        except OSError:
            continue
        if str(tmp) in cmd:
            left.append(cmd)
    assert left == []


def test_ephemeral_without_envtest_says_so(examples_dir, monkeypatch, capfd):
    import sys

    from dbrev.cli import main

    monkeypatch.setitem(sys.modules, "dbrev.pg.ephemeral", None)  # as if an install lacked the throwaway server
    code = main(["check", "--migrations", str(examples_dir), "--ephemeral", "--json"])
    assert code == 2
    out = capfd.readouterr().out
    assert "--ephemeral needs dbrev's throwaway PostgreSQL support" in out and "--database-url" in out


def test_check_without_a_database_says_how(examples_dir, monkeypatch):
    monkeypatch.delenv("DBREV_DATABASE_URL", raising=False)
    r = dbrev("check", "--migrations", str(examples_dir))
    assert r.code == 2 and "--ephemeral" in r.json["error"]["hint"]


def _app_history(d):
    """Tables the application fills later: the scripts insert nothing."""
    write_script(d, "r001aaaa", None,
                 'op.execute("CREATE TYPE mood AS ENUM (\'ok\', \'sad\')")\n'
                 'op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True),\n'
                 '    sa.Column("email", sa.String(20), nullable=False, unique=True),\n'
                 '    sa.Column("mood", sa.Enum("ok", "sad", name="mood", create_type=False), nullable=False),\n'
                 '    sa.Column("born", sa.Date, nullable=False), sa.Column("at", sa.DateTime(timezone=True)),\n'
                 '    sa.Column("flags", sa.ARRAY(sa.Integer)), sa.Column("doc", sa.dialects.postgresql.JSONB),\n'
                 '    sa.Column("uid", sa.dialects.postgresql.UUID, nullable=False),\n'
                 '    sa.Column("amount", sa.Numeric(6, 2), nullable=False), sa.Column("ok", sa.Boolean, nullable=False))\n'
                 'op.create_table("orders", sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),\n'
                 '    sa.Column("account_id", sa.Integer, sa.ForeignKey("accounts.id"), nullable=False),\n'
                 '    sa.Column("note", sa.Text, server_default="none", nullable=False))\n'
                 'op.create_table("picky", sa.Column("id", sa.Integer, primary_key=True),\n'
                 '    sa.Column("n", sa.Integer, nullable=False), sa.CheckConstraint("n > 100", name="n_big"))',
                 'op.drop_table("picky")\nop.drop_table("orders")\nop.drop_table("accounts")\n'
                 'op.execute("DROP TYPE mood")')
    write_script(d, "r002aaaa", "r001aaaa", 'op.add_column("orders", sa.Column("coupon", sa.Text))',
                 'op.drop_column("orders", "coupon")')
    write_script(d, "r003aaaa", "r002aaaa", 'op.add_column("accounts", sa.Column("nick", sa.Text))',
                 'op.execute("DELETE FROM orders")\nop.drop_column("accounts", "nick")')


def test_check_data_seeds_rows_so_lossy_downgrades_are_counted(database_url, tmp_path):
    d = tmp_path / "m"
    _app_history(d)
    plain = dbrev("check", "--migrations", str(d), url=database_url)
    assert plain.code == 0, plain.stdout + plain.stderr
    assert [x["readiness"] for x in plain.json["revisions"]] == ["Proven", "Proven", "Proven"]
    assert "seeded" not in plain.json["revisions"][0]
    r = dbrev("check", "--migrations", str(d), "--data", url=_fresh(database_url))
    assert r.code == 0, r.stdout + r.stderr  # Lossy is a finding, not a failure
    by = {x["revision"]: x for x in r.json["revisions"]}
    # r001aaaa: parents first, a value of every type; the CHECK refuses dbrev's row, and says so
    assert by["r001aaaa"]["seeded"] == {"public.accounts": 1, "public.orders": 1}
    assert "n_big" in by["r001aaaa"]["seed_skipped"]["public.picky"]
    assert by["r001aaaa"]["readiness"] == "Lossy"
    assert {(x["table"], x["rows"], x["kind"]) for x in by["r001aaaa"]["details"]["losses"]} == {
        ("public.accounts", 1, "table"), ("public.orders", 1, "table")}
    # r002aaaa: the column it adds holds the seeded value: its downgrade drops it
    assert by["r002aaaa"]["readiness"] == "Lossy", by["r002aaaa"]
    assert by["r002aaaa"]["details"]["losses"] == [{"table": "public.orders", "column": "coupon", "rows": 1,
                                                    "kind": "column"}]
    assert "1 value(s) of column public.orders.coupon" in by["r002aaaa"]["message"]
    # r003aaaa: the nick values, and every order its downgrade deletes: r002aaaa's and its own (r001aaaa's went
    # with the tables in r001aaaa's own stairway down)
    losses = {(x["table"], x["column"], x["kind"]): x["rows"] for x in by["r003aaaa"]["details"]["losses"]}
    assert losses == {("public.accounts", "nick", "column"): 1, ("public.orders", None, "rows"): 2}, losses
    text = dbrev("check", "--migrations", str(d), "--data", url=_fresh(database_url), json_out=False).stdout
    assert "seeded a row into: public.accounts, public.orders" in text and "not seeded: public.picky" in text
    md = dbrev("check", "--migrations", str(d), "--data", "--format", "markdown", url=_fresh(database_url),
               json_out=False).stdout
    assert "Seeded (`--data`): a row after each upgrade into `public.accounts`, `public.orders`; not seeded: " \
           "`public.picky` (the row was refused: " in md, md
    # --from: the tables before it are seeded too, so the first checked revision meets rows
    fr = dbrev("check", "--migrations", str(d), "--data", "--from", "r002aaaa", url=_fresh(database_url))
    assert fr.code == 0, fr.stdout + fr.stderr
    assert fr.json["from_seeded"] == {"public.accounts": 1, "public.orders": 1}
    losses = {(x["table"], x["column"], x["kind"]): x["rows"] for x in fr.json["revisions"][0]["details"]["losses"]}
    assert losses == {("public.accounts", "nick", "column"): 1, ("public.orders", None, "rows"): 2}, losses


def test_check_names_a_downgrade_that_leaves_a_column_behind(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "r001aaaa", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("t")')
    bad = write_script(d, "r002aaaa", "r001aaaa",
                       'op.add_column("t", sa.Column("a", sa.Text))\nop.add_column("t", sa.Column("b", sa.Text))',
                       'op.drop_column("t", "a")')
    write_script(d, "r003aaaa", "r002aaaa", 'op.add_column("t", sa.Column("c", sa.Text))', 'op.drop_column("t", "c")')
    r = dbrev("check", "--migrations", str(d), url=database_url)
    assert r.code == 1, r.stdout + r.stderr
    first = r.json["first_failure"]
    line = bad.read_text().splitlines().index("def downgrade():") + 1
    assert first["revision"] == "r002aaaa" and first["readiness"] == "Broken"
    assert first["location"] == f"{bad.name}:{line}" and "public.t.b" in first["message"]
    assert r.json["unchecked"] == ["r003aaaa"]


def test_check_data_counts_the_loss_of_a_per_step_revision(database_url, tmp_path):
    """Per-step runs are not rehearsed (Unproven); the stairway proves them, and --data counts their loss."""
    d = tmp_path / "m"
    write_script(d, "r001aaaa", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("t")')
    write_script(d, "r002aaaa", "r001aaaa",
                 'op.add_column("t", sa.Column("code", sa.Text))\n'
                 'with op.get_context().autocommit_block():\n'
                 '    op.create_index("ix_t_code", "t", ["code"], postgresql_concurrently=True)',
                 'with op.get_context().autocommit_block():\n'
                 '    op.drop_index("ix_t_code", table_name="t", postgresql_concurrently=True)\n'
                 'op.drop_column("t", "code")')
    plain = dbrev("check", "--migrations", str(d), "--from", "r001aaaa", url=database_url)
    assert plain.code == 0, plain.stdout + plain.stderr
    assert plain.json["revisions"][0]["transaction"] == "per-step"
    assert plain.json["revisions"][0]["readiness"] == "Proven"
    r = dbrev("check", "--migrations", str(d), "--from", "r001aaaa", "--data", url=_fresh(database_url))
    assert r.code == 0, r.stdout + r.stderr
    rc = r.json["revisions"][0]
    assert rc["readiness"] == "Lossy" and rc["details"]["losses"] == [
        {"table": "public.t", "column": "code", "rows": 1, "kind": "column"}], rc
