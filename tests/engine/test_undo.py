"""Every way back goes through :mod:`dbrev.engine.undo` and ends in the same :class:`~dbrev.core.results.Rollback`.

* a per-step run that fails is undone by its inverse steps, run in this process by the runner (no second
  Runner): the archived rows are put back, the inverse steps are reported (as ``rollback_step_*`` events and
  in ``rollback.steps``), the rows are proven, and ``rollback_triggered`` / ``rollback_executed`` are logged;
* a worker killed after it committed steps is brought back by :func:`dbrev.engine.undo.recover_after_death` through
  another worker, with the Rollback the worker path always gave;
* a dead run whose database is at its start reports a transaction rollback (PostgreSQL rolled it back).
"""

from __future__ import annotations

import contextlib
import logging

from dbhelp import heads, q
from dbrev.core import log as L
from dbrev.engine import undo
from dbrev.core.options import DbOptions, Policy, RunRequest
from dbrev.engine.runner import run
from dbrev.engine.worker import run_in_worker
from scriptgen import write_script

CONCURRENT_UP = ('with op.get_context().autocommit_block():\n'
                 '    op.create_index("ix_big_n", "big", ["n"], postgresql_concurrently=True)')
CONCURRENT_DOWN = ('with op.get_context().autocommit_block():\n'
                   '    op.drop_index("ix_big_n", table_name="big", postgresql_concurrently=True)')


def _req(url, d, target="head", **policy) -> RunRequest:
    return RunRequest(db=DbOptions(url=url, connect_timeout=20), migrations=str(d), target=target,
                      policy=Policy(**policy), actor="test")


