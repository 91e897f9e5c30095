"""``dbrev check``: prove a migrations folder in CI, before merge, against a throwaway database.

Every script loads; the history has the declared number of heads; the plan from base (or
``--from``) to the heads renders; then the stairway: for each revision in order, upgrade
(rehearsed in its transaction, see :mod:`dbrev.engine.rehearse`), downgrade, upgrade again, asserting
after each downgrade that the schema equals the one before the upgrade.  The first step that
breaks it is named with file and line, and the stairway stops there.

The database is a scratch one: ``--database-url`` (it must be empty: no tables, no version
table), or ``--ephemeral``: dbrev starts its own PostgreSQL server from the binaries on the
machine, in a temporary folder, on 127.0.0.1, and removes it afterwards.

Exit codes: 0 every check passed; 1 a check failed; 2 bad input (a script does not load, the
database is not empty); 5 the database (or the ephemeral server) is unavailable.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass, field

from ..core import errors as E
from . import rehearse as R
from ..core.options import ALL_CHECKS, DbOptions, Policy, RunRequest
from ..core.text import revisions_shown, revisions_text

PASSED = "passed"
FAILED = "failed"


@dataclass
class RevisionCheck:
    revision: str
    script: str
    doc: str
    readiness: str = R.UNPROVEN
    message: str = ""
    details: dict = field(default_factory=dict)
    destructive: list = field(default_factory=list)  # upgrade effects that remove data
    heavy_locks: list = field(default_factory=list)
    transaction: str = "single"
    sql: str = ""
    downgrade_sql: str = ""
    failed: bool = False
    location: str | None = None
    seeded: dict = field(default_factory=dict)  # --data: table -> rows inserted after this revision's upgrade
    seed_skipped: dict = field(default_factory=dict)  # --data: table -> why no row could be made

    def to_dict(self, include_sql: bool = False) -> dict:
        d = {"revision": self.revision, "script": self.script, "doc": self.doc, "readiness": self.readiness,
             "message": self.message, "details": self.details, "destructive": self.destructive,
             "heavy_locks": self.heavy_locks, "transaction": self.transaction, "failed": self.failed,
             "location": self.location}
        if self.seeded or self.seed_skipped:
            d.update({"seeded": self.seeded, "seed_skipped": self.seed_skipped})
        if include_sql:
            d.update({"sql": self.sql, "downgrade_sql": self.downgrade_sql})
        return d


def failing(status: str, allow_irreversible: bool) -> bool:
    """Which readiness fails the check.  PURE."""
    return status == R.BROKEN or (status == R.IRREVERSIBLE and not allow_irreversible)


@contextlib.contextmanager
def ephemeral_database():
    """A PostgreSQL server of dbrev's own in a temporary folder on 127.0.0.1, removed on exit."""
    try:
        from ..pg.ephemeral import PostgresNotFound, PostgresServer
    except ImportError:
        raise E.BadInput("--ephemeral needs dbrev's throwaway PostgreSQL support (dbrev.pg.ephemeral), which this "
                         "installation does not include",
                         hint="pass --database-url of a scratch database instead") from None
    try:
        server = PostgresServer()
    except PostgresNotFound as e:
        raise E.DatabaseUnavailable(f"--ephemeral: {e}",
                                    hint="install the PostgreSQL server binaries (initdb, pg_ctl, postgres), "
                                         "or pass --database-url") from None
    try:
        server.start()
        yield server.create_database("dbrev_check")
    except RuntimeError as e:
        raise E.DatabaseUnavailable(f"--ephemeral: could not start PostgreSQL: {str(e).splitlines()[0]}") from None
    finally:
        server.cleanup()


def _facts(db: DbOptions) -> list[str]:
    from ..pg import integrity
    from ..pg.db import connection

    with connection(db) as conn:
        facts = integrity.fingerprint_facts(
            conn, exclude_schemas=(db.state_schema, "dbrev_archive"),
            exclude_tables=((db.version_table_schema or "public", db.version_table),))
        conn.commit()
    return facts


def _excludes(db: DbOptions):
    return (db.state_schema, "dbrev_archive"), ((db.version_table_schema or "public", db.version_table),)


