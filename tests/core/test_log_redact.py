"""Logging standards and secret redaction."""

import io
import json
import logging

from dbrev.core import log as L
from dbrev.core.redact import redact, register_secret


def capture(level="DEBUG"):
    buf = io.StringIO()
    L.setup_logging(level, "json", buf)
    return buf


def records(buf):
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_url_passwords_are_masked():
    assert redact("postgresql+psycopg://app:s3cr3t@db:5432/x") == "postgresql+psycopg://app:***@db:5432/x"
    assert "s3cr3t" not in redact("host=db password=s3cr3t user=app")
    assert "s3cr3t" not in redact("password='s3cr3t'")


def test_registered_secrets_are_masked_anywhere():
    register_secret("hunter2-xyz")
    assert redact("FATAL: something echoed hunter2-xyz back") == "FATAL: something echoed *** back"
    register_secret("p@ss/w:rd")
    assert "p%40ss%2Fw%3Ard" not in redact("url with p%40ss%2Fw%3Ard inside")


def test_redaction_does_not_depend_on_how_a_url_splits():
    # a raw password with "@" and "/" : masked whole, whatever a parser would make of it
    for url in ("postgresql://app:Pa@ssWordXy@db:5432/x", "postgresql+psycopg://app:p@ss:w/rd%#x9Q@db/x"):
        out = redact(f"cannot connect to {url}: boom")
        assert out.startswith("cannot connect to postgresql") and "@db" in out
        for frag in ("Pa@ss", "ssWordXy", "p@ss", "w/rd", "x9Q"):
            assert frag not in out, (frag, out)


def test_short_secrets_are_masked_where_they_stand_alone():
    register_secret("Qz")
    assert redact("password is Qz, again: 'Qz'") == "password is ***, again: '***'"
    assert redact("Qzebra") == "Qzebra"  # not inside a longer word


def test_worker_output_is_relayed_redacted():
    buf = capture("INFO")
    register_secret("relay-secret-77")
    L.relay("a script printed relay-secret-77")
    L.relay(json.dumps({"ts": "x", "level": "WARNING", "logger": "dbrev", "message": "from relay-secret-77",
                        "run_id": 3}))
    L.relay(json.dumps({"ts": "x", "level": "DEBUG", "logger": "dbrev", "message": "hidden"}))
    raw, rec = records(buf)
    assert raw["logger"] == "dbrev.worker" and raw["stream"] == "output" and raw["message"] == "a script printed ***"
    assert rec["level"] == "WARNING" and rec["message"] == "from ***" and rec["run_id"] == 3


def test_json_lines_carry_context_and_extras():
    buf = capture()
    with L.log_context(namespace="shop", name="orders"):
        L.state_transition(("a1",), ("b2",), "completed")
    (rec,) = records(buf)
    assert rec["level"] == "INFO" and rec["status"] == "completed"
    assert rec["from_revision"] == "a1" and rec["to_revision"] == "b2"
    assert rec["namespace"] == "shop" and rec["name"] == "orders"


def test_timed_debug_entry_exit_and_slow_warning(monkeypatch):
    buf = capture()
    monkeypatch.setattr(L, "SLOW_OPERATION_MS", -1.0)
    with L.timed("downgrade", from_revision="b2", to_revision="a1"):
        pass
    recs = records(buf)
    assert [r["level"] for r in recs] == ["DEBUG", "DEBUG", "WARNING"]
    assert recs[0]["from_revision"] == "b2" and recs[0]["to_revision"] == "a1"
    assert recs[2]["operation"] == "downgrade" and isinstance(recs[2]["duration_ms"], float)


def test_fast_operations_do_not_warn():
    buf = capture("INFO")
    with L.timed("upgrade"):
        pass
    assert records(buf) == []


def test_error_records_have_type_message_and_stack():
    buf = capture()
    try:
        raise ValueError("connection to postgresql://u:topsecret@h/db failed")
    except ValueError as e:
        L.log_error("Rollback failed", e, from_revision="b2", to_revision="a1")
    (rec,) = records(buf)
    assert rec["level"] == "ERROR" and rec["error_type"] == "ValueError"
    assert "Traceback" in rec["stack_trace"]
    assert "topsecret" not in json.dumps(rec)


def test_rollback_records():
    buf = capture()
    L.rollback_triggered("migration_failure", ("b2",), ("a1",))
    L.rollback_executed(("b2",), ("a1",), True)
    L.rollback_executed(("b2",), ("a1",), False)
    t, ok, bad = records(buf)
    assert t["event"] == "rollback_triggered" and t["reason"] == "migration_failure"
    assert t["from_version"] == "b2" and t["to_version"] == "a1"
    assert ok["event"] == "rollback_executed" and ok["success"] is True and ok["level"] == "WARNING"
    assert bad["success"] is False and bad["level"] == "ERROR"


def teardown_module():
    logging.getLogger("dbrev").handlers.clear()
