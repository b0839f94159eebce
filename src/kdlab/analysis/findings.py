"""What a study found, computed from its tables: the statements ``report.html`` leads with.

Per data set and teacher–student pair:

- **CKA shifts.** For each method × alpha and each of the student's stages, how distillation
  moved the stage's linear CKA with the teacher (metrics.csv ``cka_linear``: the student's
  stage against the teacher's stage at the same position from the last). The baseline is the
  pure student against the same teacher seed (the 'pure' rows), so each seed gives one paired
  difference ``d_s = CKA_KD(s) − CKA_pure(s)``; their mean with a Student-t 95 % interval
  (:func:`kdlab.study.stats.summarize`) is the shift. A shift is *beyond the noise* when that
  interval excludes 0 — the across-seed noise of retraining both students, which is what a
  claim about a method must survive. With one seed there is no such interval: the finding
  then says so, and reports only whether the two networks' intervals over test samples
  (``cka_linear_ci_low``/``_high``, the bootstrap) separate — a statement about these fixed
  networks, not about the method.
- **Accuracy against alignment.** Across the pair's KD runs, Spearman's rank correlation
  between the last stage's CKA with the teacher and the test accuracy, with a 95 % interval
  from Fisher's z transform with Bonett & Wright's (2000) variance for Spearman's ρ,
  ``(1 + ρ²/2) / (n − 3)``; at least 4 runs are needed.

Every number comes from the tables; nothing here is fixed text about a method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..study.stats import summarize
from ..run.layout import format_alpha

CKA = "cka_linear"
ACCURACY = "test_acc"
PURE = "pure"
Z_95 = 1.959963984540054      # the standard normal's 97.5 % quantile
MIN_CORRELATION_RUNS = 4


@dataclass(frozen=True)
class Shift:
    """How a method × alpha moved one stage's CKA with the teacher, against the pure
    student: ``n`` paired seeds; ``mean``/``low``/``high`` their mean difference and its 95 %
    interval (None below 2 seeds); with one seed, ``separated`` says whether the two
    bootstrap intervals over test samples are disjoint (None when not recorded)."""

    method: str
    alpha: float | None
    stage: str
    n: int
    mean: float | None
    low: float | None
    high: float | None
    separated: bool | None = None

    @property
    def beyond_noise(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)

    @property
    def direction(self) -> str:
        """'raises', 'lowers' or '' (not beyond the noise)."""
        if not self.beyond_noise:
            return ""
        return "raises" if self.low > 0 else "lowers"


@dataclass(frozen=True)
class Correlation:
    """Spearman's ρ over ``n`` runs with its 95 % interval (None where it cannot be formed)."""

    n: int
    rho: float | None
    low: float | None
    high: float | None


def _per_seed(values, method: str, alpha: float | None, stage: str, metric: str) -> dict:
    """{seed: value} of one cell's metric, NaN left out (``values``: the data set and pair's
    :class:`kdlab.analysis.figures.common.Values`)."""
    return {seed: value for seed, value in values.seeds(method, alpha, stage, metric).items()
            if value == value}


def cka_shift(values, method: str, alpha: float | None, stage: str) -> Shift:
    """The shift of ``stage``'s CKA with the teacher by ``method`` at ``alpha`` in ``values``
    (one data set and pair of metrics.csv, as
    :class:`~kdlab.analysis.figures.common.Values`), paired by seed with the pure student."""
    distilled = _per_seed(values, method, alpha, stage, CKA)
    pure = _per_seed(values, PURE, None, stage, CKA)
    seeds = sorted(set(distilled) & set(pure))
    summary = summarize([distilled[seed] - pure[seed] for seed in seeds])
    separated = None
    if len(seeds) == 1:
        seed = seeds[0]
        bounds = [_per_seed(values, who, level, stage, f"{CKA}_ci_{end}").get(seed)
                  for who, level in ((method, alpha), (PURE, None)) for end in ("low", "high")]
        if None not in bounds:
            kd_low, kd_high, pure_low, pure_high = bounds
            separated = kd_low > pure_high or kd_high < pure_low
    return Shift(method, alpha, stage, summary.n, summary.mean, summary.ci_low,
                 summary.ci_high, separated)


def spearman_interval(x, y) -> Correlation:
    """Spearman's ρ of paired ``x``, ``y`` (non-finite pairs left out) with a 95 % interval:
    ``tanh(atanh ρ ± z·sqrt((1 + ρ²/2) / (n − 3)))`` (Bonett & Wright 2000)."""
    pairs = [(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)]
    n = len(pairs)
    if n < MIN_CORRELATION_RUNS or len({a for a, _ in pairs}) < 2 \
            or len({b for _, b in pairs}) < 2:
        return Correlation(n, None, None, None)
    from scipy.stats import spearmanr

    rho = float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)
    if abs(rho) >= 1.0 - 1e-12:   # a perfect order (up to rounding): no spread to give
        return Correlation(n, rho, rho, rho)
    half = Z_95 * math.sqrt((1 + rho * rho / 2) / (n - 3))
    centre = math.atanh(rho)
    return Correlation(n, rho, math.tanh(centre - half), math.tanh(centre + half))


