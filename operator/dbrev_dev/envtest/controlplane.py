"""A real Kubernetes control plane as two local processes: etcd and kube-apiserver.

This is what controller-runtime's envtest does, for machines without a container
engine: no kubelet, no controller-manager, no scheduler — but a real API server
with real CRD schema validation and pruning, the status subresource, watches,
Events and RBAC.

Everything lives in one folder (``--dir``)::

    DIR/state.json          pids, ports, server URL (read by ``down``/``status``)
    DIR/etcd.pid            pid files (also read by ``down`` from another process)
    DIR/kube-apiserver.pid
    DIR/etcd.log            process logs
    DIR/kube-apiserver.log
    DIR/pki/                CA, serving cert, admin client cert, SA key pair
    DIR/etcd-data/          etcd's data (wiped on every ``up``)
    DIR/kubeconfig          admin kubeconfig with embedded certificates
    DIR/sa-kubeconfigs/     kubeconfigs written by ``service_account_kubeconfig``
    DIR/audit-policy.yaml   with ``audit=True`` (``up --audit``): what kube-apiserver audits
    DIR/audit.log           ... and its JSON-lines log: one line per request by a ServiceAccount

CLI::

    python -m dbrev_dev.envtest.controlplane up     --dir DIR   # prints kubeconfig + start-up time
    python -m dbrev_dev.envtest.controlplane status --dir DIR
    python -m dbrev_dev.envtest.controlplane down   --dir DIR

Python::

    cp = ControlPlane(dir).start()
    cp.kubectl("get", "--raw", "/readyz").stdout   # "ok"
    api = cp.api_client()                          # kubernetes.client.ApiClient (admin)
    sa = cp.api_client(as_service_account=("ns", "name"))   # impersonating the SA
    path = cp.service_account_kubeconfig("ns", "name")      # a real SA token
    cp.stop()

    cp = ControlPlane(dir, audit=True).start()     # + an audit log of ServiceAccount requests
    cp.audit_events(user="system:serviceaccount:ns:name")   # parsed audit.k8s.io/v1 Events
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from dbrev_dev.envtest import assets as _assets

ADMIN_USER = "dbrev-admin"
CONTEXT = "dbrev-envtest"
SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
# Opt-in audit policy (``audit=True``): every request made by a ServiceAccount, at level Metadata
# (who, verb, resource, namespace, name, response code; never bodies, so never Secret data), once
# when the response is complete (a watch also when it starts: stage ResponseStarted).  Everything
# else (the admin, the apiserver itself) is not logged, so the log stays small.  Used to prove that
# RBAC manifests grant exactly what an operator uses.
AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""
# ServiceAccount admission wants the token controller's default ServiceAccount;
# there is no controller-manager, so leave it out (envtest does the same).
DISABLED_ADMISSION_PLUGINS = ("ServiceAccount",)
PROCESS_NAMES = ("kube-apiserver", "etcd")  # stop order


class ControlPlaneError(RuntimeError):
    """The control plane could not start (the message includes the log tail)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def service_account_username(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


# --------------------------------------------------------------------------- pki


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def generate_pki(pki: Path, extra_ips: Iterable[str] = ()) -> dict[str, Path]:
    """CA, apiserver serving cert, admin client cert (system:masters), SA key pair.

    ``extra_ips``: more IP SANs for the serving cert (the one-node cluster's node address)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(minutes=5)
    until = now + _dt.timedelta(days=7)

    def pem_key(key) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def pem_cert(cert) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    def name(cn: str, org: str | None = None) -> x509.Name:
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
        if org:
            attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        return x509.Name(attrs)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("dbrev-envtest-ca")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(subject: x509.Name, usage, sans=None):
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=False,
                    crl_sign=False, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, b.sign(ca_key, hashes.SHA256())

    serving_key, serving = leaf(
        name("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.0.0.1")),  # the `kubernetes` Service
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            *(x509.IPAddress(ipaddress.ip_address(ip)) for ip in extra_ips),
        ],
    )
    admin_key, admin = leaf(name(ADMIN_USER, "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    paths = {
        "ca.crt": pem_cert(ca),
        "ca.key": pem_key(ca_key),  # the one-node cluster's controller-manager signs with it
        "serving.crt": pem_cert(serving),
        "serving.key": pem_key(serving_key),
        "admin.crt": pem_cert(admin),
        "admin.key": pem_key(admin_key),
        "sa.key": pem_key(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    out: dict[str, Path] = {}
    for fname, data in paths.items():
        p = pki / fname
        _write_private(p, data)
        out[fname] = p
    return out


# --------------------------------------------------------------------------- kubeconfig


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(
    path: Path,
    server: str,
    ca_pem: bytes,
    *,
    user: str,
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
    token: str | None = None,
    namespace: str | None = None,
) -> Path:
    """A self-contained kubeconfig (embedded ``-data``, no paths) — kubectl, the
    ``kubernetes`` client and Kopf all read it."""
    creds: dict[str, Any] = {}
    if client_cert_pem:
        creds["client-certificate-data"] = _b64(client_cert_pem)
        creds["client-key-data"] = _b64(client_key_pem or b"")
    if token:
        creds["token"] = token
    ctx: dict[str, Any] = {"cluster": CONTEXT, "user": user}
    if namespace:
        ctx["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [
            {"name": CONTEXT, "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)}}
        ],
        "users": [{"name": user, "user": creds}],
        "contexts": [{"name": CONTEXT, "context": ctx}],
        "current-context": CONTEXT,
    }
    # JSON is valid YAML: every kubeconfig reader accepts it, and we need no yaml writer.
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, (json.dumps(doc, indent=2) + "\n").encode())
    return path


# --------------------------------------------------------------------------- processes


def proc_cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    if not raw:
        return None  # zombie or kernel thread
    return raw.rstrip(b"\0").decode(errors="replace").split("\0")


def _is_ours(pid: int, binary_name: str, root: Path) -> bool:
    """True when ``pid`` is a live ``binary_name`` started for folder ``root``
    (guards against killing an unrelated process that reused the pid)."""
    argv = proc_cmdline(pid)
    if not argv:
        return False
    if Path(argv[0]).name != binary_name:
        return False
    marker = str(root).rstrip(os.sep) + os.sep
    return any(marker in a for a in argv[1:])


def _find_leftovers(root: Path) -> list[tuple[int, str]]:
    """etcd / kube-apiserver processes whose arguments point into ``root`` —
    finds leftovers of a crashed run even when its pid files are gone."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        for binary in PROCESS_NAMES:
            if _is_ours(pid, binary, root):
                found.append((pid, binary))
    return found


def _terminate(pid: int, binary: str, root: Path, timeout: float = 15.0) -> None:
    """SIGTERM the process (and its session, started with start_new_session), then SIGKILL."""
    if not _is_ours(pid, binary, root):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not _is_ours(pid, binary, root):
                return
            time.sleep(0.05)
    raise ControlPlaneError(f"{binary} (pid {pid}) did not exit after SIGKILL")


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def exit_with_parent() -> None:
    """In the child before exec: SIGTERM me when the parent dies (Linux prctl)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


# --------------------------------------------------------------------------- clients


class Cluster:
    """What tests need from any API server reached with an admin kubeconfig:
    raw requests, the matching kubectl, ``kubernetes`` clients (optionally
    impersonating), namespaces, ServiceAccount tokens and kubeconfigs.

    Subclasses provide ``kubeconfig``, ``server``, ``kubectl_path``,
    ``_ssl_context()``, ``_auth_headers()``, ``_ca_pem()`` and ``_scratch``.
    """

    kubeconfig: Path
    server: str
    kubectl_path: Path
    _scratch: Path

    def _ssl_context(self) -> ssl.SSLContext:
        raise NotImplementedError

    def _auth_headers(self) -> dict[str, str]:
        return {}

    def _ca_pem(self) -> bytes:
        raise NotImplementedError

    def readyz(self) -> bool:
        status, body = self.request("GET", "/readyz", timeout=2, raw=True)
        return status == 200 and body.strip() == b"ok"

    def wait_established(self, *crds: str, timeout: float = 120) -> None:
        """Wait until each CustomResourceDefinition (by name, ``plural.group``) is Established and its
        resource is served.  ``kubectl wait --for=condition=Established`` right after an apply fails
        instead of waiting while the new object has no ``status.conditions`` yet (seen under load)."""
        deadline = time.monotonic() + timeout
        pending = list(crds)
        while pending:
            name = pending[0]
            status, crd = self.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}",
                                       timeout=5)
            conds = ((crd or {}).get("status") or {}).get("conditions") or [] if status == 200 else []
            if any(c.get("type") == "Established" and c.get("status") == "True" for c in conds):
                group, version = crd["spec"]["group"], crd["spec"]["versions"][0]["name"]
                served, _ = self.request("GET", f"/apis/{group}/{version}", timeout=5)
                if served == 200:
                    pending.pop(0)
                    continue
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"CustomResourceDefinition {name} not Established after {timeout:.0f}s "
                                        f"(HTTP {status})")
            time.sleep(0.2)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30,
        raw: bool = False,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        """One admin HTTPS request (no client library); returns (status, json or bytes).
        Connection errors return status 0."""
        data = None
        hdrs = {"Accept": "application/json"}
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            hdrs["Content-Type"] = content_type
        hdrs.update(headers or {})
        hdrs.update(self._auth_headers())
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._ssl_context()) as r:
                status, payload = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, payload = e.code, e.read()
        except (OSError, ssl.SSLError):
            return 0, None
        if raw:
            return status, payload
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload

    def kubectl(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        as_service_account: tuple[str, str] | None = None,
        as_user: str | None = None,
        as_groups: Iterable[str] = (),
        kubeconfig: Path | str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        """Run the cached kubectl against this control plane (admin unless
        ``kubeconfig`` or an impersonation is given); text output."""
        cmd = [str(self.kubectl_path), "--kubeconfig", str(kubeconfig or self.kubeconfig)]
        if as_service_account:
            cmd.append("--as=" + service_account_username(*as_service_account))
        if as_user:
            cmd.append("--as=" + as_user)
        cmd += [f"--as-group={g}" for g in as_groups]
        cmd += list(args)
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG pointing here (for subprocesses, e.g. ``kopf run``)."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}

    def api_client(
        self,
        *,
        as_service_account: tuple[str, str] | None = None,
        as_user: str | None = None,
        kubeconfig: Path | str | None = None,
    ):
        """A ``kubernetes.client.ApiClient`` loaded from the kubeconfig (admin by
        default), optionally impersonating a ServiceAccount or user.  It does not
        touch the client's global default configuration."""
        from kubernetes import client, config

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig or self.kubeconfig), client_configuration=cfg)
        api = client.ApiClient(cfg)
        who = service_account_username(*as_service_account) if as_service_account else as_user
        if who:
            # For a ServiceAccount username the server adds its groups
            # (system:serviceaccounts, system:serviceaccounts:NS, system:authenticated).
            api.set_default_header("Impersonate-User", who)
        return api

    def create_namespace(self, name: str, *, default_service_account: bool = True) -> str:
        status, body = self.request(
            "POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )
        if status not in (201, 409):
            raise ControlPlaneError(f"creating namespace {name}: {status} {body}")
        if default_service_account:
            self.create_service_account(name, "default")
        return name

    def delete_namespace(self, name: str) -> None:
        """Starts deletion only: without a controller-manager it stays Terminating
        (new objects are refused in it, which is what isolation needs)."""
        self.request("DELETE", f"/api/v1/namespaces/{name}")

    def create_service_account(self, namespace: str, name: str) -> None:
        status, body = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
        )
        if status not in (201, 409):
            raise ControlPlaneError(f"creating serviceaccount {namespace}/{name}: {status} {body}")

    def service_account_token(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600, create: bool = True
    ) -> str:
        """A bound token for the ServiceAccount via the TokenRequest API."""
        if create:
            self.create_service_account(namespace, name)
        status, body = self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": expiration_seconds},
            },
        )
        if status != 201:
            raise ControlPlaneError(f"TokenRequest for {namespace}/{name}: {status} {body}")
        return body["status"]["token"]

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, expiration_seconds: int = 3600, create: bool = True
    ) -> Path:
        """A kubeconfig authenticating as the ServiceAccount with a real token
        (works with kubectl, the kubernetes client and Kopf); default namespace set."""
        token = self.service_account_token(
            namespace, name, expiration_seconds=expiration_seconds, create=create
        )
        return write_kubeconfig(
            self._scratch / "sa-kubeconfigs" / f"{namespace}.{name}.kubeconfig",
            self.server,
            self._ca_pem(),
            user=service_account_username(namespace, name),
            token=token,
            namespace=namespace,
        )


