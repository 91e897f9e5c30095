"""dbrev's own bookkeeping inside the target database (schema ``dbrev``).

* ``runs``: a journal of every run and the step in progress (Alembic has no
  "dirty" marker; a run whose row still says ``running`` when the lock is
  free again was interrupted);
* ``fingerprints``: the schema fingerprint first recorded at each revision,
  compared when the database comes back to that revision (drift);
* ``scripts``: the source of every script dbrev applied, written in the same
  transaction as the step, so a downgrade still works after the scripts are
  gone from the ConfigMap or folder, and after the database was copied;
* ``archive_manifest``: what the Archive policy preserved, and where.

Everything here is keyed by the version table (``schema.table``), so several
histories in one database stay apart.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..core import conditions as C
from .db import is_permission_error, quote_ident
from ..core.errors import DatabaseConfigError
from ..core.scripts_info import ORIGIN_DATABASE, ScriptSource
from ..core.text import revisions_text

STATE_VERSION = 3  # 2: runs.readiness; 3: runs.plan
_SETUP_LOCK = 0x64627265765F7365  # "dbrev_se": serializes CREATE SCHEMA between runners


_HAS_READINESS = ("SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(:t) "
                  "AND attname = 'readiness' AND NOT attisdropped)")
_HAS_NEWEST = ("SELECT count(*) = 2 FROM pg_attribute WHERE attrelid = to_regclass(:t) "
               "AND attname IN ('readiness', 'plan') AND NOT attisdropped")  # the columns versions 2 and 3 added


def vt_key(version_table: str, version_table_schema: str | None) -> str:
    return f"{version_table_schema or 'public'}.{version_table}"


def ensure_schema(conn: Connection, schema: str = "dbrev") -> None:
    """Create dbrev's tables if missing (idempotent, safe against concurrent runners)."""
    s = quote_ident(schema)
    conn.commit()
    try:
        with conn.begin():
            exists = conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"),
                                  {"t": f"{s}.runs"}).scalar() and conn.execute(
                sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f"{s}.archive_manifest"}).scalar()
            if exists and conn.execute(sa.text(_HAS_NEWEST), {"t": f"{s}.runs"}).scalar():
                return
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SETUP_LOCK})
            conn.execute(sa.text(f"CREATE SCHEMA IF NOT EXISTS {s}"))
            conn.execute(sa.text(f"""
                CREATE TABLE IF NOT EXISTS {s}.runs (
                    id bigserial PRIMARY KEY,
                    version_table text NOT NULL,
                    started_at timestamptz NOT NULL DEFAULT now(),
                    finished_at timestamptz,
                    from_revisions text[] NOT NULL,
                    to_revisions text[] NOT NULL,
                    direction text NOT NULL,
                    plan_hash text,
                    txn text,
                    status text NOT NULL,
                    step_revision text,
                    step_direction text,
                    step_index int,
                    step_count int,
                    actor text,
                    host text,
                    pid int,
                    error text,
                    readiness jsonb
                )"""))
            # state version 1 had no readiness column: the rehearsed way back of each run (dbrev.engine.rehearse)
            conn.execute(sa.text(f"ALTER TABLE {s}.runs ADD COLUMN IF NOT EXISTS readiness jsonb"))
            # state version 3: the run's plan (no SQL), so that whoever watches a run it did not start (the operator
            # watching its migration Job) can say what it does, and recover it if its process dies
            conn.execute(sa.text(f"ALTER TABLE {s}.runs ADD COLUMN IF NOT EXISTS plan jsonb"))
            conn.execute(sa.text(f"CREATE INDEX IF NOT EXISTS runs_vt_status ON {s}.runs (version_table, status)"))
            conn.execute(sa.text(f"""
                CREATE TABLE IF NOT EXISTS {s}.fingerprints (
                    version_table text NOT NULL,
                    revisions text NOT NULL,
                    fingerprint text NOT NULL,
                    facts jsonb,
                    recorded_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (version_table, revisions)
                )"""))
            conn.execute(sa.text(f"""
                CREATE TABLE IF NOT EXISTS {s}.scripts (
                    version_table text NOT NULL,
                    revision text NOT NULL,
                    down_revisions text[] NOT NULL,
                    name text NOT NULL,
                    source text NOT NULL,
                    sha256 text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now(),
                    PRIMARY KEY (version_table, revision)
                )"""))
            conn.execute(sa.text(f"""
                CREATE TABLE IF NOT EXISTS {s}.archive_manifest (
                    id bigserial PRIMARY KEY,
                    version_table text NOT NULL,
                    revision text NOT NULL,
                    direction text NOT NULL,
                    kind text NOT NULL,
                    source_schema text NOT NULL,
                    source_table text NOT NULL,
                    source_column text,
                    key_columns text[] NOT NULL DEFAULT '{{}}',
                    archive_schema text NOT NULL,
                    archive_table text NOT NULL,
                    rows bigint NOT NULL,
                    checksum text NOT NULL,
                    created_at timestamptz NOT NULL DEFAULT now(),
                    restored_at timestamptz
                )"""))
            conn.execute(sa.text(f"COMMENT ON SCHEMA {s} IS 'dbrev bookkeeping (state version {STATE_VERSION})'"))
    except sa.exc.DBAPIError as e:
        if is_permission_error(e):
            raise DatabaseConfigError(
                f"the database user may not create dbrev's bookkeeping schema {schema!r}",
                reason=C.PERMISSION_DENIED,
                hint=f"GRANT CREATE ON DATABASE to the user, or create schema {schema} owned by it") from None
        raise


