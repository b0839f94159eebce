"""What ``kdlab.curves`` costs on a large experiments tree: rows, seconds, megabytes.

Writes a synthetic tree in a temporary directory: the charlie grid (4 data sets x 6
methods x 4 alphas) with ``--seeds`` seeds, every run completed with ``--epochs`` epochs
of 8 per-epoch metrics (train_loss, train_acc, test_loss, test_acc, epoch_seconds, lr and
two loss terms), in the shape the training loop writes. The default (96 seeds, 150
epochs) is 9,984 runs and 12.0 million rows, the size of the tree issue 20 measured
(10,000 runs, 12.7 million rows: 52 s and 5.8 GB before the lean layout).

Each call is measured in a fresh interpreter: wall seconds, the frame's own size
(``memory_usage(deep=True)``) and the process's peak resident memory over what the
interpreter held before the call. Calls: the full tree, a selection of 10 runs, and one
metric (``metrics=["test_acc"]``) of every run.

    python benchmarks/bench_api.py [--seeds 96] [--epochs 150] [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHARLIE = Path(__file__).resolve().parent.parent / "studies" / "charlie.toml"
THIS_SRC = Path(__file__).resolve().parent.parent / "src"
METRICS = ("train_loss", "train_acc", "test_loss", "test_acc", "epoch_seconds", "lr",
           "train_ce", "train_kd")


def write_tree(root: Path, seeds: int, epochs: int) -> Path:
    """The study file of a synthetic tree under ``root`` (charlie's grid, ``seeds`` seeds)."""
    from kdlab.study.study_file import load_study

    text = CHARLIE.read_text()
    text = text.replace("seeds = [0, 1, 2]", f"seeds = {list(range(seeds))}")
    text = text.replace('experiments_dir = "experiments"',
                        f'experiments_dir = "{root / "experiments"}"')
    text = text.replace("epochs = 150", f"epochs = {epochs}")
    study_path = root / "charlie.toml"
    study_path.write_text(text)
    study = load_study(study_path)
    rng = random.Random(0)
    for spec in study.runs():
        directory = study.run_dir(spec)
        directory.mkdir(parents=True, exist_ok=True)
        config = study.train_config(spec).to_dict()
        metrics = {name: [round(rng.uniform(0, 100), 4) for _ in range(epochs)]
                   for name in METRICS}
        metrics["config"] = config
        status = {"status": "completed", "epoch": epochs, "epochs": epochs,
                  "max_acc": max(metrics["test_acc"]), "config": config,
                  "started_at": 1.7e9, "completed_at": 1.7e9 + 3600.0,
                  "duration_seconds": 3600.0, "run": spec.name, "made_by": "kdlab bench"}
        # synthetic input, not kdlab state: plain writes (20,000 fsyncs would take minutes)
        (directory / "metrics.json").write_text(json.dumps(metrics))
        (directory / "status.json").write_text(json.dumps(status))
    return study_path


def measure(study_path: str, case: str) -> dict:
    """One call of curves() in this interpreter: rows, seconds, frame MB, peak RSS MB."""
    import kdlab
    import kdlab.api  # noqa: F401  (pandas and the API loaded before the baseline)
    from kdlab.study.study_file import load_study

    study = load_study(study_path)
    names = [spec.name for spec in study.runs()]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if case == "full":
        frame = kdlab.curves(study)
    elif case == "runs":
        frame = kdlab.curves(study, runs=names[:: max(1, len(names) // 10)][:10])
    else:
        frame = kdlab.curves(study, metrics=["test_acc"])
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"case": case, "runs": len(names), "rows": len(frame), "seconds": seconds,
            "frame_mb": frame.memory_usage(deep=True).sum() / 2 ** 20,
            "peak_mb": (peak - before) / 2 ** 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=96, help="seeds per cell (default 96)")
    parser.add_argument("--epochs", type=int, default=150, help="epochs per run (default 150)")
    parser.add_argument("--quick", action="store_true",
                        help="a small tree (1 seed, 5 epochs: 104 runs) to check it works")
    parser.add_argument("--measure", nargs=2, metavar=("STUDY", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    seeds, epochs = (1, 5) if args.quick else (args.seeds, args.epochs)
    with tempfile.TemporaryDirectory(prefix="kdlab-bench-api-") as temp:
        start = time.perf_counter()
        study_path = write_tree(Path(temp), seeds, epochs)
        print(f"tree: {seeds} seeds x {epochs} epochs x {len(METRICS)} metrics, written in "
              f"{time.perf_counter() - start:.1f} s")
        print(f"{'curves() call':<24} {'runs':>6} {'rows':>12} {'seconds':>8} "
              f"{'frame MB':>9} {'peak MB':>8}")
        for case, label in (("full", "full tree"), ("runs", "runs= (10 runs)"),
                            ("metric", "metrics=['test_acc']")):
            result = subprocess.run([sys.executable, __file__, "--measure", str(study_path),
                                     case], capture_output=True, text=True, check=True)
            figures = json.loads(result.stdout)
            print(f"{label:<24} {figures['runs']:>6} {figures['rows']:>12,} "
                  f"{figures['seconds']:>8.2f} {figures['frame_mb']:>9.1f} "
                  f"{figures['peak_mb']:>8.0f}")


if __name__ == "__main__":
    sys.path.insert(0, str(THIS_SRC))
    main()
