"""Classifying SQL and script source: what is destructive, needs autocommit, locks heavily."""

import pytest

from dbrev.core.classify import classify_source, classify_sql


@pytest.mark.parametrize("sql,kind,obj", [
    ("DROP TABLE orders", "drop_table", "orders"),
    ("DROP TABLE shop.orders CASCADE", "drop_table", "shop.orders"),
    ("ALTER TABLE customers DROP COLUMN phone", "drop_column", "customers.phone"),
    ("DROP SCHEMA billing", "drop_schema", "billing"),
    ("DROP TYPE order_status", "drop_type", "order_status"),
    ("DROP SEQUENCE s1", "drop_sequence", "s1"),
    ("TRUNCATE audit_log", "truncate", "audit_log"),
    ("DELETE FROM sessions WHERE expires < now()", "delete_rows", "sessions"),
    ("ALTER TABLE t ALTER COLUMN code TYPE varchar(5) USING code::varchar(5)", "alter_column_type", "t.code"),
    ("ALTER TABLE t ALTER COLUMN amount TYPE numeric(10,0)", "alter_column_type", "t.amount"),
])
def test_destructive(sql, kind, obj):
    c = classify_sql(sql)
    assert c.destructive
    assert [(e.kind, e.object) for e in c.effects] == [(kind, obj)]


@pytest.mark.parametrize("sql", [
    "CREATE TABLE t (id int)", "ALTER TABLE t ADD COLUMN x int", "CREATE INDEX ix ON t (a)",
    "DROP INDEX ix", "UPDATE t SET a = 1", "INSERT INTO t VALUES (1)",
    "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES p(id) NOT VALID",
    "UPDATE alembic_version SET version_num='b' WHERE version_num='a'",
])
def test_not_destructive(sql):
    assert not classify_sql(sql).destructive


def test_version_table_statements_are_ignored():
    c = classify_sql("DELETE FROM alembic_version WHERE version_num='x'")
    assert not c.effects and not c.touched_tables


@pytest.mark.parametrize("sql", [
    "CREATE INDEX CONCURRENTLY ix ON t (a)", "DROP INDEX CONCURRENTLY ix", "REINDEX INDEX CONCURRENTLY ix",
    "VACUUM t", "COMMIT; CREATE INDEX CONCURRENTLY ix ON t(a); BEGIN",
])
def test_needs_autocommit(sql):
    assert classify_sql(sql).needs_autocommit


def test_heavy_locks():
    c = classify_sql("ALTER TABLE t ALTER COLUMN a SET NOT NULL; CREATE INDEX ix ON t (a); "
                     "ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES p(id)")
    text = " ".join(c.heavy_locks)
    assert "SET NOT NULL" in text and "CREATE INDEX" in text and "FOREIGN KEY" in text


def test_index_on_a_table_created_in_the_same_step_is_not_heavy():
    c = classify_sql("CREATE TABLE t (id int); CREATE INDEX ix ON t (id)")
    assert c.heavy_locks == []


def test_not_valid_foreign_key_is_not_heavy():
    c = classify_sql("ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES p(id) NOT VALID")
    assert c.heavy_locks == []


def test_touched_tables():
    c = classify_sql("UPDATE a SET x=1; INSERT INTO b VALUES (1); ALTER TABLE c ADD COLUMN y int")
    assert c.touched_tables == {"a", "b", "c"}


SOURCE = '''
from alembic import op
import sqlalchemy as sa
TABLE = "legacy_events"

def upgrade():
    conn = op.get_bind()
    rows = conn.execute(sa.text("select 1")).fetchall()
    helper()

def helper():
    op.drop_column("customers", "fax", schema="crm")
    op.execute("DELETE FROM audit WHERE old")

def downgrade():
    op.drop_table(TABLE)
    with op.get_context().autocommit_block():
        op.create_index("ix", "t", ["a"], postgresql_concurrently=True)
'''


def test_source_analysis_follows_helpers_and_constants():
    up = classify_source(SOURCE, "upgrade")
    assert up.reads_data
    assert {(e.kind, e.object) for e in up.effects} == {("drop_column", "crm.customers.fax"),
                                                        ("delete_rows", "audit")}
    down = classify_source(SOURCE, "downgrade")
    assert [(e.kind, e.object) for e in down.effects] == [("drop_table", "legacy_events")]
    assert down.needs_autocommit


def test_unparseable_sql_is_noted_not_raised():
    c = classify_sql("THIS IS NOT SQL")
    assert c.notes and not c.effects


def test_source_rename_and_created_objects():
    src = '''
from alembic import op
import sqlalchemy as sa
def upgrade():
    op.create_table("tmp_a", sa.Column("id", sa.Integer))
    op.add_column("users", sa.Column("nick", sa.Text))
    op.rename_table("old_events", "events")
'''
    c = classify_source(src, "upgrade")
    assert ("rename", "old_events") in {(e.kind, e.object) for e in c.effects}
    assert "tmp_a" in c.created_tables and "users.nick" in c.created_columns


def test_merge_does_not_list_the_same_drop_twice():
    a = classify_sql("DROP TABLE t")
    a.merge(classify_source("from alembic import op\ndef upgrade():\n    op.drop_table('t')\n", "upgrade"))
    assert [e.kind for e in a.effects] == ["drop_table"]