def _seed(db: DbOptions, tag: str) -> tuple[dict, dict]:
    from . import seed
    from ..pg.db import connection

    with connection(db) as conn:
        out = seed.seed(conn, *_excludes(db), tag=tag)
        conn.commit()
    return out


def _inventory(db: DbOptions) -> dict:
    from . import seed
    from ..pg.db import connection

    with connection(db) as conn:
        inv = seed.inventory(conn, *_excludes(db))
        conn.commit()
    return inv


def with_seeded_losses(rc: "RevisionCheck", found: list) -> None:
    """--data: what the stairway's downgrade removed, rows dbrev seeded included, makes a Proven or
    Lossy readiness Lossy with those counts.  PURE (on ``rc``)."""
    if not found or rc.readiness not in (R.PROVEN, R.LOSSY):
        return
    rc.readiness = R.LOSSY
    rc.details["losses"] = [loss.to_dict() for loss in found]
    rc.details["counted_with_seeded_rows"] = True
    rc.message = ("restores the starting schema, losing " + "; ".join(loss.describe() for loss in found[:5])
                  + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
                  + " (counted by the stairway's downgrade, with the rows --data seeded)")


def _ensure_scratch(db: DbOptions) -> None:
    from ..pg.db import connection, read_heads

    with connection(db) as conn:
        heads = read_heads(conn, db.version_table, db.version_table_schema)
        conn.commit()
    if heads:
        raise E.BadInput(f"dbrev check needs an empty scratch database; this one is at {', '.join(heads)}",
                         hint="use a fresh database (or --ephemeral): the check upgrades and downgrades it")
    if [f for f in _facts(db) if f != "schema public"]:
        raise E.BadInput("dbrev check needs an empty scratch database; this one already has tables or other "
                         "objects", hint="use a fresh database (or --ephemeral)")


def _apply(db: DbOptions, migrations: str, target: str, pythonpath, rehearse: str = R.REPORT) -> dict:
    from .verbs import apply

    req = RunRequest(db=db, migrations=migrations, target=target or "base", actor="check",
                     policy=Policy(downgrade="Allow", data_loss="Allow", rollback_on_failure=True,
                                   verify=ALL_CHECKS, rehearse=rehearse),
                     pythonpath=tuple(pythonpath))
    try:
        return apply(req, in_process=True).to_dict()
    except E.BadInput:
        raise
    except E.DbrevError as e:
        return {"result": "failed", "error": e.to_dict()}


