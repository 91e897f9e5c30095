#!/usr/bin/env python3
"""Archive cost: dbrev's archive of a 1-million-row table vs a plain CREATE TABLE ... AS copy.

Both run on the same server, the same table, inside a transaction that is rolled
back afterwards (so every repetition starts from the same state), alternating
baseline and dbrev.  The archive includes everything dbrev does before a drop:
the SHARE lock, the manifest row, the copy and its checksum (one pass).
Target: within 1.2x of the plain copy.

    python bench/bench_archive.py [--rows N] [--reps N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

import sqlalchemy as sa  # noqa: E402

import logging  # noqa: E402

from dbrev.pg import archive, state  # noqa: E402
from dbrev.core.classify import Effect  # noqa: E402
from dbrev.pg.ephemeral import PostgresServer, create_database  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    logging.getLogger("dbrev").setLevel(logging.ERROR)  # the >1 s warnings are expected here
    server = PostgresServer().start()
    try:
        url = create_database(server.url())
        eng = sa.create_engine(url)
        t0 = time.perf_counter()
        with eng.begin() as c:
            c.execute(sa.text("CREATE TABLE events (id bigserial PRIMARY KEY, account_id int NOT NULL, "
                              "kind text NOT NULL, payload text, created_at timestamptz NOT NULL DEFAULT now())"))
            c.execute(sa.text(
                "INSERT INTO events (account_id, kind, payload) SELECT g % 5000, 'kind' || (g % 17), "
                "md5(g::text) || repeat('x', g % 40) FROM generate_series(1, :n) g"), {"n": args.rows})
        with eng.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            c.execute(sa.text("VACUUM ANALYZE events"))
        with eng.connect() as c:
            state.ensure_schema(c)
        print(f"table events: {args.rows:,} rows, built in {time.perf_counter() - t0:.1f}s", flush=True)

        def timed(fn) -> float:
            with eng.connect() as c:
                tx = c.begin()
                t = time.perf_counter()
                fn(c)
                dt = time.perf_counter() - t
                tx.rollback()
            return dt

        cases = {
            "whole table (drop_table)": (
                lambda c: c.execute(sa.text("CREATE TABLE copy_t AS TABLE events")),
                lambda c: archive.preserve(c, "dbrev", "public.alembic_version", "bench01", "downgrade",
                                           [Effect("drop_table", None, "events")])),
            "one column (drop_column)": (
                lambda c: c.execute(sa.text("CREATE TABLE copy_c AS SELECT id, payload FROM events")),
                lambda c: archive.preserve(c, "dbrev", "public.alembic_version", "bench01", "downgrade",
                                           [Effect("drop_column", None, "events", "payload")])),
        }
        rows = []
        real_checksum = archive.table_checksum
        for name, (base_fn, dbrev_fn) in cases.items():
            timed(base_fn)  # warm the cache
            base, arch, bare = [], [], []
            for _ in range(args.reps):
                base.append(timed(base_fn))
                arch.append(timed(dbrev_fn))
                archive.table_checksum = lambda conn, target, method=None: "xor64:0"  # diagnostic only
                try:
                    bare.append(timed(dbrev_fn))
                finally:
                    archive.table_checksum = real_checksum
            b, a, n = statistics.median(base), statistics.median(arch), statistics.median(bare)
            rows.append((name, b, a, a / b))
            print(f"  {name}: CREATE TABLE AS {b:.3f}s, dbrev archive {a:.3f}s, ratio {a / b:.2f}x "
                  f"(of which the checksum pass {a - n:.3f}s; without it {n / b:.2f}x)", flush=True)
        print()
        print(f"{'archive of ' + format(args.rows, ',') + ' rows':<34} {'CTAS copy':>10} {'dbrev':>10} {'ratio':>7}"
              f"  target")
        for name, b, a, r in rows:
            print(f"{name:<34} {b:>9.3f}s {a:>9.3f}s {r:>6.2f}x  <= 1.2x {'ok' if r <= 1.2 else 'MISSED'}")
        eng.dispose()
        return 0
    finally:
        server.cleanup()


if __name__ == "__main__":
    sys.exit(main())
