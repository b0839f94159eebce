"""``kdlab demo``: the whole pipeline on the embedded default, end to end, on this machine.

Runs the demo study (``studies/demo.toml``, shipped inside the package as
``kdlab/studies/demo.toml``) in a work directory: ``kdlab queue`` is run in a loop with the
local backend — so the real queue logic decides, submits detached ``kdlab train``
processes, waits for teachers and respects the live-job limit — until no run is left to
start or wait for; then ``extract``, ``analyze`` and ``plot``; then it prints where
``report.html`` is. One line per change of a run's state (and per epoch) shows progress.

Re-running it continues where it left off: completed runs are kept, interrupted ones
resume from their checkpoints. Ctrl-C stops the training processes it started.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import re
import time
from pathlib import Path
from typing import Callable

from ..run import state_files
from ..run.errors import UserError
from ..run.layout import analysis_dir
from ..study.progress import COMPLETED, FAILED, QUEUED, RUNNING, study_run_states
from ..study.study_file import Study, load_study
from ..study.decisions import LATER, LIVE, SUBMIT, UNKNOWN
from ..study.queue import plan_queue, run_queue
from ..schedulers import get_scheduler

DEMO_STUDY_FILE = "demo.toml"
POLL_SECONDS = 2.0
# Submissions of one run, without a finished epoch in between, before the demo gives up on
# it (a job that dies at start-up, e.g. from a bug, would otherwise be resubmitted forever).
MAX_FRUITLESS_SUBMISSIONS = 3


def packaged_demo_study() -> str:
    """Text of the demo study shipped with the package."""
    resource = importlib.resources.files("kdlab").joinpath("studies", DEMO_STUDY_FILE)
    try:
        return resource.read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        raise UserError("the demo study kdlab/studies/demo.toml is missing from the "
                        "installed package: expected it as package data (reinstall kdlab)") \
            from None


def _override(text: str, section: str, key: str, value: int) -> str:
    """The study text with ``key = value`` in ``[section]`` (replaced, or added first)."""
    start = text.index(f"[{section}]\n")
    end = text.find("\n[", start + 1)
    end = len(text) if end < 0 else end
    body, count = re.subn(rf"(?m)^(\s*{key}\s*=\s*)\d+", rf"\g<1>{value}", text[start:end],
                          count=1)
    if count == 0:
        body = body.replace(f"[{section}]\n", f"[{section}]\n{key} = {value}\n", 1)
    return text[:start] + body + text[end:]


def prepare_workdir(workdir: str | Path, epochs: int | None = None,
                    pack_size: int | None = None) -> Study:
    """Write the demo study into ``workdir`` (epochs and the scheduler's pack size
    overridden when given) and load it with its relative paths anchored in ``workdir``."""
    workdir = Path(workdir).resolve()
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs {epochs}: expected a positive number of epochs")
    if pack_size is not None and pack_size < 1:
        raise UserError(f"--pack-size {pack_size}: expected a positive number of runs per "
                        "job (1: every run its own job)")
    workdir.mkdir(parents=True, exist_ok=True)
    text = packaged_demo_study()
    if epochs is not None:
        text = _override(text, "training", "epochs", epochs)
    if pack_size is not None:
        text = _override(text, "scheduler", "pack_size", pack_size)
    study_path = workdir / DEMO_STUDY_FILE
    state_files.atomic_write_text(study_path, text)
    study = load_study(study_path)
    anchored = {key: getattr(study, key) if getattr(study, key).is_absolute()
                else workdir / getattr(study, key)
                for key in ("experiments_dir", "data_root", "analysis_dir")}
    return dataclasses.replace(study, **anchored)


def _elapsed(started: float) -> str:
    minutes, seconds = divmod(int(time.monotonic() - started), 60)
    return f"{minutes:02d}:{seconds:02d}"


def _log_tail(run_dir: Path, lines: int = 1) -> str:
    try:
        text = (run_dir / "train.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no train.log"
    return " | ".join(text[-lines:]) or "empty train.log"


def train_grid(study: Study, *, poll_seconds: float = POLL_SECONDS,
               log: Callable[[str], None] = print) -> dict[str, int]:
    """Run ``kdlab queue`` until nothing is live and nothing more can be submitted; one line
    per state change. Returns the final count of runs per state.

    A run whose jobs ended :data:`MAX_FRUITLESS_SUBMISSIONS` times without finishing an
    epoch (a crash at start-up) is marked failed, with the last line of its train.log as
    the reason, before the queue would submit it again: otherwise the queue resubmits it
    forever and it holds one of the few job slots."""
    scheduler = get_scheduler(study.scheduler.backend)
    started = time.monotonic()
    seen: dict[str, tuple[str, str]] = {}        # run -> (state, detail) last shown
    fruitless: dict[str, tuple[int, int]] = {}   # run -> (epoch at last submission, count)
    given_up = 0
    total = len(study.runs())
    try:
        while True:
            # Only runs without a live job are up for submission, so marking one failed
            # here cannot race with its own job.
            for decision in plan_queue(study):
                name = decision.run.spec.name
                epoch = int((decision.run.status or {}).get("epoch") or 0)
                last_epoch, count = fruitless.get(name, (-1, 0))
                if (decision.action in (SUBMIT, LATER) and epoch == last_epoch
                        and count >= MAX_FRUITLESS_SUBMISSIONS):
                    reason = (f"kdlab demo gave up: its jobs ended {count} times without "
                              f"finishing an epoch (train.log: {_log_tail(decision.run.run_dir)})")
                    state_files.update_status(decision.run.run_dir, status=state_files.FAILED,
                                           reason=reason)
                    given_up += 1   # the state change below shows the reason
            decisions, _ = run_queue(study, say=lambda line: None, scheduler=scheduler)
            for decision in decisions:
                if decision.action != SUBMIT or decision.job_id is None:
                    continue
                name = decision.run.spec.name
                epoch = int((decision.run.status or {}).get("epoch") or 0)
                last_epoch, count = fruitless.get(name, (-1, 0))
                fruitless[name] = (epoch, count + 1 if epoch == last_epoch else 1)
            for state in study_run_states(study):
                previous = seen.get(state.spec.name)
                if previous == (state.state, state.detail):
                    continue
                seen[state.spec.name] = (state.state, state.detail)
                quiet = ("not_started", "waiting")
                if previous is None and state.state in quiet:
                    continue   # the starting point: not news
                if previous is not None and previous[0] == state.state == "waiting":
                    continue   # only the teacher's progress changed
                log(f"[{_elapsed(started)}] {state.spec.name}: {state.detail}")
            if not any(d.action in (SUBMIT, LIVE, UNKNOWN, LATER) for d in decisions):
                break
            time.sleep(poll_seconds)
    except KeyboardInterrupt:
        _cancel_live(study, scheduler)
        log("stopped the demo's training processes (they saved checkpoints); run kdlab demo "
            "again to continue")
        raise
    counts: dict[str, int] = {}
    for state in study_run_states(study):
        counts[state.state] = counts.get(state.state, 0) + 1
    log(f"[{_elapsed(started)}] training finished: {counts.get(COMPLETED, 0)}/{total} runs "
        f"completed" + (f", {counts[FAILED]} failed" if counts.get(FAILED) else "")
        + (f" ({given_up} given up by the demo)" if given_up else ""))
    return counts


def _cancel_live(study: Study, scheduler) -> None:
    """Stop every live job of the study (training saves a checkpoint on the signal)."""
    for state in study_run_states(study):
        if state.state in (RUNNING, QUEUED) and state.job_id:
            try:
                scheduler.cancel(state.job_id)
            except Exception:  # stopping the others matters more than this one
                pass


def run_demo(workdir: str | Path, *, epochs: int | None = None,
             pack_size: int | None = None, poll_seconds: float = POLL_SECONDS, jobs: int = 0,
             log: Callable[[str], None] = print) -> Path:
    """The whole demo; returns the path of report.html."""
    from ..analysis.analyze import analyze_study
    from ..analysis.extract import extract_study
    from .plots import format_report, plot_study

    started = time.monotonic()
    study = prepare_workdir(workdir, epochs, pack_size)
    log(f"kdlab demo: {len(study.runs())} runs of study '{study.name}' "
        f"({study.training['epochs']} epochs each, {study.scheduler.max_live_jobs} jobs at a "
        f"time, up to {study.scheduler.pack_size} runs per job, local processes) in {Path(workdir).resolve()}")
    log("step 1/4: train (kdlab queue, repeated until every run is done)")
    train_grid(study, poll_seconds=poll_seconds, log=log)
    log("step 2/4: extract representations")
    extracted = extract_study(study, device="cpu", log=log)
    log(f"extract: {extracted.summary()}")
    log("step 3/4: analyze")
    report = analyze_study(study, jobs=jobs, log=log, show_progress=False)
    for problem in report.problems:
        log(f"  problem: {problem}")
    log("step 4/4: plot")
    plotted = plot_study(study)
    log(format_report(plotted).splitlines()[0])
    report_path = analysis_dir(study.analysis_dir, study.name) / "report.html"
    log(f"kdlab demo finished in {_elapsed(started)} (min:s)")
    log(f"report: {report_path}")
    return report_path


def command(args) -> int:
    run_demo(args.workdir, epochs=args.epochs, pack_size=args.pack_size)
    return 0
