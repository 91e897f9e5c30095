"""Run the real operator as a process against the real control plane, and watch what it does."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from dbhelp import json_lines
from dbrev.pg.ephemeral import free_port


class Operator:
    """`dbrev operator` as a child process, with its metrics and liveness on loopback ports."""

    def __init__(self, kubeconfig: str, namespaces: list[str], workdir: Path, env: dict | None = None,
                 args: list[str] | None = None):
        self.kubeconfig = kubeconfig
        self.namespaces = namespaces
        self.workdir = workdir
        self.env = env or {}
        self.args = args or []
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        self.log_path = workdir / f"operator-{self.metrics_port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> "Operator":
        env = dict(os.environ)
        # a host process has no pod to take the migration image from, and the bare control plane runs no
        # kubelet: migrations run in the operator's own process (the development switch) unless a test says
        env.update({"KUBECONFIG": self.kubeconfig, "DBREV_TIMER_INTERVAL": "2",
                    "DBREV_SCRIPTS_DIR": str(self.workdir / "scripts"), "DBREV_MIGRATIONS_IN_PROCESS": "1"})
        env.update(self.env)
        cmd = [sys.executable, "-m", "dbrev", "operator", "--metrics-address", "127.0.0.1",
               "--metrics-port", str(self.metrics_port), "--liveness-address", "127.0.0.1",
               "--liveness-port", str(self.liveness_port), "--log-level", "info"]
        for ns in self.namespaces:
            cmd += ["-n", ns]
        cmd += self.args
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        if wait:
            wait_for(self.healthy, 60, "the operator's liveness endpoint")
        return self

    def healthy(self) -> bool:
        import urllib.request

        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, metric_name: str, **labels) -> float:
        total = 0.0
        found = False
        for line in self.metrics().splitlines():
            if not line.startswith(metric_name) or line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$", line)
            if not m or m.group(1) != metric_name:
                continue
            have = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
            if all(have.get(k) == str(v) for k, v in labels.items()):
                total += float(m.group(4))
                found = True
        return total if found else 0.0

    def logs(self) -> list[dict]:
        return json_lines(self.log_path.read_text())

    def tail(self, n: int = 60) -> str:
        return "\n".join(self.log_path.read_text().splitlines()[-n:])

    def kill(self) -> None:
        """SIGKILL, as a crashed pod would end."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        if getattr(self, "log", None):
            self.log.close()

    def release(self) -> None:
        """The end of the test: its operator goes."""
        self.stop()


def wait_for(fn, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")


class Kube:
    """kubectl against the test cluster (the real client a user runs)."""

    def __init__(self, control_plane, kubeconfig: str | None = None):
        self.cp = control_plane
        self.kubeconfig = kubeconfig or str(control_plane.kubeconfig)

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> str:
        p = subprocess.run([str(self.cp.kubectl_path), "--kubeconfig", self.kubeconfig, *args],
                           input=input, capture_output=True, text=True, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {p.stderr}")
        return p.stdout if check else (p.returncode, p.stdout, p.stderr)

    def apply(self, obj: dict | str) -> str:
        text = obj if isinstance(obj, str) else yaml.safe_dump(obj)
        return self("apply", "-f", "-", input=text)

    def secret_url(self, ns: str, name: str, url: str, key: str = "url") -> None:
        self.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns},
                    "stringData": {key: url}})

    def configmap_from(self, ns: str, name: str, folder: Path, only: list[str] | None = None) -> None:
        data = {p.name: p.read_text() for p in sorted(Path(folder).glob("*.py"))
                if only is None or p.name.split("_", 1)[0] in only or p.name in only}
        self.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
                    "data": data})

    def get(self, ns: str, name: str) -> dict:
        return json.loads(self("get", "databaserevision", name, "-n", ns, "-o", "json"))

    def status(self, ns: str, name: str) -> dict:
        return self.get(ns, name).get("status") or {}

    def events(self, ns: str, name: str | None = None) -> list[dict]:
        items = json.loads(self("get", "events", "-n", ns, "-o", "json"))["items"]
        if name:
            items = [e for e in items if e["involvedObject"].get("name") == name]
        return sorted(items, key=lambda e: int(e["metadata"]["resourceVersion"]))  # creation order

    def reasons(self, ns: str, name: str) -> list[str]:
        return [e["reason"] for e in self.events(ns, name)]


