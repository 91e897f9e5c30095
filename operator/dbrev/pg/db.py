"""PostgreSQL at the edge: URLs, connections with retries, the version table, the lock.

Errors are sorted into what a user must fix (wrong URL, wrong password,
missing database or privilege, a bad ``sslmode``: :class:`DatabaseConfigError`)
and what clears by itself (server down, timeouts, a session lost mid-run:
:class:`DatabaseUnavailable`).  No message ever carries the password.

URLs: a password with raw ``@ : / % #`` is read the way its owner meant it when
that is unambiguous (the host follows the last ``@`` that a host can follow),
else refused with a hint to URL-encode it.  Drivers: the one the URL names
(``+psycopg2``, ``+psycopg``; ``+asyncpg`` in the worker, through SQLAlchemy's
async adapter: :func:`run_async_aware`) when it is installed, as SQLAlchemy and
Alembic would; a bare ``postgresql://`` means psycopg2 when it is installed
(SQLAlchemy's default), psycopg 3 otherwise; anything else (pg8000, ...) runs on
psycopg 3 with a logged warning.

A connection never reconnects silently: once its session is gone, using it
raises :class:`SessionLost` (a new session would not hold the run's advisory
lock, nor its transaction).
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import time
from contextlib import contextmanager
from dataclasses import replace
from typing import Iterator
from urllib.parse import quote, unquote

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.pool import NullPool

from ..core import conditions as C
from ..core.errors import Busy, DatabaseConfigError, DatabaseUnavailable, SessionLost
from ..core.log import logger, timed
from ..core.options import APPLICATION_NAME_ENV, DbOptions
from ..core.redact import redact, register_secret

_SCHEME = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<rest>.*)$", re.S)
_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._\-]+)"
# what may follow the userinfo's "@": host[:port][,host[:port]...][/dbname][?query]
_AFTER_USERINFO = re.compile(rf"^(?:{_HOST}?(?::\d*)?)(?:,{_HOST}(?::\d*)?)*(?:/[^/?#@]*)?(?:\?.*)?$", re.S)
_UNRESERVED = r"A-Za-z0-9._~!$&'()*+,;=\-"
_CLEAN_USERINFO = re.compile(rf"^(?:[{_UNRESERVED}]|%[0-9A-Fa-f]{{2}})*(?::(?:[{_UNRESERVED}:]|%[0-9A-Fa-f]{{2}})*)?$")
ENCODE_HINT = ("URL-encode the user and password: @ as %40, : as %3A, / as %2F, % as %25, # as %23, ? as %3F "
               "(python -c 'import urllib.parse,sys; print(urllib.parse.quote(sys.argv[1], safe=\"\"))' PASSWORD)")

_SYNC_DRIVERS = ("psycopg2", "psycopg")  # libpq-based: the connect arguments mean the same to both
_warned_drivers: set[str] = set()
# asyncpg runs through SQLAlchemy's async adapter, inside a greenlet (see run_async_aware): only the
# worker, which runs the scripts, turns this on; the CLI's and the operator's own reads use psycopg.
ASYNC_DRIVER_OK = False


def async_driver_available() -> bool:
    return _installed("asyncpg") and _installed("greenlet")


def wants_asyncpg(url: str) -> bool:
    """True when ``url`` names asyncpg and dbrev can run scripts on it (asyncpg and greenlet installed)."""
    try:
        return make_url(_readable(url.strip())).get_driver_name() == "asyncpg" and async_driver_available()
    except Exception:  # noqa: BLE001 - normalize_url reports what is wrong
        return False


def run_async_aware(url: str, fn, *args):
    """Call ``fn(*args)``; for an asyncpg URL inside SQLAlchemy's greenlet bridge, as Alembic's async env.py."""
    global ASYNC_DRIVER_OK
    if not wants_asyncpg(url):
        return fn(*args)
    import asyncio

    from sqlalchemy.util import greenlet_spawn

    ASYNC_DRIVER_OK = True
    try:
        return asyncio.run(greenlet_spawn(fn, *args))
    finally:
        ASYNC_DRIVER_OK = False


def _split_userinfo(url: str) -> tuple[str, str | None, str | None, str] | None:
    """(scheme, user, password, rest-after-@) read as the URL's owner meant it, or None for no userinfo.

    A userinfo made only of legal URL characters is standard: decoded as usual.  Otherwise the password
    holds raw reserved characters: the userinfo ends at the one "@" a host can follow; if more than one
    could, the URL is ambiguous and refused.
    """
    m = _SCHEME.match(url)
    if not m or "@" not in m.group("rest"):
        return None
    scheme, rest = m.group("scheme"), m.group("rest")
    ats = [i for i, ch in enumerate(rest) if ch == "@"]
    first = ats[0]
    if _CLEAN_USERINFO.match(rest[:first]) and _AFTER_USERINFO.match(rest[first + 1:]):
        user, sep, pw = rest[:first].partition(":")
        return scheme, unquote(user), unquote(pw) if sep else None, rest[first + 1:]
    fits = [i for i in ats if _AFTER_USERINFO.match(rest[i + 1:])]
    for i in ats:  # every reading's password is a secret, whichever turns out to be meant
        register_secret(rest[:i].partition(":")[2])
    if len(fits) != 1:
        raise DatabaseConfigError("the database URL's user:password part holds characters that make it ambiguous "
                                  "where the password ends" if fits else
                                  "the database URL cannot be parsed: no host follows the user:password part",
                                  hint=ENCODE_HINT, reason=C.INVALID_DATABASE_URL)
    user, sep, pw = rest[:fits[0]].partition(":")
    return scheme, user, pw if sep else None, rest[fits[0] + 1:]


def url_password(url: str | None) -> str | None:
    """The password in ``url`` as its owner meant it (None if none, or if the URL cannot be read)."""
    try:
        parts = _split_userinfo((url or "").strip())
    except DatabaseConfigError:
        return None
    return parts[2] if parts else None


def _readable(url: str) -> str:
    """``url`` with its userinfo percent-encoded exactly once, so that SQLAlchemy parses what was meant."""
    parts = _split_userinfo(url)
    if parts is None:
        return url
    scheme, user, pw, rest = parts
    register_secret(pw)
    userinfo = quote(user or "", safe="") + (":" + quote(pw, safe="") if pw is not None else "")
    return f"{scheme}://{userinfo}@{rest}"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _warn_driver(driver: str, why: str) -> None:
    if driver not in _warned_drivers:
        _warned_drivers.add(driver)
        logger.warning(f"The database URL names the {driver} driver; dbrev uses psycopg 3 instead: {why}",
                       extra={"driver": driver})


def normalize_url(url: str) -> sa.URL:
    """Parse and check a database URL; accept postgres:// and postgresql://."""
    if not url or not url.strip():
        raise DatabaseConfigError("no database URL given",
                                  hint="pass --database-url or set DBREV_DATABASE_URL",
                                  reason=C.INVALID_DATABASE_URL)
    try:
        u = make_url(_readable(url.strip()))
        _ = u.port  # a non-numeric port is an error now, not at connect time
    except (ArgumentError, ValueError) as e:
        raise DatabaseConfigError(f"the database URL cannot be parsed: {redact(str(e))}",
                                  hint="expected postgresql+psycopg://user:password@host:5432/dbname; "
                                       + ENCODE_HINT, reason=C.INVALID_DATABASE_URL) from None
    register_secret(u.password)
    backend = u.get_backend_name()
    if backend == "postgres":
        u = u.set(drivername="postgresql" + (f"+{u.get_driver_name()}" if "+" in u.drivername else ""))
        backend = "postgresql"
    if backend != "postgresql":
        raise DatabaseConfigError(f"dbrev supports PostgreSQL only, not {backend!r}",
                                  hint="use a postgresql:// URL", reason=C.INVALID_DATABASE_URL)
    # The driver the URL names, when dbrev can run on it, as Alembic would: scripts may rely on its
    # parameter typing.  A bare postgresql:// means psycopg2 to SQLAlchemy; without psycopg2, psycopg 3.
    named = u.drivername.partition("+")[2]
    if not named:
        driver = "psycopg2" if _installed("psycopg2") else "psycopg"
        u = u.set(drivername=f"postgresql+{driver}")
    elif named in _SYNC_DRIVERS and _installed(named):
        pass
    elif named in _SYNC_DRIVERS:
        _warn_driver(named, "it is not installed")
    elif named == "asyncpg" and ASYNC_DRIVER_OK:
        pass
    elif named == "asyncpg" and not async_driver_available():
        _warn_driver(named, "asyncpg (or greenlet) is not installed")
    elif named != "asyncpg":
        _warn_driver(named, "dbrev runs on psycopg2, psycopg or asyncpg only")
    keep = u.get_driver_name() in _SYNC_DRIVERS and _installed(u.get_driver_name())
    keep = keep or (u.get_driver_name() == "asyncpg" and ASYNC_DRIVER_OK)
    if not keep:
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


