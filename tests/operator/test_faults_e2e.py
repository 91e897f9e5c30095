"""Faults, round two (issue 15), end to end: a real cluster, real PostgreSQL, `dbrev operator` as a Pod or a process.

Each test reproduces what the adversarial probe saw: a status stuck at Progressing, two URLs of one
database fighting, a restart re-running a failed plan, a run's record lost while the API server was
unreachable, an outage nobody was told about, a PostgreSQL restart mid-run.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest
import yaml

from clihelp import dbrev as cli
from dbhelp import heads, q
from opharness import condition, dbrev_resource, is_state, ready_at, wait_for
from scriptgen import write_script

pytestmark = pytest.mark.cluster



def stalled(kube, ns, name, timeout=90):
    return wait_for(lambda: (s := kube.status(ns, name)) and condition(s, "Stalled").get("status") == "True" and s,
                    timeout, f"{ns}/{name} Stalled")


def views(d: Path, n: int = 2) -> Path:
    """n tiny revisions (a view each): fast both ways, nothing destructive."""
    prev = None
    for i in range(1, n + 1):
        rev = f"v{i:03d}aaaa"
        write_script(d, rev, prev, f'op.execute("CREATE VIEW v{i} AS SELECT {i} AS x")',
                     f'op.execute("DROP VIEW v{i}")')
        prev = rev
    return d


def runs(url: str) -> list[str]:
    return [r[0] for r in q(url, "SELECT status FROM dbrev.runs ORDER BY id")]


# ---------------------------------------------------------------------------------------------- 15.1

def test_a_run_ending_as_the_last_one_did_still_replaces_progressing(kube, namespace, database_url, start_operator,
                                                                      tmp_path):
    """The final status equals the one before the run (same failure, same message): it must still be written
    over the Progressing the run wrote, in the same patch as the run's history entry."""
    d = tmp_path / "m"
    write_script(d, "g001aaaa", None, 'op.create_table("t1", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("t1")')
    write_script(d, "g002aaaa", "g001aaaa", 'op.execute("SELECT * FROM no_such_table")', "pass", doc="broken")
    kube.secret_url(namespace, "db", database_url)
    kube.configmap_from(namespace, "migrations", d)
    start_operator([namespace])
    kube.apply(dbrev_resource(namespace, "g", "head"))
    st = stalled(kube, namespace, "g")
    assert condition(st, "Stalled")["reason"] == "RolledBack"
    for i in range(2):
        n = len(st.get("history") or [])
        kube("annotate", "dbrev", "g", "-n", namespace, "--overwrite", f"dbrev.io/reconcile-requested-at=retry-{i}")
        st = wait_for(lambda: (s := kube.status(namespace, "g")) and len(s.get("history") or []) > n and s, 60,
                      f"retry {i + 1} in history")
        assert st["history"][0]["trigger"] == f"retry-{i}" and st["history"][0]["result"] == "rolled_back"
        assert condition(st, "Stalled")["status"] == "True", (i, st["conditions"])
        assert condition(st, "Reconciling")["status"] == "False" and condition(st, "Ready")["status"] == "False"
    assert runs(database_url)[-3:] == ["rolled_back"] * 3


def test_conditions_say_ready_after_repeated_hand_migrations(kube, namespace, database_url, start_operator,
                                                            tmp_path):
    """Ready at B; `dbrev apply -r A` by hand, twice: each re-apply by the timer ends Ready."""
    d = views(tmp_path / "m", 2)
    kube.secret_url(namespace, "db", database_url)
    kube.configmap_from(namespace, "migrations", d)
    start_operator([namespace])
    kube.apply(dbrev_resource(namespace, "v", "v001aaaa", driftCheckInterval="1h"))
    ready_at(kube, namespace, "v", "v001aaaa")
    for i in range(2):
        n = len(kube.status(namespace, "v").get("history") or [])
        assert cli("apply", "--migrations", str(d), "-r", "v002aaaa", url=database_url).code == 0
        st = wait_for(lambda: (s := kube.status(namespace, "v")) and len(s.get("history") or []) > n and s, 60,
                      f"re-apply {i + 1} in history")
        assert st["history"][0]["trigger"] == "drift" and st["history"][0]["direction"] == "downgrade"
        assert is_state(st, "True", "AtRevision"), (i, st["conditions"])
        assert heads(database_url) == ["v001aaaa"]


