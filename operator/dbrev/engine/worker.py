"""Run an apply in a separate process with a hard timeout.

The worker gets the request (database URL, scripts folder, target, policy) on
stdin, never on its command line (``ps`` would show the password), and a
minimal environment: no Kubernetes credentials, no parent secrets.

Two channels come back.  The *protocol* (progress events and the result) travels
on a pipe of its own, not on stdout: every line carries an HMAC made with a key
that exists only in the parent and in the worker's memory (sent on stdin, which
is closed before any script runs), so nothing a script prints or writes to any
file descriptor can pass for an event or a result.  The *output* channel is the
worker's stdout and stderr, merged: its own JSON log lines, and whatever the
scripts print (``sys.stdout`` is a stream that turns lines into log records, fd 1
is fd 2).  The parent redacts every output line and re-logs it through its own
logging, so a script's output never reaches a ``--json`` document and a password
never reaches a log.

When the timeout passes, the parent kills the worker's process group with
SIGKILL and terminates its database backend, so PostgreSQL rolls back the open
transaction and releases the lock at once instead of when it notices.  A result
once received is final: a worker that lingers after it (a thread a script left
running) is killed and reported, never rolled back.

This module is the process transport only.  What follows a dead or timed-out
worker (closing its journal row, the way back to the starting revision) is
:func:`dbrev.engine.undo.recover_after_death`'s; the worker only starts the way back's
own worker when asked (``rerun``).
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from typing import Callable

from ..core import log as L
from ..core.errors import DbrevError
from ..core import conditions as C
from ..core.options import DbOptions, Policy, RunRequest
from ..core.results import RunResult
from ..core.redact import redact, register_secret
from ..core.text import revisions_shown

_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR",
             "PGSSLROOTCERT", "PGSSLMODE", "PGAPPNAME")


# descriptors a forked worker closes first (the CLI's copy of its real stdout)
CHILD_CLOSE_FDS: set[int] = set()
# how long a worker may take to exit once it has reported its result
LINGER_GRACE_S = 5.0
# how many of the worker's last output lines a "died without a result" message quotes
TAIL_LINES = 12


def request_to_json(req: RunRequest, log_level: str, log_context: dict, key: bytes = b"") -> str:
    d = asdict(req)
    d["policy"]["verify"] = list(req.policy.verify)
    return json.dumps({"request": d, "log_level": log_level, "log_context": log_context, "key": key.hex()})


def _sign(key: bytes, payload: str) -> str:
    return hmac.new(key, payload.encode(), hashlib.sha256).hexdigest()


def protocol_line(key: bytes, event: dict) -> str:
    """One authenticated protocol line: ``<hmac> <json>``."""
    payload = redact(json.dumps(event, default=str))
    return f"{_sign(key, payload)} {payload}\n"


def parse_protocol_line(key: bytes, line: str) -> dict | None:
    """The event on an authenticated line; None for anything else (forged, truncated, not JSON)."""
    mac, _, payload = line.rstrip("\n").partition(" ")
    if not payload or not hmac.compare_digest(mac.encode(), _sign(key, payload).encode()):
        return None
    try:
        ev = json.loads(payload)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) else None


def request_from_json(text: str) -> tuple[RunRequest, str, dict]:
    doc = json.loads(text)
    r = doc["request"]
    p = r.pop("policy")
    policy = Policy(downgrade=p["downgrade"], data_loss=p["data_loss"],
                    rollback_on_failure=p["rollback_on_failure"], verify=tuple(p["verify"]),
                    repair_sequences=bool(p.get("repair_sequences", False)),
                    rehearse=p.get("rehearse", "Report"))
    db = DbOptions(**r.pop("db"))
    r["pythonpath"] = tuple(r.get("pythonpath") or ())
    return RunRequest(db=db, policy=policy, **r), doc.get("log_level", "INFO"), doc.get("log_context", {})


def die_with_parent() -> None:
    """Linux: SIGKILL this worker when the process that started it dies (an operator killed mid-run).

    PostgreSQL then notices the closed connection, rolls back the open transaction and frees the lock.

    The parent is whoever it is now (read before ``prctl``), and PID 1 is a legitimate parent: in a
    container the operator *is* PID 1.  Only a parent that changes between that read and ``prctl``
    taking effect means it died in the gap (the worker was reparented); then exit.
    """
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def main() -> int:
    """Entry point of the worker process (``python -m dbrev.engine.worker FD``): the protocol goes to fd FD."""
    die_with_parent()
    proto_fd = int(sys.argv[1])
    os.set_inheritable(proto_fd, False)  # never into a subprocess a script starts
    raw = sys.stdin.read()
    sys.stdin.close()
    doc = json.loads(raw)
    key = bytes.fromhex(doc.pop("key", "") or "")
    req, level, ctx = request_from_json(json.dumps(doc))
    del raw, doc
    _quiet_stdout()
    out = os.fdopen(proto_fd, "w")
    _serve(req, level, ctx, out, key)
    # a thread a script left running must not keep the worker alive once the result is out
    sys.stderr.flush()
    os._exit(0)


class LinesToLog:
    """A text stream whose lines become log records: what scripts print becomes part of the log."""

    encoding = "utf-8"
    errors = "replace"

    def __init__(self, name: str = "dbrev.script", stream: str = "stdout"):
        self._log = logging.getLogger(name)
        if self._log.level == logging.NOTSET:
            self._log.setLevel(logging.INFO)  # what scripts print shows at every --log-level
        self._stream = stream
        self._buf = ""
        self._lock = threading.Lock()

    def write(self, text) -> int:
        text = str(text)
        with self._lock:
            self._buf += text
            *lines, self._buf = self._buf.split("\n")
        for line in lines:
            if line.strip():
                self._log.info(line.rstrip("\r"), extra={"stream": self._stream})
        return len(text)

    def flush(self) -> None:
        with self._lock:
            rest, self._buf = self._buf, ""
        if rest.strip():
            self._log.info(rest, extra={"stream": self._stream})

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return 2

    @property
    def buffer(self):
        """``sys.stdout.buffer.write(b"...")`` works too, and logs the same way."""
        text = self

        class _Binary:
            def write(self, data) -> int:
                text.write(bytes(data).decode("utf-8", "replace"))
                return len(data)

            def flush(self) -> None:
                text.flush()

        return _Binary()


def _quiet_stdout() -> None:
    """Nothing a script writes reaches the protocol: fd 1 is fd 2, ``print()`` makes log records."""
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = LinesToLog()  # type: ignore[assignment]


def _serve(req: RunRequest, level: str, ctx: dict, out, key: bytes) -> None:
    """The worker's whole job: run the request, report events and the result on the protocol channel."""
    register_secret(url_password(req.db.url))
    L.setup_logging(level, "json", sys.stderr)
    L.bind_context(**ctx)
    threading.excepthook = _thread_died

    def emit(event: dict) -> None:
        out.write(protocol_line(key, event))
        out.flush()
        if event.get("event") == "backend":
            _baseline(req, emit)

    from ..pg.db import run_async_aware
    from .runner import run

    run_async_aware(req.db.url, _run_and_report, req, emit, run)
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001
        pass


