#!/usr/bin/env python3
"""Run every ``bench/bench_*.py``, one after the other, each in its own process.

``make bench`` runs this.  Each benchmark starts and stops its own PostgreSQL
(and whatever else it needs) and prints its figures as ratios against baselines
measured in the same run; this runner only streams their output, times them and
prints a summary.  Benchmarks run one at a time on purpose: they measure wall
time, and the machine has two cores.

Usage: ``run_all.py [NAME ...] [-- ARGS...]``: only the benchmarks whose file name
contains one of the NAMEs (``engine``, ``operator``...); ARGS after ``--`` are
passed to each of them.  Exit status: 0 when every benchmark exited 0, else 1.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    names = [a for a in argv if not a.startswith("-")]
    scripts = sorted(HERE.glob("bench_*.py"))
    if names:
        scripts = [s for s in scripts if any(n in s.stem for n in names)]
    if not scripts:
        print(f"no benchmark matches {names} in {HERE}", flush=True)
        return 1
    results = []
    for script in scripts:
        print(f"\n##### {script.name} #####", flush=True)
        t0 = time.perf_counter()
        try:
            # stdout/stderr are inherited: the benchmark's output appears as it is printed
            code = subprocess.call([sys.executable, str(script), *extra], cwd=HERE.parent)
        except KeyboardInterrupt:
            print(f"\n{script.name}: interrupted", flush=True)
            return 130
        results.append((script.name, code, time.perf_counter() - t0))
    print("\n##### summary #####", flush=True)
    for name, code, dt in results:
        print(f"  {name:<28} {'ok' if code == 0 else f'FAILED (exit {code})':<18} {dt:7.1f}s", flush=True)
    return 0 if all(code == 0 for _n, code, _t in results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
