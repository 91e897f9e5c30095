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
from dbrev.envtest.postgres import free_port


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
        env.update({"KUBECONFIG": self.kubeconfig, "DBREV_TIMER_INTERVAL": "2",
                    "DBREV_SCRIPTS_DIR": str(self.workdir / "scripts")})
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
