#!/usr/bin/env python3
"""The operator's Job path vs the Helm-hook practice, on the real one-node cluster (issue 12).

One run starts the one-node cluster (``dbrev_dev.envtest.node``: kubelet, containerd, PostgreSQL inside),
loads the operator image and the test application's image ``dbrev-test/ordersapp:v2``
(``dbrev_dev.envtest.images.app_archive``: the local Debian base, the app's requirements, ``pip install
dbrev``, tests/appimage/ordersapp with its five scripts), installs the operator as the Deployment of
``manifests/overlays/cluster-wide`` (unmodified) and, for each repetition, times the same one-step
upgrade (c0de00000004 -> c0de00000005: a table, a unique constraint, an index) two ways, each on a
fresh database already at c0de00000004:

* operator: ``kubectl apply`` of the DatabaseRevision (spec.migrations.image = the app's image, the
  revision moved to c0de00000005), then poll (every 20 ms, Python client) until Ready=True at it for
  that generation — the operator's Job in the app's image, its result read, the status written;
* Helm hook: ``kubectl apply`` of a plain Job running ``alembic upgrade head`` in the same image (the
  app's alembic.ini and env.py, the URL from a Secret), then poll until the Job is Complete.

The first round warms caches and is not counted; the two sides alternate which goes first. Prints
both medians and the ratio operator / Helm hook next to the target (within 1.3x). Needs root and the
node's parts (as the node tests do); without them it says why and exits 0.

    flock /run/dbrev-helpers-node.lock python bench/bench_jobs.py [--reps N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "operator"))
sys.path.insert(0, str(ROOT / "tests" / "appimage"))

from dbrev_dev.envtest import images  # noqa: E402
from dbrev_dev.envtest import node as N  # noqa: E402
from dbrev.pg.ephemeral import create_database  # noqa: E402

DR = "dbrev.io", "v1alpha1", "databaserevisions"
IMAGE = f"{images.ORDERSAPP_IMAGE}:v2"
FROM, TO = "c0de00000004", "c0de00000005"
TARGET = 1.3


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="leave the node's folder (logs) behind")
    args = ap.parse_args()
    reason = N.unavailable_reason()
    if reason:
        print(f"bench_jobs: no one-node cluster here ({reason}); nothing measured")
        return 0
    from opharness import Kube, PodOperators  # noqa: E402 (needs kubectl's assets: after the check)

    work = Path(tempfile.mkdtemp(prefix="dbrev-bench-jobs-"))
    t0 = time.monotonic()
    operator_archive, app_archive = images.operator_archive(), images.app_archive(IMAGE)
    node = N.NodeCluster(work / "node", die_with_parent=True, postgres=True)
    try:
        node.start()
    except N.NodeError as e:  # e.g. another one-node cluster (a test session) holds the machine's node
        print(f"bench_jobs: the one-node cluster did not start: {e}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
        return 1
    try:
        node.load_image(operator_archive, images.MANIFESTS_IMAGE)
        node.load_image(app_archive)
        kube = Kube(node)
        PodOperators(node).ensure(pristine=True)  # the overlay's Deployment as docs/install.md applies it
        ns = node.create_namespace("bench-jobs")
        print(f"node, images and operator ready in {time.monotonic() - t0:.0f}s", flush=True)
        from kubernetes import client

        api = node.api_client()
        co, batch = client.CustomObjectsApi(api), client.BatchV1Api(api)

        def ready_at(name: str, rev: str, gen: int, timeout: float = 300) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                obj = co.get_namespaced_custom_object(*DR[:2], ns, DR[2], name)
                st = obj.get("status") or {}
                ready = [c for c in st.get("conditions", []) if c["type"] == "Ready"]
                if ready and ready[0]["status"] == "True" and st.get("currentRevision") == rev \
                        and st.get("observedGeneration") == obj["metadata"]["generation"] >= gen:
                    return
                time.sleep(0.02)
            raise SystemExit(f"{name} not Ready at {rev} after {timeout:.0f}s: {json.dumps(st)[:2000]}")

        def complete(name: str, timeout: float = 300) -> None:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                conds = batch.read_namespaced_job_status(name, ns).status.conditions or []
                if any(c.type == "Complete" and c.status == "True" for c in conds):
                    return
                if any(c.type == "Failed" and c.status == "True" for c in conds):
                    raise SystemExit(f"Job {name} failed:\n" + kube("logs", f"job/{name}", "-n", ns))
                time.sleep(0.02)
            raise SystemExit(f"Job {name} did not complete in {timeout:.0f}s")

        def resource(name: str, rev: str) -> dict:
            return {"apiVersion": "dbrev.io/v1alpha1", "kind": "DatabaseRevision",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {"revision": rev, "database": {"urlSecretRef": {"name": name}},
                             "migrations": {"image": {"name": IMAGE, "path": images.APP_MIGRATIONS,
                                                      "imagePullPolicy": "IfNotPresent"}}}}

        def alembic_job(name: str, secret: str, target: str) -> dict:
            return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns},
                    "spec": {"backoffLimit": 0, "template": {"spec": {
                        "restartPolicy": "Never", "automountServiceAccountToken": False,
                        "containers": [{"name": "migrate", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                                        "command": ["alembic", "upgrade", target], "workingDir": images.APP_ROOT,
                                        "env": [{"name": "DATABASE_URL", "valueFrom": {
                                            "secretKeyRef": {"name": secret, "key": "url"}}}]}]}}}}

        def kubectl_apply(obj: dict) -> None:
            subprocess.run([str(node.kubectl_path), "--kubeconfig", str(node.kubeconfig), "apply", "-f", "-"],
                           input=json.dumps(obj), text=True, check=True, capture_output=True)

        def secret(name: str) -> None:
            kube.secret_url(ns, name, create_database(node.database_url()))

        def operator_round(i: int) -> float:
            name = f"op{i}"
            secret(name)
            kubectl_apply(resource(name, FROM))
            ready_at(name, FROM, 1)
            t = time.perf_counter()
            kubectl_apply(resource(name, TO))
            ready_at(name, TO, 2)
            return time.perf_counter() - t

        def hook_round(i: int) -> float:
            name = f"hook{i}"
            secret(name)
            kubectl_apply(alembic_job(f"{name}-pre", name, FROM))  # the database at FROM, untimed
            complete(f"{name}-pre")
            t = time.perf_counter()
            kubectl_apply(alembic_job(name, name, "head"))
            complete(name)
            return time.perf_counter() - t

        op_times, hook_times = [], []
        for i in range(args.reps + 1):  # round 0 warms caches and is not counted
            if i % 2:
                t_hook, t_op = hook_round(i), operator_round(i)
            else:
                t_op, t_hook = operator_round(i), hook_round(i)
            if i:
                op_times.append(t_op)
                hook_times.append(t_hook)
            print(f"  round {i}{' (warm-up)' if not i else ''}: operator {t_op:.3f}s, "
                  f"Helm-hook Job {t_hook:.3f}s", flush=True)
        o, h = statistics.median(op_times), statistics.median(hook_times)
        ratio = o / h
        print()
        print(f"{'one-step upgrade in the app image (' + FROM[-2:] + ' -> ' + TO[-2:] + ')':<52} {'median':>8}")
        print(f"{'plain Job: alembic upgrade head -> Complete':<52} {h:>7.3f}s")
        print(f"{'kubectl apply DatabaseRevision -> Ready (Job path)':<52} {o:>7.3f}s")
        print(f"{'ratio operator / Helm-hook Job':<52} {ratio:>7.2f}x   target <= {TARGET}x "
              f"({'met' if ratio <= TARGET else 'not met'})")
        return 0
    finally:
        node.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
