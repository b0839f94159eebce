"""``kdlab archive STUDY``: close a round without losing anything.

Moves the study's ``experiments/`` to ``analysis/experiment_{study}/experiments/``, writes
``analysis/experiment_{study}/README.md`` (scope, training configuration, accuracy table,
runs that did not complete and why) and leaves a fresh empty ``experiments/``.

Safety:
- Refuses while any run in the tree is live (the scheduler says its job is pending or
  running, or nobody can tell: a run without a job id, or whose scheduler cannot be asked
  here — ``--assume-stopped`` accepts the latter after the user checked them).
- On one file system the tree is moved with one ``rename`` (atomic). Across file systems
  every file is copied (temp file + fsync + rename), then every copy is verified against its
  source (size and SHA-256), and only then are the sources removed.
- A journal file ``analysis/experiment_{study}/.archive-journal.json`` (written atomically)
  marks an archive in progress; running ``kdlab archive`` again after an interruption at
  any point finishes the job. Each step is idempotent: a file already copied and equal is
  not copied again; a source file is removed only after its copy was verified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..run import state_files
from ..run.errors import UserError
from ..run.layout import analysis_dir, format_alpha
from ..schedulers import backend_of_status, get_scheduler
from ..study.progress import (COMPLETED, QUEUED, RUNNING, UNREADABLE, RunState, classify_run,
    study_run_states)
from ..study.study_file import Study, load_study
from ..study.summaries import (accuracy_groups, earlier_code_runs, effective_method_options, group_keys,
                     interval_text, is_earlier_code, markdown_table, mean_std_text,
                     selection_accuracy, time_text)

JOURNAL_FILE = ".archive-journal.json"
README_FILE = "README.md"
ARCHIVED_EXPERIMENTS = "experiments"


@dataclass
class LiveRun:
    name: str
    run_dir: Path
    why: str          # why it counts as live
    certain: bool     # True: the scheduler says alive; False: nobody could tell


# ---- liveness -------------------------------------------------------------------------------

def _scheduler_named(name: str):
    """The scheduler backend called ``name`` (None when kdlab has no such backend)."""
    try:
        return get_scheduler(name)
    except UserError:
        return None


def live_runs(study: Study, states: list[RunState]) -> list[LiveRun]:
    """The runs among ``states`` that are (or may be) live: in progress or queued, and
    either alive according to their scheduler or of unknown liveness."""
    candidates = [s for s in states if s.state in (RUNNING, QUEUED)]
    by_backend: dict[str, list[RunState]] = {}
    live: list[LiveRun] = []
    for state in candidates:
        if state.job_id is None:
            live.append(LiveRun(state.spec.name, state.run_dir,
                                f"{state.state.replace('_', ' ')} without a recorded job id: "
                                "cannot tell whether it is still running", False))
            continue
        backend = backend_of_status(state.status, study.scheduler.backend)
        by_backend.setdefault(backend, []).append(state)
    for backend, group in by_backend.items():
        scheduler = _scheduler_named(backend)
        unusable = "kdlab has no scheduler backend of this name" if scheduler is None \
            else scheduler.available()
        if unusable:
            for state in group:
                live.append(LiveRun(state.spec.name, state.run_dir,
                                    f"{state.state.replace('_', ' ')}, {backend} job "
                                    f"{state.job_id}: liveness unknown ({unusable})", False))
            continue
        answers = scheduler.alive_jobs([state.job_id for state in group])
        for state in group:
            answer = answers.get(state.job_id)
            if answer is True:
                live.append(LiveRun(state.spec.name, state.run_dir,
                                    f"{backend} job {state.job_id} is pending or running", True))
            elif answer is not False:
                live.append(LiveRun(state.spec.name, state.run_dir,
                                    f"{backend} job {state.job_id}: liveness unknown "
                                    f"({answer})", False))
    return live


def _tree_states(study: Study, experiments: Path) -> list[RunState]:
    """States of every run of the grid plus every other run directory in the tree (a shared
    experiments directory may hold runs of other studies: they move too)."""
    scoped = dataclasses.replace(study, experiments_dir=experiments)
    states = study_run_states(scoped)
    known = {state.spec for state in states}
    for spec, _path in scoped.run_dirs():
        if spec not in known:
            states.append(classify_run(scoped, spec))
    return states


# ---- moving the tree --------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _same_filesystem(source: Path, destination_parent: Path) -> bool:
    return os.stat(source).st_dev == os.stat(destination_parent).st_dev


def _copy_file(source: Path, destination: Path) -> None:
    """Copy one file (content, mode, times) via a temp file + fsync + rename, so that a
    destination path either does not exist or holds a complete copy."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp",
                                     dir=destination.parent)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
            out.flush()
            os.fsync(out.fileno())
        shutil.copystat(source, temp_name)
        os.replace(temp_name, destination)
    except BaseException:
        try:
            os.unlink(temp_name)
        except FileNotFoundError:
            pass
        raise


