"""The integrity layer against a real PostgreSQL (one fresh database per test).

Each test builds the broken state it looks for (an INVALID index, NOT VALID
constraints with orphans, sequences behind their column...) and checks the
finding, its object name and count.  Everything runs inside an open
transaction unless the test says otherwise, as the migration runner does.
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from dbrev.pg import integrity as I
from dbrev.pg.ephemeral import create_database, drop_database

RAW = {"no_parameters": True}


@pytest.fixture
def engine(database_url):
    eng = sa.create_engine(database_url, poolclass=NullPool)
    yield eng
    eng.dispose()


@pytest.fixture
def other_engine(pg_admin_url):
    """A second fresh database, for comparing two schemas built differently."""
    url = create_database(pg_admin_url)
    eng = sa.create_engine(url, poolclass=NullPool)
    yield eng
    eng.dispose()
    drop_database(pg_admin_url, url.rsplit("/", 1)[1])


def ddl(eng, sql: str) -> None:
    """Run SQL and commit (set-up only)."""
    with eng.begin() as c:
        c.exec_driver_sql(sql, execution_options=RAW)


def by_check(findings, check):
    return {f.object: f for f in findings if f.check == check}


def xact_stats(conn, table):
    return conn.execute(sa.text(
        "SELECT seq_scan, seq_tup_read, idx_scan FROM pg_stat_xact_user_tables "
        "WHERE schemaname = 'public' AND relname = :t"), {"t": table}).one()


# ---------------------------------------------------------------------------
# indexes
# ---------------------------------------------------------------------------


def test_invalid_index_left_by_failed_concurrent_build(engine):
    ddl(engine, "CREATE TABLE orders (id int, created date); INSERT INTO orders VALUES (1, now()), (1, now());"
                "CREATE INDEX ix_orders_created ON orders (created)")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        with pytest.raises(sa.exc.IntegrityError):
            c.exec_driver_sql("CREATE UNIQUE INDEX CONCURRENTLY ux_orders_id ON orders (id)")
    with engine.connect() as c, c.begin():
        found = by_check(I.catalog_findings(c, ["indexes"]), "indexes")
        assert set(found) == {"public.ux_orders_id"}
        f = found["public.ux_orders_id"]
        assert (f.severity, f.count, f.key) == ("error", 1, ("indexes", "public.ux_orders_id"))
        assert "INVALID" in f.message and "DROP INDEX CONCURRENTLY public.ux_orders_id" in f.message
        # the fingerprint records validity too
        assert any(x.startswith("index public.ux_orders_id ") and " INVALID" in x
                   for x in I.fingerprint_facts(c))
        report = I.run_checks(c, ["indexes"])
        assert not report.passed and report.fingerprint is None


# ---------------------------------------------------------------------------
# constraints and orphans
# ---------------------------------------------------------------------------


def test_not_valid_foreign_key_with_orphans(engine):
    ddl(engine, """
        CREATE TABLE customers (id int PRIMARY KEY);
        CREATE TABLE orders (id int PRIMARY KEY, customer_id int);
        INSERT INTO customers VALUES (1), (2);
        INSERT INTO orders VALUES (1, 1), (2, 2), (3, 7), (4, 8), (5, 8), (6, NULL);
        ALTER TABLE orders ADD CONSTRAINT orders_customer_id_fkey
            FOREIGN KEY (customer_id) REFERENCES customers (id) NOT VALID;
        -- a validated foreign key is not scanned and has no finding
        CREATE TABLE lines (id int PRIMARY KEY, order_id int REFERENCES orders (id));
    """)
    with engine.connect() as c, c.begin():
        fs = I.catalog_findings(c, ["constraints", "orphans"])
        cons, orph = by_check(fs, "constraints"), by_check(fs, "orphans")
        key = "public.orders.orders_customer_id_fkey"
        assert set(cons) == {key} and set(orph) == {key}
        assert cons[key].severity == "error" and "VALIDATE CONSTRAINT orders_customer_id_fkey" in cons[key].message
        assert orph[key].count == 3 and orph[key].severity == "error"   # NULL keys are not orphans
        assert "3 rows of public.orders" in orph[key].message and "public.customers(id)" in orph[key].message
        # the cap: stop counting early and say "at least"
        capped = by_check(I.catalog_findings(c, ["orphans"], orphan_cap=2), "orphans")[key]
        assert capped.count == 2 and capped.message.startswith("At least 2 rows")
        # after fixing the rows and validating, nothing is left
        c.exec_driver_sql("DELETE FROM orders WHERE customer_id > 2")
        assert by_check(I.catalog_findings(c, ["orphans"]), "orphans") == {}
        c.exec_driver_sql("ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_id_fkey")
        assert I.catalog_findings(c, ["constraints", "orphans"]) == []


def test_multi_column_foreign_key_orphans_simple_and_full(engine):
    ddl(engine, """
        CREATE TABLE regions (country text, code int, PRIMARY KEY (country, code));
        INSERT INTO regions VALUES ('fr', 1), ('fr', 2), ('de', 1);
        CREATE TABLE shops (id int PRIMARY KEY, country text, region int);
        -- (de, 2) does not exist although both parts exist separately: an orphan
        INSERT INTO shops VALUES (1, 'fr', 1), (2, 'de', 2), (3, 'it', 1), (4, NULL, 9), (5, 'xx', NULL);
        ALTER TABLE shops ADD CONSTRAINT shops_region_fkey FOREIGN KEY (country, region)
            REFERENCES regions (country, code) NOT VALID;
        CREATE TABLE depots (id int PRIMARY KEY, country text, region int);
        INSERT INTO depots VALUES (1, 'fr', 1), (2, NULL, NULL), (3, 'fr', NULL), (4, 'it', 3);
        ALTER TABLE depots ADD CONSTRAINT depots_region_fkey FOREIGN KEY (country, region)
            REFERENCES regions (country, code) MATCH FULL NOT VALID;
    """)
    with engine.connect() as c, c.begin():
        orph = by_check(I.catalog_findings(c, ["orphans"]), "orphans")
        # MATCH SIMPLE: a row with any NULL key column is exempt
        assert orph["public.shops.shops_region_fkey"].count == 2
        assert "(country, region)" in orph["public.shops.shops_region_fkey"].message
        assert "public.regions(country, code)" in orph["public.shops.shops_region_fkey"].message
        # MATCH FULL: all NULL is exempt, partly NULL violates
        assert orph["public.depots.depots_region_fkey"].count == 2


def test_not_valid_check_constraint_and_domain_constraint(engine):
    ddl(engine, """
        CREATE TABLE products (id int PRIMARY KEY, price numeric);
        INSERT INTO products VALUES (1, -5);
        ALTER TABLE products ADD CONSTRAINT products_price_positive CHECK (price > 0) NOT VALID;
        CREATE DOMAIN percent AS int;
        CREATE TABLE scores (p percent);
        INSERT INTO scores VALUES (150);
        ALTER DOMAIN percent ADD CONSTRAINT percent_range CHECK (VALUE BETWEEN 0 AND 100) NOT VALID;
    """)
    with engine.connect() as c, c.begin():
        cons = by_check(I.catalog_findings(c, ["constraints"]), "constraints")
        assert set(cons) == {"public.products.products_price_positive", "public.percent.percent_range"}
        f = cons["public.products.products_price_positive"]
        assert f.severity == "error" and f.count == 1 and "check constraint" in f.message
        assert "ALTER TABLE public.products VALIDATE CONSTRAINT products_price_positive" in f.message
        assert "ALTER DOMAIN public.percent VALIDATE" in cons["public.percent.percent_range"].message
        # a CHECK constraint is not a foreign key: no orphan query for it
        assert by_check(I.catalog_findings(c, ["orphans"]), "orphans") == {}


# ---------------------------------------------------------------------------
# sequences
# ---------------------------------------------------------------------------


def test_sequences_behind_serial_and_identity(engine):
    ddl(engine, """
        CREATE TABLE s_serial (id serial PRIMARY KEY, v text);
        INSERT INTO s_serial (id) VALUES (1), (2), (10);
        CREATE TABLE s_ident (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY);
        INSERT INTO s_ident VALUES (DEFAULT), (DEFAULT);          -- sequence at 2
        INSERT INTO s_ident VALUES (7);                           -- max 7: 5 behind
        CREATE TABLE s_ok (id serial PRIMARY KEY);
        INSERT INTO s_ok (id) VALUES (5);
        SELECT setval('s_ok_id_seq', 5);
        CREATE TABLE s_empty (id serial PRIMARY KEY);
        CREATE TABLE s_desc (id int PRIMARY KEY);
        CREATE SEQUENCE s_desc_seq INCREMENT -1 MINVALUE -100 MAXVALUE -1 START -1 OWNED BY s_desc.id;
        INSERT INTO s_desc VALUES (-1), (-2), (-3);
        CREATE TABLE s_restart (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY);
        INSERT INTO s_restart OVERRIDING SYSTEM VALUE VALUES (3);
        ALTER TABLE s_restart ALTER COLUMN id RESTART WITH 4;      -- not called yet, next = 4: fine
    """)
    with engine.connect() as c, c.begin():
        seqs = by_check(I.catalog_findings(c, ["sequences"]), "sequences")
        assert set(seqs) == {"public.s_serial_id_seq", "public.s_ident_id_seq", "public.s_desc_seq"}
        assert seqs["public.s_serial_id_seq"].count == 10          # never called: next is 1, max is 10
        assert seqs["public.s_ident_id_seq"].count == 5
        assert seqs["public.s_desc_seq"].count == 3                # descending: next -1 >= min -3
        assert all(f.severity == "error" for f in seqs.values())
        m = seqs["public.s_ident_id_seq"].message
        assert "identity column public.s_ident.id" in m and "max(id) = 7" in m
        # the suggested fix works, inside the same transaction
        c.exec_driver_sql("SELECT setval('public.s_serial_id_seq', (SELECT max(id) FROM public.s_serial))")
        assert "public.s_serial_id_seq" not in by_check(I.catalog_findings(c, ["sequences"]), "sequences")


def test_sequence_on_unindexed_column_is_skipped_unless_exact(engine):
    ddl(engine, "CREATE TABLE events (n serial, payload text); INSERT INTO events (n) VALUES (1), (2), (3)")
    with engine.connect() as c, c.begin():
        f = by_check(I.catalog_findings(c, ["sequences"]), "sequences")["public.events_n_seq"]
        assert f.severity == "warning" and f.count == 0 and "not compared" in f.message
        f = by_check(I.catalog_findings(c, ["sequences"], exact=True), "sequences")["public.events_n_seq"]
        assert f.severity == "error" and f.count == 3


def test_sequences_on_partitioned_table(engine):
    ddl(engine, """
        CREATE TABLE m (id bigserial, day date NOT NULL, PRIMARY KEY (id, day)) PARTITION BY RANGE (day);
        CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
        CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
        INSERT INTO m (id, day) VALUES (40, '2024-03-01'), (41, '2025-03-01');
        ANALYZE m_2024; ANALYZE m_2025;
    """)
    with engine.connect() as c, c.begin():
        assert by_check(I.catalog_findings(c, ["sequences"]), "sequences")["public.m_id_seq"].count == 41
        stats = I.table_stats(c)
        assert stats["public.m"].estimate == 2 and stats["public.m_2025"].estimate == 1


# ---------------------------------------------------------------------------
# failures stay inside a savepoint; permissions
# ---------------------------------------------------------------------------


def test_a_check_that_cannot_run_becomes_a_warning_and_keeps_the_transaction(engine):
    ddl(engine, """
        CREATE TABLE parents (id int PRIMARY KEY);
        CREATE TABLE kids (id int PRIMARY KEY, parent_id int);
        INSERT INTO kids VALUES (1, 5);
        ALTER TABLE kids ADD CONSTRAINT kids_parent_fkey FOREIGN KEY (parent_id) REFERENCES parents (id) NOT VALID;
    """)
    with engine.connect() as blocker, engine.connect() as c:
        blocker.exec_driver_sql("LOCK TABLE kids IN ACCESS EXCLUSIVE MODE")  # held until rollback
        with c.begin():
            c.exec_driver_sql("CREATE TABLE made_in_txn (x int)")
            f = by_check(I.catalog_findings(c, ["orphans"], scan_timeout_ms=200), "orphans")[
                "public.kids.kids_parent_fkey"]
            assert f.severity == "warning" and "could not be counted" in f.message
            # the transaction is still usable and the local timeout was put back
            assert c.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
            assert c.exec_driver_sql("SELECT count(*) FROM made_in_txn").scalar() == 0
        blocker.rollback()


def test_limited_role_usage_only_sequence_and_unreadable_table(engine):
    role = f"r_{uuid.uuid4().hex[:10]}"
    ddl(engine, f"""
        CREATE ROLE {role};
        CREATE TABLE t (id serial PRIMARY KEY, ref int);
        INSERT INTO t (id, ref) VALUES (1, 1), (2, 3);
        CREATE TABLE hidden (id int PRIMARY KEY);
        ALTER TABLE t ADD CONSTRAINT t_ref_fkey FOREIGN KEY (ref) REFERENCES hidden (id) NOT VALID;
        GRANT SELECT ON t TO {role};
        GRANT USAGE ON SEQUENCE t_id_seq TO {role};
    """)
    try:
        with engine.connect() as c, c.begin():
            c.exec_driver_sql(f"SET LOCAL ROLE {role}")
            fs = I.catalog_findings(c, ["sequences", "orphans"])
            # USAGE only: pg_sequence_last_value is NULL before the first nextval -> start value
            assert by_check(fs, "sequences")["public.t_id_seq"].count == 2
            f = by_check(fs, "orphans")["public.t.t_ref_fkey"]
            assert f.severity == "warning" and "permission denied" in f.message
            assert c.exec_driver_sql("SELECT current_user").scalar() == role
    finally:
        ddl(engine, f"DROP OWNED BY {role}; DROP ROLE {role}")


# ---------------------------------------------------------------------------
# scale: nothing is counted by default
# ---------------------------------------------------------------------------


def test_big_table_checks_use_catalog_and_indexes_only(engine):
    ddl(engine, """
        CREATE TABLE accounts (id serial PRIMARY KEY);
        INSERT INTO accounts SELECT g FROM generate_series(1, 1000) g;
        SELECT setval('accounts_id_seq', 1000);
        CREATE TABLE big (id bigserial PRIMARY KEY, account_id int REFERENCES accounts (id), other int,
                          created timestamptz DEFAULT now());
        INSERT INTO big (account_id, other) SELECT 1 + g % 1000, g FROM generate_series(1, 200000) g;
        CREATE INDEX ix_big_created ON big (created);
        ALTER TABLE big ADD CONSTRAINT big_other_fkey FOREIGN KEY (other) REFERENCES accounts (id) NOT VALID;
        ANALYZE big; ANALYZE accounts;
    """)
    with engine.connect() as c, c.begin():
        fs = I.catalog_findings(c, orphan_scan_rows=100_000)
        stats = I.table_stats(c)
        fp = I.fingerprint(c)
        seq, tup, idx = xact_stats(c, "big")
        assert (seq, tup) == (0, 0), "no sequential scan of the big table"
        assert idx >= 1  # max(id) came from the primary key
        assert fp.startswith("sha256:")
        assert abs(stats["public.big"].estimate - 200_000) < 20_000
        # the unvalidated FK on a table above orphan_scan_rows is reported as not counted
        f = by_check(fs, "orphans")["public.big.big_other_fkey"]
        assert f.severity == "warning" and "were not counted" in f.message
        assert by_check(fs, "sequences") == {}  # bigserial filled by its default: in step
        # explicitly asking for it scans (once) and finds the orphans, capped
        f = by_check(I.catalog_findings(c, ["orphans"], exact=True), "orphans")["public.big.big_other_fkey"]
        assert f.count == I.ORPHAN_CAP and f.message.startswith("At least")


# ---------------------------------------------------------------------------
# fingerprint
# ---------------------------------------------------------------------------

SCHEMA_PARTS = [
    "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
    "CREATE DOMAIN posint AS int CHECK (VALUE > 0)",
    "CREATE TYPE pair AS (a int, b text)",
    "CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, m mood DEFAULT 'ok')",
    "CREATE TABLE orders (id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
    "customer_id int REFERENCES customers (id), qty posint, note varchar(20) DEFAULT 'n', "
    "total numeric(10, 2) GENERATED ALWAYS AS (qty * 2) STORED)",
    "CREATE INDEX ix_orders_customer ON orders (customer_id) WHERE qty > 1",
    "CREATE VIEW big_orders AS SELECT id, customer_id FROM orders WHERE qty > 10",
    "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$",
    "CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch()",
    "CREATE SCHEMA reporting",
    "CREATE TABLE reporting.daily (day date PRIMARY KEY, n int)",
]


def test_fingerprint_is_stable_across_creation_order(engine, other_engine):
    ddl(engine, ";\n".join(SCHEMA_PARTS))
    # same objects, different order, columns in a different order
    ddl(other_engine, ";\n".join([
        "CREATE SCHEMA reporting",
        "CREATE TABLE reporting.daily (n int, day date PRIMARY KEY)",
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$",
        "CREATE TYPE pair AS (a int, b text)",
        "CREATE DOMAIN posint AS int CHECK (VALUE > 0)",
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
        "CREATE TABLE customers (name text NOT NULL, m mood DEFAULT 'ok', id serial PRIMARY KEY)",
        "CREATE TABLE orders (note varchar(20) DEFAULT 'n', qty posint, "
        "id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, customer_id int, "
        "total numeric(10, 2) GENERATED ALWAYS AS (qty * 2) STORED)",
        "ALTER TABLE orders ADD CONSTRAINT orders_customer_id_fkey FOREIGN KEY (customer_id) "
        "REFERENCES customers (id)",
        "CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch()",
        "CREATE VIEW big_orders AS SELECT id, customer_id FROM orders WHERE qty > 10",
        "CREATE INDEX ix_orders_customer ON orders (customer_id) WHERE qty > 1",
        "INSERT INTO customers (name) VALUES ('data is not schema')",
    ]))
    with engine.connect() as a, other_engine.connect() as b:
        fa, fb = I.fingerprint_facts(a), I.fingerprint_facts(b)
        assert fa == fb, I.diff_facts(fa, fb)
        assert I.fingerprint(a) == I.fingerprint(b) == I.fingerprint_of(fa)
        kinds = {f.split(" ", 1)[0] for f in fa}
        assert {"schema", "table", "column", "constraint", "index", "enum", "domain", "sequence", "viewdef",
                "function", "trigger"} <= kinds
        assert "enum public.mood ('sad', 'ok', 'happy')" in fa


def test_fingerprint_survives_drop_and_re_add_of_a_column(engine):
    ddl(engine, ";".join(SCHEMA_PARTS))
    with engine.connect() as c, c.begin():
        before = I.fingerprint(c)
        # what a downgrade + upgrade does: the column comes back at the end
        c.exec_driver_sql("ALTER TABLE orders DROP COLUMN customer_id CASCADE")
        assert I.fingerprint(c) != before
        c.exec_driver_sql("ALTER TABLE orders ADD COLUMN customer_id int REFERENCES customers (id)")
        c.exec_driver_sql("CREATE INDEX ix_orders_customer ON orders (customer_id) WHERE qty > 1")
        c.exec_driver_sql("CREATE VIEW big_orders AS SELECT id, customer_id FROM orders WHERE qty > 10")
        assert I.fingerprint(c) == before


@pytest.mark.parametrize("change, expect", [
    ("ALTER TABLE orders ALTER COLUMN note TYPE varchar(40)",
     ["- column public.orders.note character varying(20) DEFAULT 'n'::character varying",
      "+ column public.orders.note character varying(40) DEFAULT 'n'::character varying"]),
    ("CREATE INDEX ix_orders_note ON orders (note)",
     ["+ index public.ix_orders_note CREATE INDEX ix_orders_note ON public.orders USING btree (note)"]),
    ("ALTER TABLE orders ALTER COLUMN note SET DEFAULT 'other'",
     ["- column public.orders.note character varying(20) DEFAULT 'n'::character varying",
      "+ column public.orders.note character varying(20) DEFAULT 'other'::character varying"]),
    ("ALTER TYPE mood ADD VALUE 'meh' BEFORE 'ok'",
     ["- enum public.mood ('sad', 'ok', 'happy')", "+ enum public.mood ('sad', 'meh', 'ok', 'happy')"]),
    ("ALTER TABLE customers ALTER COLUMN name DROP NOT NULL",
     ["- column public.customers.name text NOT NULL", "+ column public.customers.name text"]),
    ("CREATE OR REPLACE VIEW big_orders AS SELECT id, customer_id FROM orders WHERE qty > 11", None),
    ("CREATE OR REPLACE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN OLD; END$$", None),
    ("ALTER TABLE orders DISABLE TRIGGER orders_touch", None),
])
def test_fingerprint_changes_with_the_schema(engine, change, expect):
    ddl(engine, ";".join(SCHEMA_PARTS))
    with engine.connect() as c:
        before_facts = I.fingerprint_facts(c)
        c.rollback()
        ddl(engine, change)
        after_facts = I.fingerprint_facts(c)
    assert I.fingerprint_of(before_facts) != I.fingerprint_of(after_facts)
    diff = I.diff_facts(before_facts, after_facts)
    assert diff
    if expect is not None:
        assert diff == expect


def test_fingerprint_ignores_version_table_dbrev_schemas_and_search_path(engine):
    ddl(engine, ";".join(SCHEMA_PARTS))
    with engine.connect() as c, c.begin():
        base = I.fingerprint(c)
        c.exec_driver_sql("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        c.exec_driver_sql("INSERT INTO alembic_version VALUES ('abc123')")
        c.exec_driver_sql("CREATE SCHEMA dbrev; CREATE TABLE dbrev.journal (id serial PRIMARY KEY)")
        c.exec_driver_sql("CREATE SCHEMA dbrev_archive; CREATE TABLE dbrev_archive.orders_1 AS TABLE orders")
        assert I.fingerprint(c) == base
        # a version table in another schema is named explicitly
        c.exec_driver_sql("CREATE SCHEMA meta; CREATE TABLE meta.alembic_version (version_num varchar(32))")
        with_meta = I.fingerprint(c)
        assert with_meta != base  # schema "meta" and its table are user objects by default
        c.exec_driver_sql("DROP TABLE meta.alembic_version")
        only_schema = I.fingerprint(c)
        c.exec_driver_sql("CREATE TABLE meta.alembic_version (version_num varchar(32))")
        assert I.fingerprint(c, exclude_tables=[("meta", "alembic_version"), ("public", "alembic_version")]) \
            == only_schema
        assert I.run_checks(c, version_table_schema="meta").fingerprint != only_schema  # public one counted
        # the session's search_path changes how PostgreSQL prints names, not the facts
        c.exec_driver_sql("SET LOCAL search_path = reporting, public")
        assert I.fingerprint(c) == with_meta
        assert c.exec_driver_sql("SHOW search_path").scalar() == "reporting, public"  # put back


# ---------------------------------------------------------------------------
# row counts
# ---------------------------------------------------------------------------


def test_xact_row_changes_sees_deletes_before_commit(engine):
    ddl(engine, """
        CREATE TABLE parents (id int PRIMARY KEY);
        CREATE TABLE kids (id int PRIMARY KEY, parent_id int REFERENCES parents (id) ON DELETE CASCADE);
        INSERT INTO parents SELECT generate_series(1, 10);
        INSERT INTO kids SELECT g, g FROM generate_series(1, 10) g;
        CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
        INSERT INTO alembic_version VALUES ('a');
    """)
    with engine.connect() as c, c.begin():
        assert I.xact_row_changes(c) == {}
        c.exec_driver_sql("DELETE FROM parents WHERE id <= 3")       # cascades to 3 kids
        with c.begin_nested():
            c.exec_driver_sql("UPDATE kids SET parent_id = 4 WHERE id = 9")
        c.exec_driver_sql("INSERT INTO parents VALUES (11)")
        c.exec_driver_sql("DELETE FROM alembic_version")              # the version table is left out
        changes = I.xact_row_changes(c)
        assert changes == {"public.parents": (1, 0, 3), "public.kids": (0, 1, 3)}
        deleted = {t: v[2] for t, v in changes.items()}
        fs = I.row_count_findings(I.table_stats(c), I.table_stats(c), deleted, {"kids"}, set())
        assert [(f.object, f.count, f.severity) for f in fs] == [("public.parents", 3, "error")]
        c.rollback()


def test_exact_counts_and_table_stats(engine):
    ddl(engine, """
        CREATE TABLE a (id int); INSERT INTO a SELECT generate_series(1, 5);
        CREATE TABLE b_child () INHERITS (a); INSERT INTO b_child VALUES (100);
        CREATE TABLE alembic_version (version_num varchar(32));
    """)
    with engine.connect() as c, c.begin():
        stats = I.table_stats(c)
        assert set(stats) == {"public.a", "public.b_child"}
        assert all(s.estimate >= 0 for s in stats.values())
        counts = I.exact_counts(c, ["a", '"public"."b_child"', ("public", "a"), "public.nope"])
        assert counts == {"public.a": 5, "public.b_child": 1}  # ONLY: children not counted twice
        assert I.exact_counts(c, []) == {}


def test_quoting_of_odd_names(engine):
    ddl(engine, r'''
        CREATE SCHEMA "My Schema";
        CREATE TABLE "My Schema"."Parent ""P""" ("Key A" int, "key:b" text, PRIMARY KEY ("Key A", "key:b"));
        CREATE TABLE "My Schema"."Order Items%s" ("Id" serial PRIMARY KEY, "Ref A" int, "ref %(b)s" text);
        INSERT INTO "My Schema"."Parent ""P""" VALUES (1, 'x');
        INSERT INTO "My Schema"."Order Items%s" ("Id", "Ref A", "ref %(b)s") VALUES (1, 1, 'x'), (2, 1, 'y'), (3, 2, 'x');
        ALTER TABLE "My Schema"."Order Items%s" ADD CONSTRAINT "Items→Parent"
            FOREIGN KEY ("Ref A", "ref %(b)s") REFERENCES "My Schema"."Parent ""P""" NOT VALID;
    ''')
    items = '"My Schema"."Order Items%s"'
    with engine.connect() as c, c.begin():
        fs = I.catalog_findings(c)
        assert by_check(fs, "orphans")[f'{items}."Items→Parent"'].count == 2
        assert by_check(fs, "constraints").keys() == {f'{items}."Items→Parent"'}
        assert by_check(fs, "sequences")['"My Schema"."Order Items%s_Id_seq"'].count == 3
        assert items in I.table_stats(c)
        assert I.exact_counts(c, [items, ("My Schema", 'Parent "P"')]) == {items: 3, '"My Schema"."Parent ""P"""': 1}
        facts = I.fingerprint_facts(c)
        assert f'column {items}."ref %(b)s" text' in facts
        # the suggested fix is valid SQL as written
        fix = by_check(fs, "sequences")['"My Schema"."Order Items%s_Id_seq"'].message.split("run ", 1)[1].rstrip(".")
        c.exec_driver_sql(fix, execution_options=RAW)
        assert by_check(I.catalog_findings(c, ["sequences"]), "sequences") == {}
        c.exec_driver_sql(f'DELETE FROM {items} WHERE "Id" = 3', execution_options=RAW)
        assert I.xact_row_changes(c) == {items: (0, 0, 1)}


def test_checks_never_commit_and_work_in_autocommit(engine):
    with engine.connect() as c:
        with c.begin():
            c.exec_driver_sql("CREATE TABLE t (id serial PRIMARY KEY); INSERT INTO t (id) VALUES (5)")
            report = I.run_checks(c)
            assert [f.object for f in report.findings] == ["public.t_id_seq"]
            c.rollback()
        assert c.exec_driver_sql("SELECT to_regclass('public.t')").scalar() is None
    ddl(engine, "CREATE TABLE t (id serial PRIMARY KEY); INSERT INTO t (id) VALUES (5)")
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        report = I.run_checks(c)
        assert not report.passed and report.findings[0].count == 5
        with engine.connect() as c2:
            assert report.fingerprint == I.fingerprint(c2)
        assert c.exec_driver_sql("SHOW search_path").scalar() == '"$user", public'
        assert c.exec_driver_sql("SHOW statement_timeout").scalar() == "0"
        d = report.to_dict()
        assert set(d) == {"passed", "findings", "checked_at", "fingerprint", "duration_ms"}
        assert d["findings"][0]["check"] == "sequences" and d["checked_at"].endswith("+00:00")


# ---------------------------------------------------------------------------
# pure functions
# ---------------------------------------------------------------------------


def _stats(**tables):
    return {t: I.TableStat(t, n) for t, n in tables.items()}


def test_row_count_findings_pure():
    before = {"public.orders": I.TableStat("public.orders", 1000), "public.users": I.TableStat("public.users", 50),
              "audit.log": I.TableStat("audit.log", 7), 'public."Old Stuff"': I.TableStat('public."Old Stuff"', 3)}
    after = {"public.orders": I.TableStat("public.orders", 1000), "public.users": I.TableStat("public.users", 50),
             "public.new_t": I.TableStat("public.new_t", 0)}
    # audit.log and "Old Stuff" disappeared; only "Old Stuff" is declared
    fs = I.row_count_findings(before, after, {}, set(), {"public.Old Stuff"})
    assert [(f.check, f.object, f.count, f.severity) for f in fs] == [("rowCounts", "audit.log", 7, "error")]
    assert "gone after it" in fs[0].message
    # an unqualified name declares a table of that name in any schema
    assert I.row_count_findings(before, after, {}, set(), {"log", 'public."Old Stuff"'}) == []
    assert I.row_count_findings(before, after, {}, set(), {("audit", "log"), ("public", "Old Stuff")}) == []
    assert len(I.row_count_findings(before, after, {}, set(), {"other.log", "Old Stuff"})) == 1

    ok = {"audit.log", 'public."Old Stuff"'}
    # deletes: undeclared -> error; declared (qualified or not) -> nothing; new tables -> nothing
    fs = I.row_count_findings(before, after, {"public.orders": 12, "public.users": 0, "public.new_t": 4}, set(), ok)
    assert [(f.object, f.count, f.severity) for f in fs] == [("public.orders", 12, "error")]
    assert "12 rows were deleted from public.orders" in fs[0].message
    assert I.row_count_findings(before, after, {"public.orders": 12}, {"orders"}, ok) == []
    assert I.row_count_findings(before, after, {"public.orders": 12}, {"public.orders"}, ok) == []
    # tuples straight from xact_row_changes are accepted
    assert I.row_count_findings(before, after, {"public.orders": (0, 5, 2)}, set(), ok)[0].count == 2

    # exact counts: a decrease is an error; deletes with no net decrease are a warning; one finding per table
    fs = I.row_count_findings(before, after, {"public.orders": 12, "public.users": 3}, set(), ok,
                              exact_before={"public.orders": 1000, "public.users": 50},
                              exact_after={"public.orders": 990, "public.users": 50})
    assert [(f.object, f.count, f.severity) for f in fs] == [("public.orders", 10, "error"),
                                                               ("public.users", 3, "warning")]
    fs = I.row_count_findings(before, after, {}, {"users"}, ok,
                              exact_before={"public.orders": 10, "public.users": 50},
                              exact_after={"public.orders": 11, "public.users": 1})
    assert fs == []
    assert I.row_count_findings({}, {}, {}, set(), set()) == []


def test_new_findings_and_finding_basics():
    old = I.Finding("orphans", "public.o.fk", 3, "error", "3 orphans")
    same_worse = I.Finding("orphans", "public.o.fk", 9, "error", "9 orphans")
    fresh = I.Finding("indexes", "public.ix", 1, "error", "invalid")
    assert old.key == ("orphans", "public.o.fk")
    assert old.to_dict() == {"check": "orphans", "object": "public.o.fk", "count": 3, "severity": "error",
                             "message": "3 orphans"}
    assert I.new_findings([old], [same_worse, fresh]) == [fresh]
    assert I.new_findings([old], [same_worse, fresh], include_worse=True) == [same_worse, fresh]
    assert I.new_findings([], [old]) == [old]
    r = I.IntegrityReport(passed=True, findings=[], checked_at="2024-01-01T00:00:00+00:00")
    assert r.to_dict() == {"passed": True, "findings": [], "checked_at": "2024-01-01T00:00:00+00:00",
                           "fingerprint": None, "duration_ms": 0}
    with pytest.raises(ValueError):
        I.catalog_findings(None, ["nope"])


def test_diff_facts_pure():
    before = ["column public.t.a integer", "column public.t.b text", "index public.ix x"]
    after = ["column public.t.a bigint", "column public.t.b text", "table public.u TABLE"]
    assert I.diff_facts(before, after) == [
        "- column public.t.a integer", "+ column public.t.a bigint", "- index public.ix x", "+ table public.u TABLE"]
    assert I.diff_facts(before, before) == []
    many = I.diff_facts([], [f"table public.t{i} TABLE" for i in range(15)], limit=10)
    assert len(many) == 11 and many[-1] == "... and 5 more differences"
    long = I.diff_facts([], ["viewdef public.v AS SELECT\n   " + "x" * 500])
    assert long[0].startswith("+ viewdef public.v AS SELECT x") and len(long[0]) <= 242
    assert I.fingerprint_of(["b", "a"]) == I.fingerprint_of(["a", "b"]) != I.fingerprint_of(["a"])