class _OneSession(Connection):
    """A Connection that never reconnects behind the caller's back (SQLAlchemy does after a disconnect)."""

    def _revalidate_connection(self):
        if self.invalidated and not self.closed:
            raise SessionLost("the database session was lost (the server restarted, or the backend was "
                              "terminated); dbrev does not continue a run on a new session",
                              hint="the advisory lock and the open transaction died with the session")
        return super()._revalidate_connection()


def application_name() -> str:
    return (os.environ.get(APPLICATION_NAME_ENV) or "dbrev")[:63]


def make_engine(opts: DbOptions, attempt_timeout: float = 10.0) -> Engine:
    u = normalize_url(opts.url)
    settings = [f"-c lock_timeout={int(opts.lock_timeout * 1000)}",
                f"-c statement_timeout={int(opts.statement_timeout * 1000)}"]
    if u.get_driver_name() == "asyncpg":
        engine = sa.create_engine(u, poolclass=NullPool, _is_async=True, connect_args={
            "timeout": max(1, int(attempt_timeout)),
            "server_settings": {"application_name": application_name(), "lock_timeout": f"{int(opts.lock_timeout * 1000)}",
                                "statement_timeout": f"{int(opts.statement_timeout * 1000)}"}})
        engine._connection_cls = _OneSession  # type: ignore[attr-defined]
        return engine
    connect_args = {
        "connect_timeout": max(1, int(attempt_timeout)),
        "application_name": application_name(),
        "options": " ".join(settings),
    }
    engine = sa.create_engine(u, poolclass=NullPool, connect_args=connect_args)
    engine._connection_cls = _OneSession  # type: ignore[attr-defined]
    return engine


