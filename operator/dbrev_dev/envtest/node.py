"""A real one-node Kubernetes cluster on this machine: pods run, images are local, traffic stays local.

What runs (all as processes of this machine, each in the node's network namespace)::

    etcd, kube-apiserver, kube-controller-manager, kube-scheduler   the control plane
    containerd (+ runc, CNI bridge), kubelet, kube-proxy             the node
    PostgreSQL (optional)                                            what pods under test talk to

The network (the rule: loopback, or inside namespaces made here; nothing routes anywhere else)::

    host ── veth dbrev-h0 10.200.0.1/30 ══ dbrev-n0 10.200.0.2/30 ── netns "dbrev-node"
                                                                     │ no default route
                                                                     │ FORWARD to/from the veth: DROP
                                                                     └ bridge cni0 10.244.0.1/24: pods
    Services 10.0.0.0/24 (kube-proxy, iptables, inside the node); the API server and PostgreSQL
    listen on 10.200.0.2, which the host reaches over the veth and pods reach through the bridge.

Images cannot be pulled: the sandbox image is the locally built pause image and everything a pod runs
must be imported first (:meth:`NodeCluster.load_image`; ``dbrev_dev.envtest.images`` builds them).  There
is no cluster DNS (no CoreDNS image): pods get MissingClusterDNS events, Service *names* do not
resolve, in-cluster Kubernetes clients work (they use ``KUBERNETES_SERVICE_HOST``).

One node per machine (fixed names; a lock in /run).  :meth:`teardown` leaves no process, network
namespace, veth, mount or ``kubepods`` cgroup behind, and also cleans up after a crashed run
(it is what :meth:`start` does first).

CLI (``make cluster-up-node`` / ``make cluster-down-node``)::

    python -m dbrev_dev.envtest.node up   --dir DIR [--postgres] [--image operator]
    python -m dbrev_dev.envtest.node down --dir DIR
    python -m dbrev_dev.envtest.node leftovers      # exit 1 when anything of a node is left
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dbrev_dev.envtest import assets as _assets
from dbrev_dev.envtest.assets import AssetError
from dbrev_dev.envtest.controlplane import (
    ADMIN_USER,
    SERVICE_CLUSTER_IP_RANGE,
    Cluster,
    ControlPlaneError,
    exit_with_parent,
    proc_cmdline,
    log_tail,
    generate_pki,
    write_kubeconfig,
)

NETNS = "dbrev-node"
VETH_HOST, VETH_NODE = "dbrev-h0", "dbrev-n0"
HOST_IP, NODE_IP, PREFIX = "10.200.0.1", "10.200.0.2", 30
POD_CIDR, POD_GATEWAY, BRIDGE = "10.244.0.0/24", "10.244.0.1", "cni0"
# While a node is up, the host reaches NODE_IP over the veth; the moment the veth is gone (a crash, a stray
# `down`) the host's default route would carry a test's connection to NODE_IP out of the machine. This
# blackhole (a higher metric than the veth's own route) makes that a local "no route" error instead.
BLACKHOLE = ("10.200.0.0/30", "4242")
NODE_NAME = "dbrev-node"
API_PORT, ETCD_PORT, ETCD_PEER_PORT = 6443, 2379, 2380
RUN_DIR = Path("/run/dbrev-node")  # sockets (short paths) and containerd's state
LOCK = Path("/run/dbrev-node.lock")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# Stop order: the node first (so nothing restarts pods), then the control plane.
COMPONENTS = ("kube-proxy", "kubelet", "containerd", "kube-scheduler", "kube-controller-manager",
              "kube-apiserver", "etcd")


class NodeError(ControlPlaneError):
    """The node could not start or be cleaned up (the message says what and shows the log tail)."""


def _sh(*cmd: str, check: bool = True, timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise NodeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}")
    return proc


def in_node(*cmd: str) -> list[str]:
    return ["nsenter", f"--net=/run/netns/{NETNS}", "--", *cmd]


def unavailable_reason() -> str | None:
    """Why a node cannot run on this machine (None when it can); tests skip (locally) with it."""
    if os.geteuid() != 0:
        return "the one-node cluster needs root (network namespaces, mounts, cgroups)"
    for tool, pkg in (("containerd", "containerd"), ("runc", "runc"), ("ip", "iproute2"),
                      ("iptables", "iptables"), ("nsenter", "util-linux"), ("ctr", "containerd")):
        if not shutil.which(tool):
            return f"no '{tool}' on PATH (Debian package {pkg}; .ci/install-deps --node installs it)"
    if not Path("/usr/lib/cni/bridge").is_file() and not Path("/opt/cni/bin/bridge").is_file():
        return "no CNI plugins (Debian package containernetworking-plugins)"
    try:
        _assets.find_node(build=False)
    except AssetError as e:
        return str(e)
    return None


def cni_bin_dir() -> str:
    return "/usr/lib/cni" if Path("/usr/lib/cni/bridge").is_file() else "/opt/cni/bin"


# --------------------------------------------------------------------------- leftovers


def _mounts_under(prefixes: list[str]) -> list[str]:
    """Mount points under any of ``prefixes`` (deepest first), from this mount namespace."""
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            mp = line.split()[4].replace("\\040", " ")
            if any(mp == p or mp.startswith(p.rstrip("/") + "/") for p in prefixes):
                out.append(mp)
    return sorted(set(out), key=lambda p: p.count("/"), reverse=True)


def _kubepods_cgroups() -> list[Path]:
    found = []
    if CGROUP_ROOT.is_dir():
        for hierarchy in CGROUP_ROOT.iterdir():
            for cand in (hierarchy / "kubepods", hierarchy / "kubepods.slice"):
                if cand.is_dir():
                    found.append(cand)
    return found


def _node_pids(markers: list[str]) -> list[tuple[int, str]]:
    """Processes of a node: a component or shim whose arguments name one of our folders/sockets,
    or anything inside a kubepods cgroup (a pod's processes, also orphans of a crashed run)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        argv = proc_cmdline(int(entry.name))
        if not argv:
            continue
        name = Path(argv[0]).name
        if name in (*COMPONENTS, "containerd-shim-runc-v2", "containerd-shim", "postgres") and any(
            m in a for a in argv[1:] for m in markers
        ):
            found[int(entry.name)] = name
    for cg in _kubepods_cgroups():
        for procs in cg.rglob("cgroup.procs"):
            try:
                for pid in procs.read_text().split():
                    found.setdefault(int(pid), "pod process")
            except OSError:
                pass
    return sorted(found.items())


def leftovers(dir: Path | None = None) -> dict[str, list]:
    """Everything a node could leave behind on this machine (empty lists: nothing)."""
    markers = [str(RUN_DIR)] + ([str(Path(dir).resolve())] if dir else [])
    netns = [n.split()[0] for n in _sh("ip", "netns", "list", check=False).stdout.splitlines()]
    links = _sh("ip", "-o", "link", "show", check=False).stdout
    prefixes = [str(RUN_DIR)] + ([str(Path(dir).resolve())] if dir else [])
    return {
        "processes": _node_pids(markers),
        "netns": [n for n in netns if n == NETNS or n.startswith("cni-")],
        "veth": [v for v in (VETH_HOST,) if re.search(rf"^\d+: {v}[@:]", links, re.M)],
        "mounts": _mounts_under(prefixes) + [m for m in _mounts_under(["/run/netns"])
                                             if Path(m).name == NETNS or Path(m).name.startswith("cni-")],
        "cgroups": [str(c) for c in _kubepods_cgroups()],
        "routes": _blackhole_routes(),
    }


def _blackhole_routes() -> list[str]:
    out = _sh("ip", "route", "show", "type", "blackhole", BLACKHOLE[0], check=False).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def _kill_all(pids: list[tuple[int, str]], sig: int) -> None:
    for pid, _ in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def teardown(dir: Path | None = None, log=lambda m: None) -> dict[str, list]:
    """Remove every trace of a node (running or crashed): processes, mounts, netns, veth, cgroups.

    Returns what is still left (empty lists when all went)."""
    markers = [str(RUN_DIR)] + ([str(Path(dir).resolve())] if dir else [])
    # 1. processes: components (node first), then whatever is in a pod's cgroup
    for wave in (("kube-proxy", "kubelet"), ("containerd",), COMPONENTS, None):
        procs = [(p, n) for p, n in _node_pids(markers) if wave is None or n in wave]
        if not procs:
            continue
        _kill_all(procs, signal.SIGTERM if wave else signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            alive = [(p, n) for p, n in _node_pids(markers) if wave is None or n in wave]
            if not alive:
                break
            time.sleep(0.1)
        else:
            _kill_all(alive, signal.SIGKILL)
            time.sleep(0.3)
    for _ in range(50):
        rest = _node_pids(markers)
        if not rest:
            break
        _kill_all(rest, signal.SIGKILL)
        time.sleep(0.1)
    # 2. mounts: kubelet's volumes and tokens, containerd's rootfs and pod netns bind mounts
    prefixes = [str(RUN_DIR)] + ([str(Path(dir).resolve())] if dir else [])
    for _ in range(3):
        for mp in _mounts_under(prefixes):
            _sh("umount", "-l", mp, check=False)
        if not _mounts_under(prefixes):
            break
    # 3. network: pod namespaces (if any were left in /run/netns), the node's namespace (its veth
    # end, bridge and iptables rules go with it), the host's veth end
    for ns in leftovers(dir)["netns"]:
        _sh("ip", "netns", "delete", ns, check=False)
    _sh("ip", "link", "delete", VETH_HOST, check=False)
    for _ in _blackhole_routes():
        _sh("ip", "route", "delete", "blackhole", BLACKHOLE[0], "metric", BLACKHOLE[1], check=False)
    # 4. cgroups: kubelet's kubepods trees, leaf first (only empty ones can go)
    for cg in _kubepods_cgroups():
        for d in sorted((p for p in cg.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass
        try:
            cg.rmdir()
        except OSError:
            pass
    shutil.rmtree(RUN_DIR, ignore_errors=True)
    left = leftovers(dir)
    if any(left.values()):
        log(f"left after teardown: {left}")
    return left


# --------------------------------------------------------------------------- the node


def _qualified(ref: str) -> str:
    """containerd's name for a reference (``name:tag`` without a registry is docker.io/library/...)."""
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if "/" in ref else f"docker.io/library/{ref}"


@dataclass
class NodeCluster(Cluster):
    """A one-node cluster in ``dir`` (logs, pki, configs, kubelet's and containerd's data)."""

    dir: Path
    die_with_parent: bool = False
    postgres: bool = False  # also start PostgreSQL on NODE_IP:5432 inside the node
    start_timeout: float = 120.0
    timings: dict[str, float] = field(default_factory=dict)
    _procs: dict[str, subprocess.Popen] = field(default_factory=dict, repr=False)
    _lock: Any = field(default=None, repr=False)
    pg: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.dir = Path(self.dir).expanduser().resolve()

    # ----- Cluster interface
    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{NODE_IP}:{API_PORT}"

    @property
    def kubectl_path(self) -> Path:
        return _assets.find(build=False).kubectl

    @property
    def _scratch(self) -> Path:
        return self.dir

    @property
    def pki(self) -> Path:
        return self.dir / "pki"

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return ctx

    def _ca_pem(self) -> bytes:
        return (self.pki / "ca.crt").read_bytes()

    def log_path(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def database_url(self, dbname: str = "postgres") -> str:
        if not self.pg:
            raise NodeError("this node was started without postgres=True")
        return self.pg.url(dbname)

    # ----- lifecycle
    def start(self) -> "NodeCluster":
        reason = unavailable_reason()
        if reason:
            raise NodeError(reason)
        t0 = time.monotonic()
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        lock = open(LOCK, "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()  # not ours: stop() must then leave the other session's node alone
            raise NodeError(f"another one-node cluster is running on this machine (lock {LOCK})") from None
        self._lock = lock
        try:
            teardown(self.dir)  # a crashed earlier run's leftovers
            for stale in ("pki", "etcd-data", "kubelet", "containerd", "logs", "cni", "pod-logs", "pg"):
                shutil.rmtree(self.dir / stale, ignore_errors=True)
            (self.dir / "logs").mkdir(parents=True)
            self._network()
            self.timings["network"] = time.monotonic() - t0
            self._control_plane()
            self.timings["control-plane"] = time.monotonic() - t0
            self._containerd()
            from dbrev_dev.envtest import images

            self.load_image(images.pause_archive())
            self._kubelet()
            self._wait_node_ready()
            self.timings["node-ready"] = time.monotonic() - t0
            if self.postgres:
                from dbrev.pg.ephemeral import PostgresServer

                # under RUN_DIR: traversable by the postgres user, and removed by teardown
                self.pg = PostgresServer(host=NODE_IP, port=5432, netns=NETNS, root=RUN_DIR / "pg").start()
            self._write_state()
        except BaseException:
            self.stop()
            raise
        self.timings["total"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Delete the pods cleanly (kubelet tears their sandboxes down), then remove everything.

        Only a node this object started (it holds the machine's lock): after a start that found another session's
        node running, there is nothing of ours to stop, and tearing down would destroy theirs."""
        if self._lock is None:
            return
        if self._procs.get("kubelet") and self._procs["kubelet"].poll() is None:
            try:
                self._stop_component("kube-controller-manager")  # nothing re-creates pods now
                self.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=0",
                             "--force", "--wait=false", check=False, timeout=30)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and self._sandboxes():
                    time.sleep(0.5)
            except Exception:  # noqa: BLE001 - teardown below removes whatever is left
                pass
        if self.pg:
            self.pg.stop("immediate")
        left = teardown(self.dir)
        for proc in self._procs.values():
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self._procs.clear()
        if self._lock:
            self._lock.close()
            self._lock = None
        if any(left.values()):
            raise NodeError(f"teardown left: {left}")

    def __enter__(self) -> "NodeCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- images
    def ctr(self, *args: str, input_file: Path | None = None, timeout: float = 600) -> str:
        # ctr's own dial deadline is 10 s, which a containerd busy unpacking a big image on two loaded
        # cores can miss (CI saw "failed to dial ... context deadline exceeded" right after an import)
        cmd = ["ctr", "--address", str(RUN_DIR / "containerd.sock"), "--connect-timeout", "60s", "-n", "k8s.io",
               *args]
        if input_file:
            with open(input_file, "rb") as fh:
                proc = subprocess.run(cmd, stdin=fh, capture_output=True, text=True, timeout=timeout)
        else:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def load_image(self, archive: Path, *names: str) -> None:
        """Import an image archive (docker-archive, as ``dbrev_dev.envtest.images`` saves them) into the
        node's containerd; ``names`` are extra tags (e.g. the reference the manifests use), so that
        ``imagePullPolicy: IfNotPresent`` never pulls."""
        import tarfile

        with tarfile.open(archive) as tar:
            manifest = json.load(tar.extractfile("manifest.json"))
        tags = [t for entry in manifest for t in entry.get("RepoTags") or []]
        if not tags:
            raise NodeError(f"{archive} names no image (no RepoTags in its manifest.json)")
        self.ctr("images", "import", "-", input_file=archive)
        for name in names:
            if name not in tags:
                self.ctr("images", "tag", "--force", _qualified(tags[0]), name)

    def _sandboxes(self) -> list[str]:
        try:
            return [c for c in self.ctr("containers", "ls", "-q", timeout=10).split() if c]
        except (NodeError, subprocess.TimeoutExpired):
            return []

    # ----- pieces
    def _network(self) -> None:
        if not _blackhole_routes():
            _sh("ip", "route", "add", "blackhole", BLACKHOLE[0], "metric", BLACKHOLE[1])
        _sh("ip", "netns", "add", NETNS)
        _sh("ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NODE)
        _sh("ip", "link", "set", VETH_NODE, "netns", NETNS)
        _sh("sysctl", "-qw", f"net.ipv6.conf.{VETH_HOST}.disable_ipv6=1", check=False)
        _sh("sysctl", "-qw", f"net.ipv4.conf.{VETH_HOST}.forwarding=0")
        _sh("ip", "addr", "add", f"{HOST_IP}/{PREFIX}", "dev", VETH_HOST)
        _sh("ip", "link", "set", VETH_HOST, "up")
        n = lambda *c: _sh(*in_node(*c))  # noqa: E731
        n("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        n("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        n("ip", "link", "set", "lo", "up")
        n("ip", "addr", "add", f"{NODE_IP}/{PREFIX}", "dev", VETH_NODE)
        n("ip", "link", "set", VETH_NODE, "up")
        # Forwarding inside the node (pods <-> services); never across the veth.
        n("sysctl", "-qw", "net.ipv4.ip_forward=1")
        n("iptables", "-N", "DBREV-ISOLATE")
        n("iptables", "-A", "DBREV-ISOLATE", "-i", VETH_NODE, "-j", "DROP")
        n("iptables", "-A", "DBREV-ISOLATE", "-o", VETH_NODE, "-j", "DROP")
        n("iptables", "-I", "FORWARD", "1", "-j", "DBREV-ISOLATE")
        routes = _sh(*in_node("ip", "route", "show", "default")).stdout.strip()
        if routes:
            raise NodeError(f"the node's namespace has a default route ({routes}); refusing to go on")

    def _spawn(self, name: str, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.log_path(name), "ab")
        try:
            proc = subprocess.Popen(
                in_node(*argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.dir, start_new_session=True, env=env,
                preexec_fn=exit_with_parent if self.die_with_parent else None,
            )
        finally:
            log.close()
        self._procs[name] = proc
        return proc

    def _wait(self, name: str, ready, timeout: float | None = None) -> None:
        proc = self._procs[name]
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while True:
            if proc.poll() is not None:
                raise NodeError(f"{name} exited with {proc.returncode} while starting; "
                                f"{self.log_path(name)}:\n{log_tail(self.log_path(name))}")
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - not ready yet
                pass
            if time.monotonic() > deadline:
                raise NodeError(f"{name} not ready after {timeout or self.start_timeout:.0f}s; "
                                f"{self.log_path(name)}:\n{log_tail(self.log_path(name))}")
            time.sleep(0.2)

    def _stop_component(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def _control_plane(self) -> None:
        a = _assets.find(build=False)
        na = _assets.find_node(build=False)
        f = generate_pki(self.pki, extra_ips=(NODE_IP,))
        admin = write_kubeconfig(self.kubeconfig, self.server, f["ca.crt"].read_bytes(), user=ADMIN_USER,
                                 client_cert_pem=f["admin.crt"].read_bytes(),
                                 client_key_pem=f["admin.key"].read_bytes())
        data = self.dir / "etcd-data"
        local = "http://127.0.0.1"
        self._spawn("etcd", [str(a.etcd), "--name=dbrev", f"--data-dir={data}",
                             f"--listen-client-urls={local}:{ETCD_PORT}",
                             f"--advertise-client-urls={local}:{ETCD_PORT}",
                             f"--listen-peer-urls={local}:{ETCD_PEER_PORT}",
                             f"--initial-advertise-peer-urls={local}:{ETCD_PEER_PORT}",
                             f"--initial-cluster=dbrev={local}:{ETCD_PEER_PORT}",
                             "--unsafe-no-fsync=true", "--log-level=warn"])
        self._spawn("kube-apiserver", [
            str(a.kube_apiserver), f"--etcd-servers={local}:{ETCD_PORT}",
            f"--bind-address={NODE_IP}", f"--advertise-address={NODE_IP}", f"--secure-port={API_PORT}",
            f"--cert-dir={self.pki}", f"--tls-cert-file={f['serving.crt']}",
            f"--tls-private-key-file={f['serving.key']}", f"--client-ca-file={f['ca.crt']}",
            "--authorization-mode=Node,RBAC", f"--service-account-issuer={self.server}",
            f"--service-account-key-file={f['sa.pub']}", f"--service-account-signing-key-file={f['sa.key']}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}", "--allow-privileged=true",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={f['admin.crt']}", f"--kubelet-client-key={f['admin.key']}",
            "--profiling=false",
        ])
        self._wait("kube-apiserver", self._api_ready)
        common = [f"--kubeconfig={admin}", "--leader-elect=false", "--profiling=false"]
        self._spawn("kube-controller-manager", [
            str(na.kube_controller_manager), *common, "--use-service-account-credentials",
            f"--root-ca-file={f['ca.crt']}", f"--service-account-private-key-file={f['sa.key']}",
            f"--cluster-signing-cert-file={f['ca.crt']}", f"--cluster-signing-key-file={f['ca.key']}",
            "--bind-address=127.0.0.1", f"--cluster-cidr={POD_CIDR}", "--allocate-node-cidrs=false",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
        ])
        self._spawn("kube-scheduler", [str(na.kube_scheduler), *common, "--bind-address=127.0.0.1"])

    def _api_ready(self) -> bool:
        if not self.readyz():
            return False
        status, _ = self.request("GET", "/api/v1/namespaces/default", timeout=2)
        return status == 200

    def _containerd(self) -> None:
        (self.dir / "cni" / "net.d").mkdir(parents=True, exist_ok=True)
        (self.dir / "cni" / "net.d" / "10-dbrev.conflist").write_text(json.dumps({
            "cniVersion": "1.0.0", "name": "dbrev-pods",
            "plugins": [
                {"type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
                 "hairpinMode": True,
                 "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                          "routes": [{"dst": "0.0.0.0/0"}]}},
                {"type": "portmap", "capabilities": {"portMappings": True}},
            ],
        }, indent=2))
        from dbrev_dev.envtest.images import PAUSE_IMAGE

        RUN_DIR.mkdir(parents=True, exist_ok=True)
        root = self.dir / "containerd"
        root.mkdir(parents=True, exist_ok=True)
        cfg = root / "config.toml"
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        cfg.write_text(f"""\
version = 2
root = "{root / 'root'}"
state = "{RUN_DIR / 'state'}"
[grpc]
  address = "{RUN_DIR / 'containerd.sock'}"
[ttrpc]
  address = "{RUN_DIR / 'containerd.sock.ttrpc'}"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{root / 'opt'}"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
  [{cri}.cni]
    bin_dir = "{cni_bin_dir()}"
    conf_dir = "{self.dir / 'cni' / 'net.d'}"
""")
        self._spawn("containerd", ["containerd", "--config", str(cfg)])
        self._wait("containerd", lambda: bool(self.ctr("version", timeout=5)))

    def _kubelet(self) -> None:
        na = _assets.find_node(build=False)
        f = {p.name: p for p in self.pki.iterdir()}
        kubelet_dir = self.dir / "kubelet"
        kubelet_dir.mkdir(parents=True)
        node_kc = write_kubeconfig(self.dir / "kubelet.kubeconfig", self.server, f["ca.crt"].read_bytes(),
                                   user=ADMIN_USER, client_cert_pem=f["admin.crt"].read_bytes(),
                                   client_key_pem=f["admin.key"].read_bytes())
        resolv = self.dir / "resolv.conf"
        resolv.write_text("# no cluster DNS, no outside DNS\noptions ndots:0\n")
        cfg = self.dir / "kubelet.yaml"
        cfg.write_text(json.dumps({
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "failSwapOn": False,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                               "x509": {"clientCAFile": str(f["ca.crt"])}},
            "authorization": {"mode": "AlwaysAllow"},
            "address": NODE_IP, "port": 10250, "readOnlyPort": 0, "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248, "resolvConf": str(resolv), "podLogsDir": str(self.dir / "pod-logs"),
            "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "containerRuntimeEndpoint": f"unix://{RUN_DIR / 'containerd.sock'}",
            "makeIPTablesUtilChains": False, "serializeImagePulls": False,
            "nodeStatusUpdateFrequency": "4s", "syncFrequency": "10s",
            "fileCheckFrequency": "10s", "localStorageCapacityIsolation": True,
        }, indent=2))
        self._spawn("kubelet", [
            str(na.kubelet), f"--config={cfg}", f"--kubeconfig={node_kc}", f"--root-dir={kubelet_dir}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1",
        ])
        proxy_cfg = self.dir / "kube-proxy.yaml"
        proxy_cfg.write_text(json.dumps({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
            "mode": "iptables", "clusterCIDR": POD_CIDR, "hostnameOverride": NODE_NAME,
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "bindAddress": NODE_IP, "healthzBindAddress": "127.0.0.1:10256", "metricsBindAddress": "127.0.0.1:10249",
            # never touch the machine's conntrack settings
            "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        }, indent=2))
        self._spawn("kube-proxy", [str(na.kube_proxy), f"--config={proxy_cfg}"])

    def _wait_node_ready(self) -> None:
        def ready() -> bool:
            status, node = self.request("GET", f"/api/v1/nodes/{NODE_NAME}", timeout=2)
            if status != 200:
                return False
            conds = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
            return conds.get("Ready") == "True"

        self._wait("kubelet", ready)

    def _write_state(self) -> None:
        state = {"server": self.server, "kubeconfig": str(self.kubeconfig), "node": NODE_NAME,
                 "netns": NETNS, "pids": {n: p.pid for n, p in self._procs.items()},
                 "postgres": self.pg.url() if self.pg else None,
                 "timings": {k: round(v, 2) for k, v in self.timings.items()}}
        (self.dir / "state.json").write_text(json.dumps(state, indent=2) + "\n")

    # ----- helpers for tests and the demo
    def apply_kustomization(self, path: Path | str, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.kubectl("apply", "-k", str(path), timeout=timeout)


def _cmd_up(args) -> int:
    node = NodeCluster(Path(args.dir), postgres=args.postgres)
    try:
        node.start()
        if args.image:
            from dbrev_dev.envtest import images

            node.load_image(images.operator_archive(), images.MANIFESTS_IMAGE)
            print(f"image:      {images.OPERATOR_IMAGE}, also tagged {images.MANIFESTS_IMAGE} (the manifests')")
    except (AssetError, NodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t = node.timings
    print(f"kubeconfig: {node.kubeconfig}")
    print(f"server:     {node.server}")
    if node.pg:
        print(f"postgres:   {node.pg.url()}")
    print(f"node Ready in {t['node-ready']:.1f}s (control plane {t['control-plane']:.1f}s)")
    print(f"export KUBECONFIG={node.kubeconfig}")
    print(f"stop with: python -m dbrev_dev.envtest.node down --dir {node.dir}")
    # `up` leaves the processes running: forget our handles without stopping them
    node._procs.clear()
    return 0


def _cmd_down(args) -> int:
    with open(LOCK, "a") as fh:  # a node a running test session holds (`up` from here holds nothing once it returns)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"error: a running process holds the one-node cluster (lock {LOCK}): stop that test session "
                  f"instead (its teardown removes the node); nothing was changed", file=sys.stderr)
            return 3
        left = teardown(Path(args.dir))
    if any(left.values()):
        print(f"error: left behind: {left}", file=sys.stderr)
        return 2
    print("the node is gone (no process, netns, veth, mount or kubepods cgroup left)")
    return 0


def _cmd_leftovers(args) -> int:
    left = leftovers(Path(args.dir) if args.dir else None)
    print(json.dumps(left, indent=2))
    return 1 if any(left.values()) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dbrev_dev.envtest.node",
                                     description="A real one-node Kubernetes cluster, local traffic only.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up")
    up.add_argument("--dir", default=".cluster/node")
    up.add_argument("--postgres", action="store_true", help="also run PostgreSQL inside the node")
    up.add_argument("--image", action="store_true", help="build and load the operator image")
    up.set_defaults(fn=_cmd_up)
    down = sub.add_parser("down")
    down.add_argument("--dir", default=".cluster/node")
    down.set_defaults(fn=_cmd_down)
    lo = sub.add_parser("leftovers")
    lo.add_argument("--dir", default=None)
    lo.set_defaults(fn=_cmd_leftovers)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