def _remove_file(path: Path) -> None:
    os.unlink(path)


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(directories, files) under ``root``, relative, directories parents first."""
    directories, files = [], []
    for current, dir_names, file_names in os.walk(root):
        base = Path(current).relative_to(root)
        dir_names.sort()
        for name in dir_names:
            if (Path(current) / name).is_symlink():
                files.append(base / name)        # a link to a directory is moved as a link
            else:
                directories.append(base / name)
        files.extend(base / name for name in sorted(file_names))
    return directories, files


def _same_link(source: Path, destination: Path) -> bool:
    return destination.is_symlink() and os.readlink(destination) == os.readlink(source)


def copy_verify_remove(source: Path, destination: Path, journal: Path,
                       log: Callable[[str], None]) -> None:
    """Move ``source``'s content into ``destination`` across file systems: copy what is
    missing or different, verify every file, then remove the sources. Safe to re-run after
    an interruption at any point; leaves ``source`` itself as an empty directory."""
    directories, files = _walk(source)
    for directory in directories:
        (destination / directory).mkdir(parents=True, exist_ok=True)
    copied = 0
    source_digests: dict[Path, str] = {}
    for relative in files:
        src, dst = source / relative, destination / relative
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            if not _same_link(src, dst):
                if dst.is_symlink() or dst.exists():
                    raise UserError(f"archive: {dst} already exists and differs from the link "
                                    f"{src}; nothing was removed: resolve the conflict by "
                                    "hand, then run kdlab archive again")
                os.symlink(os.readlink(src), dst)
                copied += 1
            continue
        if not src.is_file():
            raise UserError(f"{src}: not a regular file, directory or link; expected only "
                            "those in an experiments tree (nothing was removed)")
        source_digests[relative] = _sha256(src)
        if dst.is_symlink() or dst.exists():
            if (dst.is_file() and not dst.is_symlink()
                    and dst.stat().st_size == src.stat().st_size
                    and _sha256(dst) == source_digests[relative]):
                continue  # copied before an interruption
            # Copies are atomic, so a differing file was not put there by this archive:
            # never overwrite it.
            raise UserError(f"archive: {dst} already exists and differs from {src}; "
                            "nothing was removed: resolve the conflict by hand, then run "
                            "kdlab archive again")
        _copy_file(src, dst)
        copied += 1
    log(f"copied {copied} of {len(files)} files to {destination} (the rest were already there)")

    _write_journal(journal, phase="verifying")
    bad = []
    for relative in files:
        src, dst = source / relative, destination / relative
        if src.is_symlink():
            ok = _same_link(src, dst)
        else:
            ok = (dst.is_file() and dst.stat().st_size == src.stat().st_size
                  and _sha256(dst) == source_digests[relative])
        if not ok:
            bad.append(relative)
            # Every destination file was either copied by this archive or found equal to
            # its source a moment ago, so a mismatching one is a bad copy of ours: drop it
            # (the source stays) so that the next run copies it again.
            if dst.is_symlink() or dst.is_file():
                _remove_file(dst)
    if bad:
        raise UserError(f"archive: {len(bad)} copied file(s) do not match their source (size "
                        f"or SHA-256), e.g. {destination / bad[0]}; the bad copies were "
                        "dropped and no source file was removed: run kdlab archive again")
    log(f"verified {len(files)} files (size and SHA-256)")

    _write_journal(journal, phase="removing")
    for relative in files:
        _remove_file(source / relative)
    for directory in sorted(directories, key=lambda d: len(d.parts), reverse=True):
        try:
            (source / directory).rmdir()
        except FileNotFoundError:
            pass
    log(f"removed the {len(files)} verified source files from {source}")


def _write_journal(journal: Path, **changes) -> None:
    current = state_files.read_json(journal) or {}
    current.update(changes, updated_at=time.time())
    state_files.atomic_write_json(journal, current)


# ---- the README ---------------------------------------------------------------------------------

def _method_options_text(study: Study, method: str) -> str:
    options = effective_method_options(study, method)
    return ", ".join(f"{key}={value}" for key, value in sorted(options.items())) or "—"


def _recorded_values(states: list[RunState], key: str) -> str:
    values = set()
    for state in states:
        config = (state.status or {}).get("config")
        if isinstance(config, dict) and key in config:
            values.add(repr(config[key]))
    return ", ".join(sorted(values)) or "—"


def readme_text(study: Study, states: list[RunState], extra_states: list[RunState],
                source: Path, archived_at: float) -> str:
    """The archive's README: scope, configuration, accuracy table, incomplete runs."""
    roles = {role: sum(1 for s in states if s.role == role) for role in ("teacher", "pure", "kd")}
    completed = sum(1 for s in states if s.state == COMPLETED)
    lines = [f"# Study `{study.name}`: archived round", "",
             f"Archived on {time_text(archived_at)} from `{source}` (study file "
             f"`{study.path}`). The run directories are in `{ARCHIVED_EXPERIMENTS}/` next to "
             "this file, in kdlab's run layout.", "",
             "## Scope", "",
             f"- Data sets: {', '.join(study.datasets)}",
             "- Pairs (teacher -> student): " + "; ".join(pair.label for pair in study.pairs),
             f"- Methods: {', '.join(study.methods) or '—'}; alphas: "
             f"{', '.join(format_alpha(a) for a in study.alphas) or '—'}",
             f"- Seeds: {', '.join(str(s) for s in study.seeds)}",
             f"- Runs in the grid: {len(states)} ({roles['teacher']} teacher, {roles['pure']} "
             f"pure student, {roles['kd']} distilled); completed: {completed}", ""]
    earlier = earlier_code_runs(states + extra_states)
    if earlier is not None:
        lines += ["## Runs of the earlier code", "",
                  earlier.description(study.training.get("augmentation")), ""]

    training = study.training
    kdlab_states = [s for s in states if not is_earlier_code(s)]
    lines += ["## Training configuration", "",
              "As the study file sets it, with the values the runs recorded in their "
              "`status.json` alongside"
              + (" (kdlab's runs only; the earlier code's are described above)."
                 if earlier is not None else "."), ""]
    rows = []
    for key in ("epochs", "batch_size", "lr", "momentum", "weight_decay", "label_smoothing",
                "temperature", "device"):
        value = training.get(key)
        if key == "label_smoothing" and value is None:
            value = "0.1 for pure runs, 0 when distilling (default)"
        rows.append([key, str(value), _recorded_values(kdlab_states, key)])
    lines += [markdown_table(["setting", "study", "recorded by the runs"], rows), ""]
    if study.methods:
        lines += [markdown_table(["method", "options"],
                                 [[m, _method_options_text(study, m)] for m in study.methods]),
                  ""]
    lines += [f"Scheduler: {study.scheduler.backend}, walltime {study.scheduler.walltime}, "
              f"{study.scheduler.cpus} CPUs, {study.scheduler.gpus} GPUs, "
              f"{study.scheduler.memory} per job.", ""]

    selected_key, selected_words = selection_accuracy(study)
    lines += ["## Accuracy", "",
              f"Selection rule: [training] selection = \"{study.training.get('selection', 'test')}"
              f"\". Accuracy (%) = {selected_words}; mean ± sample standard deviation over "
              f"seeds, n = completed runs with a recorded `{selected_key}` of the cell's planned "
              "runs, 95 % CI = Student-t interval of the mean over seeds; final_acc = test "
              "accuracy of the last epoch (mean, n); the last column: the split that chose "
              "the best.pth of each row's completed runs, as they recorded it.", ""]
    rows = []
    earlier_cells: dict[tuple, int] = {}
    for state in (earlier.states if earlier is not None else []):
        if state.state == COMPLETED and state.max_acc is not None:
            for key in group_keys(study, state):
                earlier_cells[key] = earlier_cells.get(key, 0) + 1
    for group in accuracy_groups(study, states):
        alpha = "—" if group.alpha is None else format_alpha(group.alpha)
        kind = group.label(study) if group.role != "kd" else group.method
        if study.has_several_pairs:
            kind = f"{group.pair.label}: {kind}"
        selected, final = group.selected_summary, group.final_summary
        rows.append([group.dataset, kind, alpha, mean_std_text(selected),
                     f"{selected.n}/{group.planned}"])
        if earlier is not None:
            rows[-1].append(str(earlier_cells.get(group.key, 0)))
        rows[-1] += [interval_text(selected),
                     "—" if final.mean is None else f"{final.mean:.2f} (n={final.n})",
                     group.chosen_on_text(selected_key)]
    headers = (["data set", "run", "α", f"accuracy (%, {selected_key})", "n"]
               + (["of them earlier code"] if earlier else [])
               + ["95 % CI", "final_acc (%)", "best.pth chosen on (runs)"])
    lines += [markdown_table(headers, rows), ""]

    incomplete = [s for s in states if s.state != COMPLETED]
    lines += ["## Runs that did not complete", ""]
    if incomplete:
        lines += [markdown_table(["run", "state", "why"],
                                 [[s.spec.name, _STATE_WORDS.get(s.state, s.state), _why(s)]
                                  for s in incomplete]), ""]
    else:
        lines += ["Every run of the grid completed.", ""]
    if extra_states:
        lines += ["## Other runs in the archived tree", "",
                  "Run directories that are not part of this study's grid (moved as well):", ""]
        lines += [markdown_table(["run", "state", "detail"],
                                 [[s.spec.name, s.state.replace("_", " "), s.detail]
                                  for s in extra_states]), ""]
    return "\n".join(lines)