_AUTH_FAILED = re.compile(r"password authentication failed|no password supplied|authentication failed|pg_hba\.conf")
_NO_ROLE = re.compile(r'role "[^"]*" does not exist')
_NO_DATABASE = re.compile(r'database "[^"]*" does not exist')
_BAD_CONNINFO = re.compile(r"invalid (sslmode|connection option|integer value|port|target_session_attrs|gssencmode|"
                           r"channel_binding|sslnegotiation)|invalid dsn|missing \"=\"|"
                           r"unrecognized|invalid value for parameter")
# sqlstates that mean the session or the server went away (class 08, admin/crash shutdown, starting up)
_LOST_STATES = ("57P01", "57P02", "57P03")
_LOST_TEXT = re.compile(r"server closed the connection unexpectedly|terminating connection|connection already "
                        r"closed|connection was closed in the middle of operation|ConnectionDoesNotExist|consuming input failed|connection is closed|the connection is lost|"
                        r"SSL connection has been closed|server conn crashed|no connection to the server")


def sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", exc)
    return getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)


def is_connection_lost(exc: BaseException) -> bool:
    """True when ``exc`` says the session is gone (a restart, a terminated backend), not a SQL error."""
    if isinstance(exc, SessionLost) or isinstance(getattr(exc, "orig", None), SessionLost):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    code = sqlstate(exc) or ""
    if code.startswith("08") or code in _LOST_STATES:
        return True
    return isinstance(exc, (OperationalError, DBAPIError)) and bool(_LOST_TEXT.search(str(exc)))