@contextlib.contextmanager
def _rollback_records():
    """The ``rollback_triggered`` / ``rollback_executed`` records dbrev's logger emits meanwhile."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            if getattr(record, "event", None) in ("rollback_triggered", "rollback_executed"):
                records.append(record)

    h = Keep(level=logging.DEBUG)
    level = L.logger.level
    L.logger.addHandler(h)
    L.logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        L.logger.removeHandler(h)
        L.logger.setLevel(level)


def history(d, last_up='op.execute("SELECT 1/0")'):
    """``big`` with rows; an autocommit step (so: one transaction per step); a step that drops ``big.v``
    (destructive, archived under Archive); then ``last_up``."""
    write_script(d, "u001aaaa", None, 'op.create_table("big", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("n", sa.Integer), sa.Column("v", sa.Text))', 'op.drop_table("big")')
    write_script(d, "u002aaaa", "u001aaaa", CONCURRENT_UP, CONCURRENT_DOWN)
    write_script(d, "u003aaaa", "u002aaaa", 'op.drop_column("big", "v")',
                 'op.add_column("big", sa.Column("v", sa.Text))')
    write_script(d, "u004aaaa", "u003aaaa", last_up, "pass")


def test_a_failed_per_step_run_is_undone_in_process_with_its_archived_rows_put_back(database_url, tmp_path):
    d = tmp_path / "m"
    history(d)
    first = run(_req(database_url, d, "u001aaaa"), lambda ev: None)
    assert first.result == "applied", first.to_dict()
    q(database_url, "INSERT INTO big (n, v) SELECT g, 'value ' || g FROM generate_series(1, 500) g")
    before = q(database_url, "SELECT id, n, v FROM big ORDER BY id")
    events: list[dict] = []
    with _rollback_records() as records:
        result = run(_req(database_url, d, data_loss="Archive"), events.append)
    doc = result.to_dict()
    assert doc["transaction"] == "per-step" and doc["result"] == "rolled_back", doc
    assert doc["error"]["step"] == "u004aaaa" and doc["error"]["reason"] == "MigrationFailed"
    rb = doc["rollback"]
    assert rb["method"] == "inverse_steps" and rb["reason"] == "migration_failure" and rb["success"] is True
    # the inverse steps that ran, newest first, and the forward steps marked rolled back
    assert [(s["revision"], s["direction"], s["status"]) for s in rb["steps"]] == [
        ("u003aaaa", "downgrade", "applied"), ("u002aaaa", "downgrade", "applied")]
    assert [(s["revision"], s["status"]) for s in doc["steps"]] == [
        ("u002aaaa", "rolled_back"), ("u003aaaa", "rolled_back"), ("u004aaaa", "failed")]
    # what u003 dropped was archived and put back by the inverse step that re-made the column
    assert [a["object"] for a in doc["archived"]] == ["public.big.v"]
    assert [(x["object"], x["updated"]) for x in rb["restored"]] == [("public.big.v", 500)]
    assert q(database_url, "SELECT id, n, v FROM big ORDER BY id") == before
    # the proof: the rows of the tables the plan touches counted against the snapshot
    assert rb["integrity"]["passed"] is True and rb["integrity"]["rows_checked"] >= 1
    assert heads(database_url) == ["u001aaaa"] and doc["current_revisions"] == ["u001aaaa"]
    # the inverse steps announce themselves as rollback steps, after the forward ones
    kinds = [e["event"] for e in events if "step_" in e["event"]]
    assert kinds == ["step_started", "step_done", "step_started", "step_done", "step_started",
                     "rollback_step_started", "rollback_step_done", "rollback_step_started", "rollback_step_done"]
    assert [(r.event, r.reason if r.event == "rollback_triggered" else r.success) for r in records] == [
        ("rollback_triggered", "migration_failure"), ("rollback_executed", True)]
    assert records[1].method == "inverse_steps" and records[1].to_version == "u001aaaa"


def test_a_killed_worker_with_committed_steps_goes_back_through_another_worker(database_url, tmp_path):
    d = tmp_path / "m"
    history(d, last_up='import os, signal\nif not op.get_context().as_sql:\n    os.kill(os.getpid(), signal.SIGKILL)')
    events: list[dict] = []
    with _rollback_records() as records:
        result = run_in_worker(_req(database_url, d, data_loss="Allow"), timeout=120, on_event=events.append,
                               stderr_sink=lambda line: None)
    doc = result.to_dict()
    assert doc["result"] == "rolled_back", doc
    assert doc["error"]["error_type"] == "WorkerDied" and doc["error"]["reason"] == "MigrationFailed"
    rb = doc["rollback"]
    assert set(rb) == {"triggered", "reason", "method", "success", "steps", "integrity"}, rb
    assert (rb["reason"], rb["method"], rb["success"]) == ("worker_died", "inverse_steps", True)
    assert [(s["revision"], s["direction"]) for s in rb["steps"]] == [
        ("u003aaaa", "downgrade"), ("u002aaaa", "downgrade"), ("u001aaaa", "downgrade")]
    assert rb["integrity"]["passed"] is True
    assert doc["current_revisions"] == [] and heads(database_url) == []
    assert doc["steps"] == [] and doc["from_revisions"] == [] and doc["to_revisions"] == ["u004aaaa"]
    # the way back ran as an apply of its own: its steps are the worker's step_* events
    assert [e["revision"] for e in events if e["event"] == "step_done"][-3:] == ["u003aaaa", "u002aaaa", "u001aaaa"]
    assert [(r.event, r.method if r.event == "rollback_executed" else r.reason) for r in records
            if r.from_version == "u003aaaa"] == [("rollback_triggered", "worker_died"),
                                                 ("rollback_executed", "inverse_steps")]
    runs = q(database_url, "SELECT status FROM dbrev.runs ORDER BY id")
    assert [r[0] for r in runs][:1] == ["died"]


def test_a_dead_run_at_its_start_was_rolled_back_by_postgresql(database_url, tmp_path):
    plan = {"from_revisions": [], "to_revisions": ["u001aaaa"], "direction": "upgrade", "hash": "sha256:x",
            "transaction": "single"}
    ran_again: list = []
    result = undo.recover_after_death(_req(database_url, tmp_path), {"plan": plan}, "gone", 1.5, ran_again.append,
                                      reason="MigrationPodFailed", error_type="MigrationPodFailed")
    doc = result.to_dict()
    assert ran_again == []  # nothing committed: no way back to run
    assert doc["result"] == "rolled_back" and doc["error"]["error_type"] == "MigrationPodFailed"
    assert doc["rollback"] == {"triggered": True, "reason": "worker_died", "method": "transaction", "success": True}
    assert doc["duration_seconds"] == 1.5 and doc["plan_hash"] == "sha256:x"
