"""Statistics of an ablation, paired by seed (runs with the same seed share the initialisation and
sampling order): d_s = x_config(s) − x_baseline(s) over the seeds both finished; a Student-t
interval and the paired t test. The testable differences of a report are one Holm family
(:func:`holm`, :func:`verdict`). Undefined values (COCO's -1, a missing key) are left out.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Sequence

from detector.errors import DetectorError

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE  # the level of the tests, two-sided
POWER = 0.8  # of detectable_effect
MIN_PAIRS = 3  # fewer pairs: "too few seeds"
ZERO_SD = 1e-9  # an sd below this (metrics are fractions 0..1) is float noise, not spread
NAN = float("nan")


@dataclass(frozen=True)
class MeanStd:
    n: int
    mean: float  # nan without values
    std: float  # sample standard deviation; nan with fewer than 2 values


@dataclass(frozen=True)
class PairedDifference:
    n: int  # seeds present (and defined) on both sides
    mean: float  # mean of config − baseline; nan without pairs
    std: float  # sample standard deviation of the differences; nan with fewer than 2 pairs
    ci_low: float  # the Student-t interval (uncorrected); nan with fewer than 2 pairs
    ci_high: float
    p: float  # two-sided paired t test, uncorrected; nan unless testable
    p_holm: float = NAN  # the rest: set by the report, over its family of tests (report.compare)
    detectable: float = NAN
    verdict: str = ""
    family: str = ""  # "primary" (pre-registered), "exploratory" or "" (no pre-registered family)
    margin: float = NAN  # the equivalence margin of its TOST
    p_tost: float = NAN  # TOST's p (uncorrected) and Holm-adjusted over the primary family
    p_tost_holm: float = NAN
    sim_low: float = NAN  # the simultaneous interval of a primary test (Bonferroni over the family)
    sim_high: float = NAN

    @property
    def testable(self) -> bool:
        return self.n >= MIN_PAIRS and self.std >= ZERO_SD


def defined(value) -> bool:
    """A metric value that counts: a finite number >= 0 (COCO marks an undefined slice with -1)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def mean_std(values: Iterable) -> MeanStd:
    kept = [float(v) for v in values if defined(v)]
    if not kept:
        return MeanStd(0, NAN, NAN)
    return MeanStd(
        len(kept), statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else NAN
    )


def _scipy_stats():
    try:
        import scipy.stats
    except ImportError:
        raise DetectorError(
            "the report's confidence intervals need scipy, which is not installed: pip install "
            "scipy; then the same tools/ablate.py command with --report-only rebuilds the report "
            "from the run folders (nothing trains again)"
        ) from None
    return scipy.stats


def paired_difference(
    config: Mapping[int, float], baseline: Mapping[int, float]
) -> PairedDifference:
    """``config`` and ``baseline`` map seed -> metric value."""
    diffs = [
        float(config[s]) - float(baseline[s])
        for s in sorted(config)
        if s in baseline and defined(config[s]) and defined(baseline[s])
    ]
    n = len(diffs)
    if n < 2:
        return PairedDifference(n, diffs[0] if diffs else NAN, NAN, NAN, NAN, NAN)
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    d = PairedDifference(n, mean, std, *_t_interval(mean, std, n, CONFIDENCE), NAN)
    if not d.testable:
        return d
    return replace(d, p=float(2 * _scipy_stats().t.sf(abs(mean) / (std / math.sqrt(n)), n - 1)))


