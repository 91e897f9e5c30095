"""Parallel branches that touch the same table: dbrev applies them in Alembic's order.

Column order is part of the schema (``pg_dump`` shows it, ``SELECT *`` and ``COPY`` without a column
list depend on it): two branches that each add a column to one table end with the columns in the
order Alembic ran the branches.  The corpus's ``own_txn`` history showed dbrev choosing another order.
"""

from __future__ import annotations

import pytest

from clihelp import dbrev
from dbhelp import heads
from harness import alembic_ok, explain, schema, schema_diff
from scriptgen import write_script

ENV = '''
import sqlalchemy as sa
from alembic import context

config = context.config


def run() -> None:
    shared = config.attributes.get("connection", None)
    if shared is not None:
        context.configure(connection=shared)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()


run()
'''


@pytest.mark.parametrize("left,right", [("b1aaaa", "c1aaaa"), ("c1aaaa", "b1aaaa"), ("f9ffff", "0a0000"),
                                        ("0a0000", "f9ffff")])
def test_two_branches_adding_columns_to_one_table_end_in_alembics_column_order(left, right, tmp_path, database_url,
                                                                               second_database_url):
    loc = tmp_path / "loc"
    (loc / "versions").mkdir(parents=True)
    (loc / "env.py").write_text(ENV)
    v = loc / "versions"
    write_script(v, "a0aaaa", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("t")', name="001_root.py")
    write_script(v, left, "a0aaaa", 'op.add_column("t", sa.Column("from_left", sa.Integer))',
                 'op.drop_column("t", "from_left")', name="002_left.py")
    write_script(v, right, "a0aaaa", 'op.add_column("t", sa.Column("from_right", sa.Integer))',
                 'op.drop_column("t", "from_right")', name="003_right.py")
    write_script(v, "ee0000", (left, right), name="004_merge.py")
    alembic_ok(loc, second_database_url, "upgrade", "heads")
    r = dbrev("apply", "--migrations", str(loc), "-r", "heads", url=database_url)
    assert r.code == 0, explain(r)
    assert heads(database_url) == heads(second_database_url) == ["ee0000"]
    expected, actual = schema(second_database_url), schema(database_url)
    assert actual == expected, schema_diff(expected, actual)
