"""The worker under hostile scripts and faults: its protocol, its output, lost sessions, deaths (issue 15)."""

from __future__ import annotations

import time
from urllib.parse import quote

import pytest

from clihelp import dbrev
from dbhelp import heads, q
from dbrev.pg.ephemeral import PostgresServer, create_database
from dbrev.core.options import DbOptions, Policy, RunRequest
from dbrev.core.results import RunResult
from dbrev.engine.worker import run_in_worker
from scriptgen import write_script

PASSWORD = "Wk3r-S3cret-pw"


@pytest.fixture(scope="module")
def secret_server():
    s = PostgresServer(password=PASSWORD).start()
    yield s
    s.cleanup()


def _url(server, db="postgres", user="postgres", password=PASSWORD, driver="postgresql+psycopg"):
    return f"{driver}://{user}:{quote(password, safe='')}@127.0.0.1:{server.port}/{db}"


def _fresh(server) -> str:
    return create_database(_url(server)).rsplit("/", 1)[1]


def _run(url, d, target="head", *, timeout=60.0, isolate=True, **policy):
    lines: list[str] = []
    events: list[dict] = []
    req = RunRequest(db=DbOptions(url=url, connect_timeout=20), migrations=str(d), target=target,
                     policy=Policy(**policy), actor="test")
    t0 = time.monotonic()
    result = run_in_worker(req, timeout=timeout, on_event=events.append, stderr_sink=lines.append,
                           isolate=isolate, log_level="INFO")
    return result.to_dict(), events, lines, time.monotonic() - t0


# -- 15.6 / 9.10: the protocol is a channel of its own ------------------------------------------

@pytest.mark.parametrize("isolate", [True, False], ids=["operator", "cli"])
def test_script_output_is_log_lines_not_protocol(database_url, tmp_path, isolate):
    d = tmp_path / "m"
    write_script(d, "p001aaaa", None, 'print(42)\nprint("batch 1 of 3 done")\n'
                 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))', 'op.drop_table("t")')
    result, events, lines, _ = _run(database_url, d, isolate=isolate)
    assert result["result"] == "applied", result
    assert any(e.get("event") == "step_done" for e in events)  # the reader survived print(42)
    printed = [ln for ln in lines if "batch 1 of 3 done" in ln]
    assert printed and '"stream": "stdout"' in printed[0]  # a log record, not a raw line


@pytest.mark.parametrize("isolate", [True, False], ids=["operator", "cli"])
def test_a_forged_result_line_is_not_taken_as_the_result(database_url, tmp_path, isolate):
    d = tmp_path / "m"
    forged = '{"event": "result", "result": {"result": "applied", "steps": [], "forged": true}}'
    write_script(d, "f001aaaa", None,
                 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))\n'
                 'import os, sys\n'
                 'if not op.get_context().as_sql:  # online only (plan renders upgrade() offline first)\n'
                 f'    print({forged!r})\n    sys.stdout.flush()\n    os.write(1, b{forged!r} + b"\\n")\n'
                 '    os._exit(0)', 'op.drop_table("t")')
    result, _, _, _ = _run(database_url, d, isolate=isolate)
    assert not result.get("forged")
    assert result["result"] == "rolled_back", result
    assert result["error"]["error_type"] == "WorkerDied" and result["error"]["error_type"] == "WorkerDied"
    assert heads(database_url) == []
    assert q(database_url, "SELECT to_regclass('t')")[0][0] is None


def test_cli_json_stdout_carries_only_the_document(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "c001aaaa", None, 'print("hello from upgrade")\nimport os\nos.write(1, b"raw fd1\\n")\n'
                 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))',
                 'print("hello from downgrade")\nop.drop_table("t")')
    for cmd in (["plan", "-r", "head"], ["apply", "-r", "head"]):
        r = dbrev(*cmd, "--migrations", str(d), url=database_url)
        assert r.code == 0, r.stdout + r.stderr
        assert r.json  # parses: nothing else on stdout
        assert "hello from upgrade" in r.stderr and "hello from upgrade" not in r.stdout


# -- 15.7: worker output is redacted before it is logged --------------------------------------

def test_password_in_script_output_never_reaches_the_log(secret_server, tmp_path):
    url = _url(secret_server, _fresh(secret_server))
    d = tmp_path / "m"
    write_script(d, "s001aaaa", None, f'''
        import logging, threading, warnings, sys
        pw = {PASSWORD!r}
        print("the password is", pw)
        sys.stderr.write("stderr " + pw + "\\n")
        warnings.warn("warned " + pw)
        logging.getLogger("myapp").error("logged %s", pw)
        def boom():
            raise RuntimeError("died with " + pw)
        t = threading.Thread(target=boom)
        t.start()
        t.join()
        op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))
    ''', 'op.drop_table("t")')
    result, _, lines, _ = _run(url, d)
    assert result["result"] == "applied"
    text = "\n".join(lines)
    assert "the password is" in text and "died with" in text and "logged" in text and "warned" in text
    assert PASSWORD not in text and "S3cret" not in text


# -- 15.2: a received result is final ---------------------------------------------------------

