"""``dbrev``: plan, apply, current, history, verify (and the operator's verbs).

A stable interface.  ``--json`` prints exactly one JSON document on stdout
(also for a mistyped command line); otherwise the output is for humans, with
progress on long runs.  Logs go to stderr, or to ``--log-file``: JSON lines or
text (``--log-format``), by default at ``info`` so that a run leaves its full
record (state transitions, ``rollback_triggered`` / ``rollback_executed``).
What migration scripts print becomes log records there too, never stdout.

Exit codes: 0 success or nothing to do; 1 failed (rolled back where it
could); 2 bad input; 3 refused by policy; 4 busy (lock held); 5 database
unavailable.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import functools
import json
import os
import sys

from .. import __version__
from ..core import errors as E
from ..core import log as L
from ..core.options import (DEFAULT_CONNECT_TIMEOUT, DEFAULT_LOCK_TIMEOUT, DEFAULT_RUN_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT,
                      DATA_LOSS_VALUES, DOWNGRADE_VALUES, DbOptions)
from ..core.redact import redact, redact_obj
from ..core.results import (RESULT_APPLIED, RESULT_BUSY, RESULT_FAILED, RESULT_NOOP, RESULT_REFUSED, RESULT_ROLLED_BACK,
                      RunResult, apply_document)

RESULT_EXIT = {RESULT_APPLIED: 0, RESULT_NOOP: 0, RESULT_ROLLED_BACK: 1, RESULT_FAILED: 1, RESULT_REFUSED: 3,
               RESULT_BUSY: 4}


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are a JSON error document (exit 2) when ``--json`` is on the line."""

    def error(self, message: str):  # type: ignore[override]
        if "--json" in _ARGV:
            err = E.BadInput(f"{self.prog}: {message}", hint=f"see `{self.prog} --help`")
            doc = {"result": "error", "error": err.to_dict()}
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
            sys.stdout.flush()
            self.exit(2)
        super().error(message)


_ARGV: list[str] = []


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return v


def _non_negative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, not {text}")
    return v


def identifier(text: str) -> str:
    """A PostgreSQL name as given (quoted by dbrev): not empty, no NUL, at most 63 bytes (never truncated)."""
    if not text or not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    if any(ord(ch) < 32 for ch in text):
        raise argparse.ArgumentTypeError("must not contain control characters (newline, tab, NUL)")
    if len(text.encode("utf-8")) > 63:
        raise argparse.ArgumentTypeError(f"{text[:20]}... is longer than PostgreSQL's 63-byte limit for names "
                                         "(it would be truncated)")
    return text


def schema_name(text: str) -> str:
    """A schema dbrev may create or write to: an :func:`identifier` outside PostgreSQL's reserved ``pg_``."""
    text = identifier(text)
    if text.startswith("pg_") or text == "information_schema":
        raise argparse.ArgumentTypeError(f"{text} is a system schema name (PostgreSQL reserves pg_*)")
    return text


def _add_common(p: argparse.ArgumentParser, db: bool = True, migrations: bool = True) -> None:
    if db:
        p.add_argument("--database-url", default=None, metavar="URL",
                       help="SQLAlchemy URL of the database (default: $DBREV_DATABASE_URL)")
        p.add_argument("--connect-timeout", type=_positive, default=DEFAULT_CONNECT_TIMEOUT, metavar="SECONDS",
                       help=f"give up connecting after this long, retrying with backoff (default "
                            f"{DEFAULT_CONNECT_TIMEOUT:g}, for cold starts)")
        p.add_argument("--lock-timeout", type=_positive, default=DEFAULT_LOCK_TIMEOUT, metavar="SECONDS",
                       help=f"wait this long for the migration lock and for table locks (default "
                            f"{DEFAULT_LOCK_TIMEOUT:g})")
        p.add_argument("--statement-timeout", type=_non_negative, default=DEFAULT_STATEMENT_TIMEOUT,
                       metavar="SECONDS", help=f"cancel any single statement running longer than this (default "
                                               f"{DEFAULT_STATEMENT_TIMEOUT:g}: no limit)")
        p.add_argument("--state-schema", default="dbrev", metavar="NAME", type=schema_name,
                       help="schema for dbrev's bookkeeping in the database (default dbrev)")
    if migrations:
        p.add_argument("--migrations", default=os.environ.get("DBREV_MIGRATIONS"), metavar="DIR",
                       help="folder of Alembic version scripts, or a script_location with env.py and versions/; "
                            "an alembic.ini beside env.py or in the folder above is read when present "
                            "(default: $DBREV_MIGRATIONS)")
        p.add_argument("--pythonpath", action="append", default=[], metavar="DIR",
                       help="add a folder to sys.path before loading the scripts (repeatable)")
        p.add_argument("--scripts-sha256", default=None, metavar="HEX",
                       help="refuse, changing nothing, unless the folder's *.py files hash to this (the operator "
                            "passes what it read from the ConfigMaps: a pod's volume that lags an update is "
                            "retried, exit 1 with reason ScriptsOutOfDate)")
    p.add_argument("--version-table", default="alembic_version", metavar="NAME", type=identifier)
    p.add_argument("--version-table-schema", default=None, metavar="NAME", type=schema_name)
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    add_logging(p)
    p.add_argument("--log-file", default=os.environ.get("DBREV_LOG_FILE"), metavar="PATH",
                   help="append the log there instead of stderr")


