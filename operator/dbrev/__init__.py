"""dbrev: keep each PostgreSQL database at the Alembic revision its owners declare.

``core`` is the functional core (plain data, no database or cluster client), ``pg`` the PostgreSQL
edge, ``engine`` a run (verbs, scripts, runner, worker, rollback), ``controller`` the operator and
``cli`` the ``dbrev`` command.
"""

__version__ = "0.1.0"
