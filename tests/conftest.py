"""Shared fixtures: a real PostgreSQL server for the session, a fresh database per test.

``DBREV_TEST_DATABASE_URL`` (a superuser URL such as
``postgresql+psycopg://postgres:pw@127.0.0.1:5432/postgres``) points the tests at
an existing server instead of starting one.  The control-plane fixtures live in
``fixtures_cluster.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# tests/ is on sys.path through pyproject's [tool.pytest.ini_options] pythonpath
from fixtures_cluster import (  # noqa: F401 - the control-plane and node fixtures, for every test
    control_plane,
    k8s_api,
    kubeconfig,
    kubectl,
    namespace,
    node,
    session_control_plane,
)

from dbrev.pg.ephemeral import PostgresServer, create_database, drop_database

ROOT = Path(__file__).resolve().parent.parent


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
