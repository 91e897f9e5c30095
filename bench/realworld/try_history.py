#!/usr/bin/env python3
"""Run dbrev over a large real-world Alembic history: Prefect's PostgreSQL migrations.

Prefect (https://pypi.org/project/prefect/) ships 120 Alembic revisions for
PostgreSQL inside its wheel (``prefect/server/database/_migrations/versions/
postgresql``); about a third import ``prefect`` itself, a quarter use
``autocommit_block()`` for ``CREATE INDEX CONCURRENTLY``, several are data
migrations that read and write rows through ``op.get_bind()``.  Nothing of
Prefect is copied into this repository: the scripts are used where pip put them.

Set-up (once; PyPI only, a venv of its own because Prefect brings ~250 packages)::

    python3 bench/realworld/try_history.py --setup        # /tmp/rw-venv: prefect==3.9.1 + dbrev (editable)

then::

    .venv/bin/python bench/realworld/try_history.py [--venv /tmp/rw-venv] [--json-out FILE]

What it does, printing each command's outcome (and the exact error when one fails):

1. locates the versions folder; counts revisions, merges, branch points, scripts
   that import the application, use autocommit blocks or read data;
2. ``dbrev history`` and ``dbrev plan --from base -r head`` (offline, timed): how many
   steps render offline, which do not and why, destructive / autocommit / heavy-lock
   steps; the same for the full downgrade plan ``--from head -r base``;
3. on a throwaway PostgreSQL: ``dbrev apply -r head`` (timed), ``dbrev verify``,
   ``dbrev current``; then Prefect's own ``prefect server database upgrade`` (its
   env.py) on a second database, timed, and a ``pg_dump --schema-only`` diff of the two;
4. downgrades with ``--allow-downgrade --allow-data-loss``: ``-5``, to the midpoint
   of the history, to ``base``; each followed by ``verify`` and ``apply -r head``;
5. a data-migration check: stops before Prefect's backfill migrations, inserts rows
   they must rewrite, upgrades, and checks the rows were backfilled.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "operator"))

from dbrev.pg.ephemeral import PostgresServer  # noqa: E402

PROJECT = "prefect"
PROJECT_VERSION = "3.9.1"
DEFAULT_VENV = Path("/tmp/rw-venv")
LOCATE = ("import pathlib, prefect, prefect.server.database as d; "
          "print(prefect.__version__); "
          "print(pathlib.Path(d.__file__).parent / '_migrations' / 'versions' / 'postgresql')")


def say(msg: str = "") -> None:
    print(msg, flush=True)


def setup(venv: Path) -> None:
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + [f"{PROJECT}=={PROJECT_VERSION}", "-e", str(ROOT)], check=True)


class Runner:
    def __init__(self, venv: Path, versions: Path, env: dict):
        self.dbrev = str(venv / "bin" / "dbrev")
        self.versions = versions
        self.env = env
        self.log: list[dict] = []

    def run(self, args: list[str], url: str | None = None, label: str | None = None) -> dict:
        cmd = [self.dbrev, *args, "--migrations", str(self.versions), "--json"]
        if url:
            cmd += ["--database-url", url]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        dt = time.perf_counter() - t0
        try:
            doc = json.loads(proc.stdout)
        except ValueError:
            doc = {"unparsed_stdout": proc.stdout[-2000:]}
        rec = {"label": label or " ".join(args[:3]), "args": args, "exit": proc.returncode, "seconds": round(dt, 2),
               "doc": doc, "stderr_tail": _errors(proc.stderr)}
        self.log.append(rec)
        return rec


def _errors(stderr: str, limit: int = 6) -> list[str]:
    """The ERROR/WARNING messages of dbrev's JSON log lines (else the raw tail)."""
    out = []
    for line in stderr.splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            if line.strip():
                out.append(line.strip()[:300])
            continue
        if r.get("level") in ("ERROR", "WARNING"):
            msg = r.get("message", "")
            if r.get("error_message"):
                msg += f": {r['error_type']}: {r['error_message'].splitlines()[0][:300]}"
            elif r.get("duration_ms"):
                msg += f" ({r.get('operation')}, {r['duration_ms']:.0f} ms)"
            out.append(msg)
    return out[-limit:]


