"""`make demo`: dbrev's main job on a fresh machine, printed as a user would watch it.

Two ways to run the operator (``--mode``):

* ``pod`` (the default where a one-node cluster can run: root, containerd, the node binaries): a real
  one-node cluster (``dbrev_dev.envtest.node``) with PostgreSQL inside it; the operator image is built
  (cached) and runs as the Deployment of ``manifests/overlays/cluster-wide``, applied with one
  ``kubectl apply -k``: what users run;
* ``process`` (quick, anywhere): a local control plane (kube-apiserver + etcd; built once from Go
  modules into ~/.cache/dbrev on a fresh machine), a throwaway PostgreSQL and `dbrev operator` as a
  local process.

Either way it walks a DatabaseRevision through an upgrade, a GitOps revert (a verified rollback that
archives the data it drops), a failing migration that rolls itself back, and the fix.  Everything is
stopped at the end (``--keep`` leaves it running and prints how to reach it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "migrations"
NS = "shop"
MERGE, HEAD = "e5f6a7b8c9d0", "f1a2b3c4d5e6"

BROKEN = '''"""add a loyalty tier (broken: refers to a column that does not exist)"""
import sqlalchemy as sa
from alembic import op

revision = "9c8b7a6f5e4d"
down_revision = "f1a2b3c4d5e6"
branch_labels = None
depends_on = None


def upgrade():
    op.add_column("customers", sa.Column("tier", sa.String(16), nullable=True))
    op.execute("UPDATE customers SET tier = CASE WHEN lifetime_cents > 100000 THEN 'gold' ELSE 'basic' END")


def downgrade():
    op.drop_column("customers", "tier")
'''


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def note(text: str) -> None:
    print(textwrap.fill(text, 100, initial_indent="   ", subsequent_indent="   "), flush=True)


class Demo:
    def __init__(self, keep: bool, mode: str = "process"):
        self.keep = keep
        self.mode = mode
        self.work = Path(tempfile.mkdtemp(prefix="dbrev-demo-"))
        self.pg = None
        self.cp = None
        self.op = None

    # -- helpers ---------------------------------------------------------------
    def sh(self, *args: str, show: bool = True, input: str | None = None, check: bool = True) -> str:
        shown = " ".join(args).replace(str(self.cp.kubectl_path) if self.cp else "\0", "kubectl")
        shown = shown.replace(f"{sys.executable} -m dbrev", "dbrev").replace(getattr(self, "psql_bin", "\0"), "psql")
        p = subprocess.run(list(args), capture_output=True, text=True, input=input, env=self.env)
        if show:
            print(f"$ {shown}", flush=True)
            out = (p.stdout + (p.stderr if p.returncode else "")).rstrip()
            if out:
                print(textwrap.indent(out, "  "), flush=True)
        if check and p.returncode != 0 and not show:
            raise RuntimeError(f"{shown} failed: {p.stderr}")
        return p.stdout

    def kubectl(self, *args: str, **kw) -> str:
        return self.sh(str(self.cp.kubectl_path), *args, **kw)

    def dbrev(self, *args: str, **kw) -> str:
        return self.sh(sys.executable, "-m", "dbrev", *args, **kw)

    def apply(self, obj: dict) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(obj), show=False)

    def status(self) -> dict:
        return json.loads(self.kubectl("get", "dbrev", "orders", "-n", NS, "-o", "json", show=False))

    def wait(self, pred, what: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            obj = self.status()
            st = obj.get("status") or {}
            if st.get("observedGeneration") == obj["metadata"]["generation"] and pred(st):
                return st
            time.sleep(0.3)
        raise RuntimeError(f"timed out waiting for {what}")

    @staticmethod
    def ready(st: dict, reason: str | None = None, status: str = "True") -> bool:
        c = [x for x in st.get("conditions", []) if x["type"] == "Ready"]
        return bool(c) and c[0]["status"] == status and (reason is None or c[0]["reason"] == reason)

    def events(self, since: int) -> int:
        items = json.loads(self.kubectl("get", "events", "-n", NS, "-o", "json", show=False))["items"]
        items.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
        new = [e for e in items if int(e["metadata"]["resourceVersion"]) > since]
        print("$ kubectl get events -n shop  (new ones)", flush=True)
        for e in new:
            msg = e["message"] if len(e["message"]) < 150 else e["message"][:147] + "..."
            print(f"  {e['type']:<8} {e['reason']:<18} {msg}", flush=True)
        return max([since] + [int(e["metadata"]["resourceVersion"]) for e in items])

    def spec(self, **changes) -> None:
        self.kubectl("patch", "dbrev", "orders", "-n", NS, "--type", "merge", "-p",
                     json.dumps({"spec": changes}))

    # -- the walk --------------------------------------------------------------
    def psql(self, *args: str, show: bool = True) -> str:
        return self.sh(self.psql_bin, "-h", self.pg.host, "-p", str(self.pg.port), "-U", "postgres",
                       "-d", "shop", *args, show=show)

    def _start_pod_mode(self) -> None:
        from .envtest import images
        from .envtest.node import NodeCluster

        banner("1. A real one-node Kubernetes cluster, with PostgreSQL inside the node")
        note("etcd, kube-apiserver, controller-manager, scheduler, containerd, kubelet and kube-proxy run "
             "in their own network namespace (nothing routes out of it); PostgreSQL listens on the node's "
             "address, where pods reach it.")
        t0 = time.monotonic()
        archive = images.operator_archive()  # the Dockerfile, built once per source version
        note(f"operator image ready in {time.monotonic() - t0:.1f}s ({archive.name})")
        t0 = time.monotonic()
        self.cp = NodeCluster(self.work / "node", postgres=True, die_with_parent=not self.keep).start()
        self.pg = self.cp.pg
        self.cp.load_image(archive, images.MANIFESTS_IMAGE)
        self.env = {**os.environ, "KUBECONFIG": str(self.cp.kubeconfig)}
        note(f"node Ready in {time.monotonic() - t0:.1f}s at {self.cp.server}; image loaded as the "
             "manifests' ghcr.io/dbrev/dbrev:0.1.0")
        self.kubectl("get", "nodes", "-o", "wide")

    def _start_process_mode(self) -> None:
        from .envtest.controlplane import ControlPlane
        from dbrev.pg.ephemeral import PostgresServer

        banner("1. A throwaway PostgreSQL and a local Kubernetes control plane")
        self.pg = PostgresServer().start()
        note(f"PostgreSQL {self.pg.bindir.parent.name} on 127.0.0.1:{self.pg.port}, database 'shop'.")
        note("kube-apiserver + etcd run as local processes (the first run on a machine builds them from Go "
             "modules into ~/.cache/dbrev: a few minutes; later runs start in seconds).")
        t0 = time.monotonic()
        self.cp = ControlPlane(self.work / "cluster", die_with_parent=not self.keep).start()
        self.env = {**os.environ, "KUBECONFIG": str(self.cp.kubeconfig)}
        note(f"control plane ready in {time.monotonic() - t0:.1f}s at {self.cp.server}")
        self.kubectl("apply", "-f", str(ROOT / "crds" / "dbrev.io_databaserevisions.yaml"))
        self.cp.wait_established("databaserevisions.dbrev.io")

    def _operator_pod_mode(self) -> None:
        banner("2. The operator: the image, as the Deployment of manifests/overlays/cluster-wide")
        self.kubectl("apply", "-k", str(ROOT / "manifests" / "overlays" / "cluster-wide"))
        self.kubectl("-n", "dbrev-system", "rollout", "status", "deployment/dbrev-operator", "--timeout=180s")
        self.kubectl("get", "pods", "-n", "dbrev-system", "-o", "wide")
        note("One `kubectl apply -k`: the CRDs, RBAC, the Deployment (non-root, read-only root filesystem, "
             "probes, limits) and a Job that creates the peering object once its CRD is served. The "
             "operator is PID 1 in its container and uses its ServiceAccount (in-cluster config).")

    def _operator_process_mode(self) -> None:
        from dbrev.pg.ephemeral import free_port

        banner("2. The operator")
        self.metrics_port = free_port()
        self.op = subprocess.Popen(
            [sys.executable, "-m", "dbrev", "operator", "-n", NS, "--metrics-address", "127.0.0.1",
             "--metrics-port", str(self.metrics_port), "--liveness-address", "127.0.0.1",
             "--liveness-port", str(free_port())],
            # the local control plane runs no kubelet, so no migration Job could run: the development switch
            env={**self.env, "DBREV_SCRIPTS_DIR": str(self.work / "scripts"), "DBREV_TIMER_INTERVAL": "5",
                 "DBREV_MIGRATIONS_IN_PROCESS": "1"},
            stdout=open(self.work / "operator.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        note(f"dbrev operator -n {NS} (JSON logs in {self.work / 'operator.log'}, metrics on "
             f"127.0.0.1:{self.metrics_port}/metrics)")

    def operator_log_tail(self, n: int = 15) -> str:
        if self.mode == "pod" and self.cp:
            p = subprocess.run([str(self.cp.kubectl_path), "--kubeconfig", str(self.cp.kubeconfig), "logs", "-n",
                                "dbrev-system", "deployment/dbrev-operator", f"--tail={n}"],
                               capture_output=True, text=True)
            return p.stdout + p.stderr
        log = self.work / "operator.log"
        return "\n".join(log.read_text().splitlines()[-n:]) if log.exists() else ""

    def run(self) -> None:
        from dbrev.pg.ephemeral import create_database

        if self.mode == "pod":
            self._start_pod_mode()
        else:
            self._start_process_mode()
        self.psql_bin = str(self.pg.bindir / "psql")
        url = create_database(self.pg.url(), "shop")
        self.cp.create_namespace(NS)
        self.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "orders-db", "namespace": NS},
                    "stringData": {"url": url}})
        self.kubectl("create", "configmap", "orders-migrations", "-n", NS, f"--from-file={EXAMPLES}")
        if self.mode == "pod":
            self._operator_pod_mode()
        else:
            self._operator_process_mode()

        banner("3. Declare the schema: spec.revision = the merge of two feature branches")
        self.apply({"apiVersion": "dbrev.io/v1alpha1", "kind": "DatabaseRevision",
                    "metadata": {"name": "orders", "namespace": NS},
                    "spec": {"revision": MERGE, "database": {"urlSecretRef": {"name": "orders-db"}},
                             "migrations": {"configMapRefs": [{"name": "orders-migrations"}]},
                             "policy": {"dataLoss": "Archive"}}})
        print("$ kubectl apply -f databaserevision.yaml   # revision: e5f6a7b8c9d0, policy.dataLoss: Archive",
              flush=True)
        self.wait(lambda s: self.ready(s) and s.get("currentRevision") == MERGE, "Ready")
        self.kubectl("get", "dbrev", "-n", NS)
        rv = self.events(0)
        self.psql("-qc",
                "INSERT INTO customers (email, name) VALUES ('Ann+news@Example.com', 'Ann'), "
                "('bo@example.org', 'Bo'); INSERT INTO orders (customer_id, total_cents) "
                "SELECT id, 4200 FROM customers;", show=False)
        note("The application writes two customers and their orders.")

        banner("4. A new release in git: spec.revision = head (a data migration and a concurrent index)")
        self.spec(revision="head")
        self.wait(lambda s: self.ready(s) and s.get("currentRevision") == HEAD, "Ready at head")
        self.kubectl("get", "dbrev", "-n", NS, "-o", "wide")
        rv = self.events(rv)
        st = self.status()["status"]
        note(f"plan {st['plan']['hash'][:19]}: {st['plan']['direction']} in {len(st['plan']['steps'])} steps, "
             f"transaction {st['plan']['transaction']} (the concurrent index needs autocommit); integrity "
             f"{'passed' if st['integrity']['passed'] else 'FAILED'}.")

        banner("5. The release is reverted in git: spec.revision goes back — a safe, verified rollback")
        self.spec(revision=MERGE)
        self.wait(lambda s: self.ready(s) and s.get("currentRevision") == MERGE, "Ready after the revert")
        self.kubectl("get", "dbrev", "-n", NS)
        rv = self.events(rv)
        self.dbrev("archive", "list", "--database-url", url)
        note("The downgrade dropped customers.email_normalized; its values are kept in dbrev_archive and can "
             "be put back with `dbrev archive restore` after the next upgrade.")

        banner("6. A broken migration ships: it fails, rolls itself back, and says what to do")
        self.kubectl("patch", "configmap", "orders-migrations", "-n", NS, "--type", "merge", "-p",
                     json.dumps({"data": {"9c8b7a6f5e4d_loyalty_tier.py": BROKEN}}), show=False)
        print("$ kubectl patch configmap orders-migrations ...   # adds 9c8b7a6f5e4d_loyalty_tier.py", flush=True)
        self.spec(revision="9c8b7a6f5e4d")
        st = self.wait(lambda s: any(c["type"] == "Stalled" and c["status"] == "True"
                                     for c in s.get("conditions", [])), "Stalled")
        self.kubectl("get", "dbrev", "-n", NS)
        rv = self.events(rv)
        ready = [c for c in st["conditions"] if c["type"] == "Ready"][0]
        note(f"Ready=False, reason {ready['reason']}: {ready['message']}")
        self.dbrev("current", "--database-url", url, "--migrations", str(EXAMPLES))

        banner("7. The on-call engineer reverts spec.revision: back to Ready, nothing lost")
        self.spec(revision=MERGE)
        self.wait(lambda s: self.ready(s) and s.get("currentRevision") == MERGE, "Ready")
        self.kubectl("get", "dbrev", "-n", NS)
        self.events(rv)
        self.dbrev("verify", "--database-url", url, "--migrations", str(EXAMPLES))
        self.psql("-c",
                "SELECT c.name, count(o.id) AS orders FROM customers c JOIN orders o ON o.customer_id = c.id "
                "GROUP BY c.name ORDER BY 1")

        banner("8. What an SRE scrapes")
        if self.mode == "pod":
            path = "/api/v1/namespaces/dbrev-system/services/dbrev-operator-metrics:metrics/proxy/metrics"
            text = self.kubectl("get", "--raw", path, show=False)
            print(f"$ kubectl get --raw {path} | grep ^dbrev_", flush=True)
        else:
            import urllib.request

            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode()
            print("$ curl -s 127.0.0.1:%d/metrics | grep ^dbrev_" % self.metrics_port, flush=True)
        lines = [ln for ln in text.splitlines()
                 if ln.startswith(("dbrev_reconcile_total", "dbrev_rollbacks_total", "dbrev_ready",
                                   "dbrev_revision_info", "dbrev_migration_steps_total"))]
        for ln in lines:
            print(f"  {ln}", flush=True)

    def close(self) -> None:
        if self.keep and self.cp and self.mode == "pod":
            banner("Left running (--keep)")
            note(f"export KUBECONFIG={self.cp.kubeconfig}; kubectl: {self.cp.kubectl_path}; PostgreSQL on "
                 f"{self.pg.host}:{self.pg.port}; stop with: python -m dbrev_dev.envtest.node down --dir {self.cp.dir}")
            return
        if self.keep and self.cp:
            banner("Left running (--keep)")
            note(f"export KUBECONFIG={self.cp.kubeconfig}; kubectl: {self.cp.kubectl_path}; PostgreSQL on "
                 f"127.0.0.1:{self.pg.port}; stop with: kill {self.op.pid if self.op else ''}; python -m "
                 f"dbrev_dev.envtest.controlplane down --dir {self.work / 'cluster'}")
            return
        if self.op and self.op.poll() is None:
            self.op.terminate()
            try:
                self.op.wait(20)
            except subprocess.TimeoutExpired:
                self.op.kill()
        if self.cp:
            self.cp.stop()  # a node also stops its PostgreSQL
        if self.pg and self.mode != "pod":
            self.pg.cleanup()
        shutil.rmtree(self.work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dbrev_dev.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="leave PostgreSQL, the control plane and the operator up")
    ap.add_argument("--mode", choices=("auto", "pod", "process"), default=os.environ.get("DBREV_DEMO_MODE", "auto"),
                    help="pod: the image as a Deployment on a real one-node cluster; process: the operator as a "
                         "local process against a bare control plane; auto (default): pod where a node can run")
    args = ap.parse_args(argv)
    mode = args.mode
    if mode == "auto":
        from .envtest.node import unavailable_reason

        why = unavailable_reason()
        mode = "process" if why else "pod"
        print(f"mode: {mode}" + (f" (no one-node cluster here: {why})" if why else
                                 " (the operator image in a Pod on a one-node cluster; --mode process is quicker)"),
              flush=True)
    demo = Demo(args.keep, mode)
    t0 = time.monotonic()
    try:
        demo.run()
        banner(f"Done in {time.monotonic() - t0:.0f}s")
        return 0
    except Exception as e:  # noqa: BLE001 - a demo says what broke and where to look
        print(f"\ndemo failed: {e}", file=sys.stderr)
        tail = demo.operator_log_tail()
        if tail:
            print("last operator log lines:", file=sys.stderr)
            print(tail, file=sys.stderr)
        return 1
    finally:
        demo.close()


if __name__ == "__main__":
    sys.exit(main())
