"""Shared fixtures: a real PostgreSQL server for the session, a fresh database per test.

``DBREV_TEST_DATABASE_URL`` (a superuser URL such as
``postgresql+psycopg://postgres:pw@127.0.0.1:5432/postgres``) points the tests at
an existing server instead of starting one.  The control-plane fixtures live in
``fixtures_cluster.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fixtures_cluster import *  # noqa: E402,F401,F403

from dbrev.envtest.postgres import PostgresServer, create_database, drop_database  # noqa: E402


@pytest.fixture(scope="session")
def session_pg_admin_url():
    """A superuser URL of the session's PostgreSQL server (on loopback)."""
    external = os.environ.get("DBREV_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = PostgresServer().start()
    try:
        yield server.url()
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def pg_admin_url(session_pg_admin_url):
    """The server the tests' databases are made on (tests/operator: the node's, in Pod mode)."""
    return session_pg_admin_url


@pytest.fixture
def database_url(pg_admin_url):
    """A fresh, empty database for this test; dropped afterwards."""
    url = create_database(pg_admin_url)
    yield url
    drop_database(pg_admin_url, url.rsplit("/", 1)[1])


@pytest.fixture
def examples_dir() -> Path:
    return ROOT / "examples" / "migrations"