def dbrev_resource(ns: str, name: str, revision: str, secret: str = "db", configmaps=("migrations",),
                   policy: dict | None = None, **spec) -> dict:
    body = {"apiVersion": "dbrev.io/v1alpha1", "kind": "DatabaseRevision",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"revision": revision, "database": {"urlSecretRef": {"name": secret}},
                     "migrations": {"configMapRefs": [{"name": c} for c in configmaps]}}}
    if policy:
        body["spec"]["policy"] = policy
    body["spec"].update(spec)
    return body


def condition(status: dict, ctype: str) -> dict:
    for c in status.get("conditions") or []:
        if c["type"] == ctype:
            return c
    return {}


def is_state(status: dict, ready: str, reason: str | None = None) -> bool:
    c = condition(status, "Ready")
    return c.get("status") == ready and (reason is None or c.get("reason") == reason)


# --------------------------------------------------------------------------------------------------
# The operator as a Pod: the Deployment of manifests/overlays/cluster-wide on the one-node cluster.

OVERLAY = Path(__file__).resolve().parents[2] / "manifests" / "overlays" / "cluster-wide"
OP_NS = "dbrev-system"
DEPLOYMENT = "dbrev-operator"
SELECTOR = "app.kubernetes.io/component=operator"
METRICS_PORT, LIVENESS_PORT = 8080, 8081
# What every end-to-end test runs with in both modes (process mode sets the same in Operator.start):
# the timer every 2 s instead of 30 s, so that "the timer notices" takes seconds.
TEST_ENV = {"DBREV_TIMER_INTERVAL": "2"}


def ready_at(kube: "Kube", ns: str, name: str, rev: str, timeout: float = 90) -> dict:
    """Wait until the DatabaseRevision is Ready (AtRevision) at ``rev`` for its current generation; its status."""
    seen: dict = {}

    def check():
        obj = kube.get(ns, name)
        st = seen["status"] = obj.get("status") or {}
        return is_state(st, "True", "AtRevision") and st.get("currentRevision") == rev \
            and st.get("observedGeneration") == obj["metadata"]["generation"] and st
    try:
        return wait_for(check, timeout, f"{ns}/{name} Ready at {rev}")
    except AssertionError as e:  # say where it stood: the conditions and the last run, not only "False"
        st = seen.get("status") or {}
        where = {"conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message")}
                                for c in st.get("conditions") or []],
                 "currentRevision": st.get("currentRevision"), "lastError": st.get("lastError"),
                 "history": (st.get("history") or [])[:2]}
        raise AssertionError(f"{e}; status: {json.dumps(where)[:3000]}") from None