def run_check(migrations: str, db: DbOptions, *, from_rev: str | None = None, heads: int = 1,
              pythonpath=(), allow_irreversible: bool = False, data: bool = False) -> dict:
    from .verbs import open_scripts, plan_against
    from .scripts import render

    migrations = os.path.abspath(migrations)
    scripts = open_scripts(migrations, pythonpath)  # every script loads (ScriptError: exit 2)
    g = scripts.graph
    doc: dict = {"result": PASSED, "migrations": migrations, "heads": list(g.heads), "revisions": [],
                 "failures": [], "warnings": [], "data": data}
    if len(g.heads) != heads:
        doc["failures"].append({"check": "heads", "message": f"the history has {len(g.heads)} head(s) "
                                f"({', '.join(g.heads)}), not {heads}: merge them with `alembic merge`, "
                                f"or pass --heads {len(g.heads)}"})
    start = g.resolve(from_rev, ()) if from_rev else ()

    def rend(rev, up):
        return render(scripts, rev, up, db.version_table, db.version_table_schema)

    plan = plan_against(scripts, start, "heads", version_table=db.version_table,
                        version_table_schema=db.version_table_schema)[0]  # the plan apply makes, on a scratch db
    doc["from_revisions"] = list(start)
    doc["plan_hash"] = plan.hash
    doc["warnings"].extend(plan.warnings)
    _ensure_scratch(db)
    if start:
        pre = _apply(db, migrations, ",".join(start), pythonpath, rehearse=R.NEVER)
        if pre.get("result") not in ("applied", "noop"):
            doc["failures"].append({"check": "from", "message": f"could not upgrade to --from {from_rev}: "
                                    f"{(pre.get('error') or {}).get('message')}"})
            doc["result"] = FAILED
            return doc
        if data:  # the revisions before --from are not checked, but their tables hold rows like the others
            doc["from_seeded"], doc["from_seed_skipped"] = _seed(db, "from")
    current = tuple(start)
    for step in plan.steps:
        rev = step.revision
        info = scripts.infos[rev]
        down_sql = rend(rev, False)
        rc = RevisionCheck(rev, info.name, info.doc, transaction="per-step" if step.needs_autocommit else "single",
                           destructive=[e.detail or e.kind for e in step.effects if e.destructive],
                           heavy_locks=list(step.classification.heavy_locks), sql=step.sql,
                           downgrade_sql=down_sql.sql)
        doc["revisions"].append(rc)
        before = _facts(db)
        up_target = ",".join(sorted((set(current) - set(info.down_revisions)) | {rev}))
        up = _apply(db, migrations, up_target, pythonpath)
        if up.get("result") != "applied":
            err = up.get("error") or {}
            rc.readiness, rc.failed = R.BROKEN, True
            rc.location = err.get("location")
            rc.message = f"the upgrade fails{' at ' + err['location'] if err.get('location') else ''}: " \
                         f"{err.get('message')}"
            break
        rr = up.get("rollback_readiness") or {}
        rc.readiness, rc.message = rr.get("status", R.UNPROVEN), rr.get("message", "")
        rc.details = {k: v for k, v in rr.items() if k not in ("status", "message")}
        rc.location = rr.get("location")
        if data:  # a row in every table, the columns this revision added filled: the way down has data to lose
            rc.seeded, rc.seed_skipped = _seed(db, f"{len(doc['revisions'])} {rev}")
        if rc.readiness == R.IRREVERSIBLE:
            rc.failed = failing(rc.readiness, allow_irreversible)
            current = tuple(up.get("current_revisions") or ())
            continue  # no way back to walk: carry on upwards
        # the stairway: down, compare, up again
        held = _inventory(db) if data else None
        down = _apply(db, migrations, revisions_text(current), pythonpath, rehearse=R.NEVER)
        if down.get("result") != "applied":
            err = down.get("error") or {}
            rc.readiness, rc.failed = R.BROKEN, True
            rc.location = err.get("location") or R.script_location(scripts, rev, "downgrade")
            rc.message = f"the downgrade fails at {rc.location}: {err.get('message')}"
            break
        from ..pg.integrity import diff_facts

        diff = diff_facts(before, _facts(db), limit=20)
        if diff:
            rc.readiness, rc.failed = R.BROKEN, True
            rc.location = R.script_location(scripts, rev, "downgrade")
            rc.details["differences"] = diff
            rc.message = (f"after the downgrade the schema differs from before the upgrade ({rc.location}): "
                          + "; ".join(diff[:3]))
            break
        found = []
        if held is not None:
            from . import seed

            found = seed.losses(held, _inventory(db))
        again = _apply(db, migrations, up_target, pythonpath, rehearse=R.NEVER)
        if again.get("result") != "applied":
            err = again.get("error") or {}
            rc.readiness, rc.failed = R.BROKEN, True
            rc.location = err.get("location") or R.script_location(scripts, rev, "upgrade")
            rc.message = f"upgrading again after the downgrade fails at {rc.location}: {err.get('message')}" \
                         + (" (on the rows --data seeded)" if data else "")
            break
        if rc.readiness == R.UNPROVEN:  # per-step steps: the stairway itself is the proof
            rc.readiness, rc.message = R.PROVEN, "the stairway (up, down, up) restores the schema"
        with_seeded_losses(rc, found)
        rc.failed = failing(rc.readiness, allow_irreversible)
        current = tuple(again.get("current_revisions") or ())
    for rc in doc["revisions"]:
        if rc.failed:
            doc["failures"].append({"check": "stairway", "revision": rc.revision, "readiness": rc.readiness,
                                    "location": rc.location, "message": rc.message})
    first = next((rc for rc in doc["revisions"] if rc.failed), None)
    if first is not None:
        doc["first_failure"] = {"revision": first.revision, "script": first.script, "location": first.location,
                                "readiness": first.readiness, "message": first.message}
    checked = len(doc["revisions"])
    doc["unchecked"] = [s.revision for s in plan.steps[checked:]]
    if doc["failures"]:
        doc["result"] = FAILED
    return doc


