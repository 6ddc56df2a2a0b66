"""The study's statistics (study/stats.py): t-intervals against the t distribution."""

from __future__ import annotations

import math

import pytest

from label_refinery.study.stats import mean_std


def test_t_interval_matches_the_t_distribution():
    from label_refinery.study.stats import t_interval

    values = [0.3, -0.1, 0.4, 0.2, 0.5]  # n = 5: t(0.975, 4) = 2.776
    m, half = t_interval(values)
    assert m == pytest.approx(0.26) and half == pytest.approx(2.776 * mean_std(values)[1] / math.sqrt(5))
    stats = pytest.importorskip("scipy.stats", reason="scipy (from scikit-learn) checks the tabulated quantiles")
    for n in (2, 3, 10, 31):
        assert t_interval([0.0, 1.0] * (n // 2) + [0.5] * (n % 2))[1] == pytest.approx(
            stats.t.ppf(0.975, n - 1) * mean_std([0.0, 1.0] * (n // 2) + [0.5] * (n % 2))[1] / math.sqrt(n), rel=2e-3 if n <= 31 else 0.02)