def ready_pods(kube: Kube, ns: str = OP_NS, selector: str = SELECTOR) -> list[dict]:
    pods = json.loads(kube("get", "pods", "-n", ns, "-l", selector, "-o", "json"))["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))]


def restarts(pod: dict) -> int:
    return sum(c.get("restartCount", 0) for c in pod["status"].get("containerStatuses", []))


def pod_get(kube: Kube, ns: str, pod: str, port: int, path: str, timeout: float = 10) -> tuple[int, str]:
    """GET http://POD:PORT/PATH through the API server's pod proxy (the API server runs inside the node and
    reaches the pod network; the host does not need to)."""
    code, out, err = kube("get", "--raw", f"/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy{path}",
                          f"--request-timeout={int(timeout)}s", check=False)
    return code, out if code == 0 else err


class PodOperators:
    """The one operator Deployment shared by the Pod-mode tests of a session.

    A test's env and args become a patch of the Deployment's container (its env and args replaced by the
    overlay's plus the test's); a patch that equals the running one changes nothing, so tests with equal
    settings share a pod and only a different shape costs a rollout (seconds). The overlay watches every
    namespace (``--all-namespaces``), so every test namespace is served without a rollout."""

    def __init__(self, node):
        self.node = node
        self.kube = Kube(node)
        built = self.kube("kustomize", str(OVERLAY))
        (dep,) = [o for o in yaml.safe_load_all(built) if o and o["kind"] == "Deployment"]
        c = dep["spec"]["template"]["spec"]["containers"][0]
        self.base_env, self.base_args = c.get("env") or [], c.get("args") or []
        for e in self.base_env:  # as the API server stores them (so that an equal shape compares equal)
            if "fieldRef" in e.get("valueFrom", {}):
                e["valueFrom"]["fieldRef"].setdefault("apiVersion", "v1")
        self.stale: set[tuple[str, int]] = set()  # (pod uid, restarts) of operators a test ended
        self.applied = False

    def install(self) -> None:
        """The unmodified overlay in one command, as docs/install.md says."""
        if self.applied:
            return
        self.kube("apply", "-k", str(OVERLAY))
        self.kube("-n", OP_NS, "rollout", "status", f"deployment/{DEPLOYMENT}", "--timeout=110s")
        wait_for(lambda: self.kube("get", "clusterkopfpeering", "dbrev", check=False)[0] == 0, 90,
                 "the peering object")
        self.applied = True

    def suspend(self) -> None:
        """No shared operator while a test runs one of its own on the node (it watches every namespace and
        would serve that test's resources too): the Deployment scaled to 0, its pods gone."""
        if not self.applied:
            return
        self.kube("scale", "deployment", DEPLOYMENT, "-n", OP_NS, "--replicas=0")
        wait_for(lambda: not json.loads(self.kube("get", "pods", "-n", OP_NS, "-l", SELECTOR, "-o", "json"))["items"],
                 90, "the shared operator's pods to go")

    def shape(self, env: dict | None = None, args: list[str] | None = None, pristine: bool = False):
        extra = {} if pristine else {**TEST_ENV, **(env or {})}
        envs = [e for e in self.base_env if e["name"] not in extra] + \
            [{"name": k, "value": str(v)} for k, v in sorted(extra.items())]
        return envs, [*self.base_args, *(args or [])]

    def ensure(self, env: dict | None = None, args: list[str] | None = None, pristine: bool = False) -> None:
        """The Deployment runs with this shape (a rollout only when it differs from the current one)."""
        self.install()
        envs, argv = self.shape(env, args, pristine)
        dep = json.loads(self.kube("get", "deployment", DEPLOYMENT, "-n", OP_NS, "-o", "json"))
        if dep["spec"].get("replicas") == 0:  # suspended for a test with its own operator
            self.kube("scale", "deployment", DEPLOYMENT, "-n", OP_NS, "--replicas=1")
        c = dep["spec"]["template"]["spec"]["containers"][0]
        if (c.get("env") or []) != envs or (c.get("args") or []) != argv:
            patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/env", "value": envs},
                     {"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": argv}]
            self.kube("patch", "deployment", DEPLOYMENT, "-n", OP_NS, "--type=json", "-p", json.dumps(patch))
        self.kube("-n", OP_NS, "rollout", "status", f"deployment/{DEPLOYMENT}", "--timeout=110s")

    def current_pod(self, timeout: float = 180) -> dict:
        """The one Ready operator pod that no test has ended (waits through restarts and rollouts)."""
        def one():
            live = [p for p in ready_pods(self.kube)
                    if (p["metadata"]["uid"], restarts(p)) not in self.stale
                    and p["metadata"]["uid"] not in {u for u, r in self.stale if r < 0}]
            return live[0] if len(live) == 1 else None
        return wait_for(one, timeout, "one Ready operator pod", interval=0.5)

    def start(self, namespaces, env=None, args=None, kubeconfig=None, wait=True) -> "PodOperator":
        if kubeconfig is not None:
            raise AssertionError("a Pod runs with its ServiceAccount's in-cluster config; a test that needs "
                                 "another kubeconfig is process-only (tests/operator/conftest.py PROCESS_ONLY)")
        self.ensure(env, args)
        op = PodOperator(self, list(namespaces))
        if wait:
            op.attach()
        return op


