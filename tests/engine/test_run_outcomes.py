"""How a run ends when it times out or waits too long for a table lock, in both transaction modes.

README promises exit code 4 (busy) for a table lock that timed out, and the rollback trigger is one of
the labels the ``dbrev_rollbacks_total`` metric knows (``metrics.ROLLBACK_TRIGGERS``).
"""

from __future__ import annotations

import pytest

from dbrev.core import conditions as C
from dbrev.controller.metrics import ROLLBACK_TRIGGERS
from dbhelp import heads, q, table_locked
from clihelp import dbrev
from scriptgen import write_script

# a step that needs autocommit: the run is one transaction per step
CONCURRENT_UP = ('with op.get_context().autocommit_block():\n'
                 '    op.execute("CREATE INDEX CONCURRENTLY ix_side ON side (id)")')
CONCURRENT_DOWN = ('with op.get_context().autocommit_block():\n'
                   '    op.execute("DROP INDEX CONCURRENTLY ix_side")')


def test_a_per_step_run_that_times_out_is_undone_by_inverse_steps_with_the_timeout_trigger(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "w001aaaa", None, 'op.create_table("side", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("side")')
    assert dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url).code == 0
    write_script(d, "w002aaaa", "w001aaaa", CONCURRENT_UP, CONCURRENT_DOWN)
    write_script(d, "w003aaaa", "w002aaaa", 'op.execute("SELECT pg_sleep(120)")', "pass")
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--timeout", "8", url=database_url)
    doc = r.json
    assert doc["transaction"] == "per-step", doc
    assert r.code == 1 and doc["result"] == "rolled_back", doc
    assert doc["error"]["reason"] == C.TIMED_OUT
    rb = doc["rollback"]
    assert rb["reason"] == "timeout" and rb["reason"] in ROLLBACK_TRIGGERS, rb
    assert rb["method"] == "inverse_steps" and rb["success"] is True, rb
    assert [(s["revision"], s["direction"]) for s in rb["steps"]] == [("w002aaaa", "downgrade")], rb
    assert heads(database_url) == ["w001aaaa"]
    assert q(database_url, "SELECT to_regclass('ix_side')")[0][0] is None
    # the timed-out run, then its undo
    assert [r[0] for r in q(database_url, "SELECT status FROM dbrev.runs ORDER BY id DESC LIMIT 2")] == [
        "applied", "timed_out"]


@pytest.mark.parametrize("mode", ["single", "per-step"])
def test_a_table_lock_timeout_is_busy_in_both_transaction_modes(database_url, tmp_path, mode):
    d = tmp_path / "m"
    write_script(d, "k001aaaa", None, 'op.create_table("hot", sa.Column("id", sa.Integer, primary_key=True))\n'
                 'op.create_table("side", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("side")\nop.drop_table("hot")')
    assert dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url).code == 0
    # per-step: the first step commits on its own before the locked one waits
    write_script(d, "k002aaaa", "k001aaaa", CONCURRENT_UP if mode == "per-step" else
                 'op.create_index("ix_side", "side", ["id"])',
                 CONCURRENT_DOWN if mode == "per-step" else 'op.drop_index("ix_side", "side")')
    write_script(d, "k003aaaa", "k002aaaa", 'op.add_column("hot", sa.Column("x", sa.Integer))',
                 'op.drop_column("hot", "x")')
    with table_locked(database_url, "hot"):
        r = dbrev("apply", "--migrations", str(d), "-r", "head", "--lock-timeout", "1", url=database_url)
    doc = r.json
    assert r.code == 4 and doc["result"] == "busy", r.stdout
    err = doc["error"]
    assert (err["error_type"], err["reason"], err["exit_code"]) == ("Busy", C.LOCK_BUSY, 4), err
    assert err["message"] == "a table lock was not granted within 1s (lock_timeout) during k003aaaa", err
    assert err["hint"]
    # the same document in both modes: nothing else claimed, the database where it started
    assert doc == {"result": "busy", "error": err, "from_revision": None, "to_revision": None, "steps": [],
                   "integrity": None, "direction": None}, doc
    assert heads(database_url) == ["k001aaaa"]
    assert q(database_url, "SELECT to_regclass('ix_side')")[0][0] is None
    assert q(database_url, "SELECT status FROM dbrev.runs ORDER BY id DESC LIMIT 1")[0][0] == "busy"
