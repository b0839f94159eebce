"""How long `kdlab queue` takes to plan the charlie grid (goal: well under 1 s).

Builds a populated experiments tree of fake state files in a temporary directory (a mix of
completed, in-progress, queued, failed, unreadable and missing runs, in the shape the
training loop writes), then times, side by side:

- reading and classifying every run's state files (``study_run_states``),
- the whole plan (``plan_queue``: states + liveness + decisions) with a fake scheduler
  whose liveness answers cost nothing, with one that takes 20 ms per call (about one
  ``squeue``/``qstat`` round trip) asked once for all jobs, as the Slurm and PBS backends
  do, and with one asked once per job (PBS's fallback where ``-F json`` fails),
- the status report (``status_report``),
- and, what cron sees, the wall time of ``kdlab queue --dry-run`` and ``kdlab status`` on
  that tree from process start to exit (a fresh interpreter each time; PBS is not installed
  here, so liveness is 'unknown' after one PATH look-up), for this checkout and, with
  ``--before-src``, for another checkout's ``src`` (e.g. the code before the redesign).

    python benchmarks/bench_plan.py [--repeats 20] [--before-src OTHER_CHECKOUT/src]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kdlab.run import state_files
from kdlab.study.queue import plan_queue
from kdlab.schedulers.base import Scheduler
from kdlab.study.status import status_report
from kdlab.study.progress import check_liveness, study_run_states
from kdlab.study.study_file import load_study

CHARLIE = Path(__file__).resolve().parent.parent / "studies" / "charlie.toml"
THIS_SRC = Path(__file__).resolve().parent.parent / "src"


class FakeScheduler(Scheduler):
    """Liveness from a set of live job ids; ``delay`` seconds per scheduler call; ``batched``:
    one call for all jobs (squeue -j A,B,..; qstat -f -F json A B ..) or one per job."""

    name = "pbs"

    def __init__(self, live: set[str], delay: float = 0.0, batched: bool = True) -> None:
        self.live, self.delay, self.batched, self.calls = live, delay, batched, 0

    def available(self):
        return None

    def submit(self, *args, **kwargs):
        raise AssertionError("the benchmark never submits")

    def alive_jobs(self, job_ids):
        if not self.batched:
            return super().alive_jobs(job_ids)
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return {job_id: job_id in self.live for job_id in job_ids}

    def is_alive(self, job_id: str) -> bool:
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        return job_id in self.live

    def cancel(self, job_id: str) -> None:
        raise AssertionError("the benchmark never cancels")


def populate(study, seed: int = 0) -> set[str]:
    """Write fake status.json/metrics.json files for a mix of states; return live job ids."""
    rng = random.Random(seed)
    live: set[str] = set()
    epochs = study.training["epochs"]
    for index, spec in enumerate(study.runs()):

        directory = study.run_dir(spec)
        draw = rng.random()
        job_id = f"{4100000 + index}.sched01"
        config = study.train_config(spec).to_dict()
        if index in (5, 150, 200):  # a few torn files, as the earlier code left them
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "status.json").write_text('{"status": "compl')
            continue
        if (spec.is_pure and index != 11) or (not spec.is_pure and draw < 0.35):
            status = {"status": "completed", "epoch": epochs, "epochs": epochs,
                      "max_acc": 60 + 30 * rng.random(), "config": config, "job_id": job_id,
                      "scheduler": "pbs"}
        elif spec.is_pure or draw < 0.45:  # run 11 (a teacher) in progress: its KD runs wait
            status = {"status": "in_progress", "epoch": rng.randrange(epochs), "epochs": epochs,
                      "max_acc": 50.0, "config": config, "job_id": job_id, "scheduler": "pbs"}
            if rng.random() < 0.6:
                live.add(job_id)
        elif draw < 0.5:
            status = {"status": "queued", "job_id": job_id, "scheduler": "pbs"}
            live.add(job_id)
        elif draw < 0.55:
            status = {"status": "failed", "epoch": 3, "epochs": epochs, "reason": "loss is NaN",
                      "config": config, "job_id": job_id, "scheduler": "pbs"}
        else:
            continue  # not started
        state_files.write_status(directory, status)
        state_files.atomic_write_json(directory / "metrics.json",
                                   {"train_loss": [1.0] * status.get("epoch", 0)})
    return live


def timed(function, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times)


def command_seconds(src: Path, argv: list[str], cwd: Path, repeats: int) -> tuple[float, float]:
    """Median and worst wall time of ``python -m kdlab ARGV`` with ``src`` first on the path,
    from before the process starts to its exit."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "kdlab", *argv], cwd=cwd, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times), max(times)


