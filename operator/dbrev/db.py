"""PostgreSQL at the edge: URLs, connections with retries, the version table, the lock.

Errors are sorted into what a user must fix (wrong URL, wrong password,
missing database or privilege: :class:`DatabaseConfigError`) and what
clears by itself (server down, timeouts: :class:`DatabaseUnavailable`).
No message ever carries the password.
"""

from __future__ import annotations

import random
import re
import time
from contextlib import contextmanager
from typing import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from . import conditions as C
from .errors import Busy, DatabaseConfigError, DatabaseUnavailable
from .log import logger, timed
from .options import DbOptions
from .redact import redact, register_secret



def normalize_url(url: str) -> sa.URL:
    """Parse and check a database URL; accept postgres:// and postgresql://."""
    if not url or not url.strip():
        raise DatabaseConfigError("no database URL given",
                                  hint="pass --database-url or set DBREV_DATABASE_URL",
                                  reason=C.INVALID_DATABASE_URL)
    try:
        u = make_url(url.strip())
    except (ArgumentError, ValueError) as e:
        raise DatabaseConfigError(f"the database URL cannot be parsed: {redact(str(e))}",
                                  hint="expected postgresql+psycopg://user:password@host:5432/dbname",
                                  reason=C.INVALID_DATABASE_URL) from None
    register_secret(u.password)
    backend = u.get_backend_name()
    if backend == "postgres":
        u = u.set(drivername="postgresql")
        backend = "postgresql"
    if backend != "postgresql":
        raise DatabaseConfigError(f"dbrev supports PostgreSQL only, not {backend!r}",
                                  hint="use a postgresql:// URL", reason=C.INVALID_DATABASE_URL)
    # dbrev speaks psycopg 3 whatever driver the application's URL names (asyncpg, psycopg2, pg8000):
    # host, port, user, password and database mean the same to all of them.
    if u.get_driver_name() != "psycopg":
        query = dict(u.query)
        if "ssl" in query and "sslmode" not in query:  # asyncpg spells it ssl=require
            query["sslmode"] = query.pop("ssl")
        for key in ("prepared_statement_cache_size", "prepared_statement_name_func", "timeout",
                    "command_timeout", "server_settings"):
            query.pop(key, None)
        u = u.set(drivername="postgresql+psycopg", query=query)
    if not u.database:
        raise DatabaseConfigError("the database URL names no database",
                                  hint="append /dbname to the URL", reason=C.INVALID_DATABASE_URL)
    return u


def safe_url(url: str) -> str:
    try:
        return normalize_url(url).render_as_string(hide_password=True)
    except DatabaseConfigError:
        return redact(url)


def make_engine(opts: DbOptions, attempt_timeout: float = 10.0) -> Engine:
    u = normalize_url(opts.url)
    settings = [f"-c lock_timeout={int(opts.lock_timeout * 1000)}",
                f"-c statement_timeout={int(opts.statement_timeout * 1000)}"]
    connect_args = {
        "connect_timeout": max(1, int(attempt_timeout)),
        "application_name": "dbrev",
        "options": " ".join(settings),
    }
    return sa.create_engine(u, poolclass=NullPool, connect_args=connect_args)


_AUTH_FAILED = re.compile(r"password authentication failed|no password supplied|authentication failed|pg_hba\.conf")
_NO_ROLE = re.compile(r'role "[^"]*" does not exist')
_NO_DATABASE = re.compile(r'database "[^"]*" does not exist')


def classify_connect_error(exc: BaseException, opts: DbOptions) -> Exception:
    """What a human must fix (DatabaseConfigError) vs what clears by itself (DatabaseUnavailable)."""
    raw = str(getattr(exc, "orig", None) or exc)
    text = redact(raw).strip().splitlines()[0] if raw.strip() else type(exc).__name__
    lower = text.lower()
    where = opts.safe_url
    if _AUTH_FAILED.search(lower):
        return DatabaseConfigError(f"cannot log in to {where}: {text}", reason=C.DATABASE_AUTH_FAILED,
                                   hint="check the user and password in the database URL (or its Secret)")
    if _NO_ROLE.search(lower):
        return DatabaseConfigError(f"cannot log in to {where}: {text}", reason=C.DATABASE_AUTH_FAILED,
                                   hint="check the user name in the URL")
    if _NO_DATABASE.search(lower):
        return DatabaseConfigError(f"{text} (at {where})", reason=C.DATABASE_NOT_FOUND,
                                   hint="create the database first, or fix the name in the URL")
    return DatabaseUnavailable(f"cannot connect to {where}: {text}",
                               hint="dbrev retries; check that the server is up and reachable")