class PodOperator:
    """One test's view of the shared operator pod: metrics and liveness through the API server's pod proxy,
    logs through `kubectl logs` (this test's part: since it started, its namespaces)."""

    def __init__(self, runner: PodOperators, namespaces: list[str]):
        self.runner = runner
        self.kube = runner.kube
        self.namespaces = namespaces
        self.pod: dict | None = None
        self.baseline: dict[tuple, float] = {}
        self.saved_logs: str | None = None

    @property
    def name(self) -> str:
        return self.pod["metadata"]["name"]

    def attach(self) -> "PodOperator":
        self.pod = self.runner.current_pod()
        self.since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
        wait_for(self.healthy, 60, "the operator pod's liveness endpoint")
        # counters are the pod's since it started; a test sees what happened since it began, as it
        # would with its own process
        self.baseline = {k: v for k, v in _samples(self.metrics()).items() if k[2]}
        return self

    def healthy(self) -> bool:
        code, out = pod_get(self.kube, OP_NS, self.name, LIVENESS_PORT, "/healthz", timeout=5)
        return code == 0

    def metrics(self) -> str:
        code, out = pod_get(self.kube, OP_NS, self.name, METRICS_PORT, "/metrics")
        if code != 0:
            raise AssertionError(f"metrics of pod {self.name}: {out}")
        return out

    def metric(self, metric_name: str, **labels) -> float:
        total, found = 0.0, False
        for (name, have, counter), value in _samples(self.metrics()).items():
            have_d = dict(have)
            if name == metric_name and all(have_d.get(k) == str(v) for k, v in labels.items()):
                total += value - (self.baseline.get((name, have, counter), 0.0) if counter else 0.0)
                found = True
        return total if found else 0.0

    def _container_logs(self) -> str:
        if self.saved_logs is not None:
            return self.saved_logs
        now = json.loads(self.kube("get", "pod", self.name, "-n", OP_NS, "-o", "json"))
        previous = ["--previous"] if restarts(now) != restarts(self.pod) else []
        return self.kube("logs", "-n", OP_NS, self.name, "-c", "operator", f"--since-time={self.since}",
                         *previous)

    def logs(self) -> list[dict]:
        mine = set(self.namespaces)
        return [r for r in json_lines(self._container_logs())
                if not r.get("namespace") or r.get("namespace") in mine]

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self._container_logs().splitlines()[-n:])
        except AssertionError as e:
            return str(e)

    def _keep_logs(self) -> None:
        try:
            self.saved_logs = self._container_logs()
        except AssertionError:
            self.saved_logs = ""

    def kill(self) -> None:
        """SIGKILL the container's processes from the host, as a crash ends them (the kubelet then restarts
        the container; the next start_operator() waits for it)."""
        self._keep_logs()
        status = [s for s in self.pod["status"]["containerStatuses"] if s["name"] == "operator"][0]
        cid = status["containerID"].split("://", 1)[1]
        tasks = [ln.split() for ln in self.runner.node.ctr("tasks", "ls").splitlines()[1:]]
        (pid,) = [int(t[1]) for t in tasks if t and t[0] == cid]
        self.runner.stale.add((self.pod["metadata"]["uid"], restarts(self.pod)))
        os.kill(pid, signal.SIGKILL)  # PID 1 of the container: the kernel kills the rest of its namespace
        wait_for(lambda: not Path(f"/proc/{pid}").exists(), 20, "the operator process to die")

    def stop(self) -> None:
        """What ends a pod gracefully: its deletion (the kubelet sends SIGTERM); the ReplicaSet makes the next."""
        self._keep_logs()
        self.runner.stale.add((self.pod["metadata"]["uid"], -1))
        self.kube("delete", "pod", self.name, "-n", OP_NS, "--wait=false")

    def release(self) -> None:
        """The end of the test: the shared pod keeps running for the next one."""


def _samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels, is a counter): value} of a Prometheus text exposition."""
    counters = {ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE ") and ln.split()[3] == "counter"}
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$", line)
        if not m:
            continue
        name = m.group(1)
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(3) or "")))
        is_counter = name.endswith("_total") and name[: -len("_total")] in counters
        out[(name, labels, is_counter)] = float(m.group(4))
    return out


def run_job(kube: Kube, manifest: dict, timeout: float = 240) -> tuple[dict, dict, str]:
    """Create the Job and wait until it finishes: (the Job, its pod's terminated state, its pod's log)."""
    kube.apply(manifest)
    ns, name = manifest["metadata"]["namespace"], manifest["metadata"]["name"]

    def finished():
        job = json.loads(kube("get", "job", name, "-n", ns, "-o", "json"))
        done = [c for c in job.get("status", {}).get("conditions", [])
                if c["type"] in ("Complete", "Failed") and c["status"] == "True"]
        return job if done else None
    job = wait_for(finished, timeout, f"Job {ns}/{name} finished", interval=0.5)
    (pod,) = json.loads(kube("get", "pods", "-n", ns, "-l", f"job-name={name}", "-o", "json"))["items"]
    (cs,) = pod["status"]["containerStatuses"]
    log = kube("logs", pod["metadata"]["name"], "-n", ns)
    return job, cs["state"]["terminated"], log