def _t_interval(mean: float, std: float, n: int, confidence: float) -> tuple[float, float]:
    """The two-sided Student-t interval of the mean of ``n`` values of sd ``std``."""
    half = float(_scipy_stats().t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
    return mean - half, mean + half


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment, in input order: p_holm(i) = min(1, max over j <= i of (m − j +
    1) · p(j)) over the m sorted p values; a nan (no test) stays nan and is not counted."""
    order = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted, running = [NAN] * len(p_values), 0.0
    for rank, (p, i) in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p))
        adjusted[i] = running
    return adjusted


def tost(d: PairedDifference, margin: float) -> float:
    """Schuirmann's two one-sided paired t tests that the true mean difference lies within
    ±``margin``: the larger of P(T >= (mean + margin) / se) (against mean <= −margin) and
    P(T <= (mean − margin) / se) (against mean >= margin), T ~ t(n − 1); below α the difference is
    equivalent to 0 within the margin. nan unless ``d`` is testable."""
    if not d.testable:
        return NAN
    t, se = _scipy_stats().t, d.std / math.sqrt(d.n)
    lower = t.sf((d.mean + margin) / se, d.n - 1)
    upper = t.cdf((d.mean - margin) / se, d.n - 1)
    return float(max(lower, upper))


def pooled_sd(diffs: Iterable[PairedDifference]) -> float:
    """The sd of the paired differences pooled over configs: sqrt(Σ (n − 1) sd² / Σ (n − 1)) over
    those with 2 or more pairs; nan without any."""
    kept = [(d.n - 1, d.std) for d in diffs if d.n >= 2 and not math.isnan(d.std)]
    dof = sum(k for k, _ in kept)
    return math.sqrt(sum(k * sd**2 for k, sd in kept) / dof) if dof else NAN


def simultaneous_interval(d: PairedDifference, tests: int) -> tuple[float, float]:
    """The Student-t interval of ``d`` at confidence 1 − α / ``tests`` (Bonferroni): the ``tests``
    intervals of a family hold together with probability >= 1 − α; nans with fewer than 2 pairs."""
    if d.n < 2 or math.isnan(d.std):
        return NAN, NAN
    return _t_interval(d.mean, d.std, d.n, 1 - ALPHA / tests)


def seeds_needed(std: float, effect: float, alpha: float, most: int = 100) -> int | None:
    """The fewest pairs (2 to ``most``) at which :func:`detectable_effect` is <= ``effect``: the
    seeds a paired t test at ``alpha`` needs to find ``effect`` with :data:`POWER`; None beyond."""
    if math.isnan(std):
        return None
    return next((n for n in range(2, most + 1) if detectable_effect(std, n, alpha) <= effect), None)


def detectable_effect(std: float, n: int, alpha: float = ALPHA) -> float:
    """The smallest true mean difference a two-sided paired t test at ``alpha`` over ``n`` pairs of
    sd ``std`` rejects with probability :data:`POWER`: λ · sd / √n, λ from the noncentral t
    (``scipy.stats.nct``); nan with n < 2."""
    if n < 2 or math.isnan(std):
        return NAN
    stats, dof = _scipy_stats(), n - 1  # first: without scipy, its one-line error
    from scipy.optimize import brentq

    crit = stats.t.ppf(1 - alpha / 2, dof)

    def shortfall(nc: float) -> float:
        # both tails (cdf(-crit) can be nan)
        return stats.nct.sf(crit, dof, nc) + stats.nct.sf(crit, dof, -nc) - POWER

    high = crit + 1.0
    while shortfall(high) < 0:
        high *= 2
    return float(brentq(shortfall, 0.0, high, xtol=1e-10)) * std / math.sqrt(n)


def verdict(
    d: PairedDifference,
    p_holm: float,
    failed: str = "",
    baseline_failed: str = "",
    p_tost_holm: float = NAN,
) -> str:
    """better / worse when ``d`` is testable and ``p_holm`` < :data:`ALPHA`; else equivalent when
    TOST's ``p_tost_holm`` < :data:`ALPHA`; else "too few seeds" or "no evidence". Failed seeds
    bias the survivors: the config's (``failed``) block better, the baseline's block worse, and
    either blocks equivalent."""
    if not d.testable:
        return "too few seeds"
    if not p_holm < ALPHA:
        if not p_tost_holm < ALPHA:
            return "no evidence"
        if failed or baseline_failed:
            return f"no verdict: {failed or 'baseline ' + baseline_failed}"
        return f"equivalent within ±{100 * d.margin:.3g}"
    if d.mean > 0:
        return f"no verdict: {failed}" if failed else "better"
    return f"no verdict: baseline {baseline_failed}" if baseline_failed else "worse"
