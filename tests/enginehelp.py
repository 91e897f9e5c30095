"""The engine's verbs in this process, for the tests of what a run does (not of the CLI around it).

``run_apply`` builds the :class:`dbrev.core.options.RunRequest` that ``dbrev apply`` builds from its flags and
runs it with :func:`dbrev.engine.verbs.apply` in this process (no interpreter to start, no worker); ``run_plan``
calls :func:`dbrev.engine.verbs.plan`.  Both answer as :func:`clihelp.dbrev` does — a :class:`clihelp.CliResult`
whose ``json`` is the command's ``--json`` document and whose ``code`` its exit code — so that a test reads
the same either way.  What only the CLI does (flags, logs on stderr, the worker, its timeout, the exit code
of an interrupted run) is tested through :func:`clihelp.dbrev`.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterable

from clihelp import CliResult

from dbrev.engine import verbs as engine
from dbrev.cli import RESULT_EXIT
from dbrev.core.errors import Busy, DbrevError, PolicyRefused
from dbrev.core.options import ALL_CHECKS, DEFAULT_LOCK_TIMEOUT, DbOptions, Policy, RunRequest
from dbrev.core.results import RESULT_BUSY, RESULT_REFUSED, RunResult, apply_document


def _answer(doc: dict, code: int, message: str = "") -> CliResult:
    return CliResult(code, json.dumps(doc, indent=2, default=str), message)


def _error(e: DbrevError) -> CliResult:
    return _answer({"result": "error", "error": e.to_dict()}, e.exit_code, str(e))


@contextlib.contextmanager
def _url_in_env(url: str | None):
    """As :func:`clihelp.dbrev` runs the CLI: $DBREV_DATABASE_URL is the database (a script may read it)."""
    saved = os.environ.get("DBREV_DATABASE_URL")
    if url:
        os.environ["DBREV_DATABASE_URL"] = url
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("DBREV_DATABASE_URL", None)
        else:
            os.environ["DBREV_DATABASE_URL"] = saved


def _db(url: str, lock_timeout: float, version_table: str, version_table_schema: str | None) -> DbOptions:
    return DbOptions(url=url, lock_timeout=lock_timeout, version_table=version_table,
                     version_table_schema=version_table_schema)


def run_apply(migrations, target: str, *, url: str, downgrade: str = "Deny", data_loss: str = "Deny",
              rollback_on_failure: bool = True, verify: Iterable[str] = ALL_CHECKS, repair_sequences: bool = False,
              rehearse: str = "Report", expected_hash: str | None = None, exact_counts: bool = False,
              lock_timeout: float = DEFAULT_LOCK_TIMEOUT, version_table: str = "alembic_version",
              version_table_schema: str | None = None, use_env_py: bool | None = None) -> CliResult:
    """``dbrev apply --json`` in this process: ``downgrade="Allow"`` is ``--allow-downgrade``,
    ``data_loss="Allow"``/``"Archive"`` is ``--allow-data-loss``/``--archive``, ``expected_hash`` ``--plan-hash``."""
    policy = Policy(downgrade=downgrade, data_loss=data_loss, rollback_on_failure=rollback_on_failure,
                    verify=tuple(verify), repair_sequences=repair_sequences, rehearse=rehearse)
    req = RunRequest(db=_db(url, lock_timeout, version_table, version_table_schema),
                     migrations=os.path.abspath(str(migrations)), target=target, policy=policy,
                     expected_hash=expected_hash, exact_counts=exact_counts, actor="test", use_env_py=use_env_py)
    try:
        with _url_in_env(url):
            result = engine.apply(req, in_process=True)
    except Busy as e:  # as `dbrev apply` reports them: a result, not an error
        result = RunResult.of_error(RESULT_BUSY, e)
    except PolicyRefused as e:
        result = RunResult.of_error(RESULT_REFUSED, e)
    except DbrevError as e:
        return _error(e)
    return _answer(apply_document(result), RESULT_EXIT.get(result.result, 1))


def run_plan(migrations, target: str, *, url: str | None = None, from_revisions: Iterable[str] | None = None,
             version_table: str = "alembic_version", version_table_schema: str | None = None) -> CliResult:
    """``dbrev plan --json`` in this process (``from_revisions``: ``--from``, ``[]`` for base)."""
    db = _db(url, DEFAULT_LOCK_TIMEOUT, version_table, version_table_schema) if from_revisions is None else None
    try:
        with _url_in_env(url):
                p = engine.plan(str(migrations), target, db, None if from_revisions is None else list(from_revisions),
                            version_table=version_table, version_table_schema=version_table_schema)
    except DbrevError as e:
        return _error(e)
    return _answer(p.to_dict(), 0)