def cron_path(study_text: str, temp: Path, sources: list[tuple[str, Path]],
              repeats: int) -> None:
    study_path = temp / "charlie.toml"
    study_path.write_text(study_text)
    print(f"{'command, from process start':<44} {'median s':>9} {'max s':>9}")
    for label, src in sources:
        for argv in (["queue", "--dry-run", str(study_path)], ["status", str(study_path)]):
            median, worst = command_seconds(src, argv, temp, repeats)
            name = " ".join(argv[:-1])
            print(f"{label + ': kdlab ' + name:<44} {median:9.3f} {worst:9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--process-repeats", type=int, default=5,
                        help="runs of each whole command (fresh interpreters)")
    parser.add_argument("--before-src", type=Path, default=None,
                        help="another checkout's src directory to time the same commands with")
    args = parser.parse_args()
    start = time.perf_counter()
    study = load_study(CHARLIE)
    load_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as temp:
        study.experiments_dir = Path(temp) / "experiments"
        live = populate(study)
        states = study_run_states(study)
        counts = {}
        for state in states:
            counts[state.state] = counts.get(state.state, 0) + 1
        print(f"charlie grid: {len(states)} runs; fake tree: "
              + ", ".join(f"{n} {name}" for name, n in sorted(counts.items())))
        print(f"load_study (once; imports the method registry): {load_seconds * 1000:8.1f} ms")

        free = FakeScheduler(live)
        slow_batched = FakeScheduler(live, delay=0.02)
        slow_per_job = FakeScheduler(live, delay=0.02, batched=False)

        def plan_with(scheduler):
            def plan():
                run_states = study_run_states(study)
                liveness = check_liveness(run_states, "pbs", scheduler_factory=lambda name: scheduler)
                return plan_queue(study, run_states, liveness=liveness)
            return plan

        decisions = plan_with(free)()
        actions = {}
        for decision in decisions:
            actions[decision.action] = actions.get(decision.action, 0) + 1
        print("decisions: " + ", ".join(f"{n} {name}" for name, n in sorted(actions.items())))
        rows = [
            ("read + classify state files", lambda: study_run_states(study), args.repeats),
            ("plan, liveness free", plan_with(free), args.repeats),
            ("plan, one 20 ms scheduler call", plan_with(slow_batched), args.repeats),
            ("plan, 20 ms call per live job", plan_with(slow_per_job), max(args.repeats // 4, 3)),
            ("status report, liveness free",
             lambda: status_report(study, liveness=check_liveness(
                 study_run_states(study), "pbs", scheduler_factory=lambda name: free)),
             args.repeats),
        ]
        print(f"{'step':<34} {'median ms':>10} {'max ms':>10}")
        for label, function, repeats in rows:
            median, worst = timed(function, repeats)
            print(f"{label:<34} {median * 1000:10.1f} {worst * 1000:10.1f}")
        live_checks = sum(1 for s in states if s.state in ("running", "queued"))
        print(f"(jobs asked about per plan: {live_checks}; Slurm and PBS ask once for all of "
              "them, PBS falls back to one qstat per job only where its JSON output fails)")
        sources = ([("before", args.before_src)] if args.before_src else []) + [
            ("after", THIS_SRC)]
        text = CHARLIE.read_text().replace('experiments_dir = "experiments"',
                                           f'experiments_dir = "{study.experiments_dir}"')
        cron_path(text, Path(temp), sources, args.process_repeats)


if __name__ == "__main__":
    main()