def add_logging(p: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format``, declared once for every verb ($DBREV_LOG_LEVEL, $DBREV_LOG_FORMAT)."""
    p.add_argument("--log-level", default=os.environ.get("DBREV_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"], type=str.lower,
                   help="default info: the run's full record (state transitions, rollbacks) on stderr")
    p.add_argument("--log-format", default=os.environ.get("DBREV_LOG_FORMAT", "json"), choices=["json", "text"])


def _add_result_file(p: argparse.ArgumentParser) -> None:
    p.add_argument("--result-file", default=os.environ.get("DBREV_RESULT_FILE"), metavar="PATH",
                   help="also write the result document there as compact JSON, at most 4096 bytes (a summary "
                        "when longer), e.g. /dev/termination-log in a migration pod (default: $DBREV_RESULT_FILE)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dbrev", description="Keep a PostgreSQL database at an Alembic revision, "
                                     "safely: plan, policy, atomic apply, verification, automatic rollback.")
    parser.add_argument("--version", action="version", version=f"dbrev {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("plan", help="show what reaching a revision would do, without changing anything",
                       description="Show what reaching a revision would do, without changing the database. Each "
                                   "step's upgrade()/downgrade() runs in Alembic's offline mode in this process to "
                                   "render its SQL, so a script's Python side effects (prints, files it writes) "
                                   "happen; no database connection is reachable from it, and a step that needs "
                                   "query results is reported as not renderable.")
    _add_common(p)
    p.add_argument("--revision", "-r", required=True, metavar="TARGET",
                   help="full id, unique prefix, head, heads, base, label, label@head, -N, +N")
    p.add_argument("--from", dest="from_revisions", action="append", metavar="REV",
                   help="plan from this revision instead of reading the database (repeatable; 'base' for empty)")
    p.add_argument("--sql", action="store_true", help="print each step's SQL (text output)")
    _add_result_file(p)

    p = sub.add_parser("apply", help="bring the database to a revision (upgrade or downgrade)")
    _add_common(p)
    p.add_argument("--revision", "-r", required=True, metavar="TARGET")
    p.add_argument("--allow-downgrade", action="store_true", help="permit a plan that downgrades")
    p.add_argument("--allow-data-loss", action="store_true", help="permit steps that drop or delete data")
    # spec.policy's words, as the operator's migration Job passes them (one policy, one code path)
    p.add_argument("--downgrade", default=None, choices=list(DOWNGRADE_VALUES), metavar="POLICY",
                   help=f"the downgrade policy: {', '.join(DOWNGRADE_VALUES)} (as spec.policy.downgrade; "
                        "--allow-downgrade is Allow, the default Deny)")
    p.add_argument("--data-loss", default=None, choices=list(DATA_LOSS_VALUES), metavar="POLICY",
                   help=f"the data-loss policy: {', '.join(DATA_LOSS_VALUES)} (as spec.policy.dataLoss; "
                        "--allow-data-loss is Allow, --archive Archive, the default Deny)")
    p.add_argument("--approve", default=None, metavar="HASH",
                   help="approve the plan with this hash where the policy says RequireApproval")
    p.add_argument("--actor", default="cli", metavar="WHO", help="who the run is recorded as (default cli)")
    p.add_argument("--repair-sequences", action="store_true",
                   help="move sequences the run leaves behind their column (seed rows with explicit ids) past "
                        "the column's maximum, in the same transaction, logged")
    p.add_argument("--archive", action="store_true",
                   help="copy what destructive steps would remove into the dbrev_archive schema first")
    p.add_argument("--no-rollback-on-failure", action="store_true",
                   help="leave the database where a failure stopped it instead of returning to the start")
    p.add_argument("--timeout", type=_positive, default=DEFAULT_RUN_TIMEOUT, metavar="SECONDS",
                   help=f"kill the run after this long (default {DEFAULT_RUN_TIMEOUT:g})")
    p.add_argument("--plan-hash", default=None, metavar="HASH",
                   help="refuse unless the plan is exactly this one (from `dbrev plan`)")
    _add_result_file(p)
    p.add_argument("--verify", default=None, metavar="CHECKS",
                   help="comma-separated checks (default: constraints,indexes,sequences,orphans,rowCounts,fingerprint)")
    p.add_argument("--exact-counts", action="store_true",
                   help="also compare exact row counts of every table (slow on big tables)")
    p.add_argument("--rehearse", nargs="?", const="report", default="report", type=str.lower,
                   choices=["never", "report", "require"],
                   help="single-transaction runs: rehearse the downgrade before commit and report the way "
                        "back's readiness (report, the default); require: refuse to commit an upgrade whose "
                        "way back is Broken or Irreversible; never: skip it")
    env = p.add_mutually_exclusive_group()
    env.add_argument("--env-py", dest="env_py", action="store_const", const=True, default=None,
                     help="run through the project's env.py even when --migrations is not a script location "
                          "(the default for a folder holding env.py and versions/, as with Alembic); env.py "
                          "should use config.attributes['connection'] when it is set")
    env.add_argument("--builtin-env", dest="env_py", action="store_const", const=False,
                     help="run through dbrev's built-in environment even when the folder has an env.py "
                          "(no target_metadata, naming convention or search_path of the project's)")

    p = sub.add_parser("show", help="one revision: its doc, parents, file, and its upgrade and downgrade SQL "
                                    "with their classification")
    _add_common(p)
    p.add_argument("revision", metavar="REV", help="full id, unique prefix, head, label@head ...")

    p = sub.add_parser("current", help="show the revision(s) the database is at")
    _add_common(p)

    p = sub.add_parser("history", help="list the revisions, newest first, marking the current one")
    _add_common(p)
    p.add_argument("--runs", type=int, default=0, metavar="N", help="also list dbrev's last N runs")

    p = sub.add_parser("verify", help="run the integrity checks now")
    _add_common(p)
    p.add_argument("--revision", "-r", default=None, metavar="TARGET", help="also check the database is at TARGET")
    p.add_argument("--checks", default=None, metavar="CHECKS", help="comma-separated subset of the checks")
    p.add_argument("--accept-drift", action="store_true",
                   help="record the current schema as the reference for this revision")

    _extend(sub)
    return parser


def _extend(sub) -> None:
    """Subcommands added by other modules (operator, approve, archive, check, rollback)."""
    from . import check, rollback
    from . import ext as cli_ext

    for mod in (cli_ext, check, rollback):
        mod.register(sub, _add_common)


# ---------------------------------------------------------------------------

def db_options(args) -> DbOptions:
    url = args.database_url or os.environ.get("DBREV_DATABASE_URL")
    if not url:
        raise E.DatabaseConfigError("no database URL", hint="pass --database-url or set DBREV_DATABASE_URL")
    password = os.environ.get("DBREV_DATABASE_PASSWORD")
    if password:  # a migration pod: the URL without its password, the password from a Secret (never argv)
        url = with_password(url, password)
    return DbOptions(url=url, connect_timeout=args.connect_timeout, lock_timeout=args.lock_timeout,
                     statement_timeout=args.statement_timeout, version_table=args.version_table,
                     version_table_schema=args.version_table_schema, state_schema=args.state_schema)


def with_password(url: str, password: str) -> str:
    """``url`` with ``password`` as its password (registered as a secret first: it is never printed)."""
    from sqlalchemy.engine import make_url

    from ..core.redact import register_secret

    register_secret(password)
    try:
        return make_url(url).set(password=password).render_as_string(hide_password=False)
    except Exception:  # noqa: BLE001 - the engine's own parse says what is wrong with the URL
        return url


#: Kubernetes keeps at most this many bytes of a container's termination message
RESULT_FILE_LIMIT = 4096
#: what a result file keeps of a document too long for it (what the operator decides on)
RESULT_SUMMARY_KEYS = ("result", "hash", "plan_hash", "direction", "from_revisions", "to_revisions", "target",
                       "destructive", "run_id", "message", "error")


#: what a result file keeps of a plan (what the operator's status.plan shows; dbrev.controller.status.plan_status)
RESULT_PLAN_KEYS = ("hash", "direction", "transaction", "from_revisions", "to_revisions", "destructive", "warnings",
                    "recorded_readiness")
RESULT_PLAN_STEP_KEYS = ("revision", "direction", "doc", "destructive", "needs_autocommit", "heavy_locks",
                         "renderable", "script_origin")


def compact_plan(plan: dict) -> dict:
    """A plan (``Plan.to_dict``) as a result file carries it: no SQL, no classification details."""
    out = {k: plan[k] for k in RESULT_PLAN_KEYS if k in plan}
    out["steps"] = [{k: st[k] for k in RESULT_PLAN_STEP_KEYS if k in st} for st in plan.get("steps", [])]
    return out


def result_file_text(doc: dict, limit: int = RESULT_FILE_LIMIT, plan: dict | None = None) -> str:
    """``--result-file``'s text: the document as compact JSON, redacted, with the run's ``plan``
    (:func:`compact_plan`) under ``"plan"`` when given.  When longer than ``limit`` bytes, in this order
    until it fits: the keys of :data:`RESULT_SUMMARY_KEYS` and ``"truncated": true``; the plan's first
    steps only (``"steps_total"`` says how many there are); the plan without steps; the least the operator
    decides on.  Stdout keeps the whole document."""
    def dump(d):
        return redact(json.dumps(redact_obj(d), separators=(",", ":"), default=str))

    def fits(d):
        return len(dump(d).encode("utf-8")) <= limit

    small_plan = compact_plan(plan) if plan else None
    full = {**doc, **({"plan": small_plan} if small_plan else {})}
    if fits(full):
        return dump(full)
    small = {k: doc[k] for k in RESULT_SUMMARY_KEYS if k in doc}
    small["truncated"] = True
    if small_plan:
        steps = small_plan["steps"]
        lo, hi = 0, len(steps)
        while lo < hi:  # the most steps that fit
            mid = (lo + hi + 1) // 2
            if fits({**small, "plan": {**small_plan, "steps": steps[:mid], "steps_total": len(steps)}}):
                lo = mid
            else:
                hi = mid - 1
        trimmed = {**small_plan, "steps": steps[:lo], "steps_total": len(steps)}
        if fits({**small, "plan": trimmed}):
            return dump({**small, "plan": trimmed})
        bare = {k: small_plan[k] for k in ("hash", "direction", "transaction", "from_revisions", "to_revisions")
                if k in small_plan}
        bare.update(steps=[], steps_total=len(steps))
        if fits({**small, "plan": bare}):
            return dump({**small, "plan": bare})
    if fits(small):
        return dump(small)
    err = small.get("error") if isinstance(small.get("error"), dict) else {}
    small = {"result": doc.get("result"), "hash": doc.get("hash"), "truncated": True,
             "error": {k: str(err[k])[:1024] for k in ("error_type", "reason", "message", "exit_code")
                       if k in err} or None}
    return dump(small)


def migrations_folder(args) -> str:
    if not args.migrations:
        raise E.BadInput("no migrations folder", hint="pass --migrations DIR or set DBREV_MIGRATIONS")
    if getattr(args, "scripts_sha256", None):
        from ..engine.scripts import check_files_sha256

        check_files_sha256(args.migrations, args.scripts_sha256)
    return args.migrations


def _empty_folder_warning(folder: str) -> str | None:
    """A warning when the migrations folder holds no version script (a wrong path, an unmounted volume)."""
    from pathlib import Path

    root = Path(folder)
    if not root.is_dir():
        return None  # the engine says what is wrong
    versions = root / "versions" if (root / "versions").is_dir() else root
    if any(p.suffix == ".py" and p.name != "env.py" and not p.name.startswith("__") for p in versions.rglob("*.py")):
        return None
    msg = f"the migrations folder {folder} holds no version scripts: is it the right path?"
    L.logger.warning("Empty migrations folder", extra={"migrations": str(folder)})
    return msg


def parse_checks(text: str | None):
    from ..core.options import ALL_CHECKS

    if not text:
        return ALL_CHECKS
    checks = tuple(c.strip() for c in text.split(",") if c.strip())
    bad = [c for c in checks if c not in ALL_CHECKS]
    if bad:
        raise E.BadInput(f"unknown check(s) {', '.join(bad)}", hint=f"choose from {', '.join(ALL_CHECKS)}")
    return checks


_DOC = None  # where dbrev's own output goes while sys.stdout is diverted (see main)


def doc_stream():
    """dbrev's own stdout: its documents and progress.  What scripts print goes to stderr instead."""
    return _DOC or sys.stdout


def write_output(args, doc: dict, text: str, plan: dict | None = None) -> None:
    """Print ``doc`` (``--json``) or ``text``; with ``--result-file``, also write the document there, with the
    run's ``plan`` (what the operator writes to status.plan: the document alone does not carry its steps)."""
    path = getattr(args, "result_file", None)
    if path:  # a migration pod's /dev/termination-log: the operator reads it without credentials
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(result_file_text(doc, plan=plan))
        except OSError as e:
            L.logger.warning("Cannot write the result file", extra={"path": path, "error_message": e.strerror})
    out = doc_stream()
    if args.json:
        out.write(redact(json.dumps(redact_obj(doc), indent=2, default=str)) + "\n")
    else:
        out.write(redact(text).rstrip("\n") + "\n")
    out.flush()


from ..core.text import plan_dict_summary, plan_summary, revisions_shown as _revs  # noqa: E402


# -- commands ----------------------------------------------------------------

def cmd_current(args) -> int:
    from ..engine.verbs import observe, open_scripts

    db = db_options(args)
    scripts = open_scripts(args.migrations, args.pythonpath) if args.migrations else None
    obs = observe(db, scripts)
    lines = [f"database: {obs['database']}", f"revision: {_revs(obs['revisions'])}"]
    for r, doc in (obs.get("docs") or {}).items():
        lines.append(f"  {r}  {doc}")
    if obs.get("unknown"):
        lines.append(f"warning: {', '.join(obs['unknown'])} not found in the scripts")
    elif "at_head" in obs:
        lines.append("at head" if obs["at_head"] else f"{len(obs['pending'])} revision(s) pending to head")
    write_output(args, obs, "\n".join(lines))
    return 0


def cmd_history(args) -> int:
    from ..engine.verbs import history

    db = db_options(args) if (args.database_url or os.environ.get("DBREV_DATABASE_URL")) else None
    h = history(migrations_folder(args), db, args.pythonpath, runs=args.runs)
    lines = []
    for e in h["revisions"]:
        marks = []
        if e["is_head"]:
            marks.append("head")
        if e["current"]:
            marks.append("current")
        if e["is_merge"]:
            marks.append("merge")
        if e["is_branch_point"]:
            marks.append("branchpoint")
        if e["origin"] != "files":
            marks.append("stored in database only")
        down = ", ".join(e["down_revisions"]) or "<base>"
        lines.append(f"{down} -> {e['revision']}{' (' + ', '.join(marks) + ')' if marks else ''}, {e['doc']}")
    for r in h["runs"]:
        lines.append(f"run {r['id']}: {r['started_at']:%Y-%m-%d %H:%M:%S} {r['direction']} "
                     f"{_revs(r['from_revisions'])} -> {_revs(r['to_revisions'])}: {r['status']}")
    write_output(args, h, "\n".join(lines) or "no revisions")
    return 0


def cmd_plan(args) -> int:
    from ..engine.verbs import plan as make_plan

    db = None if args.from_revisions else db_options(args)
    frm = None
    if args.from_revisions:
        frm = [x for part in args.from_revisions for x in part.split(",") if x and x != "base"]
    empty = _empty_folder_warning(migrations_folder(args))
    p = make_plan(migrations_folder(args), args.revision, db, frm, args.pythonpath,
                  args.version_table, args.version_table_schema)
    if empty:
        p.warnings.append(empty)
    write_output(args, p.to_dict(), plan_text(p, args.sql))
    return 0


def show(migrations: str, target: str, db=None, pythonpath=(), version_table: str = "alembic_version",
         version_table_schema: str | None = None) -> dict:
    """One revision, as ``alembic show`` gives it, plus both directions' SQL and classification.

    Rendering runs ``upgrade()`` and ``downgrade()`` offline (as ``dbrev plan`` does): their Python side
    effects happen, their SQL is only printed.
    """
    from ..pg.db import connection, read_heads
    from ..engine.verbs import open_scripts, stored_copies, with_stored
    from ..core.planning import make_step
    from ..engine.scripts import render

    scripts = open_scripts(migrations, pythonpath)
    heads: tuple[str, ...] | None = None
    stored_revs: set[str] | None = None
    if db is not None:
        version_table, version_table_schema = db.version_table, db.version_table_schema
        with connection(db) as conn:
            heads = read_heads(conn, version_table, version_table_schema)
            stored = stored_copies(conn, db)
            conn.commit()
        stored_revs = {r["revision"] for r in stored.usable}
        scripts = with_stored(scripts, stored)
    g = scripts.graph
    revs = g.resolve(target, heads or ())
    if len(revs) != 1:
        raise E.AmbiguousRevision(f"{target} names {len(revs)} revisions ({', '.join(revs) or 'none'})",
                                  hint="give one revision id")
    rev = revs[0]
    info = scripts.infos[rev]
    src = scripts.sources[rev]

    def rend(r, up):
        return render(scripts, r, up, version_table, version_table_schema)

    doc = {"revision": rev, "doc": info.doc, "down_revisions": list(info.down_revisions),
           "depends_on": list(info.dependencies), "branch_labels": list(info.branch_labels),
           "children": sorted(g.children[rev]), "is_head": rev in g.heads, "file": src.filename,
           "script": info.name, "script_sha256": info.sha256, "origin": info.origin,
           "stored_in_database": (rev in stored_revs) if stored_revs is not None else None,
           "applied": (rev in g.closure(r for r in heads if r in g.nodes)) if heads is not None else None,
           "current": (rev in heads) if heads is not None else None}
    for key, up in (("upgrade", True), ("downgrade", False)):
        doc[key] = make_step(g, info, src.source, up, rend, version_table).to_dict(include_sql=True)
    return doc


def cmd_show(args) -> int:
    db = db_options(args) if (args.database_url or os.environ.get("DBREV_DATABASE_URL")) else None
    doc = show(migrations_folder(args), args.revision, db, args.pythonpath, args.version_table, args.version_table_schema)
    lines = [f"revision {doc['revision']}: {doc['doc']}",
             f"  parents: {', '.join(doc['down_revisions']) or '<base>'}"
             + (f"; depends on: {', '.join(doc['depends_on'])}" if doc["depends_on"] else ""),
             f"  children: {', '.join(doc['children']) or '-'}",
             f"  file: {doc['file']} ({doc['origin']})"]
    if doc["branch_labels"]:
        lines.append(f"  branch labels: {', '.join(doc['branch_labels'])}")
    if doc.get("stored_in_database") is not None:
        lines.append(f"  the database keeps a copy: {'yes' if doc['stored_in_database'] else 'no'}"
                     + (f"; applied: {'yes' if doc['applied'] else 'no'}" if doc.get("applied") is not None else ""))
    for key in ("upgrade", "downgrade"):
        st = doc[key]
        flags = [f for f, on in (("DESTRUCTIVE", st["destructive"]), ("autocommit", st["needs_autocommit"]),
                                 ("irreversible", st["irreversible"]), ("not renderable offline",
                                                                        not st["renderable"])) if on]
        lines.append(f"{key}(){'  [' + ', '.join(flags) + ']' if flags else ''}")
        for e in st["effects"]:
            lines.append(f"    {'!' if e['destructive'] else '-'} {e['kind']} {e['object']}"
                         + (f": {e['detail']}" if e.get("detail") else ""))
        for h in st["heavy_locks"]:
            lines.append(f"    lock: {h}")
        for r in st["autocommit_reasons"]:
            lines.append(f"    autocommit: {r}")
        for n in st["notes"]:
            lines.append(f"    note: {n}")
        if st.get("render_error"):
            lines.append(f"    offline: {st['render_error']}")
        lines.extend("    " + ln for ln in (st.get("sql") or "").strip().splitlines() or ["(no SQL)"])
    write_output(args, doc, "\n".join(lines))
    return 0


def plan_text(p, sql: bool = False) -> str:
    lines = [f"plan {p.hash}",
             "  " + plan_summary(p.direction, p.from_revisions, p.to_revisions, len(p.steps), p.transaction, _revs)]
    for i, s in enumerate(p.steps, 1):
        flags = []
        if s.destructive:
            flags.append("DESTRUCTIVE")
        if s.needs_autocommit:
            flags.append("autocommit")
        if s.classification.heavy_locks:
            flags.append("heavy locks")
        if not s.renderable:
            flags.append("not renderable offline")
        if s.origin != "files":
            flags.append("script from database")
        lines.append(f"  [{i}] {s.direction} {s.revision}  {s.doc}" + (f"  [{', '.join(flags)}]" if flags else ""))
        for e in s.effects:
            if e.destructive:
                lines.append(f"        ! {e.detail or e.kind}")
        for h in s.classification.heavy_locks:
            lines.append(f"        lock: {h}")
        for r in s.classification.autocommit_reasons:
            lines.append(f"        autocommit: {r}")
        for n in s.classification.notes:
            lines.append(f"        note: {n}")
        if s.render_error:
            lines.append(f"        offline: {s.render_error}")
        if sql and s.sql.strip():
            lines.extend("        " + ln for ln in s.sql.strip().splitlines())
    from ..engine.rehearse import recorded_lines

    lines.extend(recorded_lines(p.recorded_readiness))
    for w in p.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


class Progress:
    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, ev: dict) -> None:
        if not self.enabled:
            return
        print = functools.partial(builtins.print, file=doc_stream())  # noqa: A001
        kind = ev.get("event")
        if kind == "plan":
            p = ev["plan"]
            print(f"plan {p['hash']}: {plan_dict_summary(p, shown=_revs)}", flush=True)
        elif kind == "step_started":
            print(f"  [{ev['index']}/{ev['total']}] {ev['direction']} {ev['revision']} {ev.get('doc') or ''} ...",
                  flush=True)
        elif kind == "step_done":
            print(f"      done in {ev['duration_seconds']:.2f}s", flush=True)


