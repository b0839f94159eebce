"""The statements report.html leads with (kdlab.analysis.findings), against independent
computations: the paired CKA shift and its Student-t interval (scipy.stats.t), Spearman's ρ
(scipy) with the Bonett-Wright interval written out here, the sentences' claims and
refusals, and the report's order (findings first, glossary and galleries folded)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from kdlab.analysis import findings
from kdlab.analysis.figures.common import Values
from builders import synthetic_representation

STAGES = ("layer1", "layer2", "layer3")


def frame_of(values: dict) -> Values:
    """{(method, alpha, seed, layer, metric): value} -> metrics.csv's columns, looked up."""
    return Values(pd.DataFrame([{"dataset": "Digits", "pair": "ResNet20 -> ResNet8", "method": method,
                          "alpha": float("nan") if alpha is None else alpha, "seed": seed,
                          "layer": layer, "metric": metric, "value": value}
                         for (method, alpha, seed, layer, metric), value in values.items()]))


PURE_CKA = {0: 0.70, 1: 0.72, 2: 0.69}
UP = {0: 0.78, 1: 0.81, 2: 0.77}          # clearly above the pure student at every seed
DOWN = {0: 0.60, 1: 0.58, 2: 0.63}
NOISY = {0: 0.80, 1: 0.62, 2: 0.71}       # differences +0.10, -0.10, +0.02


def three_seed_frame(leave_out=lambda key: False) -> Values:
    """``leave_out(key)``: entries not written."""
    values = {}
    for seed in range(3):
        for stage in STAGES:
            values[("pure", None, seed, stage, "cka_linear")] = PURE_CKA[seed]
            values[("logit", 0.5, seed, stage, "cka_linear")] = UP[seed]
            values[("rkd", 0.5, seed, stage, "cka_linear")] = DOWN[seed] if stage == "layer3" \
                else PURE_CKA[seed] + (0.01, -0.01, 0.0)[seed]
            values[("nst", 0.5, seed, stage, "cka_linear")] = NOISY[seed]
    return frame_of({key: value for key, value in values.items() if not leave_out(key)})


def test_the_shift_is_the_paired_mean_difference_with_a_t_interval():
    shift = findings.cka_shift(three_seed_frame(), "nst", 0.5, "layer3")
    differences = np.array([NOISY[s] - PURE_CKA[s] for s in range(3)])
    low, high = scipy_stats.t.interval(0.95, 2, loc=differences.mean(),
                                       scale=scipy_stats.sem(differences))
    assert shift.n == 3
    assert shift.mean == pytest.approx(differences.mean(), abs=1e-12)
    assert (shift.low, shift.high) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert not shift.beyond_noise and shift.direction == ""
    up = findings.cka_shift(three_seed_frame(), "logit", 0.5, "layer3")
    down = findings.cka_shift(three_seed_frame(), "rkd", 0.5, "layer3")
    assert up.direction == "raises" and up.low > 0
    assert down.direction == "lowers" and down.high < 0


def test_seeds_are_paired_and_a_missing_partner_is_left_out():
    frame = three_seed_frame(leave_out=lambda key: key[0] == "pure" and key[2] == 2)
    shift = findings.cka_shift(frame, "logit", 0.5, "layer3")
    assert shift.n == 2
    assert shift.mean == pytest.approx(np.mean([UP[s] - PURE_CKA[s] for s in (0, 1)]))
    assert findings.cka_shift(frame, "dkd", 0.5, "layer3").n == 0


def test_one_seed_has_no_interval_and_reports_whether_the_sample_intervals_separate():
    values = {("pure", None, 0, "layer3", "cka_linear"): 0.70,
              ("pure", None, 0, "layer3", "cka_linear_ci_low"): 0.66,
              ("pure", None, 0, "layer3", "cka_linear_ci_high"): 0.74,
              ("logit", 0.5, 0, "layer3", "cka_linear"): 0.80,
              ("logit", 0.5, 0, "layer3", "cka_linear_ci_low"): 0.76,
              ("logit", 0.5, 0, "layer3", "cka_linear_ci_high"): 0.84,
              ("nst", 0.5, 0, "layer3", "cka_linear"): 0.73,
              ("nst", 0.5, 0, "layer3", "cka_linear_ci_low"): 0.69,
              ("nst", 0.5, 0, "layer3", "cka_linear_ci_high"): 0.77}
    frame = frame_of(values)
    logit = findings.cka_shift(frame, "logit", 0.5, "layer3")
    nst = findings.cka_shift(frame, "nst", 0.5, "layer3")
    assert (logit.n, logit.low, logit.separated) == (1, None, True)
    assert nst.separated is False and not logit.beyond_noise
    sentences = " ".join(findings.shift_sentences([logit, nst], "layer3"))
    assert "no shift below can be claimed to survive retraining" in sentences
    assert "logit α0.5 +0.100" in sentences and "nst" not in sentences
    assert findings.shift_cell(logit) == "+0.100 (n=1)"