def connect(opts: DbOptions, *, autocommit: bool = False) -> tuple[Engine, Connection]:
    """Connect with retries and capped exponential backoff, within ``connect_timeout`` in total."""
    deadline = time.monotonic() + max(opts.connect_timeout, 0.5)
    delay = 0.25
    attempt = 0
    last: Exception | None = None
    with timed("connect", database=opts.safe_url):
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            engine = make_engine(opts, attempt_timeout=min(10.0, max(1.0, remaining)))
            try:
                conn = engine.connect()
                if autocommit:
                    conn = conn.execution_options(isolation_level="AUTOCOMMIT")
                return engine, conn
            except (OperationalError, DBAPIError) as e:
                engine.dispose()
                err = classify_connect_error(e, opts)
                if not isinstance(err, DatabaseUnavailable):
                    raise err from None
                last = err
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            logger.info("Database not reachable yet; retrying",
                        extra={"attempt": attempt, "retry_in_s": round(min(delay, remaining), 2),
                               "error_message": str(last)})
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 5.0) * (0.8 + 0.4 * random.random())
    assert last is not None
    raise DatabaseUnavailable(f"{last.message} (gave up after {attempt} attempt(s) in "
                              f"{opts.connect_timeout:g}s)", hint=last.hint) from None


@contextmanager
def connection(opts: DbOptions, autocommit: bool = False) -> Iterator[Connection]:
    engine, conn = connect(opts, autocommit=autocommit)
    try:
        yield conn
    finally:
        try:
            conn.close()
        finally:
            engine.dispose()


def read_heads(conn: Connection, version_table: str = "alembic_version",
               version_table_schema: str | None = None) -> tuple[str, ...]:
    """The revisions in the version table; () when there is no table or no row."""
    qualified = f"{quote_ident(version_table_schema)}.{quote_ident(version_table)}" if version_table_schema \
        else quote_ident(version_table)
    exists = conn.execute(sa.text("SELECT to_regclass(:t) IS NOT NULL"), {"t": qualified}).scalar()
    if not exists:
        return ()
    rows = conn.execute(sa.text(f"SELECT version_num FROM {qualified}")).scalars().all()
    return tuple(sorted(rows))


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def try_lock(conn: Connection, key: int) -> bool:
    return bool(conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())


def unlock(conn: Connection, key: int) -> None:
    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})


def lock_holder(conn: Connection, key: int) -> dict | None:
    """Who holds dbrev's advisory lock on this version table (for the "busy" message)."""
    classid = (key >> 32) & 0xFFFFFFFF
    objid = key & 0xFFFFFFFF
    row = conn.execute(sa.text(
        "SELECT a.pid, a.application_name, a.client_addr::text AS client, a.backend_start, a.state "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = :c AND l.objid::bigint = :o "
        "AND l.objsubid = 1"), {"c": classid, "o": objid}).mappings().first()
    return dict(row) if row else None


def acquire_lock(conn: Connection, opts: DbOptions) -> None:
    """Session-level advisory lock keyed on the version table, waiting up to ``lock_timeout``."""
    deadline = time.monotonic() + opts.lock_timeout
    delay = 0.05
    with timed("acquire_lock", lock_key=opts.lock_key):
        while True:
            if try_lock(conn, opts.lock_key):
                conn.commit()
                return
            conn.commit()
            if time.monotonic() >= deadline:
                holder = lock_holder(conn, opts.lock_key)
                conn.commit()
                who = (f" by backend pid {holder['pid']} ({holder.get('application_name') or 'unknown app'}, "
                       f"since {holder['backend_start']:%Y-%m-%d %H:%M:%S})") if holder else ""
                raise Busy(f"another migration of {opts.version_table} is running{who}",
                           hint=f"waited {opts.lock_timeout:g}s for the lock; retry later")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def is_lock_timeout(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    code = getattr(orig, "sqlstate", None)
    return code == "55P03"  # lock_not_available


def is_permission_error(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) == "42501"


def server_info(conn: Connection) -> dict:
    row = conn.execute(sa.text("SELECT current_setting('server_version_num')::int AS v, "
                               "current_database() AS db, current_user AS usr, pg_backend_pid() AS pid")).mappings().one()
    return dict(row)



def database_identity(conn: Connection, version_table: str = "alembic_version",
                      version_table_schema: str | None = None) -> str:
    """Which history this is, by the server's identity, not the URL: the cluster's system identifier,
    the database's oid, and the version table (schema resolved on the server), as one string.

    Two URLs that reach the same database (127.0.0.1 and localhost, a Service and a Pod IP) give the same
    string; two databases on one server, or two version tables in one database, differ.
    """
    row = conn.execute(sa.text(
        "SELECT (SELECT system_identifier FROM pg_control_system())::text AS sysid, "
        "(SELECT oid FROM pg_database WHERE datname = current_database())::text AS dboid, "
        "coalesce(:schema, current_schema()) AS schema"), {"schema": version_table_schema}).mappings().one()
    return f"{row['sysid']}/{row['dboid']}|{row['schema']}.{version_table}"
