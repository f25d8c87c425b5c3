"""Statistics of an ablation: mean ± std over seeds, and paired differences to a baseline with a confidence
interval, a p value, the effect the seeds could detect, and a verdict corrected for multiple testing.

Runs of different configs with the same seed share the model initialisation and the sampling order, so the
comparison is paired by seed: d_s = x_config(s) − x_baseline(s) over the seeds s both finished. The interval is
Student's t over those differences, mean(d) ± t(1 − α/2, n − 1) · sd(d) / √n with sd the sample standard
deviation (n − 1), which assumes the per-seed differences are roughly normal; with n < 2 there is no interval.
The p value is the two-sided paired t test of the same differences (``scipy.stats.ttest_rel``).

A difference is *testable* with at least :data:`MIN_PAIRS` pairs and a non-zero sd (all differences equal give a
zero-width interval and no test); otherwise its verdict is "too few seeds". The testable differences of a report
are one family: :func:`holm` adjusts their p values, and a verdict is better / worse only when the Holm-adjusted
p < α (:func:`verdict`). :func:`detectable_effect` is the smallest true difference such a test finds with 80%
power. Undefined values (COCO's -1, a missing key) are left out.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from detector.errors import DetectorError

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE           # the level of the tests, two-sided
POWER = 0.8                      # of detectable_effect
MIN_PAIRS = 3                    # fewer pairs: "too few seeds"
ZERO_SD = 1e-9                   # an sd below this (metrics are fractions 0..1) is zero: float noise, not spread
VERDICTS = ("better", "worse", "no evidence", "too few seeds")  # and "no verdict: ..." (see verdict())
NAN = float("nan")


@dataclass(frozen=True)
class MeanStd:
    n: int
    mean: float                  # nan without values
    std: float                   # sample standard deviation; nan with fewer than 2 values


@dataclass(frozen=True)
class PairedDifference:
    n: int                       # seeds present (and defined) on both sides
    mean: float                  # mean of config − baseline; nan without pairs
    std: float                   # sample standard deviation of the differences; nan with fewer than 2 pairs
    ci_low: float                # the Student-t interval (uncorrected); nan with fewer than 2 pairs
    ci_high: float
    p: float                     # two-sided paired t test, uncorrected; nan unless testable

    @property
    def testable(self) -> bool:
        return self.n >= MIN_PAIRS and self.std >= ZERO_SD


def defined(value) -> bool:
    """A metric value that counts: a finite number >= 0 (COCO marks an undefined slice with -1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def mean_std(values: Iterable) -> MeanStd:
    kept = [float(v) for v in values if defined(v)]
    if not kept:
        return MeanStd(0, NAN, NAN)
    return MeanStd(len(kept), statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else NAN)


def _scipy_stats():
    try:
        import scipy.stats
    except ImportError:
        raise DetectorError("the report's confidence intervals need scipy, which is not installed: pip install "
                            "scipy; then the same tools/ablate.py command with --report-only rebuilds the report "
                            "from the run folders (nothing trains again)") from None
    return scipy.stats


def t_critical(confidence: float, dof: int) -> float:
    """The two-sided Student-t critical value, ``scipy.stats.t.ppf((1 + confidence) / 2, dof)``."""
    return float(_scipy_stats().t.ppf((1 + confidence) / 2, dof))


def paired_difference(config: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = CONFIDENCE) -> PairedDifference:
    """``config`` and ``baseline`` map seed -> metric value; see the module docstring."""
    seeds = sorted(s for s in config if s in baseline and defined(config[s]) and defined(baseline[s]))
    diffs = [float(config[s]) - float(baseline[s]) for s in seeds]
    n = len(diffs)
    if n < 2:
        return PairedDifference(n, diffs[0] if diffs else NAN, NAN, NAN, NAN, NAN)
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t_critical(confidence, n - 1) * std / math.sqrt(n)
    d = PairedDifference(n, mean, std, mean - half, mean + half, NAN)
    if not d.testable:
        return d
    p = _scipy_stats().ttest_rel([float(config[s]) for s in seeds], [float(baseline[s]) for s in seeds]).pvalue
    return PairedDifference(n, mean, std, d.ci_low, d.ci_high, float(p))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment, in input order: with the m defined p values sorted p(1) <= ... <= p(m),
    p_holm(i) = min(1, max over j <= i of (m − j + 1) · p(j)). A nan (no test) stays nan and is not counted."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [NAN] * len(p_values), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def detectable_effect(std: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean difference that a two-sided paired t test at level ``alpha`` over ``n`` pairs with
    sample sd ``std`` rejects with probability ``power``: exact, from the noncentral t (``scipy.stats.nct``),
    δ = λ · sd / √n with λ solving P(|T'| > t(1 − α/2, n − 1)) = power for T' ~ nct(n − 1, λ) (brentq). nan
    with n < 2."""
    if n < 2 or math.isnan(std):
        return NAN
    from scipy.optimize import brentq
    stats = _scipy_stats()
    dof = n - 1
    crit = stats.t.ppf(1 - alpha / 2, dof)

    def shortfall(nc: float) -> float:
        return stats.nct.sf(crit, dof, nc) + stats.nct.sf(crit, dof, -nc) - power  # both tails (cdf(-crit) can be nan)

    high = crit + 1.0
    while shortfall(high) < 0:
        high *= 2
    return float(brentq(shortfall, 0.0, high, xtol=1e-10)) * std / math.sqrt(n)


def verdict(d: PairedDifference, p_holm: float, failed: str = "", baseline_failed: str = "",
            alpha: float = ALPHA) -> str:
    """better / worse when ``d`` is testable and ``p_holm`` < ``alpha`` (higher is better); "too few seeds" when
    not testable; else "no evidence". Failed runs bias what survives: ``failed`` (e.g. "failed 1 of 5 seeds", the
    config's) turns better into "no verdict: failed 1 of 5 seeds", ``baseline_failed`` (the baseline's) turns
    worse into "no verdict: baseline failed ..."."""
    if not d.testable:
        return "too few seeds"
    if not p_holm < alpha:
        return "no evidence"
    if d.mean > 0:
        return f"no verdict: {failed}" if failed else "better"
    return f"no verdict: baseline {baseline_failed}" if baseline_failed else "worse"
