"""Wall-clock time of ``kdlab demo`` from an empty work directory on two CPU cores: packed
(as shipped: the KD runs in packs, issue 14) against unpacked (``--pack-size 1``: every
run its own job), side by side in one run, with the accuracies each run reached.

Goals: the whole demo in under 5 minutes on 2 CPU cores (issue 6); packed at most 0.75x
unpacked, with the same accuracies (issue 14). The process and every training job it
starts are pinned to two cores (``sched_setaffinity`` is inherited), so a bigger machine
measures the same thing. The variants alternate (packed first in odd rounds, unpacked
first in even ones) so that a change in machine load hits both; the load average is
printed alongside.

    python benchmarks/bench_demo.py               # packed vs unpacked, one round
    python benchmarks/bench_demo.py --rounds 2    # two rounds, medians
    python benchmarks/bench_demo.py --epochs 1    # the CI variant
    python benchmarks/bench_demo.py --only packed # the demo as shipped, alone
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = {"packed": [], "unpacked": ["--pack-size", "1"]}


def run_demo(variant: str, epochs: int | None):
    """(seconds, exit status, {run: (max_acc, final_acc)}, output lines) of one demo."""
    import kdlab
    from kdlab.ops.demo import prepare_workdir

    with tempfile.TemporaryDirectory(prefix=f"kdlab-demo-bench-{variant}-") as workdir:
        command = [sys.executable, "-m", "kdlab", "demo", "--workdir", workdir,
                   *VARIANTS[variant]]
        if epochs is not None:
            command += ["--epochs", str(epochs)]
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        accuracies = {}
        if result.returncode == 0:
            runs = kdlab.runs(prepare_workdir(workdir, epochs))
            for row in runs.itertuples():
                name = row.method + ("" if row.alpha != row.alpha else f" a{row.alpha:g}")
                accuracies[name] = (row.max_acc, row.final_acc)
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
    return seconds, result.returncode, accuracies, result.stdout.strip().splitlines()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--only", choices=sorted(VARIANTS), default=None)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        cores = sorted(os.sched_getaffinity(0))[:args.cores]
        os.sched_setaffinity(0, cores)
        print(f"pinned to cores {cores}")
    variants = [args.only] if args.only else list(VARIANTS)
    seconds = {variant: [] for variant in variants}
    accuracies = {}
    failed = 0
    for round_index in range(args.rounds):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for variant in order:
            load = os.getloadavg()[0]
            taken, status, accuracy, lines = run_demo(variant, args.epochs)
            failed += status != 0
            seconds[variant].append(taken)
            accuracies.setdefault(variant, accuracy)
            steps = [line for line in lines if "training finished" in line
                     or line.startswith(("kdlab demo", "step "))]
            print(f"\n{variant}, round {round_index + 1}: {taken:.0f} s wall "
                  f"({taken / 60:.1f} min), exit status {status}, load before {load:.1f}")
            for line in steps:
                print(f"  {line}")
    print(f"\nload average after: {os.getloadavg()}")
    median = {variant: statistics.median(values) for variant, values in seconds.items()}
    for variant in variants:
        print(f"kdlab demo {variant}{' --epochs ' + str(args.epochs) if args.epochs else ''}: "
              f"{median[variant]:.0f} s wall, median of {len(seconds[variant])} "
              f"({median[variant] / 60:.1f} min; goal: under 300 s)")
    if len(variants) == 2:
        print(f"packed / unpacked: {median['packed'] / median['unpacked']:.2f} (goal <= 0.75)")
        packed, unpacked = accuracies.get("packed", {}), accuracies.get("unpacked", {})
        print(f"\n{'run':<24} {'max acc packed':>15} {'unpacked':>9} {'final packed':>13} "
              f"{'unpacked':>9}")
        for name in sorted(set(packed) | set(unpacked)):
            p, u = packed.get(name, (None, None)), unpacked.get(name, (None, None))
            cells = [f"{value:.2f}" if value is not None else "-"
                     for value in (p[0], u[0], p[1], u[1])]
            print(f"{name:<24} {cells[0]:>15} {cells[1]:>9} {cells[2]:>13} {cells[3]:>9}")
        same = bool(packed) and packed == unpacked
        print(f"same accuracies packed and unpacked: {'yes' if same else 'NO'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