def static_scan(versions: Path) -> dict:
    files = sorted(p for p in versions.glob("*.py") if not p.name.startswith("__"))
    pat = {
        "import_app": re.compile(r"^\s*(import prefect|from prefect)", re.M),
        "autocommit_block": re.compile(r"autocommit_block\(\)"),
        "concurrently": re.compile(r"CONCURRENTLY", re.I),
        "get_bind": re.compile(r"op\.get_bind\(\)"),
        "offline_guard": re.compile(r"is_offline_mode|as_sql"),
        "raises_in_downgrade": re.compile(r"def downgrade\(\)[^\n]*\n(?:\s*(?:#.*|\"\"\"[\s\S]*?\"\"\")?\n)*\s*raise"),
    }
    out = {k: [] for k in pat}
    for f in files:
        text = f.read_text()
        for k, rx in pat.items():
            if rx.search(text):
                out[k].append(f.name)
    return {"files": len(files), **{k: len(v) for k, v in out.items()}, "names": out}


def summarize_plan(doc: dict) -> dict:
    steps = doc.get("steps", [])
    not_rendered = [s for s in steps if not s.get("renderable")]
    reasons: dict[str, list[str]] = {}
    for s in not_rendered:
        err = s.get("render_error") or "?"
        key = re.sub(r"at [^ ]+\.py:\d+", "at <script>", err)
        key = re.sub(r"'[0-9a-f-]{8,}'", "'<id>'", key)[:200]
        reasons.setdefault(key, []).append(s["revision"])
    return {
        "steps": len(steps), "renderable": len(steps) - len(not_rendered), "not_renderable": len(not_rendered),
        "not_renderable_reasons": reasons,
        "destructive": [(s["revision"], s["doc"], [e.get("detail") or e.get("kind") for e in s["effects"]
                                                    if e.get("destructive")]) for s in steps if s["destructive"]],
        "needs_autocommit": [(s["revision"], s["autocommit_reasons"][:2]) for s in steps if s["needs_autocommit"]],
        "heavy_locks": sum(1 for s in steps if s["heavy_locks"]),
        "irreversible": [s["revision"] for s in steps if s.get("irreversible")],
        "reads_data": [s["revision"] for s in steps if s.get("reads_data")],
        "transaction": doc.get("transaction"), "hash": doc.get("hash"), "warnings": doc.get("warnings", []),
    }


def apply_summary(rec: dict, brief: bool = False) -> str:
    d = rec["doc"]
    if "result" not in d:
        return f"exit {rec['exit']} in {rec['seconds']}s: {json.dumps(d)[:400]}"
    err = d.get("error") or {}
    s = (f"exit {rec['exit']}, result={d['result']} in {rec['seconds']}s "
         f"(engine {d.get('duration_seconds')}s), transaction={d.get('transaction')}, "
         f"{len([x for x in d.get('steps', []) if x.get('status') == 'applied'])} step(s) applied, "
         f"now at {d.get('current_revisions')}")
    if err:
        msg = err.get("message") or ""
        s += f"\n      error: {err.get('reason')} {err.get('error_type') or ''} at {err.get('location')} " \
             f"(step {err.get('step')}): {msg[:300] + ' ...' if brief and len(msg) > 300 else msg}"
    if brief:
        return s
    rb = d.get("rollback")
    if rb:
        s += f"\n      rollback: {rb.get('method')} success={rb.get('success')}"
    integ = d.get("integrity") or {}
    for f in integ.get("findings", []):
        s += f"\n      {f['severity']} [{f['check']}] {f['object']}: {f['message'][:200]}"
    for w in d.get("warnings", [])[:5]:
        s += f"\n      warning: {w[:200]}"
    return s


