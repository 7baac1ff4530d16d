"""Sampled-token KL estimators: per-token losses that need no teacher logits, only log-probs of
the sampled tokens ``y_t ~ pi_old``.

Notation (all tensors the same shape, e.g. ``(B, T)``): ``logp_s = log pi_S(y_t)`` (carries the
gradient), ``logp_t = log pi_T(y_t)`` (teacher, always stop-gradient here), ``logp_old =
log pi_old(y_t)`` (the sampler), ``l = logp_s - logp_t``. On-policy (``y ~ pi_S``) the true
reverse-KL gradient is the score-function form::

    grad KL(pi_S || pi_T) = E_{y ~ pi_S}[ l(y) grad log pi_S(y)]

Which estimator gives which gradient (what the tests pin, by Monte Carlo):

- :func:`k1` ``= l``: unbiased *value* of KL(S||T), but ``E[grad l] = E[grad log pi_S] = 0``:
  back-propagating it is noise, not a KL gradient (the pitfall of algorithms.md section 0).
- :func:`k3` ``= exp(-l) - 1 + l >= 0``: unbiased, low-variance value; its on-policy gradient
  ``E[(1 - pi_T/pi_S) grad log pi_S] = -sum pi_T grad log pi_S`` is the *forward* KL(T||S)
  gradient.
- :func:`importance_weighted_k3` ``= rho (exp(-l) - 1 + l)``, ``rho = exp(logp_s - sg logp_old)``
  (Skill-SD): its gradient is ``rho l grad log pi_S``, the importance-corrected reverse-KL gradient.
- :func:`pg_reverse_kl` ``= sg(l) logp_s``: the policy-gradient surrogate, gradient
  ``l grad log pi_S`` (reverse KL on-policy); its value is not a KL.

Reduce with :func:`masked_mean` / :func:`masked_sum` over the loss mask.
"""

from __future__ import annotations

import torch

__all__ = [
    "log_ratio",
    "k1",
    "k3",
    "importance_weighted_k3",
    "pg_reverse_kl",
    "masked_sum",
    "masked_mean",
]


def log_ratio(logp_s: torch.Tensor, logp_t: torch.Tensor) -> torch.Tensor:
    """``l = log pi_S(y) - sg log pi_T(y)`` per token (same shape as the inputs)."""
    return logp_s - logp_t.detach()


def k1(logp_s: torch.Tensor, logp_t: torch.Tensor) -> torch.Tensor:
    """``k1 = l``. Unbiased reverse-KL value; its expected gradient is zero (do not train on it)."""
    return log_ratio(logp_s, logp_t)


def k3(logp_s: torch.Tensor, logp_t: torch.Tensor) -> torch.Tensor:
    """``k3 = exp(-l) - 1 + l = pi_T/pi_S - 1 - log(pi_T/pi_S) >= 0`` (computed as ``expm1(-l) + l``).

    Unbiased for KL(S||T) under ``y ~ pi_S``; back-propagated on-policy it gives the forward-KL
    gradient (see the module docstring).
    """
    lr = log_ratio(logp_s, logp_t)
    return torch.expm1(-lr) + lr


def importance_weighted_k3(
    logp_s: torch.Tensor, logp_t: torch.Tensor, logp_old: torch.Tensor
) -> torch.Tensor:
    """Skill-SD's ``rho (exp(-l) - 1 + l)`` with ``rho = exp(logp_s - sg logp_old)``.

    Gradient: ``d/dtheta = rho l grad log pi_S`` (the ``exp(-l)`` terms cancel), i.e. the
    reverse-KL score-function gradient importance-corrected from ``pi_old`` samples.
    """
    rho = torch.exp(logp_s - logp_old.detach())
    return rho * k3(logp_s, logp_t)


def pg_reverse_kl(logp_s: torch.Tensor, logp_t: torch.Tensor) -> torch.Tensor:
    """Policy-gradient surrogate ``sg(l) log pi_S(y)``; gradient ``l grad log pi_S`` (on-policy RKL)."""
    return log_ratio(logp_s, logp_t).detach() * logp_s


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_t m_t v_t`` (mask 0/1 or weights, broadcastable to ``values``)."""
    return (values * mask.to(values.dtype)).sum()


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum_t m_t v_t / sum_t m_t``: the token mean over trained positions (0 when none are)."""
    m = mask.to(values.dtype)
    return (values * m).sum() / m.sum().clamp(min=torch.finfo(values.dtype).tiny)
