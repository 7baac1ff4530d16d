"""Plain PyTorch reference of the divergence losses (autograd, full logits, any dtype).

This is the *definition* the fast paths are tested against (in float64) and the "naive" baseline
of ``bench/kernels.py`` (in float32). It materializes every ``(N, V)`` tensor and lets autograd do
the gradient, which is exactly what the chunked and Triton paths avoid.

Notation, per token row (``T`` the temperature, ``z_S``/``z_T`` raw logits)::

    log q = log_softmax(z_S / T)            student
    log p = log_softmax(z_T / T)            teacher (stop-gradient)
    FKL   = KL(p || q) = sum_v p (log p - log q)
    RKL   = KL(q || p) = sum_v q (log q - log p)
    JSD_b = b KL(p || m) + (1 - b) KL(q || m),   m = b p + (1 - b) q,   0 < b < 1
    H     = -sum_v q log q                   student entropy

Convention (TRL / Liger): ``jsd`` with ``beta=0`` *is* forward KL and with ``beta=1`` *is*
reverse KL. The mixed formula itself tends to 0 at both ends, so the endpoints are special-cased.

Zero-probability entries: a term ``x log x`` or ``x (log x - log y)`` with ``x = 0`` is 0 (so
``-inf`` teacher logits are allowed in FKL and JSD). RKL is ``+inf`` when the teacher gives
probability 0 to a token the student supports: that is its true value.
"""

from __future__ import annotations

import torch

from .types import DivergenceKind, TeacherTopK

__all__ = [
    "resolve_kind",
    "reference_divergence",
    "reference_divergence_from_logprobs",
    "reference_entropy",
    "reference_topk_divergence",
    "topk_bucket_logprobs",
    "teacher_bucket_logprobs",
]


def resolve_kind(kind: str, beta: float) -> DivergenceKind:
    """Map ``jsd`` at its endpoints to the divergence it means: ``beta=0`` -> fkl, ``beta=1`` -> rkl."""
    if kind == "jsd" and beta == 0.0:
        return "fkl"
    if kind == "jsd" and beta == 1.0:
        return "rkl"
    return kind  # type: ignore[return-value]


def _xlogratio(x: torch.Tensor, log_x: torch.Tensor, log_y: torch.Tensor) -> torch.Tensor:
    """Elementwise ``x (log x - log y)`` with the ``0 * (anything) = 0`` convention, NaN-free grads."""
    support = x > 0
    safe_log_x = torch.where(support, log_x, torch.zeros_like(log_x))
    return torch.where(support, x * (safe_log_x - log_y), torch.zeros_like(x))


def reference_divergence_from_logprobs(
    logq: torch.Tensor, logp: torch.Tensor, kind: str = "jsd", beta: float = 0.5
) -> torch.Tensor:
    """Per-row divergence from normalized log-probs. ``logq, logp (N, B) -> (N,)``.

    ``B`` is the vocabulary (full logits) or the number of buckets (top-k + tail).
    """
    kind = resolve_kind(kind, beta)
    q, p = logq.exp(), logp.exp()
    if kind == "fkl":
        return _xlogratio(p, logp, logq).sum(-1)
    if kind == "rkl":
        return _xlogratio(q, logq, logp).sum(-1)
    log_b = torch.log(torch.tensor(beta, dtype=logq.dtype, device=logq.device))
    log_1mb = torch.log1p(torch.tensor(-beta, dtype=logq.dtype, device=logq.device))
    logm = torch.logaddexp(logp + log_b, logq + log_1mb)
    return beta * _xlogratio(p, logp, logm).sum(-1) + (1 - beta) * _xlogratio(q, logq, logm).sum(-1)


def reference_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    kind: str = "jsd",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-row divergence between full logit rows. ``(N, V), (N, V) -> (N,)``; teacher detached."""
    logq = torch.log_softmax(student_logits / temperature, dim=-1)
    logp = torch.log_softmax(teacher_logits.detach() / temperature, dim=-1)
    return reference_divergence_from_logprobs(logq, logp, kind, beta)


def reference_entropy(student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Student entropy ``H = -sum_v q log q`` per row. ``(N, V) -> (N,)``."""
    logq = torch.log_softmax(student_logits / temperature, dim=-1)
    q = logq.exp()
    return -torch.where(q > 0, q * logq, torch.zeros_like(q)).sum(-1)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate near 0 and near -inf (Maechler 2012)."""
    x = x.clamp(max=0.0)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def topk_bucket_logprobs(logq: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Aggregate full student log-probs into k+1 buckets. ``logq (N, V), indices (N, k) -> (N, k+1)``.

    Buckets are the k listed tokens and the tail ``log Q_tail = logsumexp_{v not in topk} log q_v``
    (computed over the tail itself, not as ``log(1 - sum)``, so it stays exact when the tail is tiny).
    """
    top = logq.gather(-1, indices)
    tail = logq.scatter(-1, indices, float("-inf")).logsumexp(-1, keepdim=True)
    return torch.cat([top, tail], dim=-1)


def teacher_bucket_logprobs(logprobs: torch.Tensor) -> torch.Tensor:
    """Append the teacher tail bucket. ``(N, k) -> (N, k+1)``, ``log P_tail = log(1 - sum exp(lp))``."""
    tail = _log1mexp(logprobs.logsumexp(-1, keepdim=True))
    return torch.cat([logprobs, tail], dim=-1)


def reference_topk_divergence(
    student_logits: torch.Tensor,
    teacher: TeacherTopK,
    kind: str = "jsd",
    beta: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-row divergence over top-k + tail buckets. ``(N, V), TeacherTopK(N, k) -> (N,)``.

    The temperature applies to the student only; the teacher log-probs are used as given.
    """
    logq = torch.log_softmax(student_logits / temperature, dim=-1)
    logq_b = topk_bucket_logprobs(logq, teacher.indices)
    logp_b = teacher_bucket_logprobs(teacher.logprobs.detach().to(logq.dtype))
    return reference_divergence_from_logprobs(logq_b, logp_b, kind, beta)
