"""``report.html``: one self-contained page per study linking every table and figure.

Readable offline (no scripts, no external style sheets, relative links only) and it links
only files that exist when it is written.
"""

from __future__ import annotations

import html
import math
import os
import time
from pathlib import Path

from ..run import catalog, layout
from ..run.state_files import atomic_write_text
from . import dynamics, findings, registry
from .figures import figure_files, group_prefix, sweep_metrics
from .tables import format_mean_std, grid_rows, of_pair, selection_cells, selection_sentence
from ..run.errors import UserError
from ..study.references import read_references


def metric_descriptions() -> list[tuple[str, str]]:
    """(row name(s), one sentence with its reference) for every metric of metrics.csv, from
    the registry (:mod:`kdlab.analysis.registry`), settings filled in."""
    return [metric.glossary() for metric in registry.REGISTRY.values()] + [
        ("METRIC_ci_low / METRIC_ci_high",
         f"95% percentile bootstrap interval over samples "
         f"({registry.SETTINGS['bootstrap_samples']} resamples, fixed seed) of "
         f"{', '.join(registry.with_intervals())}, from the precomputed Gram and distance "
         "matrices (see kdlab.analysis.bootstrap)."),
        ("noise floors (floors.csv)",
         "Pair metrics of networks that share no distillation: pure student against pure "
         "student and teacher against teacher of other seeds (the pure student against its "
         "teacher is the 'pure' row); drawn as bands in the same-layer CKA bars and the "
         "sweeps of pair metrics. A KD effect is read against these."),
    ]


_STYLE = """
body { font-family: sans-serif; margin: 1.5em auto; max-width: 1400px; color: #222; }
h1, h2, h3 { font-weight: 600; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0 1em; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }
td.na { color: #999; } .gallery { display: flex; flex-wrap: wrap; gap: 1em; }
figure { margin: 0; max-width: 640px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #444; } dt { font-weight: 600; font-family: monospace; }
dd { margin: 0 0 0.5em 1.5em; } .note { color: #7a4b00; } .problem { color: #a00; }
"""


def _link(path: Path, root: Path, text: str | None = None) -> str:
    relative = Path(os.path.relpath(path, root)).as_posix()
    return f'<a href="{html.escape(relative)}">{html.escape(text or relative)}</a>'


def _figure(path: Path, root: Path) -> str:
    relative = html.escape(Path(os.path.relpath(path, root)).as_posix())
    caption = html.escape(path.stem.replace("_", " "))
    return (f'<figure><a href="{relative}"><img src="{relative}" alt="{caption}" '
            f'></a><figcaption>{caption}</figcaption></figure>')


def _published_text(references, dataset: str, pair, method: str) -> str:
    """'75.61 (CRD (Tian et al. ICLR 2020) Table 1, last)', several joined; '' for none."""
    return "; ".join(f"{reference.top1:.2f} ({reference.source}, {reference.epoch})"
                     for reference in references
                     if (reference.dataset, reference.teacher, reference.student,
                         reference.method) == (dataset, pair.teacher, pair.student, method))


