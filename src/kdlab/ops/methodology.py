"""``kdlab methodology STUDY``: the methodology section, written from the truth.

Sources: the study file (grid, training settings, method options, ``[scheduler]`` and the
optional ``[cluster]`` description), the distillation registry (each method's defaults
and citation), kdlab's own training facts (augmentation per data set, optimiser schedule,
checkpointing), the installed software versions, and the finished runs' ``metrics.json``
(``epoch_seconds``: measured training time per epoch).

The section is built once as a small document (headings, paragraphs, lists, tables) and
rendered twice: Markdown (``methodology.md``) and LaTeX (``methodology.tex``, special
characters escaped; plain ``tabular``, no packages needed beyond a standard article).
"""

from __future__ import annotations

import importlib.metadata
import math
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from ..run import catalog, state_files
from ..run.config import KD_LABEL_SMOOTHING, PURE_LABEL_SMOOTHING, schedule_words
from ..run.layout import analysis_dir, analysis_table_path, format_alpha
from ..study.progress import COMPLETED, RunState, study_run_states
from ..study.study_file import Study, load_study
from ..study.summaries import effective_method_options, is_earlier_code
from .methodology_facts import earlier_code_blocks, objective_blocks, selection_settings

SOFTWARE = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "matplotlib", "pandas",
            "kdlab")


# ---- a tiny document model -------------------------------------------------------------------

@dataclass
class Section:
    title: str
    blocks: list = field(default_factory=list)   # ('p', text) | ('ul', [items]) | ('table', ...)

    def paragraph(self, text: str) -> None:
        self.blocks.append(("p", text))

    def items(self, items: list[str]) -> None:
        self.blocks.append(("ul", list(items)))

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", list(headers), [list(map(str, row)) for row in rows]))


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}",
    # characters this module itself writes, so the .tex compiles without unicode setup
    "±": r"$\pm$", "α": r"$\alpha$", "×": r"$\times$", "—": "---", "–": "--", "²": r"$^2$",
    "·": r"$\cdot$", "−": r"$-$", "≥": r"$\geq$", "≤": r"$\leq$", "µ": r"$\mu$",
    # accented letters of cited names (Müller), as plain TeX accents
    "Σ": r"$\Sigma$", "ü": r'\"u', "ö": r'\"o', "ä": r'\"a', "é": r"\'e", "è": r"\`e",
}


def latex_escape(text: str) -> str:
    """``text`` with every LaTeX special character escaped (one pass, so an escape is never
    escaped again)."""
    return "".join(_LATEX_SPECIAL.get(character, character) for character in str(text))


def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if block[0] == "p":
                lines += [block[1], ""]
            elif block[0] == "ul":
                lines += [f"- {item}" for item in block[1]] + [""]
            else:
                headers, rows = block[1], block[2]
                escape = lambda text: str(text).replace("|", "\\|")  # noqa: E731
                lines.append("| " + " | ".join(map(escape, headers)) + " |")
                lines.append("|" + "|".join("---" for _ in headers) + "|")
                lines += ["| " + " | ".join(map(escape, row)) + " |" for row in rows]
                lines.append("")
    return "\n".join(lines)


# An article's 10 pt line: about 345 pt; a character of text at most about 5 pt.
_LINE_POINTS = 345.0
_CELL_WRAP = 12          # a cell longer than this may wrap inside its column
_WRAPPED_PADDING = 4.0   # \tabcolsep (pt) of wrapped tables


def _column_spec(headers: list[str], rows: list[list[str]]) -> list[str] | None:
    """One ``l`` per column when the table fits the line as it is; else None when it must
    wrap (see :func:`_wrapped_spec`)."""
    widths = [max(len(str(cell)) for cell in [header] + [row[i] for row in rows])
              for i, header in enumerate(headers)]
    if sum(widths) * 5.0 + 12.0 * len(headers) <= _LINE_POINTS:
        return ["l"] * len(headers)
    return None