def _run_and_report(req: RunRequest, emit, run) -> None:
    """Run, then emit the result or the error (an asyncpg URL: all of it inside the greenlet bridge)."""
    try:
        try:
            result = run(req, emit)
        except BaseException as e:  # noqa: BLE001
            lost = _lost_connection(req, e)
            if lost is None:
                raise
            raise lost from None
        emit({"event": "result", "result": result.to_dict()})
    except DbrevError as e:
        emit({"event": "error", "error": e.to_dict()})
    except BaseException as e:  # noqa: BLE001 - report, never hang
        L.log_error("Worker failed", e)
        emit({"event": "error", "error": {"error_type": type(e).__name__, "message": redact(str(e)),
                                          "reason": C.MIGRATION_FAILED, "exit_code": 1}})


def _thread_died(args) -> None:
    """A thread a script started raised: one log record (redacted), not a raw traceback on stderr."""
    if args.exc_type is SystemExit:
        return
    L.log_error(f"A thread died: {args.thread.name if args.thread else '?'}", args.exc_value
                or args.exc_type())


def _baseline(req: RunRequest, emit) -> None:
    """What the database holds before any step runs that a killed run could leave behind (invalid indexes)."""
    from ..pg.db import connection, invalid_indexes

    try:
        with connection(DbOptions(**{**asdict(req.db), "connect_timeout": 5})) as conn:
            emit({"event": "baseline", "invalid_indexes": invalid_indexes(conn)})
            conn.commit()
    except Exception as e:  # noqa: BLE001 - without it, a death is only reported, not cleaned up
        L.logger.warning("Could not record the invalid indexes before the run",
                         extra={"error_type": type(e).__name__, "error_message": redact(str(e))})


