"""kdlab methodology: facts from the study, the registry and the runs, in Markdown and LaTeX."""

from __future__ import annotations

import importlib.metadata
import re
import statistics

from kdlab import cli
from kdlab.distill import method_class, method_defaults
from kdlab.layout import RunSpec, analysis_dir
from kdlab.ops.methodology import duration_text, latex_escape, write_methodology
from kdlab.study import load_study
from legacy_tree import write_run, write_study

CLUSTER = """
[cluster]
name = "CHPC Lengau"
scheduler = "PBS Pro"
gpu_type = "NVIDIA V100"
gpus_total = 30
nodes = 9
gpus_per_job = 1
multi_gpu = "multi-GPU jobs need special access"
cpus_per_job = 8
memory_per_job = "24 GB"
deterministic_cudnn = true

[method_options.fitnets]
weight = 50.0
hint_layer = "layer3"
"""


def _study(tmp_path):
    path = write_study(tmp_path / "study.toml", name="method_study", methods=["logit", "fitnets"],
                       alphas=[0.5], seeds=[0, 1], extra=CLUSTER)
    return load_study(path)


def test_latex_escape_every_special_character():
    assert latex_escape(r"a_b & 50% $x$ #1 {y} ~z ^w \q") == (
        r"a\_b \& 50\% \$x\$ \#1 \{y\} \textasciitilde{}z \textasciicircum{}w \textbackslash{}q")
    assert latex_escape("α ± 0.5 × 2 — ok") == r"$\alpha$ $\pm$ 0.5 $\times$ 2 --- ok"
    assert latex_escape("plain text 1.0") == "plain text 1.0"


def test_duration_text():
    assert duration_text(0.5) == "0.50 s"
    assert duration_text(12.34) == "12.3 s"
    assert duration_text(245) == "4 min 05 s"
    assert duration_text(3600 + 150) == "1 h 02 min"
    assert duration_text(None) == "—"


def test_methodology_from_study_and_runs(tmp_path, capsys):
    study = _study(tmp_path)
    experiments = study.experiments_dir
    teacher_epochs = {0: [10.0, 12.0, 14.0], 1: [11.0, 13.0, 30.0]}
    for seed, seconds in teacher_epochs.items():
        write_run(experiments, RunSpec("Digits", "ResNet20", seed), epoch_seconds=seconds)
    write_run(experiments, RunSpec("Digits", "ResNet8", 0), epoch_seconds=[3.0, 3.0, 6.0])
    # an unfinished run's epochs count per epoch, not per run
    write_run(experiments, RunSpec("Digits", "ResNet8", 1), status="in_progress", epoch=1,
              epoch_seconds=[9.0])

    assert cli.main(["methodology", str(study.path)]) == 0
    out_dir = analysis_dir(study.analysis_dir, study.name) / "methodology"
    assert f"wrote {out_dir / 'methodology.md'}" in capsys.readouterr().out
    markdown = (out_dir / "methodology.md").read_text()
    latex = (out_dir / "methodology.tex").read_text()

    # hardware and scheduler from [cluster] and [scheduler]
    assert "Experiments ran on CHPC Lengau, scheduled with PBS Pro." in markdown
    assert "- GPUs: NVIDIA V100 (30 in total across 9 nodes)" in markdown
    assert "- GPUs per job: 1 (multi-GPU jobs need special access)" in markdown
    assert "- CPU cores per job: 8" in markdown and "- Memory per job: 24 GB" in markdown
    assert "The cluster description confirms deterministic cuDNN." in markdown
    assert "| backend | local |" in markdown and "| walltime per job | 02:00:00 |" in markdown
    # hyper-parameters and methods: defaults merged with the study's options, with citations
    assert "| epochs | 1 |" in markdown and "| batch size | 128 |" in markdown
    fitnets = dict(method_defaults("fitnets"), weight=50.0, hint_layer="layer3")
    settings = ", ".join(f"{k}={v}" for k, v in sorted(fitnets.items()))
    assert f"| fitnets | {settings} | {method_class('fitnets').citation} |" in markdown
    logit = dict(method_defaults("logit"), temperature=study.training["temperature"])
    settings = ", ".join(f"{k}={v}" for k, v in sorted(logit.items()))
    assert f"| logit | {settings} | {method_class('logit').citation} |" in markdown
    # software versions as installed
    assert f"| torch | {importlib.metadata.version('torch')} |" in markdown
    assert f"| numpy | {importlib.metadata.version('numpy')} |" in markdown
    # measured times, computed here independently
    all_teacher = teacher_epochs[0] + teacher_epochs[1]
    per_run = [sum(v) for v in teacher_epochs.values()]
    row = (f"| Digits | teacher | ResNet20 | {duration_text(statistics.fmean(all_teacher))} | "
           f"{duration_text(statistics.median(all_teacher))} | "
           f"{duration_text(statistics.fmean(per_run))} | "
           f"{duration_text(statistics.median(per_run))} | 2 |")
    assert row in markdown
    pure_epochs = [3.0, 3.0, 6.0, 9.0]
    assert (f"| Digits | pure student | ResNet8 | {duration_text(statistics.fmean(pure_epochs))} "
            f"| {duration_text(statistics.median(pure_epochs))} | {duration_text(12.0)} | "
            f"{duration_text(12.0)} | 1 |") in markdown

    # LaTeX: the same facts, escaped, ASCII only, environments balanced
    assert latex.isascii()
    assert "hint\\_layer=layer3" in latex and "weight=50.0" in latex
    assert "\\subsection{Measured training time}" in latex
    for environment in ("itemize", "tabular", "center"):
        begins, ends = (latex.count(f"\\{kind}{{{environment}}}") for kind in ("begin", "end"))
        assert begins == ends > 0
    assert latex.count("\\begin{tabular}") >= 5
    # no unescaped special character outside LaTeX commands and math
    body = "\n".join(line for line in latex.splitlines() if not line.startswith("%"))
    stripped = re.sub(r"\\[a-zA-Z]+(\{[^}]*\})*|\\[&%$#_{}]|\$[^$]*\$|\\\\", "", body)
    stripped = stripped.replace(" & ", " ")   # the column separators of the tables
    assert not re.search(r"[&%#_^~]", stripped)


def test_methodology_without_cluster_or_times(tmp_path):
    path = write_study(tmp_path / "study.toml", methods=[], alphas=[])
    markdown_path, latex_path = write_methodology(load_study(path), tmp_path / "out")
    markdown = markdown_path.read_text()
    assert "gives no [cluster] description" in markdown
    assert "No run has recorded epoch durations yet." in markdown
    assert "Distillation methods" not in markdown
    assert latex_path.read_text().isascii()
