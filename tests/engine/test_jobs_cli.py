"""What a migration pod's CLI needs: the password apart from the URL, the result in a file too."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from clihelp import dbrev
from dbhelp import heads
from dbrev.cli import RESULT_FILE_LIMIT, result_file_text
from dbrev.envtest.postgres import PostgresServer, create_database
from scriptgen import linear_history

PASSWORD = "Sup3r-S3cret-pw%/@x"


@pytest.fixture(scope="module")
def secret_server():
    s = PostgresServer(password=PASSWORD).start()
    yield s
    s.cleanup()


def test_password_from_its_own_variable_and_the_result_in_a_file(secret_server, tmp_path):
    full = f"postgresql+psycopg://postgres:{quote(PASSWORD, safe='')}@127.0.0.1:{secret_server.port}/postgres"
    db = create_database(full).rsplit("/", 1)[1]
    bare = f"postgresql+psycopg://postgres@127.0.0.1:{secret_server.port}/{db}"
    d = tmp_path / "m"
    linear_history(d, 2)
    # without the password variable the server refuses: the bare URL really has no password
    refused = dbrev("plan", "--migrations", str(d), "-r", "head", url=bare)
    assert refused.code == 2 and refused.json["error"]["reason"] == "DatabaseAuthFailed", refused.stdout
    plan_file, apply_file = tmp_path / "plan.json", tmp_path / "apply.json"
    env = {"DBREV_DATABASE_PASSWORD": PASSWORD}
    plan = dbrev("plan", "--migrations", str(d), "-r", "head", "--result-file", str(plan_file), url=bare, env=env)
    assert plan.code == 0, plan.stdout + plan.stderr
    assert json.loads(plan_file.read_text()) == json.loads(json.dumps(plan.json))
    applied = dbrev("apply", "--migrations", str(d), "-r", "head", "--plan-hash", plan.json["hash"], url=bare,
                    env={**env, "DBREV_RESULT_FILE": str(apply_file)}, timeout=300)
    assert applied.code == 0, applied.stdout + applied.stderr
    result = json.loads(apply_file.read_text())
    assert result["result"] == "applied" and result["to_revisions"] == plan.json["to_revisions"]
    assert heads(full.rsplit("/", 1)[0] + "/" + db) == plan.json["to_revisions"]
    # an error is a result too
    err_file = tmp_path / "err.json"
    bad = dbrev("apply", "--migrations", str(d), "-r", "nosuchrev", "--result-file", str(err_file), url=bare, env=env)
    assert bad.code == 2 and json.loads(err_file.read_text())["result"] == "error"
    for r in (plan, applied, bad, refused):
        assert PASSWORD not in r.stdout + r.stderr and quote(PASSWORD, safe="") not in r.stdout + r.stderr
    for f in (plan_file, apply_file, err_file):
        assert PASSWORD not in f.read_text()


def test_a_long_document_becomes_a_summary_that_fits():
    doc = {"result": "planned", "hash": "sha256:" + "a" * 64, "direction": "upgrade", "to_revisions": ["r9"],
           "steps": [{"revision": f"r{i}", "sql": "x" * 500} for i in range(50)]}
    text = result_file_text(doc)
    assert len(text.encode()) <= RESULT_FILE_LIMIT
    assert json.loads(text) == {"result": "planned", "hash": doc["hash"], "direction": "upgrade",
                                "to_revisions": ["r9"], "truncated": True}
    small = {"result": "noop"}
    assert json.loads(result_file_text(small)) == small
    huge_error = {"result": "error", "error": {"error_type": "ScriptError", "message": "m" * 9000, "exit_code": 2}}
    text = result_file_text(huge_error)
    assert len(text.encode()) <= RESULT_FILE_LIMIT and json.loads(text)["error"]["error_type"] == "ScriptError"
