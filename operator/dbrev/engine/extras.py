"""The two installs: ``pip install dbrev`` (engine + CLI) and ``pip install 'dbrev[operator]'``.

The lean install is what a migration pod needs — in dbrev's own image or added to an application's
image next to alembic: the engine and the CLI (alembic, SQLAlchemy, pglast, a driver, PyYAML). The
operator's own dependencies (kopf, kubernetes, prometheus-client) are the ``operator`` extra.

Every module that needs the extra calls :func:`require_operator` before importing it, so that
``dbrev operator``, ``dbrev approve``, ``dbrev rollback NAME`` or ``import dbrev.controller.metrics`` on a lean
install fail with one clear error naming the line that fixes it, never a bare ``No module named``.
"""

from __future__ import annotations

import importlib.util

from ..core.errors import BadInput

#: the import names of the ``operator`` extra's packages (pyproject.toml lists them)
OPERATOR_MODULES = ("kopf", "kubernetes", "prometheus_client")
INSTALL_OPERATOR = "pip install 'dbrev[operator]'"


class MissingExtra(BadInput, ImportError):
    """A verb or module of the operator on a lean install (exit code 2; also an ImportError)."""


def missing_operator_modules() -> list[str]:
    """The ``operator`` extra's modules this Python cannot import (``[]``: the extra is installed)."""
    return [m for m in OPERATOR_MODULES if importlib.util.find_spec(m) is None]


def require_operator(what: str) -> None:
    """Raise :class:`MissingExtra` unless the ``operator`` extra is installed; ``what`` needs it."""
    missing = missing_operator_modules()
    if missing:
        raise MissingExtra(f"{what} needs the operator's dependencies, which this install of dbrev lacks "
                           f"({', '.join(missing)} not installed)",
                           hint=f"install it: {INSTALL_OPERATOR}; plain `pip install dbrev` is the engine and the "
                                "CLI only (plan, apply, rollback without NAME, current, history, verify)")
