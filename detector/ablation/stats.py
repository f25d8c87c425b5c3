"""Statistics of an ablation: mean ± std over seeds, and paired differences to a baseline with a confidence
interval and a verdict.

Runs of different configs with the same seed share the model initialisation and the sampling order, so the
comparison is paired by seed: d_s = x_config(s) − x_baseline(s) over the seeds s both finished. The interval is
Student's t over those differences, mean(d) ± t(1 − α/2, n − 1) · sd(d) / √n with sd the sample standard
deviation (n − 1), which assumes the per-seed differences are roughly normal; with n < 2 there is no interval.
The verdict says whether the interval excludes 0. Undefined values (COCO's -1, a missing key) are left out.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Mapping

from detector.errors import DetectorError

CONFIDENCE = 0.95
VERDICTS = ("better", "worse", "no evidence")
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
    ci_low: float                # the Student-t interval; nan with fewer than 2 pairs
    ci_high: float
    verdict: str                 # one of VERDICTS: better / worse when the interval excludes 0 (higher is better)


def defined(value) -> bool:
    """A metric value that counts: a finite number >= 0 (COCO marks an undefined slice with -1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def mean_std(values: Iterable) -> MeanStd:
    kept = [float(v) for v in values if defined(v)]
    if not kept:
        return MeanStd(0, NAN, NAN)
    return MeanStd(len(kept), statistics.fmean(kept), statistics.stdev(kept) if len(kept) > 1 else NAN)


def t_critical(confidence: float, dof: int) -> float:
    """The two-sided Student-t critical value, ``scipy.stats.t.ppf((1 + confidence) / 2, dof)``."""
    try:
        from scipy.stats import t
    except ImportError:
        raise DetectorError("the report's confidence intervals need scipy, which is not installed: pip install "
                            "scipy; then the same tools/ablate.py command with --report-only rebuilds the report "
                            "from the run folders (nothing trains again)") from None
    return float(t.ppf((1 + confidence) / 2, dof))


def paired_difference(config: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = CONFIDENCE) -> PairedDifference:
    """``config`` and ``baseline`` map seed -> metric value; see the module docstring."""
    seeds = sorted(s for s in config if s in baseline and defined(config[s]) and defined(baseline[s]))
    diffs = [float(config[s]) - float(baseline[s]) for s in seeds]
    n = len(diffs)
    if n < 2:
        return PairedDifference(n, diffs[0] if diffs else NAN, NAN, NAN, NAN, "no evidence")
    mean, std = statistics.fmean(diffs), statistics.stdev(diffs)
    half = t_critical(confidence, n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = "better" if low > 0 else "worse" if high < 0 else "no evidence"
    return PairedDifference(n, mean, std, low, high, verdict)
