"""Statistics of the experiment tables: mean and sample standard deviation over seeds, and the 95 %
Student-t interval of a paired difference (issue 15: a claim carries seeds and an interval)."""

from __future__ import annotations

import math


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0


# Student's t quantile t(0.975, df) for df = 1..30 (two-sided 95 %); beyond 30 the normal 1.96 is
# within 2 % of it. Tabulated to keep scipy out of the library's dependencies.
_T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95 % Student-t confidence interval (``inf`` for one value).

    Example:
        >>> m, h = t_interval([0.5, 0.7, 0.3, 0.6, 0.4])
        >>> round(m, 2), round(h, 3)
        (0.5, 0.196)
    """
    mean, std = mean_std(values)
    n = len(values)
    if n < 2:
        return mean, math.inf
    return mean, (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * std / math.sqrt(n)


__all__ = ["mean_std", "t_interval"]