def cmd_apply(args) -> int:
    from ..engine.verbs import apply
    from ..core.options import Policy, RunRequest

    req = apply_request(args)
    empty = _empty_folder_warning(migrations_folder(args))
    progress = Progress(not args.json)
    seen: dict = {}

    def on_event(ev: dict) -> None:
        if ev.get("event") == "plan":
            seen["plan"] = ev["plan"]
        progress(ev)

    try:
        result = apply(req, timeout=args.timeout, on_event=on_event, log_level=args.log_level, isolate=False)
    except E.Busy as e:
        result = RunResult.of_error(RESULT_BUSY, e)
    except E.PolicyRefused as e:
        result = RunResult.of_error(RESULT_REFUSED, e)
    if empty:
        result.warnings = [empty, *(result.warnings or [])]
    write_output(args, apply_document(result), apply_text(result, args), plan=seen.get("plan"))
    return RESULT_EXIT.get(result.result, 1)


def apply_request(args) -> "RunRequest":
    """The run ``dbrev apply``'s arguments ask for (the operator's migration Job passes its request this way:
    ``controller.jobs.request_args`` is the inverse)."""
    from ..core.options import Policy, RunRequest

    policy = Policy(downgrade=_downgrade_policy(args), data_loss=_data_loss_policy(args),
                    rollback_on_failure=not args.no_rollback_on_failure, verify=parse_checks(args.verify),
                    repair_sequences=args.repair_sequences, rehearse=args.rehearse.capitalize())
    return RunRequest(db=db_options(args), migrations=os.path.abspath(migrations_folder(args)), target=args.revision,
                      policy=policy, approval=args.approve, expected_hash=args.plan_hash,
                      exact_counts=args.exact_counts, actor=args.actor,
                      pythonpath=tuple(os.path.abspath(p) for p in args.pythonpath), use_env_py=args.env_py)


