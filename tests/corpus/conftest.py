"""The corpus: generated Alembic histories that do what real projects do (see gen.py)."""

from __future__ import annotations

import pytest

from dbrev.pg.ephemeral import create_database, drop_database
import gen  # tests/corpus/gen.py (pythonpath)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, "gen.History"]:
    """Every history of the corpus, written once per session (deterministic)."""
    root = tmp_path_factory.mktemp("corpus")
    return {s.name: gen.build(s, root) for s in gen.SPECS}


@pytest.fixture
def second_database_url(pg_admin_url):
    """Another fresh database, for the plain-Alembic side of a comparison."""
    url = create_database(pg_admin_url)
    yield url
    drop_database(pg_admin_url, url.rsplit("/", 1)[1])