def pg_dump_schema(pg: PostgresServer, db: str) -> list[str]:
    proc = subprocess.run([str(pg.bindir / "pg_dump"), "--schema-only", "--no-owner", "--no-privileges",
                           "-N", "dbrev", "-N", "dbrev_archive", "-h", "127.0.0.1", "-p", str(pg.port),
                           "-U", pg.user, db], capture_output=True, text=True, check=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip() and not ln.startswith("--")
             and not ln.startswith(("SET ", "SELECT pg_catalog.set_config", "\\restrict", "\\unrestrict"))]
    return lines


def normalized_ddl(lines: list[str]) -> list[str]:
    """Group pg_dump output into statements and sort them (object order differs between histories)."""
    stmts, cur = [], []
    for ln in lines:
        cur.append(ln)
        if ln.rstrip().endswith(";"):
            stmts.append("\n".join(cur))
            cur = []
    return sorted(stmts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--setup", action="store_true", help=f"create the venv: {PROJECT}=={PROJECT_VERSION} + dbrev")
    ap.add_argument("--json-out", metavar="FILE")
    ap.add_argument("--parts", default="offline,apply,project-env,round-trips,data",
                    help="comma-separated subset of: offline, apply, project-env, round-trips, data")
    args = ap.parse_args(argv)
    parts = set(args.parts.split(","))
    if args.setup:
        setup(args.venv)
        if not args.json_out:
            return 0
    py = args.venv / "bin" / "python"
    if not py.exists():
        say(f"no venv at {args.venv}: run with --setup first")
        return 2
    loc = subprocess.run([str(py), "-c", LOCATE], capture_output=True, text=True, check=True).stdout.split()
    version, versions = loc[0], Path(loc[1])
    home = Path(tempfile.mkdtemp(prefix="rw-prefect-home-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBREV_", "PREFECT_"))}
    env.update({"PREFECT_HOME": str(home), "DBREV_LOG_LEVEL": "warning"})
    r = Runner(args.venv, versions, env)
    report: dict = {"project": PROJECT, "version": version, "versions_folder": str(versions)}
    say(f"== {PROJECT} {version}: {versions}")

    scan = static_scan(versions)
    report["static"] = scan
    say(f"   {scan['files']} script files; import {PROJECT}: {scan['import_app']}; autocommit_block(): "
        f"{scan['autocommit_block']}; CONCURRENTLY: {scan['concurrently']}; op.get_bind(): {scan['get_bind']}; "
        f"offline-mode guards: {scan['offline_guard']}")

    # -- offline ----------------------------------------------------------------
    h = r.run(["history"], label="history")
    revs = h["doc"].get("revisions", [])
    merges = [e["revision"] for e in revs if e["is_merge"]]
    bps = [e["revision"] for e in revs if e["is_branch_point"]]
    roots = [e["revision"] for e in revs if not e["down_revisions"]]
    report["history"] = {"exit": h["exit"], "seconds": h["seconds"], "revisions": len(revs),
                         "heads": h["doc"].get("heads"), "roots": roots, "merges": merges, "branch_points": bps,
                         "depends_on": sum(1 for e in revs if e["depends_on"]),
                         "branch_labels": sum(1 for e in revs if e["branch_labels"])}
    say(f"-- dbrev history: exit {h['exit']} in {h['seconds']}s: {len(revs)} revisions, heads {h['doc'].get('heads')}, "
        f"roots {roots}, {len(merges)} merges, {len(bps)} branch points")
    if h["exit"] != 0:
        say(f"   {h['doc']}\n   {h['stderr_tail']}")
        return 1
    order = [e["revision"] for e in reversed(revs)]  # oldest first (linear or not, a topological order)

    if "offline" in parts:
        offline(r, report)
    if not parts & {"apply", "project-env", "round-trips", "data"}:
        return _finish(args, report, r, home)
    pg = PostgresServer()
    try:
        pg.start()
        say(f"-- PostgreSQL on port {pg.port}")
        url = pg.create_database("rw_dbrev")
        if parts & {"apply", "project-env", "round-trips"}:
            online(r, report, pg, url)
            if report["apply_head"]["doc"].get("result") != "applied" and PERCENT_RX.search(
                    json.dumps(report["apply_head"]["doc"].get("error") or {})):
                # Prefect runs its scripts on asyncpg; two scripts pass a literal '%' to exec_driver_sql, which
                # psycopg (dbrev's driver) reads as a placeholder.  Go on with a patched copy in a temp folder.
                patched = patched_copy(r.versions, home / "patched-versions")
                report["patched"] = patched
                say(f"-- the unmodified history cannot reach head through psycopg; patched a COPY of "
                    f"{len(patched)} script(s) ('%' -> '%%' in exec_driver_sql queries): {', '.join(patched)}")
                r.versions = home / "patched-versions"
                url = pg.create_database("rw_dbrev_patched")
                online(r, report, pg, url, key="patched_")
        if "project-env" in parts:
            report["project_env"] = project_env_compare(pg, args.venv, env, home, url.rsplit("/", 1)[1], r.versions)
        if "round-trips" in parts:
            round_trips(r, report, url, order)
        if "data" in parts:
            report["data_migration"] = data_migration_check(pg, r, order)
    finally:
        pg.cleanup()
    return _finish(args, report, r, home)


