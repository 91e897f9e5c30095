"""A throwaway PostgreSQL server: initdb into a temporary folder, loopback port.

Used by ``dbrev check --ephemeral``, the test suite, ``make demo`` and the benchmarks.  The binaries come
from the machine (``pg_config --bindir``, ``/usr/lib/postgresql/*/bin`` or
``PATH``); ``.ci/run`` installs Debian's ``postgresql`` when none are found.
When running as root (CI containers), the server runs as the ``postgres``
user (or ``nobody``), because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


class PostgresNotFound(RuntimeError):
    pass


def find_bindir() -> Path:
    explicit = os.environ.get("DBREV_PG_BINDIR")
    candidates: list[str] = [explicit] if explicit else []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if out.returncode == 0:
            candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "pg_ctl").is_file():
            return Path(c)
    raise PostgresNotFound(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them "
        "(Debian: apt-get install postgresql) or set DBREV_PG_BINDIR, or point the "
        "tests at a running server with DBREV_TEST_DATABASE_URL"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
            return user
        except KeyError:
            continue
    raise PostgresNotFound("running as root and neither a 'postgres' nor a 'nobody' user exists")


@dataclass
class PostgresServer:
    """One initdb'd cluster on 127.0.0.1:<port>, superuser ``postgres``, trust auth."""

    bindir: Path = field(default_factory=find_bindir)
    port: int = field(default_factory=free_port)
    root: Path | None = None
    user: str = "postgres"
    password: str | None = None
    # Listen address, and a network namespace (``ip netns`` name) to run the server in: the
    # one-node cluster's PostgreSQL listens on the node's address, where pods and the host reach it.
    host: str = "127.0.0.1"
    netns: str | None = None
    _owned_root: bool = False

    @property
    def datadir(self) -> Path:
        assert self.root
        return self.root / "data"

    def _cmd(self, args: list[str]) -> list[str]:
        who = _run_as()
        cmd = ["runuser", "-u", who, "--", *args] if who else args
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *cmd] if self.netns else cmd

    def start(self, timeout: float = 60.0) -> "PostgresServer":
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="dbrev-pg-"))
            self._owned_root = True
        self.root.mkdir(parents=True, exist_ok=True)
        who = _run_as()
        if who:
            pw = pwd.getpwnam(who)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            os.chmod(self.root, 0o700)
        if not (self.datadir / "PG_VERSION").exists():
            init = [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.user,
                    "-E", "UTF8", "--locale=C", "--no-sync"]
            if self.password:
                pwfile = self.root / "pwfile"
                pwfile.write_text(self.password + "\n")
                if who:
                    os.chown(pwfile, pw.pw_uid, pw.pw_gid)
                init += ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
            else:
                init += ["--auth=trust"]
            proc = subprocess.run(self._cmd(init), capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"initdb failed: {proc.stderr or proc.stdout}")
            if self.host != "127.0.0.1":  # clients come from the namespace's other addresses
                method = "scram-sha-256" if self.password else "trust"
                with open(self.datadir / "pg_hba.conf", "a") as hba:
                    hba.write(f"host all all 0.0.0.0/0 {method}\n")
        opts = (f"-p {self.port} -c listen_addresses={self.host} -k {self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200 -c shared_buffers=128MB")
        proc = subprocess.run(
            self._cmd([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-o", opts,
                       "-l", str(self.root / "server.log"), "-w", "-t", str(int(timeout)),
                       "start"]),
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            log = (self.root / "server.log").read_text() if (self.root / "server.log").exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {proc.stderr}\n{log[-2000:]}")
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"PostgreSQL did not accept connections on port {self.port}")

    def stop(self, mode: str = "fast") -> None:
        if self.root and (self.datadir / "postmaster.pid").exists():
            subprocess.run(
                self._cmd([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode,
                           "-w", "stop"]),
                capture_output=True, text=True,
            )

    def cleanup(self) -> None:
        self.stop("immediate")
        if self._owned_root and self.root:
            shutil.rmtree(self.root, ignore_errors=True)

    def pid(self) -> int | None:
        pidfile = self.datadir / "postmaster.pid"
        if not pidfile.exists():
            return None
        return int(pidfile.read_text().split()[0])

    def kill(self) -> None:
        """Stop the server abruptly (simulates the database going away)."""
        pid = self.pid()
        if pid:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                    time.sleep(0.05)
                except ProcessLookupError:
                    break
            (self.datadir / "postmaster.pid").unlink(missing_ok=True)

    def url(self, dbname: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"{driver}://{auth}@{self.host}:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh database and return its SQLAlchemy URL."""
        return create_database(self.url(), name)


def create_database(admin_url: str, name: str | None = None) -> str:
    """Create a database on the server behind ``admin_url`` and return its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = name or f"t_{uuid.uuid4().hex[:12]}"
    url = make_url(admin_url)
    with psycopg.connect(_psycopg_dsn(url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


def drop_database(admin_url: str, name: str) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    with psycopg.connect(_psycopg_dsn(make_url(admin_url)), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _psycopg_dsn(url) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(
        host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username,
        password=url.password, dbname=url.database or "postgres",
    )
