#!/usr/bin/env python3
"""Rehearsed apply vs plain apply (issue 14): what proving the way back costs.

The same 20-step history as ``bench_engine.py`` (its ``STEPS``), applied from an empty
database to head by ``dbrev apply --json`` (CLI) with ``--rehearse=never`` (plain) and with
``--rehearse=report`` (the default: after the upgrade and its verification, a savepoint, the
20-step downgrade back to base, a fingerprint compare, the row counts of what it removes, and
``ROLLBACK TO SAVEPOINT``), on a fresh database each time, in a rotating order, several
repetitions; median wall times and the ratio (target: within 1.8x).  Also the in-process
figures (``dbrev.engine.verbs.apply(..., in_process=True)``), which leave out the CLI's start-up, and the
plain downgrade of the same history (head -> base, not rehearsed): the rehearsal runs the same
statements, so plain upgrade + those statements is the floor of the ratio, printed next to it.

Runnable alone (``.venv/bin/python bench/bench_rehearse.py [--reps N]``) or through
``bench/run_all.py``.  Starts and stops its own throwaway PostgreSQL.  Asserts no time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "operator"))

from bench_engine import DBREV, at_head, say, table, timed_run, write_history  # noqa: E402

from dbrev.pg.ephemeral import PostgresServer, drop_database  # noqa: E402

TARGET = 1.8


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--only", default=None, help="ignored (run_all passes it to every benchmark)")
    ap.add_argument("--json-out", default=None)
    args, _ = ap.parse_known_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dbrev-bench-rehearse-"))
    pg = PostgresServer().start()
    try:
        _, versions, revs = write_history(work / "alembic")
        head = revs[-1]
        env = dict(os.environ)
        env.pop("DBREV_DATABASE_URL", None)

        def cli(mode: str) -> float:
            url = pg.create_database()
            try:
                dt, proc = timed_run([DBREV, "apply", "--migrations", str(versions), "-r", "head",
                                      "--database-url", url, "--json", f"--rehearse={mode}"], env=env)
                doc = json.loads(proc.stdout)
                assert doc["result"] == "applied" and at_head(url, head), doc
                if mode != "never":
                    rr = doc["rollback_readiness"]
                    assert rr["status"] in ("Proven", "Lossy"), rr
                    cli.readiness = rr
                return dt
            finally:
                drop_database(pg.url(), url.rsplit("/", 1)[1])

        def down() -> float:
            """The plain downgrade of the same history (head -> base, no rehearsal): what a real rollback costs."""
            url = pg.create_database()
            try:
                timed_run([DBREV, "apply", "--migrations", str(versions), "-r", "head", "--database-url", url,
                           "--json", "--rehearse=never"], env=env)
                dt, proc = timed_run([DBREV, "apply", "--migrations", str(versions), "-r", "base", "--database-url",
                                      url, "--json", "--rehearse=never", "--allow-downgrade", "--allow-data-loss"],
                                     env=env)
                doc = json.loads(proc.stdout)
                assert doc["result"] == "applied" and doc["direction"] == "downgrade", doc
                down.steps = sum(x["duration_seconds"] for x in doc["steps"])
                return dt
            finally:
                drop_database(pg.url(), url.rsplit("/", 1)[1])

        def inproc(mode: str) -> float:
            from dbrev.engine.verbs import apply
            from dbrev.core.options import DbOptions, Policy, RunRequest

            url = pg.create_database()
            try:
                req = RunRequest(db=DbOptions(url=url), migrations=str(versions), target="head",
                                 policy=Policy(downgrade="Deny", data_loss="Deny", rehearse=mode.capitalize()))
                t0 = time.perf_counter()
                res = apply(req, in_process=True)
                dt = time.perf_counter() - t0
                assert res["result"] == "applied", res
                return dt
            finally:
                drop_database(pg.url(), url.rsplit("/", 1)[1])

        say(f"[rehearse] 20-step history; warming up (1 run each, not counted); {args.reps} repetitions")
        cli("never"), cli("report"), inproc("never"), inproc("report")
        times: dict[str, list[float]] = {k: [] for k in ("cli never", "cli report", "inproc never", "inproc report",
                                                         "cli down")}
        down_steps: list[float] = []
        for i in range(args.reps):
            order = [("cli", "never"), ("cli", "report"), ("inproc", "never"), ("inproc", "report")]
            if i % 2:
                order = [order[1], order[0], order[3], order[2]]
            for kind, mode in order:
                times[f"{kind} {mode}"].append((cli if kind == "cli" else inproc)(mode))
            times["cli down"].append(down())
            down_steps.append(down.steps)
        med = {k: statistics.median(v) for k, v in times.items()}
        r_cli = med["cli report"] / med["cli never"]
        r_in = med["inproc report"] / med["inproc never"]
        rows = [["dbrev apply --rehearse=never (CLI)", f"{med['cli never']:.3f}s", "1.00x", ""],
                ["dbrev apply --rehearse=report (CLI)", f"{med['cli report']:.3f}s", f"{r_cli:.2f}x",
                 "ok" if r_cli <= TARGET else f"over {TARGET}x"],
                ["engine.apply, rehearse Never (in process)", f"{med['inproc never']:.3f}s", "1.00x", ""],
                ["engine.apply, rehearse Report (in process)", f"{med['inproc report']:.3f}s", f"{r_in:.2f}x",
                 "ok" if r_in <= TARGET else f"over {TARGET}x"]]
        say()
        say(table(rows, ["20-step upgrade from empty, median", "wall", "ratio", f"target <= {TARGET}x"]))
        rr = getattr(cli, "readiness", {})
        say(f"\nreadiness recorded: {rr.get('status')} ({str(rr.get('message'))[:160]})")
        over = (rr.get("duration_seconds") or 0) - (rr.get("steps_seconds") or 0)
        say(f"rehearsal in the last CLI run: {rr.get('duration_seconds')}s, of which the 20 downgrade steps' own "
            f"statements {rr.get('steps_seconds')}s and dbrev's part (plan of the way back, savepoint, "
            f"fingerprint, catalog, counts) {over:.3f}s")
        d_wall, d_steps = med["cli down"], statistics.median(down_steps)
        floor = (med["cli never"] + d_steps) / med["cli never"]
        say(f"the plain downgrade of the same history (dbrev apply -r base, not rehearsed), median: {d_wall:.3f}s "
            f"wall, its 20 steps {d_steps:.3f}s; so a rehearsal that runs those same statements cannot be cheaper "
            f"than {floor:.2f}x of the plain apply (plain upgrade + the downgrade's steps), against the measured "
            f"{r_cli:.2f}x")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps({"median": med, "ratio_cli": r_cli, "ratio_inproc": r_in,
                                                       "down_steps_median": d_steps, "floor_ratio": floor,
                                                       "samples": times}, indent=2))
        return 0
    finally:
        pg.cleanup()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