# -- journal -------------------------------------------------------------------

@dataclass
class Journal:
    conn: Connection  # an AUTOCOMMIT connection, separate from the migration's
    schema: str
    run_id: int | None = None

    def start(self, vt: str, plan, actor: str) -> int:
        s = quote_ident(self.schema)
        self.run_id = self.conn.execute(sa.text(
            f"INSERT INTO {s}.runs (version_table, from_revisions, to_revisions, direction, plan_hash, txn, "
            f"status, step_count, actor, host, pid, plan) VALUES (:vt, :f, :t, :d, :h, :x, 'running', :n, :a, :host, "
            f":pid, CAST(:p AS jsonb)) RETURNING id"),
            {"vt": vt, "f": list(plan.from_revisions), "t": list(plan.to_revisions), "d": plan.direction,
             "h": plan.hash, "x": plan.transaction, "n": len(plan.steps), "a": actor,
             "host": socket.gethostname(), "pid": os.getpid(),
             "p": json.dumps(plan.to_dict(include_sql=False), default=str)}).scalar()
        return self.run_id

    def step(self, index: int, revision: str, direction: str) -> None:
        if self.run_id is None:
            return
        self.conn.execute(sa.text(
            f"UPDATE {quote_ident(self.schema)}.runs SET step_index=:i, step_revision=:r, step_direction=:d "
            f"WHERE id=:id"), {"i": index, "r": revision, "d": direction, "id": self.run_id})

    def finish(self, status: str, error: str | None = None, readiness: dict | None = None) -> None:
        """``readiness``: the run's rehearsed way back (``rollback_readiness``), kept so that a later
        downgrade's plan can show it (:func:`recorded_readiness`)."""
        if self.run_id is None:
            return
        self.conn.execute(sa.text(
            f"UPDATE {quote_ident(self.schema)}.runs SET status=:s, error=:e, finished_at=now(), "
            f"readiness=CAST(:r AS jsonb) WHERE id=:id"),
            {"s": status, "e": error, "id": self.run_id,
             "r": json.dumps(readiness, default=str) if readiness else None})


def close_run(conn: Connection, schema: str, run_id: int, status: str, error: str | None = None) -> bool:
    """Close a run whose process is gone (killed at its timeout, died); False when it was already closed."""
    n = conn.execute(sa.text(
        f"UPDATE {quote_ident(schema)}.runs SET status=:s, error=:e, finished_at=now() "
        f"WHERE id=:id AND status='running'"), {"s": status, "e": error, "id": run_id}).rowcount
    return bool(n)


def outcome_of(exc: BaseException) -> str:
    """The journal status of a run that ended with ``exc`` (never "running")."""
    from ..core.errors import Busy, PolicyRefused

    if isinstance(exc, Busy):
        return "busy"
    if isinstance(exc, PolicyRefused):
        return "refused"
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        return "interrupted"
    return "failed"


def interrupted_runs(conn: Connection, schema: str, vt: str) -> list[dict]:
    """Runs still marked running: called while holding the lock, so their runner is gone."""
    s = quote_ident(schema)
    rows = conn.execute(sa.text(
        f"UPDATE {s}.runs SET status='interrupted', finished_at=now() "
        f"WHERE version_table=:vt AND status='running' "
        f"RETURNING id, started_at, from_revisions, to_revisions, step_revision, step_direction, "
        f"step_index, step_count, txn, host, pid"), {"vt": vt}).mappings().all()
    conn.commit()
    return [dict(r) for r in rows]


def running_run_of(conn: Connection, schema: str, vt: str, host: str) -> dict | None:
    """The newest run still marked running that ``host`` (a process's host name: a migration pod's name) journaled,
    or None (no bookkeeping yet, or none). What a watcher reads of a run under way: its plan, the step in progress."""
    s = quote_ident(schema)
    if not conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f"{s}.runs"}).scalar():
        return None
    row = conn.execute(sa.text(
        f"SELECT id, from_revisions, to_revisions, direction, plan_hash, txn, step_index, step_count, step_revision, "
        f"status, plan FROM {s}.runs WHERE version_table = :vt AND host = :host AND status = 'running' "
        f"ORDER BY id DESC LIMIT 1"), {"vt": vt, "host": host[:255]}).mappings().first()
    return dict(row) if row is not None else None


