"""Significance over seeds: the mean and standard error of differences paired by seed, and
a two-sided paired t-test at one confidence level (Student's t with n - 1 degrees of
freedom, its p-value from the regularized incomplete beta function). Pure Python: the API
judges with it, torch-free, and it needs no scipy."""

from __future__ import annotations

import functools
import math
import statistics
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the records import CONFIDENCE from here, for their descriptions
    from .verdict_records import MeanSE, PairedTest


def _finite(values: list[float | None] | None) -> list[float]:
    return [v for v in values or [] if v is not None and math.isfinite(v)]


CONFIDENCE = 0.95
"""The confidence level of `significant` and of every interval: a difference is significant
when a two-sided paired t-test rejects "no difference" at this level (p < 1 - CONFIDENCE),
which is when its interval (mean ± t·SE, Student's t with n - 1 degrees of freedom)
excludes 0."""


def mean_se(values: list[float | None]) -> MeanSE:
    """Mean and standard error of the mean (sample SD / sqrt(n)); SE needs n >= 2."""
    xs = _finite(values)
    n = len(xs)
    return {
        "mean": statistics.fmean(xs) if xs else None,
        "se": statistics.stdev(xs) / math.sqrt(n) if n >= 2 else None,
        "n": n,
    }


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function, by the modified Lentz method
    (Numerical Recipes' betacf); converges fast for x < (a + 1) / (a + b + 2)."""
    tiny = 1e-300  # stands in for a zero denominator

    def nonzero(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / nonzero(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 10_000):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d, c = 1.0 / nonzero(1.0 + even * d), nonzero(1.0 + even / c)
        h *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d, c = 1.0 / nonzero(1.0 + odd * d), nonzero(1.0 + odd / c)
        h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            return h
    raise ArithmeticError(f"incomplete beta I_x({a}, {b}) at x = {x} did not converge")


def regularized_beta(a: float, b: float, x: float, one_minus_x: float | None = None) -> float:
    """The regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1.
    `one_minus_x`, when the caller has it exactly, spares the rounding of 1 - x near 1."""
    y = 1.0 - x if one_minus_x is None else one_minus_x
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    log_front = (
        a * math.log(x) + b * math.log(y) + math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    )
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, y) / b


def t_p_value(t: float, df: int) -> float:
    """Two-sided p-value of Student's t: P(|T| >= |t|) with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if math.isinf(t):
        return 0.0
    # P(|T| >= |t|) = I_{df / (df + t²)}(df / 2, 1 / 2)
    return regularized_beta(df / 2, 0.5, df / (df + t * t), t * t / (df + t * t))


@functools.lru_cache(maxsize=256)
def t_critical(df: int, confidence: float = CONFIDENCE) -> float:
    """The t beyond which a two-sided test rejects at `confidence`: P(|T| > t) = 1 -
    confidence with `df` degrees of freedom (12.706 for 1, 4.303 for 2, 2.262 for 9 at 95%).
    The exact inverse of t_p_value, by bisection: the p-value falls as t grows."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    alpha = 1.0 - confidence
    low, high = 0.0, 1.0
    while t_p_value(high, df) > alpha:
        low, high = high, 2.0 * high
    while True:
        mid = (low + high) / 2
        if mid in (low, high):  # as close as floats get
            return high
        if t_p_value(mid, df) > alpha:
            low = mid
        else:
            high = mid


def paired_t_test(differences: list[float | None], confidence: float = CONFIDENCE) -> PairedTest:
    """Differences paired by seed (each run minus the dense run of its seed), tested for a
    mean of 0: a two-sided one-sample t-test with n - 1 degrees of freedom (None and
    non-finite differences left out).

    `mean`, `se`, `n` as mean_se; `df`; `t` = mean / SE (None where SE is 0: every seed
    differs alike, p 0); `t_critical`; `p_value`; `ci_low`, `ci_high`, the interval mean ±
    t_critical·SE; `confidence`; `significant`, True when the interval excludes 0 (p <
    1 - confidence). With fewer than 2 differences there is no SE: all of these are None.
    """
    stat = mean_se(differences)
    mean, se = stat["mean"], stat["se"]
    if mean is None or se is None:
        return {**stat, "df": None, "t": None, "t_critical": None, "p_value": None,
                "ci_low": None, "ci_high": None, "confidence": confidence,
                "significant": None}  # fmt: skip
    df = stat["n"] - 1
    critical = t_critical(df, confidence)
    t = mean / se if se > 0 else None
    return {
        **stat,
        "df": df,
        "t": t,
        "t_critical": critical,
        "p_value": t_p_value(t, df) if t is not None else float(mean == 0),
        "ci_low": mean - critical * se,
        "ci_high": mean + critical * se,
        "confidence": confidence,
        "significant": abs(mean) > critical * se,
    }


def confidence_label(confidence: float = CONFIDENCE) -> str:
    """'95%': how a confidence level is written."""
    return f"{100 * confidence:g}%"
