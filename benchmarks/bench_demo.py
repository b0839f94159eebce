"""Wall-clock time of ``kdlab demo`` from an empty work directory, on at most two CPU cores.

The goal (issue 6): the whole demo — train every run of studies/demo.toml through the
local queue, extract, analyze, plot — in under 5 minutes on 2 CPU cores. The process and
every training job it starts are pinned to two cores (``sched_setaffinity`` is inherited),
so a bigger machine measures the same thing. The load average is printed alongside:
on a shared machine, other work slows the demo down.

    python benchmarks/bench_demo.py            # the demo as shipped
    python benchmarks/bench_demo.py --epochs 1 # the CI variant
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))[:args.cores]
        os.sched_setaffinity(0, cores)
        print(f"pinned to cores {cores}")
    print(f"load average before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="kdlab-demo-bench-") as workdir:
        command = [sys.executable, "-m", "kdlab", "demo", "--workdir", workdir]
        if args.epochs is not None:
            command += ["--epochs", str(args.epochs)]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
    lines = result.stdout.strip().splitlines()
    for line in lines:
        if "training finished" in line or line.startswith(("step ", "kdlab demo")):
            print(line)
    print(f"load average after: {os.getloadavg()}")
    print(f"kdlab demo{' --epochs ' + str(args.epochs) if args.epochs else ''}: "
          f"{seconds:.0f} s wall ({seconds / 60:.1f} min), exit status {result.returncode}"
          f"{'' if seconds < 300 else '  (goal: under 300 s)'}")
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