def _downgrade_policy(args) -> str:
    if args.downgrade and args.allow_downgrade and args.downgrade != "Allow":
        raise E.BadInput(f"--allow-downgrade contradicts --downgrade {args.downgrade}", hint="give one of them")
    return args.downgrade or ("Allow" if args.allow_downgrade else "Deny")


def _data_loss_policy(args) -> str:
    implied = [v for flag, v in ((args.archive, "Archive"), (args.allow_data_loss, "Allow")) if flag]
    if len(implied) > 1 or (args.data_loss and implied and implied != [args.data_loss]):
        given = ", ".join(filter(None, (args.archive and "--archive", args.allow_data_loss and "--allow-data-loss",
                                        args.data_loss and f"--data-loss {args.data_loss}")))
        raise E.BadInput(f"{given} contradict each other", hint="give one data-loss policy")
    return args.data_loss or (implied[0] if implied else "Deny")


def apply_text(r: RunResult, args) -> str:
    from ..core import conditions as C

    res = r.result
    err = r.error
    lines = []
    for w in r.warnings or []:
        lines.append(f"warning: {w}")
    if res == RESULT_REFUSED:
        reason, message, hint = (err.reason, err.message, err.hint) if err else (None, None, None)
        lines.append(f"refused ({reason}): {message}")
        hints = {C.DOWNGRADE_DENIED: "pass --allow-downgrade to permit it",
                 C.DATA_LOSS_DENIED: "pass --allow-data-loss, or --archive to keep a copy of what is dropped",
                 C.PLAN_CHANGED: "review the new plan with `dbrev plan`"}
        if hint or hints.get(reason):
            lines.append(f"  {hint or hints.get(reason)}")
    elif res == RESULT_BUSY:
        lines.append(f"busy: {err.message if err else None}")
    elif res == RESULT_NOOP:
        lines.append(f"nothing to do: the database is at {_revs(r.current_revisions)}")
    else:
        lines.append(f"{res}: {_revs(r.from_revisions)} -> {_revs(r.to_revisions)} "
                     f"({r.direction}), now at {_revs(r.current_revisions)}, "
                     f"{r.duration_seconds or 0:.2f}s")
        if err:
            loc = f" at {err.location}" if err.location else ""
            lines.append(f"error ({err.reason}){loc}: {err.message}")
            if err.hint:
                lines.append(f"  hint: {err.hint}")
        rb = r.rollback
        if rb:
            lines.append(f"rollback ({rb.reason}, {rb.method}): {'succeeded' if rb.success else 'FAILED'}")
    from ..engine.rehearse import recorded_lines

    lines.extend(x.strip() for x in recorded_lines(r.recorded_readiness or []))
    rr = r.rollback_readiness
    if rr:
        lines.append(f"rollback readiness: {rr['status']}: {rr['message']}")
        for d in rr.get("differences", [])[:10]:
            lines.append(f"  {d}")
    integ = r.integrity
    if integ:
        lines.append(f"integrity: {'passed' if integ.get('passed') else 'FAILED'}"
                     f"{' (' + integ['fingerprint'] + ')' if integ.get('fingerprint') else ''}")
        for f in integ.get("findings", []):
            lines.append(f"  {f['severity']}: [{f['check']}] {f['object']}: {f['message']}")
    return "\n".join(lines)