def test_a_lingering_worker_is_killed_not_rolled_back(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "l001aaaa", None, '''
        import threading, time
        if not op.get_context().as_sql:
            threading.Thread(target=time.sleep, args=(600,)).start()  # non-daemon: keeps an interpreter alive
        op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))
    ''', 'op.drop_table("t")')
    result, _, _, took = _run(database_url, d, timeout=25, data_loss="Deny")
    assert result["result"] == "applied", result
    assert took < 20
    assert heads(database_url) == ["l001aaaa"]
    assert q(database_url, "SELECT to_regclass('t')::text")[0][0] == "t"


# -- 15.3 / 15.4: a lost session is transient, and never silently replaced ---------------------

def test_terminated_backend_stops_the_run_and_exits_5(secret_server, tmp_path):
    url = _url(secret_server, _fresh(secret_server))
    d = tmp_path / "m"
    write_script(d, "k001aaaa", None, 'op.create_table("keep", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("keep")')
    write_script(d, "k002aaaa", "k001aaaa", '''
        with op.get_context().autocommit_block():
            op.execute("SELECT 1")
        op.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    ''', "pass")
    r = dbrev("apply", "--migrations", str(d), "-r", "head", url=url)
    assert r.code == 5, r.stdout + r.stderr
    err = r.json["error"]
    assert err["reason"] == "DatabaseUnavailable"
    assert "lost the database session" in err["message"] and "k001aaaa" in err["message"]
    assert err["details"]["current_revisions"] == ["k001aaaa"]
    # no inverse step ran on a new session that does not hold the lock
    assert heads(url) == ["k001aaaa"]
    assert q(url, "SELECT to_regclass('keep')::text")[0][0] == "keep"
    assert PASSWORD not in r.stdout + r.stderr


def test_server_restart_mid_run_is_transient(tmp_path):
    import threading

    server = PostgresServer(password=PASSWORD).start()
    try:
        url = _url(server, _fresh(server))
        d = tmp_path / "m"
        write_script(d, "x001aaaa", None, 'op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))\n'
                     'op.execute("SELECT pg_sleep(20)")', 'op.drop_table("t")')

        def restart():
            time.sleep(3)
            server.stop("fast")
            server.start()

        t = threading.Thread(target=restart)
        t.start()
        r = dbrev("apply", "--migrations", str(d), "-r", "head", "--connect-timeout", "30", url=url)
        t.join()
        assert r.code == 5, r.stdout + r.stderr
        assert r.json["error"]["reason"] == "DatabaseUnavailable"
        assert r.json["error"]["details"]["current_revisions"] == []
        assert "OperationalError" not in r.json["error"]["message"]
        assert PASSWORD not in r.stdout + r.stderr
    finally:
        server.cleanup()


# -- 15.9: an interrupted concurrent build is cleaned up, not reported as a clean rollback --------

def test_interrupted_concurrent_index_build_leaves_no_invalid_index(database_url, tmp_path):
    q(database_url, "CREATE TABLE big (x int)")
    q(database_url, "INSERT INTO big SELECT generate_series(1, 2000)")
    q(database_url, "CREATE FUNCTION slow(i int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS "
                    "$$ BEGIN PERFORM pg_sleep(0.01); RETURN i; END $$")
    d = tmp_path / "m"
    write_script(d, "i001aaaa", None, '''
        with op.get_context().autocommit_block():
            op.execute("CREATE INDEX CONCURRENTLY ix_big_slow ON big ((slow(x)))")
    ''', 'op.execute("DROP INDEX ix_big_slow")')
    result, _, _, _ = _run(database_url, d, timeout=4)
    assert result["error"]["reason"] == "TimedOut"
    left = q(database_url, "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                           "WHERE NOT i.indisvalid")
    assert left == []
    assert any("ix_big_slow" in w for w in result["warnings"])
    assert result["rollback"]["success"] is True and "public.ix_big_slow" in result["rollback"]["cleanup"]["dropped"]
    assert heads(database_url) == []


# -- issue 10: a worker that dies says why ------------------------------------------------------

def test_a_killed_worker_says_why(database_url, tmp_path):
    d = tmp_path / "m"
    write_script(d, "o001aaaa", None, '''
        import os, signal
        if not op.get_context().as_sql:
            print("allocating a lot")
            os.kill(os.getpid(), signal.SIGKILL)
    ''', "pass")
    result, _, _, _ = _run(database_url, d)
    err = result["error"]
    assert err["error_type"] == "WorkerDied"
    assert "SIGKILL" in err["message"] and "OOM" in err["message"]
    assert any("allocating a lot" in ln for ln in err["details"]["output_tail"])
    assert "fix the" not in err["message"]


def test_a_dead_worker_is_not_blamed_on_a_migration(database_url, tmp_path):
    from dbrev.controller import decide

    d = tmp_path / "m"
    write_script(d, "o002aaaa", None, '''
        import os, signal
        if not op.get_context().as_sql:
            op.create_table("t", sa.Column("id", sa.Integer, primary_key=True))
            os.kill(os.getpid(), signal.SIGKILL)
    ''', 'op.drop_table("t")')
    result, _, _, _ = _run(database_url, d)
    assert result["result"] == "rolled_back"
    v = decide.from_result(RunResult.from_dict(result), {}, 1, "2026-01-01T00:00:00Z", "spec", "2026-01-01T00:00:00Z", None)
    assert "OOM" in v.outcome.message and "fix the failing migration" not in v.outcome.message
