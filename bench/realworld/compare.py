#!/usr/bin/env python3
"""dbrev against plain Alembic on the Alembic histories real projects ship in their PyPI wheels.

For one project (``compare.py optuna``; ``--list`` shows them) this

1. makes a venv of its own under ``~/.cache/dbrev/realworld/venv-<project>`` with the project's
   wheel, only what its migration scripts and env.py import, and dbrev from this checkout
   (editable); the project's packages never enter dbrev's own ``.venv``;
2. starts a throwaway PostgreSQL server (``dbrev.pg.ephemeral``, loopback only);
3. runs the history up to head, down to base and up again, each on a fresh database, three ways:

   * ``alembic``: plain Alembic — ``alembic.command.upgrade/downgrade`` with the project's own
     ``alembic.ini`` (when it ships one), its ``env.py`` and its driver (the URL the project
     documents: ``postgresql://`` is psycopg2);
   * ``dbrev env.py``: ``dbrev apply --migrations <script_location>`` (with ``--env-py`` where
     this dbrev has that flag), the same URL;
   * ``dbrev built-in``: ``dbrev apply --migrations <versions folder>`` (a bare versions folder:
     dbrev's built-in environment);

4. after every phase: the revision and ``pg_dump --schema-only`` (dbrev's schemas left out)
   compared with plain Alembic's, and the wall time of each command;
5. prints a Markdown table and writes ``~/.cache/dbrev/realworld/results/<project>.json``.

A phase that fails under plain Alembic too is the project's own failure; it is reported as such.
dbrev runs with ``--allow-data-loss`` (and ``--allow-downgrade`` down): the question here is
fidelity, not policy; a run under the default policy is recorded separately (``policy``).

Needs network access to the package index the first time (``pip download`` / ``pip install``).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "operator"))

from dbrev.pg.ephemeral import PostgresServer  # noqa: E402

CACHE = Path(os.environ.get("DBREV_REALWORLD_CACHE", Path.home() / ".cache" / "dbrev" / "realworld"))


@dataclass
class Project:
    name: str
    install: list[list[str]]  # pip install argument lists, in order
    locate: str  # python: print the script_location (the folder holding env.py)
    versions: str = "versions"  # the versions folder, relative to the script location
    ini: str | None = "alembic.ini"  # the project's alembic.ini, relative to the script location
    scheme: str = "postgresql"  # the URL scheme the project documents (its driver)
    notes: str = ""
    extra_env: dict = field(default_factory=dict)
    # python run in the project's venv with the URL as argv[1] before the first upgrade: what the project's
    # own set-up does before it runs its history (mlflow creates its initial tables with create_all)
    prepare: str | None = None
    # the project's own migration command instead of alembic.command (argv; {venv} and {target} filled in),
    # and the environment variable it takes the database URL from
    reference: dict | None = None
    url_env: str | None = None
    modes: tuple[str, ...] = ("alembic", "dbrev env.py", "dbrev built-in")


DBREV_TIMEOUT = 90  # seconds; every run here takes well under 30 s when it works

PROJECTS = {
    "optuna": Project(
        "optuna", [["optuna==5.0.0", "psycopg2-binary"]],
        "import pathlib, optuna.storages._rdb as m; print(pathlib.Path(m.__file__).parent / 'alembic')",
        ini="../alembic.ini",
        notes="optuna's RDBStorage: Config(alembic.ini) + sqlalchemy.url, command.upgrade"),
    "mlflow": Project(
        "mlflow", [["mlflow-skinny==3.17.2", "psycopg2-binary"], ["--no-deps", "mlflow==3.17.2"]],
        "import pathlib, mlflow.store as m; print(pathlib.Path(m.__file__).parent / 'db_migrations')",
        notes="mlflow's _initialize_tables: create_all of its initial models, then command.upgrade; env.py "
              "opens a connection from config.attributes['connection'].engine",
        prepare="import sys, sqlalchemy as sa; from mlflow.store.tracking.dbmodels.initial_models import Base; "
                "e = sa.create_engine(sys.argv[1]); Base.metadata.create_all(e); e.dispose()"),
    "ckan": Project(
        "ckan", [["ckan[requirements]==2.12.0"]],
        "import pathlib, ckan.migration as m; print(pathlib.Path(m.__file__).parent)",
        notes="ckan db upgrade: Config(ckan/migration/alembic.ini) + sqlalchemy.url, command.upgrade"),
    "prefect": Project(
        "prefect", [["prefect==3.9.1"]],
        "import pathlib, prefect.server.database as d; print(pathlib.Path(d.__file__).parent / '_migrations')",
        versions="versions/postgresql", ini="../alembic.ini", scheme="postgresql+asyncpg",
        notes="`prefect server database upgrade -y` / `downgrade -y -r base` (its env.py: settings' URL, "
              "asyncpg, version_locations set in env.py, so dbrev can only take versions/postgresql with its "
              "built-in environment)",
        reference={"upgrade": ["{venv}/bin/prefect", "server", "database", "upgrade", "-y"],
                   "downgrade": ["{venv}/bin/prefect", "server", "database", "downgrade", "-y", "-r", "{target}"]},
        url_env="PREFECT_API_DATABASE_CONNECTION_URL", modes=("alembic", "dbrev built-in")),
}

_ALEMBIC = """
import sys
from alembic import command
from alembic.config import Config