def test_sentences_name_what_moved_in_which_direction_and_what_did_not():
    frame = three_seed_frame()
    shifts = [findings.cka_shift(frame, method, 0.5, stage)
              for method in ("logit", "rkd", "nst") for stage in STAGES]
    sentences = findings.shift_sentences(shifts, "layer3")
    last = sentences[0]
    assert last.startswith("At the last stage (layer3), beyond the across-seed noise: ")
    assert "logit α0.5 raises it by +0.083" in last and "rkd α0.5 lowers it by -0.100" in last
    assert "The other 1 cell(s) are not distinguishable" in last and "nst" not in last
    earlier = sentences[1]
    assert "logit α0.5 raises it at layer1" in earlier and "rkd" not in earlier
    cell = findings.shift_cell(shifts[2])
    assert cell.endswith(" ↑") and cell.startswith("+0.083 [")
    nothing = findings.shift_sentences([shift for shift in shifts if shift.method == "nst"],
                                       "layer3")
    assert "no method moves the CKA with the teacher beyond the across-seed noise" in nothing[0]
    assert findings.shift_sentences([], "layer3")[0].startswith("No distilled student")


def bonett_wright(x, y):
    """Spearman's ρ (scipy) and tanh(atanh ρ ± 1.96 sqrt((1 + ρ²/2)/(n − 3)))."""
    rho = scipy_stats.spearmanr(x, y).statistic
    half = scipy_stats.norm.ppf(0.975) * math.sqrt((1 + rho ** 2 / 2) / (len(x) - 3))
    return rho, math.tanh(math.atanh(rho) - half), math.tanh(math.atanh(rho) + half)


def test_the_rank_correlation_and_its_interval_equal_the_formula():
    generator = np.random.default_rng(3)
    x = generator.normal(size=30)
    y = 0.6 * x + generator.normal(size=30)
    correlation = findings.spearman_interval(list(x), list(y))
    rho, low, high = bonett_wright(x, y)
    assert correlation.n == 30
    assert (correlation.rho, correlation.low, correlation.high) == (
        pytest.approx(rho, abs=1e-12), pytest.approx(low, abs=1e-12),
        pytest.approx(high, abs=1e-12))
    assert low > 0
    sentence = findings.correlation_sentence(correlation, "layer3")
    assert f"Spearman ρ = {rho:+.2f} [{low:+.2f}, {high:+.2f}]" in sentence
    assert "more aligned with the teacher are the more accurate" in sentence
    # too few runs, constant values and non-finite pairs
    assert findings.spearman_interval([0.1, 0.2, 0.3], [1.0, 2.0, 3.0]).rho is None
    assert findings.spearman_interval([0.5] * 5, [1.0, 2.0, 3.0, 4.0, 5.0]).rho is None
    nan_left_out = findings.spearman_interval(list(x) + [float("nan")], list(y) + [1.0])
    assert nan_left_out.n == 30 and nan_left_out.rho == pytest.approx(rho)
    assert "no rank relation can be claimed" in findings.correlation_sentence(
        findings.Correlation(10, 0.1, -0.5, 0.6), "layer3")


def test_accuracy_alignment_pairs_each_run_s_cka_with_its_accuracy():
    values = {}
    accuracies = {("logit", 0): 90.0, ("logit", 1): 92.0, ("rkd", 0): 80.0, ("rkd", 1): 85.0,
                  ("nst", 0): 70.0}
    ckas = {("logit", 0): 0.8, ("logit", 1): 0.85, ("rkd", 0): 0.6, ("rkd", 1): 0.7,
            ("nst", 0): 0.5, ("nst", 1): 0.9}        # nst seed 1: no accuracy, left out
    for (method, seed), value in ckas.items():
        values[(method, 0.5, seed, "layer3", "cka_linear")] = value
    for (method, seed), value in accuracies.items():
        values[(method, 0.5, seed, "logits", "test_acc")] = value
    correlation = findings.accuracy_alignment(frame_of(values), [("logit", 0.5), ("rkd", 0.5),
                                                                 ("nst", 0.5)], "layer3")
    keys = sorted(accuracies)
    rho = scipy_stats.spearmanr([ckas[k] for k in keys], [accuracies[k] for k in keys]).statistic
    assert correlation.n == 5 and correlation.rho == pytest.approx(rho) == pytest.approx(1.0)
    assert correlation.low == correlation.high == correlation.rho   # a perfect order


