"""dbrev: keep each PostgreSQL database at the Alembic revision its owners declare."""

__version__ = "0.1.0"
