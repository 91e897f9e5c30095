"""Run an apply in a separate process with a hard timeout.

The worker gets the request (database URL, scripts folder, target, policy) on
stdin, never on its command line (``ps`` would show the password), and a
minimal environment: no Kubernetes credentials, no parent secrets.  It writes
progress as JSON lines on stdout and its logs as JSON lines on stderr.  When
the timeout passes, the parent kills the worker's process group with SIGKILL
and terminates its database backend, so PostgreSQL rolls back the open
transaction and releases the lock at once instead of when it notices.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from typing import Callable

from . import log as L
from .errors import DbrevError
from .options import RESULT_FAILED, RESULT_ROLLED_BACK, DbOptions, Policy, RunRequest
from .redact import redact, register_secret

_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "VIRTUAL_ENV", "TMPDIR",
             "PGSSLROOTCERT", "PGSSLMODE", "PGAPPNAME")


def request_to_json(req: RunRequest, log_level: str, log_context: dict) -> str:
    d = asdict(req)
    d["policy"]["verify"] = list(req.policy.verify)
    return json.dumps({"request": d, "log_level": log_level, "log_context": log_context})


def request_from_json(text: str) -> tuple[RunRequest, str, dict]:
    doc = json.loads(text)
    r = doc["request"]
    p = r.pop("policy")
    policy = Policy(downgrade=p["downgrade"], data_loss=p["data_loss"],
                    rollback_on_failure=p["rollback_on_failure"], verify=tuple(p["verify"]))
    db = DbOptions(**r.pop("db"))
    r["pythonpath"] = tuple(r.get("pythonpath") or ())
    return RunRequest(db=db, policy=policy, **r), doc.get("log_level", "INFO"), doc.get("log_context", {})


def _die_with_parent() -> None:
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
    """Entry point of the worker process (``python -m dbrev.worker``)."""
    _die_with_parent()
    raw = sys.stdin.read()
    req, level, ctx = request_from_json(raw)
    _serve(req, level, ctx, sys.stdout)
    return 0


def _serve(req: RunRequest, level: str, ctx: dict, out) -> None:
    """The worker's whole job: run the request, report events and the result as JSON lines on ``out``."""
    register_secret(_password(req.db.url))
    L.setup_logging(level, "json", sys.stderr)
    L.bind_context(**ctx)

    def emit(event: dict) -> None:
        out.write(redact(json.dumps(event, default=str)) + "\n")
        out.flush()

    from .runner import run

    try:
        result = run(req, emit)
        emit({"event": "result", "result": result})
    except DbrevError as e:
        emit({"event": "error", "error": e.to_dict()})
    except BaseException as e:  # noqa: BLE001 - report, never hang
        L.log_error("Worker failed", e)
        emit({"event": "error", "error": {"error_type": type(e).__name__, "message": redact(str(e)),
                                          "reason": "MigrationFailed", "exit_code": 1}})


class _ForkedWorker:
    """The worker as a fork of this process: no second interpreter, no second import of the engine.

    For the CLI, whose memory holds nothing but what its user passed.  The operator spawns a fresh
    interpreter instead (:func:`run_in_worker` ``isolate=True``), so a worker never inherits its
    Kubernetes credentials.  Either way the worker leads its own process group, dies with its parent,
    and is killed with SIGKILL on timeout.
    """

    def __init__(self, req: RunRequest, level: str, ctx: dict):
        from . import runner  # noqa: F401 - imported once, here, and inherited by the child

        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child
            code = 0
            try:
                os.setsid()
                _die_with_parent()
                os.close(r_out)
                os.close(r_err)
                os.dup2(w_err, 2)
                os.close(w_err)
                sys.stderr = os.fdopen(2, "w", buffering=1)
                _serve(req, level, ctx, os.fdopen(w_out, "w"))
            except BaseException:  # noqa: BLE001
                code = 1
            finally:
                os._exit(code)
        os.close(w_out)
        os.close(w_err)
        self.pid = pid
        self.stdout = os.fdopen(r_out)
        self.stderr = os.fdopen(r_err)
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


def _password(url: str) -> str | None:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password
    except Exception:  # noqa: BLE001
        return None


class WorkerError(DbrevError):
    """An error reported by the worker, re-raised in the parent with its original type's attributes."""