def test_progressing_conditions_with_no_run_are_healed_by_the_timer(kube, namespace, database_url, start_operator,
                                                                     tmp_path):
    d = views(tmp_path / "m", 1)
    kube.secret_url(namespace, "db", database_url)
    kube.configmap_from(namespace, "migrations", d)
    start_operator([namespace])
    kube.apply(dbrev_resource(namespace, "v", "v001aaaa"))
    st = ready_at(kube, namespace, "v", "v001aaaa")
    stuck = [{**c, "status": {"Ready": "Unknown", "Reconciling": "True", "Stalled": "False"}[c["type"]],
              "reason": "Progressing", "message": "applying plan (a final write that went missing)"}
             for c in st["conditions"]]
    kube("patch", "dbrev", "v", "-n", namespace, "--subresource=status", "--type=merge", "-p",
         json.dumps({"status": {"conditions": stuck}}))
    assert condition(kube.status(namespace, "v"), "Reconciling")["reason"] == "Progressing"
    st = ready_at(kube, namespace, "v", "v001aaaa", timeout=30)
    assert condition(st, "Reconciling")["status"] == "False"
    assert runs(database_url) == ["applied"]  # healing ran nothing: the database was already there


# ---------------------------------------------------------------------------------------------- 15.5

def test_one_database_under_two_host_names_is_a_conflict(kube, namespace, database_url, examples_dir,
                                                         start_operator, second_host_name):
    kube.secret_url(namespace, "db", database_url)
    kube.secret_url(namespace, "db-localhost", second_host_name(namespace, database_url))
    kube.configmap_from(namespace, "migrations", examples_dir)
    start_operator([namespace])
    kube.apply(dbrev_resource(namespace, "first", "e5f6a7b8c9d0"))
    ready_at(kube, namespace, "first", "e5f6a7b8c9d0")
    kube.apply(dbrev_resource(namespace, "second", "head", secret="db-localhost"))
    st = stalled(kube, namespace, "second", 60)
    assert condition(st, "Ready")["reason"] == "Conflict" and f"{namespace}/first" in condition(st, "Ready")["message"]
    assert st["databaseKey"] == kube.status(namespace, "first")["databaseKey"]
    time.sleep(4)
    assert heads(database_url) == ["e5f6a7b8c9d0"] and runs(database_url) == ["applied"]


# ---------------------------------------------------------------------------------------------- 15.11

