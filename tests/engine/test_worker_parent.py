"""The worker's parent-death check (``worker.die_with_parent``), run for real.

In a container the operator is PID 1, so a worker's parent *is* PID 1. The check must tell
"my parent is PID 1" from "my parent died and I was reparented" (issue 10: every migration in a Pod
failed with "the worker process died (exit code 1) without a result").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

PROBE = "from dbrev.engine.worker import die_with_parent; die_with_parent(); print('alive', flush=True)"

needs_pidns = pytest.mark.skipif(
    not shutil.which("unshare") or os.geteuid() != 0, reason="needs root and unshare(1) for a PID namespace"
)


@needs_pidns
def test_worker_whose_parent_is_pid_1_keeps_running():
    # The parent is PID 1 of a new PID namespace, as an operator in a container is.
    parent = textwrap.dedent(f"""
        import os, subprocess, sys
        assert os.getpid() == 1, os.getpid()
        p = subprocess.run([sys.executable, "-c", {PROBE!r}], capture_output=True, text=True)
        print("child rc", p.returncode, p.stdout.strip(), flush=True)
    """)
    out = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", parent],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "child rc 0 alive", out.stdout + out.stderr


@needs_pidns
def test_worker_run_by_pid_1_operator_applies(tmp_path):
    # The whole worker path the operator takes (a fresh interpreter, request on stdin) under PID 1.
    # No database is needed to tell the two apart: a live worker reports its own error (it cannot
    # connect); a worker killed by the parent-death check reports nothing and exits 1 (WorkerDied).
    parent = textwrap.dedent("""
        import os
        from dbrev.core.options import DbOptions, Policy, RunRequest
        from dbrev.engine.worker import run_in_worker
        assert os.getpid() == 1
        req = RunRequest(db=DbOptions(url="postgresql+psycopg://nobody:secret@127.0.0.1:1/none",
                                      connect_timeout=1), policy=Policy(),
                         migrations=%r, target="head")
        events = []
        try:
            result = run_in_worker(req, timeout=60, on_event=events.append)
            print("error_type", result.error.error_type if result.error else None)
        except Exception as e:  # the worker's own report, raised again: it ran
            print("error_type", type(e).__name__)
    """ % str(tmp_path))
    out = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", parent],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    # before the fix: "error_type WorkerDied" (the worker exited at once, silently)
    assert "error_type" in out.stdout and "WorkerDied" not in out.stdout, out.stdout + out.stderr
    assert "secret" not in out.stdout + out.stderr


def test_worker_still_dies_with_its_parent(tmp_path):
    # The check's purpose: when the process that started the worker dies, the worker dies too.
    pidfile = tmp_path / "child.pid"
    parent = textwrap.dedent(f"""
        import subprocess, sys
        code = "import os, time; " + {PROBE!r} + "; open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
        subprocess.Popen([sys.executable, "-c", code], start_new_session=True, stdout=subprocess.DEVNULL)
        import time
        for _ in range(200):
            try:
                if open({str(pidfile)!r}).read():
                    break
            except OSError:
                pass
            time.sleep(0.05)
    """)
    subprocess.run([sys.executable, "-c", parent], check=True, timeout=60)
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        # a zombie waiting for its reaper counts as dead
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] == "Z":
                    return
        except OSError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    pytest.fail("the worker outlived its parent")
