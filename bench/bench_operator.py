#!/usr/bin/env python3
"""Operator latency: `kubectl apply` of a new revision to Ready, vs the same migration by the CLI alone.

One run brings up the local control plane (kube-apiserver + etcd, cached binaries)
and a throwaway PostgreSQL, runs `dbrev operator` as a process, and for each
repetition, on a fresh database already at r1:

* operator: `kubectl apply` of the DatabaseRevision with spec.revision r2, then
  poll (every 20 ms, Python client) until Ready=True at r2 for that generation;
* CLI: `dbrev apply -r r2` of the same one-step upgrade.

Prints medians and the ratio (operator / CLI).  No target is set by the issue;
the figure shows what the control loop adds to a migration.

    python bench/bench_operator.py [--reps N] [--jobs]

``--jobs`` then runs ``bench_jobs.py`` (the operator's Job path in the app's image vs a plain Job running
``alembic upgrade head``, on the one-node cluster; target within 1.3x), with the same ``--reps``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "tests"))

from dbrev_dev.envtest.controlplane import ControlPlane  # noqa: E402
from dbrev.pg.ephemeral import PostgresServer, create_database, free_port  # noqa: E402
from scriptgen import write_script  # noqa: E402

DR = "dbrev.io", "v1alpha1", "databaserevisions"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--jobs", action="store_true",
                    help="then the Job path vs a Helm-hook Job on the one-node cluster (bench_jobs.py)")
    args = ap.parse_args()
    code = _control_plane(args)
    if args.jobs and code == 0:
        print(flush=True)
        code = subprocess.run([sys.executable, str(Path(__file__).with_name("bench_jobs.py")),
                               "--reps", str(args.reps)]).returncode
    return code


def _control_plane(args) -> int:
    work = Path(tempfile.mkdtemp(prefix="dbrev-bench-op-"))
    mig = work / "migrations"
    write_script(mig, "b001aaaa", None, 'op.create_table("accounts", sa.Column("id", sa.Integer, primary_key=True), '
                 'sa.Column("name", sa.Text))', 'op.drop_table("accounts")', doc="accounts")
    write_script(mig, "b002aaaa", "b001aaaa", 'op.add_column("accounts", sa.Column("email", sa.Text))',
                 'op.drop_column("accounts", "email")', doc="email")
    pg = PostgresServer().start()
    cp = ControlPlane(work / "cp", die_with_parent=True).start()
    op = None
    try:
        kubectl = [str(cp.kubectl_path), "--kubeconfig", str(cp.kubeconfig)]
        env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig)}
        subprocess.run(kubectl + ["apply", "-f", str(ROOT / "crds")], check=True, capture_output=True)
        subprocess.run(kubectl + ["wait", "--for=condition=Established", "crd/databaserevisions.dbrev.io"],
                       check=True, capture_output=True)
        ns = "bench"
        cp.create_namespace(ns)
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "migrations", "namespace": ns},
              "data": {p.name: p.read_text() for p in mig.glob("*.py")}}
        subprocess.run(kubectl + ["apply", "-f", "-"], input=json.dumps(cm), text=True, check=True,
                       capture_output=True)
        op = subprocess.Popen([sys.executable, "-m", "dbrev", "operator", "-n", ns, "--metrics-port", "0",
                               "--liveness-address", "127.0.0.1", "--liveness-port", str(free_port()),
                               "--log-level", "warning"],
                              # no kubelet on the local control plane: migrations in the operator's process
                              env={**env, "DBREV_SCRIPTS_DIR": str(work / "scripts"),
                                   "DBREV_MIGRATIONS_IN_PROCESS": "1"},
                              stdout=open(work / "operator.log", "w"), stderr=subprocess.STDOUT)
        api = cp.api_client()
        from kubernetes import client

        co = client.CustomObjectsApi(api)

        def status(name):
            obj = co.get_namespaced_custom_object(*DR[:2], ns, DR[2], name)
            return obj["metadata"]["generation"], obj.get("status") or {}

        def ready_at(name, rev, gen=None, timeout=120):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                g, st = status(name)
                ready = [c for c in st.get("conditions", []) if c["type"] == "Ready"]
                if ready and ready[0]["status"] == "True" and st.get("currentRevision") == rev \
                        and st.get("observedGeneration") == g and (gen is None or g >= gen):
                    return
                time.sleep(0.02)
            raise SystemExit(f"{name} did not become Ready at {rev}; see {work / 'operator.log'}")

        def resource(name, rev):
            return {"apiVersion": "dbrev.io/v1alpha1", "kind": "DatabaseRevision",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"revision": rev, "database": {"urlSecretRef": {"name": name}},
                             "migrations": {"configMapRefs": [{"name": "migrations"}]}}}

        op_times, cli_times = [], []
        for i in range(args.reps + 1):  # the first round warms caches and is not counted
            # operator
            name = f"db{i}"
            url = create_database(pg.url())
            sec = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                   "stringData": {"url": url}}
            subprocess.run(kubectl + ["apply", "-f", "-"], input=json.dumps(sec), text=True, check=True,
                           capture_output=True)
            subprocess.run(kubectl + ["apply", "-f", "-"], input=json.dumps(resource(name, "b001aaaa")), text=True,
                           check=True, capture_output=True)
            ready_at(name, "b001aaaa")
            t0 = time.perf_counter()
            subprocess.run(kubectl + ["apply", "-f", "-"], input=json.dumps(resource(name, "b002aaaa")), text=True,
                           check=True, capture_output=True)
            ready_at(name, "b002aaaa", gen=2)
            t_op = time.perf_counter() - t0
            # CLI alone, same step, fresh database at r1
            url2 = create_database(pg.url())
            base = [sys.executable, "-m", "dbrev", "apply", "--migrations", str(mig), "--json"]
            subprocess.run(base + ["-r", "b001aaaa"], env={**env, "DBREV_DATABASE_URL": url2}, check=True,
                           capture_output=True)
            t0 = time.perf_counter()
            subprocess.run(base + ["-r", "b002aaaa"], env={**env, "DBREV_DATABASE_URL": url2}, check=True,
                           capture_output=True)
            t_cli = time.perf_counter() - t0
            if i:
                op_times.append(t_op)
                cli_times.append(t_cli)
            print(f"  round {i}{' (warm-up)' if not i else ''}: operator {t_op:.3f}s, CLI {t_cli:.3f}s", flush=True)
        o, c = statistics.median(op_times), statistics.median(cli_times)
        print()
        print(f"{'one-step upgrade':<44} {'median':>8}")
        print(f"{'dbrev apply (CLI alone)':<44} {c:>7.3f}s")
        print(f"{'kubectl apply -> Ready (operator)':<44} {o:>7.3f}s")
        print(f"{'ratio operator / CLI':<44} {o / c:>7.2f}x")
        return 0
    finally:
        if op:
            op.terminate()
            op.wait(20)
        cp.stop()
        pg.cleanup()


if __name__ == "__main__":
    sys.exit(main())