def _finish(args, report: dict, r: Runner, home: Path) -> int:
    shutil.rmtree(home, ignore_errors=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({**report, "commands": [_slim_rec(x) for x in r.log]},
                                                  indent=2, default=str))
    return 0


def offline(r: Runner, report: dict) -> None:
    up = r.run(["plan", "--from", "base", "-r", "head"], label="plan base->head")
    report["plan_up"] = {"exit": up["exit"], "seconds": up["seconds"], **summarize_plan(up["doc"])}
    pu = report["plan_up"]
    say(f"-- dbrev plan --from base -r head: exit {up['exit']} in {up['seconds']}s: {pu['steps']} steps, "
        f"{pu['renderable']} rendered offline, {pu['not_renderable']} not; transaction {pu['transaction']}; "
        f"{len(pu['destructive'])} destructive, {len(pu['needs_autocommit'])} need autocommit, "
        f"{pu['heavy_locks']} with heavy locks")
    for why, rs in pu["not_renderable_reasons"].items():
        say(f"     not rendered ({len(rs)}): {why}  [{', '.join(rs[:4])}{' ...' if len(rs) > 4 else ''}]")
    for rev, doc, what in pu["destructive"]:
        say(f"     destructive upgrade {rev} ({doc}): {'; '.join(what)[:160]}")
    down = r.run(["plan", "--from", "heads", "-r", "base"], label="plan head->base")
    if down["exit"] != 0:  # older dbrev: --from takes ids only
        down = r.run(["plan", "--from", ",".join(report["history"]["heads"]), "-r", "base"], label="plan head->base")
    report["plan_down"] = {"exit": down["exit"], "seconds": down["seconds"], **summarize_plan(down["doc"])}
    pd = report["plan_down"]
    say(f"-- dbrev plan --from <head> -r base: exit {down['exit']} in {down['seconds']}s: {pd['steps']} steps, "
        f"{pd['renderable']} rendered offline, {pd['not_renderable']} not; {len(pd['destructive'])} destructive; "
        f"{len(pd['irreversible'])} irreversible")
    for why, rs in pd["not_renderable_reasons"].items():
        say(f"     not rendered ({len(rs)}): {why}  [{', '.join(rs[:4])}{' ...' if len(rs) > 4 else ''}]")
    if down["exit"] != 0:
        say(f"     {json.dumps(down['doc'])[:600]}")