# -- output -------------------------------------------------------------------

def doc_json(doc: dict) -> dict:
    return {**doc, "revisions": [rc.to_dict() for rc in doc["revisions"]]}


def text(doc: dict) -> str:
    lines = [f"dbrev check: {doc['result'].upper()} ({len(doc['revisions'])} revision(s) checked)"]
    for rc in doc["revisions"]:
        lines.append(f"  {rc.readiness:<12} {rc.revision}  {rc.script}  {rc.doc}")
        if rc.readiness != R.PROVEN and rc.message:
            lines.append(f"               {rc.message}")
        if rc.seeded:
            lines.append(f"               seeded a row into: {', '.join(rc.seeded)}")
        for t, why in rc.seed_skipped.items():
            lines.append(f"               not seeded: {t}: {why}")
    for f in doc["failures"]:
        if f["check"] != "stairway":
            lines.append(f"  FAILED {f['check']}: {f['message']}")
    if doc.get("unchecked"):
        lines.append(f"  not checked (after the first failure): {', '.join(doc['unchecked'])}")
    for w in doc["warnings"]:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def markdown(doc: dict) -> str:
    """A pull-request comment: the plan and the readiness of each revision, SQL folded."""
    icon = {R.PROVEN: "✅", R.LOSSY: "⚠️", R.BROKEN: "❌", R.IRREVERSIBLE: "⛔", R.UNPROVEN: "❔"}
    ok = doc["result"] == PASSED
    out = [f"### dbrev check: {'passed' if ok else 'FAILED'}", ""]
    frm = revisions_shown(doc.get("from_revisions") or [])
    out.append(f"{len(doc['revisions'])} revision(s) from `{frm}` to `{', '.join(doc['heads'])}`, "
               f"plan `{doc.get('plan_hash', '')[:19]}`.")
    if doc.get("first_failure"):
        f = doc["first_failure"]
        out += ["", f"**First breaking step:** `{f['revision']}` at `{f['location'] or f['script']}`: "
                    f"{_md(f['message'])}"]
    for f in doc["failures"]:
        if f["check"] != "stairway":
            out += ["", f"**{f['check']}:** {_md(f['message'])}"]
    out += ["", "| | revision | script | way back | destructive | locks | transaction |",
            "|---|---|---|---|---|---|---|"]
    for rc in doc["revisions"]:
        out.append(f"| {icon.get(rc.readiness, '')} | `{rc.revision}` | `{rc.script}` | **{rc.readiness}**"
                   f"{': ' + _md(rc.message) if rc.readiness != R.PROVEN else ''} | "
                   f"{_md('; '.join(rc.destructive)) or '-'} | {_md('; '.join(rc.heavy_locks)) or '-'} | "
                   f"{rc.transaction} |")
    seeded = sorted({t for rc in doc["revisions"] for t in rc.seeded} | set(doc.get("from_seeded") or ()))
    skipped = {**(doc.get("from_seed_skipped") or {}),
               **{t: why for rc in doc["revisions"] for t, why in rc.seed_skipped.items()}}
    for rc in doc["revisions"]:  # a table seeded after a later upgrade was not refused for good
        for t in rc.seeded:
            skipped.pop(t, None)
    if doc.get("data"):
        out += ["", f"Seeded (`--data`): a row after each upgrade into {', '.join(f'`{t}`' for t in seeded) or 'no table'}"
                    + (f"; not seeded: " + "; ".join(f"`{t}` ({_md(w)})" for t, w in sorted(skipped.items()))
                       if skipped else "") + "."]
    for rc in doc["revisions"]:
        out += ["", f"<details><summary>SQL of <code>{rc.revision}</code> ({_md(rc.doc)})</summary>", "",
                "```sql", "-- upgrade", rc.sql.strip(), "-- downgrade", rc.downgrade_sql.strip(), "```", "",
                "</details>"]
    if doc.get("unchecked"):
        out += ["", f"Not checked after the first failure: {', '.join(f'`{r}`' for r in doc['unchecked'])}."]
    for w in doc["warnings"]:
        out += ["", f"> warning: {_md(w)}"]
    return "\n".join(out)


def _md(s: str) -> str:
    return (s or "").replace("|", "\\|").replace("\n", " ")