def cmd_verify(args) -> int:
    from ..engine.verbs import verify

    rep = verify(db_options(args), parse_checks(args.checks), args.migrations, args.revision, args.accept_drift,
                 args.pythonpath)
    lines = [f"revision: {_revs(rep['revisions'])}",
             f"integrity: {'passed' if rep['passed'] else 'FAILED'}"
             + (f" ({rep['fingerprint']})" if rep.get("fingerprint") else "")]
    for f in rep["findings"]:
        lines.append(f"  {f['severity']}: [{f['check']}] {f['object']} ({f['count']}): {f['message']}")
    write_output(args, rep, "\n".join(lines))
    return 0 if rep["passed"] else 1


COMMANDS = {"current": cmd_current, "history": cmd_history, "plan": cmd_plan, "apply": cmd_apply,
            "verify": cmd_verify, "show": cmd_show}


@contextlib.contextmanager
def _scripts_print_to_stderr():
    """While a command runs, stdout (``print()``, fd 1) belongs to nobody but dbrev.

    Scripts run in this process too (``dbrev plan`` renders ``upgrade()`` offline): their ``print()``
    becomes log records on stderr, and fd 1 points at stderr; dbrev writes its document to a copy
    of the real stdout (:func:`doc_stream`).
    """
    global _DOC
    from ..engine import worker

    sys.stdout.flush()
    saved_fd = os.dup(1)
    saved_stdout = sys.stdout
    _DOC = os.fdopen(saved_fd, "w", buffering=1, encoding=getattr(saved_stdout, "encoding", None) or "utf-8")
    worker.CHILD_CLOSE_FDS.add(saved_fd)
    os.dup2(2, 1)
    sys.stdout = worker.LinesToLog()  # type: ignore[assignment]
    try:
        yield
    finally:
        try:
            sys.stdout.flush()
        finally:
            sys.stdout = saved_stdout
            _DOC.flush()
            os.dup2(saved_fd, 1)
            worker.CHILD_CLOSE_FDS.discard(saved_fd)
            _DOC.close()
            _DOC = None


