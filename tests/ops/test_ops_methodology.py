"""kdlab methodology: facts from the study, the registry and the runs, in Markdown and LaTeX."""

from __future__ import annotations

import importlib.metadata
import re
import statistics
from types import SimpleNamespace

from kdlab import cli
from kdlab.distill import method_class, method_defaults
from kdlab.run.layout import RunSpec, analysis_dir
from kdlab.ops.methodology import duration_text, latex_escape, write_methodology
from kdlab.study.study_file import load_study
from builders import copy_legacy_tree, write_local_study, write_run

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
    path = write_local_study(tmp_path / "study.toml", name="method_study", methods=["logit", "fitnets"],
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
    path = write_local_study(tmp_path / "study.toml", methods=[], alphas=[])
    markdown_path, latex_path = write_methodology(load_study(path), tmp_path / "out")
    markdown = markdown_path.read_text()
    assert "gives no [cluster] description" in markdown
    assert "No run has recorded epoch durations yet." in markdown
    assert "Distillation methods" not in markdown
    assert latex_path.read_text().isascii()


# ---- objective, schedule, selection (issue 15) and earlier-code runs (issue 12) ----------------

def _objective(markdown: str) -> str:
    return markdown.split("## Objective, schedule and model selection")[1].split("\n## ")[0]


def test_methodology_states_weights_smoothing_schedule_and_selection(tmp_path):
    alphas = [0.25, 0.5, 0.75]
    path = write_local_study(tmp_path / "study.toml", methods=["logit", "fitnets", "rkd"],
                       alphas=alphas, seeds=[0])
    study = load_study(path)
    write_run(study.experiments_dir, RunSpec("Digits", "ResNet20", 0))
    markdown = write_methodology(study, tmp_path / "out")[0].read_text()
    text = _objective(markdown)
    assert "Teachers (and the pure-student baselines) train with label smoothing 0.1; " \
           "distilled students use 0" in text
    assert "Müller, Kornblith & Hinton (2019), When Does Label Smoothing Help?" in text
    # weight relative to CE, computed here from the registry's defaults: α·w / (1 − α)
    expected = {"logit": method_defaults("logit")["weight"],
                "fitnets": method_defaults("fitnets")["weight"],
                "rkd (distance)": method_defaults("rkd")["weight"]
                * method_defaults("rkd")["distance_weight"],
                "rkd (angle)": method_defaults("rkd")["weight"]
                * method_defaults("rkd")["angle_weight"]}
    assert "| method (term) | w | α=0.25 | α=0.5 | α=0.75 |" in text
    for name, weight in expected.items():
        cells = " | ".join(f"{a * weight / (1 - a):.4g}" for a in alphas)
        assert f"| {name} | {weight:g} | {cells} |" in text, name
    assert "| fitnets | 100 | 33.33 | 100 | 300 |" in text       # one row by hand
    assert "RKD weighs its distance term 1 and its angle term 2, not the paper's 25 and 50" \
        in text and "grad" in text
    assert "Schedule: 1 epoch, SGD with learning rate 0.1" in text
    assert "240 epochs, SGD with learning rate 0.05" in text and "150, 180 and 210" in text
    assert "the epoch with the highest test accuracy" in text and "optimistic" in text
    assert "Completed runs by how they selected" not in text     # all as the study says


def test_methodology_selection_on_validation_and_runs_that_differ(tmp_path, monkeypatch):
    study = _study(tmp_path)
    write_run(study.experiments_dir, RunSpec("Digits", "ResNet20", 0))   # selected on test
    monkeypatch.setattr(study, "train_config", lambda spec: SimpleNamespace(
        selection="validation", validation_fraction=0.2))             # TrainConfig's fields
    text = _objective(write_methodology(study, tmp_path / "out")[0].read_text())
    assert "a validation split: a stratified 20 % of the training split, fixed by the data " \
           "set and the seed, that is never trained on" in text
    assert "never used to choose" in text and "highest test accuracy" not in text
    assert "Completed runs by how they selected best.pth: test: 1." in text


def test_methodology_states_the_precision_and_what_best_weights_are_chosen_by(tmp_path):
    """The hyper-parameter table gives the study's precision, and the checkpointing section
    names the accuracy best.pth is chosen by (not always 'test')."""
    (tmp_path / "a").mkdir()
    shipped = write_methodology(_study(tmp_path / "a"), tmp_path / "a" / "out")[0].read_text()
    assert ("| precision | auto: bf16 autocast on GPUs that support it, else fp16 with a "
            "gradient scaler; fp32 on CPU |") in shipped
    assert "the weights of its best test accuracy so far" in shipped
    (tmp_path / "b").mkdir()
    path = write_local_study(tmp_path / "b" / "study.toml", methods=["logit"], alphas=[0.5],
                       seeds=[0], extra="")
    path.write_text(path.read_text().replace(
        '[training]\n', '[training]\nprecision = "fp16"\nselection = "validation"\n', 1))
    study = load_study(path)
    assert study.training["precision"] == "fp16"
    markdown = write_methodology(study, tmp_path / "b" / "out")[0].read_text()
    assert ("| precision | fp16: fp16 autocast with a gradient scaler (a step with inf/NaN "
            "gradients is skipped) |") in markdown
    assert "the weights of its best validation accuracy so far" in markdown
    assert "best test accuracy so far" not in markdown


def test_methodology_study_smoothing_and_paper_rkd_weights(tmp_path):
    path = write_local_study(tmp_path / "study.toml", methods=["rkd"], alphas=[0.5],
                       extra="[method_options.rkd]\ndistance_weight = 25.0\n"
                             "angle_weight = 50.0\n")
    path.write_text(path.read_text().replace('device = "cpu"',
                                             'device = "cpu"\nlabel_smoothing = 0.05'))
    text = _objective(write_methodology(load_study(path), tmp_path / "out")[0].read_text())
    assert "Every run, teacher or student, trains with label smoothing 0.05" in text
    assert "as the paper and RepDistiller do" in text and "not the paper's" not in text
    assert "| rkd (distance) | 25 | 25 |" in text and "| rkd (angle) | 50 | 50 |" in text


def test_methodology_describes_earlier_code_runs_as_such(tmp_path, monkeypatch):
    root = copy_legacy_tree(tmp_path)
    monkeypatch.chdir(root)
    markdown = write_methodology(load_study("study.toml"), tmp_path / "out")[0].read_text()
    grid = markdown.split("## Experimental grid and training")[1].split("\n## ")[0]
    earlier = grid.index("8 runs (6 completed) were trained by the earlier research code, "
                         "not by kdlab")
    assert "0 runs were trained by kdlab" in grid and "RandomResizedCrop" in grid
    # said before kdlab's settings, which are labelled as kdlab's
    assert earlier < grid.index("The settings of the runs kdlab trains:") \
        < grid.index("| hyper-parameter | value |")
    assert "In kdlab's runs: augmentation" in grid
    assert "For kdlab's runs, each method's settings" in markdown
    assert "Completed runs by how they selected best.pth: test (earlier code): 6." in markdown
    # a study of kdlab's own runs says none of it
    (tmp_path / "plain").mkdir()
    plain = write_methodology(_study(tmp_path / "plain"), tmp_path / "out2")[0].read_text()
    assert "earlier" not in plain and "The settings of the runs kdlab trains" not in plain


def test_methodology_describes_crd_and_a_combination(tmp_path):
    path = write_local_study(tmp_path / "study.toml", methods=["crd", "crd+logit"], alphas=[0.5],
                       seeds=[0])
    markdown = write_methodology(load_study(path), tmp_path / "out")[0].read_text()
    text = _objective(markdown)
    assert ("16,384 entries of images of other classes" in text
            or "16384 entries of images of other classes" in text), text
    assert "temperature 0.07" in text and "momentum 0.5" in text and "first batch" in text
    # each part of the combination with its own weight (the defaults)
    assert f"| crd+logit (crd) | {method_defaults('crd')['weight']:g} |" in text
    assert f"| crd+logit (logit) | {method_defaults('logit')['weight']:g} |" in text
    citations = f"{method_class('crd').citation}; {method_class('logit').citation}"
    assert citations in markdown


def test_methodology_says_what_each_method_distils(tmp_path):
    """Each method's summary from the catalog, and an option's note only where the study sets
    it away from its default (standardize for dkd, not for logit)."""
    from kdlab.run import catalog

    methods = ["logit", "sp", "pkt", "cc", "vid", "dkd", "dist", "ofd", "reviewkd"]
    path = write_local_study(tmp_path / "study.toml", methods=methods, alphas=[0.5], seeds=[0],
                       extra="[method_options.dkd]\nstandardize = true\ntemperature = 2.0\n"
                             "[method_options.reviewkd]\nstudent_preact = true\n")
    markdown_path, latex_path = write_methodology(load_study(path), tmp_path / "out")
    markdown = markdown_path.read_text()
    section = markdown.split("## Distillation methods")[1].split("\n## ")[0]
    assert "What each method distils:" in section
    latex = latex_path.read_text()
    assert latex.isascii() and "1$\\times$1" in latex and "T$^2$" in latex
    for method in methods:
        assert f"- {method}: {catalog.METHODS[method].summary}" in section, method
    note = catalog.METHODS["dkd"].options["standardize"].note
    assert "Sun et al. 2024" in note and "base temperature 2" in note
    assert f"{catalog.METHODS['dkd'].summary} {note}" in section
    assert section.count(note) == 1                                # not under logit
    assert "(student_preact = true)" in section
    assert "mdistiller's OFD.py" in section and "evaluation mode" in section
    assert "hierarchical context loss" in section and "4×4, 2×2 and 1×1" in section


def test_each_method_s_own_paragraph_follows_the_options_its_runs_use(tmp_path):
    """CRD's and RKD's paragraphs come from their catalog entries (MethodFacts.methodology),
    once each, for a combination's part too, with the study's option values."""
    path = write_local_study(tmp_path / "study.toml", methods=["crd+logit", "rkd", "logit"],
                             extra='[method_options."crd+logit"]\n"crd.negatives" = 64\n'
                                   '"crd.feature_dim" = 32\n[method_options.rkd]\n'
                                   'distance_weight = 25.0\nangle_weight = 50.0\n')
    study = load_study(path)
    text = _objective(write_methodology(study, tmp_path / "out")[0].read_text())
    assert text.count("CRD embeds both networks' pooled vectors linearly into 32 dimensions") == 1
    assert "(2 × N × 32 floats)" in text and "and 64 entries of images of other classes" in text
    assert "temperature 0.07" in text and "momentum 0.5" in text      # RepDistiller's defaults
    assert text.count("RKD weighs its distance term 25 and its angle term 50, as the paper "
                      "and RepDistiller do.") == 1
    assert text.index("CRD embeds") < text.index("RKD weighs")       # the study's order
    (tmp_path / "plain").mkdir()
    plain = load_study(write_local_study(tmp_path / "plain" / "study.toml", methods=["logit"]))
    plain_text = _objective(write_methodology(plain, tmp_path / "plain" / "out")[0].read_text())
    assert "CRD embeds" not in plain_text and "RKD weighs" not in plain_text