def _wrapped_spec(headers: list[str], rows: list[list[str]]) -> tuple[str, list[str]]:
    """The type size and ``p{..}`` columns of a table too wide for its line (narrow
    padding, ``\\small``, or ``\\footnotesize`` when even that is too wide): each column gets at
    least what it needs (its longest word, or a short cell whole), and the rest of the line
    goes to the columns whose text is longer than that, in proportion, so nothing runs
    off the page and short columns stay narrow."""
    needs, naturals = [], []
    for i, header in enumerate(headers):
        column = [str(header)] + [str(row[i]) for row in rows]
        words = max(len(word) for cell in column for word in cell.split() or [""])
        whole = max((len(cell) for cell in column[1:] if len(cell) <= _CELL_WRAP), default=0)
        needs.append(max(words, whole, 3) + 1)          # + 1: wide letters (m, W)
        naturals.append(max(needs[-1], max(map(len, column))))
    usable = 0.99 - 2 * _WRAPPED_PADDING * len(headers) / _LINE_POINTS
    # characters of text (generously wide) across the usable line, by type size
    for size, points in (("\\small", 5.0), ("\\footnotesize", 4.4)):
        available = usable * _LINE_POINTS / points
        if sum(needs) <= available:
            break
    spare = max(0.0, available - sum(needs))
    wanted = sum(natural - need for natural, need in zip(naturals, needs)) or 1
    widths = [min(natural, need + spare * (natural - need) / wanted)
              for natural, need in zip(naturals, needs)]
    scale = min(1.0, available / sum(widths))
    return size, [f"p{{{usable * width * scale / available:.3f}\\linewidth}}"
                  for width in widths]


def _latex_row(cells: list[str], spec: list[str]) -> str:
    """A table row; wrapped cells ragged right (rows end in \\tabularnewline, which
    \\raggedright leaves alone, so no package is needed)."""
    return " & ".join(("\\raggedright " if kind.startswith("p") else "") + latex_escape(cell)
                      for cell, kind in zip(cells, spec)) + " \\tabularnewline"


def render_latex(title: str, sections: list[Section]) -> str:
    lines = ["% Methodology section generated by `kdlab methodology` from the study file and",
             "% the finished runs. \\input{} it into the thesis; edit the study, not this file.",
             # a group: lines may stretch rather than run into the margin (identifiers such
             # as method\_options cannot be hyphenated); nothing leaks into the thesis
             "\\begingroup\\setlength{\\emergencystretch}{3em}",
             f"\\section{{{latex_escape(title)}}}", ""]
    for section in sections:
        lines += [f"\\subsection{{{latex_escape(section.title)}}}", ""]
        for block in section.blocks:
            if block[0] == "p":
                lines += [latex_escape(block[1]), ""]
            elif block[0] == "ul":
                lines.append("\\begin{itemize}")
                lines += [f"  \\item {latex_escape(item)}" for item in block[1]]
                lines += ["\\end{itemize}", ""]
            else:
                headers, rows = block[1], block[2]
                spec = _column_spec(headers, rows)
                lines.append("\\begin{center}")
                if spec is None:      # wrapped: smaller type, narrower padding, in a group
                    size, spec = _wrapped_spec(headers, rows)
                    lines.append(f"{size}\\setlength{{\\tabcolsep}}{{{_WRAPPED_PADDING:g}pt}}")
                lines += ["\\begin{tabular}{" + "".join(spec) + "}",
                          "\\hline", _latex_row(headers, spec), "\\hline"]
                lines += [_latex_row(row, spec) for row in rows]
                lines += ["\\hline", "\\end{tabular}", "\\end{center}", ""]
    lines.append("\\endgroup")
    return "\n".join(lines)


# ---- facts ---------------------------------------------------------------------------------

