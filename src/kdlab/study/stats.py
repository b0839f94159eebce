"""Summaries over the seeds of one grid cell: mean, standard deviation, count and a 95 %
confidence interval of the mean, with one convention for every table and figure.

Convention: ``std`` is the sample standard deviation (n - 1); with a single seed it is
undefined (None), and so is the interval; with no values everything but ``n`` is None.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable

CONFIDENCE = 0.95


@dataclass(frozen=True)
class SeedSummary:
    n: int
    mean: float | None
    std: float | None
    ci_low: float | None     # Student-t interval of the mean at CONFIDENCE
    ci_high: float | None

    @property
    def ci_half_width(self) -> float | None:
        return None if self.ci_high is None else (self.ci_high - self.ci_low) / 2

    def to_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "std": self.std,
                "ci95": None if self.ci_low is None else [self.ci_low, self.ci_high]}

    def text(self, digits: int = 2) -> str:
        """'mean ± std (n=3)', 'mean (n=1)' or '-'."""
        if self.mean is None:
            return "-"
        if self.std is None:
            return f"{self.mean:.{digits}f} (n={self.n})"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f} (n={self.n})"


def summarize(values: Iterable[float]) -> SeedSummary:
    """Mean, sample std and the two-sided Student-t interval of the mean of ``values``
    (non-finite values are left out)."""
    data = [float(value) for value in values if value is not None and math.isfinite(value)]
    n = len(data)
    if n == 0:
        return SeedSummary(0, None, None, None, None)
    mean = statistics.fmean(data)
    if n == 1:
        return SeedSummary(1, mean, None, None, None)
    std = statistics.stdev(data)
    # scipy.special's Student-t quantile (what scipy.stats.t.ppf calls), without the
    # half-second import of scipy.stats on the status path.
    from scipy.special import stdtrit

    half = float(stdtrit(n - 1, 0.5 + CONFIDENCE / 2)) * std / math.sqrt(n)
    return SeedSummary(n, mean, std, mean - half, mean + half)
