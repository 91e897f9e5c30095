"""ordersapp's Alembic environment: the models' metadata (and so their naming convention).

The URL: ``sqlalchemy.url`` when the caller sets it (dbrev does, and also hands over its own
connection in ``config.attributes["connection"]``, the cookbook's shared-connection recipe), else
``$DATABASE_URL`` (the app's own Job: ``alembic upgrade head``).
"""

import os
from logging.config import fileConfig

import sqlalchemy as sa
from alembic import context

from ordersapp.models import Base

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

target_metadata = Base.metadata


def database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or os.environ["DATABASE_URL"]


def run_migrations_offline() -> None:
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection", None)
    if connection is not None:
        _run(connection)
        return
    engine = sa.create_engine(database_url(), poolclass=sa.pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
