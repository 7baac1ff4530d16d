"""Honest statistics for success rates: Wilson intervals, the unbiased pass@k, a two-proportion test
and the smallest gap an evaluation can resolve. Pure functions of counts (no numpy needed).

A success rate is always reported with its interval and episode count; a difference between two
arms is claimed only when its interval excludes zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

__all__ = ["z_value", "wilson_interval", "pass_at_k", "Difference", "two_proportion", "resolvable_gap"]


def z_value(confidence: float = 0.95) -> float:
    """Two-sided normal quantile ``z_{1−α/2}`` (``NormalDist`` of the standard library)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence} must be in (0, 1)")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927).

    ``p̂ = k/n``; ``center = (p̂ + z²/2n) / (1 + z²/n)``,
    ``half = z·sqrt(p̂(1−p̂)/n + z²/4n²) / (1 + z²/n)``. ``n = 0`` gives ``(0, 1)``.
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got {successes}/{n}")
    if n == 0:
        return 0.0, 1.0
    z = z_value(confidence)
    p = successes / n
    denom = 1.0 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)
    return lo, hi


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples with ``c`` correct (Chen et al. 2021):
    ``1 − C(n−c, k) / C(n, k)``, computed as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


@dataclass(frozen=True)
class Difference:
    """``p_b − p_a`` with its Newcombe (Wilson-based) interval and a two-sided z-test p-value."""

    delta: float
    ci: tuple[float, float]
    p_value: float
    n_a: int
    n_b: int

    @property
    def resolved(self) -> bool:
        """True when the interval excludes zero: the only case a difference is claimed."""
        return self.ci[0] > 0.0 or self.ci[1] < 0.0


def two_proportion(k_a: int, n_a: int, k_b: int, n_b: int, confidence: float = 0.95) -> Difference:
    """Difference of two success rates ``b − a`` (e.g. after − before).

    Interval: Newcombe's hybrid score method 10 (1998) from the two Wilson intervals,
    ``δ − sqrt((p̂_b − l_b)² + (u_a − p̂_a)²)`` to ``δ + sqrt((u_b − p̂_b)² + (p̂_a − l_a)²)``;
    p-value: the pooled two-proportion z-test. Unpaired (independent episodes per arm).
    """
    if n_a <= 0 or n_b <= 0:
        raise ValueError("both arms need at least one episode")
    pa, pb = k_a / n_a, k_b / n_b
    la, ua = wilson_interval(k_a, n_a, confidence)
    lb, ub = wilson_interval(k_b, n_b, confidence)
    delta = pb - pa
    lo = delta - math.sqrt((pb - lb) ** 2 + (ua - pa) ** 2)
    hi = delta + math.sqrt((ub - pb) ** 2 + (pa - la) ** 2)
    pooled = (k_a + k_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0.0:
        p_value = 1.0 if delta == 0 else 0.0
    else:
        p_value = 2.0 * (1.0 - NormalDist().cdf(abs(delta) / se))
    return Difference(delta=delta, ci=(lo, hi), p_value=p_value, n_a=n_a, n_b=n_b)


def resolvable_gap(n_a: int, n_b: int, p: float = 0.5, confidence: float = 0.95) -> float:
    """The smallest difference whose interval would exclude zero with ``n_a`` and ``n_b`` episodes
    when both rates are near ``p`` (worst case 0.5): ``z·sqrt(p(1−p)(1/n_a + 1/n_b))``."""
    if n_a <= 0 or n_b <= 0:
        return 1.0
    return z_value(confidence) * math.sqrt(p * (1 - p) * (1 / n_a + 1 / n_b))