# --------------------------------------------------------------------------- control plane


@dataclass
class ControlPlane(Cluster):
    """etcd + kube-apiserver in ``dir``; see the module docstring."""

    dir: Path
    assets: _assets.Assets | None = None
    build: bool = True  # build the binaries when missing (minutes on a fresh machine)
    start_timeout: float = 180.0
    # True for in-process users (the pytest fixture): the kernel stops etcd and
    # kube-apiserver when this process dies, even by SIGKILL or a CI timeout.
    # False for `up`, whose processes must outlive the CLI.
    die_with_parent: bool = False
    # Write DIR/audit.log: one JSON line per request made by any ServiceAccount (see AUDIT_POLICY).
    audit: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    etcd_port: int = 0
    etcd_peer_port: int = 0
    port: int = 0
    stopped_leftovers: list[tuple[int, str]] = field(default_factory=list)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.dir = Path(self.dir).expanduser().resolve()

    # ----- paths

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubectl_path(self) -> Path:
        """The kubectl built with kube-apiserver (same version); use it everywhere."""
        return self._assets().kubectl

    @property
    def _scratch(self) -> Path:
        return self.dir

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _ca_pem(self) -> bytes:
        return (self.pki / "ca.crt").read_bytes()

    def log_path(self, binary: str) -> Path:
        return self.dir / f"{binary}.log"

    @property
    def audit_log(self) -> Path:
        """kube-apiserver's audit log (written only with ``audit=True``)."""
        return self.dir / "audit.log"

    def audit_events(self, user: str | None = None) -> list[dict[str, Any]]:
        """The audit log's events (``audit.k8s.io/v1`` Event objects), optionally only ``user``'s.

        The log backend writes each event when its request completes (stage ResponseComplete);
        a watch also appears when it starts (stage ResponseStarted)."""
        if not self.audit:
            raise ControlPlaneError("this control plane was started without audit=True")
        events = []
        try:
            lines = self.audit_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            try:
                ev = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if user is None or (ev.get("user") or {}).get("username") == user:
                events.append(ev)
        return events

    def _pid_file(self, binary: str) -> Path:
        return self.dir / f"{binary}.pid"

    def _assets(self) -> _assets.Assets:
        if self.assets is None:
            self.assets = _assets.find(build=self.build)
        return self.assets

    # ----- lifecycle

    def start(self) -> "ControlPlane":
        t0 = time.monotonic()
        assets = self._assets()
        self.timings["assets"] = time.monotonic() - t0
        self.dir.mkdir(parents=True, exist_ok=True)
        # A crashed earlier run may have left processes (found by pid file or by
        # their arguments pointing into this folder): stop them first.
        self.stopped_leftovers = self.stop_leftovers()
        for stale in ("etcd-data", "pki", "sa-kubeconfigs"):
            shutil.rmtree(self.dir / stale, ignore_errors=True)
        for stale in ("kubeconfig", "state.json", "etcd.log", "kube-apiserver.log", "audit.log",
                      "audit-policy.yaml"):
            (self.dir / stale).unlink(missing_ok=True)

        t1 = time.monotonic()
        files = generate_pki(self.pki)
        self.timings["pki"] = time.monotonic() - t1
        try:
            t2 = time.monotonic()
            self._start_etcd(assets)
            self.timings["etcd"] = time.monotonic() - t2
            t3 = time.monotonic()
            self._start_apiserver(assets, files)
            self.timings["kube-apiserver"] = time.monotonic() - t3
            write_kubeconfig(
                self.kubeconfig,
                self.server,
                files["ca.crt"].read_bytes(),
                user=ADMIN_USER,
                client_cert_pem=files["admin.crt"].read_bytes(),
                client_key_pem=files["admin.key"].read_bytes(),
            )
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        self.timings["startup"] = time.monotonic() - t1
        self._write_state()
        return self

    def _spawn(self, binary: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.log_path(binary), "ab")
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,  # not killed with the terminal; killable by pid
                preexec_fn=exit_with_parent if self.die_with_parent else None,
            )
        finally:
            log.close()
        self._procs[binary] = proc
        self._pid_file(binary).write_text(f"{proc.pid}\n")
        self._write_state()
        return proc

    def _start_etcd(self, assets: _assets.Assets, attempts: int = 3) -> None:
        for attempt in range(attempts):
            self.etcd_port, self.etcd_peer_port = free_port(), free_port()
            client = f"http://127.0.0.1:{self.etcd_port}"
            peer = f"http://127.0.0.1:{self.etcd_peer_port}"
            data = self.dir / "etcd-data"
            shutil.rmtree(data, ignore_errors=True)
            proc = self._spawn(
                "etcd",
                [
                    str(assets.etcd),
                    "--name=dbrev",
                    f"--data-dir={data}",
                    f"--listen-client-urls={client}",
                    f"--advertise-client-urls={client}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=dbrev={peer}",
                    "--initial-cluster-state=new",
                    "--unsafe-no-fsync=true",
                    "--log-level=warn",
                ],
            )
            try:
                self._wait(
                    "etcd", proc, lambda: self._etcd_healthy(client), self.start_timeout
                )
                return
            except ControlPlaneError as e:
                if attempt + 1 < attempts and "address already in use" in str(e):
                    continue  # lost the race for the free port: try new ones
                raise

    def _start_apiserver(self, assets: _assets.Assets, files: dict[str, Path], attempts: int = 3) -> None:
        for attempt in range(attempts):
            self.port = free_port()
            proc = self._spawn(
                "kube-apiserver",
                [
                    str(assets.kube_apiserver),
                    f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={self.port}",
                    f"--cert-dir={self.pki}",
                    f"--tls-cert-file={files['serving.crt']}",
                    f"--tls-private-key-file={files['serving.key']}",
                    f"--client-ca-file={files['ca.crt']}",
                    "--authorization-mode=RBAC",
                    f"--service-account-issuer={self.server}",
                    f"--service-account-key-file={files['sa.pub']}",
                    f"--service-account-signing-key-file={files['sa.key']}",
                    f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                    f"--disable-admission-plugins={','.join(DISABLED_ADMISSION_PLUGINS)}",
                    "--allow-privileged=true",
                    # With a loopback advertise address the lease reconciler only logs errors.
                    "--endpoint-reconciler-type=none",
                    "--profiling=false",
                    *self._audit_args(),
                ],
            )
            try:
                self._wait("kube-apiserver", proc, self._apiserver_ready, self.start_timeout)
                return
            except ControlPlaneError as e:
                if attempt + 1 < attempts and "address already in use" in str(e):
                    continue
                raise

    def _audit_args(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.dir / "audit-policy.yaml"
        policy.write_text(AUDIT_POLICY)
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",  # written before the response returns: no lag in tests
            "--audit-log-maxsize=0",  # never rotated
        ]

    def _wait(self, binary: str, proc: subprocess.Popen, ready, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.05
        while True:
            if proc.poll() is not None:
                raise ControlPlaneError(
                    f"{binary} exited with {proc.returncode} while starting; "
                    f"{self.log_path(binary)}:\n{log_tail(self.log_path(binary))}"
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(
                    f"{binary} not ready after {timeout:.0f}s; "
                    f"{self.log_path(binary)}:\n{log_tail(self.log_path(binary))}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _etcd_healthy(self, client: str) -> bool:
        try:
            with urllib.request.urlopen(client + "/health", timeout=1) as r:
                return json.loads(r.read()).get("health") == "true"
        except (OSError, ValueError):
            return False

    def _apiserver_ready(self) -> bool:
        if not self.readyz():
            return False
        # The bootstrap controller creates the "default" namespace itself.
        status, _ = self.request("GET", "/api/v1/namespaces/default", timeout=2)
        return status == 200

    def stop(self) -> None:
        """Stop what this folder's control plane started (our handles, pid files
        and leftovers found by their arguments); wait until the ports are closed."""
        self.stop_leftovers()
        for proc in self._procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()
        self._wait_ports_closed()
        self.state_file.unlink(missing_ok=True)

    def stop_leftovers(self) -> list[tuple[int, str]]:
        """Kill every etcd/kube-apiserver of this folder, by pid; returns what was stopped."""
        if not self.dir.exists():
            return []
        state = self._read_state()
        if state:
            self.etcd_port = self.etcd_port or state.get("etcd_port", 0)
            self.etcd_peer_port = self.etcd_peer_port or state.get("etcd_peer_port", 0)
            self.port = self.port or state.get("port", 0)
        targets: dict[int, str] = {}
        for binary in PROCESS_NAMES:
            pid = self._read_pid(binary)
            if pid:
                targets[pid] = binary
            proc = self._procs.get(binary)
            if proc:
                targets[proc.pid] = binary
        for pid, binary in _find_leftovers(self.dir):
            targets[pid] = binary
        stopped = []
        # apiserver before etcd so it does not spin on a vanished backend
        for binary in PROCESS_NAMES:
            for pid, b in targets.items():
                if b == binary and _is_ours(pid, binary, self.dir):
                    _terminate(pid, binary, self.dir)
                    stopped.append((pid, binary))
        for binary in PROCESS_NAMES:
            self._pid_file(binary).unlink(missing_ok=True)
        return stopped

    def _wait_ports_closed(self, timeout: float = 10.0) -> None:
        ports = [p for p in (self.port, self.etcd_port, self.etcd_peer_port) if p]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(port_is_listening(p) for p in ports):
                return
            time.sleep(0.1)
        still = [p for p in ports if port_is_listening(p)]
        if still:
            raise ControlPlaneError(f"ports still listening after stop: {still}")

    def __enter__(self) -> "ControlPlane":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- state

    def _read_pid(self, binary: str) -> int | None:
        try:
            return int(self._pid_file(binary).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _read_state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _write_state(self) -> None:
        state = {
            "server": self.server if self.port else None,
            "port": self.port,
            "etcd_port": self.etcd_port,
            "etcd_peer_port": self.etcd_peer_port,
            "pids": {b: p.pid for b, p in self._procs.items()},
            "kubeconfig": str(self.kubeconfig),
            "kubectl": str(self.assets.kubectl) if self.assets else None,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "audit": self.audit,
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        os.replace(tmp, self.state_file)

    @classmethod
    def attach(cls, dir: Path | str, build: bool = False) -> "ControlPlane":
        """A handle on a control plane started by another process (``up``)."""
        cp = cls(Path(dir), build=build)
        state = cp._read_state()
        if not state:
            raise ControlPlaneError(f"no control plane recorded in {cp.dir} (run `up`)")
        cp.port = state["port"]
        cp.etcd_port = state["etcd_port"]
        cp.etcd_peer_port = state["etcd_peer_port"]
        cp.audit = bool(state.get("audit"))
        return cp

    def status(self) -> dict[str, Any]:
        state = self._read_state()
        procs = {}
        for binary in PROCESS_NAMES:
            pid = self._read_pid(binary)
            procs[binary] = {"pid": pid, "alive": bool(pid and _is_ours(pid, binary, self.dir))}
        ready = False
        if state.get("port"):
            self.port = state["port"]
            ready = self._apiserver_ready() if procs["kube-apiserver"]["alive"] else False
        return {
            "dir": str(self.dir),
            "server": state.get("server"),
            "kubeconfig": str(self.kubeconfig) if self.kubeconfig.exists() else None,
            "processes": procs,
            "ready": ready,
        }


class ExistingCluster(Cluster):
    """An API server someone else runs (kind, a shared cluster), reached with an
    admin kubeconfig whose current context uses a client certificate or a token
    (what ``kind get kubeconfig`` writes).  ``start``/``stop`` only manage a
    scratch folder; nothing is started or stopped."""

    def __init__(self, kubeconfig: Path | str, kubectl: Path | str | None = None):
        import yaml

        self.kubeconfig = Path(kubeconfig).expanduser().resolve()
        doc = yaml.safe_load(self.kubeconfig.read_text()) or {}
        by_name = lambda key: {i["name"]: i.get(key[:-1]) or {} for i in doc.get(key) or []}
        ctx = by_name("contexts")[doc["current-context"]]
        cluster = by_name("clusters")[ctx["cluster"]]
        self._user = by_name("users")[ctx["user"]]
        self._cluster = cluster
        self.server = cluster["server"].rstrip("/")
        self._kubectl = Path(kubectl) if kubectl else None
        self._scratch = Path(tempfile.mkdtemp(prefix="dbrev-cluster-"))

    @property
    def kubectl_path(self) -> Path:
        if self._kubectl:
            return self._kubectl
        try:
            return _assets.find(build=False).kubectl
        except _assets.AssetError:
            found = shutil.which("kubectl")
            if not found:
                raise
            return Path(found)

    def _material(self, section: dict, key: str) -> str | None:
        """A file path for ``key`` (``<key>-data`` embedded or ``<key>`` path)."""
        if section.get(key + "-data"):
            path = self._scratch / "creds" / key
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_private(path, base64.b64decode(section[key + "-data"]))
            return str(path)
        if section.get(key):
            p = Path(section[key]).expanduser()
            return str(p if p.is_absolute() else self.kubeconfig.parent / p)
        return None

    def _ca_pem(self) -> bytes:
        ca = self._material(self._cluster, "certificate-authority")
        return Path(ca).read_bytes() if ca else b""

    def _ssl_context(self) -> ssl.SSLContext:
        ca = self._material(self._cluster, "certificate-authority")
        ctx = ssl.create_default_context(cafile=ca)
        if self._cluster.get("insecure-skip-tls-verify"):
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        cert = self._material(self._user, "client-certificate")
        if cert:
            ctx.load_cert_chain(cert, self._material(self._user, "client-key"))
        return ctx

    def _auth_headers(self) -> dict[str, str]:
        if self._user.get("token"):
            return {"Authorization": f"Bearer {self._user['token']}"}
        if not self._user.get("client-certificate-data") and not self._user.get("client-certificate"):
            raise ControlPlaneError(
                f"{self.kubeconfig}: the current user has neither a client certificate "
                "nor a token (exec/auth-provider plugins are not supported here)"
            )
        return {}

    def start(self) -> "ExistingCluster":
        if not self.readyz():
            raise ControlPlaneError(f"{self.server} (from {self.kubeconfig}) is not ready")
        return self

    def stop(self) -> None:
        shutil.rmtree(self._scratch, ignore_errors=True)


# --------------------------------------------------------------------------- CLI


def _cmd_up(args) -> int:
    cp = ControlPlane(Path(args.dir), audit=args.audit)
    if not args.fresh and cp.status()["ready"]:
        cp = ControlPlane.attach(args.dir)
        print(f"already running in {cp.dir} (use --fresh to restart)")
        _print_access(cp)
        return 0
    try:
        cp.start()
    except (_assets.AssetError, ControlPlaneError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for pid, binary in cp.stopped_leftovers:
        print(f"stopped leftover {binary} (pid {pid}) of an earlier run")
    _print_access(cp)
    t = cp.timings
    print(
        f"started in {t['startup']:.1f}s "
        f"(pki {t['pki']:.1f}s, etcd {t['etcd']:.1f}s, kube-apiserver {t['kube-apiserver']:.1f}s"
        + (f"; finding/building binaries {t['assets']:.1f}s" if t["assets"] >= 0.5 else "")
        + ")"
    )
    print(f"stop with: python -m dbrev_dev.envtest.controlplane down --dir {cp.dir}")
    return 0


def _print_access(cp: ControlPlane) -> None:
    print(f"kubeconfig: {cp.kubeconfig}")
    print(f"server:     {cp.server}")
    try:
        print(f"kubectl:    {cp.kubectl_path}")
    except _assets.AssetError:
        pass
    print(f"logs:       {cp.log_path('etcd')}, {cp.log_path('kube-apiserver')}")
    if cp.audit:
        print(f"audit log:  {cp.audit_log} (requests by ServiceAccounts)")
    print(f"export KUBECONFIG={cp.kubeconfig}")


def _cmd_down(args) -> int:
    cp = ControlPlane(Path(args.dir), build=False)
    try:
        stopped = cp.stop_leftovers()
        cp.stop()
    except ControlPlaneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if stopped:
        print("stopped " + ", ".join(f"{b} (pid {p})" for p, b in stopped))
    else:
        print(f"nothing running in {cp.dir}")
    return 0


def _cmd_status(args) -> int:
    st = ControlPlane(Path(args.dir), build=False).status()
    print(json.dumps(st, indent=2))
    return 0 if st["ready"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dbrev_dev.envtest.controlplane",
        description="Run etcd + kube-apiserver locally (envtest-style).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, help_ in (
        ("up", _cmd_up, "start (or confirm) the control plane; prints the kubeconfig"),
        ("down", _cmd_down, "stop every process of the folder, by pid"),
        ("status", _cmd_status, "print pids and readiness; exit 0 when ready"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--dir", default=".cluster", help="state folder (default: .cluster)")
        if name == "up":
            p.add_argument("--fresh", action="store_true", help="restart even if one is running")
            p.add_argument("--audit", action="store_true",
                           help="log every request made by a ServiceAccount to DIR/audit.log (level Metadata)")
        p.set_defaults(fn=fn)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