loc, ini, url, verb, target = sys.argv[1:6]
cfg = Config(ini) if ini else Config()
cfg.set_main_option("script_location", loc)
cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
getattr(command, verb)(cfg, target)
"""


def say(msg: str = "") -> None:
    print(msg, flush=True)


def venv_of(p: Project) -> Path:
    return CACHE / f"venv-{p.name}"


def setup(p: Project) -> Path:
    v = venv_of(p)
    marker = v / ".dbrev-realworld-installed"
    if marker.exists():
        # the cached venv may point at another checkout's dbrev: always measure this one
        subprocess.run([str(v / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps", "-e", str(ROOT)],
                       check=True)
        return v
    if not (v / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(v)], check=True)
    pip = [str(v / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    for args in p.install:
        subprocess.run(pip + args, check=True)
    subprocess.run(pip + ["-e", str(ROOT)], check=True)
    marker.write_text(json.dumps(p.install))
    return v


def locate(p: Project, v: Path) -> tuple[Path, Path, Path | None]:
    out = subprocess.run([str(v / "bin" / "python"), "-c", p.locate], capture_output=True, text=True, check=True)
    loc = Path(out.stdout.strip().splitlines()[-1])
    ini = (loc / p.ini).resolve() if p.ini and (loc / p.ini).exists() else None
    return loc, loc / p.versions, ini


# ---------------------------------------------------------------------------------------------

def pg_dump(server: PostgresServer, db: str) -> list[str]:
    from dbrev.pg.ephemeral import find_bindir

    exe = Path("/usr/lib/postgresql/15/bin/pg_dump")
    exe = exe if exe.exists() else find_bindir() / "pg_dump"
    out = subprocess.run([str(exe), "--schema-only", "--no-owner", "--no-privileges", "-N", "dbrev", "-N", "dbrev_*",
                          "-h", "127.0.0.1", "-p", str(server.port), "-U", server.user, db],
                         capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith(("--", "SET ", "\\restrict",
                                                                                "\\unrestrict"))
             and not ln.startswith("SELECT pg_catalog.set_config('search_path'")]
    return [s.strip() for s in "\n".join(lines).split(";\n") if s.strip()]


def heads_of(server: PostgresServer, db: str) -> list[str]:
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port={server.port} user={server.user} dbname={db}", autocommit=True) as c:
        if c.execute("SELECT to_regclass('public.alembic_version')").fetchone()[0] is None:
            return []
        return sorted(r[0] for r in c.execute("SELECT version_num FROM alembic_version"))


def _tail(text: str, n: int = 3) -> list[str]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            out.append(line[:400])
            continue
        if isinstance(rec, dict) and rec.get("level") in ("ERROR",):
            out.append((rec.get("message", "") + " " + (rec.get("error_message") or "").splitlines()[0]
                        if rec.get("error_message") else rec.get("message", ""))[:400])
    return out[-n:]


_EXC_RX = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Warning)\w*): (.*)$")


def _exception_line(stderr: str) -> str:
    """The exception a traceback ends with ('sqlalchemy.exc.ProgrammingError: ...'), else the last line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    hits = [ln for ln in lines if _EXC_RX.match(ln)]
    return (hits[-1] if hits else (lines[-1] if lines else ""))[:500]