def _lost_connection(req: RunRequest, exc: BaseException) -> DbrevError | None:
    """The run's session was lost (server restart, terminated backend): where is the database now?"""
    from ..pg.db import connection, is_connection_lost, read_heads
    from ..core.errors import DatabaseUnavailable, SessionLost

    if isinstance(exc, DatabaseUnavailable) and not isinstance(exc, SessionLost):
        return None
    if not is_connection_lost(exc):
        return None
    # the first cause in the chain says what happened (e.g. "terminating connection due to administrator
    # command"); a later SessionLost only says that dbrev refused to go on
    chain, e = [], exc
    while e is not None and len(chain) < 20:
        chain.append(e)
        e = e.__cause__ or e.__context__
    cause = next((c for c in reversed(chain) if is_connection_lost(c)), exc)
    orig = getattr(cause, "orig", None) or cause
    first = (redact(str(orig)).strip().splitlines() or [type(orig).__name__])[0]
    try:
        with connection(DbOptions(**{**asdict(req.db), "connect_timeout": min(req.db.connect_timeout, 30)})) as c:
            heads = list(read_heads(c, req.db.version_table, req.db.version_table_schema))
            c.commit()
        where = f"the database is now at {revisions_shown(heads)}"
    except DbrevError:
        heads = None
        where = "the database could not be reached again to read its revision"
    L.logger.error("Lost the database session during the run",
                   extra={"error_type": type(exc).__name__, "error_message": first, "current_revisions": heads})
    return SessionLost(f"lost the database session during the run ({first}); {where}",
                       hint="a server restart or a terminated backend; the open transaction was rolled back by "
                            "PostgreSQL; run again once the server is up",
                       details={"current_revisions": heads})


class _ForkedWorker:
    """The worker as a fork of this process: no second interpreter, no second import of the engine.

    For the CLI, whose memory holds nothing but what its user passed.  The operator spawns a fresh
    interpreter instead (:func:`run_in_worker` ``isolate=True``), so a worker never inherits its
    Kubernetes credentials.  Either way the worker leads its own process group, dies with its parent,
    and is killed with SIGKILL on timeout.
    """

    def __init__(self, req: RunRequest, level: str, ctx: dict, key: bytes):
        from . import runner  # noqa: F401 - imported once, here, and inherited by the child

        r_proto, w_proto = os.pipe()
        r_err, w_err = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                os.setsid()
                die_with_parent()
                os.close(r_proto)
                os.close(r_err)
                for fd in CHILD_CLOSE_FDS:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                os.dup2(w_err, 2)
                os.close(w_err)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                os.close(devnull)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                _quiet_stdout()
                _serve(req, level, ctx, os.fdopen(w_proto, "w"), key)
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        os.close(w_proto)
        os.close(w_err)
        self.pid = pid
        self.protocol = os.fdopen(r_proto)
        self.stdout = os.fdopen(r_err, errors="replace")
        self.returncode: int | None = None

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired("dbrev worker", timeout)
            time.sleep(0.01)
        return self.returncode