def recent_runs(conn: Connection, schema: str, vt: str, limit: int = 20) -> list[dict]:
    s = quote_ident(schema)
    if not conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f"{s}.runs"}).scalar():
        return []
    rows = conn.execute(sa.text(
        f"SELECT id, started_at, finished_at, from_revisions, to_revisions, direction, plan_hash, txn, status, "
        f"step_revision, actor, error FROM {s}.runs WHERE version_table=:vt ORDER BY id DESC LIMIT :n"),
        {"vt": vt, "n": limit}).mappings().all()
    return [dict(r) for r in rows]


def recorded_readiness(conn: Connection, schema: str, vt: str, limit: int = 200) -> list[dict]:
    """Applied runs that recorded a rehearsed way back, newest first: ``from_revisions``,
    ``to_revisions``, ``finished_at``, ``readiness`` (the dict the run reported), ``id``."""
    s = quote_ident(schema)
    if not conn.execute(sa.text(_HAS_READINESS), {"t": f"{s}.runs"}).scalar():
        return []  # no bookkeeping yet, or state version 1 (nothing recorded)
    rows = conn.execute(sa.text(
        f"SELECT id, from_revisions, to_revisions, finished_at, readiness FROM {s}.runs "
        f"WHERE version_table=:vt AND status='applied' AND readiness IS NOT NULL ORDER BY id DESC LIMIT :n"),
        {"vt": vt, "n": limit}).mappings().all()
    out = []
    for r in rows:
        d = dict(r)
        if not isinstance(d["readiness"], dict):
            d["readiness"] = json.loads(d["readiness"] or "{}")
        out.append(d)
    return out


# -- fingerprints -------------------------------------------------------------

def revisions_key(revs) -> str:
    """The key of a set of revisions in the state tables (:func:`dbrev.core.text.revisions_text`)."""
    return revisions_text(tuple(revs))


def recorded_fingerprint(conn: Connection, schema: str, vt: str, revs) -> tuple[str, list[str]] | None:
    s = quote_ident(schema)
    row = conn.execute(sa.text(f"SELECT fingerprint, facts FROM {s}.fingerprints "
                               f"WHERE version_table=:vt AND revisions=:r"),
                       {"vt": vt, "r": revisions_key(revs)}).first()
    if not row:
        return None
    facts = row[1] if isinstance(row[1], list) else json.loads(row[1] or "[]")
    return row[0], facts


def record_fingerprint(conn: Connection, schema: str, vt: str, revs, fingerprint: str, facts: list[str],
                       replace: bool = False) -> None:
    s = quote_ident(schema)
    conflict = "DO UPDATE SET fingerprint=EXCLUDED.fingerprint, facts=EXCLUDED.facts, recorded_at=now()" \
        if replace else "DO NOTHING"
    conn.execute(sa.text(f"INSERT INTO {s}.fingerprints (version_table, revisions, fingerprint, facts) "
                         f"VALUES (:vt, :r, :f, CAST(:facts AS jsonb)) ON CONFLICT (version_table, revisions) "
                         f"{conflict}"),
                 {"vt": vt, "r": revisions_key(revs), "f": fingerprint, "facts": json.dumps(facts)})


# -- stored scripts -----------------------------------------------------------

def store_script(conn: Connection, schema: str, vt: str, scripts: list) -> None:
    """Keep the source of applied scripts ([(ScriptInfo, source)]), in the caller's transaction."""
    if not scripts:
        return
    s = quote_ident(schema)
    conn.execute(sa.text(
        f"INSERT INTO {s}.scripts (version_table, revision, down_revisions, name, source, sha256) "
        f"VALUES (:vt, :r, :d, :n, :src, :h) ON CONFLICT (version_table, revision) DO UPDATE SET "
        f"down_revisions=EXCLUDED.down_revisions, name=EXCLUDED.name, source=EXCLUDED.source, "
        f"sha256=EXCLUDED.sha256, applied_at=now()"),
        [{"vt": vt, "r": info.revision, "d": list(info.down_revisions), "n": info.name, "src": source,
          "h": info.sha256} for info, source in scripts])


def stored_scripts(conn: Connection, schema: str, vt: str) -> list[dict]:
    s = quote_ident(schema)
    if not conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": f"{s}.scripts"}).scalar():
        return []
    rows = conn.execute(sa.text(f"SELECT revision, down_revisions, name, source, sha256, applied_at "
                                f"FROM {s}.scripts WHERE version_table=:vt ORDER BY applied_at"),
                        {"vt": vt}).mappings().all()
    return [dict(r) for r in rows]


def stored_sources(rows: list[dict]) -> list[ScriptSource]:
    return [ScriptSource(r["name"], r["source"], f"dbrev-db://{r['revision']}/{r['name']}", ORIGIN_DATABASE)
            for r in rows]
