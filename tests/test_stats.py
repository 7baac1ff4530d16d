"""Interval and pass@k arithmetic against hand-computed values."""

from __future__ import annotations

import math

import pytest

from trainers.stats import pass_at_k, resolvable_gap, two_proportion, wilson_interval, z_value


def test_wilson_hand_computed():
    # 8/16 at 95%: z = 1.959964; center 0.5; half = z*sqrt(1/64 + z^2/1024)/(1 + z^2/16)
    z = 1.959964
    half = z * math.sqrt(0.25 / 16 + z * z / 1024) / (1 + z * z / 16)
    lo, hi = wilson_interval(8, 16)
    assert lo == pytest.approx(0.5 - half, abs=1e-6) and hi == pytest.approx(0.5 + half, abs=1e-6)
    assert (round(lo, 4), round(hi, 4)) == (0.28, 0.72)
    # 0/10: the lower end is exactly 0, the upper z^2/(n + z^2) = 0.2775
    assert wilson_interval(0, 10) == (0.0, pytest.approx(z * z / (10 + z * z), abs=1e-6))
    assert wilson_interval(10, 10)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    with pytest.raises(ValueError):
        wilson_interval(5, 4)


def test_pass_at_k_hand_computed():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)  # = c/n
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 4) == pytest.approx(1 - math.comb(7, 4) / math.comb(10, 4))
    assert pass_at_k(4, 2, 3) == 1.0  # fewer than k failures
    assert pass_at_k(4, 0, 2) == 0.0


def test_two_proportion_hand_computed():
    d = two_proportion(16, 64, 32, 64)  # 25% -> 50%
    assert d.delta == pytest.approx(0.25)
    la, ua = wilson_interval(16, 64)
    lb, ub = wilson_interval(32, 64)
    assert d.ci[0] == pytest.approx(0.25 - math.sqrt((0.5 - lb) ** 2 + (ua - 0.25) ** 2))
    assert d.ci[1] == pytest.approx(0.25 + math.sqrt((ub - 0.5) ** 2 + (0.25 - la) ** 2))
    # pooled z: p = 48/128, se = sqrt(p(1-p)(2/64)), z = 0.25/se = 2.9212 -> p = 0.00349
    assert d.p_value == pytest.approx(0.003487, abs=2e-5)
    assert d.resolved
    same = two_proportion(4, 16, 6, 16)
    assert not same.resolved and same.ci[0] < 0 < same.ci[1]


def test_resolvable_gap():
    # 64 vs 64 episodes near 50%: 1.96 * sqrt(0.25 * 2/64) = 0.1732
    assert resolvable_gap(64, 64) == pytest.approx(0.17324, abs=1e-4)
    assert resolvable_gap(8, 8) > 0.45  # the old comparison's 8 episodes per split