def accuracy_alignment(values, cells: list[tuple[str, float | None]], stage: str) -> Correlation:
    """Spearman's ρ between ``stage``'s CKA with the teacher and the test accuracy over every
    KD run (method × alpha × seed of ``cells``) of ``values``."""
    xs, ys = [], []
    for method, alpha in cells:
        cka = _per_seed(values, method, alpha, stage, CKA)
        accuracy = _per_seed(values, method, alpha, "logits", ACCURACY)
        for seed in sorted(set(cka) & set(accuracy)):
            xs.append(cka[seed])
            ys.append(accuracy[seed])
    return spearman_interval(xs, ys)


def number(value: float, signed: bool = False) -> str:
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def shift_cell(shift: Shift) -> str:
    """A table cell: '+0.040 [+0.010, +0.070] ↑', '+0.010 (n=1)' or '—'."""
    if shift.n == 0:
        return "—"
    if shift.low is None:
        return f"{number(shift.mean, True)} (n=1)"
    arrow = {"raises": " ↑", "lowers": " ↓"}.get(shift.direction, "")
    return (f"{number(shift.mean, True)} [{number(shift.low, True)}, "
            f"{number(shift.high, True)}]{arrow}")


def cell_name(method: str, alpha: float | None) -> str:
    return method if alpha is None else f"{method} α{format_alpha(alpha)}"


def shift_sentences(shifts: list[Shift], last_stage: str) -> list[str]:
    """What the shifts support, computed: the last stage first, then the earlier stages; with
    one seed, what cannot be claimed."""
    measured = [shift for shift in shifts if shift.n]
    if not measured:
        return ["No distilled student has a representation paired with a pure student of the "
                "same seed yet: nothing can be said about what distillation moved."]
    sentences = []
    seeds = max(shift.n for shift in measured)
    if seeds < 2:
        separated = [shift for shift in measured if shift.separated and shift.stage == last_stage]
        sentences.append(
            "With one seed per cell there is no across-seed interval: no shift below can be "
            "claimed to survive retraining (a method's effect needs at least two seeds of it "
            "and of the pure student).")
        if separated:
            sentences.append(
                f"For these fixed networks only, the {last_stage} "
                "CKA with the teacher differs from the pure student's beyond "
                "the sampling of test images (disjoint bootstrap intervals): "
                + "; ".join(f"{cell_name(s.method, s.alpha)} {number(s.mean, True)}"
                            for s in separated) + ".")
        return sentences
    for stage_group, words in (([last_stage], f"At the last stage ({last_stage})"),
                               (sorted({s.stage for s in measured} - {last_stage}),
                                "At the earlier stages")):
        group = [shift for shift in measured if shift.stage in stage_group]
        if not group:
            continue
        moved = [shift for shift in group if shift.beyond_noise]
        if not moved:
            sentences.append(f"{words}, no method moves the CKA with the teacher beyond the "
                             "across-seed noise (every 95 % interval of the paired difference "
                             "from the pure student includes 0).")
            continue
        parts = [f"{cell_name(s.method, s.alpha)} {s.direction} it"
                 + ("" if len(stage_group) == 1 else f" at {s.stage}")
                 + f" by {number(s.mean, True)} [{number(s.low, True)}, {number(s.high, True)}]"
                 f" (n={s.n})" for s in moved]
        still = len({(s.method, s.alpha) for s in group}) - len({(s.method, s.alpha)
                                                                  for s in moved})
        sentences.append(f"{words}, beyond the across-seed noise: " + "; ".join(parts) + "."
                         + (f" The other {still} cell(s) are not distinguishable from the "
                            "pure student there." if still else ""))
    return sentences


def correlation_sentence(correlation: Correlation, stage: str) -> str:
    if correlation.rho is None:
        return (f"Accuracy against {stage} CKA with the teacher: {correlation.n} KD run(s) "
                f"with both; a rank correlation needs at least {MIN_CORRELATION_RUNS} runs "
                "with differing values.")
    text = (f"Across {correlation.n} KD runs, test accuracy and {stage} CKA with the teacher "
            f"have Spearman ρ = {correlation.rho:+.2f} [{correlation.low:+.2f}, "
            f"{correlation.high:+.2f}]")
    if correlation.low > 0:
        return text + ": runs more aligned with the teacher are the more accurate ones."
    if correlation.high < 0:
        return text + ": runs more aligned with the teacher are the less accurate ones."
    return text + ": the interval includes 0, so no rank relation can be claimed."