def _accuracy_html(accuracy, dataset: str, pair, references=None) -> str:
    """The accuracy table of one data set and pair; ``references``: reference numbers
    (:func:`kdlab.study.references.read_references`) for a 'published' column (None: none)."""
    key = html.escape(str(accuracy["selected_by"].iloc[0])) if len(accuracy) else "max_acc"
    published = "<th>published (%)</th>" if references is not None else ""
    rows = ["<table><tr><th>method</th><th>alpha</th><th>accuracy of the extracted weights "
            f"(%)</th><th>seeds</th><th>{key} (%): mean ± std, 95% CI (n)</th>"
            f"<th>final_acc (%)</th>{published}</tr>"]
    for row in accuracy[(accuracy["dataset"] == dataset)
                        & (accuracy["pair"] == pair.label)].itertuples():
        alpha = "—" if math.isnan(row.alpha) else layout.format_alpha(row.alpha)
        cell = format_mean_std(row.accuracy_mean, row.accuracy_std, row.n_seeds)
        css = ' class="na"' if row.n_seeds == 0 else ""
        selected, final = selection_cells(row)
        rows.append(f"<tr><td>{html.escape(row.method)}</td><td>{alpha}</td>"
                    f"<td{css}>{html.escape(cell)}</td>"
                    f"<td>{row.n_seeds}/{row.seeds_expected}</td>"
                    f"<td>{html.escape(selected)}</td><td>{html.escape(final)}</td>"
                    + ("" if references is None else "<td>" + html.escape(
                        _published_text(references, dataset, pair, row.method) or "—") + "</td>")
                    + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


_FINDINGS_INTRO = (
    "What the numbers support, per data set and pair, each with its uncertainty. A "
    "method's CKA shift at a stage is the mean over seeds of its student's linear CKA with "
    "the teacher minus the pure student's (both against the teacher of the same seed), with "
    "a Student-t 95 % interval; ↑/↓ mark shifts whose interval excludes 0, i.e. beyond the "
    "across-seed noise of retraining. The rank correlation of accuracy and alignment uses "
    "every KD run of the pair (Spearman, Fisher-z interval with Bonett & Wright's variance). "
    "See kdlab.analysis.findings.")


def _figure_link(groups: dict, group_id: str, stem_start: str, text: str, root: Path) -> str:
    """A link to the first figure of ``group_id`` whose name starts with ``stem_start``
    ('' when it was not drawn)."""
    for path in groups.get(group_id, []):
        if path.stem.startswith(stem_start) and path.is_file():
            return _link(path, root, text)
    return ""


def _references(study):
    """The reference numbers the study compares with, or (None, why) when unreadable."""
    try:
        return read_references(study.compare_reference), None
    except UserError as error:
        return None, str(error)


def _findings_section(study, accuracy, groups: dict, root: Path) -> list[str]:
    """'Findings': per data set and pair, the accuracy table beside the reference numbers,
    the CKA shifts beyond the noise and the accuracy-alignment correlation
    (:mod:`kdlab.analysis.findings`), each linked to its figure."""
    from .figures.common import Values

    parts = ["<h2>Findings</h2>", f"<p>{html.escape(_FINDINGS_INTRO)}</p>"]
    references, problem = _references(study)
    if problem:
        parts.append(f'<p class="problem">{html.escape(problem)}</p>')
    metrics_path = layout.analysis_table_path(study.analysis_dir, study.name, "metrics.csv")
    frame = None
    if metrics_path.is_file():
        import pandas as pd

        frame = pd.read_csv(metrics_path)
    cells = [(method, alpha) for method, alpha in grid_rows(study)
             if method not in ("teacher", findings.PURE)]
    for dataset in study.datasets:
        for pair in study.pairs:
            title = f"{dataset} — {pair.label}" if study.has_several_pairs else dataset
            parts.append(f"<h3>Findings: {html.escape(title)}</h3>")
            known = [reference for reference in references or []
                     if (reference.dataset, reference.teacher, reference.student)
                     == (dataset, pair.teacher, pair.student)]
            parts.append(_accuracy_html(accuracy, dataset, pair, known or None))
            if frame is None or not cells:
                parts.append('<p class="note">No representation metrics yet (run kdlab '
                             'extract, then analyze).</p>' if frame is None else "")
                continue
            values = Values(of_pair(frame[frame["dataset"] == dataset], pair))
            parts += _pair_findings(study, findings, values, pair, cells,
                                    group_prefix(study, dataset, pair), groups, root)
    return parts


def _pair_findings(study, findings, values, pair, cells, prefix: str, groups: dict,
                   root: Path) -> list[str]:
    stages = list(catalog.model_facts(pair.student).stage_names)
    teacher_stages = list(catalog.model_facts(pair.teacher).stage_names)
    partners = {stage: teacher_stages[len(teacher_stages) - len(stages) + index]
                for index, stage in enumerate(stages)
                if 0 <= len(teacher_stages) - len(stages) + index}
    shifts = {(method, alpha, stage): findings.cka_shift(values, method, alpha, stage)
              for method, alpha in cells for stage in stages}
    links = [_figure_link(groups, f"{prefix}/sweeps/cka_linear", "sweep_", "CKA sweep", root)]
    links += [_figure_link(groups, f"{prefix}/per_method/{method}", "cka_same_layer",
                           f"{method}: same-stage CKA", root) for method in study.methods]
    links = [link for link in links if link]
    sentences = findings.shift_sentences(list(shifts.values()), stages[-1])
    parts = ["<p>" + " ".join(html.escape(sentence) for sentence in sentences)
             + (f" Figures: {', '.join(links)}." if links else "") + "</p>"]
    header = "".join(f"<th>{html.escape(stage)} ↔ {html.escape(partners.get(stage, '—'))}</th>"
                     for stage in stages)
    rows = [f"<table><tr><th>CKA shift (student ↔ teacher stage)</th>{header}</tr>"]
    for method, alpha in cells:
        row = "".join(f"<td>{html.escape(findings.shift_cell(shifts[(method, alpha, stage)]))}"
                      "</td>" for stage in stages)
        rows.append(f"<tr><td>{html.escape(findings.cell_name(method, alpha))}</td>{row}</tr>")
    parts.append("\n".join(rows) + "</table>")
    correlation = findings.accuracy_alignment(values, cells, stages[-1])
    link = _figure_link(groups, f"{prefix}/sweeps/accuracy_vs_alignment", "accuracy_vs",
                        "figure", root)
    parts.append(f"<p>{html.escape(findings.correlation_sentence(correlation, stages[-1]))}"
                 + (f" ({link})" if link else "") + "</p>")
    return parts


def _gallery(paths: list[Path], root: Path) -> str:
    existing = [path for path in paths if path.is_file()]
    if not existing:
        return '<p class="note">no figures</p>'
    return '<div class="gallery">' + "\n".join(_figure(p, root) for p in existing) + "</div>"


def _header(study, result) -> list[str]:
    return [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>kdlab analysis: {html.escape(study.name)}</title>"
            f"<style>{_STYLE}</style></head><body>",
            f"<h1>Representation analysis — study {html.escape(study.name)}</h1>",
            f"<p>{_pairs_text(study)}; "
            f"data sets {html.escape(', '.join(study.datasets))}; methods "
            f"{html.escape(', '.join(study.methods) or 'none')}; alphas "
            f"{html.escape(', '.join(layout.format_alpha(a) for a in study.alphas) or 'none')}; "
            f"seeds {html.escape(', '.join(str(s) for s in study.seeds))}. "
            f"Written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}. "
            f"{len(result.readable)} of {len(result.available) + len(result.missing)} "
            f"expected representations analysed.</p>"]


def _pairs_text(study) -> str:
    """'Teacher ResNet56, student ResNet20' for a study of one pair; 'Pairs (teacher ->
    student): ResNet56 -> ResNet20, WRN40_2 -> ShuffleNetV1' for several."""
    if not study.has_several_pairs:
        return (f"Teacher {html.escape(study.pairs[0].teacher)}, student "
                f"{html.escape(study.pairs[0].student)}")
    return html.escape("Pairs (teacher -> student): "
                       + ", ".join(pair.label for pair in study.pairs))


def _tables_and_notes(study, result, root: Path) -> list[str]:
    parts = []
    tables = [(layout.analysis_table_path(study.analysis_dir, study.name, name), text)
              for name, text in TABLES]
    existing_tables = [(path, text) for path, text in tables if path.is_file()]
    if existing_tables:
        parts.append("<h2>Tables</h2><ul>" + "".join(
            f"<li>{_link(path, root, text)}</li>" for path, text in existing_tables) + "</ul>")
    if result.problems or result.notes or result.missing:
        parts.append("<h2>Notes</h2><ul>")
        parts += [f'<li class="problem">{html.escape(p)}</li>' for p in result.problems]
        parts += [f'<li class="note">{html.escape(n)}</li>' for n in dict.fromkeys(result.notes)]
        parts.append("</ul>")
        if result.missing:
            parts.append(f"<details><summary>{len(result.missing)} run(s) of the grid have no "
                         "representation yet (gaps in the figures)</summary><ul>"
                         + "".join(f"<li>{html.escape(e.label)}</li>" for e in result.missing)
                         + "</ul></details>")
    return parts


TABLES = [("metrics.csv", "metrics.csv — every metric, one row per data set × pair × method "
                          "× alpha × seed × layer × metric"),
          ("floors.csv", "floors.csv — noise floors: pair metrics of pure students and of "
                         "teachers across seeds (no distillation between them)"),
          ("accuracy.csv", "accuracy.csv — test accuracy, mean ± std over seeds; the accuracy "
                           "the study selects by with its 95% interval and n; final_acc"),
          ("accuracy.md", "accuracy.md — the same as Markdown"),
          ("dynamics.csv", "dynamics.csv — the metrics of every snapshot over training, one "
                           "row per run × epoch × stage × metric, with its interval")]


def _dynamics_section(study, result, groups: dict, root: Path) -> list[str]:
    """'Representations over training': per data set, the sentence computed from
    dynamics.csv and the figures; one line when no run has snapshots."""
    frame = getattr(result, "dynamics", None)
    parts = ["<h2>Representations over training</h2>"]
    if frame is None or not len(frame):
        return parts + ['<p class="note">No snapshot representations: set '
                        "snapshot_epochs in the study's [training] and run kdlab extract to "
                        "see the metrics over training.</p>"]
    parts.append("<p>Each snapshot is one more model: the same per-model metrics, and the "
                 "teacher-student metrics against the teacher's final weights "
                 "(dynamics.csv).</p>")
    for dataset in study.datasets:
        for pair in study.pairs:
            of_pair = frame[(frame["dataset"] == dataset)
                            & frame["run"].isin(study.run_names_of(pair))]
            if not len(of_pair):
                continue
            last_stage = catalog.model_facts(pair.student).stage_names[-1]
            title = (f"{dataset} — {pair.label}" if study.has_several_pairs else dataset)
            parts.append(f"<h3>{html.escape(title)}</h3><p>"
                         + html.escape(dynamics.peak_sentence(of_pair, dataset, last_stage))
                         + "</p>" + _gallery(groups.get(
                             f"{group_prefix(study, dataset, pair)}/dynamics", []), root))
    return parts


def _dataset_section(study, dataset: str, accuracy, groups: dict, root: Path) -> list[str]:
    """One data set's section: in a study of several pairs, one sub-section per pair."""
    if not study.has_several_pairs:
        return ([f"<h2>{html.escape(dataset)}</h2>"]
                + _pair_section(study, dataset, study.pairs[0], accuracy, groups, root, "h3"))
    parts = [f"<h2>{html.escape(dataset)}</h2>"]
    for pair in study.pairs:
        parts.append(f"<h3>{html.escape(dataset)} — {html.escape(pair.label)}</h3>")
        parts += _pair_section(study, dataset, pair, accuracy, groups, root, "h4")
    return parts


def _pair_section(study, dataset: str, pair, accuracy, groups: dict, root: Path,
                  heading: str) -> list[str]:
    def title(text: str) -> str:
        return f"<{heading}>{text}</{heading}>"

    prefix = group_prefix(study, dataset, pair)
    parts = [title("Test accuracy") + _accuracy_html(accuracy, dataset, pair)]
    summary = groups.get(f"{prefix}/summary", []) + groups.get(f"{prefix}/umap", [])
    sweep_groups = [f"{prefix}/sweeps/{metric}" for metric, *_ in sweep_metrics()]
    sweep_groups.append(f"{prefix}/sweeps/accuracy_vs_alignment")
    sweeps = [path for group_id in sweep_groups for path in groups.get(group_id, [])]
    if not (summary or sweeps or any(groups.get(f"{prefix}/per_method/{m}")
                                     for m in study.methods)):
        what = "data set" if not study.has_several_pairs else "pair"
        return parts + [f'<p class="note">no figures for this {what} (no representations '
                        'yet)</p>']
    parts.append(title("Summary") + _gallery(summary, root))
    parts.append(title("Alpha sweeps")
                 + _gallery([p for p in sweeps if p.stem.startswith("sweep_")], root))
    parts.append(title("Method × alpha heatmaps")
                 + _gallery([p for p in sweeps if p.stem.startswith("heatmap_")], root))
    parts.append(title("Accuracy against alignment")
                 + _gallery([p for p in sweeps if p.stem.startswith("accuracy_vs")], root))
    for method in study.methods:
        parts.append(title(f"Per method: {html.escape(method)}")
                     + _gallery(groups.get(f"{prefix}/per_method/{method}", []), root))
    parts.append(title("Figures of the earlier analysis") + "<p>The ICA correlation heatmap of "
                 "one representative run per method (test accuracy nearest the method's "
                 "median), the teacher-vs-itself cross-layer CKA panel, and the last stage's PCA "
                 "scatter in the teacher's basis, as the earlier analysis drew them.</p>"
                 + _gallery(groups.get(f"{prefix}/earlier", []), root))
    return parts


def setup_differences_html() -> str:
    """The paragraph on how kdlab's ICA and principal angles differ from the earlier
    analysis's (:func:`kdlab.analysis.earlier_metrics.earlier_setup_differences`), with
    kdlab's settings, as HTML."""
    import re

    text = html.escape(registry.setup_differences())
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return "<p>" + re.sub(r"`(.+?)`", r"<code>\1</code>", text) + "</p>"


def write_report(study, result, accuracy) -> Path:
    """Write ``report.html`` in the study's analysis folder; return its path.

    ``result``: the :class:`~kdlab.analysis.analyze.AnalysisReport` of this pass;
    ``accuracy``: the accuracy table (:func:`kdlab.analysis.tables.accuracy_table`)."""
    root = layout.analysis_dir(study.analysis_dir, study.name)
    groups = figure_files(study)

    parts = _header(study, result)
    parts.append(f"<p>{html.escape(selection_sentence(study))}</p>")
    parts += _findings_section(study, accuracy, groups, root)
    parts += _tables_and_notes(study, result, root)
    stages = "; ".join(f"{model}: {', '.join(catalog.model_facts(model).stage_names)}"
                       for model in dict.fromkeys(model for pair in study.pairs
                                                  for model in (pair.teacher, pair.student)))
    glossary = metric_descriptions()
    parts.append("<h2>Figures and metrics</h2><details><summary>Metrics glossary "
                 f"({len(glossary)} entries)</summary><p>Per model and stage (each model's "
                 "own stages, "
                 f"global-average-pooled: {html.escape(stages)}), and per teacher–student pair "
                 "of the same seed, the teacher's and the student's stages paired by position "
                 "from the last; the cross-layer CKA compares every pair of stages. Subsample sizes and seeds are fixed; see "
                 "<code>kdlab.analysis.compute</code>.</p><dl>")
    parts += [f"<dt>{html.escape(name)}</dt><dd>{html.escape(text)}</dd>"
              for name, text in glossary]
    parts.append("</dl>")
    parts.append(setup_differences_html() + "</details>")
    for dataset in study.datasets:
        parts.append(f"<details><summary>Figures: {html.escape(dataset)}</summary>")
        parts += _dataset_section(study, dataset, accuracy, groups, root)
        parts.append("</details>")
    parts += _dynamics_section(study, result, groups, root)
    parts.append("</body></html>")
    path = layout.report_path(study.analysis_dir, study.name)
    atomic_write_text(path, "\n".join(parts) + "\n")
    return path