def software_versions() -> list[tuple[str, str]]:
    """(package, version) of Python and the packages kdlab runs on, as installed here."""
    versions = [("Python", platform.python_version())]
    for package in SOFTWARE:
        try:
            versions.append((package, importlib.metadata.version(package)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((package, "not installed"))
    return versions


def duration_text(seconds: float | None) -> str:
    """Human duration: '0.84 s', '12.3 s', '4 min 05 s', '1 h 02 min'."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min {rest:02d} s"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min"


@dataclass
class TimingRow:
    """Measured training time of one data set × role: seconds per epoch over every recorded
    epoch, seconds per run (sum of its epochs) over completed runs."""

    dataset: str
    role: str
    model: str
    epoch_seconds: list[float]
    run_seconds: list[float]


def training_times(study: Study, states: list[RunState]) -> list[TimingRow]:
    """Timing rows in the study's order, from each run's ``metrics.json`` ``epoch_seconds``
    (runs without the key — e.g. from the earlier code — or with an unreadable file are
    skipped)."""
    rows: dict[tuple[str, str], TimingRow] = {}
    for state in states:
        if state.state == "unreadable":
            continue
        try:
            metrics = state_files.read_metrics(state.run_dir)
        except state_files.StateFileError:
            continue
        seconds = (metrics or {}).get("epoch_seconds")
        if not isinstance(seconds, list):
            continue
        seconds = [float(s) for s in seconds
                   if isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)]
        if not seconds:
            continue
        key = (state.spec.dataset, state.role)
        row = rows.setdefault(key, TimingRow(state.spec.dataset, state.role, state.spec.model,
                                             [], []))
        row.epoch_seconds += seconds
        if state.state == COMPLETED:
            row.run_seconds.append(sum(seconds))
    order = {role: index for index, role in enumerate(("teacher", "pure", "kd"))}
    dataset_order = {name: index for index, name in enumerate(study.datasets)}
    return sorted(rows.values(), key=lambda r: (dataset_order.get(r.dataset, 99), order[r.role]))


_ROLE_NAMES = {"teacher": "teacher", "pure": "pure student", "kd": "distilled student"}


# ---- the section -----------------------------------------------------------------------------

def methodology_sections(study: Study, states: list[RunState]) -> list[Section]:
    earlier = earlier_code_blocks(study, states)
    sections = [_hardware_section(study), _grid_section(study, earlier)]
    objective = Section("Objective, schedule and model selection")
    objective.blocks += objective_blocks(study, states)
    sections.append(objective)
    if study.methods:
        sections.append(_methods_section(study, bool(earlier)))
    sections.append(_robustness_section(study))
    # how kdlab's ICA and principal angles differ from the earlier analysis: said where there
    # is an analysis to describe, or earlier-code runs to compare with
    if (analysis_table_path(study.analysis_dir, study.name, "metrics.csv").is_file()
            or any(is_earlier_code(state) for state in states)):
        sections.append(_earlier_analysis_section())
    software = Section("Software")
    software.paragraph("Versions installed where this section was generated:")
    software.table(["software", "version"], [list(row) for row in software_versions()])
    sections.append(software)
    sections.append(_timing_section(study, states))
    return sections


def _hardware_section(study: Study) -> Section:
    scheduler, cluster = study.scheduler, study.cluster
    hardware = Section("Hardware and scheduling")
    if cluster:
        where = cluster.get("name", "the cluster")
        if cluster.get("site"):
            where += f" ({cluster['site']})"
        sentence = f"Experiments ran on {where}"
        if cluster.get("scheduler"):
            sentence += f", scheduled with {cluster['scheduler']}"
        hardware.paragraph(sentence + ".")
        items = _cluster_items(cluster)
        if items:
            hardware.items(items)
    else:
        hardware.paragraph("The study file gives no [cluster] description; the job resources "
                           "below are what each job requested.")
    hardware.table(["scheduler setting", "value"], [
        ["backend", scheduler.backend],
        ["walltime per job", scheduler.walltime],
        ["GPUs per job", scheduler.gpus],
        ["CPUs per job", scheduler.cpus],
        ["memory per job", scheduler.memory],
        ["concurrent jobs (at most)", scheduler.max_live_jobs],
        ["checkpoint signal before walltime", f"{scheduler.signal_seconds} s"],
    ])
    return hardware


def _cluster_items(cluster: dict) -> list[str]:
    items = []
    if cluster.get("gpu_type"):
        pool = ""
        if cluster.get("gpus_total"):
            pool = f" ({cluster['gpus_total']} in total"
            pool += f" across {cluster['nodes']} nodes)" if cluster.get("nodes") else ")"
        items.append(f"GPUs: {cluster['gpu_type']}{pool}")
    if cluster.get("gpus_per_job") is not None:
        items.append(f"GPUs per job: {cluster['gpus_per_job']}"
                     + (f" ({cluster['multi_gpu']})" if cluster.get("multi_gpu") else ""))
    if cluster.get("cpus_per_job") is not None:
        items.append(f"CPU cores per job: {cluster['cpus_per_job']}")
    if cluster.get("memory_per_job"):
        items.append(f"Memory per job: {cluster['memory_per_job']}")
    if cluster.get("notes"):
        items.append(str(cluster["notes"]))
    return items


# TrainConfig.precision -> what the methods section says of it
_PRECISION_TEXT = {
    "auto": "bf16 autocast on GPUs that support it, else fp16 with a gradient scaler; fp32 "
            "on CPU",
    "fp32": "fp32 throughout",
    "bf16": "bf16 autocast",
    "fp16": "fp16 autocast with a gradient scaler (a step with inf/NaN gradients is skipped)",
}


def _grid_section(study: Study, earlier: list) -> Section:
    """'Experimental grid and training'; ``earlier``: the blocks on earlier-code runs."""
    training = study.training
    grid = Section("Experimental grid and training")
    grid.paragraph(
        f"Data sets: {', '.join(study.datasets)}. {_pairs_sentence(study)} Each configuration "
        "is trained with "
        f"seeds {', '.join(str(s) for s in study.seeds)}; distillation methods "
        f"{', '.join(study.methods) or 'none'} "
        + ("on the benchmark's objective (no alpha level)" if study.trains_without_alpha else
           f"at alphas {', '.join(format_alpha(a) for a in study.alphas) or '—'}")
        + ", giving "
        f"{len(study.runs())} runs ({len(study.teacher_runs())} teacher, "
        f"{len(study.pure_student_runs())} pure student, {len(study.kd_runs())} distilled).")
    smoothing = training.get("label_smoothing")
    smoothing_text = (f"{smoothing}" if smoothing is not None else
                      f"{PURE_LABEL_SMOOTHING} for teachers and pure students, "
                      f"{KD_LABEL_SMOOTHING} for distilled students")
    if earlier:   # before kdlab's settings, so nobody reads those as the earlier runs'
        grid.blocks += earlier
        grid.paragraph("The settings of the runs kdlab trains:")
    precision = training.get("precision") or "auto"
    grid.table(["hyper-parameter", "value"], [
        ["epochs", training["epochs"]],
        ["batch size", training["batch_size"]],
        ["optimiser", f"SGD, momentum {training['momentum']}, weight decay "
                      f"{training['weight_decay']}"],
        ["learning rate", f"{training['lr']}, {schedule_words(training)}"],
        ["label smoothing", smoothing_text],
        ["distillation loss", "γ·CE + κ·KD + β·(method loss), the benchmark's"
         if study.trains_without_alpha else "(1 − α)·CE + α·(method loss)"],
        ["temperature", f"{training['temperature']} (methods that take one, unless set "
                        "in their options)"],
        ["precision", f"{precision}: {_PRECISION_TEXT.get(precision, precision)}"],
        *[[f"{model}'s runs", ", ".join(f"{key} {value}" for key, value in values.items())]
          for model, values in study.model_training.items()],
    ])
    augmentation = _augmentation_text(study)
    grid.paragraph(f"In kdlab's runs: {augmentation[0].lower()}{augmentation[1:]}" if earlier
                   else augmentation)
    return grid


def _methods_section(study: Study, earlier: bool) -> Section:
    methods = Section("Distillation methods")
    methods.paragraph(("For kdlab's runs, e" if earlier else "E") +
                      "ach method's settings are its defaults in kdlab merged with the "
                      "study's method_options; the student's loss is " +
                      ("γ·CE + κ·KD + (sum of the method's weighted terms), the benchmark's "
                       "objective (weights in the section on the objective)."
                       if study.trains_without_alpha else
                       "(1 − α)·CE + α·(sum of the method's weighted terms)."))
    rows = []
    for method in study.methods:
        citation, options = _method_facts(study, method)
        rows.append([method, ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
                     or "—", citation])
    methods.table(["method", "settings", "reference"], rows)
    described = [(method, catalog.METHODS[method].description(
        effective_method_options(study, method))) for method in study.methods
        if method in catalog.METHODS]
    if any(text for _, text in described):
        methods.paragraph("What each method distils:")
        methods.items([f"{method}: {text}" for method, text in described if text])
    return methods


def _robustness_section(study: Study) -> Section:
    scheduler, cluster = study.scheduler, study.cluster
    selection, _ = selection_settings(study)
    robustness = Section("Checkpointing, resumption and determinism")
    robustness.items([
        "After every epoch each run writes, atomically (temporary file, fsync, rename), a full "
        "checkpoint (model, optimiser, learning-rate schedule, gradient scaler, the method's "
        "extra modules, metric history, random-number-generator states), the weights of its "
        f"best {selection} accuracy so far, and its status and per-epoch metrics.",
        f"Before the walltime the scheduler signals the job ({scheduler.signal_seconds} s "
        "ahead); training saves a checkpoint at the next safe point and exits, and the next "
        "queue pass resubmits the run, which resumes from the following epoch. A resumed run "
        "ends with the same metrics as an uninterrupted one.",
        "A run whose loss becomes non-finite, or whose optimiser skips almost every step in "
        "an epoch, is stopped and marked failed with the reason.",
        "A distilled student starts only after its teacher run (same data set and seed) "
        "completed; it distils from the teacher's best-accuracy weights.",
        "Python, NumPy and PyTorch are seeded with the run's seed; shuffling and augmentation "
        "draw from a generator seeded by seed and epoch; cuDNN runs in deterministic mode "
        "with benchmarking off, and PyTorch's deterministic algorithms are requested."
        + (" The cluster description confirms deterministic cuDNN."
           if cluster.get("deterministic_cudnn") else ""),
    ])
    return robustness


def _timing_section(study: Study, states: list[RunState]) -> Section:
    timing = Section("Measured training time")
    rows = training_times(study, states)
    if rows:
        timing.paragraph("Wall-clock seconds per training epoch (evaluation included) as "
                         "recorded by each run, and per completed run (the sum of its "
                         "epochs; waiting in the queue excluded).")
        timing.table(["data set", "run", "model", "per epoch (mean)", "per epoch (median)",
                      "per run (mean)", "per run (median)", "runs"],
                     [[row.dataset, _ROLE_NAMES[row.role], row.model,
                       duration_text(statistics.fmean(row.epoch_seconds)),
                       duration_text(statistics.median(row.epoch_seconds)),
                       duration_text(statistics.fmean(row.run_seconds)
                                     if row.run_seconds else None),
                       duration_text(statistics.median(row.run_seconds)
                                     if row.run_seconds else None),
                       len(row.run_seconds)] for row in rows])
    else:
        timing.paragraph("No run has recorded epoch durations yet.")
    return timing


def _earlier_analysis_section() -> Section:
    """How kdlab's ICA and principal angles differ from the earlier analysis's, with the
    analysis settings kdlab uses (plain text: the renderers escape it)."""
    from ..analysis.registry import setup_differences

    text = setup_differences()
    section = Section("Representation analysis against the earlier code")
    section.paragraph(text.replace("**", "").replace("`", ""))
    return section


def _augmentation_text(study: Study) -> str:
    try:
        from ..data import DATASETS
    except ImportError:
        return ("Training images are augmented with a random crop from a zero-padded image "
                "and, where the data set allows, a horizontal flip; test images are not "
                "augmented.")
    parts = []
    for name in study.datasets:
        info = DATASETS[name]
        flip = " and horizontal flip" if info.flip else " (no flip)"
        parts.append(f"{name}: {info.image_size}×{info.image_size} px, random crop with "
                     f"{info.pad}-pixel zero padding{flip}")
    text = ("Augmentation, applied on the training device as batched tensor operations, then "
            "normalisation with each data set's channel mean and standard deviation — "
            + "; ".join(parts) + ". Test images are neither augmented nor resized.")
    if study.training.get("augmentation") == "benchmark":
        from ..data.info import BENCHMARK_NORMALIZATION

        constants = [f"{name}: mean {mean}, std {std}" for name, (mean, std)
                     in BENCHMARK_NORMALIZATION.items() if name in study.datasets]
        if constants:
            text += (" The channel statistics are RepDistiller's constants (augmentation = "
                     "\"benchmark\"): " + "; ".join(constants) + ".")
    return text


def _method_facts(study: Study, method: str) -> tuple[str, dict]:
    options = effective_method_options(study, method)
    try:
        from ..distill import method_class
    except ImportError:
        return "—", options
    from ..run import catalog

    parts = catalog.combination_parts(method) or (method,)
    return "; ".join(method_class(part).citation or "—" for part in parts), options


def write_methodology(study: Study, output_dir: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``methodology.md`` and ``methodology.tex``; returns their paths."""
    output = (Path(output_dir) if output_dir is not None
              else analysis_dir(study.analysis_dir, study.name) / "methodology")
    states = study_run_states(study)
    sections = methodology_sections(study, states)
    title = "Methodology"
    markdown_path, latex_path = output / "methodology.md", output / "methodology.tex"
    state_files.atomic_write_text(markdown_path, render_markdown(title, sections))
    state_files.atomic_write_text(latex_path, render_latex(title, sections))
    return markdown_path, latex_path


def command(args) -> int:
    study = load_study(args.study)
    markdown_path, latex_path = write_methodology(study, args.output_dir)
    print(f"wrote {markdown_path}\nwrote {latex_path}")
    return 0


def _pairs_sentence(study: Study) -> str:
    """The study's teacher-student pairs and each model's stages (from its facts)."""
    pairs = "; ".join(f"teacher {pair.teacher}, student {pair.student}"
                      for pair in study.pairs)
    models = dict.fromkeys(model for pair in study.pairs for model in (pair.teacher,
                                                                       pair.student))
    stages = "; ".join(
        f"{model}: {catalog.model_facts(model).family}, stages "
        + ", ".join(f"{name} ({channels} channels)" for name, channels in
                    zip(catalog.model_facts(model).stage_names,
                        catalog.model_facts(model).stage_channels))
        for model in models)
    what = "Pairs" if len(study.pairs) > 1 else "Pair"
    return f"{what}: {pairs} ({stages})."
