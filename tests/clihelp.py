"""Run the real `dbrev` CLI as a subprocess and read its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

from dbhelp import json_lines


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self):
        return json.loads(self.stdout)

    @property
    def logs(self) -> list[dict]:
        return json_lines(self.stderr)


def dbrev(*args: str, url: str | None = None, env: dict | None = None, timeout: float = 300,
          json_out: bool = True) -> CliResult:
    e = dict(os.environ)
    e.pop("DBREV_DATABASE_URL", None)
    if url:
        e["DBREV_DATABASE_URL"] = url
    e.update(env or {})
    cmd = [sys.executable, "-m", "dbrev", *args]
    if json_out and "--json" not in args:
        cmd.append("--json")
    p = subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=timeout)
    return CliResult(p.returncode, p.stdout, p.stderr)


def popen(*args: str, url: str, env: dict | None = None) -> subprocess.Popen:
    e = dict(os.environ)
    e["DBREV_DATABASE_URL"] = url
    e.update(env or {})
    return subprocess.Popen([sys.executable, "-m", "dbrev", *args, "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=e)