def _doc(stdout: str) -> dict:
    try:
        return json.loads(stdout)
    except ValueError:
        i = stdout.rfind("\n{")
        try:
            return {**json.loads(stdout[i + 1:]), "stdout_not_only_json": True} if i >= 0 else {}
        except ValueError:
            return {"unparsed_stdout": stdout[-600:]}


class Modes:
    def __init__(self, p: Project, v: Path, loc: Path, versions: Path, ini: Path | None, env_flag: bool):
        self.p, self.v, self.loc, self.versions, self.ini, self.env_flag = p, v, loc, versions, ini, env_flag
        self.env = {k: val for k, val in os.environ.items() if k not in ("DBREV_DATABASE_URL", "PYTHONPATH")}
        self.env.update(p.extra_env)

    def alembic(self, url: str, target: str, verb: str = "upgrade") -> dict:
        if self.p.reference:
            cmd = [a.format(venv=self.v, target=target) for a in self.p.reference[verb]]
            return self._run(cmd, kind="alembic", env={self.p.url_env: url, "PREFECT_HOME": str(CACHE / "home")})
        cmd = [str(self.v / "bin" / "python"), "-c", _ALEMBIC, str(self.loc), str(self.ini or ""), url, verb, target]
        return self._run(cmd, kind="alembic")

    def dbrev(self, url: str, target: str, builtin: bool, policy: bool = False, down: bool = False) -> dict:
        folder = self.versions if builtin else self.loc
        flags = [] if policy else (["--allow-downgrade", "--allow-data-loss"] if down else ["--allow-data-loss"])
        if not builtin and self.env_flag:
            flags.append("--env-py")
        # a run that waits on a lock held by dbrev's own session never ends by itself: bound it
        cmd = [str(self.v / "bin" / "dbrev"), "apply", "--migrations", str(folder), "-r", target, *flags,
               "--timeout", str(DBREV_TIMEOUT), "--database-url", url, "--json"]
        return self._run(cmd, kind="dbrev")

    def _run(self, cmd: list[str], kind: str, env: dict | None = None) -> dict:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**self.env, **(env or {})}, timeout=1800)
        dt = round(time.perf_counter() - t0, 2)
        rec = {"exit": proc.returncode, "seconds": dt}
        if kind == "dbrev":
            d = _doc(proc.stdout)
            rec["result"] = d.get("result")
            err = d.get("error") or {}
            rec["error"] = (f"{err.get('reason')}: {err.get('message')}"[:500]) if err else None
            if d.get("stdout_not_only_json") or d.get("unparsed_stdout"):
                rec["stdout_not_only_json"] = True
            rec["ok"] = proc.returncode == 0 and d.get("result") in ("applied", "noop")
        else:
            rec["ok"] = proc.returncode == 0
            rec["error"] = None if rec["ok"] else _exception_line(proc.stderr)
        if not rec["ok"]:
            rec["stderr_tail"] = _tail(proc.stderr, 4)
        return rec


_REVS = """
import sys
from alembic.config import Config
from alembic.script import ScriptDirectory

loc, ini = sys.argv[1:3]
cfg = Config(ini) if ini else Config()
cfg.set_main_option("script_location", loc)
sd = ScriptDirectory.from_config(cfg)
revs = list(sd.walk_revisions())
linear = all(len(r._all_down_revisions) <= 1 for r in revs) and len(sd.get_heads()) == 1
print(("linear " if linear else "branched ") + " ".join(r.revision for r in revs))
"""


def revisions(modes: "Modes") -> tuple[bool, list[str]]:
    out = subprocess.run([str(modes.v / "bin" / "python"), "-c", _REVS, str(modes.loc), str(modes.ini or "")],
                         capture_output=True, text=True, check=True, env=modes.env).stdout.split()
    return out[0] == "linear", out[1:]  # newest first


def lowest_reachable(modes: "Modes", url: str, newest_first: list[str]) -> tuple[str, int]:
    """Under plain Alembic, from head: the lowest revision a downgrade reaches.  Binary search over a linear
    history, going down only: a failed try is one transaction, so it leaves the database where it was, and
    a downgrade from a revision reached before runs the same steps as one from head would below it."""
    lo, hi = 0, len(newest_first)  # the database is at newest_first[lo]; a downgrade to base (len) fails
    tries = 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        tries += 1
        if modes.alembic(url, newest_first[mid], verb="downgrade")["ok"]:
            lo = mid
        else:
            hi = mid
    modes.alembic(url, "heads")  # back to head for the timed phase (a project whose re-upgrade fails stays)
    return newest_first[lo], tries