def main(argv: list[str] | None = None) -> int:
    global _ARGV
    _ARGV = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    stream = None
    if getattr(args, "log_file", None):
        try:
            stream = open(args.log_file, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - for the process
        except OSError as e:
            return _usage_error(args, f"cannot open the log file {args.log_file}: {e.strerror}")
    L.setup_logging(args.log_level, args.log_format, stream)
    fn = COMMANDS.get(args.command) or getattr(args, "func", None)
    try:
        if args.command == "operator":  # a long-running service: its stdout is its own
            return _run_command(fn, args)
        with _scripts_print_to_stderr():
            return _run_command(fn, args)
    except KeyboardInterrupt:
        sys.stderr.write("dbrev: interrupted\n")
        return 130


def _usage_error(args, message: str) -> int:
    err = E.BadInput(message)
    if getattr(args, "json", False):
        write_output(args, {"result": "error", "error": err.to_dict()}, "")
    else:
        sys.stderr.write(f"dbrev: error: {err}\n")
    return err.exit_code


def _run_command(fn, args) -> int:
    try:
        return fn(args)
    except E.DbrevError as e:
        L.logger.error(e.message, extra={"error_type": type(e).__name__, "error_message": e.message,
                                         "reason": e.reason})
        if getattr(args, "json", False):
            write_output(args, {"result": "error", "error": e.to_dict()}, "")
        else:
            sys.stderr.write(f"dbrev: error: {e}\n")
        return e.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("dbrev: interrupted\n")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
