"""``kdlab status STUDY``: where every run of a study stands. Formatting only: the runs are
classified by :mod:`kdlab.study.progress`, grouped by the study's cells and summarised over seeds by :mod:`kdlab.study.stats`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..run.catalog import reported_accuracy
from ..run.layout import format_alpha
from ..schedulers import ending
from ..schedulers.ending import end_text
from .stats import summarize
from .study_file import Study, load_study
from .progress import (COMPLETED, FAILED, NOT_STARTED, QUEUED, RUN_STATES, RUNNING,
    UNREADABLE, WAITING, RunState, check_liveness, outside_grid, outside_grid_summary,
    planned_epochs, resume_blocker, study_run_states)

# ---- the status report -------------------------------------------------------------------------

_COUNT_COLUMNS = (COMPLETED, RUNNING, QUEUED, FAILED, WAITING, NOT_STARTED, UNREADABLE)


def status_report(study: Study, states: list[RunState] | None = None,
                  liveness: dict[Path, bool | str] | None = None,
                  check_jobs: bool = True) -> dict[str, Any]:
    """Everything ``kdlab status`` shows, as plain JSON-able data.

    ``liveness`` (run dir -> True / False / why unknown) defaults to asking the schedulers
    when ``check_jobs``; without it, running and queued runs have liveness 'not checked'."""
    if states is None:
        states = study_run_states(study)
    if liveness is None:
        liveness = check_liveness(states, study.scheduler.backend) if check_jobs else {}
    ends = ending.gone_job_ends(states, liveness, study.scheduler.backend) if check_jobs else {}
    job_states = ending.live_job_states(states, liveness, study.scheduler.backend)
    total = len(states)
    counts = {name: 0 for name in RUN_STATES}
    groups: dict[tuple, dict[str, Any]] = {}
    accuracies: dict[tuple, list[float]] = {}
    selected_key, selected_text = reported_accuracy(study.training.get("selection", "test"),
                                                    study.reported_accuracy)
    selected: dict[tuple, list[float]] = {}
    for cell in study.cells():
        _add_group(groups, accuracies, cell, study)
    epochs_done = epochs_planned = 0
    for state in states:
        counts[state.state] += 1
        # A teacher shared by several pairs is counted once in the totals, in each pair's rows.
        cells = study.cells_of(state.spec) or [study.cell_of(state.spec)]
        for cell in cells:
            if cell.key not in groups:  # a run given by the caller from outside the grid
                _add_group(groups, accuracies, cell, study)
            key = cell.key
            groups[key]["runs"] += 1
            groups[key][state.state] += 1
            groups[key]["collapsed"] += state.collapsed
            groups[key]["earlier_code"] += state.earlier_code
            if state.state == COMPLETED and state.max_acc is not None:
                accuracies[key].append(state.max_acc)
            value = (state.status or {}).get(selected_key) if state.state == COMPLETED else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                selected.setdefault(key, []).append(float(value))
        planned = planned_epochs(state.status, int(study.training["epochs"]))
        epochs_planned += planned
        epochs_done += planned if state.state == COMPLETED else min(_epoch(state), planned)
    for key, group in groups.items():
        summary = summarize(accuracies[key])
        group["mean_max_acc"] = summary.mean
        group["max_acc_summary"] = summary.to_dict()
        group["completed_with_accuracy"] = summary.n
        # The accuracy the study selects by (max_acc with selection "test").
        group["selected_acc_summary"] = summarize(selected.get(key, [])).to_dict()
    all_accuracies = [acc for values in accuracies.values() for acc in values]

    failed, stuck, unknown, unreadable = [], [], [], []
    for state in states:
        entry = {"run": state.spec.name, "run_dir": str(state.run_dir), "detail": state.detail}
        if state.state == FAILED:
            failed.append({**entry, "reason": (state.status or {}).get("reason")
                           or "no reason recorded"})
        elif state.state == UNREADABLE:
            unreadable.append(entry)
        elif state.state in (RUNNING, QUEUED):
            job_id = state.job_id
            alive = liveness.get(state.run_dir)
            if job_id is None:
                unknown.append({**entry, "job_id": None,
                                "reason": "no job id recorded (started by hand?)"})
            elif alive is False:
                blocker = resume_blocker(state)
                end = ends.get(state.run_dir)
                gone = ending.end_text(end) if end else "is gone"
                stuck.append({**entry, "job_id": job_id, "job_end": end,
                              "reason": f"job {job_id} {gone} but status.json says "
                                        f"{state.status['status']}; "
                                        + (f"kdlab queue leaves it: {blocker}" if blocker
                                           else "kdlab queue resubmits it")})
            elif alive is not True:
                unknown.append({**entry, "job_id": job_id,
                                "reason": f"liveness unknown ({alive or 'not checked'})"})

    runs = []
    for state in states:
        status = state.status or {}
        alive = liveness.get(state.run_dir)
        runs.append({"run": state.spec.name, "dataset": state.spec.dataset,
                     "model": state.spec.model, "method": state.spec.method,
                     "teacher": state.spec.teacher, "alpha": state.spec.alpha,
                     "seed": state.spec.seed, "role": state.role, "state": state.state,
                     "detail": state.detail, "job_id": state.job_id,
                     "job_alive": alive if isinstance(alive, bool) else None,
                     "epoch": status.get("epoch"),
                     "epochs": planned_epochs(state.status, int(study.training["epochs"])),
                     "max_acc": state.max_acc, "collapsed": state.collapsed,
                     "made_by": state.made_by, "pack": state.pack,
                     "run_dir": str(state.run_dir),
                     "last_job_end": ends.get(state.run_dir) or status.get("last_job_end"),
                     "job_state": job_states.get(state.run_dir),
                     "imported": imported_record(status)})
    outside = outside_grid(study, states)
    return {
        "study": study.name, "study_file": str(study.path),
        "experiments_dir": str(study.experiments_dir), "backend": study.scheduler.backend,
        "total": total, "counts": counts,
        "progress_percent": 100.0 * counts[COMPLETED] / total if total else 0.0,
        "epoch_progress_percent": 100.0 * epochs_done / epochs_planned if epochs_planned else 0.0,
        "mean_max_acc_completed": summarize(all_accuracies).mean,
        "accuracy_selected_by": {"key": selected_key, "meaning": selected_text},
        "groups": list(groups.values()), "failed": failed, "stuck": stuck,
        "liveness_unknown": unknown, "unreadable": unreadable, "runs": runs,
        "collapsed": [run["run"] for run in runs if run["collapsed"]],
        "earlier_code_runs": sum(run["made_by"] == "earlier code" for run in runs),
        "outside_grid": outside, "packs": _packs(states, liveness),
        "imported": [{"run": run["run"], **run["imported"]} for run in runs if run["imported"]],
        "live": [{"run": run["run"], "job_id": run["job_id"], "job_state": run["job_state"],
                  "last_job_end": run["last_job_end"]}
                 for run in runs if run["job_alive"] is True],
    }


def imported_record(status: dict) -> dict[str, Any] | None:
    """What ``kdlab import-teacher`` recorded of a run's file (source, SHA-256, measured and
    published test accuracy, %), read tolerantly: None for a trained run, None values for
    fields missing or of the wrong type."""
    record = status.get("imported")
    if not isinstance(record, dict):
        return None

    def number(key: str) -> float | None:
        value = record.get(key)
        return float(value) if isinstance(value, (int, float)) and \
            not isinstance(value, bool) else None

    def text(key: str) -> str | None:
        return record[key] if isinstance(record.get(key), str) else None

    return {"source": text("source"), "sha256": text("sha256"), "test_acc": number("test_acc"),
            "study_preprocessing_test_acc": number("study_preprocessing_test_acc"),
            "published_acc": number("published_acc"),
            "published_source": text("published_source")}


def _packs(states: list[RunState], liveness: dict) -> list[dict[str, Any]]:
    """The jobs of queued and running runs that train several runs (packs): job id, the
    pack's runs as recorded at submission, whether the job is alive (None: not known) and
    which of the runs are unfinished."""
    packs: dict[str, dict[str, Any]] = {}
    for state in states:
        if state.state not in (RUNNING, QUEUED) or state.pack is None or state.job_id is None:
            continue
        alive = liveness.get(state.run_dir)
        packs.setdefault(state.job_id, {"job_id": state.job_id, "runs": state.pack,
                                        "job_alive": alive if isinstance(alive, bool) else None,
                                        "unfinished": []})
        packs[state.job_id]["unfinished"].append(state.spec.name)
    return list(packs.values())


def _add_group(groups: dict, accuracies: dict, cell, study: Study) -> None:
    """A row of the status table for ``cell`` (its pair and the model its runs train)."""
    pair = cell.pair
    groups[cell.key] = {"dataset": cell.dataset, "method": cell.row, "alpha": cell.alpha,
                        "model": cell.model, "teacher": pair.teacher if pair else None,
                        "student": pair.student if pair else None,
                        "pair": pair.label if pair else None,
                        "runs": 0, "collapsed": 0, "earlier_code": 0,
                        **{name: 0 for name in _COUNT_COLUMNS}}
    accuracies[cell.key] = []


def _epoch(state: RunState) -> int:
    value = (state.status or {}).get("epoch")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def format_report(report: dict[str, Any]) -> str:
    """The report as the text ``kdlab status`` prints: the table, totals, problem runs."""
    headers = ["data set", "runs of", "alpha", "done", "running", "queued", "failed",
               "waiting", "to do", "unreadable", "mean acc %", "± std", "95% CI", "n",
               "collapsed", "made by earlier code"]
    rows = []
    # With several pairs every row says its pair; one pair's table is as it always was.
    several_pairs = len({group.get("pair") for group in report["groups"]}) > 1
    if several_pairs:
        headers.insert(1, "pair")
    for group in report["groups"]:
        label = (f"{group['method']} {group['model']}" if group["method"] in ("teacher", "pure")
                 else group["method"])
        summary = group["selected_acc_summary"]
        ci = summary["ci95"]
        first = [group["dataset"], group.get("pair") or "-"] if several_pairs else [group["dataset"]]
        rows.append([*first, label, _alpha_text(group["alpha"]),
                     *(str(group[name]) for name in _COUNT_COLUMNS),
                     _number(summary["mean"]), _number(summary["std"]),
                     "-" if ci is None else f"{ci[0]:.2f}..{ci[1]:.2f}", str(summary["n"]),
                     str(group["collapsed"] or "-"), str(group["earlier_code"] or "-")])
    lines = [f"study {report['study']} ({report['study_file']}): {report['total']} runs in "
             f"{report['experiments_dir']}, backend {report['backend']}", ""]
    lines += _table(headers, rows, text_columns=4 if several_pairs else 3)
    lines.append(f"mean acc: over seeds, of the {report['accuracy_selected_by']['meaning']}")
    counts = report["counts"]
    accuracy = report["mean_max_acc_completed"]
    lines += ["", f"progress: {counts[COMPLETED]}/{report['total']} runs completed "
                  f"({report['progress_percent']:.1f}%), {report['epoch_progress_percent']:.1f}% "
                  "of all epochs trained; "
                  + ", ".join(f"{counts[name]} {name.replace('_', ' ')}" for name in RUN_STATES
                              if name != COMPLETED),
              "accuracy of completed runs: "
              + ("-" if accuracy is None else f"{accuracy:.2f}% (mean of best test accuracy)")]
    if report.get("live"):  # the scheduler's own state and elapsed time, as '[R 0:27:33]'
        lines += ["", f"live jobs ({len(report['live'])}):"]
        lines += [f"  {entry['run']}: job {entry['job_id']}" + (
            f" [{' '.join(entry['job_state'])}]" if entry["job_state"] else "") + _ended(entry)
            for entry in report["live"]]
    earlier = report["earlier_code_runs"]
    if earlier:
        lines.append(f"made by: {earlier} of these runs were made by the earlier research code "
                     "(other augmentation and method weights; --json: made_by)")
    if report["collapsed"]:
        lines.append(f"collapsed (completed at chance accuracy): {', '.join(report['collapsed'])}")
    outside = outside_grid_summary(report["outside_grid"])
    if outside:
        lines.append(f"outside the grid: {outside}")
    if report.get("imported"):
        lines += ["", f"imported teachers ({len(report['imported'])}; kdlab import-teacher):"]
        lines += [f"  {entry['run']}: {_imported_text(entry)}" for entry in report["imported"]]
    if report["packs"]:
        lines += ["", f"packs (jobs training several runs; {len(report['packs'])}):"]
        for pack in report["packs"]:
            alive = {True: "live", False: "gone", None: "liveness unknown"}[pack["job_alive"]]
            lines.append(f"  job {pack['job_id']} ({alive}, {len(pack['unfinished'])} of "
                         f"{len(pack['runs'])} runs unfinished): {', '.join(pack['runs'])}")
    for title, key, field in (("failed", "failed", "reason"), ("stuck", "stuck", "reason"),
                              ("liveness unknown", "liveness_unknown", "reason"),
                              ("unreadable status.json", "unreadable", "detail")):
        if report[key]:
            lines += ["", f"{title} ({len(report[key])}):"]
            lines += [f"  {entry['run']}: {entry[field]}" for entry in report[key]]
    return "\n".join(lines)


def _imported_text(entry: dict[str, Any]) -> str:
    """'measured 75.02% (published 75.61%, RepDistiller's README ...) from FILE'."""
    text = f"measured {_number(entry['test_acc'])}%"
    if entry["study_preprocessing_test_acc"] is not None:
        text += f" ({_number(entry['study_preprocessing_test_acc'])}% as students see it)"
    if entry["published_acc"] is not None:
        text += f", published {_number(entry['published_acc'])}%"
        if entry["published_source"]:
            text += f" ({entry['published_source']})"
    else:
        text += ", no published accuracy known"
    return text + f", from {entry['source'] or 'a file not recorded'}"


def _ended(entry: dict[str, Any]) -> str:
    """'; job 123 ended OUT_OF_MEMORY after 00:14:02' for a run's previous job, or ''."""
    end = entry.get("last_job_end")
    if not isinstance(end, dict) or end.get("job_id") == entry.get("job_id"):
        return ""
    return f"; job {end.get('job_id')} {end_text(end)}"


def _table(headers: list[str], rows: list[list[str]], text_columns: int = 3) -> list[str]:
    widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]
    def line(cells):
        return "  ".join(str(cell).ljust(width) if i < text_columns else str(cell).rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()
    return [line(headers), line(["-" * width for width in widths]), *(line(row) for row in rows)]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _alpha_text(alpha: float | None) -> str:
    return "-" if alpha is None else format_alpha(alpha)


# ---- the status command ----------------------------------------------------------------------

def command(args) -> int:
    study = load_study(args.study)
    report = status_report(study)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(format_report(report))
    return 0