def test_a_restart_does_not_run_a_failed_plan_again(kube, namespace, database_url, pg_admin_url, start_operator,
                                                    tmp_path):
    from dbrev.pg.ephemeral import create_database

    d = tmp_path / "m"
    write_script(d, "f001aaaa", None, 'op.create_table("t1", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("t1")')
    write_script(d, "f002aaaa", "f001aaaa", 'op.execute("SELECT * FROM no_such_table")', "pass", doc="broken")
    slow = tmp_path / "slow"
    write_script(slow, "s001aaaa", None, 'op.create_table("t1", sa.Column("id", sa.Integer, primary_key=True))\n'
                 'op.execute("SELECT pg_sleep(30)")', 'op.drop_table("t1")', doc="slow")
    other_url = create_database(pg_admin_url)
    kube.secret_url(namespace, "db", database_url)
    kube.secret_url(namespace, "db2", other_url)
    kube.configmap_from(namespace, "migrations", d)
    kube.configmap_from(namespace, "slow", slow)
    op = start_operator([namespace])
    kube.apply(dbrev_resource(namespace, "rb", "head"))
    kube.apply(dbrev_resource(namespace, "to", "head", secret="db2", configmaps=("slow",),
                              policy={"timeoutSeconds": 10}))
    st = stalled(kube, namespace, "rb")
    assert condition(st, "Stalled")["reason"] == "RolledBack"
    st2 = stalled(kube, namespace, "to", 120)
    assert condition(st2, "Stalled")["reason"] == "TimedOut"
    before = (runs(database_url), runs(other_url), kube.status(namespace, "rb")["history"],
              kube.status(namespace, "to")["history"])
    op.stop()
    op2 = start_operator([namespace])
    wait_for(lambda: sum("The last outcome stands" in str(r.get("message")) for r in op2.logs()) >= 2
             or len(runs(database_url)) > len(before[0]) or len(runs(other_url)) > len(before[1]), 60,
             "the resumed operator to decide")
    time.sleep(3)
    assert (runs(database_url), runs(other_url), kube.status(namespace, "rb")["history"],
            kube.status(namespace, "to")["history"]) == before
    assert heads(database_url) == [] and heads(other_url) == []
    assert condition(kube.status(namespace, "rb"), "Stalled")["reason"] == "RolledBack"
    # asking for a retry runs it again
    kube("annotate", "dbrev", "rb", "-n", namespace, "--overwrite", "dbrev.io/reconcile-requested-at=retry")
    wait_for(lambda: len(runs(database_url)) > len(before[0]), 60, "the requested retry")
    # Stalled again only once the retry's outcome is written (a Job's pod journals its run before the operator
    # reads its result; meanwhile the status says Reconciling, never the old outcome as if it were the new one)
    st = wait_for(lambda: (s := kube.status(namespace, "rb")) and len(s["history"]) > len(before[2])
                  and condition(s, "Stalled").get("status") == "True" and s, 90, "the retry's outcome")
    assert st["history"][0]["trigger"] == "retry" and len(st["history"]) == len(before[2]) + 1


# ---------------------------------------------------------------------------------------------- 15.12