def test_the_findings_accuracy_table_shows_the_published_numbers_beside_kdlab_s():
    from kdlab.analysis.report import _accuracy_html
    from kdlab.study.references import Reference, read_references
    from kdlab.study.study_file import Pair

    pair = Pair("ResNet32x4", "ResNet8x4")
    accuracy = pd.DataFrame([
        {"dataset": "Cifar100", "pair": pair.label, "method": method, "alpha": float("nan"),
         "accuracy_mean": mean, "accuracy_std": float("nan"), "n_seeds": 1,
         "seeds_expected": 3, "selected_by": "max_acc", "selected_mean": mean,
         "selected_std": float("nan"), "selected_ci95_low": float("nan"),
         "selected_ci95_high": float("nan"), "selected_n": 1, "final_acc_mean": mean,
         "final_acc_n": 1, "chosen_on": "test"}
        for method, mean in (("teacher", 79.0), ("pure", 72.0), ("crd", 75.0), ("ofd", 74.0))])
    references = [reference for reference in read_references()
                  if (reference.teacher, reference.student) == (pair.teacher, pair.student)]
    table = _accuracy_html(accuracy, "Cifar100", pair, references)
    assert "<th>published (%)</th>" in table
    assert "75.51 (CRD (Tian et al. ICLR 2020) Table 1, last)" in table      # CRD's row
    assert "79.42 (CRD (Tian et al. ICLR 2020) Table 1, last)" in table      # the teacher's
    ofd_row = table.split("<td>ofd</td>", 1)[1].split("</tr>", 1)[0]
    assert ofd_row.endswith("<td>—</td>")                                   # none published
    assert "published" not in _accuracy_html(accuracy, "Cifar100", pair, None)
    assert isinstance(references[0], Reference)


BENCHMARK_STUDY = """name = "bench"
datasets = ["Digits"]
teacher = "ResNet56"
student = "ResNet20"
methods = ["logit", "rkd"]
seeds = [0, 1, 2]
experiments_dir = "experiments"
analysis_dir = "analysis"
[training]
objective = "benchmark"
"""


def test_a_benchmark_study_is_analysed_with_its_findings_and_per_method_figures(tmp_path):
    """A study on the benchmark's objective (no alpha level), three seeds of synthetic
    representations: logit's students share more of the teacher's features than the pure
    student, rkd's less. The findings say so beyond the noise, its per-method figures and the
    accuracy-alignment figure are drawn, and no alpha sweep is."""
    from kdlab.run import layout
    from kdlab.analysis import analyze
    from kdlab.analysis.store import save_representation
    from kdlab.study.study_file import load_study

    (tmp_path / "study.toml").write_text(BENCHMARK_STUDY)
    study = load_study(tmp_path / "study.toml")
    study.experiments_dir, study.analysis_dir = tmp_path / "experiments", tmp_path / "analysis"
    closeness = {"teacher": 1.0, "pure": 0.3, "logit": 0.7, "rkd": 0.05}
    for index, entry in enumerate(analyze.expected_entries(study)):
        assert entry.alpha is None
        save_representation(entry.path, synthetic_representation(100 + index,
                                                                 closeness[entry.method]))
    analyze.analyze_study(study, jobs=1, log=lambda line: None, show_progress=False,
                          bootstrap=20)
    figures = layout.figures_dir(study.analysis_dir, "bench", "Digits")
    assert (figures / "per_method" / "logit" / "cka_same_layer.png").is_file()
    assert (figures / "sweeps" / "accuracy_vs_cka_layer3.png").is_file()
    assert not list((figures / "sweeps").glob("sweep_*.png"))
    html = layout.report_path(study.analysis_dir, "bench").read_text()
    start = html.index("<h2>Findings</h2>")
    section = html[start:html.index("<h2>", start + 1)]
    assert "At the last stage (layer3), beyond the across-seed noise: logit raises it" in section
    assert "rkd lowers it" in section and "(n=3)" in section
    assert "cka_same_layer.png" in section