def _raise_reported(err: dict) -> None:
    from . import errors as E

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
                  isolate: bool = True) -> dict:
    """Run ``req`` in a worker process; kill it (and its backend) when ``timeout`` passes.

    ``isolate``: a fresh interpreter with a minimal environment that gets the request on stdin (the
    operator); otherwise a fork of this process (the CLI: faster, and it holds no one else's secrets).
    """
    context = log_context or L.current_context()
    # what a rollback run after a timeout or a dead worker is started with
    passthrough = {"on_event": on_event, "log_level": log_level, "log_context": log_context,
                   "stderr_sink": stderr_sink, "isolate": isolate}
    if isolate:
        env = {k: v for k, v in os.environ.items() if k in _ENV_KEEP}
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = os.pathsep.join([pkg_root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
        proc = subprocess.Popen([sys.executable, "-m", "dbrev.worker"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
                                text=True)
    else:
        proc = _ForkedWorker(req, log_level, context)
    events: list[dict] = []
    state: dict = {}

    def read_out():
        for line in proc.stdout:  # type: ignore[union-attr]
            line = line.strip()
            if not line:
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            events.append(ev)
            if ev.get("event") == "backend":
                state["backend_pid"] = ev.get("pid")
            if ev.get("event") == "plan":
                state["plan"] = ev["plan"]
            if on_event:
                on_event(ev)

    def read_err():
        for line in proc.stderr:  # type: ignore[union-attr]
            if stderr_sink:
                stderr_sink(line.rstrip("\n"))
            else:
                sys.stderr.write(line)
                sys.stderr.flush()

    t_out = threading.Thread(target=read_out, daemon=True)
    t_err = threading.Thread(target=read_err, daemon=True)
    t_out.start()
    t_err.start()
    t0 = time.monotonic()
    if isolate:
        try:
            proc.stdin.write(request_to_json(req, log_level, context))  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        t_out.join(2)
        return _after_timeout(req, state, timeout or 0, time.monotonic() - t0, _rollback, passthrough)
    t_out.join(5)
    t_err.join(5)
    for ev in reversed(events):
        if ev.get("event") == "result":
            return ev["result"]
        if ev.get("event") == "error":
            _raise_reported(ev["error"])
    code = proc.returncode
    why = f"signal {-code}" if code and code < 0 else f"exit code {code}"
    return _after_death(req, state, f"the worker process died ({why}) without a result", time.monotonic() - t0,
                        timeout, _rollback, passthrough)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _terminate_backend(db: DbOptions, pid: int | None) -> None:
    if not pid:
        return
    import sqlalchemy as sa

    from .db import connection

    try:
        with connection(DbOptions(**{**asdict(db), "connect_timeout": 10})) as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            conn.commit()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                alive = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE pid=:p"), {"p": pid}).scalar()
                conn.commit()
                if not alive:
                    break
                time.sleep(0.1)
    except Exception as e:  # noqa: BLE001
        L.logger.warning("Could not terminate the worker's database session",
                         extra={"error_type": type(e).__name__, "error_message": redact(str(e))})


def _after_timeout(req, state, timeout, elapsed, rollback: bool, passthrough: dict):
    L.logger.error("Worker timed out and was killed", extra={"timeout_s": timeout, "duration_ms": round(elapsed * 1000, 2),
                                                            "operation": "apply"})
    return _after_death(req, state, f"the run passed its {timeout:g}s timeout and was killed", elapsed, timeout,
                        rollback, passthrough, reason="TimedOut")


def _after_death(req: RunRequest, state: dict, message: str, elapsed: float, timeout, rollback: bool,
                 passthrough: dict, reason: str = "MigrationFailed") -> dict:
    """The worker is gone: stop its session, look where the database is, return it to the start if needed."""
    from .db import connection, read_heads

    _terminate_backend(req.db, state.get("backend_pid"))
    plan = state.get("plan")
    try:
        with connection(req.db) as conn:
            heads = read_heads(conn, req.db.version_table, req.db.version_table_schema)
    except DbrevError:
        heads = None
    result = {"result": RESULT_FAILED, "current_revisions": list(heads) if heads is not None else None,
              "duration_seconds": round(elapsed, 3),
              "error": {"reason": reason, "error_type": "WorkerTimeout" if reason == "TimedOut" else "WorkerDied",
                        "message": message}}
    if plan:
        result.update({"from_revisions": plan["from_revisions"], "to_revisions": plan["to_revisions"],
                       "direction": plan["direction"], "plan_hash": plan["hash"], "transaction": plan["transaction"],
                       "steps": []})
    if plan is None or heads is None:
        return result
    start = sorted(plan["from_revisions"])
    if sorted(heads) == start:
        # single transaction, or nothing committed yet: PostgreSQL rolled it back
        L.rollback_executed(plan["to_revisions"], start, True, method="transaction")
        result.update({"result": RESULT_ROLLED_BACK,
                       "rollback": {"triggered": True, "reason": "timeout" if reason == "TimedOut" else "worker_died",
                                    "method": "transaction", "success": True}})
        return result
    if not (rollback and req.policy.rollback_on_failure):
        return result
    L.rollback_triggered("timeout" if reason == "TimedOut" else "worker_died", heads, start)
    back = RunRequest(db=req.db, migrations=req.migrations, target=",".join(start) or "base",
                      policy=Policy(downgrade="Allow", data_loss="Allow", rollback_on_failure=False,
                                    verify=req.policy.verify),
                      actor=f"{req.actor} (rollback)", pythonpath=req.pythonpath)
    try:
        sub = run_in_worker(back, timeout=timeout, _rollback=False, **passthrough)
        ok = sub.get("result") in ("applied", "noop")
        result["rollback"] = {"triggered": True, "reason": reason, "method": "inverse_steps", "success": ok,
                              "steps": sub.get("steps", []), "integrity": sub.get("integrity")}
        result["current_revisions"] = sub.get("current_revisions")
        if ok:
            result["result"] = RESULT_ROLLED_BACK
    except DbrevError as e:
        result["rollback"] = {"triggered": True, "reason": reason, "method": "inverse_steps", "success": False,
                              "error": e.to_dict()}
    L.rollback_executed(heads, start, result["rollback"]["success"], method="inverse_steps")
    return result


if __name__ == "__main__":
    sys.exit(main())