# Words for a run's state once archived (nothing runs any more).
_STATE_WORDS = {RUNNING: "did not finish (in progress)", QUEUED: "did not start (queued)",
                "not_started": "not started", "waiting": "not started (waiting for teacher)"}


def _why(state: RunState) -> str:
    if state.state == UNREADABLE:
        return f"unreadable: {state.detail}"
    return state.detail


# ---- the archive step by step -------------------------------------------------------------

@dataclass
class ArchiveResult:
    destination: Path
    readme: Path
    method: str        # 'rename', 'copy' or 'nothing'
    resumed: bool


def archive_study(study: Study, *, assume_stopped: bool = False,
                  log: Callable[[str], None] = print,
                  force_copy: bool = False) -> ArchiveResult:
    """Archive the study's experiments tree (see the module docstring).

    ``force_copy`` takes the cross-file-system path (copy, verify, remove) even on one file
    system. Raises UserError when a run is live, the destination already holds another
    round, or a copy does not verify.
    """
    source = Path(study.experiments_dir)
    root = analysis_dir(study.analysis_dir, study.name)
    destination = root / ARCHIVED_EXPERIMENTS
    journal = root / JOURNAL_FILE
    readme = root / README_FILE
    journal_state = state_files.read_json(journal) if journal.exists() else None
    resumed = journal_state is not None

    if source.exists() and not source.is_dir():
        raise UserError(f"experiments path {source} (from {study.path}) is not a directory")
    if source.is_dir():
        live = live_runs(study, _tree_states(study, source))
        blocking = [run for run in live if run.certain or not assume_stopped]
        if blocking:
            lines = "; ".join(f"{run.name} ({run.why})" for run in blocking[:5])
            more = f"; and {len(blocking) - 5} more" if len(blocking) > 5 else ""
            hint = "" if all(run.certain for run in blocking) else (
                " — if you checked that those jobs are gone, run again with --assume-stopped")
            raise UserError(f"refusing to archive {source}: {len(blocking)} run(s) may be live: "
                            f"{lines}{more}{hint}")

    source_has_content = source.is_dir() and any(source.iterdir())
    if not resumed:
        if not source_has_content:
            if destination.exists():
                log(f"nothing to archive: {source} is empty; the last round is in {destination}")
            else:
                log(f"nothing to archive: {source} holds no runs")
            return ArchiveResult(destination, readme, "nothing", False)
        if destination.exists() and any(destination.iterdir()):
            raise UserError(f"{destination} already holds an archived round: move or rename it "
                            "before archiving again (nothing was changed)")
        root.mkdir(parents=True, exist_ok=True)
        _write_journal(journal, phase="moving", source=str(source.resolve()),
                       destination=str(destination.resolve()), started_at=time.time())
        journal_state = state_files.read_json(journal)
    else:
        recorded = journal_state.get("source")
        if recorded and Path(recorded) != source.resolve():
            raise UserError(f"{journal}: an unfinished archive of {recorded} is recorded, but "
                            f"this study's experiments directory is {source.resolve()}; "
                            "expected the same directory (finish it from there)")
        log(f"resuming the unfinished archive recorded in {journal} "
            f"(phase: {journal_state.get('phase')})")

    method = "copy"
    move_done = (journal_state or {}).get("phase") in ("moved", "finishing")
    if source_has_content and not move_done:
        if (not force_copy and not destination.exists()
                and _same_filesystem(source, root)):
            os.rename(source, destination)
            method = "rename"
            _write_journal(journal, phase="moved")
            log(f"moved {source} to {destination}")
        else:
            destination.mkdir(parents=True, exist_ok=True)
            copy_verify_remove(source, destination, journal, log)
    _write_journal(journal, phase="finishing")
    _make_fresh(source)

    archived = dataclasses.replace(study, experiments_dir=destination)
    states = study_run_states(archived)
    known = {state.spec for state in states}
    extra = [classify_run(archived, spec) for spec, _ in archived.run_dirs()
             if spec not in known]
    started = (journal_state or {}).get("started_at", time.time())
    state_files.atomic_write_text(readme, readme_text(study, states, extra, source, started))
    log(f"wrote {readme}")
    os.unlink(journal)
    return ArchiveResult(destination, readme, method, resumed)


def _make_fresh(source: Path) -> None:
    """Leave an empty experiments directory for the next round."""
    source.mkdir(parents=True, exist_ok=True)


def command(args) -> int:
    study = load_study(args.study)
    result = archive_study(study, assume_stopped=getattr(args, "assume_stopped", False))
    if result.method != "nothing":
        print(f"archived {study.name}: runs in {result.destination}, summary in {result.readme}; "
              f"{study.experiments_dir} is empty for the next round")
    return 0
