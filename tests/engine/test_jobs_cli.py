"""What a migration pod's CLI needs: the password apart from the URL, the result in a file too."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from clihelp import dbrev
from dbhelp import heads
from dbrev.cli import RESULT_FILE_LIMIT, result_file_text
from dbrev.pg.ephemeral import PostgresServer, create_database
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


def test_the_apply_result_file_carries_the_plan_and_trims_it_to_fit():
    doc = {"result": "applied", "plan_hash": "sha256:" + "b" * 64, "direction": "upgrade", "steps": []}
    plan = {"hash": doc["plan_hash"], "direction": "upgrade", "transaction": "single", "from_revisions": [],
            "to_revisions": ["r199"], "destructive": [], "warnings": [],
            "steps": [{"revision": f"r{i:03d}", "direction": "upgrade", "doc": "d" * 40, "sql": "x" * 900,
                       "destructive": False} for i in range(200)]}
    small = json.loads(result_file_text(doc, plan={**plan, "steps": plan["steps"][:2]}))
    assert small["plan"]["steps"] == [{k: v for k, v in s.items() if k != "sql"} for s in plan["steps"][:2]]
    assert small["result"] == "applied" and "truncated" not in small
    text = result_file_text(doc, plan=plan)
    big = json.loads(text)
    assert len(text.encode()) <= RESULT_FILE_LIMIT and big["truncated"] is True
    assert big["plan"]["hash"] == plan["hash"] and big["plan"]["steps_total"] == 200
    assert 0 < len(big["plan"]["steps"]) < 200 and big["plan"]["steps"][0]["revision"] == "r000"


@pytest.mark.parametrize("flags", [["--allow-downgrade", "--downgrade", "Deny"],
                                   ["--archive", "--allow-data-loss"],
                                   ["--archive", "--data-loss", "Allow"]])
def test_contradicting_policy_flags_are_refused_and_change_nothing(database_url, tmp_path, flags):
    d = tmp_path / "m"
    linear_history(d, 1)
    r = dbrev("apply", "--migrations", str(d), "-r", "head", "--json", *flags, url=database_url)
    assert r.code == 2 and r.json["error"]["error_type"] == "BadInput", r.stdout + r.stderr
    assert "contradict" in r.json["error"]["message"]
    assert heads(database_url) == []


def test_require_approval_refuses_with_the_plan_then_runs_exactly_the_approved_one(database_url, tmp_path):
    """What the operator's Job does: spec.policy's words on the command line, the approval as a hash."""
    d = tmp_path / "m"
    revs = linear_history(d, 2)
    assert dbrev("apply", "--migrations", str(d), "-r", "head", url=database_url).code == 0
    result = tmp_path / "r.json"
    args = ["apply", "--migrations", str(d), "-r", revs[0], "--json", "--result-file", str(result),
            "--downgrade", "RequireApproval", "--data-loss", "Allow", "--actor", "operator:shop/orders"]
    waiting = dbrev(*args, url=database_url)
    doc = json.loads(result.read_text())
    assert doc["result"] == "refused" and doc["error"]["reason"] == "AwaitingApproval", doc
    assert doc["plan"]["direction"] == "downgrade" and doc["plan"]["hash"] == doc["plan_hash"]
    assert waiting.code != 0 and heads(database_url) == [revs[-1]]
    wrong = dbrev(*args, "--approve", "sha256:" + "0" * 64, url=database_url)
    assert json.loads(result.read_text())["result"] == "refused" and heads(database_url) == [revs[-1]], wrong.stdout
    ok = dbrev(*args, "--approve", doc["plan_hash"], url=database_url)
    assert ok.code == 0 and json.loads(result.read_text())["result"] == "applied", ok.stdout + ok.stderr
    assert heads(database_url) == [revs[0]]
    from dbhelp import q

    assert "operator:shop/orders" in [r[0] for r in q(database_url, "SELECT actor FROM dbrev.runs")]


def test_a_stored_copy_that_imports_what_an_older_image_lacks_says_so(database_url, tmp_path):
    """A GitOps revert of an app image: the older image lacks the newer script and the module it imports; the
    downgrade would run the stored copy, and the error says why it cannot, changing nothing."""
    mods, d = tmp_path / "mods", tmp_path / "m"
    mods.mkdir()
    (mods / "ordersapp_gone.py").write_text("DEFAULT = 7\n")
    revs = linear_history(d, 1)
    from scriptgen import write_script

    write_script(d, "r002newr", revs[-1],
                 'op.add_column("t1", sa.Column("x", sa.Integer, server_default=str(ordersapp_gone.DEFAULT)))',
                 'op.drop_column("t1", "x")', extra="import ordersapp_gone", name="r002newr.py")
    up = dbrev("apply", "--migrations", str(d), "-r", "head", "--pythonpath", str(mods), url=database_url)
    assert up.code == 0, up.stdout + up.stderr
    (d / "r002newr.py").unlink()
    r = dbrev("apply", "--migrations", str(d), "-r", revs[-1], "--json", "--allow-downgrade", "--allow-data-loss",
              url=database_url)
    err = r.json["error"]
    assert r.code == 2 and err["reason"] == "InvalidScripts", r.stdout
    assert "stored in the database" in err["message"] and "ordersapp_gone" in err["message"]
    assert "older than the script" in err["hint"]
    assert heads(database_url) == ["r002newr"]


@pytest.mark.parametrize("with_env_py", [False, True], ids=["scripts", "script-location"])
def test_a_folder_other_than_the_operators_scripts_is_refused_transiently_and_changes_nothing(
        database_url, tmp_path, with_env_py):
    """``--scripts-sha256``: a migration pod whose ConfigMap volume lags an update runs nothing, and says so in a
    reason the operator retries; the hash is the one the operator computes over the ConfigMap's keys."""
    from dbrev.core.errors import ScriptsOutOfDate
    from dbrev.engine.scripts import files_sha256, materialize
    from dbrev.engine.worker import raise_reported

    src = tmp_path / "src"
    linear_history(src, 2)
    files = {p.name: p.read_text() for p in src.glob("*.py")}
    if with_env_py:
        files["env.py"] = "# the project's env.py: it lays the folder out as a script location (not run here)\n"
    folder = materialize(files, tmp_path / "mounted")
    assert (folder / "versions").is_dir() == with_env_py
    right = files_sha256(files)
    wrong = files_sha256({**files, "zz_new.py": "revision = 'x'\n"})
    stale = dbrev("apply", "--migrations", str(folder), "-r", "head", "--builtin-env", "--scripts-sha256", wrong,
                  url=database_url)
    assert stale.code == 1, stale.stdout + stale.stderr
    err = stale.json["error"]
    assert err["reason"] == "ScriptsOutOfDate" and err["error_type"] == "ScriptsOutOfDate", err
    assert "nothing ran" in err["message"] and wrong[:12] in err["message"] and right[:12] in err["message"]
    assert heads(database_url) == []  # no version table, no run journaled
    with pytest.raises(ScriptsOutOfDate) as raised:  # the operator re-raises the pod's document: transient
        raise_reported(err)
    assert raised.value.transient
    plan = dbrev("plan", "--migrations", str(folder), "-r", "head", "--scripts-sha256", wrong,
                 url=database_url)
    assert plan.code == 1 and plan.json["error"]["reason"] == "ScriptsOutOfDate"
    ok = dbrev("apply", "--migrations", str(folder), "-r", "head", "--builtin-env", "--scripts-sha256",
               "sha256:" + right, url=database_url, timeout=300)
    assert ok.code == 0 and ok.json["result"] == "applied", ok.stdout + ok.stderr