def url_password(url: str) -> str | None:
    from ..pg.db import url_password as pw

    return pw(url)


class WorkerError(DbrevError):
    """An error reported by the worker, re-raised in the parent with its original type's attributes."""


def raise_reported(err: dict) -> None:
    from ..core import errors as E

    cls = getattr(E, err.get("error_type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, DbrevError)):
        cls = WorkerError
    e = cls.__new__(cls)
    DbrevError.__init__(e, err.get("message", "worker failed"), reason=err.get("reason"), hint=err.get("hint"),
                        details=err.get("details"))
    if "exit_code" in err:
        e.exit_code = err["exit_code"]
    raise e


def run_in_worker(req: RunRequest, *, timeout: float | None, on_event: Callable[[dict], None] | None = None,
                  log_level: str = "INFO", log_context: dict | None = None,
                  stderr_sink: Callable[[str], None] | None = None, _rollback: bool = True,
                  isolate: bool = True) -> RunResult:
    """Run ``req`` in a worker process; kill it (and its backend) when ``timeout`` passes.

    ``isolate``: a fresh interpreter with a minimal environment that gets the request on stdin (the
    operator); otherwise a fork of this process (the CLI: faster, and it holds no one else's secrets).
    The worker's output (its logs, what scripts print) is redacted and re-logged here, or handed to
    ``stderr_sink`` line by line, redacted.
    """
    register_secret(url_password(req.db.url))
    context = log_context or L.current_context()
    # what a rollback run after a timeout or a dead worker is started with
    passthrough = {"on_event": on_event, "log_level": log_level, "log_context": log_context,
                   "stderr_sink": stderr_sink, "isolate": isolate}
    key = secrets.token_bytes(32)
    if isolate:
        env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join([pkg_root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        r_proto, w_proto = os.pipe()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "dbrev.engine.worker", str(w_proto)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, text=True, errors="replace", pass_fds=(w_proto,))
        finally:
            os.close(w_proto)
        protocol = os.fdopen(r_proto)
    else:
        proc = _ForkedWorker(req, log_level, context, key)
        protocol = proc.protocol
    events: list[dict] = []
    state: dict = {}
    final = threading.Event()
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

    def read_protocol():
        for line in protocol:
            ev = parse_protocol_line(key, line)
            if ev is None:
                if line.strip():
                    L.logger.warning("Ignored a line on the worker's protocol channel that dbrev did not write",
                                     extra={"line": redact(line.strip())[:200]})
                continue
            events.append(ev)
            kind = ev.get("event")
            if kind == "backend":
                state["backend_pid"] = ev.get("pid")
            elif kind == "plan":
                state["plan"] = ev.get("plan")
            elif kind == "journal":
                state["journal"] = ev
            elif kind == "baseline":
                state["invalid_indexes"] = ev.get("invalid_indexes")
            elif kind in ("step_started", "rollback_step_started"):
                state["steps_started"] = state.get("steps_started", 0) + 1
            if kind in ("result", "error"):
                final.set()
            if on_event:
                try:
                    on_event(ev)
                except Exception as e:  # noqa: BLE001 - a display problem must not lose the result
                    L.logger.warning("Could not handle a worker event",
                                     extra={"error_type": type(e).__name__, "error_message": redact(str(e))})

    def read_output():
        for line in proc.stdout:  # type: ignore[union-attr]
            line = redact(line.rstrip("\n"))
            if not line.strip():
                continue
            tail.append(line)
            if stderr_sink:
                stderr_sink(line)
            else:
                L.relay(line)

    t_proto = threading.Thread(target=read_protocol, daemon=True)
    t_out = threading.Thread(target=read_output, daemon=True)
    t_proto.start()
    t_out.start()
    t0 = time.monotonic()
    oom_before = oom_kills()
    if isolate:
        try:
            proc.stdin.write(request_to_json(req, log_level, context, key))  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
    deadline = None if timeout is None else t0 + timeout
    timed_out = False
    lingered = False
    while True:
        try:
            proc.wait(timeout=0.05)
            break
        except subprocess.TimeoutExpired:
            pass
        if final.is_set():
            # the result is in: the worker has LINGER_GRACE_S to exit, then it is killed, never rolled back
            try:
                proc.wait(timeout=LINGER_GRACE_S)
            except subprocess.TimeoutExpired:
                lingered = True
                _kill(proc)
            break
        if deadline is not None and time.monotonic() >= deadline:
            timed_out = True
            _kill(proc)
            break
    t_proto.join(5)
    t_out.join(2)
    final_ev = next((ev for ev in reversed(events) if ev.get("event") in ("result", "error")), None)
    if final_ev is not None:
        if lingered:
            L.logger.error("The worker did not exit after reporting its result and was killed; its result stands",
                           extra={"grace_s": LINGER_GRACE_S, "operation": "apply"})
        if final_ev["event"] == "error":
            raise_reported(final_ev["error"])
        result = RunResult.from_dict(final_ev["result"])
        if lingered:
            result.warn(
                f"the worker did not exit within {LINGER_GRACE_S:g}s of reporting its result (a thread a migration "
                "started?) and was killed; the result stands")
        return result
    from . import undo

    # the way back, when it needs steps run: another worker, started as this one was
    rerun = (lambda back: run_in_worker(back, timeout=timeout, _rollback=False, **passthrough)) if _rollback else None
    if timed_out:
        return undo.after_timeout(req, state, timeout or 0, time.monotonic() - t0, rerun, list(tail))
    code = proc.returncode
    why, hint = death_cause(code, timed_out=False, started=bool(state.get("backend_pid")), tail=list(tail))
    reason = C.MIGRATION_FAILED
    if code == -signal.SIGKILL and oom_before is not None and (oom_kills() or 0) > oom_before:
        # the cgroup's own OOM counter moved while the worker ran: it was the kernel's OOM killer, for sure
        reason, hint = C.OUT_OF_MEMORY, ("the kernel's OOM killer stopped it at the memory limit (OOM-killed): "
                                         "it used more memory than this container or cgroup may")
    return undo.recover_after_death(req, state, f"the worker process died ({why}) without a result; {hint}",
                                    time.monotonic() - t0, rerun, reason=reason, tail=list(tail))


#: where a process reads its own cgroup's OOM-kill counter (v2, then v1)
OOM_COUNTERS = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")


def oom_kills() -> int | None:
    """How many processes the kernel's OOM killer has killed in this process's memory cgroup (None: unknown)."""
    for path in OOM_COUNTERS:
        try:
            with open(path, encoding="ascii") as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def death_cause(code: int | None, *, timed_out: bool, started: bool, tail: list[str]) -> tuple[str, str]:
    """Why a worker died, in words, and a hint that names the likely cause (no migration has to be at fault)."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        why = f"killed by {name}"
        if timed_out:
            return why, "dbrev killed it when the run passed its timeout"
        if -code == signal.SIGKILL:
            return why, ("SIGKILL from outside dbrev: most often the kernel's OOM killer (check the memory limit "
                         "and `dmesg`), or something that killed the process group")
        return why, "a signal from outside dbrev stopped it (a shutdown, or someone killed it)"
    why = f"exit code {code}"
    if not started and not tail:
        return why, ("it exited before connecting and printed nothing: the check that stops a worker whose "
                     "parent has died (the operator running as PID 1 or under an init that reparents) is the "
                     "likely cause; no migration ran")
    if tail:
        return why, "its last output lines are in the error details; no result means no migration reported a failure"
    return why, "it printed nothing; no migration reported a failure"


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


if __name__ == "__main__":
    sys.exit(main())