def classify_connect_error(exc: BaseException, opts: DbOptions) -> Exception:
    """What a human must fix (DatabaseConfigError) vs what clears by itself (DatabaseUnavailable)."""
    raw = str(getattr(exc, "orig", None) or exc)
    text = redact(raw).strip().splitlines()[0] if raw.strip() else type(exc).__name__
    lower = text.lower()
    where = safe_url(opts.url)
    if _AUTH_FAILED.search(lower):
        return DatabaseConfigError(f"cannot log in to {where}: {text}", reason=C.DATABASE_AUTH_FAILED,
                                   hint="check the user and password in the database URL (or its Secret)")
    if _NO_ROLE.search(lower):
        return DatabaseConfigError(f"cannot log in to {where}: {text}", reason=C.DATABASE_AUTH_FAILED,
                                   hint="check the user name in the URL")
    if _NO_DATABASE.search(lower):
        return DatabaseConfigError(f"{text} (at {where})", reason=C.DATABASE_NOT_FOUND,
                                   hint="create the database first, or fix the name in the URL")
    if _BAD_CONNINFO.search(lower):
        return DatabaseConfigError(f"the connection settings in the URL are invalid: {text} (at {where})",
                                   reason=C.INVALID_DATABASE_URL,
                                   hint="fix the query parameters of the database URL (e.g. sslmode=require)")
    return DatabaseUnavailable(f"cannot connect to {where}: {text}",
                               hint="dbrev retries; check that the server is up and reachable")


def connect(opts: DbOptions, *, autocommit: bool = False) -> tuple[Engine, Connection]:
    """Connect with retries and capped exponential backoff, within ``connect_timeout`` in total."""
    deadline = time.monotonic() + max(opts.connect_timeout, 0.5)
    delay = 0.25
    attempt = 0
    last: Exception | None = None
    with timed("connect", database=safe_url(opts.url)):
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
    return sqlstate(exc) == "55P03"  # lock_not_available


def is_permission_error(exc: BaseException) -> bool:
    return sqlstate(exc) == "42501"


def invalid_indexes(conn: Connection) -> list[str]:
    """schema.name of every INVALID index (what an interrupted CREATE INDEX CONCURRENTLY leaves)."""
    rows = conn.execute(sa.text(
        "SELECT n.nspname || '.' || c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1")).scalars().all()
    return list(rows)


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


def end_sessions(db: DbOptions, *, pid: int | None = None, application_name: str | None = None,
                 wait: float = 10.0) -> None:
    """End the database sessions of a run whose process is gone: the backend ``pid`` (a dead worker's), or every
    session named ``application_name`` (a dead migration pod's: a vanished pod's TCP session can linger for
    minutes), and wait up to ``wait`` seconds until they are. Best effort: a failure is logged, never raised (the
    lock then says whether the session is gone)."""
    if not (pid or application_name):
        return
    which, params = ("pid = :p", {"p": pid}) if pid else ("application_name = :a", {"a": application_name})
    try:
        with connection(replace(db, connect_timeout=min(db.connect_timeout, 10))) as conn:
            conn.execute(sa.text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {which} "
                                 "AND pid <> pg_backend_pid()"), params)
            conn.commit()
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                left = conn.execute(sa.text(f"SELECT count(*) FROM pg_stat_activity WHERE {which} "
                                            "AND pid <> pg_backend_pid()"), params).scalar()
                conn.commit()
                if not left:
                    break
                time.sleep(0.1)
    except Exception as e:  # noqa: BLE001
        logger.warning("Could not end the database sessions of a run that is gone",
                       extra={"error_type": type(e).__name__, "error_message": redact(str(e))[:300]})