# full apply: without and with --allow-data-loss (a fresh install of a long history drops what it created)
ALLOW = ["--allow-data-loss"]
DOWN = ["--allow-downgrade", "--allow-data-loss"]
NO_ROWCOUNTS = ["--verify", "constraints,indexes,sequences,orphans,fingerprint"]


PERCENT_RX = re.compile(r"only '%s', '%b', '%t' are allowed as placeholders")


def patched_copy(versions: Path, dest: Path) -> list[str]:
    """Copy the versions folder; in scripts that send SQL with a literal % straight to the driver, double it."""
    shutil.copytree(versions, dest, ignore=shutil.ignore_patterns("__pycache__"))
    changed = []
    for f in sorted(dest.glob("*.py")):
        text = f.read_text()
        if "exec_driver_sql" in text and "'%I.%I'" in text:
            f.write_text(text.replace("'%I.%I'", "'%%I.%%I'"))
            changed.append(f.name)
    return changed


def online(r: Runner, report: dict, pg: PostgresServer, url: str, key: str = "") -> None:
    if not key:
        a0 = r.run(["apply", "-r", "head"], url, label="apply head (default policy)")
        report["apply_head_default"] = _slim_rec(a0)
        say(f"-- dbrev apply -r head (default policy): {apply_summary(a0, brief=True)}")
    a = r.run(["apply", "-r", "head", *ALLOW], url, label=f"{key}apply head")
    report[f"{key}apply_head"] = {"exit": a["exit"], "seconds": a["seconds"], "doc": _slim(a["doc"]),
                                  "stderr": a["stderr_tail"]}
    report.setdefault("apply_head", report[f"{key}apply_head"])
    say(f"-- dbrev apply -r head --allow-data-loss: {apply_summary(a)}")
    slow = sorted(a["doc"].get("steps", []), key=lambda s: -(s.get("duration_seconds") or 0))[:3]
    if slow:
        say("     slowest steps: " + ", ".join(f"{s['revision']} {s['duration_seconds']}s" for s in slow))
    for line in a["stderr_tail"]:
        say(f"     log: {line[:300]}")
    v = r.run(["verify"], url, label="verify")
    report[f"{key}verify_head"] = {"exit": v["exit"], "seconds": v["seconds"], "doc": v["doc"]}
    say(f"-- dbrev verify: exit {v['exit']} in {v['seconds']}s, passed={v['doc'].get('passed')}, "
        f"{len(v['doc'].get('findings', []))} finding(s)")
    for f in v["doc"].get("findings", [])[:8]:
        say(f"     {f['severity']} [{f['check']}] {f['object']}: {f['message'][:200]}")
    c = r.run(["current"], url, label="current")
    report[f"{key}current"] = c["doc"]
    say(f"-- dbrev current: exit {c['exit']}: {c['doc'].get('revisions')} at_head={c['doc'].get('at_head')}")