def run_mode(server: PostgresServer, modes: Modes, mode: str, tag: str, plan: list[tuple[str, str]]) -> list[dict]:
    db = f"rw_{modes.p.name}_{tag}"
    server.create_database(db)
    url = f"{modes.p.scheme}://{server.user}@127.0.0.1:{server.port}/{db}"
    out = []
    if modes.p.prepare:
        subprocess.run([str(modes.v / "bin" / "python"), "-c", modes.p.prepare,
                        f"postgresql://{server.user}@127.0.0.1:{server.port}/{db}"], check=True, env=modes.env)
    i = 0
    while i < len(plan):  # the alembic mode may add a phase while it runs
        phase, target = plan[i]
        i += 1
        if mode == "alembic":
            rec = modes.alembic(url, target, verb="downgrade" if phase.startswith("down") else "upgrade")
        else:
            rec = modes.dbrev(url, target, builtin=(mode == "dbrev built-in"), down=phase.startswith("down"))
        rec.update(phase=phase, target=target, heads=heads_of(server, db), schema=pg_dump(server, db))
        say(f"   {mode:15s} {phase:14s} {'ok  ' if rec['ok'] else 'FAIL'} {rec['seconds']:7.2f}s  heads "
            f"{','.join(rec['heads']) or '(base)'}" + (f"  {rec['error']}" if rec.get("error") else ""))
        out.append(rec)
        if mode == "alembic" and phase == "down to base" and not rec["ok"] and out[0]["ok"]:
            # the project's own downgrades stop somewhere: find where, and compare down to there as well
            linear, newest = revisions(modes)
            if linear:
                low, tries = lowest_reachable(modes, url, newest)
                say(f"   {mode:15s} base fails: the lowest revision Alembic reaches is {low} "
                    f"({len(newest) - newest.index(low)}/{len(newest)}), {tries} tries")
                plan.insert(plan.index((phase, target)) + 1, ("down as far as Alembic", low))
    return out


def compare(project: str, want_modes: list[str]) -> dict:
    p = PROJECTS[project]
    say(f"== {project}: setting up {venv_of(p)}")
    v = setup(p)
    loc, versions, ini = locate(p, v)
    n_scripts = len([f for f in versions.glob("*.py") if not f.name.startswith("__")])
    help_text = subprocess.run([str(v / "bin" / "dbrev"), "apply", "--help"], capture_output=True, text=True).stdout
    env_flag = "--env-py" in help_text
    say(f"   script_location {loc} ({n_scripts} scripts in {versions.name}/), ini {ini}, dbrev --env-py flag: "
        f"{env_flag}")
    modes = Modes(p, v, loc, versions, ini, env_flag)
    server = PostgresServer()
    server.start()
    report = {"project": project, "install": p.install, "scripts": n_scripts, "notes": p.notes, "modes": {}}
    try:
        plan = [("up", "heads"), ("down to base", "base"), ("up again", "heads")]
        for i, mode in enumerate(m for m in want_modes if m in p.modes):
            report["modes"][mode] = run_mode(server, modes, mode, str(i), plan)
        # the default policy on an empty database: does a fresh install run without flags?
        db = f"rw_{project}_policy"
        server.create_database(db)
        url = f"{p.scheme}://{server.user}@127.0.0.1:{server.port}/{db}"
        if p.prepare:
            subprocess.run([str(v / "bin" / "python"), "-c", p.prepare,
                            f"postgresql://{server.user}@127.0.0.1:{server.port}/{db}"], check=True, env=modes.env)
        pol = modes.dbrev(url, "heads", builtin="dbrev env.py" not in p.modes, policy=True)
        report["policy"] = pol
        say(f"   dbrev apply -r heads under the default policy (fresh database): exit {pol['exit']} "
            f"{pol.get('result')} {pol.get('error') or ''}")
    finally:
        server.cleanup()
    ref = report["modes"].get("alembic")
    for mode, recs in report["modes"].items():
        if mode == "alembic" or not ref:
            continue
        by_phase = {r["phase"]: r for r in ref}
        for rec in recs:
            base = by_phase.get(rec["phase"])
            if base is None:
                continue
            rec["same_heads"] = rec["heads"] == base["heads"]
            diff = list(difflib.unified_diff(base["schema"], rec["schema"], "alembic", mode, lineterm="", n=0))
            rec["same_schema"] = not diff
            rec["schema_diff"] = diff[2:40]
    for recs in report["modes"].values():
        for rec in recs:
            rec["schema_statements"] = len(rec["schema"])
            rec["schema_sha"] = hashlib.sha256("\n".join(rec.pop("schema")).encode()).hexdigest()[:12]
    out = CACHE / "results" / f"{project}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    say(f"   wrote {out}")
    return report