class TcpProxy:
    """A loopback TCP relay that can be cut and restored: the operator's way to the API server."""

    def __init__(self, target_port: int):
        self.target = ("127.0.0.1", target_port)
        self.port = 0
        self.listener: socket.socket | None = None
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()

    def start(self) -> "TcpProxy":
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.port = ls.getsockname()[1]
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()
        return self

    def _accept(self, ls) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Refuse new connections and drop the open ones."""
        if self.listener:
            self.listener.close()
            self.listener = None
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.conns.clear()


def test_a_run_that_ends_while_the_api_server_is_unreachable_is_recorded_when_it_is_back(
        kube, namespace, database_url, start_operator, operator_kubeconfig, tmp_path):
    d = tmp_path / "m"
    write_script(d, "p001aaaa", None, 'op.create_table("t1", sa.Column("id", sa.Integer, primary_key=True))',
                 'op.drop_table("t1")')
    write_script(d, "p002aaaa", "p001aaaa", 'op.create_table("t2", sa.Column("id", sa.Integer, primary_key=True))\n'
                 'op.execute("SELECT pg_sleep(5)")', 'op.drop_table("t2")', doc="slow")
    kube.secret_url(namespace, "db", database_url)
    kube.configmap_from(namespace, "migrations", d)
    cfg = yaml.safe_load(Path(operator_kubeconfig).read_text())
    server = cfg["clusters"][0]["cluster"]["server"]
    api_port = int(server.rsplit(":", 1)[1].split("/")[0])
    proxy = TcpProxy(api_port).start()
    cfg["clusters"][0]["cluster"]["server"] = server.replace(f":{api_port}", f":{proxy.port}")
    proxied = tmp_path / "proxied-kubeconfig"
    proxied.write_text(yaml.safe_dump(cfg))
    try:
        op = start_operator([namespace], kubeconfig=str(proxied))
        kube.apply(dbrev_resource(namespace, "p", "p001aaaa"))
        ready_at(kube, namespace, "p", "p001aaaa")
        kube("patch", "dbrev", "p", "-n", namespace, "--type", "merge", "-p",
             json.dumps({"spec": {"revision": "head"}}))
        wait_for(lambda: q(database_url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(5)%' "
                                         "AND pid <> pg_backend_pid()")[0][0], 60, "the slow step to start")
        proxy.cut()
        wait_for(lambda: heads(database_url) == ["p002aaaa"], 60, "the run to finish in the database")
        time.sleep(6)  # the operator tries to write the outcome, and cannot
        proxy.start()
        st = wait_for(lambda: (s := kube.status(namespace, "p")) and (s.get("history") or [{}])[0].get("to")
                      == "p002aaaa" and s, 90, "the run's record after the outage")
        assert st["history"][0]["result"] == "applied" and st["history"][0]["trigger"] == "spec"
        assert is_state(st, "True", "AtRevision") and st["currentRevision"] == "p002aaaa"
        wait_for(lambda: any(e["reason"] == "Applied" and "p002aaaa" in e["message"]
                             for e in kube.events(namespace, "p")), 30, "the Applied Event of the run")
        assert runs(database_url) == ["applied", "applied"]  # nothing ran twice
    finally:
        proxy.cut()


# ---------------------------------------------------------------------------------------------- 15.13

def test_an_outage_while_ready_is_reported_quickly_once_and_clears(kube, namespace, start_operator, tmp_path,
                                                                   new_postgres):
    from dbrev.pg.ephemeral import create_database

    server = new_postgres().start()
    try:
        url = create_database(server.url())
        kube.secret_url(namespace, "db", url)
        kube.configmap_from(namespace, "migrations", views(tmp_path / "m", 1))
        op = start_operator([namespace])
        kube.apply(dbrev_resource(namespace, "v", "v001aaaa", database={
            "urlSecretRef": {"name": "db"}, "connectTimeoutSeconds": 60}))
        ready_at(kube, namespace, "v", "v001aaaa")
        assert op.metric("dbrev_ready", namespace=namespace, name="v") == 1
        server.stop()
        t0 = time.monotonic()
        st = wait_for(lambda: (s := kube.status(namespace, "v")) and condition(s, "DatabaseReachable").get("status")
                      == "False" and s, 30, "DatabaseReachable=False")
        assert time.monotonic() - t0 < 30  # not after the whole connect timeout of 60 s
        assert condition(st, "DatabaseReachable")["reason"] == "DatabaseUnavailable"
        assert is_state(st, "True", "AtRevision")  # the database is still at its revision, as far as anyone knows
        assert op.metric("dbrev_database_reachable", namespace=namespace, name="v") == 0
        time.sleep(8)  # several timer ticks of the same outage: one Event, no flapping
        assert kube.reasons(namespace, "v").count("DatabaseUnreachable") == 1
        assert condition(kube.status(namespace, "v"), "DatabaseReachable")["status"] == "False"
        assert any("the database does not answer" in str(r.get("message")) for r in op.logs())
        server.start()
        st = wait_for(lambda: (s := kube.status(namespace, "v")) and condition(s, "DatabaseReachable").get("status")
                      == "True" and s, 30, "DatabaseReachable=True")
        assert is_state(st, "True", "AtRevision")
        assert "DatabaseReachable" in kube.reasons(namespace, "v")
        assert op.metric("dbrev_database_reachable", namespace=namespace, name="v") == 1
    finally:
        server.cleanup()


# ---------------------------------------------------------------------------------------------- 15.3

def test_postgres_restarting_mid_run_is_retried_and_recovers(kube, namespace, start_operator, tmp_path,
                                                             new_postgres):
    from dbrev.pg.ephemeral import create_database

    server = new_postgres().start()
    try:
        url = create_database(server.url())
        d = tmp_path / "m"
        write_script(d, "r001aaaa", None, 'op.create_table("t1", sa.Column("id", sa.Integer, primary_key=True))',
                     'op.drop_table("t1")')
        write_script(d, "r002aaaa", "r001aaaa",
                     'op.create_table("t2", sa.Column("id", sa.Integer, primary_key=True))\n'
                     'if not op.get_bind().execute(sa.text("SELECT to_regclass(\'public.restarted_once\')")).scalar():\n'
                     '    op.execute("SELECT pg_sleep(8)")', 'op.drop_table("t2")', doc="slow")
        kube.secret_url(namespace, "db", url)
        kube.configmap_from(namespace, "migrations", d)
        op = start_operator([namespace])
        kube.apply(dbrev_resource(namespace, "r", "head", database={
            "urlSecretRef": {"name": "db"}, "connectTimeoutSeconds": 5}))
        wait_for(lambda: q(url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(8)%' "
                                "AND pid <> pg_backend_pid()")[0][0], 60, "the slow step to start")
        server.stop("fast")  # pg_ctl restart -m fast
        server.start()
        q(url, "CREATE TABLE restarted_once ()")  # the retry runs without the sleep
        st = wait_for(lambda: (s := kube.status(namespace, "r")) and (
            is_state(s, "True", "AtRevision") or condition(s, "Stalled").get("status") == "True") and s, 120,
            "an outcome after the restart")
        reasons = kube.reasons(namespace, "r")
        assert condition(st, "Stalled").get("status") == "False", (st["conditions"], reasons)
        assert st["currentRevision"] == "r002aaaa" and heads(url) == ["r002aaaa"]
        assert "Retrying" in reasons and "RollbackFailed" not in reasons
        assert op.metric("dbrev_reconcile_total", result="transient_error") >= 1
    finally:
        server.cleanup()


def test_a_run_stopped_by_an_error_mid_run_is_in_history_with_an_event(kube, namespace, start_operator, tmp_path,
                                                                       new_postgres):
    """15.12: whatever the error that ended a run that had started, status.history and the Events have it."""
    from dbrev.pg.ephemeral import create_database

    server = new_postgres().start()
    try:
        url = create_database(server.url())
        d = tmp_path / "m"
        write_script(d, "h001aaaa", None, 'op.create_table("t1", sa.Column("id", sa.Integer, primary_key=True))\n'
                     'op.execute("SELECT pg_sleep(8)")', 'op.drop_table("t1")', doc="slow")
        kube.secret_url(namespace, "db", url)
        kube.configmap_from(namespace, "migrations", d)
        op = start_operator([namespace])
        kube.apply(dbrev_resource(namespace, "h", "head", database={
            "urlSecretRef": {"name": "db"}, "connectTimeoutSeconds": 5}))
        wait_for(lambda: q(url, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(8)%' "
                                "AND pid <> pg_backend_pid()")[0][0], 60, "the slow step to start")
        server.stop("fast")
        server.start()
        try:
            st = wait_for(lambda: (s := kube.status(namespace, "h")) and any(
                h.get("result") == "failed" for h in s.get("history") or []) and s, 60, "the stopped run in history")
        except AssertionError as e:  # where it stood, and what the operator said of this resource
            import json

            said = [json.dumps(r)[:500] for r in op.logs() if r.get("namespace") == namespace or r.get("job")]
            raise AssertionError(f"{e}; status: {json.dumps(kube.status(namespace, 'h'))[:3000]}; operator log: "
                                 + "\n".join(said[-40:])) from None
        failed = [h for h in st["history"] if h["result"] == "failed"][0]
        assert failed["to"] == "h001aaaa" and failed["trigger"] == "create" and failed["planHash"].startswith("sha256:")
        assert "MigrationFailed" in kube.reasons(namespace, "h")
    finally:
        server.cleanup()