def round_trips(r: Runner, report: dict, url: str, order: list[str]) -> None:
    """Downgrades (-5, the midpoint, base), each verified and followed by an upgrade to head."""
    report["round_trips"] = []
    mid = order[len(order) // 2] if order else None
    targets = [("-5", "-5")]
    if mid:
        targets.append((f"midpoint {mid} ({len(order) // 2 + 1}/{len(order)})", mid))
    targets.append(("base", "base"))
    for label, target in targets:
        d = r.run(["apply", "-r", target, *DOWN], url, label=f"down {label}")
        say(f"-- dbrev apply -r {target} --allow-downgrade --allow-data-loss: {apply_summary(d)}")
        rec = {"target": label, "down": _slim_rec(d)}
        if d["doc"].get("result") != "applied":
            # the rowCounts check: run the same downgrade without it, to see whether the steps themselves work
            d2 = r.run(["apply", "-r", target, *DOWN, *NO_ROWCOUNTS], url, label=f"down {label} (no rowCounts)")
            say(f"   the same without the rowCounts check (--verify {NO_ROWCOUNTS[1]}): {apply_summary(d2)}")
            rec["down_without_rowcounts"] = _slim_rec(d2)
        vv = r.run(["verify"], url, label=f"verify after down {label}")
        say(f"     verify: exit {vv['exit']}, passed={vv['doc'].get('passed')}"
            + "".join(f"\n     {f['severity']} [{f['check']}] {f['object']}: {f['message'][:200]}"
                      for f in vv["doc"].get("findings", [])[:5]))
        u = r.run(["apply", "-r", "head", *ALLOW], url, label=f"up again from {label}")
        say(f"-- dbrev apply -r head --allow-data-loss (again): {apply_summary(u)}")
        if u["doc"].get("result") not in ("applied", "noop"):
            u2 = r.run(["apply", "-r", "head", *ALLOW, *NO_ROWCOUNTS], url, label=f"up again from {label} (no rowCounts)")
            say(f"   the same without the rowCounts check: {apply_summary(u2)}")
            rec["up_without_rowcounts"] = _slim_rec(u2)
        rec.update({"verify": vv["doc"], "up": _slim_rec(u)})
        report["round_trips"].append(rec)


def _slim(doc: dict) -> dict:
    d = dict(doc)
    if "steps" in d:
        d["steps"] = [{k: s.get(k) for k in ("revision", "direction", "duration_seconds", "status")}
                      for s in d["steps"]]
    return d


def _slim_rec(rec: dict) -> dict:
    return {"label": rec["label"], "exit": rec["exit"], "seconds": rec["seconds"],
            "result": rec["doc"].get("result"), "error": rec["doc"].get("error"),
            "current": rec["doc"].get("current_revisions"), "stderr": rec["stderr_tail"]}


def project_env_compare(pg: PostgresServer, venv: Path, env: dict, home: Path, dbrev_db: str,
                        versions: Path) -> dict:
    """Prefect's own upgrade (its env.py: async engine, transaction_per_migration) vs dbrev's, schema diff."""
    from dbrev.pg.ephemeral import create_database

    url2 = create_database(pg.url(), "rw_prefect")
    penv = {**env, "PREFECT_API_DATABASE_CONNECTION_URL": url2.replace("postgresql+psycopg", "postgresql+asyncpg"),
            "PREFECT_HOME": str(home)}
    t0 = time.perf_counter()
    proc = subprocess.run([str(venv / "bin" / "prefect"), "server", "database", "upgrade", "-y"],
                          capture_output=True, text=True, env=penv)
    dt = time.perf_counter() - t0
    out = {"exit": proc.returncode, "seconds": round(dt, 2), "stderr_tail": proc.stderr.strip().splitlines()[-5:]}
    say(f"-- prefect server database upgrade -y (Prefect's env.py): exit {proc.returncode} in {dt:.2f}s")
    if proc.returncode != 0:
        for ln in out["stderr_tail"]:
            say(f"     {ln[:300]}")
        return out
    a = normalized_ddl(pg_dump_schema(pg, dbrev_db))
    b = normalized_ddl(pg_dump_schema(pg, "rw_prefect"))
    diff = list(difflib.unified_diff(b, a, "prefect-env", "dbrev", lineterm="", n=0))
    out["schema_statements"] = (len(a), len(b))
    out["schema_diff"] = diff[:80]
    same = not diff
    say(f"     pg_dump --schema-only: {len(a)} statements via dbrev, {len(b)} via Prefect's env.py: "
        f"{'identical' if same else 'DIFFERENT'}")
    for ln in diff[2:40]:
        say(f"       {ln[:200]}")
    # take over the database Prefect migrated: state, verify, then a downgrade through 7218aad17905 (whose
    # constraint name Prefect's env.py rewrote through its metadata naming convention)
    r = Runner(venv, versions, env)
    c = r.run(["current"], url2, label="takeover current")
    v = r.run(["verify"], url2, label="takeover verify")
    say(f"-- dbrev on the database Prefect migrated: current {c['doc'].get('revisions')} (exit {c['exit']}), "
        f"verify exit {v['exit']} passed={v['doc'].get('passed')}")
    out["takeover"] = {"current": c["doc"], "verify": v["doc"]}
    hist = r.run(["history"], label="history").get("doc", {}).get("revisions", [])
    newest_first = [e["revision"] for e in hist]
    if "7218aad17905" in newest_first:
        n = newest_first.index("7218aad17905") + 1
        d = r.run(["apply", "-r", f"-{n}", *DOWN], url2, label=f"takeover down -{n}")
        say(f"-- dbrev apply -r -{n} (below 7218aad17905) on the database Prefect migrated: {apply_summary(d)}")
        out["takeover"]["down"] = _slim_rec(d)
    return out


def data_migration_check(pg: PostgresServer, r: Runner, order: list[str]) -> dict:
    """Stop before Prefect's state_name backfill (14dc68cc5853), add rows it must fill, upgrade, check them."""
    import psycopg

    target = "14dc68cc5853"
    if target not in order:
        return {"skipped": f"{target} not in this history"}
    before = order[order.index(target) - 1]
    from dbrev.pg.ephemeral import create_database

    url = create_database(pg.url(), "rw_data")
    a = r.run(["apply", "-r", before, *ALLOW], url, label=f"apply {before}")
    say(f"-- data migration: dbrev apply -r {before} (just before the backfill {target}): {apply_summary(a)}")
    dsn = f"host=127.0.0.1 port={pg.port} user={pg.user} dbname=rw_data"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO flow (id, name) VALUES (gen_random_uuid(), 'bench-flow')")
        conn.execute("""
            WITH f AS (SELECT id FROM flow LIMIT 1), runs AS (
                INSERT INTO flow_run (id, flow_id, name) SELECT gen_random_uuid(), f.id, 'run-' || g
                FROM f, generate_series(1, 1200) g RETURNING id)
            INSERT INTO flow_run_state (id, flow_run_id, type, name, timestamp)
            SELECT gen_random_uuid(), id, 'COMPLETED', 'Completed', now() FROM runs""")
        conn.execute("""UPDATE flow_run SET state_id = s.id FROM flow_run_state s WHERE s.flow_run_id = flow_run.id""")
        n_null = conn.execute("SELECT count(*) FROM flow_run WHERE state_name IS NULL").fetchone()[0]
    u = r.run(["apply", "-r", target], url, label=f"apply {target}")
    say(f"-- data migration: {n_null} flow runs with state_name NULL; dbrev apply -r {target}: {apply_summary(u)}")
    with psycopg.connect(dsn, autocommit=True) as conn:
        left = conn.execute("SELECT count(*) FROM flow_run WHERE state_name IS NULL").fetchone()[0]
        names = conn.execute("SELECT state_name, count(*) FROM flow_run GROUP BY 1").fetchall()
    say(f"     after: {left} still NULL; state_name counts {names}")
    h = r.run(["apply", "-r", "head", *ALLOW], url, label="apply head with data")
    say(f"-- data migration: then dbrev apply -r head with those rows: {apply_summary(h)}")
    if h["doc"].get("result") != "applied":
        h2 = r.run(["apply", "-r", "head", *ALLOW, *NO_ROWCOUNTS], url, label="apply head with data (no rowCounts)")
        say(f"   the same without the rowCounts check: {apply_summary(h2)}")
        h = h2
    with psycopg.connect(dsn, autocommit=True) as conn:
        runs = conn.execute("SELECT count(*) FROM flow_run").fetchone()[0]
    say(f"     flow_run rows at head: {runs}")
    return {"rows": n_null, "left_null": left, "states": names, "apply_backfill": _slim_rec(u),
            "apply_head": _slim_rec(h), "rows_at_head": runs}


if __name__ == "__main__":
    sys.exit(main())