def _why(rec: dict) -> str:
    """The last line of an error, for 'fails the same way' (dbrev and Alembic word the prefix differently)."""
    err = (rec.get("error") or "").split(": ", 1)[-1]
    err = re.sub(r"^\((?:psycopg2?|asyncpg)[\w.]*\) ", "", err)  # the driver's exception class
    return err.strip()[:80]


def cell(rec: dict, ref: dict | None) -> str:
    if not rec["ok"]:
        own = ""
        if ref is not None and not ref["ok"]:
            same_way = _why(rec) == _why(ref)
            own = " (fails under Alembic too)" if same_way else " (Alembic fails too, differently)"
        return f"**fail**{own} {rec['seconds']:.1f}s"
    if rec.get("result") == "noop":
        return f"nothing to do {rec['seconds']:.1f}s"
    if ref is None:
        return f"ok {rec['seconds']:.1f}s"
    if not ref["ok"]:
        return f"ok where Alembic fails {rec['seconds']:.1f}s"
    same = rec.get("same_heads") and rec.get("same_schema")
    what = "same" if same else ("**schema differs**" if rec.get("same_heads") else "**other revision**")
    return f"{what} {rec['seconds']:.1f}s"


COLUMNS = ("up", "down to base", "down as far as Alembic", "up again")


def table(reports: list[dict]) -> str:
    rows = ["| project (scripts) | mode | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for rep in reports:
        ref = {r["phase"]: r for r in rep["modes"].get("alembic", [])}
        for mode, recs in rep["modes"].items():
            by = {r["phase"]: r for r in recs}
            cells = []
            for col in COLUMNS:
                rec = by.get(col)
                if rec is None:
                    cells.append("—")
                elif mode == "alembic":
                    cells.append((f"ok {rec['seconds']:.1f}s" if rec["ok"] else f"**fail** {rec['seconds']:.1f}s")
                                 + f" ({rec['schema_statements']} stmts)")
                else:
                    c = cell(rec, ref.get(col) if ref else None)
                    # after this mode's own first upgrade failed, its later phases start from another place
                    cells.append(c + " †" if col != "up" and not recs[0]["ok"] else c)
            rows.append(f"| {rep['project']} ({rep['scripts']}) | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("projects", nargs="*", help="which projects (default: all); --list shows them")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--modes", default="alembic,dbrev env.py,dbrev built-in")
    ap.add_argument("--table-only", action="store_true", help="print the table from the stored results")
    args = ap.parse_args()
    if args.list:
        for p in PROJECTS.values():
            say(f"{p.name:10s} {' '.join(' '.join(a) for a in p.install):60s} {p.notes}")
        return 0
    names = args.projects or list(PROJECTS)
    unknown = [n for n in names if n not in PROJECTS]
    if unknown:
        ap.error(f"unknown project(s) {', '.join(unknown)}; known: {', '.join(PROJECTS)}")
    reports = []
    for n in names:
        if args.table_only:
            reports.append(json.loads((CACHE / "results" / f"{n}.json").read_text()))
        else:
            reports.append(compare(n, args.modes.split(",")))
    say()
    say(table(reports))
    for rep in reports:
        for mode, recs in rep["modes"].items():
            for rec in recs:
                if rec.get("error") or rec.get("schema_diff"):
                    say(f"\n- {rep['project']} / {mode} / {rec['phase']}: {rec.get('error') or ''}")
                    for ln in (rec.get("schema_diff", []) if rec["ok"] else [])[:12]:
                        say(f"    {' '.join(ln.split())[:200]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
